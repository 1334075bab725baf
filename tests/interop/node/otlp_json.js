// Exports N log records and a counter and a gauge through the OpenTelemetry
// JavaScript SDK's OTLP/HTTP exporters, which send JSON, to the base URL
// given (`http://127.0.0.1:4318`); exits non-zero if an export failed.
//   node otlp_json.js http://127.0.0.1:4318 100
const { LoggerProvider, BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs')
const { OTLPLogExporter } = require('@opentelemetry/exporter-logs-otlp-http')
const { MeterProvider, PeriodicExportingMetricReader } = require('@opentelemetry/sdk-metrics')
const { OTLPMetricExporter } = require('@opentelemetry/exporter-metrics-otlp-http')
const { resourceFromAttributes } = require('@opentelemetry/resources')

const [base, n] = process.argv.slice(2)
const resource = resourceFromAttributes({ 'service.name': 'web-frontend', 'host.name': 'browser-1' })

async function main () {
  const logExporter = new OTLPLogExporter({ url: `${base}/v1/logs` })
  const loggers = new LoggerProvider({ resource, processors: [new BatchLogRecordProcessor({ exporter: logExporter })] })
  const logger = loggers.getLogger('checkout-ui', '1.0.0')
  const t0 = Date.UTC(2026, 0, 1)
  for (let i = 0; i < Number(n); i++) {
    logger.emit({
      timestamp: t0 + i,
      severityNumber: i % 5 === 0 ? 17 : 9,
      severityText: i % 5 === 0 ? 'ERROR' : 'INFO',
      body: `js record ${i}`,
      attributes: { 'cart.items': i, 'user.tier': 'gold' }
    })
  }
  await loggers.forceFlush()
  await loggers.shutdown()

  const metricExporter = new OTLPMetricExporter({ url: `${base}/v1/metrics` })
  const reader = new PeriodicExportingMetricReader({ exporter: metricExporter, exportIntervalMillis: 60000 })
  const meters = new MeterProvider({ resource, readers: [reader] })
  const meter = meters.getMeter('checkout-ui')
  const clicks = meter.createCounter('ui.clicks')
  clicks.add(3, { button: 'buy' })
  clicks.add(4, { button: 'buy' })
  meter.createObservableGauge('ui.heap').addCallback((r) => r.observe(42.5))
  // One collection and export, at shutdown.
  await meters.shutdown()
  console.log(`exported ${n} log records and 2 metrics as OTLP/HTTP JSON`)
}

// The SDK reports failed exports through its diagnostic logger, not as
// rejected promises: any error it logs fails the run.
const { diag, DiagLogLevel } = require('@opentelemetry/api')
diag.setLogger({
  error: (...a) => { console.error('otel error:', ...a); process.exitCode = 1 },
  warn: (...a) => console.error('otel warn:', ...a),
  info: () => {}, debug: () => {}, verbose: () => {}
}, DiagLogLevel.WARN)
main().catch((e) => { console.error(e); process.exit(1) })
