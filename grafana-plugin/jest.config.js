// force timezone to UTC to allow tests to work regardless of local timezone
// generally used by snapshots, but can affect specific tests
process.env.TZ = 'UTC';

const base = require('./.config/jest.config');
const swc = base.transform['^.+\\.(t|j)sx?$'];

module.exports = {
  // Jest configuration provided by Grafana scaffolding
  ...base,
  transform: {
    ...base.transform,
    // d3-color 3 (via @grafana/data) ships ES modules as .mjs, which the scaffolded pattern does not transform
    '^.+\\.mjs$': swc,
  },
  // the tests start a real Tocsin server per file: allow for a slow start on a busy machine
  testTimeout: 60000,
};
