import React, { ChangeEvent, useState } from 'react';
import { QueryEditorProps } from '@grafana/data';
import { Collapse, InlineField, Input, RadioButtonGroup, Stack, TextArea } from '@grafana/ui';

import { DataSource } from '../datasource';
import { FORMATS, QueryFormat, sqlOf, TocsinOptions, TocsinQuery } from '../types';

type Props = QueryEditorProps<DataSource, TocsinQuery, TocsinOptions>;

const MACROS: Array<[string, string]> = [
  ['$__timeFilter(ts)', "ts >= TIMESTAMP '<from>' AND ts <= TIMESTAMP '<to>'"],
  [
    '$__timeGroup(ts, $__interval)',
    "date_bin(INTERVAL '<interval ms> milliseconds', ts, TIMESTAMP '1970-01-01T00:00:00Z')",
  ],
  ['$__timeGroupAlias(ts, 5m)', 'the same with a fixed interval, AS "time"'],
  ['$__interval / $__interval_ms', "INTERVAL '<ms> milliseconds' / <ms>"],
  ['$__timeFrom() / $__timeTo()', "TIMESTAMP '<from>' / TIMESTAMP '<to>'"],
  ["'$var' / IN ($multi)", "a variable's value inside quotes / a multi-value variable as 'a','b'"],
];

export function QueryEditor({ query, onChange, onRunQuery, datasource }: Props) {
  const [helpOpen, setHelpOpen] = useState(false);
  const format: QueryFormat = query.format ?? 'time_series';

  const onSqlChange = (event: ChangeEvent<HTMLTextAreaElement>) => {
    onChange({ ...query, sql: event.target.value, queryText: undefined });
  };
  const onFormatChange = (value: QueryFormat) => {
    onChange({ ...query, format: value });
    onRunQuery();
  };
  const onDatabaseChange = (event: ChangeEvent<HTMLInputElement>) => {
    onChange({ ...query, database: event.target.value });
  };

  return (
    <Stack direction="column" gap={1}>
      <TextArea
        id={`tocsin-sql-${query.refId}`}
        aria-label="SQL"
        value={sqlOf(query)}
        onChange={onSqlChange}
        onBlur={onRunQuery}
        rows={Math.min(20, Math.max(4, sqlOf(query).split('\n').length + 1))}
        placeholder="SELECT $__timeGroup(ts, $__interval) AS time, host, avg(usage) FROM cpu WHERE $__timeFilter(ts) GROUP BY 1, host ORDER BY 1"
        style={{ fontFamily: 'monospace' }}
      />
      <Stack direction="row" gap={1} wrap="wrap">
        <InlineField label="Format" labelWidth={10}>
          <RadioButtonGroup<QueryFormat> options={FORMATS} value={format} onChange={onFormatChange} />
        </InlineField>
        <InlineField label="Database" labelWidth={12} tooltip="Overrides the data source's default database">
          <Input
            id={`tocsin-database-${query.refId}`}
            width={20}
            value={query.database ?? ''}
            placeholder={datasource.defaultDatabase ?? 'public'}
            onChange={onDatabaseChange}
            onBlur={onRunQuery}
          />
        </InlineField>
      </Stack>
      <Collapse label="Macros" isOpen={helpOpen} onToggle={() => setHelpOpen(!helpOpen)}>
        <table>
          <tbody>
            {MACROS.map(([macro, expansion]) => (
              <tr key={macro}>
                <td style={{ paddingRight: 16 }}>
                  <code>{macro}</code>
                </td>
                <td>
                  <code>{expansion}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      </Collapse>
    </Stack>
  );
}
