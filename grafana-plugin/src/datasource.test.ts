/**
 * The plugin's query path against a live Tocsin (started here, stopped at
 * the end): macros, frames, logs, variables, annotations, health check.
 * Only Grafana's runtime services are replaced (src/test/grafanaRuntime.ts):
 * fetch does real HTTP through an emulation of Grafana's data source proxy.
 */
import {
  CoreApp,
  DataFrame,
  DataFrameType,
  DataQueryRequest,
  dateTime,
  FieldCache,
  FieldType,
  getFieldDisplayName,
  outerJoinDataFrames,
} from '@grafana/data';
import fs from 'fs';
import path from 'path';
import { lastValueFrom } from 'rxjs';

import { DataSource } from './datasource';
import { installRuntime, Runtime } from './test/grafanaRuntime';
import {
  directSql,
  httpRequest,
  PLUGIN_ROOT,
  postJson,
  startTocsin,
  TocsinServer,
  waitFor,
  writeLines,
} from './test/tocsinServer';
import { DEFAULT_SQL, TocsinQuery } from './types';

const BASE = Date.UTC(2023, 10, 14, 22, 0, 0); // 2023-11-14T22:00:00Z
const ns = (ms: number) => `${BigInt(ms) * BigInt(1000000)}`;

const RULES = `
groups:
  - name: grafana-plugin-test
    interval: 1s
    rules:
      - alert: ProbeHigh
        sql: SELECT device, max(value) AS value FROM alert_probe GROUP BY device
        thresholds: { critical: "> 2" }
`;

let server: TocsinServer;
let rt: Runtime;
let ds: DataSource;

function request(
  targets: TocsinQuery[],
  opts: { from?: number; to?: number; intervalMs?: number } = {}
): DataQueryRequest<TocsinQuery> {
  const from = dateTime(opts.from ?? BASE);
  const to = dateTime(opts.to ?? BASE + 115_000);
  return {
    requestId: 'test',
    interval: '30s',
    intervalMs: opts.intervalMs ?? 30_000,
    range: { from, to, raw: { from, to } },
    scopedVars: {},
    targets,
    timezone: 'utc',
    app: CoreApp.Dashboard,
    startTime: Date.now(),
  };
}

async function run(targets: TocsinQuery[], opts?: { from?: number; to?: number; intervalMs?: number }, source = ds) {
  return source.query(request(targets, opts));
}

async function table(sql: string, opts?: { from?: number; to?: number; intervalMs?: number }): Promise<DataFrame> {
  const res = await run([{ refId: 'A', sql, format: 'table' }], opts);
  expect(res.errors).toBeUndefined();
  expect(res.data).toHaveLength(1);
  return res.data[0];
}

function column(frame: DataFrame, name: string): unknown[] {
  const f = frame.fields.find((x) => x.name === name);
  if (!f) {
    throw new Error(`no field ${name} in ${frame.fields.map((x) => x.name).join(', ')}`);
  }
  return f.values;
}

beforeAll(async () => {
  server = await startTocsin({ rules: RULES });
  rt = installRuntime();
  ds = new DataSource(rt.backend.register({ uid: 'main', url: server.url, jsonData: {}, secureJsonData: {} }));

  const lines: string[] = [];
  for (let k = 0; k < 12; k++) {
    lines.push(`cpu,host=a usage=${k} ${ns(BASE + k * 10_000)}`);
    lines.push(`cpu,host=b usage=${100 + k} ${ns(BASE + k * 10_000)}`);
  }
  lines.push(`cpu,host=c usage=50 ${ns(BASE + 3_600_000)}`);
  lines.push(`cpu,host=o'brien usage=7 ${ns(BASE + 7_200_000)}`);
  await writeLines(server, lines);
  await writeLines(server, [`cpu,host=z usage=7 ${ns(BASE)}`], 'edge');

  // three log events over OTLP/HTTP JSON (Tocsin maps them to the logs table)
  const attr = (k: string, v: string) => ({ key: k, value: { stringValue: v } });
  const res = await postJson(server, '/v1/logs', {
    resourceLogs: [
      {
        resource: { attributes: [attr('service.name', 'api'), attr('host.name', 'h1')] },
        scopeLogs: [
          {
            logRecords: [
              {
                timeUnixNano: `${BigInt(BASE + 1_123) * BigInt(1000000) + BigInt(456789)}`,
                severityText: 'ERROR',
                body: { stringValue: 'payment failed: card declined' },
                traceId: '0af7651916cd43dd8448eb211c80319c',
                spanId: 'b7ad6b7169203331',
                attributes: [attr('region', 'eu')],
              },
              {
                timeUnixNano: ns(BASE + 2_000),
                severityText: 'INFO',
                body: { stringValue: 'request ok' },
                attributes: [attr('region', 'us')],
              },
            ],
          },
        ],
      },
      {
        resource: { attributes: [attr('service.name', 'worker'), attr('host.name', 'h2')] },
        scopeLogs: [
          { logRecords: [{ timeUnixNano: ns(BASE + 3_000), severityText: 'WARN', body: { stringValue: 'slow job' } }] },
        ],
      },
    ],
  });
  expect(res.status).toBe(200);
});

afterAll(async () => {
  await server?.stop();
});

describe('health check', () => {
  it('GET /health then SELECT 1 through the proxy; no token configured is accepted by a server without --auth', async () => {
    const health = JSON.parse((await httpRequest(`${server.url}/health`)).body);
    const before = rt.backend.forwarded.length;
    const result = await ds.testDatasource();
    expect(result).toEqual({
      status: 'success',
      message: `Tocsin ${health.version}: SELECT 1 answered (database public).`,
    });
    const sent = rt.backend.forwarded.slice(before);
    expect(sent.map((r) => `${r.method} ${r.url}`)).toEqual([
      `GET ${server.url}/health`,
      `POST ${server.url}/api/v1/sql`,
    ]);
    expect(JSON.parse(sent[1].body!)).toEqual({ sql: 'SELECT 1 AS ok', format: 'json' });
    // the route's fallback when no token is stored (Tocsin refuses an empty "Bearer ")
    expect(sent[1].headers.Authorization).toBe('Bearer no-token-configured');
  });

  it('reports an unreachable server', async () => {
    const down = new DataSource(
      rt.backend.register({ uid: 'down', url: 'http://127.0.0.1:9', jsonData: {}, secureJsonData: {} })
    );
    const result = await down.testDatasource();
    expect(result.status).toBe('error');
    expect(result.message).toMatch(/^Cannot reach Tocsin's HTTP API \(HTTP 502: Bad Gateway/);
  });
});

describe('macros, run by Tocsin', () => {
  it('$__timeFilter(ts) selects exactly the dashboard range', async () => {
    const sql = 'SELECT count(*) AS n FROM cpu WHERE $__timeFilter(ts)';
    const first = await table(sql, { from: BASE, to: BASE + 50_000 }); // both ends are samples: the range is closed
    expect(column(first, 'n')).toEqual([12]); // k = 0..5 for hosts a and b
    const all = await table(sql, { from: BASE, to: BASE + 115_000 });
    expect(column(all, 'n')).toEqual([24]); // host c (an hour later) is outside
    expect(all.meta?.executedQueryString).toBe(
      "SELECT count(*) AS n FROM cpu WHERE ts >= TIMESTAMP '2023-11-14T22:00:00.000Z' AND ts <= TIMESTAMP '2023-11-14T22:01:55.000Z'"
    );
  });

  it('$__timeFrom() and $__timeTo() come back as the range ends, typed as time', async () => {
    const frame = await table('SELECT $__timeFrom() AS f, $__timeTo() AS t', { from: BASE + 500, to: BASE + 115_000 });
    expect(frame.fields.map((f) => f.type)).toEqual([FieldType.time, FieldType.time]);
    expect(column(frame, 'f')).toEqual([BASE + 500]);
    expect(column(frame, 't')).toEqual([BASE + 115_000]);
  });

  it('$__interval is an INTERVAL Tocsin accepts', async () => {
    const frame = await table(
      'SELECT count(*) AS n FROM cpu WHERE ts >= $__timeTo() - $__interval AND ts <= $__timeTo()',
      {
        to: BASE + 110_000,
        intervalMs: 20_000,
      }
    );
    expect(column(frame, 'n')).toEqual([6]); // k = 9, 10, 11 for a and b
  });

  it('$__timeGroup(ts, $__interval) buckets by the panel interval; time series split by host, sorted by time', async () => {
    const res = await run([
      {
        refId: 'A',
        format: 'time_series',
        sql: `SELECT $__timeGroup(ts, $__interval) AS time, host, count(*) AS n, avg(usage) AS usage
              FROM cpu WHERE $__timeFilter(ts) GROUP BY 1, host ORDER BY 1 DESC`,
      },
    ]);
    expect(res.errors).toBeUndefined();
    expect(res.data).toHaveLength(2);
    const byHost = (h: string) => res.data.find((f: DataFrame) => f.fields[1].labels?.host === h) as DataFrame;
    const buckets = [BASE, BASE + 30_000, BASE + 60_000, BASE + 90_000];
    for (const [host, offset] of [
      ['a', 0],
      ['b', 100],
    ] as const) {
      const f = byHost(host);
      expect(f.refId).toBe('A');
      expect(f.fields.map((x) => [x.name, x.type])).toEqual([
        ['time', FieldType.time],
        ['n', FieldType.number],
        ['usage', FieldType.number],
      ]);
      expect(column(f, 'time')).toEqual(buckets);
      expect(column(f, 'n')).toEqual([3, 3, 3, 3]);
      expect(column(f, 'usage')).toEqual([1, 4, 7, 10].map((v) => v + offset));
      expect(f.fields[2].labels).toEqual({ host });
      expect(f.meta?.type).toBe(DataFrameType.TimeSeriesMulti);
    }

    // Grafana's side: the time series panel joins the frames on time; the series stay apart by name
    const joined = outerJoinDataFrames({ frames: res.data })!;
    expect(joined.length).toBe(4);
    expect(joined.fields.filter((f) => f.type === FieldType.time)).toHaveLength(1);
    const names = joined.fields
      .filter((f) => f.type === FieldType.number)
      .map((f) => getFieldDisplayName(f, joined, res.data));
    expect(new Set(names).size).toBe(4);
    expect(names.filter((n) => n.includes('usage'))).toHaveLength(2);
  });

  it('$__timeGroup with a fixed duration and with a template variable', async () => {
    rt.templates.variables = [{ name: 'bucket', value: '1m' }];
    try {
      for (const iv of ['1m', '$bucket']) {
        const frame = await table(
          `SELECT $__timeGroup(ts, ${iv}) AS time, count(*) AS n FROM cpu WHERE $__timeFilter(ts) GROUP BY 1 ORDER BY 1`
        );
        expect(column(frame, 'time')).toEqual([BASE, BASE + 60_000]);
        expect(column(frame, 'n')).toEqual([12, 12]);
      }
    } finally {
      rt.templates.variables = [];
    }
  });

  it('the default query of a new panel runs as it is', async () => {
    const res = await run([{ refId: 'A', sql: DEFAULT_SQL, format: 'time_series' }]);
    expect(res.errors).toBeUndefined();
    expect(res.data.map((f: DataFrame) => f.fields[1].labels?.host).sort()).toEqual(['a', 'b']);
  });
});

describe('results as frames', () => {
  it("table format keeps Tocsin's column order and types", async () => {
    const frame = await table(
      'SELECT ts, host, usage, usage > 5 AS high FROM cpu WHERE $__timeFilter(ts) ORDER BY ts DESC, host LIMIT 2'
    );
    expect(frame.fields.map((f) => [f.name, f.type])).toEqual([
      ['ts', FieldType.time],
      ['host', FieldType.string],
      ['usage', FieldType.number],
      ['high', FieldType.boolean],
    ]);
    expect(column(frame, 'ts')).toEqual([BASE + 110_000, BASE + 110_000]);
    expect(column(frame, 'host')).toEqual(['a', 'b']);
    expect(column(frame, 'usage')).toEqual([11, 111]);
    expect(column(frame, 'high')).toEqual([true, true]);
  });

  it("Tocsin's error reaches the panel with its refId; the other queries of the request still answer", async () => {
    const res = await run([
      { refId: 'A', sql: 'SELECT nope FROM cpu', format: 'table' },
      { refId: 'B', sql: 'SELECT count(*) AS n FROM cpu WHERE $__timeFilter(ts)', format: 'table' },
    ]);
    expect(res.errors).toHaveLength(1);
    expect(res.errors![0].refId).toBe('A');
    expect(res.errors![0].status).toBe(400);
    expect(res.errors![0].message).toMatch(/No field named nope/);
    expect(res.data).toHaveLength(1);
    expect(res.data[0].refId).toBe('B');
    expect(column(res.data[0], 'n')).toEqual([24]);
  });

  it('time series format without a time column is an error that names the fix', async () => {
    const res = await run([{ refId: 'A', sql: 'SELECT host, usage FROM cpu LIMIT 1', format: 'time_series' }]);
    expect(res.data).toHaveLength(0);
    expect(res.errors![0].message).toMatch(/time series format needs a timestamp column/);
  });

  it('hidden and empty queries are not sent', async () => {
    const before = rt.backend.requests.length;
    const res = await run([
      { refId: 'A', sql: 'SELECT 1', hide: true },
      { refId: 'B', sql: '   ' },
    ]);
    expect(res.data).toHaveLength(0);
    expect(rt.backend.requests.length).toBe(before);
  });

  it("database: a query's override and the data source's default", async () => {
    const hosts = async (source: DataSource, database?: string) => {
      const res = await run(
        [{ refId: 'A', sql: 'SELECT DISTINCT host FROM cpu ORDER BY 1', format: 'table', database }],
        {},
        source
      );
      expect(res.errors).toBeUndefined();
      return column(res.data[0], 'host');
    };
    expect(await hosts(ds)).toEqual(['a', 'b', 'c', "o'brien"]);
    expect(await hosts(ds, 'edge')).toEqual(['z']);
    expect(JSON.parse(rt.backend.forwarded[rt.backend.forwarded.length - 1].body!).database).toBe('edge');
    const edge = new DataSource(
      rt.backend.register({ uid: 'edge', url: server.url, jsonData: { defaultDatabase: 'edge' }, secureJsonData: {} })
    );
    expect(await hosts(edge)).toEqual(['z']);
    expect(await hosts(edge, 'public')).toEqual(['a', 'b', 'c', "o'brien"]);
  });
});

describe('logs format', () => {
  it("turns Tocsin's logs table into Grafana's data-plane logs frame", async () => {
    const res = await run([
      { refId: 'L', sql: 'SELECT * FROM logs WHERE $__timeFilter(ts) ORDER BY ts', format: 'logs' },
    ]);
    expect(res.errors).toBeUndefined();
    expect(res.data).toHaveLength(1);
    const frame: DataFrame = res.data[0];
    expect(frame.refId).toBe('L');
    expect(frame.meta?.type).toBe(DataFrameType.LogLines);
    expect(frame.meta?.typeVersion).toEqual([0, 0]);
    expect(frame.meta?.preferredVisualisationType).toBe('logs');

    // what Grafana's data-plane logs parser looks up: fields by name and type
    const cache = new FieldCache(frame);
    const get = (name: string, type: FieldType) => {
      const f = cache.getFieldByName(name);
      expect(f?.type).toBe(type);
      return f!;
    };
    const timestamp = get('timestamp', FieldType.time);
    const body = get('body', FieldType.string);
    const severity = get('severity', FieldType.string);
    const id = get('id', FieldType.string);
    const labels = get('labels', FieldType.other);

    expect(timestamp.values).toEqual([BASE + 1_123, BASE + 2_000, BASE + 3_000]);
    expect(timestamp.nanos).toEqual([456789, 0, 0]);
    expect(body.values).toEqual(['payment failed: card declined', 'request ok', 'slow job']);
    expect(severity.values).toEqual(['error', 'info', 'warn']);
    expect(new Set(id.values).size).toBe(3);
    expect(labels.values[0]).toEqual({
      service: 'api',
      host: 'h1',
      level: 'error',
      trace_id: '0af7651916cd43dd8448eb211c80319c',
      span_id: 'b7ad6b7169203331',
      region: 'eu',
    });
    expect(labels.values[2]).toEqual({ service: 'worker', host: 'h2', level: 'warn' });
  });

  it('an empty result is an empty logs frame, not an error', async () => {
    const res = await run([{ refId: 'L', sql: "SELECT * FROM logs WHERE level = 'fatal'", format: 'logs' }]);
    expect(res.errors).toBeUndefined();
    expect(res.data[0].meta?.type).toBe(DataFrameType.LogLines);
    expect(res.data[0].length).toBe(0);
    expect(res.data[0].fields.map((f: { name: string }) => f.name)).toEqual([
      'timestamp',
      'body',
      'severity',
      'id',
      'labels',
    ]);
  });
});

describe('template variables', () => {
  afterEach(() => {
    rt.templates.variables = [];
  });

  it('tables: information_schema.tables', async () => {
    const values = await ds.metricFindQuery(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
    );
    expect(values.map((v) => v.text)).toEqual(['cpu', 'logs']);
  });

  it('tag values: SELECT DISTINCT, and __text/__value pairs with the dashboard range', async () => {
    const hosts = await ds.metricFindQuery('SELECT DISTINCT host FROM cpu ORDER BY 1');
    expect(hosts).toEqual([{ text: 'a' }, { text: 'b' }, { text: 'c' }, { text: "o'brien" }]);
    const from = dateTime(BASE);
    const to = dateTime(BASE + 115_000);
    const pairs = await ds.metricFindQuery(
      'SELECT host AS __text, max(usage) AS __value FROM cpu WHERE $__timeFilter(ts) GROUP BY host ORDER BY 1',
      { range: { from, to, raw: { from, to } } }
    );
    expect(pairs).toEqual([
      { text: 'a', value: 11 },
      { text: 'b', value: 111 },
    ]);
  });

  it('variables are interpolated with SQL quoting: multi-value IN (...), single value inside quotes', async () => {
    rt.templates.variables = [
      { name: 'hosts', value: ['a', "o'brien"], multi: true },
      { name: 'h', value: "o'brien" },
    ];
    const inList = await table('SELECT DISTINCT host FROM cpu WHERE host IN ($hosts) ORDER BY 1');
    expect(column(inList, 'host')).toEqual(['a', "o'brien"]);
    expect(inList.meta?.executedQueryString).toBe(
      "SELECT DISTINCT host FROM cpu WHERE host IN ('a','o''brien') ORDER BY 1"
    );
    const single = await table("SELECT count(*) AS n FROM cpu WHERE host = '$h'");
    expect(column(single, 'n')).toEqual([1]);
    // chained variables: a variable query using another variable
    const others = await ds.metricFindQuery("SELECT DISTINCT host FROM cpu WHERE host <> '${h}' ORDER BY 1");
    expect(others.map((v) => v.text)).toEqual(['a', 'b', 'c']);
  });

  it('interpolateVariablesInQueries (Explore, inspector) quotes the same way', () => {
    rt.templates.variables = [{ name: 'hosts', value: ['a', 'b'], multi: true }];
    const [q] = ds.interpolateVariablesInQueries([{ refId: 'A', sql: 'SELECT * FROM cpu WHERE host IN ($hosts)' }], {});
    expect(q.sql).toBe("SELECT * FROM cpu WHERE host IN ('a','b')");
  });
});

describe('annotations from system.alert_history', () => {
  it('the default annotation query turns alert transitions into events', async () => {
    await writeLines(server, [`alert_probe,device=d1 value=5`]);
    const firing = await waitFor('the alert to fire', async () => {
      const rows = await directSql(server, "SELECT id FROM system.alert_history WHERE to_state = 'firing'");
      return rows.length > 0 ? String(rows[0].id) : undefined;
    });
    const ack = await postJson(server, `/api/v1/alerts/${firing}/ack`, { by: 'grafana-test', comment: 'looking' });
    expect(ack.status).toBe(200);
    await waitFor('the acknowledgement in the history', async () => {
      const rows = await directSql(server, "SELECT note FROM system.alert_history WHERE note <> ''");
      return rows.length > 0 ? true : undefined;
    });

    const anno = ds.annotations!;
    const target = { refId: 'Anno', ...anno.getDefaultQuery!() } as TocsinQuery;
    expect(target.sql).toContain('FROM system.alert_history');
    const now = Date.now();
    const res = await run([target], { from: now - 3_600_000, to: now + 60_000 });
    expect(res.errors).toBeUndefined();
    const events = (await lastValueFrom(anno.processEvents!({} as never, res.data)))!;
    expect(events).toHaveLength(2);
    const [fired, acked] = events;
    expect(fired.title).toBe('ProbeHigh: inactive → firing');
    expect(fired.color).toBe('red');
    expect(fired.tags).toEqual(['ProbeHigh', 'firing', 'critical', 'device=d1']);
    expect(fired.text).toContain('value: 5');
    expect(fired.time).toBeGreaterThan(now - 120_000);
    expect(fired.time).toBeLessThanOrEqual(now + 60_000);
    expect(acked.title).toBe('ProbeHigh: firing → firing');
    expect(acked.text).toMatch(/note: acknowledged by grafana-test.*looking/);
    expect(acked.time!).toBeGreaterThanOrEqual(fired.time!);

    // outside the range: no events (the time filter applies)
    const before = await run([target], { from: BASE, to: BASE + 60_000 });
    expect(await lastValueFrom(anno.processEvents!({} as never, before.data))).toEqual([]);
  });

  it('an annotation saved without a query gets the default one', () => {
    const prepared = ds.annotations!.prepareAnnotation!({ name: 'alerts', enable: true, iconColor: 'red' } as never);
    expect(prepared.target).toEqual(
      expect.objectContaining({ refId: 'Anno', format: 'table', queryType: 'annotations' })
    );
    expect(prepared.target!.sql).toContain('system.alert_history');
  });
});

describe("the Flight SQL route's shipped dashboard", () => {
  it('docs/grafana/dashboards/host-overview.json: every panel target runs as it is ($__dateBin, queryText) and returns rows', async () => {
    const file = path.join(PLUGIN_ROOT, '..', 'docs', 'grafana', 'dashboards', 'host-overview.json');
    const dashboard = JSON.parse(fs.readFileSync(file, 'utf8'));
    const targets: TocsinQuery[] = dashboard.panels.flatMap((p: { targets?: TocsinQuery[] }) => p.targets ?? []);
    expect(targets.length).toBeGreaterThanOrEqual(4);
    // TSBS-shaped cpu rows (integer fields) in their own database
    const lines: string[] = [];
    for (let k = 0; k < 6; k++) {
      for (const [host, region] of [
        ['host_0', 'eu-west-1'],
        ['host_1', 'us-east-1'],
      ]) {
        lines.push(
          `cpu,hostname=${host},region=${region} usage_user=${10 + k}i,usage_system=${k}i,usage_iowait=1i,usage_idle=${80 - k}i ${ns(BASE + k * 20_000)}`
        );
      }
    }
    await writeLines(server, lines, 'tsbs');
    for (const t of targets) {
      // the Flight SQL targets as they are (queryText, format), only pointed at the test database
      expect(t.sql).toBeUndefined();
      const res = await run([{ ...t, database: 'tsbs' }]);
      expect({ sql: t.queryText, errors: res.errors }).toEqual({ sql: t.queryText, errors: undefined });
      expect(res.data.reduce((n: number, f: DataFrame) => n + f.length, 0)).toBeGreaterThan(0);
    }
  });
});
