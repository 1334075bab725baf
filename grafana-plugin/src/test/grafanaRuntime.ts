/**
 * The two Grafana runtime services the plugin uses, for tests outside
 * Grafana:
 *
 * - BackendSrv.fetch: a thin adapter that does real HTTP requests. It
 *   plays Grafana's data source proxy: the plugin asks for
 *   `/api/datasources/proxy/uid/<uid>/<path>`; the adapter sends
 *   `<data source URL>/<path>` to the live Tocsin, adding the headers of
 *   the matching route of src/plugin.json with `{{ .SecureJsonData.* }}`
 *   filled in (as Grafana's pluginproxy does), so the route's contract is
 *   exercised too. Non-2xx answers become FetchErrors (status, data) as
 *   Grafana's fetch throws them; an unreachable target is a 502.
 * - TemplateSrv: a small stand-in with Grafana's variable syntax ($var,
 *   ${var}, ${var:format}, [[var]]) that calls the plugin's format
 *   function with (value, variable) like Grafana's templateSrv.replace.
 *
 * Nothing else is mocked: responses are Tocsin's.
 */
import { DataSourceInstanceSettings, ScopedVars, TypedVariableModel } from '@grafana/data';
import {
  BackendSrv,
  BackendSrvRequest,
  FetchError,
  FetchResponse,
  setBackendSrv,
  setTemplateSrv,
  TemplateSrv,
} from '@grafana/runtime';
import { Observable } from 'rxjs';

import pluginJson from '../plugin.json';
import { TocsinOptions, TocsinSecureJsonData } from '../types';
import { httpRequest } from './tocsinServer';

export const PROXY_PREFIX = '/api/datasources/proxy/uid/';

export interface StoredDataSource {
  uid: string;
  /** the data source's URL setting (Tocsin's HTTP API) */
  url: string;
  jsonData: TocsinOptions;
  secureJsonData: TocsinSecureJsonData;
}

interface Route {
  path: string;
  method?: string;
  url?: string;
  headers?: Array<{ name: string; content: string }>;
}

/** The subset of Go's text/template that plugin.json route templates may use here. */
export function renderRouteTemplate(text: string, ds: StoredDataSource): string {
  const lookup = (ref: string): string => {
    const m = /^\.(JsonData|SecureJsonData)\.(\w+)$/.exec(ref);
    if (!m) {
      throw new Error(`route template: unsupported reference ${ref}`);
    }
    const src: Record<string, unknown> = m[1] === 'JsonData' ? { ...ds.jsonData } : { ...ds.secureJsonData };
    const v = src[m[2]];
    return v === undefined || v === null ? '' : String(v);
  };
  const withIfs = text.replace(
    /\{\{\s*if\s+(\.[\w.]+)\s*\}\}([\s\S]*?)(?:\{\{\s*else\s*\}\}([\s\S]*?))?\{\{\s*end\s*\}\}/g,
    (_all, ref: string, yes: string, no?: string) => (lookup(ref) !== '' ? yes : (no ?? ''))
  );
  const out = withIfs.replace(/\{\{\s*(\.[\w.]+)\s*\}\}/g, (_all, ref: string) => lookup(ref));
  if (out.includes('{{')) {
    throw new Error(`route template: unsupported syntax in ${text}`);
  }
  return out;
}

export interface ForwardedRequest {
  method: string;
  url: string;
  headers: Record<string, string>;
  body?: string;
}

export class ProxyBackendSrv {
  private dataSources = new Map<string, StoredDataSource>();
  /** what the plugin asked Grafana for (the browser side) */
  readonly requests: BackendSrvRequest[] = [];
  /** what the proxy sent to Tocsin (the server side) */
  readonly forwarded: ForwardedRequest[] = [];

  register(ds: StoredDataSource): DataSourceInstanceSettings<TocsinOptions> {
    this.dataSources.set(ds.uid, ds);
    return {
      // eslint-disable-next-line @typescript-eslint/no-deprecated -- still a required field of DataSourceInstanceSettings
      id: this.dataSources.size,
      uid: ds.uid,
      type: pluginJson.id,
      name: `Tocsin ${ds.uid}`,
      // Grafana hands a proxied data source its proxy URL, never the target or the secrets
      url: `${PROXY_PREFIX}${ds.uid}`,
      access: 'proxy',
      jsonData: ds.jsonData,
      readOnly: false,
      meta: { id: pluginJson.id, name: pluginJson.name, type: 'datasource' } as DataSourceInstanceSettings['meta'],
    };
  }

  fetch<T>(options: BackendSrvRequest): Observable<FetchResponse<T>> {
    return new Observable<FetchResponse<T>>((subscriber) => {
      this.requests.push(options);
      this.forward<T>(options).then(
        (res) => {
          subscriber.next(res);
          subscriber.complete();
        },
        (err) => subscriber.error(err)
      );
    });
  }

  private async forward<T>(options: BackendSrvRequest): Promise<FetchResponse<T>> {
    if (!options.url.startsWith(PROXY_PREFIX)) {
      throw new Error(`request outside Grafana's data source proxy: ${options.url}`);
    }
    const rest = options.url.slice(PROXY_PREFIX.length);
    const slash = rest.indexOf('/');
    const uid = slash < 0 ? rest : rest.slice(0, slash);
    const proxyPath = slash < 0 ? '' : rest.slice(slash + 1);
    const ds = this.dataSources.get(uid);
    if (!ds) {
      throw this.error(options, 404, { message: 'Data source not found' });
    }
    const method = (options.method ?? 'GET').toUpperCase();
    const routes = ((pluginJson as { routes?: Route[] }).routes ?? []) as Route[];
    const route = routes.find(
      (r) => (!r.method || r.method === '*' || r.method === method) && proxyPath.startsWith(r.path)
    );

    let target = `${ds.url.replace(/\/$/, '')}/${proxyPath}`;
    if (route?.url) {
      target = `${renderRouteTemplate(route.url, ds).replace(/\/$/, '')}/${proxyPath.slice(route.path.length).replace(/^\//, '')}`;
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(options.headers ?? {})) {
      headers[k] = String(v);
    }
    // the plugin never sets Authorization itself; the route's header is the only one Tocsin gets
    delete headers.Authorization;
    delete headers.authorization;
    for (const h of route?.headers ?? []) {
      headers[h.name] = renderRouteTemplate(h.content, ds);
    }
    let body: string | undefined;
    if (options.data !== undefined) {
      body = typeof options.data === 'string' ? options.data : JSON.stringify(options.data);
      headers['Content-Type'] = headers['Content-Type'] ?? 'application/json';
    }
    if (options.params) {
      const qs = new URLSearchParams(options.params as Record<string, string>).toString();
      target += (target.includes('?') ? '&' : '?') + qs;
    }
    this.forwarded.push({ method, url: target, headers, body });

    let res;
    try {
      res = await httpRequest(target, { method, headers, body });
    } catch (e) {
      throw this.error(options, 502, { message: `Bad Gateway: ${(e as Error).message}` });
    }
    let data: unknown = res.body;
    if ((res.headers['content-type'] ?? '').includes('json') || /^[[{]/.test(res.body)) {
      try {
        data = JSON.parse(res.body);
      } catch {
        data = res.body;
      }
    }
    if (res.status < 200 || res.status >= 300) {
      throw this.error(options, res.status, data);
    }
    return {
      data: data as T,
      status: res.status,
      statusText: 'OK',
      ok: true,
      headers: (typeof Headers === 'undefined' ? {} : new Headers()) as Headers,
      redirected: false,
      type: 'basic',
      url: options.url,
      config: options,
    };
  }

  private error(options: BackendSrvRequest, status: number, data: unknown): FetchError {
    return { status, statusText: `HTTP ${status}`, data, config: options };
  }
}

export interface TestVariable {
  name: string;
  value: string | string[];
  multi?: boolean;
  includeAll?: boolean;
}

const VARIABLE_RE = /\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\${(\w+)(?:\.([^:^}]+))?(?::([^}]+))?}/g;

export class TestTemplateSrv implements TemplateSrv {
  variables: TestVariable[] = [];

  getVariables(): TypedVariableModel[] {
    return this.variables.map((v) => ({
      name: v.name,
      type: 'custom',
      multi: !!v.multi,
      includeAll: !!v.includeAll,
      current: { value: v.value, text: v.value },
    })) as unknown as TypedVariableModel[];
  }

  containsTemplate(target?: string): boolean {
    return !!target && new RegExp(VARIABLE_RE.source).test(target);
  }

  updateTimeRange(): void {}

  replace(target?: string, scopedVars?: ScopedVars, format?: string | Function): string {
    if (!target) {
      return target ?? '';
    }
    return target.replace(VARIABLE_RE, (match, var1, var2, fmt2, var3, _fieldPath, fmt3) => {
      const name: string = var1 || var2 || var3;
      const fmt = fmt2 || fmt3 || format;
      const scoped = scopedVars?.[name];
      const variable = this.variables.find((v) => v.name === name);
      let value: unknown;
      if (scoped) {
        value = scoped.value;
      } else if (variable) {
        value = variable.value;
      } else {
        return match;
      }
      const model = { name, multi: variable?.multi, includeAll: variable?.includeAll };
      if (typeof fmt === 'function') {
        return fmt(value, model);
      }
      const values = Array.isArray(value) ? value.map(String) : [String(value)];
      switch (fmt) {
        case 'raw':
          return values.join(',');
        case 'csv':
          return values.join(',');
        case 'sqlstring':
          return values.map((v) => `'${v.replace(/'/g, "''")}'`).join(',');
        default:
          // Grafana's default for a list is a glob {a,b}
          return values.length === 1 ? values[0] : `{${values.join(',')}}`;
      }
    });
  }
}

export interface Runtime {
  backend: ProxyBackendSrv;
  templates: TestTemplateSrv;
}

/** Installs the adapter and the template stand-in as Grafana's runtime services. */
export function installRuntime(): Runtime {
  const backend = new ProxyBackendSrv();
  const templates = new TestTemplateSrv();
  setBackendSrv(backend as unknown as BackendSrv);
  setTemplateSrv(templates);
  return { backend, templates };
}
