import React from 'react';
import { fireEvent, render, screen } from '@testing-library/react';
import { DataSourceSettings } from '@grafana/data';

import { ConfigEditor } from './ConfigEditor';
import { QueryEditor } from './QueryEditor';
import { DataSource } from '../datasource';
import { TocsinOptions, TocsinQuery, TocsinSecureJsonData } from '../types';

function settings(): DataSourceSettings<TocsinOptions, TocsinSecureJsonData> {
  return {
    id: 1,
    uid: 'u',
    orgId: 1,
    name: 'Tocsin',
    type: 'tocsin-tocsin-datasource',
    typeName: 'Tocsin',
    typeLogoUrl: '',
    access: 'proxy',
    url: '',
    user: '',
    // eslint-disable-next-line @typescript-eslint/no-deprecated -- still a required field of DataSourceSettings
    database: '',
    basicAuth: false,
    basicAuthUser: '',
    isDefault: false,
    jsonData: {},
    secureJsonFields: {},
    readOnly: false,
    withCredentials: false,
  };
}

describe('ConfigEditor', () => {
  it('stores the URL as the data source URL, the database in jsonData and the token only in secureJsonData', () => {
    const onOptionsChange = jest.fn();
    const { rerender } = render(<ConfigEditor options={settings()} onOptionsChange={onOptionsChange} />);

    fireEvent.change(screen.getByPlaceholderText('http://127.0.0.1:4318'), { target: { value: 'http://tocsin:4318' } });
    expect(onOptionsChange).toHaveBeenLastCalledWith(
      expect.objectContaining({ url: 'http://tocsin:4318', access: 'proxy' })
    );

    fireEvent.change(screen.getByPlaceholderText('public'), { target: { value: 'edge' } });
    expect(onOptionsChange.mock.lastCall[0].jsonData).toEqual({ defaultDatabase: 'edge' });

    fireEvent.change(screen.getByPlaceholderText('empty when Tocsin runs without --auth'), {
      target: { value: 'secret' },
    });
    const saved = onOptionsChange.mock.lastCall[0];
    expect(saved.secureJsonData).toEqual({ token: 'secret' });
    expect(JSON.stringify(saved.jsonData)).not.toContain('secret');

    // a stored token shows as configured and can be reset
    rerender(
      <ConfigEditor options={{ ...settings(), secureJsonFields: { token: true } }} onOptionsChange={onOptionsChange} />
    );
    fireEvent.click(screen.getByRole('button', { name: /reset/i }));
    expect(onOptionsChange.mock.lastCall[0].secureJsonFields).toEqual({ token: false });
    expect(onOptionsChange.mock.lastCall[0].secureJsonData).toEqual({ token: '' });
  });
});

describe('QueryEditor', () => {
  it('edits SQL, format and database', () => {
    const onChange = jest.fn();
    const onRunQuery = jest.fn();
    const query: TocsinQuery = { refId: 'A', sql: 'SELECT 1', format: 'table' };
    const datasource = { defaultDatabase: undefined } as unknown as DataSource;
    render(<QueryEditor query={query} onChange={onChange} onRunQuery={onRunQuery} datasource={datasource} />);

    fireEvent.change(screen.getByLabelText('SQL'), { target: { value: 'SELECT 2' } });
    expect(onChange).toHaveBeenLastCalledWith({ ...query, sql: 'SELECT 2' });

    fireEvent.click(screen.getByLabelText('Logs'));
    expect(onChange).toHaveBeenLastCalledWith({ ...query, format: 'logs' });
    expect(onRunQuery).toHaveBeenCalled();

    fireEvent.change(screen.getByPlaceholderText('public'), { target: { value: 'edge' } });
    expect(onChange).toHaveBeenLastCalledWith({ ...query, database: 'edge' });
  });
});
