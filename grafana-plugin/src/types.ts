import { DataSourceJsonData } from '@grafana/data';
import { DataQuery } from '@grafana/schema';

/** How a query's rows become data frames. */
export type QueryFormat = 'time_series' | 'table' | 'logs';

export const FORMATS: Array<{ label: string; value: QueryFormat; description: string }> = [
  { label: 'Time series', value: 'time_series', description: 'One series per combination of string columns' },
  { label: 'Table', value: 'table', description: 'Rows as they come' },
  { label: 'Logs', value: 'logs', description: 'Grafana logs frame (ts, message, level, ...)' },
];

export interface TocsinQuery extends DataQuery {
  /** SQL text; macros ($__timeFilter, $__timeGroup, ...) and template variables are expanded before sending. */
  sql?: string;
  format?: QueryFormat;
  /** Overrides the data source's default database for this query. */
  database?: string;
  /** 'annotations' marks the annotation query (a missing system.alert_history means no events yet). */
  queryType?: string;
  /** The Flight SQL plugin's name for the SQL text: read when `sql` is absent, so its panels' targets work as they are. */
  queryText?: string;
}

/** The SQL text of a query (`sql`, else the Flight SQL plugin's `queryText`). */
export function sqlOf(query: TocsinQuery): string {
  return query.sql ?? query.queryText ?? '';
}

export const DEFAULT_SQL = `SELECT $__timeGroup(ts, $__interval) AS time, host, avg(usage) AS usage
FROM cpu
WHERE $__timeFilter(ts)
GROUP BY 1, host
ORDER BY 1`;

export const DEFAULT_QUERY: Partial<TocsinQuery> = {
  sql: DEFAULT_SQL,
  format: 'time_series',
};

/** The annotation query of a new annotation: transitions of Tocsin's alerts. */
export const DEFAULT_ANNOTATION_SQL = `SELECT ts AS time, alertname, from_state, to_state, severity, value, labels, note, id
FROM system.alert_history
WHERE $__timeFilter(ts)
ORDER BY ts`;

/** Options stored in the data source's jsonData (visible to the browser). */
export interface TocsinOptions extends DataSourceJsonData {
  /** Database used when a query names none (Tocsin's default is "public"). */
  defaultDatabase?: string;
}

/** Stored encrypted by Grafana; only its proxy reads it (plugin.json routes). */
export interface TocsinSecureJsonData {
  token?: string;
}

/** One row of POST /api/v1/sql with format=json. */
export type Row = Record<string, unknown>;
