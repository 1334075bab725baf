/**
 * Template variables in SQL, following Grafana's SQL data sources:
 *
 * - a single-valued variable (not multi, no "All") is inserted as text with
 *   its single quotes doubled, so it is written inside quotes:
 *   `WHERE host = '$host'`;
 * - a multi-valued variable, or one with "Include All", becomes a list of
 *   quoted literals: `WHERE host IN ($host)` → `WHERE host IN ('a','b')`;
 * - numbers are inserted as they are.
 *
 * Grafana's own formats (`${host:sqlstring}`, `${host:csv}`, `${host:raw}`)
 * still apply when written explicitly.
 */

/** A SQL string literal: 'it''s'. */
export function quoteLiteral(value: unknown): string {
  return `'${String(value).replace(/'/g, "''")}'`;
}

/** A SQL identifier: "disk io" (for names with capitals, spaces or punctuation). */
export function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

interface VariableLike {
  multi?: boolean;
  includeAll?: boolean;
}

/** The format function handed to Grafana's templateSrv.replace(). */
export function interpolateVariable(value: unknown, variable?: VariableLike): string {
  if (Array.isArray(value)) {
    if (value.length === 0) {
      // `IN ()` is a syntax error; a list holding only NULL matches nothing
      return 'NULL';
    }
    return value.map((v) => (typeof v === 'number' ? String(v) : quoteLiteral(v))).join(',');
  }
  if (typeof value === 'number') {
    return String(value);
  }
  if (typeof value === 'string') {
    if (variable?.multi || variable?.includeAll) {
      return quoteLiteral(value);
    }
    return value.replace(/'/g, "''");
  }
  if (value === null || value === undefined) {
    return '';
  }
  return String(value).replace(/'/g, "''");
}
