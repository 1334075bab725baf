//! On-call schedules: who is on call in a schedule at a time, from layers
//! of rotations (a hand-off time and a length, members in turn, in an IANA
//! time zone) and overrides for a period. Escalation steps notify "whoever
//! is on call in schedule X" through receivers (`via`), which reach that
//! person: robots @-mention their mobile or user id, email goes to their
//! address.
//!
//! ```yaml
//! people:
//!   - { name: alice, email: alice@example.com, mobile: "13800000001", user_id: alice.wang }
//! schedules:
//!   - name: primary
//!     location: Asia/Shanghai
//!     layers:
//!       - { start: "2026-01-05T09:00", every: 1w, members: [alice, bob, carol] }
//!       - { start: "2026-01-05T18:00", every: 1d, members: [dave, erin], active: [nights] }
//!     overrides:
//!       - { member: frank, starts_at: "2026-12-24T09:00:00+08:00", ends_at: "2026-12-26T09:00:00+08:00" }
//! ```
//!
//! A later layer wins where it applies (its `active` time intervals hold,
//! or always); an override wins over every layer. Hand-offs happen at the
//! same local time of day across daylight-saving changes: rotations count
//! local wall-clock time from `start`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::calendar::TimeInterval;
use crate::duration::Dur;

/// A person who can be on call, and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mobile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    pub name: String,
    pub location: Option<String>,
    pub layers: Vec<LayerFile>,
    #[serde(default)]
    pub overrides: Vec<OverrideFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerFile {
    /// The first hand-off, local time: `2026-01-05T09:00`.
    pub start: String,
    /// Each member's turn: `1d`, `1w`, `12h`.
    pub every: Dur,
    pub members: Vec<String>,
    /// Time intervals the layer applies in (default: always).
    #[serde(default)]
    pub active: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideFile {
    pub member: String,
    pub starts_at: String,
    pub ends_at: String,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    location: Tz,
    layers: Vec<Layer>,
    /// (from, to, member), Unix milliseconds, `to` exclusive.
    overrides: Vec<(i64, i64, String)>,
}

#[derive(Debug, Clone)]
struct Layer {
    start: NaiveDateTime,
    every: Duration,
    members: Vec<String>,
    active: Vec<String>,
}

/// Who is on call at a time, and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shift {
    pub member: String,
    /// Unix milliseconds; `None`: not within the horizon looked at (the
    /// shift began earlier, or ends later).
    pub from: Option<i64>,
    pub until: Option<i64>,
}

/// An override made through the API (`POST /api/v1/oncall/overrides`):
/// kept in the engine's state, not in the rules files, and ahead of the
/// configured ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OverrideEntry {
    pub id: String,
    pub schedule: String,
    pub member: String,
    /// Unix milliseconds, `ends_at` exclusive.
    pub starts_at: i64,
    pub ends_at: i64,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
    pub created_at: i64,
}

impl Schedule {
    /// Adds an override after the configured ones (a later one wins).
    pub fn add_override(&mut self, from: i64, until: i64, member: &str) {
        self.overrides.push((from, until, member.to_string()));
    }

    /// The member on call at `at_ms`, if anyone is (`intervals`: the
    /// configuration's named time intervals).
    pub fn on_call(&self, at_ms: i64, intervals: &HashMap<String, TimeInterval>) -> Option<String> {
        if let Some((_, _, m)) = self.overrides.iter().rev().find(|(a, b, _)| (*a..*b).contains(&at_ms)) {
            return Some(m.clone());
        }
        let local = DateTime::from_timestamp_millis(at_ms)?.with_timezone(&self.location).naive_local();
        self.layers.iter().rev().find_map(|l| {
            let applies =
                l.active.is_empty() || l.active.iter().any(|n| intervals.get(n).is_some_and(|t| t.contains(at_ms)));
            if !applies || local < l.start {
                return None;
            }
            let turn = (local - l.start).num_seconds().div_euclid(l.every.as_secs().max(1) as i64);
            Some(l.members[turn.rem_euclid(l.members.len() as i64) as usize].clone())
        })
    }

    /// The shift at `at_ms` and the next one: who, from when, until when
    /// (found by looking every hour and at every override's start and end,
    /// then to the minute where it changed, at most `horizon` ahead; a
    /// layer's shift shorter than an hour between two looks may be
    /// missed, an override never is).
    pub fn now_and_next(
        &self,
        at_ms: i64,
        intervals: &HashMap<String, TimeInterval>,
        horizon: Duration,
    ) -> (Option<Shift>, Option<Shift>) {
        const MINUTE: i64 = 60_000;
        const HOUR: i64 = 60 * MINUTE;
        let end = at_ms + horizon.as_millis() as i64;
        let who = |t: i64| self.on_call(t, intervals);
        let mut edges: Vec<i64> = self.overrides.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
        edges.sort_unstable();
        let change_after = |from: i64| {
            let current = who(from);
            let mut lo = from - from.rem_euclid(MINUTE);
            loop {
                // The next look: the next hour, or an override's edge first.
                let hour = lo + HOUR;
                let t = match edges.iter().find(|e| **e > lo && **e > from) {
                    Some(&e) if e < hour => e,
                    _ => hour,
                };
                if t >= end {
                    return None;
                }
                if who(t) != current {
                    if edges.binary_search(&t).is_ok() && who(t - 1) == current {
                        return Some(t); // exactly at the override's edge
                    }
                    // The first whole minute in (lo, t] with someone else
                    // (hand-offs of layers fall on whole minutes).
                    return Some(first_minute(lo, t, &|m| who(m) != current));
                }
                lo = t;
            }
        };
        // When the shift at `at` began: the same looks, backwards.
        let start = at_ms - horizon.as_millis() as i64;
        let change_before = |at: i64| {
            let current = who(at);
            let mut hi = at;
            loop {
                let hour = hi - HOUR;
                let p = match edges.iter().rev().find(|e| **e < hi) {
                    Some(&e) if e > hour => e,
                    _ => hour,
                };
                if p <= start {
                    return None;
                }
                if who(p) != current {
                    // Exactly at an override's edge, if that is where;
                    // else the first whole minute in (p, hi] with the same
                    // person.
                    let exact =
                        edges.iter().find(|e| (p..=hi).contains(*e) && who(**e) == current && who(**e - 1) != current);
                    return Some(exact.copied().unwrap_or_else(|| first_minute(p, hi, &|m| who(m) == current)));
                }
                if edges.binary_search(&p).is_ok() && who(p - 1) != current {
                    return Some(p);
                }
                hi = p;
            }
        };
        let now = who(at_ms);
        let until = change_after(at_ms);
        let current = now.map(|m| Shift { member: m, from: change_before(at_ms), until });
        let next = until.and_then(|t| {
            let m = who(t)?;
            Some(Shift { member: m, from: Some(t), until: change_after(t) })
        });
        (current, next)
    }
}

/// The first whole minute `m` in `(lo, hi]` with `found(m)`, given that
/// `found` holds from some time on in that span; `hi` if no whole minute
/// in it does (the change is between the last whole minute and `hi`).
fn first_minute(lo: i64, hi: i64, found: &dyn Fn(i64) -> bool) -> i64 {
    const MINUTE: i64 = 60_000;
    let (mut a, mut b) = (lo.div_euclid(MINUTE) + 1, hi.div_euclid(MINUTE));
    if a > b || !found(b * MINUTE) {
        return hi;
    }
    while a < b {
        let m = a + (b - a) / 2;
        if found(m * MINUTE) { b = m } else { a = m + 1 }
    }
    b * MINUTE
}

/// Compiles a schedule; `people`: the names that may be members.
pub fn compile(f: ScheduleFile, people: &HashMap<String, Person>) -> Result<Schedule, String> {
    let ctx = |e: String| format!("schedule {:?}: {e}", f.name);
    let location = match f.location.as_deref() {
        None | Some("UTC") => Tz::UTC,
        Some(name) => name.parse::<Tz>().map_err(|_| ctx(format!("{name:?} is not an IANA time zone")))?,
    };
    if f.layers.is_empty() {
        return Err(ctx("needs at least one layer".into()));
    }
    let known = |m: &str| -> Result<(), String> {
        if people.contains_key(m) { Ok(()) } else { Err(ctx(format!("{m:?} is not in `people`"))) }
    };
    let mut layers = Vec::new();
    for (i, l) in f.layers.into_iter().enumerate() {
        let start = NaiveDateTime::parse_from_str(&l.start, "%Y-%m-%dT%H:%M").map_err(|_| {
            ctx(format!("layer {}: start {:?} is not a local time like 2026-01-05T09:00", i + 1, l.start))
        })?;
        if l.every.0 < Duration::from_secs(3600) {
            return Err(ctx(format!("layer {}: `every` must be at least 1h", i + 1)));
        }
        if l.members.is_empty() {
            return Err(ctx(format!("layer {} has no members", i + 1)));
        }
        for m in &l.members {
            known(m)?;
        }
        layers.push(Layer { start, every: l.every.0, members: l.members, active: l.active });
    }
    let mut overrides = Vec::new();
    for o in f.overrides {
        known(&o.member)?;
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| ctx(format!("override {s:?} is not an RFC 3339 time: {e}")))
        };
        let (a, b) = (at(&o.starts_at)?, at(&o.ends_at)?);
        if a >= b {
            return Err(ctx(format!("override of {:?} ends before it starts", o.member)));
        }
        overrides.push((a, b, o.member));
    }
    // A local start that a DST change skips is still fine: it is a
    // wall-clock counting origin, never an instant.
    Ok(Schedule { name: f.name, location, layers, overrides })
}

impl Schedule {
    /// The time intervals the layers name, for checking.
    pub fn interval_names(&self) -> impl Iterator<Item = &String> {
        self.layers.iter().flat_map(|l| l.active.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).expect("time").timestamp_millis()
    }

    fn people(names: &[&str]) -> HashMap<String, Person> {
        names
            .iter()
            .map(|n| (n.to_string(), Person { name: n.to_string(), email: None, mobile: None, user_id: None }))
            .collect()
    }

    fn schedule(yaml: &str) -> Result<Schedule, String> {
        compile(serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?, &people(&["alice", "bob", "carol", "dave"]))
    }

    #[test]
    fn a_weekly_rotation_hands_off_at_the_local_time_across_daylight_saving() {
        let s = schedule(
            "name: p\nlocation: Europe/London\nlayers:\n  - { start: \"2026-03-23T09:00\", every: 1w, members: [alice, bob] }\n",
        )
        .expect("valid");
        let none = HashMap::new();
        // Monday 2026-03-23 09:00 London (GMT) = 09:00 UTC: alice's week.
        assert_eq!(s.on_call(ms("2026-03-23T09:00:00Z"), &none).as_deref(), Some("alice"));
        assert_eq!(s.on_call(ms("2026-03-23T08:59:00Z"), &none), None, "before the first hand-off");
        // Clocks go forward on 2026-03-29. Monday 2026-03-30 09:00 BST is
        // 08:00 UTC: bob takes over then, not an hour later.
        assert_eq!(s.on_call(ms("2026-03-30T07:59:00Z"), &none).as_deref(), Some("alice"));
        assert_eq!(s.on_call(ms("2026-03-30T08:00:00Z"), &none).as_deref(), Some("bob"));
        assert_eq!(s.on_call(ms("2026-04-06T08:00:00Z"), &none).as_deref(), Some("alice"), "and around again");
        let (now, next) = s.now_and_next(ms("2026-03-25T12:00:00Z"), &none, Duration::from_secs(30 * 86_400));
        let now = now.expect("someone");
        assert_eq!((now.member.as_str(), now.from), ("alice", Some(ms("2026-03-23T09:00:00Z"))));
        let next = next.expect("a next shift");
        assert_eq!((next.member.as_str(), next.from), ("bob", Some(ms("2026-03-30T08:00:00Z"))));
        assert_eq!(next.until, Some(ms("2026-04-06T08:00:00Z")));
    }

    #[test]
    fn overrides_and_later_layers_win_where_they_apply() {
        let yaml = "name: p\nlocation: Asia/Shanghai\nlayers:\n  - { start: \"2026-12-01T09:00\", every: 1d, members: [alice, bob] }\n  - { start: \"2026-12-01T00:00\", every: 1d, members: [carol], active: [nights] }\noverrides:\n  - { member: dave, starts_at: \"2026-12-24T09:00:00+08:00\", ends_at: \"2026-12-26T09:00:00+08:00\" }\n";
        let s = schedule(yaml).expect("valid");
        let nights = crate::calendar::compile(
            serde_yaml_ng::from_str(
                "name: nights\ntime_intervals: [{ times: [{ start_time: \"00:00\", end_time: \"08:00\" }], location: Asia/Shanghai }]\n",
            )
            .expect("yaml"),
        )
        .expect("interval");
        let intervals: HashMap<String, TimeInterval> = [("nights".to_string(), nights)].into();
        // 2026-12-02 10:00 Shanghai (02:00 UTC): day 2 of the daily rotation.
        assert_eq!(s.on_call(ms("2026-12-02T02:00:00Z"), &intervals).as_deref(), Some("bob"));
        // 03:00 Shanghai: the night layer applies.
        assert_eq!(s.on_call(ms("2026-12-01T19:00:00Z"), &intervals).as_deref(), Some("carol"));
        // Christmas Eve: the override.
        assert_eq!(s.on_call(ms("2026-12-24T02:00:00Z"), &intervals).as_deref(), Some("dave"));
        assert_eq!(s.on_call(ms("2026-12-26T02:00:00Z"), &intervals).as_deref(), Some("bob"), "it ended");
    }

    #[test]
    fn a_short_override_is_a_shift_of_its_own() {
        let yaml = "name: p\nlayers:\n  - { start: \"2026-12-01T09:00\", every: 1d, members: [alice, bob] }\n";
        let mut s = schedule(yaml).expect("valid");
        // Bob covers alice's dentist appointment: 10:07:30 to 10:37 UTC.
        s.add_override(ms("2026-12-01T10:07:30Z"), ms("2026-12-01T10:37:00Z"), "bob");
        let none = HashMap::new();
        let (now, next) = s.now_and_next(ms("2026-12-01T10:00:00Z"), &none, Duration::from_secs(7 * 86_400));
        let (now, next) = (now.expect("someone"), next.expect("a next shift"));
        assert_eq!((now.member.as_str(), now.until), ("alice", Some(ms("2026-12-01T10:07:30Z"))));
        assert_eq!(now.from, Some(ms("2026-12-01T09:00:00Z")), "her shift began at the hand-off");
        assert_eq!(
            (next.member.as_str(), next.from, next.until),
            ("bob", Some(ms("2026-12-01T10:07:30Z")), Some(ms("2026-12-01T10:37:00Z")))
        );
        // During it: bob until 10:37, then alice again until the hand-off.
        let (now, next) = s.now_and_next(ms("2026-12-01T10:20:00Z"), &none, Duration::from_secs(7 * 86_400));
        let now = now.expect("bob");
        assert_eq!((now.member.as_str(), now.until), ("bob", Some(ms("2026-12-01T10:37:00Z"))));
        assert_eq!(now.from, Some(ms("2026-12-01T10:07:30Z")), "since the override began");
        let next = next.expect("a next shift");
        assert_eq!((next.member.as_str(), next.until), ("alice", Some(ms("2026-12-02T09:00:00Z"))));
        // A query time with seconds: the shift still began on the hour
        // (review: SINCE carried the query's seconds).
        let (now, _) = s.now_and_next(ms("2026-12-02T10:41:07.500Z"), &none, Duration::from_secs(7 * 86_400));
        assert_eq!(now.map(|n| (n.member, n.from)), Some(("bob".to_string(), Some(ms("2026-12-02T09:00:00Z")))));
        // An override that ends mid-minute, where the same person goes on:
        // UNTIL is the layer's hand-off, not shifted by the override's
        // seconds.
        let mut t = s.clone();
        t.add_override(ms("2026-12-03T05:00:55.804Z"), ms("2026-12-06T05:00:55.804Z"), "alice");
        let (now, _) = t.now_and_next(ms("2026-12-04T12:00:00Z"), &none, Duration::from_secs(7 * 86_400));
        assert_eq!(now.and_then(|n| n.until), Some(ms("2026-12-06T09:00:00Z")));
        // An override longer than the horizon: no made-up end.
        s.add_override(ms("2026-12-03T00:00:00Z"), ms("2300-01-01T00:00:00Z"), "bob");
        let (now, next) = s.now_and_next(ms("2026-12-04T00:00:00Z"), &none, Duration::from_secs(60 * 86_400));
        let now = now.expect("bob");
        assert_eq!(
            (now.member.as_str(), now.from, now.until),
            ("bob", Some(ms("2026-12-02T09:00:00Z")), None),
            "his own day ran into it"
        );
        assert!(next.is_none());
    }

    #[test]
    fn bad_schedules_are_named() {
        let e =
            schedule("name: p\nlayers:\n  - { start: \"2026-01-05T09:00\", every: 1d, members: [zoe] }\n").unwrap_err();
        assert!(e.contains("\"zoe\" is not in `people`"), "{e}");
        let e = schedule("name: p\nlayers:\n  - { start: \"Monday 9am\", every: 1d, members: [alice] }\n").unwrap_err();
        assert!(e.contains("not a local time"), "{e}");
        let e = schedule("name: p\nlayers:\n  - { start: \"2026-01-05T09:00\", every: 1m, members: [alice] }\n")
            .unwrap_err();
        assert!(e.contains("at least 1h"), "{e}");
        let e = schedule("name: p\nlocation: Moon/Base\nlayers: []\n").unwrap_err();
        assert!(e.contains("IANA"), "{e}");
    }
}
