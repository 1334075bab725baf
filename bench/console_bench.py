"""The web console under load, in Debian's Chromium (Selenium): how long the
alerts view and the overview take to show 10,000 firing alerts, and
whether a live tail keeps up with 1,000 events per second (the newest line
shown, the page's heap, how quickly it answers a script).

    python3 bench/console_bench.py [--bin target/release/tocsin] [--alerts 10000] [--rate 1000] [--seconds 30]

Starts its own server on loopback ports in a scratch directory. Prints one
line per measurement and the medians."""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "interop"))
import peers  # noqa: E402
from test_console_browser import browser  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

RULES = """
groups:
  - name: hosts
    interval: 2s
    rules:
      - alert: HighCpu
        sql: SELECT host, room, last_value(usage ORDER BY ts) AS value FROM cpu GROUP BY host, room
        thresholds: { warning: "> 50", critical: "> 90" }
        annotations: { summary: "cpu {{ value }} on {{ host }}" }
"""


def shown_in(d, url, selector, ready):
    """Seconds from navigation to `ready(count, first element's text)`; the
    elements are counted in the page (fetching 10,000 element handles
    through WebDriver takes longer than drawing them)."""
    t = time.time()
    d.get(url)
    while True:
        n, text = d.execute_script(
            "const e = document.querySelectorAll(arguments[0]); return [e.length, e.length ? e[0].textContent : ''];",
            selector)
        if n and ready(n, text):
            return time.time() - t
        if time.time() - t > 60:
            raise AssertionError(f"{url}: {selector} not ready in 60 s")
        time.sleep(0.01)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=peers.BIN)
    ap.add_argument("--alerts", type=int, default=10000)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    peers.BIN = a.bin
    tmp = tempfile.mkdtemp(prefix="tocsin-console-bench-")
    rules = os.path.join(tmp, "rules.yml")
    with open(rules, "w") as f:
        f.write(RULES)
    with open(os.path.join(tmp, "tocsin.toml"), "w") as f:
        f.write('[console]\nrefresh = "10s"\n')
    log = open(os.path.join(tmp, "tocsin.log"), "w")
    proc, _grpc, http = peers.start_tocsin(os.path.join(tmp, "data"), log,
                                           ["--rules", rules, "--config", os.path.join(tmp, "tocsin.toml")])
    base = f"http://{http}"
    d = None
    try:
        lines = "\n".join(f"cpu,host=h{i:06d},room=r{i % 20} usage={95 if i % 2 else 60}" for i in range(a.alerts))
        urllib.request.urlopen(urllib.request.Request(base + "/write?db=public", data=lines.encode()), timeout=60)
        peers.wait_for(f"{a.alerts} alerts", lambda: len(peers.get_json(base + "/api/v1/alerts?state=firing")["alerts"]) == a.alerts, 60, 1)
        t = time.time()
        body = urllib.request.urlopen(base + "/api/v1/alerts?state=active", timeout=60).read()
        print(f"GET /api/v1/alerts: {len(body) / 1e6:.1f} MB in {time.time() - t:.2f} s")
        for path in ["/api/v1/alerts?state=active&limit=500", "/api/v1/alerts?state=active&limit=500&offset=" + str(a.alerts - 500),
                     "/api/v1/alerts/summary"]:
            times = []
            for _ in range(a.runs):
                t = time.time()
                body = urllib.request.urlopen(base + path, timeout=60).read()
                times.append(time.time() - t)
            print(f"GET {path}: {len(body) / 1e6:.2f} MB, median {statistics.median(times) * 1000:.0f} ms")
        d = browser()
        d.get(base + "/")
        time.sleep(1)
        results = {}
        for name, path, selector, ready in [
            ("alerts view", "/alerts", "#alert-count", lambda n, text: text == f"{a.alerts} alerts"),
            # The grid draws at most 500 devices at once (worst first).
            ("overview", "/", f'#health[data-total="{a.alerts}"] .cell', lambda n, text: n == min(a.alerts, 500)),
            # Grouped by a label: one line per group until one is opened.
            ("overview by room", "/?group=room", f'#health[data-total="{a.alerts}"] .group-head',
             lambda n, text: a.alerts <= 500 or n == 20),
        ]:
            times = [shown_in(d, base + path, selector, ready) for _ in range(a.runs)]
            results[name] = statistics.median(times)
            print(f"{name} with {a.alerts} firing alerts: " + ", ".join(f"{t:.2f}" for t in times)
                  + f" s; median {results[name]:.2f} s")

        # Scrolled to the end of the list: the last page is read and drawn.
        times = []
        for _ in range(a.runs):
            d.get(base + "/alerts")
            peers.wait_for("the first page", lambda: d.execute_script(
                "return document.querySelectorAll('.alert-row[data-id]').length") > 0, 30, 0.01)
            t = time.time()
            d.execute_script("const l = document.querySelector('.vlist'); l.scrollTop = l.scrollHeight;")
            peers.wait_for("the last rows", lambda: d.execute_script(
                "const r = document.querySelectorAll('.vlist .alert-row'); "
                "return document.querySelector('.vlist-window').style.transform !== 'translateY(0px)' && r.length > 0 && "
                "[...r].every(x => x.dataset.id) && r[r.length - 1].dataset.id"), 30, 0.01)
            times.append(time.time() - t)
        print("alerts view, scrolled to the end: " + ", ".join(f"{t:.2f}" for t in times)
              + f" s; median {statistics.median(times):.2f} s")

        # A live tail at --rate events per second.
        d.get(base + "/logs")
        time.sleep(1)
        d.find_element(By.ID, "new-tail").click()
        time.sleep(1)
        sent = [0]
        stop = threading.Event()

        def writer():
            i = 0
            per = max(1, a.rate // 10)
            while not stop.is_set():
                t = time.time()
                batch = "\n".join(f'logs,service=svc{j % 5},host=h1,level=info message="event {i}-{j}"'
                                  for j in range(per))
                urllib.request.urlopen(urllib.request.Request(base + "/write?db=public", data=batch.encode()),
                                       timeout=10).read()
                sent[0] += per
                i += 1
                time.sleep(max(0.0, 0.1 - (time.time() - t)))

        th = threading.Thread(target=writer)
        th.start()
        t0 = time.time()
        behind = []
        while time.time() - t0 < a.seconds:
            time.sleep(5)
            t = time.time()
            d.execute_script("return 1")
            rtt = time.time() - t
            heap = d.execute_script("return performance.memory ? performance.memory.usedJSHeapSize : -1")
            shown = d.execute_script(
                "const l=[...document.querySelectorAll('.tail-lines .logline .msg')].pop(); return l?l.textContent:''")
            batch = int(shown.split()[1].split("-")[0]) if shown.startswith("event ") else -1
            behind.append(sent[0] // max(1, a.rate // 10) - 1 - batch)
            print(f"tail {time.time() - t0:5.1f} s: {sent[0] / (time.time() - t0):.0f} events/s written; newest shown "
                  f"{shown!r}, {behind[-1]} batches behind; heap {heap / 1e6:.1f} MB; script answered in "
                  f"{rtt * 1000:.0f} ms")
        stop.set()
        th.join()
        print(f"tail: median {statistics.median(behind)} batches of 100 ms behind the writer")
    finally:
        if d:
            d.quit()
        peers.stop(proc)


if __name__ == "__main__":
    main()
