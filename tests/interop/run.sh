#!/usr/bin/env bash
# Interop tests: Tocsin against programs nobody here wrote. Each installs its
# peer (pip/apt-get), starts Tocsin on loopback ports, and cleans up.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN="${CARGO_TARGET_DIR:-target}/debug/tocsin"
# tocsin-bench loads the TSBS data of the peer comparison. All targets, as
# `cargo test --workspace` builds them: the same feature set (dev-dependencies
# turn on features of shared crates), so that after the test run in .ci/run
# only the bench binaries are linked here instead of DataFusion rebuilt.
cargo build --locked --workspace --all-targets
export TOCSIN_BIN="$BIN"
# The STARTTLS scenario of the email test makes its certificates with openssl.
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
# Peers from Debian: Prometheus with node_exporter (remote_write, alerts), VictoriaMetrics (PromQL over line-protocol fields),
# InfluxDB 1.6 and its CLI (line protocol, InfluxQL), amtool (Alertmanager's CLI), rsyslog and
# logger (syslog senders), Chromium and ChromeDriver (the console in a real browser), etcd (the primary's lease).
need=()
for pair in prometheus:prometheus prometheus-node-exporter:prometheus-node-exporter victoria-metrics:victoria-metrics influxd:influxdb influx:influxdb-client amtool:prometheus-alertmanager rsyslogd:rsyslog logger:bsdutils chromium:chromium chromedriver:chromium-driver etcd:etcd-server; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
python3 -m pip install --quiet --disable-pip-version-check -r tests/interop/requirements.txt
# Node.js clients (winston-loki, the OpenTelemetry JS SDK), pinned by tests/interop/node/package-lock.json.
(cd tests/interop/node && npm ci --silent --no-audit --no-fund)
python3 tests/interop/test_grpc_python_and_duckdb.py
python3 tests/interop/test_email_aiosmtpd.py
python3 tests/interop/test_prometheus_remote_write.py
python3 tests/interop/test_influx_line_protocol.py
python3 tests/interop/test_otlp_opentelemetry_sdk.py
python3 tests/interop/test_otlp_traces_sdk.py
python3 tests/interop/test_flight_sql_adbc.py
python3 tests/interop/test_auth_real_clients.py
python3 tests/interop/test_amtool.py
python3 tests/interop/test_tsbs_peers.py
python3 tests/interop/test_logs_peers.py
python3 tests/interop/test_syslog_rsyslog.py
python3 tests/interop/test_loki_clients.py
python3 tests/interop/test_otlp_http_json_js.py
python3 tests/interop/test_elasticsearch_bulk.py
# Backups into an S3-compatible bucket (moto in server mode) and back.
python3 tests/interop/test_backup_s3_moto.py
# A primary and standbys on that copy, leadership through a lease in etcd.
python3 tests/interop/test_ha_etcd.py
# The same lease in an etcd that speaks only TLS and asks for client certificates.
python3 tests/interop/test_ha_etcd_tls.py
# The Grafana data source plugin: lint, types, jest against live servers, build.
case "$BIN" in /*) abs_bin="$BIN" ;; *) abs_bin="$(pwd)/$BIN" ;; esac
TOCSIN_BIN="$abs_bin" bash grafana-plugin/ci.sh
# Screenshots of every console view are kept as artifacts.
CONSOLE_SHOTS="${CARGO_TARGET_DIR:-target}/console-shots" python3 tests/interop/test_console_browser.py
