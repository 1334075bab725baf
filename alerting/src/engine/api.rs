//! The engine's API: alerts (list, ack, unack, resolve, links), silences,
//! posted alerts (Alertmanager's API), receivers and on-call, as the HTTP
//! layer and the system tables use them.

use super::*;

/// Refuses a link unless `inst` is still in the firing the link was sent
/// for (links are only sent for firing alerts).
fn check_incident(inst: &Instance, link: &crate::links::Link) -> Result<(), crate::links::LinkError> {
    if inst.state != AlertState::Firing || inst.active_since != Some(link.incident) {
        return Err(crate::links::LinkError::Stale {
            alert: inst.id.clone(),
            began: crate::dispatch::rfc3339(link.incident),
        });
    }
    // A link of the warning page does not acknowledge the critical one
    // (review: it did, after the rise had lifted the ack and paged again).
    let now = inst.severity.as_deref().unwrap_or("");
    if now != link.severity {
        return Err(crate::links::LinkError::Severity {
            alert: inst.id.clone(),
            was: link.severity.clone(),
            now: now.to_string(),
        });
    }
    Ok(())
}

/// The longest comment, `by` or `createdBy` kept.
const MAX_TEXT: usize = 4096;

/// Refuses who-acts and comment text over [`MAX_TEXT`], or with control
/// characters: they are printed by `tocsin` and `amtool` tables, where a
/// line break made a fake row and an escape sequence reached the terminal.
/// `who` and `what` name the fields in the message (`by` and `comment`,
/// `createdBy` and `comment`).
fn check_text(who: (&str, &str), what: (&str, &str)) -> Result<(), EngineError> {
    if who.1.len() > MAX_TEXT || what.1.len() > MAX_TEXT {
        return Err(EngineError::BadRequest(format!("{} and {} may be at most {MAX_TEXT} bytes", who.0, what.0)));
    }
    for (name, text) in [who, what] {
        if text.chars().any(char::is_control) {
            return Err(EngineError::BadRequest(format!(
                "{name} must not contain control characters (line breaks, tabs, escapes)"
            )));
        }
    }
    Ok(())
}

fn check_ack_text(by: &str, comment: &str) -> Result<(), EngineError> {
    check_text(("by", by), ("comment", comment))
}

impl AlertEngine {
    // -- API ---------------------------------------------------------------

    pub(super) fn with_instance<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Instance, i64) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock();
        let inst = inner
            .rules
            .values_mut()
            .find_map(|m| m.get_mut(id))
            .ok_or_else(|| EngineError::NoSuchAlert(id.to_string()))?;
        let out = f(inst, now)?;
        inner.dirty = true;
        Ok(out)
    }

    pub(super) async fn record_manual(&self, t: Transition) -> Result<serde_json::Value, EngineError> {
        self.save()?;
        self.journal_synced().await;
        self.history.transitions(std::slice::from_ref(&t)).await;
        self.alert(&t.id).ok_or_else(|| EngineError::NoSuchAlert(t.id.clone()))
    }

    /// Acknowledges a pending or firing alert: its escalation stops.
    pub async fn ack(&self, id: &str, by: &str, comment: &str) -> Result<serde_json::Value, EngineError> {
        self.ack_checked(id, by, comment, None).await
    }

    async fn ack_checked(
        &self,
        id: &str,
        by: &str,
        comment: &str,
        link: Option<&crate::links::Link>,
    ) -> Result<serde_json::Value, EngineError> {
        check_ack_text(by, comment)?;
        let t = self.with_instance(id, |inst, now| {
            if let Some(link) = link {
                check_incident(inst, link).map_err(|e| EngineError::BadRequest(e.to_string()))?;
                // A link acknowledges once: it does not replace a person's
                // acknowledgement (and comment), nor act again.
                if let Some(a) = &inst.ack {
                    return Err(EngineError::BadRequest(format!(
                        "alert {id} is acknowledged already, by {} at {}",
                        a.by,
                        crate::dispatch::rfc3339(a.at)
                    )));
                }
            }
            if !inst.state.is_active() {
                return Err(EngineError::BadRequest(format!(
                    "alert {id} is {}; only pending or firing alerts can be acknowledged",
                    inst.state.as_str()
                )));
            }
            inst.ack = Some(Ack {
                by: by.to_string(),
                comment: comment.to_string(),
                at: now,
                severity: inst.severity.clone(),
            });
            inst.ack_lifted = None;
            let mut t = Transition::new(inst, inst.state, inst.severity.clone(), now);
            t.note = format!("acknowledged by {by}: {comment}");
            Ok(t)
        })?;
        self.record_manual(t).await
    }

    /// The link presented, if it is this server's, has not expired, and
    /// was sent for the alert's current firing (see [`crate::links`]). An
    /// alert that is gone passes here; acting on it finds it gone.
    pub fn check_link(&self, p: &crate::links::Presented<'_>) -> Result<crate::links::Link, crate::links::LinkError> {
        let link = self.links.check(p, self.clock.now_ms())?;
        let inner = self.inner.lock();
        if let Some(inst) = inner.rules.values().find_map(|m| m.get(p.alert)) {
            check_incident(inst, &link)?;
        }
        Ok(link)
    }

    /// Acknowledges the alert of a checked `link`, as long as it is still
    /// in the firing the link was sent for.
    pub async fn ack_from_link(
        &self,
        link: &crate::links::Link,
        by: &str,
        comment: &str,
    ) -> Result<serde_json::Value, EngineError> {
        self.ack_checked(&link.alert, by, comment, Some(link)).await
    }

    /// Silences alert `id` (its identity: rule and labels, any severity) for
    /// `duration`.
    pub fn silence_alert(&self, id: &str, by: &str, comment: &str, duration: Duration) -> Result<Silence, EngineError> {
        self.silence_alert_as(id, by, comment, duration, None)
    }

    /// [`Self::silence_alert`] from a signed link, once per link: the
    /// silence takes an id made from `link_key` (the link's signature), and
    /// a second use finds it (`false`) instead of adding another, even if a
    /// person expired it since.
    pub fn silence_alert_once(
        &self,
        id: &str,
        link_key: &str,
        by: &str,
        comment: &str,
        duration: Duration,
    ) -> Result<(Silence, bool), EngineError> {
        let key: String = link_key.chars().filter(char::is_ascii_hexdigit).take(24).collect();
        let sid = format!("link-{key}");
        if let Some((s, _)) = self.inner.lock().silences.iter().find(|(s, _)| s.id == sid) {
            return Ok((s.clone(), false));
        }
        self.silence_alert_as(id, by, comment, duration, Some(sid)).map(|s| (s, true))
    }

    fn silence_alert_as(
        &self,
        id: &str,
        by: &str,
        comment: &str,
        duration: Duration,
        silence_id: Option<String>,
    ) -> Result<Silence, EngineError> {
        let identity = {
            let inner = self.inner.lock();
            let inst =
                inner.rules.values().find_map(|m| m.get(id)).ok_or_else(|| EngineError::NoSuchAlert(id.into()))?;
            inst.identity.clone()
        };
        let now = self.clock.now_ms();
        let matchers = identity
            .into_iter()
            .map(|(name, value)| crate::state::MatcherSpec { name, value, is_regex: false, is_equal: true })
            .collect();
        self.insert_silence(
            Silence {
                id: String::new(),
                matchers,
                starts_at: now,
                ends_at: now + duration.as_millis() as i64,
                created_by: by.to_string(),
                comment: comment.to_string(),
                created_at: now,
                scope: None,
            },
            silence_id,
            false,
        )
    }

    pub async fn unack(&self, id: &str, by: &str) -> Result<serde_json::Value, EngineError> {
        check_ack_text(by, "")?;
        let t = self.with_instance(id, |inst, now| {
            if inst.ack.take().is_none() {
                return Err(EngineError::BadRequest(format!("alert {id} is not acknowledged")));
            }
            let mut t = Transition::new(inst, inst.state, inst.severity.clone(), now);
            t.note = format!("acknowledgement withdrawn by {by}");
            Ok(t)
        })?;
        self.record_manual(t).await
    }

    /// Resolves an alert by hand; it fires again only after its condition
    /// has cleared once. A no-data alert's series is forgotten.
    pub async fn resolve(&self, id: &str, by: &str, comment: &str) -> Result<serde_json::Value, EngineError> {
        check_ack_text(by, comment)?;
        let t = self.with_instance(id, |inst, now| {
            if !inst.state.is_active() {
                return Err(EngineError::BadRequest(format!(
                    "alert {id} is {}, not pending or firing",
                    inst.state.as_str()
                )));
            }
            let from = inst.state;
            inst.state = AlertState::Resolved;
            inst.resolved_at = Some(now);
            inst.resolved_by = Some(Ack { by: by.to_string(), comment: comment.to_string(), at: now, severity: None });
            inst.hold_until_clear = true;
            if inst.no_data {
                inst.last_seen = None;
            }
            let mut t = Transition::new(inst, from, inst.severity.clone(), now);
            t.note = format!("resolved by hand by {by}: {comment}");
            Ok(t)
        })?;
        self.record_manual(t).await
    }

    /// One alert as the API shows it.
    pub fn alert(&self, id: &str) -> Option<serde_json::Value> {
        let inner = self.inner.lock();
        inner.rules.values().find_map(|m| m.get(id)).map(|i| alert_json(i, inner.muted.get(id)))
    }

    /// Alerts (not inactive ones), filtered by state and by exact labels.
    pub fn alerts(&self, state: Option<&str>, labels: &BTreeMap<String, String>) -> Vec<serde_json::Value> {
        let inner = self.inner.lock();
        inner
            .rules
            .values()
            .flat_map(|m| m.values())
            .filter(|i| i.state != AlertState::Inactive)
            .filter(|i| state.is_none_or(|s| s == i.state.as_str() || (s == "active" && i.state.is_active())))
            .filter(|i| labels.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
            .map(|i| alert_json(i, inner.muted.get(&i.id)))
            .collect()
    }

    /// One page of the alerts (not inactive) `filter` selects, the most
    /// severe first (by `filter.rank`), then the most recent, then by id;
    /// and how many it selects. Only the page is rendered (listing 50,000
    /// alerts to show 500 rendered all 50,000 under the engine's lock).
    pub fn alerts_page(
        &self,
        filter: &AlertFilter<'_>,
        offset: usize,
        limit: usize,
    ) -> (Vec<serde_json::Value>, usize) {
        let inner = self.inner.lock();
        let mut hits: Vec<&Instance> =
            inner.rules.values().flat_map(|m| m.values()).filter(|i| filter.selects(i)).collect();
        let total = hits.len();
        let key = |i: &Instance| {
            let rank = (filter.rank)(i.severity.as_deref().unwrap_or("none"));
            (rank, std::cmp::Reverse(i.active_since.or(i.pending_since)))
        };
        hits.sort_unstable_by(|a, b| key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id)));
        let page = hits.into_iter().skip(offset).take(limit).map(|i| alert_json(i, inner.muted.get(&i.id))).collect();
        (page, total)
    }

    /// Calls `f` with each alert `filter` selects, under the engine's lock:
    /// for counts over many alerts without rendering them (keep `f` short).
    pub fn visit_alerts(&self, filter: &AlertFilter<'_>, mut f: impl FnMut(&Instance)) {
        let inner = self.inner.lock();
        for i in inner.rules.values().flat_map(|m| m.values()).filter(|i| filter.selects(i)) {
            f(i);
        }
    }

    /// For the `system.alerts` table.
    pub(crate) fn snapshot(&self) -> (Vec<Instance>, HashMap<String, Mute>) {
        let inner = self.inner.lock();
        let v = inner
            .rules
            .values()
            .flat_map(|m| m.values())
            .filter(|i| i.state != AlertState::Inactive)
            .cloned()
            .collect();
        (v, inner.muted.clone())
    }

    /// The notification groups open now, for the console: what each was
    /// last told, who has been notified, and where its escalation chain
    /// stands (the step sent last, the next one, when it is due and whom
    /// it pages).
    pub fn notification_groups(&self) -> Vec<serde_json::Value> {
        let now = self.clock.now_ms();
        let inner = self.inner.lock();
        let config = &inner.config;
        let ts = |ms: i64| crate::dispatch::rfc3339(ms);
        // Acknowledgements as they are now, not as the group last told them;
        // and who is in each group now, told yet or not.
        let instances: Vec<&Instance> = inner.rules.values().flat_map(|m| m.values()).collect();
        let acked: HashMap<&str, bool> = instances.iter().map(|i| (i.id.as_str(), i.ack.is_some())).collect();
        let mut members: HashMap<&str, Vec<&Instance>> = HashMap::new();
        for i in instances.iter().filter(|i| i.state == AlertState::Firing) {
            for key in inner.dispatcher.routed_groups(&i.id) {
                members.entry(key).or_default().push(i);
            }
        }
        inner
            .dispatcher
            .groups
            .values()
            .map(|g| {
                let escalation = g.escalation.as_ref().map(|e| {
                    let policy = config.escalations.get(&e.policy);
                    let steps = policy.map_or(0, |p| p.steps.len());
                    let waiting = !(e.acked || e.idle || e.completed);
                    let next = policy.filter(|_| waiting).and_then(|p| {
                        let step = p.steps.get(e.next_step)?;
                        let due = e.started_at
                            + i64::from(e.cycle) * p.repeat_interval.as_millis() as i64
                            + step.after.as_millis() as i64;
                        let mut pages: Vec<String> = step.notify.clone();
                        if let Some((schedule, via)) = &step.oncall {
                            let person = config
                                .schedules
                                .get(schedule)
                                .and_then(|s| s.on_call(due.max(now), &config.time_intervals));
                            pages.push(format!(
                                "on call in {schedule} ({}) via {}",
                                person.as_deref().unwrap_or("nobody"),
                                via.join(", ")
                            ));
                        }
                        Some(serde_json::json!({ "step": e.next_step + 1, "dueAt": ts(due), "notify": pages }))
                    });
                    // Why the chain waits: every firing alert acknowledged,
                    // or some held (silenced, inhibited, in maintenance).
                    let held = g.sent.values().any(|v| v.status == "firing" && v.held && !v.acked);
                    let stopped = if e.idle {
                        Some("resolved")
                    } else if e.acked && held {
                        Some("held")
                    } else if e.acked {
                        Some("acknowledged")
                    } else if e.completed {
                        Some("completed")
                    } else {
                        None
                    };
                    serde_json::json!({
                        "stopped": stopped,
                        "policy": e.policy,
                        "steps": steps,
                        "cycle": e.cycle,
                        "startedAt": ts(e.started_at),
                        "lastStep": e.last_step.map(|(i, _)| i + 1),
                        "lastStepAt": e.last_step.map(|(_, at)| ts(at)),
                        "next": next,
                        "acked": e.acked,
                        "idle": e.idle,
                        "completed": e.completed,
                    })
                });
                let mut alerts: Vec<serde_json::Value> = g
                    .sent
                    .iter()
                    .map(|(id, v)| {
                        let acked = acked.get(id.as_str()).copied().unwrap_or(v.acked);
                        serde_json::json!({ "id": id, "status": v.status, "severity": v.severity, "acked": acked })
                    })
                    .collect();
                for i in members.get(g.key.as_str()).into_iter().flatten().filter(|i| !g.sent.contains_key(&i.id)) {
                    alerts.push(serde_json::json!({
                        "id": i.id, "status": "firing", "severity": i.severity, "acked": i.ack.is_some(), "told": false,
                    }));
                }
                serde_json::json!({
                    "key": g.key,
                    "receiver": g.receiver,
                    "groupLabels": g.group_labels,
                    "createdAt": ts(g.created_at),
                    "lastSentAt": g.last_sent_at.map(ts),
                    "notified": g.notified,
                    "alerts": alerts,
                    "escalation": escalation,
                })
            })
            .collect()
    }

    /// Every rule of the files, with its definition and last evaluation.
    pub fn rules_health(&self) -> Vec<RuleHealth> {
        let inner = self.inner.lock();
        let mut out = Vec::new();
        for g in &inner.config.groups {
            let records = g.records.iter().map(|r| (&r.name, "record", "promql", r.expr.clone()));
            let rules = g.rules.iter().map(|r| {
                let (language, query) = match (&r.on_ingest, &r.expr) {
                    (Some(src), _) => ("on_ingest", format!("{}.{}", src.table, src.field)),
                    (None, Some(expr)) => ("promql", expr.clone()),
                    (None, None) => ("sql", r.sql.clone()),
                };
                (&r.name, "alert", language, query)
            });
            for (name, kind, language, query) in records.chain(rules) {
                let key = rule_key(&g.name, name);
                let mut h = inner.health.get(&key).cloned().unwrap_or(RuleHealth {
                    group: g.name.clone(),
                    rule: name.clone(),
                    ..Default::default()
                });
                h.kind = kind.to_string();
                h.language = language.to_string();
                h.query = query;
                h.interval_ms = g.interval.as_millis() as u64;
                h.database = g.database.clone();
                out.push(h);
            }
        }
        out
    }

    pub fn add_silence(&self, s: Silence) -> Result<Silence, EngineError> {
        self.insert_silence(s, None, false)
    }

    /// Replaces silence `old` with `s`, as Alertmanager updates one: `old`
    /// expires now and `s` is added. The number of silences does not grow,
    /// so the cap does not refuse it (review: at the cap nobody could
    /// extend a silence).
    pub fn replace_silence(&self, old: &str, s: Silence) -> Result<Silence, EngineError> {
        self.expire_silence(old)?;
        self.insert_silence(s, None, true)
    }

    /// Checks and adds a silence, with `id` or a new one; `replacing`: it
    /// takes the place of one just expired.
    fn insert_silence(&self, mut s: Silence, id: Option<String>, replacing: bool) -> Result<Silence, EngineError> {
        // Every silence is kept in state.json (rewritten on each change) and
        // listed whole: a client must not grow them without bound.
        const MAX_MATCHERS: usize = 64;
        let max_silences = self.opts.max_silences;
        check_text(("createdBy", &s.created_by), ("comment", &s.comment))?;
        let text: usize = s.matchers.iter().map(|m| m.name.len() + m.value.len()).sum();
        if s.matchers.len() > MAX_MATCHERS || text > MAX_TEXT {
            tocsin_storage::refusals::refused("max_silence_matchers");
            return Err(EngineError::BadRequest(format!(
                "a silence may have at most {MAX_MATCHERS} matchers of {MAX_TEXT} bytes in all"
            )));
        }
        let matchers = s.compile().map_err(EngineError::BadRequest)?;
        let now = self.clock.now_ms();
        {
            // Active and pending silences count; expired ones are kept a
            // while to be shown, and the oldest make room when there are
            // too many. A signed link's silence (one per notification sent,
            // so bounded by them) is never refused: whoever may silence
            // must not be able to lock the on-call person's link out.
            let mut inner = self.inner.lock();
            let from_link = id.as_deref().is_some_and(|i| i.starts_with("link-"));
            let live = inner.silences.iter().filter(|(s, _)| s.ends_at > now).count();
            if live >= max_silences && !from_link && !replacing {
                tocsin_storage::refusals::refused("max_silences");
                return Err(EngineError::BadRequest(format!(
                    "{max_silences} silences are active or pending; expire some first"
                )));
            }
            while inner.silences.len() >= 2 * max_silences {
                let oldest = inner
                    .silences
                    .iter()
                    .enumerate()
                    .filter(|(_, (s, _))| s.ends_at <= now)
                    .min_by_key(|(_, (s, _))| s.ends_at)
                    .map(|(i, _)| i);
                let Some(i) = oldest else { break };
                inner.silences.remove(i);
                inner.dirty = true;
            }
        }
        if s.starts_at == 0 {
            s.starts_at = now;
        }
        if s.ends_at <= now {
            return Err(EngineError::BadRequest("endsAt is in the past".into()));
        }
        if s.ends_at <= s.starts_at {
            return Err(EngineError::BadRequest("endsAt must be after startsAt".into()));
        }
        // Clients (amtool) read times as RFC 3339 with a four-digit year.
        const LATEST: i64 = 253_402_300_799_000; // 9999-12-31T23:59:59Z
        if s.ends_at > LATEST || s.starts_at > LATEST || s.starts_at < 0 {
            return Err(EngineError::BadRequest("startsAt and endsAt must fall between 1970 and 9999".into()));
        }
        // As Alertmanager: a silence whose every matcher matches the empty
        // string matches alerts that lack those labels too, i.e. everything.
        let empty = crate::matcher::Labels::new();
        if matchers.matches(&empty) {
            return Err(EngineError::BadRequest(
                "a silence whose matchers all match an empty value would silence every alert; match a value".into(),
            ));
        }
        if s.created_by.trim().is_empty() {
            return Err(EngineError::BadRequest("createdBy is required".into()));
        }
        s.created_at = now;
        {
            let mut inner = self.inner.lock();
            inner.next_id += 1;
            s.id = id.unwrap_or_else(|| format!("s{:x}-{}", now, inner.next_id));
            inner.silences.push((s.clone(), matchers));
            inner.dirty = true;
        }
        self.save()?;
        Ok(s)
    }

    pub fn silences(&self) -> Vec<serde_json::Value> {
        let now = self.clock.now_ms();
        self.inner.lock().silences.iter().map(|(s, _)| silence_json(s, now)).collect()
    }

    pub fn silence(&self, id: &str) -> Option<serde_json::Value> {
        let now = self.clock.now_ms();
        self.inner.lock().silences.iter().find(|(s, _)| s.id == id).map(|(s, _)| silence_json(s, now))
    }

    /// Expires a silence now (it stays listed as expired).
    pub fn expire_silence(&self, id: &str) -> Result<(), EngineError> {
        let now = self.clock.now_ms();
        {
            let mut inner = self.inner.lock();
            let (s, _) = inner
                .silences
                .iter_mut()
                .find(|(s, _)| s.id == id)
                .ok_or_else(|| EngineError::NoSuchSilence(id.to_string()))?;
            s.ends_at = s.ends_at.min(now);
            s.starts_at = s.starts_at.min(now);
            inner.dirty = true;
        }
        self.save()
    }

    /// Puts `member` on call in `schedule` from `starts_at` to `ends_at`
    /// (Unix milliseconds), ahead of the schedule's layers and configured
    /// overrides; kept in the engine's state until it ends.
    pub fn add_override(
        &self,
        mut o: crate::oncall::OverrideEntry,
    ) -> Result<crate::oncall::OverrideEntry, EngineError> {
        const MAX_OVERRIDES: usize = 1_000;
        let now = self.clock.now_ms();
        let bad = |m: String| Err(EngineError::BadRequest(m));
        check_text(("createdBy", &o.created_by), ("comment", &o.comment))?;
        if o.created_by.trim().is_empty() {
            return bad("createdBy is required".into());
        }
        if o.ends_at <= o.starts_at {
            return bad("endsAt must be after startsAt".into());
        }
        if o.ends_at <= now {
            return bad("endsAt is in the past".into());
        }
        {
            let mut inner = self.inner.lock();
            let config = Arc::clone(&inner.base_config);
            if !config.schedules.contains_key(&o.schedule) {
                let mut known: Vec<&String> = config.schedules.keys().collect();
                known.sort();
                return bad(format!("no schedule {:?} (the rules files have: {known:?})", o.schedule));
            }
            if !config.people.contains_key(&o.member) {
                return bad(format!("no person {:?} in the rules files' `people`", o.member));
            }
            if inner.overrides.len() >= MAX_OVERRIDES {
                tocsin_storage::refusals::refused("max_oncall_overrides");
                return bad(format!("{MAX_OVERRIDES} overrides exist already; remove some first"));
            }
            inner.next_id += 1;
            o.id = format!("o{:x}-{}", now, inner.next_id);
            o.created_at = now;
            inner.overrides.push(o.clone());
            inner.config = effective(&inner.base_config, &inner.overrides);
            inner.dirty = true;
        }
        self.save()?;
        Ok(o)
    }

    /// The overrides made through the API that have not ended.
    pub fn overrides(&self) -> Vec<crate::oncall::OverrideEntry> {
        self.inner.lock().overrides.clone()
    }

    /// Removes an override made through the API.
    pub fn remove_override(&self, id: &str) -> Result<(), EngineError> {
        {
            let mut inner = self.inner.lock();
            let before = inner.overrides.len();
            inner.overrides.retain(|o| o.id != id);
            if inner.overrides.len() == before {
                return Err(EngineError::NoSuchOverride(id.to_string()));
            }
            inner.config = effective(&inner.base_config, &inner.overrides);
            inner.dirty = true;
        }
        self.save()
    }

    /// Alerts posted through Alertmanager's API (`POST /api/v2/alerts`):
    /// checked as a whole (one bad alert refuses the post, naming it), then
    /// routed like the engine's own. The number taken.
    pub async fn post_alerts(&self, alerts: Vec<crate::external::PostableAlert>) -> Result<usize, EngineError> {
        if alerts.len() > crate::external::MAX_POSTED {
            return Err(EngineError::BadRequest(format!(
                "{} alerts in one post; at most {}",
                alerts.len(),
                crate::external::MAX_POSTED
            )));
        }
        let now = self.clock.now_ms();
        let checked = alerts
            .into_iter()
            .enumerate()
            .map(|(i, a)| crate::external::check(i, a, now))
            .collect::<Result<Vec<_>, _>>()
            .map_err(EngineError::BadRequest)?;
        let n = checked.len();
        let mut transitions = Vec::new();
        {
            let mut inner = self.inner.lock();
            let posted = format!("{}/", crate::external::GROUP);
            let held: usize = inner.rules.iter().filter(|(k, _)| k.starts_with(&posted)).map(|(_, m)| m.len()).sum();
            let new = checked
                .iter()
                .filter(|c| {
                    let id = crate::external::posted_id(&c.identity);
                    !inner
                        .rules
                        .get(&rule_key(crate::external::GROUP, &c.alertname))
                        .is_some_and(|m| m.contains_key(&id))
                })
                .count();
            // Over the bound, resolved alerts (kept an hour to be shown) go
            // first, oldest first: one sender's flood must not keep a real
            // page out for the hour.
            let over = (held + new).saturating_sub(crate::external::MAX_POSTED_INSTANCES);
            if over > 0 {
                let mut resolved: Vec<(i64, String, String)> = inner
                    .rules
                    .iter()
                    .filter(|(k, _)| k.starts_with(&posted))
                    .flat_map(|(k, m)| {
                        m.values()
                            .filter(|i| i.state == AlertState::Resolved)
                            .map(move |i| (i.resolved_at.unwrap_or(0), k.clone(), i.id.clone()))
                    })
                    .collect();
                resolved.sort();
                for (_, key, id) in resolved.into_iter().take(over) {
                    if let Some(m) = inner.rules.get_mut(&key) {
                        m.remove(&id);
                    }
                }
            }
            let held: usize = inner.rules.iter().filter(|(k, _)| k.starts_with(&posted)).map(|(_, m)| m.len()).sum();
            if held + new > crate::external::MAX_POSTED_INSTANCES {
                tocsin_storage::refusals::refused("max_posted_alerts");
                return Err(EngineError::BadRequest(format!(
                    "{held} posted alerts fire already; at most {} are kept",
                    crate::external::MAX_POSTED_INSTANCES
                )));
            }
            for c in checked {
                let key = rule_key(crate::external::GROUP, &c.alertname);
                let instances = inner.rules.entry(key).or_default();
                transitions.extend(crate::external::apply(c, instances, now));
            }
            inner.dirty = true;
        }
        self.finish_round(transitions).await;
        Ok(n)
    }

    /// The receivers an alert with `labels` is routed to (escalation
    /// chains: every receiver of their steps).
    pub fn receivers_of(&self, labels: &BTreeMap<String, String>) -> Vec<String> {
        let inner = self.inner.lock();
        let config = &inner.config;
        if config.routes.is_empty() {
            return Vec::new();
        }
        let mut out = std::collections::BTreeSet::new();
        for r in crate::dispatch::route_alert(&config.routes, 0, labels) {
            let route = &config.routes[r];
            match route.escalation.as_ref().and_then(|e| config.escalations.get(e)) {
                Some(e) => out.extend(
                    e.steps
                        .iter()
                        .flat_map(|s| s.notify.iter().chain(s.oncall.iter().flat_map(|(_, via)| via)).cloned()),
                ),
                None => {
                    out.insert(route.receiver.clone());
                }
            }
        }
        out.into_iter().collect()
    }

    /// Each schedule's shift at `at_ms` and the next one (looking up to 60
    /// days ahead).
    pub fn oncall(&self, at_ms: i64) -> Vec<serde_json::Value> {
        let inner = self.inner.lock();
        let config = &inner.config;
        let mut names: Vec<&String> = config.schedules.keys().collect();
        names.sort();
        let shift = |s: Option<crate::oncall::Shift>| {
            s.map(|s| {
                let person = config.people.get(&s.member);
                serde_json::json!({
                    "member": s.member,
                    "from": s.from.map(crate::dispatch::rfc3339),
                    "until": s.until.map(crate::dispatch::rfc3339),
                    "email": person.and_then(|p| p.email.clone()),
                    "mobile": person.and_then(|p| p.mobile.clone()),
                    "userId": person.and_then(|p| p.user_id.clone()),
                })
            })
        };
        names
            .into_iter()
            .map(|n| {
                let (now, next) =
                    config.schedules[n].now_and_next(at_ms, &config.time_intervals, Duration::from_secs(60 * 86_400));
                serde_json::json!({ "schedule": n, "now": shift(now), "next": shift(next) })
            })
            .collect()
    }

    /// The configured receivers' names.
    pub fn receiver_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.lock().config.receivers.keys().cloned().collect();
        v.sort();
        v
    }
}

/// An alert as the API shows it (`GET /api/v1/alerts`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AlertInfo<'a> {
    pub(crate) id: &'a str,
    pub(crate) alertname: &'a str,
    pub(crate) group: &'a str,
    pub(crate) state: &'static str,
    pub(crate) severity: Option<&'a str>,
    /// `null` while there is no data.
    pub(crate) value: Option<f64>,
    pub(crate) labels: &'a crate::matcher::Labels,
    pub(crate) annotations: &'a BTreeMap<String, String>,
    pub(crate) active_since: Option<String>,
    pub(crate) pending_since: Option<String>,
    pub(crate) resolved_at: Option<String>,
    pub(crate) updated_at: String,
    pub(crate) ends_at: Option<String>,
    /// A posted alert's own `generatorURL`.
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    pub(crate) generator_url: Option<&'a str>,
    pub(crate) no_data: bool,
    pub(crate) flapping: bool,
    pub(crate) ack: Option<AckInfo<'a>>,
    pub(crate) ack_lifted: Option<AckInfo<'a>>,
    pub(crate) resolved_by: Option<ResolvedInfo<'a>>,
    pub(crate) muted: Option<&'a Mute>,
}

/// Who acknowledged, and for which severity.
#[derive(Debug, Serialize)]
pub(crate) struct AckInfo<'a> {
    pub(crate) by: &'a str,
    pub(crate) comment: &'a str,
    pub(crate) at: String,
    pub(crate) severity: Option<&'a str>,
}

/// Who resolved by hand.
#[derive(Debug, Serialize)]
pub(crate) struct ResolvedInfo<'a> {
    pub(crate) by: &'a str,
    pub(crate) comment: &'a str,
    pub(crate) at: String,
}

impl<'a> AlertInfo<'a> {
    pub(crate) fn of(i: &'a Instance, muted: Option<&'a Mute>) -> AlertInfo<'a> {
        let ts = |t: Option<i64>| t.map(crate::dispatch::rfc3339);
        let ack = |a: &'a Ack| AckInfo {
            by: &a.by,
            comment: &a.comment,
            at: crate::dispatch::rfc3339(a.at),
            severity: a.severity.as_deref(),
        };
        AlertInfo {
            id: &i.id,
            alertname: &i.rule,
            group: &i.group,
            state: i.state.as_str(),
            severity: i.severity.as_deref(),
            value: i.value.is_finite().then_some(i.value),
            labels: &i.labels,
            annotations: &i.annotations,
            active_since: ts(i.active_since),
            pending_since: ts(i.pending_since),
            resolved_at: ts(i.resolved_at),
            updated_at: crate::dispatch::rfc3339(i.updated_at),
            ends_at: ts(i.ends_at),
            generator_url: i.generator_url.as_deref(),
            no_data: i.no_data,
            flapping: i.flapping,
            ack: i.ack.as_ref().map(ack),
            ack_lifted: i.ack_lifted.as_ref().map(ack),
            resolved_by: i.resolved_by.as_ref().map(|a| ResolvedInfo {
                by: &a.by,
                comment: &a.comment,
                at: crate::dispatch::rfc3339(a.at),
            }),
            muted,
        }
    }
}

/// A silence as the API shows it (Alertmanager's shape).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SilenceInfo<'a> {
    pub(crate) id: &'a str,
    pub(crate) matchers: &'a [crate::state::MatcherSpec],
    pub(crate) starts_at: String,
    pub(crate) ends_at: String,
    pub(crate) created_by: &'a str,
    pub(crate) comment: &'a str,
    /// The role a scoped silence belongs to.
    pub(crate) scope: Option<&'a str>,
    pub(crate) status: SilenceStatus,
}

#[derive(Debug, Serialize)]
pub(crate) struct SilenceStatus {
    pub(crate) state: &'static str,
}

pub(super) fn alert_json(i: &Instance, muted: Option<&Mute>) -> serde_json::Value {
    serde_json::to_value(AlertInfo::of(i, muted)).unwrap_or_default()
}

pub(super) fn silence_json(s: &Silence, now: i64) -> serde_json::Value {
    let info = SilenceInfo {
        id: &s.id,
        matchers: &s.matchers,
        starts_at: crate::dispatch::rfc3339(s.starts_at),
        ends_at: crate::dispatch::rfc3339(s.ends_at),
        created_by: &s.created_by,
        comment: &s.comment,
        scope: s.scope.as_ref().map(|sc| sc.role.as_str()),
        status: SilenceStatus { state: s.status(now) },
    };
    serde_json::to_value(info).unwrap_or_default()
}

/// Which alerts [`AlertEngine::alerts_page`] lists.
pub struct AlertFilter<'a> {
    /// `pending`, `firing`, `resolved`, `inactive`, or `active` (pending or
    /// firing); `None`: every state but inactive.
    pub state: Option<&'a str>,
    /// Exact label values.
    pub labels: &'a BTreeMap<String, String>,
    /// Lower-case text that the name, a label value or an annotation
    /// contains (compared in lower case).
    pub text: Option<&'a str>,
    /// Whether the caller may see an alert of this rule group with these
    /// labels.
    pub visible: &'a dyn Fn(&str, &crate::matcher::Labels) -> bool,
    /// A severity's place, most severe first.
    pub rank: &'a dyn Fn(&str) -> usize,
}

impl AlertFilter<'_> {
    fn selects(&self, i: &Instance) -> bool {
        let contains = |s: &str| self.text.is_none_or(|t| s.to_lowercase().contains(t));
        i.state != AlertState::Inactive
            && self.state.is_none_or(|s| s == i.state.as_str() || (s == "active" && i.state.is_active()))
            && self.labels.iter().all(|(k, v)| i.labels.get(k) == Some(v))
            && (self.visible)(&i.group, &i.labels)
            && (self.text.is_none()
                || contains(&i.rule)
                || i.labels.values().any(|v| contains(v))
                || i.annotations.values().any(|v| contains(v)))
    }
}
