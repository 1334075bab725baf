/**
 * Starts a real Tocsin server for the tests: `tocsin serve` on ports
 * chosen by the OS, in a temporary data directory; stopped with SIGTERM.
 * The binary is $TOCSIN_BIN, by default ../target/debug/tocsin relative
 * to grafana-plugin/ (the workspace's debug build).
 */
import { ChildProcess, spawn } from 'child_process';
import fs from 'fs';
import http from 'http';
import os from 'os';
import path from 'path';

export const PLUGIN_ROOT = path.resolve(__dirname, '..', '..');

export function tocsinBinary(): string {
  const bin = process.env.TOCSIN_BIN
    ? path.resolve(PLUGIN_ROOT, process.env.TOCSIN_BIN)
    : path.resolve(PLUGIN_ROOT, '..', 'target', 'debug', 'tocsin');
  if (!fs.existsSync(bin)) {
    throw new Error(
      `Tocsin binary not found at ${bin}: build it (cargo build) or set TOCSIN_BIN to a tocsin executable`
    );
  }
  return bin;
}

export interface TocsinServer {
  /** http://127.0.0.1:PORT */
  url: string;
  dataDir: string;
  /** the admin token when started with auth */
  token?: string;
  stop(): Promise<void>;
  /** the server's stderr so far (for failure messages) */
  log(): string;
}

export interface StartOptions {
  auth?: boolean;
  /** YAML of an alert rules file */
  rules?: string;
}

export async function startTocsin(opts: StartOptions = {}): Promise<TocsinServer> {
  const bin = tocsinBinary();
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tocsin-grafana-test-'));
  const args = [
    'serve',
    '--data-dir',
    dataDir,
    '--http-addr',
    '127.0.0.1:0',
    '--grpc-addr',
    '127.0.0.1:0',
    '--log',
    'warn',
  ];
  if (opts.auth) {
    args.push('--auth');
  }
  if (opts.rules) {
    const rulesPath = path.join(dataDir, 'rules.yml');
    fs.writeFileSync(rulesPath, opts.rules);
    args.push('--rules', rulesPath);
  }
  const child: ChildProcess = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-8000);
  });

  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));

  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`tocsin did not start within 30 s; stderr:\n${stderr}`)), 30_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^tocsin listening .*\bhttp=(\S+)/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(`http://${m[1]}`);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`tocsin exited (${code}) before listening; stderr:\n${stderr}`));
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });

  const token = opts.auth ? fs.readFileSync(path.join(dataDir, 'admin-token'), 'utf8').trim() : undefined;

  return {
    url,
    dataDir,
    token,
    log: () => stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(timer);
      }
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** A plain HTTP request (Node's http module). */
export function httpRequest(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; body?: string } = {}
): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? 'GET', headers: opts.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') })
      );
      res.on('error', reject);
    });
    req.on('error', reject);
    if (opts.body !== undefined) {
      req.write(opts.body);
    }
    req.end();
  });
}

/** Writes InfluxDB line protocol directly to Tocsin (test data, not through the plugin). */
export async function writeLines(server: TocsinServer, lines: string[], db = 'public'): Promise<void> {
  const headers: Record<string, string> = { 'Content-Type': 'text/plain' };
  if (server.token) {
    headers.Authorization = `Bearer ${server.token}`;
  }
  const res = await httpRequest(`${server.url}/write?db=${encodeURIComponent(db)}`, {
    method: 'POST',
    headers,
    body: lines.join('\n'),
  });
  if (res.status >= 300) {
    throw new Error(`write failed: ${res.status} ${res.body}`);
  }
}

/** POSTs JSON directly to Tocsin. */
export async function postJson(server: TocsinServer, pathAndQuery: string, body: unknown): Promise<HttpResult> {
  const headers: Record<string, string> = { 'Content-Type': 'application/json' };
  if (server.token) {
    headers.Authorization = `Bearer ${server.token}`;
  }
  return httpRequest(`${server.url}${pathAndQuery}`, { method: 'POST', headers, body: JSON.stringify(body) });
}

/** Runs SQL directly against Tocsin (not through the plugin), for setup and polling. */
export async function directSql(server: TocsinServer, sql: string): Promise<Array<Record<string, unknown>>> {
  const res = await postJson(server, '/api/v1/sql', { sql, format: 'json' });
  if (res.status !== 200) {
    throw new Error(`SQL failed: ${res.status} ${res.body}`);
  }
  return JSON.parse(res.body);
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v !== undefined) {
        return v;
      }
    } catch (e) {
      lastError = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`);
}
