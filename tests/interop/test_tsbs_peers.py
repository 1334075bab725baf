"""Interop: the 15 TSBS cpu-only query types answer the same in Tocsin, in
DuckDB (a native table, and reading Tocsin's segments) and in ClickHouse's
engine (chdb, a MergeTree table). `tocsin-bench` loads a small TSBS data set
(integers, then full-precision floats) and writes the statements it ran;
`bench/tsbs_peers.py --check-only` runs one of each type in every engine and
fails on the first answer that differs. (Speed is measured in bench/, not
here.)"""

import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from peers import BIN, ROOT, start_tocsin  # noqa: E402

BENCH = os.path.join(os.path.dirname(BIN), "tocsin-bench")


def check(tmp, name, extra):
    data = os.path.join(tmp, name)
    statements = os.path.join(tmp, f"{name}.jsonl")
    with open(os.path.join(tmp, f"{name}.log"), "w") as log:
        proc, grpc, http = start_tocsin(data, log)
        try:
            subprocess.run([BENCH, "--grpc-addr", grpc, "--http-addr", http, "--hosts", "12", "--hours", "26",
                            "--runs", "1", "--statements-out", statements, *extra], check=True,
                           stdout=subprocess.DEVNULL)
            with open(statements) as f:
                kinds = {line.split('"query":"')[1].split('"')[0] for line in f if line.strip()}
            assert len(kinds) == 15, f"{len(kinds)} query types ran: {sorted(kinds)}"
            out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "tsbs_peers.py"), "--http", http,
                                  "--data-dir", data, "--statements", statements, "--check-only"],
                                 capture_output=True, text=True)
            assert out.returncode == 0, f"{name}: answers differ:\n{out.stdout}\n{out.stderr}"
            assert "answers agree in all 5 engines" in out.stdout, out.stdout
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main():
    tmp = tempfile.mkdtemp(prefix="tocsin-tsbs-peers-")
    check(tmp, "integers", [])
    check(tmp, "floats", ["--float"])
    print("ok: the 15 TSBS query types answer alike in Tocsin, DuckDB (native and on our segments) and chdb")


if __name__ == "__main__":
    main()
