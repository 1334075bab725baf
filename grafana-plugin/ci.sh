#!/usr/bin/env bash
# CI for the Grafana data source plugin (grafana-plugin/). Run from anywhere.
# Needs Node >= 20 with npm, and a tocsin binary for the tests: TOCSIN_BIN
# (relative to grafana-plugin/ or absolute), default ../target/debug/tocsin,
# i.e. run after `cargo build`. The tests start and stop their own servers
# on ports chosen by the OS. Each step prints its duration.
set -euo pipefail
cd "$(dirname "$0")"
export TOCSIN_BIN="${TOCSIN_BIN:-../target/debug/tocsin}"

step() {
  local name=$1
  shift
  local t0
  t0=$(date +%s%N)
  echo "== $name: $*"
  "$@"
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '== %s: %d.%01d s\n' "$name" $((ms / 1000)) $(((ms % 1000) / 100))
}

step "install (npm ci)" npm ci --no-audit --no-fund
step "lint (eslint)" npm run lint
step "format (prettier --check)" npm run format:check
step "typecheck (tsc)" npm run typecheck
step "unit tests against a live tocsin (jest)" npm run test:ci
step "build and zip (webpack)" npm run build
