# Shared by the bench scripts that drive release servers: sourced after
# `set -euo pipefail` and `cd` to the repository root. Builds the release
# binaries, makes a work directory removed at exit (with every server and
# peer started through it stopped), and gives:
#   machine               prints the machine line docs/benchmarks.md quotes
#   serve NAME [FLAGS]    a server on ephemeral ports, data in $WORK/NAME
#                         (or $WORK/$DATA when DATA is set); sets PID, GRPC, HTTP
#   moto_bucket BUCKET    moto on loopback, the AWS_* variables set for it,
#                         BUCKET created (needs: pip install 'moto[server]' boto3)

cargo build --release --locked -p tocsin -p tocsin-bench
T="${CARGO_TARGET_DIR:-target}/release"
WORK=$(mktemp -d)
PIDS=()
# Stopped and waited for before the directory goes: a server still
# writing its last files would leave it half removed.
trap 'for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

machine() {
  echo "machine: $(nproc) cores, $(lscpu | sed -n 's/Model name: *//p'), $(free -g | awk '/Mem:/{print $2}') GiB;" \
    "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo ' (with changes)')"
}

serve() {
  local name=$1; shift
  "$T/tocsin" serve --data-dir "$WORK/${DATA:-$name}" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 "$@" \
    > "$WORK/$name.out" 2> "$WORK/$name.log" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 600); do grep -q listening "$WORK/$name.out" 2>/dev/null && break; sleep 0.1; done
  if ! grep -q listening "$WORK/$name.out"; then
    echo "server $name did not start; its log:" >&2
    tail -20 "$WORK/$name.log" >&2
    exit 1
  fi
  GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$WORK/$name.out")
  HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$WORK/$name.out")
}

moto_bucket() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 -m moto.server -H 127.0.0.1 -p "$port" > "$WORK/moto.log" 2>&1 &
  PIDS+=($!)
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
    AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
  for _ in $(seq 100); do curl -s "$AWS_ENDPOINT_URL" > /dev/null && break; sleep 0.2; done
  python3 -c "import boto3, sys; boto3.client('s3').create_bucket(Bucket=sys.argv[1])" "$1"
  echo "bucket: moto $(python3 -c 'import moto; print(moto.__version__)') on loopback"
}
