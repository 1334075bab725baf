import React, { ChangeEvent } from 'react';
import { DataSourcePluginOptionsEditorProps } from '@grafana/data';
import { InlineField, Input, SecretInput, Stack } from '@grafana/ui';

import { TocsinOptions, TocsinSecureJsonData } from '../types';

interface Props extends DataSourcePluginOptionsEditorProps<TocsinOptions, TocsinSecureJsonData> {}

export function ConfigEditor(props: Props) {
  const { onOptionsChange, options } = props;
  const { jsonData, secureJsonFields, secureJsonData } = options;

  const onUrlChange = (event: ChangeEvent<HTMLInputElement>) => {
    // requests go through Grafana's proxy (access "proxy"), which adds the token
    onOptionsChange({ ...options, url: event.target.value, access: 'proxy' });
  };
  const onDatabaseChange = (event: ChangeEvent<HTMLInputElement>) => {
    onOptionsChange({ ...options, jsonData: { ...jsonData, defaultDatabase: event.target.value } });
  };
  const onTokenChange = (event: ChangeEvent<HTMLInputElement>) => {
    onOptionsChange({ ...options, secureJsonData: { ...secureJsonData, token: event.target.value } });
  };
  const onResetToken = () => {
    onOptionsChange({
      ...options,
      secureJsonFields: { ...secureJsonFields, token: false },
      secureJsonData: { ...secureJsonData, token: '' },
    });
  };

  return (
    <Stack direction="column" gap={0}>
      <InlineField
        label="URL"
        labelWidth={20}
        interactive
        tooltip="Tocsin's HTTP API as Grafana's server reaches it (tocsin serve --http-addr, default port 4318)"
      >
        <Input
          id="tocsin-config-url"
          width={40}
          value={options.url ?? ''}
          placeholder="http://127.0.0.1:4318"
          onChange={onUrlChange}
        />
      </InlineField>
      <InlineField
        label="Default database"
        labelWidth={20}
        tooltip="Used when a query names none (Tocsin's default: public)"
      >
        <Input
          id="tocsin-config-database"
          width={40}
          value={jsonData.defaultDatabase ?? ''}
          placeholder="public"
          onChange={onDatabaseChange}
        />
      </InlineField>
      <InlineField
        label="Token"
        labelWidth={20}
        interactive
        tooltip="With tocsin serve --auth: an API token (a viewer one: tocsin token create --role viewer; or the admin token in <data-dir>/admin-token). Stored encrypted; only Grafana's server sends it, as Authorization: Bearer."
      >
        <SecretInput
          id="tocsin-config-token"
          width={40}
          isConfigured={!!secureJsonFields?.token}
          value={secureJsonData?.token ?? ''}
          placeholder="empty when Tocsin runs without --auth"
          onReset={onResetToken}
          onChange={onTokenChange}
        />
      </InlineField>
    </Stack>
  );
}
