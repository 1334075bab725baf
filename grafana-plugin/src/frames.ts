import {
  AnnotationEvent,
  createDataFrame,
  DataFrame,
  DataFrameType,
  Field,
  FieldType,
  Labels,
  MetricFindValue,
} from '@grafana/data';

import { Row } from './types';

/**
 * Tocsin answers POST /api/v1/sql (format json) with an array of row
 * objects. JSON carries no column types, so they are inferred per column
 * from its non-null values:
 *
 * - all numbers → number; all booleans → boolean;
 * - all strings shaped like Tocsin's timestamps (RFC 3339, e.g.
 *   `2023-11-14T22:13:20.5+00:00`, or without an offset, read as UTC) → time,
 *   with the sub-millisecond part kept in `field.nanos`;
 * - other strings → string; objects and arrays → other;
 * - a column that is NULL in every row → string (nothing to infer from).
 *
 * Integers beyond 2^53 lose precision in JSON; NaN and ±Inf arrive as null.
 */

export interface ParsedTime {
  ms: number;
  /** nanoseconds beyond the millisecond, 0..999999 */
  nanos: number;
}

const TIME_RE = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?$/;

/** Parses one of Tocsin's timestamp strings; null if it is not one. */
export function parseTime(text: string): ParsedTime | null {
  const m = TIME_RE.exec(text);
  if (!m) {
    return null;
  }
  const frac = (m[7] ?? '').padEnd(9, '0');
  const fracNs = Number(frac);
  let ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) + Math.floor(fracNs / 1e6);
  const tz = m[8];
  if (tz && tz !== 'Z') {
    const sign = tz[0] === '-' ? -1 : 1;
    const digits = tz.slice(1).replace(':', '');
    const offsetMin = Number(digits.slice(0, 2)) * 60 + Number(digits.slice(2, 4));
    ms -= sign * offsetMin * 60_000;
  }
  if (!Number.isFinite(ms)) {
    return null;
  }
  return { ms, nanos: fracNs % 1e6 };
}

export interface Column {
  name: string;
  type: FieldType;
  values: unknown[];
  /** for time columns: sub-millisecond nanoseconds */
  nanos?: number[];
  /** for time columns: the text Tocsin sent */
  raw?: Array<string | null>;
}

/** Column names in the order Tocsin sent them (the first row's keys, then any new ones). */
export function columnNames(rows: Row[]): string[] {
  const names: string[] = [];
  const seen = new Set<string>();
  for (const row of rows) {
    for (const k of Object.keys(row)) {
      if (!seen.has(k)) {
        seen.add(k);
        names.push(k);
      }
    }
  }
  return names;
}

export function inferType(values: unknown[]): FieldType {
  let kind: FieldType | null = null;
  for (const v of values) {
    if (v === null || v === undefined) {
      continue;
    }
    let k: FieldType;
    if (typeof v === 'number') {
      k = FieldType.number;
    } else if (typeof v === 'boolean') {
      k = FieldType.boolean;
    } else if (typeof v === 'string') {
      k = parseTime(v) ? FieldType.time : FieldType.string;
    } else {
      return FieldType.other;
    }
    if (kind === null) {
      kind = k;
    } else if (kind !== k) {
      // mixed: timestamps and other text are text; anything else is other
      if ((kind === FieldType.time || kind === FieldType.string) && (k === FieldType.time || k === FieldType.string)) {
        kind = FieldType.string;
      } else {
        return FieldType.other;
      }
    }
  }
  return kind ?? FieldType.string;
}

export function rowsToColumns(rows: Row[]): Column[] {
  return columnNames(rows).map((name) => {
    const values = rows.map((r) => (r[name] === undefined ? null : r[name]));
    const type = inferType(values);
    if (type === FieldType.time) {
      const ms: Array<number | null> = [];
      const nanos: number[] = [];
      const raw: Array<string | null> = [];
      for (const v of values) {
        const t = typeof v === 'string' ? parseTime(v) : null;
        ms.push(t ? t.ms : null);
        nanos.push(t ? t.nanos : 0);
        raw.push(typeof v === 'string' ? v : null);
      }
      return { name, type, values: ms, nanos, raw };
    }
    return { name, type, values };
  });
}

function toField(c: Column, rowOrder?: number[], labels?: Labels): Field {
  const pick = <T>(arr: T[]): T[] => (rowOrder ? rowOrder.map((i) => arr[i]) : arr.slice());
  const field: Field = { name: c.name, type: c.type, config: {}, values: pick(c.values) };
  if (c.nanos && c.nanos.some((n) => n !== 0)) {
    field.nanos = pick(c.nanos);
  }
  if (labels && Object.keys(labels).length > 0) {
    field.labels = labels;
  }
  return field;
}

/** Table format: one frame, columns in order, types inferred. */
export function rowsToTableFrame(rows: Row[], refId: string, executedQueryString?: string): DataFrame {
  const columns = rowsToColumns(rows);
  return createDataFrame({
    refId,
    meta: { executedQueryString },
    fields: columns.map((c) => toField(c)),
  });
}

export class FrameError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'FrameError';
  }
}

/** The time column: one named "time", else the first time-typed one. */
export function pickTimeColumn(columns: Column[], preferred: string[] = ['time']): Column | undefined {
  const times = columns.filter((c) => c.type === FieldType.time);
  for (const p of preferred) {
    const found = times.find((c) => c.name.toLowerCase() === p);
    if (found) {
      return found;
    }
  }
  return times[0];
}

/**
 * Time series format. A time column (named `time`, else the first
 * timestamp column) and numeric columns; every string column is a label,
 * and each distinct combination of labels is its own frame (Grafana's
 * "multi" time series: one frame per series, the numeric fields carrying
 * the labels), sorted by time. Without string columns: one wide frame.
 * Boolean columns count as values (0/1); other time and non-scalar columns
 * are dropped.
 */
export function rowsToTimeSeriesFrames(rows: Row[], refId: string, executedQueryString?: string): DataFrame[] {
  if (rows.length === 0) {
    return [createDataFrame({ refId, meta: { executedQueryString }, fields: [] })];
  }
  const columns = rowsToColumns(rows);
  const time = pickTimeColumn(columns);
  if (!time) {
    throw new FrameError(
      'time series format needs a timestamp column (e.g. `SELECT $__timeGroup(ts, $__interval) AS time, ...`); use the Table format for other results'
    );
  }
  const labelCols = columns.filter((c) => c.type === FieldType.string);
  const valueCols: Column[] = columns
    .filter((c) => c !== time && (c.type === FieldType.number || c.type === FieldType.boolean))
    .map((c) =>
      c.type === FieldType.boolean
        ? { ...c, type: FieldType.number, values: c.values.map((v) => (v === null ? null : v ? 1 : 0)) }
        : c
    );
  if (valueCols.length === 0) {
    throw new FrameError('time series format needs at least one numeric column');
  }

  // group row indexes by their labels, keeping first-seen order of series
  const groups = new Map<string, { labels: Labels; rows: number[] }>();
  for (let i = 0; i < rows.length; i++) {
    if (time.values[i] === null) {
      continue;
    }
    const labels: Labels = {};
    for (const lc of labelCols) {
      const v = lc.values[i];
      if (v !== null && v !== undefined) {
        labels[lc.name] = String(v);
      }
    }
    const key = JSON.stringify(labelCols.map((lc) => lc.values[i] ?? null));
    let g = groups.get(key);
    if (!g) {
      g = { labels, rows: [] };
      groups.set(key, g);
    }
    g.rows.push(i);
  }

  const multi = labelCols.length > 0;
  const frames: DataFrame[] = [];
  for (const g of groups.values()) {
    const order = g.rows.slice().sort((a, b) => {
      const d = (time.values[a] as number) - (time.values[b] as number);
      return d !== 0 ? d : (time.nanos?.[a] ?? 0) - (time.nanos?.[b] ?? 0);
    });
    frames.push(
      createDataFrame({
        refId,
        name: multi ? formatLabels(g.labels) : undefined,
        meta: {
          type: multi ? DataFrameType.TimeSeriesMulti : DataFrameType.TimeSeriesWide,
          typeVersion: [0, 1],
          executedQueryString,
        },
        fields: [
          { ...toField(time, order), name: 'time' },
          ...valueCols.map((c) => toField(c, order, multi ? g.labels : undefined)),
        ],
      })
    );
  }
  return frames;
}

function formatLabels(labels: Labels): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
}

const LOG_TIME = ['ts', 'timestamp', 'time'];
const LOG_BODY = ['message', 'body', 'line', 'msg'];
const LOG_LEVEL = ['level', 'severity', 'lvl'];

/**
 * Logs format: Grafana's data-plane logs frame (meta.type "log-lines"):
 * `timestamp` (time, with nanos), `body` (string), `severity`, `id`, and
 * `labels` (an object per row: every other scalar column, e.g. service,
 * host, trace_id, span_id, plus the keys of the JSON `attributes` column,
 * which do not override columns). From Tocsin's `logs` table: ts → timestamp,
 * message → body, level → severity. `id` is the row's `id` column if any,
 * else `<timestamp text>_<row>`. Rows keep the query's order.
 */
export function rowsToLogsFrame(rows: Row[], refId: string, executedQueryString?: string): DataFrame {
  const meta = {
    type: DataFrameType.LogLines,
    typeVersion: [0, 0] as [number, number],
    preferredVisualisationType: 'logs' as const,
    executedQueryString,
  };
  const empty = () =>
    createDataFrame({
      refId,
      meta,
      fields: [
        { name: 'timestamp', type: FieldType.time, values: [] },
        { name: 'body', type: FieldType.string, values: [] },
        { name: 'severity', type: FieldType.string, values: [] },
        { name: 'id', type: FieldType.string, values: [] },
        { name: 'labels', type: FieldType.other, values: [] },
      ],
    });
  if (rows.length === 0) {
    return empty();
  }
  const columns = rowsToColumns(rows);
  const byName = (names: string[], type?: FieldType) => {
    for (const n of names) {
      const c = columns.find((col) => col.name.toLowerCase() === n && (!type || col.type === type));
      if (c) {
        return c;
      }
    }
    return undefined;
  };
  const time = pickTimeColumn(columns, LOG_TIME);
  if (!time) {
    throw new FrameError('logs format needs a timestamp column (ts)');
  }
  const body =
    byName(LOG_BODY) ?? columns.find((c) => c.type === FieldType.string && !LOG_LEVEL.includes(c.name.toLowerCase()));
  if (!body) {
    throw new FrameError('logs format needs a message column (message)');
  }
  const level = byName(LOG_LEVEL);
  const idCol = byName(['id']);
  const attributes = byName(['attributes'], FieldType.string);
  const labelCols = columns.filter(
    (c) => c !== time && c !== body && c !== idCol && c !== attributes && c.type !== FieldType.other
  );

  const labels: Array<Record<string, string>> = [];
  const ids: string[] = [];
  for (let i = 0; i < rows.length; i++) {
    const l: Record<string, string> = {};
    for (const c of labelCols) {
      const v = c.values[i];
      if (v !== null && v !== undefined) {
        l[c.name] = c.type === FieldType.time ? String(c.raw?.[i] ?? v) : String(v);
      }
    }
    const attrText = attributes?.values[i];
    if (typeof attrText === 'string' && attrText.startsWith('{')) {
      try {
        const parsed = JSON.parse(attrText) as Record<string, unknown>;
        for (const [k, v] of Object.entries(parsed)) {
          if (!(k in l) && v !== null && v !== undefined) {
            l[k] = typeof v === 'string' ? v : JSON.stringify(v);
          }
        }
      } catch {
        l.attributes = attrText;
      }
    } else if (typeof attrText === 'string' && attrText !== '') {
      l.attributes = attrText;
    }
    labels.push(l);
    const idv = idCol?.values[i];
    ids.push(idv !== null && idv !== undefined ? String(idv) : `${time.raw?.[i] ?? time.values[i]}_${i}`);
  }

  const timestamp = toField(time);
  timestamp.name = 'timestamp';
  return createDataFrame({
    refId,
    meta,
    fields: [
      timestamp,
      {
        name: 'body',
        type: FieldType.string,
        values: body.values.map((v) =>
          v === null || v === undefined ? '' : typeof v === 'string' ? v : JSON.stringify(v)
        ),
      },
      {
        name: 'severity',
        type: FieldType.string,
        values: level
          ? level.values.map((v) => (v === null || v === undefined ? null : String(v)))
          : rows.map(() => null),
      },
      { name: 'id', type: FieldType.string, values: ids },
      { name: 'labels', type: FieldType.other, values: labels },
    ],
  });
}

/**
 * metricFindQuery: the first column's values, as text (Grafana SQL data
 * sources' convention: columns named `__text` and `__value` give a
 * display text and a value separately).
 */
export function rowsToMetricFindValues(rows: Row[]): MetricFindValue[] {
  const names = columnNames(rows);
  if (names.length === 0) {
    return [];
  }
  const hasText = names.includes('__text');
  const hasValue = names.includes('__value');
  return rows.map((r) => {
    if (hasText || hasValue) {
      const text = r[hasText ? '__text' : '__value'];
      const value = r[hasValue ? '__value' : '__text'];
      return {
        text: text === null ? 'null' : String(text),
        value: value === null ? undefined : (value as string | number),
      };
    }
    const v = r[names[0]];
    return { text: v === null || v === undefined ? 'null' : String(v) };
  });
}

const STATE_COLORS: Record<string, string> = {
  firing: 'red',
  pending: 'orange',
  resolved: 'green',
  inactive: 'green',
};

function fieldValue(frame: DataFrame, name: string, i: number): unknown {
  const f = frame.fields.find((x) => x.name.toLowerCase() === name);
  return f ? f.values[i] : undefined;
}

function str(v: unknown): string | undefined {
  return v === null || v === undefined || v === '' ? undefined : String(v);
}

/**
 * Annotation events from table frames. Rows of `system.alert_history`
 * (columns alertname and to_state) become one event per transition:
 * title "<alertname>: <from> → <to>", the severity, value, note and
 * labels as text, tags alertname, to_state, severity and each label as
 * `k=v`, colour by the new state. Other results use Grafana's usual
 * columns: time, timeEnd (or time_end), title, text, tags (comma-separated).
 */
export function framesToAnnotations(frames: DataFrame[]): AnnotationEvent[] {
  const events: AnnotationEvent[] = [];
  for (const frame of frames) {
    const timeField =
      frame.fields.find((f) => f.type === FieldType.time && ['time', 'ts'].includes(f.name.toLowerCase())) ??
      frame.fields.find((f) => f.type === FieldType.time);
    if (!timeField) {
      continue;
    }
    const isAlertHistory =
      frame.fields.some((f) => f.name === 'alertname') && frame.fields.some((f) => f.name === 'to_state');
    const endField = frame.fields.find(
      (f) => f.type === FieldType.time && ['timeend', 'time_end'].includes(f.name.toLowerCase())
    );
    for (let i = 0; i < frame.length; i++) {
      const time = timeField.values[i];
      if (typeof time !== 'number') {
        continue;
      }
      if (isAlertHistory) {
        const alertname = str(fieldValue(frame, 'alertname', i)) ?? 'alert';
        const from = str(fieldValue(frame, 'from_state', i));
        const to = str(fieldValue(frame, 'to_state', i)) ?? '';
        const severity = str(fieldValue(frame, 'severity', i));
        const value = fieldValue(frame, 'value', i);
        const note = str(fieldValue(frame, 'note', i));
        let labels: Record<string, string> = {};
        const labelText = str(fieldValue(frame, 'labels', i));
        if (labelText) {
          try {
            labels = JSON.parse(labelText);
          } catch {
            labels = {};
          }
        }
        const textLines = [
          severity ? `severity: ${severity}` : undefined,
          value !== undefined && value !== null ? `value: ${value}` : undefined,
          note ? `note: ${note}` : undefined,
          Object.keys(labels).length
            ? `labels: ${Object.entries(labels)
                .map(([k, v]) => `${k}=${v}`)
                .join(', ')}`
            : undefined,
        ].filter((x): x is string => x !== undefined);
        const tags = [alertname, to, severity]
          .concat(
            Object.entries(labels)
              .filter(([k]) => k !== 'alertname' && k !== 'severity')
              .map(([k, v]) => `${k}=${v}`)
          )
          .filter((x): x is string => !!x);
        events.push({
          id: str(fieldValue(frame, 'id', i)) ? `${str(fieldValue(frame, 'id', i))}@${time}` : undefined,
          time,
          title: from ? `${alertname}: ${from} → ${to}` : `${alertname}: ${to}`,
          text: textLines.join('\n'),
          tags: Array.from(new Set(tags)),
          color: STATE_COLORS[to],
        });
      } else {
        const tagText = fieldValue(frame, 'tags', i);
        const tags = Array.isArray(tagText)
          ? tagText.map(String)
          : typeof tagText === 'string'
            ? tagText
                .split(',')
                .map((t) => t.trim())
                .filter((t) => t !== '')
            : [];
        const end = endField?.values[i];
        events.push({
          time,
          timeEnd: typeof end === 'number' ? end : undefined,
          isRegion: typeof end === 'number' && end !== time,
          title: str(fieldValue(frame, 'title', i)),
          text: str(fieldValue(frame, 'text', i)) ?? str(fieldValue(frame, 'message', i)) ?? '',
          tags,
        });
      }
    }
  }
  return events;
}
