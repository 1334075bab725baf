#!/usr/bin/env bash
# Interop tests: Tocsin against programs nobody here wrote. Each installs its
# peer (pip/apt-get), starts Tocsin on loopback ports, and cleans up.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/debug/tocsin"
cargo build --locked --bin tocsin
export TOCSIN_BIN="$BIN"
# The STARTTLS scenario of the email test makes its certificates with openssl.
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
python3 tests/interop/test_grpc_python_and_duckdb.py
python3 tests/interop/test_email_aiosmtpd.py
