//! The engine's own metrics, in Prometheus text format.

use super::*;

impl AlertEngine {
    /// The engine's own metrics in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let m = &self.metrics;
        let (firing, pending, rules) = {
            let inner = self.inner.lock();
            let all = || inner.rules.values().flat_map(|m| m.values());
            (
                all().filter(|i| i.state == AlertState::Firing).count(),
                all().filter(|i| i.state == AlertState::Pending).count(),
                inner.config.rule_count(),
            )
        };
        let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        metric("tocsin_alert_rules", "gauge", "Loaded alert rules.", rules as f64);
        metric("tocsin_alerts_firing", "gauge", "Alert instances firing.", firing as f64);
        metric("tocsin_alerts_pending", "gauge", "Alert instances pending.", pending as f64);
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        metric("tocsin_rule_evaluations_total", "counter", "Rule evaluations.", c(&m.evaluations));
        metric(
            "tocsin_rule_evaluation_failures_total",
            "counter",
            "Rule evaluations that failed.",
            c(&m.evaluation_failures),
        );
        metric(
            "tocsin_rule_evaluation_seconds_total",
            "counter",
            "Time spent evaluating rules.",
            c(&m.evaluation_micros) / 1e6,
        );
        metric(
            "tocsin_notifications_sent_total",
            "counter",
            "Notification attempts that succeeded.",
            c(&m.notifications_sent),
        );
        metric(
            "tocsin_notifications_failed_total",
            "counter",
            "Notification attempts that failed.",
            c(&m.notifications_failed),
        );
        metric("tocsin_alert_dispatch_rounds_total", "counter", "Dispatch rounds completed.", c(&m.dispatch_rounds));
        metric(
            "tocsin_alert_dispatch_seconds_total",
            "counter",
            "Time spent in dispatch rounds (muting, routing, grouping, escalation).",
            c(&m.dispatch_micros) / 1e6,
        );
        metric(
            "tocsin_notifications_queued_total",
            "counter",
            "Notification jobs created (each escalation step, repeat and resolve is one).",
            c(&m.notifications_queued),
        );
        metric(
            "tocsin_notification_outbox",
            "gauge",
            "Notification jobs in the outbox as last saved: not yet known delivered.",
            c(&m.outbox_saved),
        );
        let label = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let limits = self.notifier.rate_limits();
        if !limits.is_empty() {
            let _ = writeln!(
                out,
                "# HELP tocsin_receiver_rate_limit Notifications a receiver takes per `per` seconds; more are folded into digests.\n# TYPE tocsin_receiver_rate_limit gauge"
            );
            for (r, l) in &limits {
                let _ = writeln!(
                    out,
                    "tocsin_receiver_rate_limit{{receiver=\"{}\",per=\"{}\"}} {}",
                    label(r),
                    l.per.as_secs(),
                    l.messages
                );
            }
        }
        let folded = self.notifier.folded();
        let _ = writeln!(
            out,
            "# HELP tocsin_notifications_folded_total Notifications folded into digests by a receiver's rate limit.\n# TYPE tocsin_notifications_folded_total counter"
        );
        for (r, n, _) in &folded {
            let _ = writeln!(out, "tocsin_notifications_folded_total{{receiver=\"{}\"}} {n}", label(r));
        }
        let _ = writeln!(
            out,
            "# HELP tocsin_notification_digests_total Digests sent in place of notifications held back by a rate limit.\n# TYPE tocsin_notification_digests_total counter"
        );
        for (r, _, d) in &folded {
            let _ = writeln!(out, "tocsin_notification_digests_total{{receiver=\"{}\"}} {d}", label(r));
        }
        let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        metric("tocsin_rule_reloads_total", "counter", "Successful rule reloads.", c(&m.reloads));
        metric(
            "tocsin_alert_journal_records_total",
            "counter",
            "Alerting state journal records (one per round that changed the state).",
            c(&m.journal_records),
        );
        metric(
            "tocsin_alert_journal_changes_total",
            "counter",
            "Alerts, groups, silences and notifications written to the alerting state journal.",
            c(&m.journal_changes),
        );
        metric(
            "tocsin_alert_journal_seconds_total",
            "counter",
            "Time spent writing alerting state journal records (compare, write, fsync).",
            c(&m.journal_micros) / 1e6,
        );
        metric(
            "tocsin_alert_journal_bytes",
            "gauge",
            "Size of the alerting state journal since the last snapshot.",
            c(&m.journal_bytes),
        );
        metric("tocsin_alert_state_saves_total", "counter", "Alerting state snapshots.", c(&m.state_saves));
        metric(
            "tocsin_alert_state_save_seconds_total",
            "counter",
            "Time spent writing alerting state snapshots (serialize, write, fsync, rename).",
            c(&m.state_save_micros) / 1e6,
        );
        metric(
            "tocsin_alert_state_save_last_seconds",
            "gauge",
            "How long the last alerting state snapshot took.",
            c(&m.state_save_last_micros) / 1e6,
        );
        metric("tocsin_alert_state_bytes", "gauge", "Size of the last alerting state snapshot.", c(&m.state_bytes));
        metric("tocsin_rule_reload_failures_total", "counter", "Rejected rule reloads.", c(&m.reload_failures));
        metric(
            "tocsin_ingest_rule_batches_total",
            "counter",
            "Write batches evaluated by on_ingest rules.",
            c(&m.ingest_evaluations),
        );
        metric(
            "tocsin_ingest_rule_batches_dropped_total",
            "counter",
            "Write batches on_ingest rules missed because the engine's queue was full.",
            c(&m.ingest_dropped),
        );
    }
}
