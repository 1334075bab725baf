#!/usr/bin/env python3
"""Real metrics on disk: node_exporter scraped by Prometheus, written by
remote_write to Tocsin and VictoriaMetrics at once, stored by all three.

Starts a real node_exporter, a real Prometheus (scraping it every
`--scrape-interval`, keeping its own TSDB, and remote-writing every sample
to Tocsin and VictoriaMetrics), lets them run for `--minutes`, then stops
Prometheus (which drains its remote_write queues) and measures what each
engine keeps on disk once it has merged what it can:

- Tocsin, twice: as configured by default, and with `pack_max_rows = 0`
  (every table in files of its own, as before packs); each persisted and
  compacted by its policy, then fully compacted (`POST
  /api/v1/admin/compact?full=true`, every partition merged like a cold
  one); the bytes and number of files in `segments/` and `packs/`
  (Parquet; the WAL is then empty) after each step;
- VictoriaMetrics: `/internal/force_flush` and `/internal/force_merge`;
  `vm_data_size_bytes` (its parts on disk) and its row count;
- Prometheus: its persisted blocks (`--storage.tsdb.min-block-duration`
  is set to a fifth of the run so that most samples leave the head), bytes
  of the block directories and `numSamples` from their `meta.json`.

Samples counted by Tocsin are checked against VictoriaMetrics' (both got
the same remote_write stream; a difference is reported). Needs the Debian
packages prometheus, prometheus-node-exporter and victoria-metrics.

    python3 bench/realdata.py --tocsin target/release/tocsin [--minutes 30] [--scrape-interval 1s]
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "interop"))
import peers  # noqa: E402


def post(url, timeout=600):
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def get(url, timeout=60):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def vm_metric(addr, name, labels=""):
    """Sum of a metric's samples in VictoriaMetrics' own /metrics page whose
    labels contain `labels`."""
    total = 0.0
    for line in get(f"http://{addr}/metrics").splitlines():
        m = re.match(rf"^{name}(\{{[^}}]*\}})? (\S+)$", line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def dir_bytes(path, pattern="**/*"):
    files = [f for f in glob.glob(os.path.join(path, pattern), recursive=True) if os.path.isfile(f)]
    return sum(os.path.getsize(f) for f in files), len(files)


def tocsin_samples(http):
    """Samples held by Tocsin: one per row and numeric field of each metric table."""
    tables = peers.sql(http, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    samples = 0
    for t in tables:
        name = t["table_name"]
        cols = peers.sql(http, f"SELECT column_name, data_type FROM information_schema.columns "
                               f"WHERE table_schema = 'public' AND table_name = '{name}'")
        numeric = [c["column_name"] for c in cols
                   if c["column_name"] != "ts" and re.match(r"^(Float|Int|UInt)", c["data_type"])]
        if not numeric:
            continue
        counts = ", ".join(f'count("{c}") AS "{c}"' for c in numeric)
        row = peers.sql(http, f'SELECT {counts} FROM "{name}"')[0]
        samples += sum(int(v) for v in row.values())
    return len(tables), samples


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tocsin", default=peers.BIN, help="the tocsin binary (a release build for figures)")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--scrape-interval", default="1s")
    ap.add_argument("--keep", help="keep every engine's data under this directory")
    args = ap.parse_args()
    peers.BIN = args.tocsin
    for prog in ["prometheus", "prometheus-node-exporter", "victoria-metrics"]:
        if not shutil.which(prog):
            sys.exit(f"{prog} is not installed (apt-get install prometheus prometheus-node-exporter victoria-metrics)")

    work = args.keep or tempfile.mkdtemp(prefix="tocsin-realdata-")
    os.makedirs(work, exist_ok=True)
    procs = []
    try:
        logs = open(os.path.join(work, "servers.log"), "w")
        # Replaced segment files are deleted at once (default: after 10
        # minutes, for queries still reading them), so that the bytes on
        # disk are the segments the manifest lists.
        with open(os.path.join(work, "tocsin.toml"), "w") as f:
            f.write("[compaction]\ngrace = \"0s\"\n")
        with open(os.path.join(work, "unpacked.toml"), "w") as f:
            f.write("[storage]\npack_max_rows = 0\n[compaction]\ngrace = \"0s\"\n")
        tocsin, _, http = peers.start_tocsin(os.path.join(work, "tocsin"), logs,
                                             ["--config", os.path.join(work, "tocsin.toml")])
        procs.append(tocsin)
        unpacked, _, http_unpacked = peers.start_tocsin(os.path.join(work, "tocsin-unpacked"), logs,
                                                        ["--config", os.path.join(work, "unpacked.toml")])
        procs.append(unpacked)
        node = peers.free_port()
        procs.append(subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{node}"],
                                      stdout=logs, stderr=logs))
        vm = f"127.0.0.1:{peers.free_port()}"
        procs.append(subprocess.Popen(["victoria-metrics", f"-storageDataPath={work}/vm", f"-httpListenAddr={vm}",
                                       "-retentionPeriod=100y"], stdout=logs, stderr=logs))
        prom = f"127.0.0.1:{peers.free_port()}"
        block = max(2, round(args.minutes / 5))
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            f.write(f"""global:
  scrape_interval: {args.scrape_interval}
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ["127.0.0.1:{node}"]}}]
remote_write:
  - url: http://{http}/api/v1/write
  - url: http://{http_unpacked}/api/v1/write
  - url: http://{vm}/api/v1/write
""")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/prometheus",
             f"--web.listen-address={prom}", f"--storage.tsdb.min-block-duration={block}m",
             f"--storage.tsdb.max-block-duration={block * 3}m"], stdout=logs, stderr=logs)
        procs.append(prometheus)
        peers.wait_for("Prometheus to scrape node_exporter",
                       lambda: peers.get_json(f"http://{prom}/api/v1/targets")["data"]["activeTargets"][0]["health"]
                       == "up")
        start = time.time()
        end = start + args.minutes * 60
        while time.time() < end:
            time.sleep(min(60, max(0, end - time.time())))
            print(f"  {(time.time() - start) / 60:.1f} of {args.minutes} minutes", file=sys.stderr, flush=True)
        peers.stop(prometheus)  # drains the remote_write queues first

        tocsins = []
        for name, addr, data in [("tocsin", http, "tocsin"), ("tocsin, pack_max_rows = 0", http_unpacked,
                                                               "tocsin-unpacked")]:
            def on_disk():
                seg = dir_bytes(os.path.join(work, data, "segments"))
                packs = dir_bytes(os.path.join(work, data, "packs"))
                return seg[0] + packs[0], seg[1] + packs[1]
            post(f"http://{addr}/api/v1/admin/persist")
            post(f"http://{addr}/api/v1/admin/compact")
            policy = on_disk()
            post(f"http://{addr}/api/v1/admin/compact?full=true")
            full = on_disk()
            tocsins.append((name, *tocsin_samples(addr), policy, full))

        get(f"http://{vm}/internal/force_flush")
        get(f"http://{vm}/internal/force_merge?partition_prefix={time.strftime('%Y_%m', time.gmtime())}")
        peers.wait_for("VictoriaMetrics to finish merging",
                       lambda: vm_metric(vm, "vm_active_merges") == 0, deadline_s=300, every=2)
        time.sleep(2)
        vm_bytes = vm_metric(vm, "vm_data_size_bytes")
        vm_rows = vm_metric(vm, "vm_rows", 'type="storage/')  # samples; indexdb/* rows are index entries

        p_bytes = p_samples = p_blocks = 0
        for meta in glob.glob(os.path.join(work, "prometheus", "*", "meta.json")):
            with open(meta) as f:
                p_samples += json.load(f)["stats"]["numSamples"]
            p_bytes += dir_bytes(os.path.dirname(meta))[0]
            p_blocks += 1

        print(f"node_exporter every {args.scrape_interval} for {args.minutes} min through Prometheus remote_write")
        for name, tables, samples, (p_b, p_f), (f_b, f_f) in tocsins:
            print(f"{name}: {samples} samples in {tables} tables; compacted by policy {p_f} files, {p_b} bytes, "
                  f"{p_b / max(samples, 1):.3f} bytes/sample; fully compacted {f_f} files, {f_b} bytes, "
                  f"{f_b / max(samples, 1):.3f} bytes/sample")
        samples = tocsins[0][2]
        print(f"victoriametrics: {int(vm_rows)} rows, {int(vm_bytes)} bytes, {vm_bytes / max(vm_rows, 1):.3f} bytes/sample")
        print(f"prometheus: {p_samples} samples in {p_blocks} blocks, {p_bytes} bytes, "
              f"{p_bytes / max(p_samples, 1):.3f} bytes/sample")
        if int(vm_rows) != samples:
            print(f"note: Tocsin holds {samples} samples and VictoriaMetrics {int(vm_rows)}", file=sys.stderr)
    finally:
        for p in reversed(procs):
            peers.stop(p)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
