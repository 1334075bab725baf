-- Synthetic probe transactions (convention in docs/logs.md): every component
-- that handles a probe logs one event with the probe id as trace_id and the
-- attributes {"probe": "1", "probe_ms": "<its processing time>"}.
-- tests/it/trace.rs runs both (max instead of the percentile, no time filter).

-- Per-component latency over the last hour.
SELECT service,
       approx_percentile_cont(CAST(json_get_str(attributes, 'probe_ms') AS DOUBLE), 0.95) AS p95_ms,
       max(CAST(json_get_str(attributes, 'probe_ms') AS DOUBLE)) AS max_ms,
       count(*) AS probes
FROM logs
WHERE ts > now() - INTERVAL '1 hour' AND json_get_str(attributes, 'probe') = '1'
GROUP BY service
ORDER BY p95_ms DESC;

-- Where each probe stopped: the last component that reported it.
SELECT DISTINCT ON (trace_id) trace_id AS probe, service AS last_component, ts
FROM logs
WHERE ts > now() - INTERVAL '1 hour' AND json_get_str(attributes, 'probe') = '1'
ORDER BY trace_id, ts DESC;
