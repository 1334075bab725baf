#!/usr/bin/env bash
# Syslog ingest rate: syslog-ng's load generator `loggen` sends N messages
# over TCP to a release `tocsin serve --syslog-tcp-addr`, and the time until
# every message is a row of `logs` is measured (the rate a sender sees
# includes Tocsin's parsing, the WAL and fsync).
#
#   bench/syslog.sh                 # 1,000,000 RFC 5424 messages of 256 bytes, 2 connections
#   N=2000000 CONNS=4 bench/syslog.sh
#   FORMAT=3164 bench/syslog.sh     # the BSD format, newline-framed
#
# loggen comes with Debian's syslog-ng-core, which conflicts with rsyslog (the
# interop suite's sender); without installing it:
#   mkdir -p /tmp/sng && cd /tmp/sng && apt-get download syslog-ng-core && dpkg-deb -x syslog-ng-core_*.deb root
#   SYSLOG_NG_ROOT=/tmp/sng/root bench/syslog.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-1000000}"; CONNS="${CONNS:-2}"; SIZE="${SIZE:-256}"; FORMAT="${FORMAT:-5424}"
LOGGEN=(loggen)
if [ -n "${SYSLOG_NG_ROOT:-}" ]; then
  export SYSLOGNG_PREFIX="$SYSLOG_NG_ROOT/usr"
  export LD_LIBRARY_PATH="$SYSLOG_NG_ROOT/usr/lib/syslog-ng:$SYSLOG_NG_ROOT/usr/lib/x86_64-linux-gnu"
  LOGGEN=("$SYSLOG_NG_ROOT/usr/bin/loggen")
fi
cargo build --release --locked -p tocsin
T="${CARGO_TARGET_DIR:-target}/release"
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$T/tocsin" serve --data-dir "$WORK/data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --syslog-tcp-addr 127.0.0.1:0 > "$WORK/out" 2> "$WORK/server.log" &
PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$WORK/out")
PORT=$(sed -n 's/.*syslog_tcp=[^ ]*:\([0-9]*\).*/\1/p' "$WORK/out")
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'); $N messages of $SIZE bytes, RFC $FORMAT, $CONNS TCP connections"
PROTO=(); [ "$FORMAT" = 5424 ] && PROTO=(--syslog-proto)
count() { curl -s "http://$HTTP/api/v1/sql" -H 'content-type: application/json' \
  -d '{"sql":"SELECT count(*) AS n FROM logs"}' | sed -n 's/.*"n":\([0-9]*\).*/\1/p'; }
START=$(date +%s.%N)
"${LOGGEN[@]}" --inet --stream "${PROTO[@]}" --size "$SIZE" --rate 10000000 --number "$((N / CONNS))" \
  --active-connections "$CONNS" --quiet 127.0.0.1 "$PORT" 2>&1 | tail -2
WANT=$(( (N / CONNS) * CONNS ))
while :; do
  got=$(count); [ "${got:-0}" -ge "$WANT" ] && break
  sleep 0.05
done
END=$(date +%s.%N)
python3 - "$START" "$END" "$WANT" <<'PY'
import sys
start, end, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
print(f"{n} messages written in {end - start:.2f} s: {n / (end - start):,.0f} messages/s")
PY
curl -s "http://$HTTP/metrics" | grep -E '^tocsin_syslog_(messages|invalid_messages|dropped_messages)_total'
kill -TERM $PID; wait $PID || true
