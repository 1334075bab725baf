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

pub(crate) fn counter(out: &mut String, name: &str, help: &str, value: u64) {
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
            ("loki", &i.loki_requests),
            ("elastic_bulk", &i.elastic_requests),
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
            "tocsin_syslog_messages_total",
            "Syslog messages written to storage.",
            load(&i.syslog_messages),
        );
        counter(
            &mut o,
            "tocsin_syslog_dropped_messages_total",
            "Syslog messages read but not written (a storage failure, or the server stopped while storage asked to wait).",
            load(&i.syslog_dropped),
        );
        counter(
            &mut o,
            "tocsin_syslog_refused_connections_total",
            "Syslog TCP connections closed when accepted (over max_connections or max_connections_per_host).",
            load(&i.syslog_refused_connections),
        );
        gauge(
            &mut o,
            "tocsin_syslog_open_connections",
            "Syslog TCP connections open now (each holds a place in max_connections and max_connections_per_host \
             until the listener has seen it close).",
            load(&i.syslog_open_connections) as f64,
        );
        counter(
            &mut o,
            "tocsin_syslog_invalid_messages_total",
            "Syslog messages refused before storage (unparseable, or broken TCP framing).",
            load(&i.syslog_invalid),
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
            "tocsin_query_token_blocks_read_total",
            "Segment blocks that searches (matches(), LIKE, =) on text columns with token filters planned to read.",
            load(&s.token_blocks_read),
        );
        counter(
            &mut o,
            "tocsin_query_token_blocks_skipped_total",
            "Segment blocks that searches (matches(), LIKE, =) on text columns skipped by their token filters.",
            load(&s.token_blocks_skipped),
        );
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
        counter(&mut o, "tocsin_storage_deleted_rows_total", "Rows deleted by DELETE.", load(&s.deleted_rows));
        counter(
            &mut o,
            "tocsin_storage_purged_segments_total",
            "Segments rewritten by compaction only to drop rows deleted by DELETE.",
            load(&s.purged_segments),
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
        if let Some(w) = storage.wal_metrics() {
            counter(&mut o, "tocsin_wal_records_total", "WAL records appended.", load(&w.records));
            counter(&mut o, "tocsin_wal_bytes_total", "WAL bytes appended.", load(&w.bytes));
            counter(&mut o, "tocsin_wal_fsyncs_total", "WAL fsyncs.", load(&w.fsyncs));
        }
        gauge(&mut o, "tocsin_write_buffer_bytes", "Bytes held in the write buffer.", storage.buffered_bytes() as f64);
        gauge(
            &mut o,
            "tocsin_storage_active_series",
            "Series written within limits.series_window, over all tables.",
            storage.active_series() as f64,
        );
        gauge(
            &mut o,
            "tocsin_storage_overlapping_partitions",
            "Time partitions whose rows may repeat a series and time: queries keep the last write there, at a cost, until compaction merges them.",
            storage.overlapping_partitions() as f64,
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
        let _ = writeln!(
            o,
            "# HELP tocsin_query_phase_seconds_total Time queries spent starting, by phase: SQL to a checked \
             logical plan, logical optimizer, physical planning (segment pruning included).\n\
             # TYPE tocsin_query_phase_seconds_total counter"
        );
        for (phase, us) in tocsin_query::PHASES.iter().zip(&q.phase_us) {
            let _ = writeln!(o, "tocsin_query_phase_seconds_total{{phase=\"{phase}\"}} {}", load(us) as f64 / 1e6);
        }
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
    counter(
        o,
        "tocsin_rollup_recomputed_buckets_total",
        "Roll-up buckets computed again because late rows landed in them.",
        load(&m.recomputed),
    );
}

/// The alerting engine: rules, alerts, evaluations, notifications, the
/// state journal and snapshots, receivers' rate limits.
pub(crate) fn render_alerting(engine: &tocsin_alerting::AlertEngine, o: &mut String) {
    let m = &engine.metrics;
    let g = engine.gauges();
    let seconds = |a: &AtomicU64| load(a) as f64 / 1e6;
    let counter_f = |o: &mut String, name: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    gauge(o, "tocsin_alert_rules", "Loaded alert rules.", g.rules as f64);
    gauge(o, "tocsin_alerts_firing", "Alert instances firing.", g.firing as f64);
    gauge(o, "tocsin_alerts_pending", "Alert instances pending.", g.pending as f64);
    counter(o, "tocsin_rule_evaluations_total", "Rule evaluations.", load(&m.evaluations));
    counter(o, "tocsin_rule_evaluation_failures_total", "Rule evaluations that failed.", load(&m.evaluation_failures));
    counter_f(o, "tocsin_rule_evaluation_seconds_total", "Time spent evaluating rules.", seconds(&m.evaluation_micros));
    counter(o, "tocsin_notifications_sent_total", "Notification attempts that succeeded.", load(&m.notifications_sent));
    counter(
        o,
        "tocsin_notifications_failed_total",
        "Notification attempts that failed.",
        load(&m.notifications_failed),
    );
    counter(o, "tocsin_alert_dispatch_rounds_total", "Dispatch rounds completed.", load(&m.dispatch_rounds));
    counter_f(
        o,
        "tocsin_alert_dispatch_seconds_total",
        "Time spent in dispatch rounds (muting, routing, grouping, escalation).",
        seconds(&m.dispatch_micros),
    );
    counter(
        o,
        "tocsin_notifications_queued_total",
        "Notification jobs created (each escalation step, repeat and resolve is one).",
        load(&m.notifications_queued),
    );
    gauge(
        o,
        "tocsin_notification_outbox",
        "Notification jobs in the outbox as last saved: not yet known delivered.",
        load(&m.outbox_saved) as f64,
    );
    let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    if !g.rate_limits.is_empty() {
        let _ = writeln!(
            o,
            "# HELP tocsin_receiver_rate_limit Notifications a receiver takes per `per` seconds; more are folded into digests.\n# TYPE tocsin_receiver_rate_limit gauge"
        );
        for (r, l) in &g.rate_limits {
            let _ = writeln!(
                o,
                "tocsin_receiver_rate_limit{{receiver=\"{}\",per=\"{}\"}} {}",
                label(r),
                l.per.as_secs(),
                l.messages
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP tocsin_notifications_folded_total Notifications folded into digests by a receiver's rate limit.\n# TYPE tocsin_notifications_folded_total counter"
    );
    for (r, n, _) in &g.folded {
        let _ = writeln!(o, "tocsin_notifications_folded_total{{receiver=\"{}\"}} {n}", label(r));
    }
    let _ = writeln!(
        o,
        "# HELP tocsin_notification_digests_total Digests sent in place of notifications held back by a rate limit.\n# TYPE tocsin_notification_digests_total counter"
    );
    for (r, _, d) in &g.folded {
        let _ = writeln!(o, "tocsin_notification_digests_total{{receiver=\"{}\"}} {d}", label(r));
    }
    counter(o, "tocsin_rule_reloads_total", "Successful rule reloads.", load(&m.reloads));
    counter(
        o,
        "tocsin_alert_journal_records_total",
        "Alerting state journal records (one per round that changed the state).",
        load(&m.journal_records),
    );
    counter(
        o,
        "tocsin_alert_journal_changes_total",
        "Alerts, groups, silences and notifications written to the alerting state journal.",
        load(&m.journal_changes),
    );
    counter_f(
        o,
        "tocsin_alert_journal_seconds_total",
        "Time spent writing alerting state journal records (compare, write, fsync).",
        seconds(&m.journal_micros),
    );
    counter(
        o,
        "tocsin_alert_journal_unshipped_total",
        "Rounds and acknowledgements that went on before their journal record was in the bucket (wal = \
         object-store-sync: the bucket failed or was slower than 5 s).",
        load(&m.unshipped_waits),
    );
    counter(
        o,
        "tocsin_alert_journal_ship_dropped_total",
        "Times the alerting journal records waiting for the bucket passed 64 MiB and were dropped.",
        load(&m.journal_ship_dropped),
    );
    gauge(
        o,
        "tocsin_alert_journal_bytes",
        "Size of the alerting state journal since the last snapshot.",
        load(&m.journal_bytes) as f64,
    );
    counter(o, "tocsin_alert_state_saves_total", "Alerting state snapshots.", load(&m.state_saves));
    counter_f(
        o,
        "tocsin_alert_state_save_seconds_total",
        "Time spent writing alerting state snapshots (serialize, write, fsync, rename).",
        seconds(&m.state_save_micros),
    );
    gauge(
        o,
        "tocsin_alert_state_save_last_seconds",
        "How long the last alerting state snapshot took.",
        seconds(&m.state_save_last_micros),
    );
    gauge(o, "tocsin_alert_state_bytes", "Size of the last alerting state snapshot.", load(&m.state_bytes) as f64);
    counter(o, "tocsin_rule_reload_failures_total", "Rejected rule reloads.", load(&m.reload_failures));
    counter(
        o,
        "tocsin_ingest_rule_batches_total",
        "Write batches evaluated by on_ingest rules.",
        load(&m.ingest_evaluations),
    );
    counter(
        o,
        "tocsin_ingest_rule_batches_dropped_total",
        "Write batches on_ingest rules missed because the engine's queue was full.",
        load(&m.ingest_dropped),
    );
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

/// `[storage] object_store`: the copies pushed to the bucket.
pub(crate) fn render_mirror(m: &crate::mirror::MirrorMetrics, fenced: bool, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    gauge(
        out,
        "tocsin_object_store_fenced",
        "1 once another server took this server's copy over: it pushes nothing, refuses writes and does not alert.",
        if fenced { 1.0 } else { 0.0 },
    );
    counter(
        out,
        "tocsin_object_store_pushes_total",
        "Copies of the data directory pushed to the bucket.",
        m.pushes.load(Relaxed),
    );
    counter(
        out,
        "tocsin_object_store_push_failures_total",
        "Pushes to the bucket that failed (the log says why; the next one retries).",
        m.failures.load(Relaxed),
    );
    gauge(
        out,
        "tocsin_object_store_lost_files",
        "Segment files this server let go of (segments = \"object-store\") that the bucket no longer holds, at the \
         last push: unreadable until put back (the log names them).",
        m.lost_files.load(Relaxed) as f64,
    );
    counter(out, "tocsin_object_store_copied_files_total", "Files sent to the bucket.", m.copied_files.load(Relaxed));
    counter(out, "tocsin_object_store_copied_bytes_total", "Bytes sent to the bucket.", m.copied_bytes.load(Relaxed));
    gauge(
        out,
        "tocsin_object_store_last_point_seconds",
        "Unix time of the last copy in the bucket: every write acknowledged before it is there.",
        m.last_point_ms.load(Relaxed) as f64 / 1000.0,
    );
    counter(
        out,
        "tocsin_object_store_wal_pieces_total",
        "Pieces of WAL shipped to the bucket (wal = object-store or object-store-sync).",
        m.shipped_pieces.load(Relaxed),
    );
    counter(
        out,
        "tocsin_object_store_wal_bytes_total",
        "Bytes of WAL shipped to the bucket.",
        m.shipped_bytes.load(Relaxed),
    );
    counter(
        out,
        "tocsin_object_store_wal_failures_total",
        "Attempts to ship WAL or the alerting journal to the bucket that failed (writes waiting for them are \
         refused; retried).",
        m.ship_failures.load(Relaxed),
    );
    counter(
        out,
        "tocsin_object_store_alerting_pieces_total",
        "Pieces of the alerting state journal shipped to the bucket with the WAL.",
        m.shipped_alerting_pieces.load(Relaxed),
    );
    counter(
        out,
        "tocsin_object_store_alerting_bytes_total",
        "Bytes of the alerting state journal shipped to the bucket.",
        m.shipped_alerting_bytes.load(Relaxed),
    );
}

/// A reader's or a writer's bounded cache of segment files whose home is
/// the bucket.
pub(crate) fn render_segment_cache(cache: Option<tocsin_storage::CacheStats>, out: &mut String) {
    let Some(c) = cache else { return };
    gauge(
        out,
        "tocsin_segment_cache_limit_bytes",
        "Bytes of segment files kept on disk at most (cache_mb), on a reader or a writer of segments = \"object-store\".",
        c.limit_bytes as f64,
    );
    gauge(
        out,
        "tocsin_segment_cache_bytes",
        "Bytes of segment files on disk and counted (evicted ones until the queries reading them end).",
        c.bytes as f64,
    );
    gauge(
        out,
        "tocsin_segment_cache_files",
        "Segment files on disk and counted (a writer counts its own once its copy holds them or a scan read them).",
        c.files as f64,
    );
    counter(out, "tocsin_segment_cache_hits_total", "Segment files a scan found on disk.", c.hits);
    counter(
        out,
        "tocsin_segment_cache_fetches_total",
        "Segment files fetched from the bucket because a scan read them.",
        c.fetches,
    );
    counter(out, "tocsin_segment_cache_fetched_bytes_total", "Bytes of those fetches.", c.fetched_bytes);
    counter(
        out,
        "tocsin_segment_cache_evictions_total",
        "Segment files evicted past the bound (deleted from disk; the bucket keeps them).",
        c.evictions,
    );
}

/// `--role reader`: the copies fetched from the bucket.
pub(crate) fn render_reader(m: &crate::reader::ReaderMetrics, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    counter(
        out,
        "tocsin_reader_refreshes_total",
        "Looks at the writer's copy in the bucket.",
        m.refreshes.load(Relaxed),
    );
    counter(
        out,
        "tocsin_reader_refresh_failures_total",
        "Refreshes that failed (the log says why; the reader answers from the copy it holds).",
        m.failures.load(Relaxed),
    );
    counter(out, "tocsin_reader_fetched_files_total", "Files fetched from the bucket.", m.fetched_files.load(Relaxed));
    counter(out, "tocsin_reader_fetched_bytes_total", "Bytes fetched from the bucket.", m.fetched_bytes.load(Relaxed));
    counter(
        out,
        "tocsin_reader_shipped_rows_total",
        "Rows of the writer's shipped WAL applied after the copy loaded (wal = object-store or object-store-sync).",
        m.shipped_rows.load(Relaxed),
    );
    gauge(
        out,
        "tocsin_reader_point_seconds",
        "Unix time of the writer's copy this reader answers from: every write the writer acknowledged before it \
         is visible here (0: no copy yet).",
        m.point_ms.load(Relaxed) as f64 / 1000.0,
    );
}
