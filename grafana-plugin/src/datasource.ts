import {
  AnnotationQuery,
  CoreApp,
  DataFrame,
  DataQueryError,
  DataQueryRequest,
  DataQueryResponse,
  DataSourceApi,
  DataSourceInstanceSettings,
  getDefaultTimeRange,
  LegacyMetricFindQueryOptions,
  MetricFindValue,
  ScopedVars,
  TestDataSourceResponse,
  TimeRange,
} from '@grafana/data';
import { FetchError, getBackendSrv, getTemplateSrv, isFetchError } from '@grafana/runtime';
import { lastValueFrom, of } from 'rxjs';

import {
  framesToAnnotations,
  rowsToLogsFrame,
  rowsToMetricFindValues,
  rowsToTableFrame,
  rowsToTimeSeriesFrames,
} from './frames';
import { expandMacros } from './macros';
import { DEFAULT_ANNOTATION_SQL, DEFAULT_QUERY, Row, sqlOf, TocsinOptions, TocsinQuery } from './types';
import { interpolateVariable } from './variables';

/** An error answered by Tocsin (`{"error": "..."}`) or by Grafana's proxy. */
export class TocsinError extends Error {
  constructor(
    message: string,
    readonly status?: number
  ) {
    super(message);
    this.name = 'TocsinError';
  }
}

function errorMessage(err: unknown): { message: string; status?: number } {
  if (isFetchError(err)) {
    const e = err as FetchError<{ error?: string; message?: string } | string>;
    const data = e.data;
    let text: string | undefined;
    if (data && typeof data === 'object') {
      text = data.error ?? data.message;
    } else if (typeof data === 'string' && data !== '') {
      text = data;
    }
    return { message: text ?? e.statusText ?? `HTTP ${e.status}`, status: e.status };
  }
  if (err instanceof TocsinError) {
    return { message: err.message, status: err.status };
  }
  if (err instanceof Error) {
    return { message: err.message };
  }
  return { message: String(err) };
}

export class DataSource extends DataSourceApi<TocsinQuery, TocsinOptions> {
  /** Grafana's proxy URL of this data source (`/api/datasources/proxy/uid/<uid>`). */
  readonly url: string;
  readonly defaultDatabase?: string;

  constructor(instanceSettings: DataSourceInstanceSettings<TocsinOptions>) {
    super(instanceSettings);
    this.url = (instanceSettings.url ?? '').replace(/\/$/, '');
    this.defaultDatabase = instanceSettings.jsonData?.defaultDatabase?.trim() || undefined;
    this.annotations = {
      getDefaultQuery: () => ({ sql: DEFAULT_ANNOTATION_SQL, format: 'table', queryType: 'annotations' }),
      prepareAnnotation: (json: AnnotationQuery<TocsinQuery> & { rawQuery?: string }) => {
        if (!json.target) {
          json.target = {
            refId: 'Anno',
            sql: json.rawQuery ?? DEFAULT_ANNOTATION_SQL,
            format: 'table',
            queryType: 'annotations',
          };
        }
        return json;
      },
      processEvents: (_anno, frames: DataFrame[]) => of(framesToAnnotations(frames)),
    };
  }

  getDefaultQuery(_app: CoreApp): Partial<TocsinQuery> {
    return DEFAULT_QUERY;
  }

  filterQuery(query: TocsinQuery): boolean {
    return !query.hide && !!sqlOf(query).trim();
  }

  getQueryDisplayText(query: TocsinQuery): string {
    return sqlOf(query);
  }

  /** POST /api/v1/sql through Grafana's proxy (which adds the token, see plugin.json routes). */
  async runSql(sql: string, database?: string, requestId?: string): Promise<Row[]> {
    let res;
    try {
      res = await lastValueFrom(
        getBackendSrv().fetch<Row[]>({
          url: `${this.url}/api/v1/sql`,
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          data: database ? { sql, format: 'json', database } : { sql, format: 'json' },
          requestId,
          showErrorAlert: false,
        })
      );
    } catch (err) {
      const { message, status } = errorMessage(err);
      throw new TocsinError(message, status);
    }
    if (!Array.isArray(res.data)) {
      throw new TocsinError(
        `unexpected answer from Tocsin (not a JSON array): ${JSON.stringify(res.data).slice(0, 200)}`
      );
    }
    return res.data;
  }

  /** Expands macros, then template variables (SQL-quoted, see variables.ts). */
  interpolateSql(sql: string, range: TimeRange, intervalMs: number, scopedVars: ScopedVars = {}): string {
    const templateSrv = getTemplateSrv();
    const expanded = expandMacros(sql, {
      from: range.from.valueOf(),
      to: range.to.valueOf(),
      intervalMs,
      resolveArg: (text) => templateSrv.replace(text, scopedVars),
    });
    return templateSrv.replace(expanded, scopedVars, interpolateVariable);
  }

  private database(query: TocsinQuery, scopedVars: ScopedVars = {}): string | undefined {
    const db = query.database?.trim();
    if (db) {
      return getTemplateSrv().replace(db, scopedVars);
    }
    return this.defaultDatabase;
  }

  /** Variables interpolated (not macros: they need the request's range), for Explore and query inspection. */
  interpolateVariablesInQueries(queries: TocsinQuery[], scopedVars: ScopedVars): TocsinQuery[] {
    const templateSrv = getTemplateSrv();
    return queries.map((q) => ({
      ...q,
      sql: sqlOf(q) ? templateSrv.replace(sqlOf(q), scopedVars, interpolateVariable) : q.sql,
      database: q.database ? templateSrv.replace(q.database, scopedVars) : q.database,
    }));
  }

  async runQuery(target: TocsinQuery, request: DataQueryRequest<TocsinQuery>): Promise<DataFrame[]> {
    const sql = this.interpolateSql(sqlOf(target), request.range, request.intervalMs, request.scopedVars);
    const rows = await this.runSql(
      sql,
      this.database(target, request.scopedVars),
      `${request.requestId}_${target.refId}`
    );
    switch (target.format ?? 'time_series') {
      case 'table':
        return [rowsToTableFrame(rows, target.refId, sql)];
      case 'logs':
        return [rowsToLogsFrame(rows, target.refId, sql)];
      default:
        return rowsToTimeSeriesFrames(rows, target.refId, sql);
    }
  }

  async query(request: DataQueryRequest<TocsinQuery>): Promise<DataQueryResponse> {
    const targets = request.targets.filter((t) => this.filterQuery(t));
    const data: DataFrame[] = [];
    const errors: DataQueryError[] = [];
    const results = await Promise.all(
      targets.map(async (t) => {
        try {
          return { frames: await this.runQuery(t, request) };
        } catch (err) {
          const { message, status } = errorMessage(err);
          return { error: { refId: t.refId, message, status } as DataQueryError };
        }
      })
    );
    for (const r of results) {
      if (r.frames) {
        data.push(...r.frames);
      } else if (r.error) {
        errors.push(r.error);
      }
    }
    return errors.length > 0 ? { data, errors } : { data };
  }

  /**
   * Template variables: a SQL statement whose first column holds the values
   * (or columns __text and __value). Macros work with the dashboard's range.
   */
  async metricFindQuery(
    query: string | { sql?: string; query?: string; database?: string },
    options?: LegacyMetricFindQueryOptions
  ): Promise<MetricFindValue[]> {
    const text = typeof query === 'string' ? query : (query?.sql ?? query?.query ?? '');
    if (!text.trim()) {
      return [];
    }
    const range = options?.range ?? getDefaultTimeRange();
    const intervalMs = Math.max(1000, Math.round((range.to.valueOf() - range.from.valueOf()) / 1000));
    const sql = this.interpolateSql(text, range, intervalMs, options?.scopedVars);
    const database = typeof query === 'object' && query?.database ? query.database : this.defaultDatabase;
    const rows = await this.runSql(sql, database);
    return rowsToMetricFindValues(rows);
  }

  /** Health check: GET /health (reachability, version), then SELECT 1 (credentials, database). */
  async testDatasource(): Promise<TestDataSourceResponse> {
    let version = '';
    try {
      const res = await lastValueFrom(
        getBackendSrv().fetch<{ status?: string; version?: string }>({
          url: `${this.url}/health`,
          method: 'GET',
          showErrorAlert: false,
        })
      );
      if (res.data?.status !== 'ok') {
        return { status: 'error', message: `Tocsin's /health answered ${JSON.stringify(res.data)}` };
      }
      version = res.data.version ?? '';
    } catch (err) {
      const { message, status } = errorMessage(err);
      return {
        status: 'error',
        message: `Cannot reach Tocsin's HTTP API (${status ? `HTTP ${status}: ` : ''}${message}). Check the URL.`,
      };
    }
    const db = this.defaultDatabase ?? 'public';
    try {
      const rows = await this.runSql('SELECT 1 AS ok', this.defaultDatabase);
      if (rows.length !== 1 || rows[0].ok !== 1) {
        return { status: 'error', message: `SELECT 1 answered ${JSON.stringify(rows)}` };
      }
    } catch (err) {
      const { message, status } = errorMessage(err);
      if (status === 401 || status === 403) {
        return {
          status: 'error',
          message: `Tocsin ${version} refused the query (HTTP ${status}: ${message}). Set the token: with \`tocsin serve --auth\` the admin token is in <data-dir>/admin-token, or create a viewer one: \`tocsin token create --role viewer\`.`,
        };
      }
      return { status: 'error', message: `Tocsin ${version} is up, but SELECT 1 failed: ${message}` };
    }
    return { status: 'success', message: `Tocsin ${version}: SELECT 1 answered (database ${db}).` };
  }
}
