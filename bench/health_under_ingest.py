"""/health latency while two large OTLP/HTTP JSON exports are decoded: the
worst /health answer time. `python3 bench/health_under_ingest.py BIN RECORDS`
(starts BIN on a temporary data directory)."""
import gzip, json, sys, threading, time, urllib.request, subprocess, os, shutil, tempfile
binary = sys.argv[1]; n = int(sys.argv[2])
d = tempfile.mkdtemp()
p = subprocess.Popen([binary, "serve", "--data-dir", d, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
line = p.stdout.readline()
http = dict(w.split("=", 1) for w in line.split() if "=" in w)["http"]
rec = '{"timeUnixNano":"1700000000000000000","body":{"stringValue":"x"},"attributes":[{"key":"k","value":{"stringValue":"v"}}]}'
body = gzip.compress(('{"resourceLogs":[{"scopeLogs":[{"logRecords":[' + ",".join([rec] * n) + ']}]}]}').encode())
def export():
    r = urllib.request.Request(f"http://{http}/v1/logs", body, {"content-type": "application/json", "content-encoding": "gzip"})
    try: urllib.request.urlopen(r, timeout=300).read()
    except Exception as e: print("export", e)
ts = [threading.Thread(target=export) for _ in range(2)]
for t in ts: t.start()
worst = 0; t0 = time.time()
while any(t.is_alive() for t in ts):
    s = time.time(); urllib.request.urlopen(f"http://{http}/health", timeout=60).read(); worst = max(worst, time.time() - s); time.sleep(0.02)
print(f"{os.path.basename(binary)}: 2 exports of {n} JSON records took {time.time()-t0:.1f} s; worst /health {worst*1000:.0f} ms")
p.terminate(); p.wait(); shutil.rmtree(d)
