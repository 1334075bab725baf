// Sends N log lines through winston-loki (Grafana Loki's Winston transport)
// to the Loki push URL given, as snappy protobuf (`proto`) or JSON (`json`),
// with the labels given as JSON; exits non-zero if a push failed.
//   node loki_push.js http://127.0.0.1:4318 proto '{"app":"checkout"}' 100
const { createLogger } = require('winston')
const LokiTransport = require('winston-loki')

const [host, format, labels, n] = process.argv.slice(2)
let failed = null
const transport = new LokiTransport({
  host,
  json: format === 'json',
  labels: JSON.parse(labels),
  batching: true,
  interval: 0.2,
  replaceTimestamp: false,
  onConnectionError: (err) => { failed = err }
})
const logger = createLogger({ transports: [transport] })
const t0 = Date.UTC(2026, 0, 1)
for (let i = 0; i < Number(n); i++) {
  const level = i % 10 === 0 ? 'error' : 'info'
  logger.log({ level, message: `${format} line ${i}`, timestamp: new Date(t0 + i * 1000).toISOString(), labels: { part: String(i % 2) } })
}
transport.flush().then(() => {
  if (failed) { console.error('push failed:', failed.message || failed); process.exit(1) }
  console.log(`sent ${n} lines as ${format}`)
  process.exit(0)
}, (err) => { console.error('flush failed:', err); process.exit(1) })
