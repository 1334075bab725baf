/**
 * Against a live Tocsin started with --auth: the token travels only from
 * Grafana's proxy (plugin.json route, secureJsonData) to Tocsin, and the
 * health check tells a missing or wrong token apart from a working one.
 * The server is fresh: no alert ever changed state, so system.alert_history
 * does not exist yet.
 */
import { CoreApp, dateTime } from '@grafana/data';
import { lastValueFrom } from 'rxjs';

import pluginJson from './plugin.json';
import { DataSource } from './datasource';
import { installRuntime, renderRouteTemplate, Runtime } from './test/grafanaRuntime';
import { execFileSync } from 'child_process';

import { startTocsin, tocsinBinary, TocsinServer } from './test/tocsinServer';
import { TocsinQuery } from './types';

let server: TocsinServer;
let rt: Runtime;

function dataSource(uid: string, token?: string): DataSource {
  return new DataSource(
    rt.backend.register({ uid, url: server.url, jsonData: {}, secureJsonData: token === undefined ? {} : { token } })
  );
}

beforeAll(async () => {
  server = await startTocsin({ auth: true });
  rt = installRuntime();
});

afterAll(async () => {
  await server?.stop();
});

describe('plugin.json route', () => {
  it('adds the Authorization header from secureJsonData on every /api/ request', () => {
    const routes = (
      pluginJson as { routes: Array<{ path: string; url?: string; headers: Array<{ name: string; content: string }> }> }
    ).routes;
    expect(routes).toHaveLength(1);
    expect(routes[0].path).toBe('api');
    expect(routes[0].url).toBeUndefined(); // the data source's own URL setting is the target
    const header = routes[0].headers.find((h) => h.name === 'Authorization')!;
    const ds = { uid: 'x', url: 'http://tocsin', jsonData: {} };
    expect(renderRouteTemplate(header.content, { ...ds, secureJsonData: { token: 'tok' } })).toBe('Bearer tok');
    expect(renderRouteTemplate(header.content, { ...ds, secureJsonData: {} })).toBe('Bearer no-token-configured');
  });
});

describe('health check with --auth', () => {
  it('succeeds with the admin token', async () => {
    const result = await dataSource('good', server.token).testDatasource();
    expect(result.status).toBe('success');
    expect(result.message).toMatch(/SELECT 1 answered/);
  });

  it('a viewer token (tocsin token create --role viewer) is enough', async () => {
    const out = execFileSync(
      tocsinBinary(),
      [
        'token',
        'create',
        '--role',
        'viewer',
        '--description',
        'grafana',
        '--http-addr',
        server.url.replace('http://', ''),
      ],
      { env: { ...process.env, TOCSIN_TOKEN: server.token }, encoding: 'utf8' }
    );
    const viewer = out.trim().split('\n').pop()!.trim();
    expect(viewer).not.toBe(server.token);
    const result = await dataSource('viewer', viewer).testDatasource();
    expect(result.status).toBe('success');
  });

  it('explains a wrong token', async () => {
    const result = await dataSource('wrong', 'tocsin_000000000000_not-a-real-token').testDatasource();
    expect(result.status).toBe('error');
    expect(result.message).toMatch(/refused the query \(HTTP 401: unauthenticated: invalid token\)\. Set the token/);
  });

  it('explains a missing token', async () => {
    const result = await dataSource('none').testDatasource();
    expect(result.status).toBe('error');
    expect(result.message).toMatch(/HTTP 401/);
  });
});

describe('the token stays on the server side', () => {
  it('queries work with the token, and the token is only in what the proxy sends', async () => {
    const ds = dataSource('query', server.token);
    const requestsBefore = rt.backend.requests.length;
    const forwardedBefore = rt.backend.forwarded.length;
    const from = dateTime(Date.now() - 60_000);
    const to = dateTime(Date.now());
    const res = await ds.query({
      requestId: 't',
      interval: '1s',
      intervalMs: 1000,
      range: { from, to, raw: { from, to } },
      scopedVars: {},
      targets: [{ refId: 'A', sql: 'SELECT 1 AS one', format: 'table' }],
      timezone: 'utc',
      app: CoreApp.Dashboard,
      startTime: Date.now(),
    });
    expect(res.errors).toBeUndefined();
    expect(res.data[0].fields[0].values).toEqual([1]);

    const browserSide = JSON.stringify(rt.backend.requests.slice(requestsBefore));
    expect(browserSide).toContain('SELECT 1 AS one');
    expect(browserSide).not.toContain(server.token!);
    expect(browserSide).not.toMatch(/authorization/i);
    const serverSide = rt.backend.forwarded.slice(forwardedBefore);
    expect(serverSide).toHaveLength(1);
    expect(serverSide[0].headers.Authorization).toBe(`Bearer ${server.token}`);
  });
});

describe('annotations before any alert changed state', () => {
  const query = (source: DataSource, target: TocsinQuery) => {
    const from = dateTime(Date.now() - 3_600_000);
    const to = dateTime(Date.now());
    return source.query({
      requestId: 't',
      interval: '10s',
      intervalMs: 10_000,
      range: { from, to, raw: { from, to } },
      scopedVars: {},
      targets: [target],
      timezone: 'utc',
      app: CoreApp.Dashboard,
      startTime: Date.now(),
    });
  };

  it('the annotation query answers no events (system.alert_history exists, empty, from the start)', async () => {
    const ds = dataSource('anno', server.token);
    const target = { refId: 'Anno', ...ds.annotations!.getDefaultQuery!() } as TocsinQuery;
    const res = await query(ds, target);
    expect(res.errors).toBeUndefined();
    expect(await lastValueFrom(ds.annotations!.processEvents!({} as never, res.data))).toEqual([]);

    // the same SQL as a table panel: no rows, no error
    const panel = await query(ds, { ...target, refId: 'A', queryType: undefined, format: 'table' });
    expect(panel.errors).toBeUndefined();
    expect(panel.data[0].length).toBe(0);
  });
});
