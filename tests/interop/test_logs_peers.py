"""Interop: log searches answer the same in Tocsin (token filters on), in
DuckDB (a native table, and reading Tocsin's segments) and in ClickHouse's
engine (chdb, a MergeTree table with a token bloom filter index).
`tocsin-log-bench --peers` generates a small day of logs with a planted
rare token, checks Tocsin's answers against what it planted, then runs
`bench/logs_peers.py`, which fails on the first answer that differs between
engines. (Speed is measured in bench/, not here.)"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from peers import BIN, ROOT  # noqa: E402

LOG_BENCH = os.path.join(os.path.dirname(BIN), "tocsin-log-bench")


def main():
    # 300,000 lines: 37 blocks of 8,192 rows, the rare token in 20 of them.
    out = subprocess.run([LOG_BENCH, "--tocsin", BIN, "--lines", "300000", "--runs", "1", "--peers"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, f"log searches differ or failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    assert "answers agree in all 4 engines" in out.stdout, out.stdout
    print("ok: log searches answer alike in Tocsin, DuckDB (native and on our segments) and chdb")


if __name__ == "__main__":
    main()
