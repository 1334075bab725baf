import { rangeUtil } from '@grafana/data';

/**
 * Macro expansion, done in the browser before the SQL is sent to Tocsin
 * (Tocsin itself knows no macros). The output is plain DataFusion SQL:
 *
 *   $__timeFilter(col)             col >= TIMESTAMP '<from>' AND col <= TIMESTAMP '<to>'
 *   $__timeFrom() / $__timeFrom    TIMESTAMP '<from>'
 *   $__timeTo() / $__timeTo        TIMESTAMP '<to>'
 *   $__interval                    INTERVAL '<ms> milliseconds'
 *   $__interval_ms                 <ms>
 *   $__timeGroup(col, iv)          date_bin(INTERVAL '<iv ms> milliseconds', col, TIMESTAMP '1970-01-01T00:00:00Z')
 *   $__timeGroupAlias(col, iv)     the same, AS "time"
 *   $__dateBin(col)                $__timeGroup(col, $__interval) (the Flight SQL plugin's macro)
 *   $__dateBinAlias(col)           the same, AS "<col>_binned"
 *
 * `iv` is `$__interval`, a Grafana duration (`5m`, `'30s'`, `1h`), an
 * `INTERVAL '...'` literal, or a template variable holding a duration.
 * Times are UTC with millisecond precision (ISO 8601 with `Z`).
 * Other `$__` names (`$__from`, `$__to`, `$__range`, ...) are left to
 * Grafana's template service.
 */
export interface MacroContext {
  /** Range start, ms since the epoch. */
  from: number;
  /** Range end, ms since the epoch. */
  to: number;
  /** The panel's interval in ms (DataQueryRequest.intervalMs). */
  intervalMs: number;
  /** Resolves template variables inside macro arguments (e.g. `$__timeGroup(ts, $bucket)`). */
  resolveArg?: (text: string) => string;
}

export const EPOCH_ORIGIN = "TIMESTAMP '1970-01-01T00:00:00Z'";

export class MacroError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MacroError';
  }
}

export function sqlTimestamp(ms: number): string {
  if (!Number.isFinite(ms)) {
    throw new MacroError(`invalid time ${ms}`);
  }
  return `TIMESTAMP '${new Date(ms).toISOString()}'`;
}

export function sqlInterval(ms: number): string {
  return `INTERVAL '${Math.max(1, Math.round(ms))} milliseconds'`;
}

function stripQuotes(s: string): string {
  const t = s.trim();
  if (t.length >= 2 && ((t.startsWith("'") && t.endsWith("'")) || (t.startsWith('"') && t.endsWith('"')))) {
    return t.slice(1, -1);
  }
  return t;
}

/** The interval argument of $__timeGroup as an SQL INTERVAL expression. */
export function intervalArg(arg: string | undefined, ctx: MacroContext): string {
  let a = (arg ?? '').trim();
  if (a === '' || a === '$__interval' || a === '$__interval_ms') {
    return sqlInterval(ctx.intervalMs);
  }
  if (/^interval\s+'/i.test(a)) {
    return a;
  }
  if (a.includes('$') && ctx.resolveArg) {
    a = ctx.resolveArg(a).trim();
    if (a === '$__interval' || a === '$__interval_ms') {
      return sqlInterval(ctx.intervalMs);
    }
    if (/^interval\s+'/i.test(a)) {
      return a;
    }
  }
  const text = stripQuotes(a);
  let ms: number;
  try {
    ms = rangeUtil.intervalToMs(text);
  } catch {
    ms = NaN;
  }
  if (!Number.isFinite(ms) || ms <= 0) {
    throw new MacroError(
      `$__timeGroup: cannot read the interval "${text}" (use $__interval, a duration such as 5m, or INTERVAL '5 minutes')`
    );
  }
  return sqlInterval(ms);
}

/** Finds the closing parenthesis of a call starting at `open` (the index of "("), skipping quoted text. */
function findClose(sql: string, open: number): number {
  let depth = 0;
  for (let i = open; i < sql.length; i++) {
    const c = sql[i];
    if (c === "'" || c === '"') {
      // skip a quoted literal or identifier ('' and "" escape the quote)
      let j = i + 1;
      while (j < sql.length) {
        if (sql[j] === c) {
          if (sql[j + 1] === c) {
            j += 2;
            continue;
          }
          break;
        }
        j++;
      }
      i = j;
      continue;
    }
    if (c === '(') {
      depth++;
    } else if (c === ')') {
      depth--;
      if (depth === 0) {
        return i;
      }
    }
  }
  return -1;
}

/** Splits macro arguments on top-level commas. */
export function splitArgs(text: string): string[] {
  const args: string[] = [];
  let depth = 0;
  let quote: string | null = null;
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      cur += c;
      if (c === quote) {
        if (text[i + 1] === quote) {
          cur += text[++i];
        } else {
          quote = null;
        }
      }
      continue;
    }
    if (c === "'" || c === '"') {
      quote = c;
    } else if (c === '(') {
      depth++;
    } else if (c === ')') {
      depth--;
    } else if (c === ',' && depth === 0) {
      args.push(cur.trim());
      cur = '';
      continue;
    }
    cur += c;
  }
  if (cur.trim() !== '' || args.length > 0) {
    args.push(cur.trim());
  }
  return args;
}

const FUNCTION_MACROS = new Set(['timeFilter', 'timeGroup', 'timeGroupAlias', 'dateBin', 'dateBinAlias']);
const OPTIONAL_PARENS = new Set(['timeFrom', 'timeTo']);

function needColumn(name: string, args: string[]): string {
  if (args.length === 0 || args[0] === '') {
    throw new MacroError(`$__${name} needs a column, e.g. $__${name}(ts)`);
  }
  return args[0];
}

function expandCall(name: string, args: string[], ctx: MacroContext): string {
  switch (name) {
    case 'timeFilter': {
      const col = needColumn(name, args);
      if (args.length > 1) {
        throw new MacroError('$__timeFilter takes one column');
      }
      return `${col} >= ${sqlTimestamp(ctx.from)} AND ${col} <= ${sqlTimestamp(ctx.to)}`;
    }
    case 'timeGroup':
    case 'timeGroupAlias': {
      const col = needColumn(name, args);
      if (args.length > 2) {
        throw new MacroError(`$__${name} takes a column and an interval (filling gaps is not supported)`);
      }
      const bin = `date_bin(${intervalArg(args[1], ctx)}, ${col}, ${EPOCH_ORIGIN})`;
      return name === 'timeGroupAlias' ? `${bin} AS "time"` : bin;
    }
    case 'dateBin':
    case 'dateBinAlias': {
      const col = needColumn(name, args);
      const bin = `date_bin(${sqlInterval(ctx.intervalMs)}, ${col}, ${EPOCH_ORIGIN})`;
      return name === 'dateBinAlias' ? `${bin} AS "${stripQuotes(col)}_binned"` : bin;
    }
    case 'timeFrom':
      return sqlTimestamp(ctx.from);
    case 'timeTo':
      return sqlTimestamp(ctx.to);
  }
  throw new MacroError(`unknown macro $__${name}`);
}

/** Expands every macro of `sql`. Throws MacroError on a malformed macro. */
export function expandMacros(sql: string, ctx: MacroContext): string {
  const re = /\$__([A-Za-z_]+)/g;
  let out = '';
  let last = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(sql)) !== null) {
    const name = m[1];
    const start = m.index;
    let end = re.lastIndex;
    let replacement: string | null = null;
    if (FUNCTION_MACROS.has(name) || OPTIONAL_PARENS.has(name)) {
      if (sql[end] === '(') {
        const close = findClose(sql, end);
        if (close < 0) {
          throw new MacroError(`$__${name}: missing closing parenthesis`);
        }
        const args = splitArgs(sql.slice(end + 1, close));
        if (OPTIONAL_PARENS.has(name) && args.length > 0) {
          throw new MacroError(`$__${name}() takes no arguments`);
        }
        replacement = expandCall(name, args, ctx);
        end = close + 1;
      } else if (OPTIONAL_PARENS.has(name)) {
        replacement = expandCall(name, [], ctx);
      } else {
        throw new MacroError(`$__${name} needs arguments, e.g. $__${name}(ts)`);
      }
    } else if (name === 'interval') {
      replacement = sqlInterval(ctx.intervalMs);
    } else if (name === 'interval_ms') {
      replacement = String(Math.max(1, Math.round(ctx.intervalMs)));
    }
    if (replacement !== null) {
      out += sql.slice(last, start) + replacement;
      last = end;
      re.lastIndex = end;
    }
  }
  return out + sql.slice(last);
}
