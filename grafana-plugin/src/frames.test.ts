import { FieldType } from '@grafana/data';

import {
  framesToAnnotations,
  inferType,
  parseTime,
  rowsToLogsFrame,
  rowsToTableFrame,
  rowsToTimeSeriesFrames,
} from './frames';
import { quoteIdentifier, quoteLiteral, interpolateVariable } from './variables';

// Row shapes below are copied from Tocsin's answers (docs/api.md, and the live tests).
describe('parseTime (the timestamp forms Tocsin writes in JSON)', () => {
  it('reads offsets, Z, no offset (UTC) and up to nanoseconds', () => {
    expect(parseTime('2023-11-14T22:13:20+00:00')).toEqual({ ms: 1700000000000, nanos: 0 });
    expect(parseTime('2023-11-14T22:13:20.5+00:00')).toEqual({ ms: 1700000000500, nanos: 0 });
    expect(parseTime('2023-11-14T22:13:20.123456789+00:00')).toEqual({ ms: 1700000000123, nanos: 456789 });
    expect(parseTime('2023-11-14T22:13:20.123Z')).toEqual({ ms: 1700000000123, nanos: 0 });
    // a TIMESTAMP without time zone (e.g. now() - INTERVAL ...) has no offset: UTC, not local time
    expect(parseTime('2023-11-14T22:13:20.926711085')).toEqual({ ms: 1700000000926, nanos: 711085 });
    expect(parseTime('2023-11-15T06:13:20+08:00')).toEqual({ ms: 1700000000000, nanos: 0 });
    expect(parseTime('2023-11-14T17:13:20-0500')).toEqual({ ms: 1700000000000, nanos: 0 });
  });

  it('refuses text that is not a timestamp', () => {
    for (const s of [
      'web-1',
      '2023-11-14',
      '2023-11-14T22:13',
      '1700000000',
      'T22:13:20Z',
      '2023-11-14T22:13:20+00:00 x',
    ]) {
      expect(parseTime(s)).toBeNull();
    }
  });
});

describe('inferType', () => {
  it('types columns from their non-null values', () => {
    expect(inferType([1, null, 2.5])).toBe(FieldType.number);
    expect(inferType([true, false, null])).toBe(FieldType.boolean);
    expect(inferType(['2023-11-14T22:13:20+00:00', null])).toBe(FieldType.time);
    expect(inferType(['a', '2023-11-14T22:13:20+00:00'])).toBe(FieldType.string);
    expect(inferType([null, null])).toBe(FieldType.string);
    expect(inferType([1, 'a'])).toBe(FieldType.other);
    expect(inferType([[1, 2], null])).toBe(FieldType.other);
  });
});

describe('rowsToTableFrame', () => {
  it('keeps column order and types, with nanos for sub-millisecond times', () => {
    const frame = rowsToTableFrame(
      [
        { ts: '2023-11-14T22:13:20.000000001+00:00', host: 'a', usage: 1.5, up: true },
        { ts: '2023-11-14T22:13:21+00:00', host: null, usage: null, up: false },
      ],
      'A',
      'SELECT 1'
    );
    expect(frame.refId).toBe('A');
    expect(frame.meta?.executedQueryString).toBe('SELECT 1');
    expect(frame.fields.map((f) => [f.name, f.type])).toEqual([
      ['ts', FieldType.time],
      ['host', FieldType.string],
      ['usage', FieldType.number],
      ['up', FieldType.boolean],
    ]);
    expect(frame.fields[0].values).toEqual([1700000000000, 1700000001000]);
    expect(frame.fields[0].nanos).toEqual([1, 0]);
    expect(frame.fields[1].values).toEqual(['a', null]);
    expect(frame.length).toBe(2);
  });

  it('an empty answer is a frame without fields', () => {
    const frame = rowsToTableFrame([], 'A');
    expect(frame.fields).toHaveLength(0);
    expect(frame.length).toBe(0);
  });
});

describe('rowsToTimeSeriesFrames', () => {
  const rows = [
    { time: '2023-11-14T22:01:00+00:00', host: 'b', v: 4 },
    { time: '2023-11-14T22:00:00+00:00', host: 'a', v: 1 },
    { time: '2023-11-14T22:00:00+00:00', host: 'b', v: 3 },
    { time: '2023-11-14T22:01:00+00:00', host: 'a', v: 2 },
  ];

  it('splits by string columns into one sorted frame per series, labels on the value fields', () => {
    const frames = rowsToTimeSeriesFrames(rows, 'A');
    expect(frames).toHaveLength(2);
    const [b, a] = frames; // first-seen order
    expect(b.fields[1].labels).toEqual({ host: 'b' });
    expect(a.fields[1].labels).toEqual({ host: 'a' });
    expect(a.fields[0].values).toEqual([Date.UTC(2023, 10, 14, 22, 0), Date.UTC(2023, 10, 14, 22, 1)]);
    expect(a.fields[1].values).toEqual([1, 2]);
    expect(b.fields[1].values).toEqual([3, 4]);
    expect(a.meta?.type).toBe('timeseries-multi');
  });

  it('without string columns: one wide frame; booleans count as 0/1', () => {
    const frames = rowsToTimeSeriesFrames(
      [
        { t: '2023-11-14T22:00:00+00:00', v: 1, up: true },
        { t: '2023-11-14T22:01:00+00:00', v: 2, up: false },
      ],
      'A'
    );
    expect(frames).toHaveLength(1);
    expect(frames[0].meta?.type).toBe('timeseries-wide');
    expect(frames[0].fields.map((f) => f.name)).toEqual(['time', 'v', 'up']);
    expect(frames[0].fields[2].values).toEqual([1, 0]);
  });

  it('needs a time column and a number column', () => {
    expect(() => rowsToTimeSeriesFrames([{ host: 'a', v: 1 }], 'A')).toThrow(/needs a timestamp column/);
    expect(() => rowsToTimeSeriesFrames([{ time: '2023-11-14T22:00:00+00:00', host: 'a' }], 'A')).toThrow(
      /at least one numeric column/
    );
  });
});

describe('rowsToLogsFrame', () => {
  it('needs a time and a message column', () => {
    expect(() => rowsToLogsFrame([{ message: 'x' }], 'A')).toThrow(/timestamp column/);
    expect(() => rowsToLogsFrame([{ ts: '2023-11-14T22:00:00+00:00', n: 1 }], 'A')).toThrow(/message column/);
  });

  it('keeps non-JSON attributes as text, and an id column as the id', () => {
    const f = rowsToLogsFrame(
      [{ ts: '2023-11-14T22:00:00+00:00', message: 'm', attributes: 'not json', id: 'e1' }],
      'A'
    );
    const labels = f.fields.find((x) => x.name === 'labels')!.values[0];
    expect(labels).toEqual({ attributes: 'not json' });
    expect(f.fields.find((x) => x.name === 'id')!.values).toEqual(['e1']);
  });
});

describe('framesToAnnotations (generic columns)', () => {
  it('maps time, time_end, title, text and comma-separated tags', () => {
    const frame = rowsToTableFrame(
      [
        {
          time: '2023-11-14T22:00:00+00:00',
          time_end: '2023-11-14T22:05:00+00:00',
          title: 'deploy',
          text: 'v1.2',
          tags: 'a, b,',
        },
      ],
      'Anno'
    );
    expect(framesToAnnotations([frame])).toEqual([
      {
        time: Date.UTC(2023, 10, 14, 22, 0),
        timeEnd: Date.UTC(2023, 10, 14, 22, 5),
        isRegion: true,
        title: 'deploy',
        text: 'v1.2',
        tags: ['a', 'b'],
      },
    ]);
  });
});

describe('SQL quoting of variable values', () => {
  it('doubles quotes; lists of literals for multi-value and All', () => {
    expect(quoteLiteral("o'brien")).toBe("'o''brien'");
    expect(quoteIdentifier('disk "io"')).toBe('"disk ""io"""');
    expect(interpolateVariable("o'brien", { multi: false })).toBe("o''brien");
    expect(interpolateVariable('a', { multi: true })).toBe("'a'");
    expect(interpolateVariable('a', { includeAll: true })).toBe("'a'");
    expect(interpolateVariable(['a', "b'c"], { multi: true })).toBe("'a','b''c'");
    expect(interpolateVariable([], { multi: true })).toBe('NULL');
    expect(interpolateVariable(42)).toBe('42');
  });
});
