import { expandMacros, intervalArg, MacroContext, MacroError, splitArgs } from './macros';

// 2023-11-14T22:00:00Z .. 2023-11-14T22:01:55Z, 30 s panel interval
const ctx: MacroContext = {
  from: Date.UTC(2023, 10, 14, 22, 0, 0),
  to: Date.UTC(2023, 10, 14, 22, 1, 55),
  intervalMs: 30000,
};
const FROM = "TIMESTAMP '2023-11-14T22:00:00.000Z'";
const TO = "TIMESTAMP '2023-11-14T22:01:55.000Z'";
const ORIGIN = "TIMESTAMP '1970-01-01T00:00:00Z'";

describe('expandMacros (text; the live results are in datasource.test.ts)', () => {
  it('$__timeFilter(col) becomes a closed range on the column', () => {
    expect(expandMacros('SELECT * FROM cpu WHERE $__timeFilter(ts)', ctx)).toBe(
      `SELECT * FROM cpu WHERE ts >= ${FROM} AND ts <= ${TO}`
    );
  });

  it('$__timeFrom / $__timeTo with and without parentheses', () => {
    expect(expandMacros('$__timeFrom() $__timeTo() $__timeFrom $__timeTo', ctx)).toBe(`${FROM} ${TO} ${FROM} ${TO}`);
  });

  it('$__interval and $__interval_ms', () => {
    expect(expandMacros('ts > now() - $__interval AND x = $__interval_ms', ctx)).toBe(
      "ts > now() - INTERVAL '30000 milliseconds' AND x = 30000"
    );
  });

  it('$__timeGroup with $__interval, a duration, a quoted duration and an INTERVAL literal', () => {
    expect(expandMacros('$__timeGroup(ts, $__interval)', ctx)).toBe(
      `date_bin(INTERVAL '30000 milliseconds', ts, ${ORIGIN})`
    );
    expect(expandMacros("$__timeGroup(ts, 5m) $__timeGroup(ts, '1h')", ctx)).toBe(
      `date_bin(INTERVAL '300000 milliseconds', ts, ${ORIGIN}) date_bin(INTERVAL '3600000 milliseconds', ts, ${ORIGIN})`
    );
    expect(expandMacros("$__timeGroup(ts, INTERVAL '2 minutes')", ctx)).toBe(
      `date_bin(INTERVAL '2 minutes', ts, ${ORIGIN})`
    );
    expect(expandMacros('$__timeGroup(ts)', ctx)).toBe(`date_bin(INTERVAL '30000 milliseconds', ts, ${ORIGIN})`);
  });

  it('$__timeGroupAlias, $__dateBin and $__dateBinAlias', () => {
    expect(expandMacros('$__timeGroupAlias(ts, 1m)', ctx)).toBe(
      `date_bin(INTERVAL '60000 milliseconds', ts, ${ORIGIN}) AS "time"`
    );
    expect(expandMacros('$__dateBin(ts), $__dateBinAlias(ts)', ctx)).toBe(
      `date_bin(INTERVAL '30000 milliseconds', ts, ${ORIGIN}), date_bin(INTERVAL '30000 milliseconds', ts, ${ORIGIN}) AS "ts_binned"`
    );
  });

  it('arguments may hold parentheses, quotes and commas', () => {
    expect(expandMacros("$__timeFilter(coalesce(ts, TIMESTAMP '2020-01-01T00:00:00Z'))", ctx)).toBe(
      `coalesce(ts, TIMESTAMP '2020-01-01T00:00:00Z') >= ${FROM} AND coalesce(ts, TIMESTAMP '2020-01-01T00:00:00Z') <= ${TO}`
    );
    expect(splitArgs('a, f(b, c), \'x, y\', "q""r"')).toEqual(['a', 'f(b, c)', "'x, y'", '"q""r"']);
  });

  it("resolves a template variable inside $__timeGroup's interval", () => {
    const withVars = { ...ctx, resolveArg: (t: string) => t.replace('$bucket', '10s') };
    expect(expandMacros('$__timeGroup(ts, $bucket)', withVars)).toBe(
      `date_bin(INTERVAL '10000 milliseconds', ts, ${ORIGIN})`
    );
  });

  it("leaves Grafana's own variables ($__from, $__to, $__range, $host) alone", () => {
    const sql = 'SELECT $__from, $__to, $__range, $host, ${host:csv}';
    expect(expandMacros(sql, ctx)).toBe(sql);
  });

  it('rejects malformed macros with a message naming the macro', () => {
    expect(() => expandMacros('WHERE $__timeFilter()', ctx)).toThrow(/\$__timeFilter needs a column/);
    expect(() => expandMacros('WHERE $__timeFilter', ctx)).toThrow(MacroError);
    expect(() => expandMacros('WHERE $__timeFilter(ts', ctx)).toThrow(/missing closing parenthesis/);
    expect(() => expandMacros('$__timeGroup(ts, soon)', ctx)).toThrow(/cannot read the interval "soon"/);
    expect(() => expandMacros('$__timeGroup(ts, 1m, NULL)', ctx)).toThrow(/filling gaps is not supported/);
    expect(() => expandMacros('$__timeFrom(ts)', ctx)).toThrow(/takes no arguments/);
  });

  it('rounds fractional intervals and never emits a zero interval', () => {
    expect(intervalArg('$__interval', { ...ctx, intervalMs: 0.4 })).toBe("INTERVAL '1 milliseconds'");
    expect(intervalArg(undefined, { ...ctx, intervalMs: 1500.6 })).toBe("INTERVAL '1501 milliseconds'");
  });
});
