//! The server's own metrics in Prometheus exposition format. Each component
//! keeps its own counters; this module only reads and renders them.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tocsin_ingest::IngestMetrics;
use tocsin_query::{LATENCY_BUCKETS, QueryEngine};
use tocsin_storage::Storage;

pub(crate) struct Metrics {
    pub(crate) ingest: Arc<IngestMetrics>,
    pub(crate) started: std::time::Instant,
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Metrics {
    pub(crate) fn render(&self, storage: &Storage, query: &QueryEngine) -> String {
        let mut o = String::with_capacity(4096);
        let i = &self.ingest;
        let _ = writeln!(
            o,
            "# HELP tocsin_ingest_requests_total Ingest requests by kind.\n# TYPE tocsin_ingest_requests_total counter"
        );
        for (kind, v) in [
            ("series", &i.series_requests),
            ("rows", &i.rows_requests),
            ("logs", &i.logs_requests),
            ("remote_write", &i.remote_write_requests),
            ("line_protocol", &i.line_protocol_requests),
            ("otlp", &i.otlp_requests),
            ("stream_message", &i.stream_messages),
        ] {
            let _ = writeln!(o, "tocsin_ingest_requests_total{{kind=\"{kind}\"}} {}", load(v));
        }
        counter(&mut o, "tocsin_ingest_rows_total", "Rows accepted (all ingest protocols).", load(&i.rows_accepted));
        counter(
            &mut o,
            "tocsin_ingest_rejected_items_total",
            "Series, events or points rejected (all ingest protocols).",
            load(&i.items_rejected),
        );
        counter(
            &mut o,
            "tocsin_ingest_failed_requests_total",
            "gRPC ingest requests that failed as a whole.",
            load(&i.failed_requests),
        );

        let s = &storage.metrics;
        counter(
            &mut o,
            "tocsin_storage_rows_written_total",
            "Rows written to storage by any path.",
            load(&s.rows_written),
        );
        counter(&mut o, "tocsin_storage_writes_total", "Storage write calls that committed rows.", load(&s.writes));
        counter(&mut o, "tocsin_storage_persists_total", "Write buffer persists completed.", load(&s.persists));
        counter(&mut o, "tocsin_storage_segments_written_total", "Segment files written.", load(&s.segments_written));
        counter(
            &mut o,
            "tocsin_storage_segment_bytes_written_total",
            "Bytes of segment files written.",
            load(&s.segment_bytes_written),
        );
        counter(&mut o, "tocsin_storage_compactions_total", "Compaction merges done.", load(&s.compactions));
        counter(
            &mut o,
            "tocsin_storage_compacted_segments_total",
            "Segments replaced by compaction.",
            load(&s.compacted_segments),
        );
        counter(
            &mut o,
            "tocsin_storage_compaction_bytes_written_total",
            "Bytes of segment files written by compaction.",
            load(&s.compaction_bytes_written),
        );
        counter(
            &mut o,
            "tocsin_storage_expired_segments_total",
            "Segments dropped by retention.",
            load(&s.expired_segments),
        );
        counter(
            &mut o,
            "tocsin_storage_expired_rows_total",
            "Rows in segments dropped by retention.",
            load(&s.expired_rows),
        );
        counter(
            &mut o,
            "tocsin_storage_wal_replayed_rows_total",
            "Rows replayed from the WAL at startup.",
            load(&s.wal_replayed_rows),
        );
        counter(
            &mut o,
            "tocsin_storage_wal_truncated_bytes_total",
            "Bytes cut from torn WAL tails at startup.",
            load(&s.wal_truncated_bytes),
        );
        counter(
            &mut o,
            "tocsin_storage_quarantined_files_total",
            "Corrupt or unlisted files moved to quarantine.",
            load(&s.quarantined_files),
        );
        counter(
            &mut o,
            "tocsin_storage_persist_failures_total",
            "Persists that failed (rows stay buffered and in the WAL; retried with back-off).",
            load(&s.persist_failures),
        );
        let w = storage.wal_metrics();
        counter(&mut o, "tocsin_wal_records_total", "WAL records appended.", load(&w.records));
        counter(&mut o, "tocsin_wal_bytes_total", "WAL bytes appended.", load(&w.bytes));
        counter(&mut o, "tocsin_wal_fsyncs_total", "WAL fsyncs.", load(&w.fsyncs));
        gauge(&mut o, "tocsin_write_buffer_bytes", "Bytes held in the write buffer.", storage.buffered_bytes() as f64);
        gauge(
            &mut o,
            "tocsin_storage_active_series",
            "Series written within limits.series_window, over all tables.",
            storage.active_series() as f64,
        );
        let (segments, bytes) = storage.segment_totals();
        gauge(&mut o, "tocsin_segments", "Segment files in the manifest.", segments as f64);
        gauge(&mut o, "tocsin_segment_bytes", "Bytes of segment files in the manifest.", bytes as f64);

        let q = &query.metrics;
        counter(&mut o, "tocsin_queries_total", "SQL statements run.", load(&q.queries));
        counter(&mut o, "tocsin_query_errors_total", "SQL statements that failed.", load(&q.errors));
        let _ = writeln!(
            o,
            "# HELP tocsin_query_duration_seconds Time to plan and run a SQL statement.\n# TYPE tocsin_query_duration_seconds histogram"
        );
        for (b, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ =
                writeln!(o, "tocsin_query_duration_seconds_bucket{{le=\"{bound}\"}} {}", load(&q.latency_buckets[b]));
        }
        let total = load(&q.latency_buckets[LATENCY_BUCKETS.len()]);
        let _ = writeln!(o, "tocsin_query_duration_seconds_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(o, "tocsin_query_duration_seconds_sum {}", load(&q.latency_sum_us) as f64 / 1e6);
        let _ = writeln!(o, "tocsin_query_duration_seconds_count {total}");
        gauge(
            &mut o,
            "tocsin_uptime_seconds",
            "Seconds since the server started.",
            self.started.elapsed().as_secs_f64(),
        );
        o
    }
}

/// Live tail: subscribers, events delivered and dropped.
pub(crate) fn render_tail(m: &tocsin_ingest::tail::TailMetrics, o: &mut String) {
    gauge(o, "tocsin_tail_subscribers", "Live tail subscribers.", load(&m.subscribers) as f64);
    counter(o, "tocsin_tail_events_delivered_total", "Events handed to tail subscribers.", load(&m.delivered));
    counter(o, "tocsin_tail_events_dropped_total", "Events dropped for slow tail subscribers.", load(&m.dropped));
}

/// Roll-ups: runs, rows written, failures.
pub(crate) fn render_rollups(m: &tocsin_query::rollup::RollupMetrics, o: &mut String) {
    counter(
        o,
        "tocsin_rollup_checks_total",
        "Roll-up rounds completed, whether or not a bucket was due.",
        load(&m.checks),
    );
    counter(o, "tocsin_rollup_runs_total", "Roll-up runs that wrote buckets.", load(&m.runs));
    counter(o, "tocsin_rollup_rows_total", "Rows written by roll-ups.", load(&m.rows));
    counter(o, "tocsin_rollup_failures_total", "Roll-up runs that failed.", load(&m.failures));
}

/// Refusals by input bound (see `tocsin_storage::refusals`).
pub(crate) fn render_refusals(o: &mut String) {
    let _ = writeln!(
        o,
        "# HELP tocsin_limit_refusals_total Requests or items refused by an input bound, by bound.\n\
         # TYPE tocsin_limit_refusals_total counter"
    );
    for (limit, n) in tocsin_storage::refusals::counts() {
        let _ = writeln!(o, "tocsin_limit_refusals_total{{limit=\"{limit}\"}} {n}");
    }
}
