//! Time intervals, as Alertmanager writes them (`time_intervals`), plus
//! holiday dates: when a route is muted (`mute_time_intervals`) or active
//! (`active_time_intervals`), and when a rule runs (`active_during`).
//!
//! ```yaml
//! time_intervals:
//!   - name: trading
//!     time_intervals:
//!       - weekdays: ["monday:friday"]
//!         times: [{ start_time: "09:00", end_time: "11:30" }, { start_time: "13:30", end_time: "15:00" }]
//!         location: Asia/Shanghai
//!         except_dates: ["2026-10-01:2026-10-08"]   # exchange holidays
//! ```

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;
use serde::Deserialize;

/// `time_intervals:` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeIntervalFile {
    pub name: String,
    pub time_intervals: Vec<IntervalFile>,
}

/// One interval: every field given must hold (an empty field always does).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalFile {
    #[serde(default)]
    pub times: Vec<TimeRangeFile>,
    /// `monday`, `monday:friday`.
    #[serde(default)]
    pub weekdays: Vec<String>,
    /// `1`, `1:5`, `-1` (the last day), `-3:-1`.
    #[serde(default)]
    pub days_of_month: Vec<String>,
    /// `january`, `1:3`, `december`.
    #[serde(default)]
    pub months: Vec<String>,
    /// `2026`, `2026:2027`.
    #[serde(default)]
    pub years: Vec<String>,
    /// IANA time zone (`Asia/Shanghai`); `UTC` by default, `Local` is not
    /// accepted (a server's zone is not a calendar's).
    pub location: Option<String>,
    /// Tocsin: only these dates (`2026-12-24`, `2026-12-24:2026-12-26`).
    #[serde(default)]
    pub dates: Vec<String>,
    /// Tocsin: never on these dates (holidays).
    #[serde(default)]
    pub except_dates: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeRangeFile {
    pub start_time: String,
    pub end_time: String,
}

/// A named set of intervals: in it when any interval holds.
#[derive(Debug, Clone)]
pub struct TimeInterval {
    pub name: String,
    intervals: Vec<Interval>,
}

#[derive(Debug, Clone)]
struct Interval {
    /// Minutes of the day, `[start, end)`.
    times: Vec<(u32, u32)>,
    /// Days of the week, 0 = Sunday (as Alertmanager counts), inclusive.
    weekdays: Vec<(u32, u32)>,
    days_of_month: Vec<(i32, i32)>,
    months: Vec<(u32, u32)>,
    years: Vec<(i32, i32)>,
    location: Tz,
    dates: Vec<(NaiveDate, NaiveDate)>,
    except_dates: Vec<(NaiveDate, NaiveDate)>,
}

impl TimeInterval {
    /// Whether `at_ms` (Unix milliseconds) falls in any of the intervals.
    pub fn contains(&self, at_ms: i64) -> bool {
        let Some(utc) = DateTime::from_timestamp_millis(at_ms) else { return false };
        self.intervals.iter().any(|i| i.contains(&i.location.from_utc_datetime(&utc.naive_utc())))
    }
}

impl Interval {
    fn contains(&self, t: &DateTime<Tz>) -> bool {
        let minute = t.hour() * 60 + t.minute();
        let date = t.date_naive();
        let weekday = t.weekday().num_days_from_sunday();
        let day = t.day() as i32;
        let days_in_month = days_in_month(t.year(), t.month()) as i32;
        let in_days = |(a, b): &(i32, i32)| {
            // Negative days count from the month's end (-1 is the last).
            let abs = |d: i32| if d < 0 { days_in_month + 1 + d } else { d };
            (abs(*a)..=abs(*b)).contains(&day)
        };
        let in_dates = |r: &[(NaiveDate, NaiveDate)]| r.iter().any(|(a, b)| (*a..=*b).contains(&date));
        (self.times.is_empty() || self.times.iter().any(|(a, b)| (*a..*b).contains(&minute)))
            && (self.weekdays.is_empty() || self.weekdays.iter().any(|(a, b)| (*a..=*b).contains(&weekday)))
            && (self.days_of_month.is_empty() || self.days_of_month.iter().any(in_days))
            && (self.months.is_empty() || self.months.iter().any(|(a, b)| (*a..=*b).contains(&t.month())))
            && (self.years.is_empty() || self.years.iter().any(|(a, b)| (*a..=*b).contains(&t.year())))
            && (self.dates.is_empty() || in_dates(&self.dates))
            && !in_dates(&self.except_dates)
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (y, m) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    NaiveDate::from_ymd_opt(y, m, 1).and_then(|d| d.pred_opt()).map_or(31, |d| d.day())
}

/// Compiles one `time_intervals:` entry; errors name the field and value.
pub fn compile(f: TimeIntervalFile) -> Result<TimeInterval, String> {
    if f.name.trim().is_empty() {
        return Err("a time interval needs a name".into());
    }
    let ctx = |e: String| format!("time interval {:?}: {e}", f.name);
    let intervals = f.time_intervals.into_iter().map(|i| interval(i).map_err(ctx)).collect::<Result<Vec<_>, _>>()?;
    Ok(TimeInterval { name: f.name, intervals })
}

fn interval(i: IntervalFile) -> Result<Interval, String> {
    let times = i
        .times
        .iter()
        .map(|t| {
            let (a, b) = (minute_of_day(&t.start_time)?, minute_of_day(&t.end_time)?);
            if a >= b {
                return Err(format!(
                    "start_time {:?} is not before end_time {:?} (split a range over midnight in two)",
                    t.start_time, t.end_time
                ));
            }
            Ok((a, b))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let weekdays = ranges(&i.weekdays, "weekday", weekday)?;
    let days_of_month = ranges(&i.days_of_month, "day of month", |s| {
        let d: i32 = s.parse().map_err(|_| format!("{s:?} is not a day of the month"))?;
        if d == 0 || !(-31..=31).contains(&d) {
            return Err(format!("{d} is not a day of the month (1 to 31, or -31 to -1 from the end)"));
        }
        Ok(d)
    })?;
    if let Some((a, b)) = days_of_month.iter().find(|(a, b)| (*a < 0) != (*b < 0)) {
        return Err(format!("days_of_month {a}:{b} mixes days from the start and from the end"));
    }
    let months = ranges(&i.months, "month", month)?;
    let years = ranges(&i.years, "year", |s| s.parse::<i32>().map_err(|_| format!("{s:?} is not a year")))?;
    let location = match i.location.as_deref() {
        None | Some("UTC") => Tz::UTC,
        Some("Local") => {
            return Err("location Local is not accepted: name the zone (e.g. Asia/Shanghai, Europe/London)".into());
        }
        Some(name) => name.parse::<Tz>().map_err(|_| format!("{name:?} is not an IANA time zone"))?,
    };
    let date =
        |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| format!("{s:?} is not a date like 2026-10-01"));
    let dates = ranges(&i.dates, "date", date)?;
    let except_dates = ranges(&i.except_dates, "date", date)?;
    Ok(Interval { times, weekdays, days_of_month, months, years, location, dates, except_dates })
}

/// `a` or `a:b` (inclusive), each end parsed by `one`; `a` must not come
/// after `b`.
fn ranges<T: PartialOrd + Copy + std::fmt::Debug>(
    items: &[String],
    what: &str,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<(T, T)>, String> {
    items
        .iter()
        .map(|item| {
            let (a, b) = match item.split_once(':') {
                // A date has no colon; a time of day is not a range here.
                Some((a, b)) => (one(a.trim())?, one(b.trim())?),
                None => {
                    let v = one(item.trim())?;
                    (v, v)
                }
            };
            if a > b {
                return Err(format!("{what} range {item:?} runs backwards"));
            }
            Ok((a, b))
        })
        .collect()
}

fn minute_of_day(s: &str) -> Result<u32, String> {
    let bad = || format!("{s:?} is not a time like 09:30 (00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn weekday(s: &str) -> Result<u32, String> {
    const DAYS: [&str; 7] = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];
    DAYS.iter()
        .position(|d| d.eq_ignore_ascii_case(s))
        .map(|p| p as u32)
        .ok_or_else(|| format!("{s:?} is not a day of the week (sunday to saturday)"))
}

fn month(s: &str) -> Result<u32, String> {
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return if (1..=12).contains(&n) { Ok(n) } else { Err(format!("{n} is not a month (1 to 12)")) };
    }
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(s))
        .map(|p| p as u32 + 1)
        .ok_or_else(|| format!("{s:?} is not a month"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<TimeInterval, String> {
        compile(serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?)
    }

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339).expect("time").timestamp_millis()
    }

    #[test]
    fn a_trading_session_in_its_zone_with_holidays() {
        let t = parse(
            r#"
name: trading
time_intervals:
  - weekdays: ["monday:friday"]
    times: [{ start_time: "09:00", end_time: "11:30" }, { start_time: "13:00", end_time: "15:00" }]
    location: Asia/Shanghai
    except_dates: ["2026-10-01:2026-10-08"]
"#,
        )
        .expect("valid");
        // Tuesday 2026-12-01 09:30 in Shanghai is 01:30 UTC.
        assert!(t.contains(ms("2026-12-01T01:30:00Z")));
        assert!(!t.contains(ms("2026-12-01T03:45:00Z")), "the lunch break");
        assert!(t.contains(ms("2026-12-01T05:00:00Z")), "13:00 local starts the afternoon");
        assert!(!t.contains(ms("2026-12-01T07:00:00Z")), "15:00 local ends it (end is exclusive)");
        assert!(!t.contains(ms("2026-12-05T01:30:00Z")), "a Saturday");
        assert!(!t.contains(ms("2026-10-05T01:30:00Z")), "a Monday in the National Day holiday");
        assert!(t.contains(ms("2026-10-09T01:30:00Z")), "the Friday after it");
        // Sunday 23:30 UTC is Monday 07:30 in Shanghai: not yet open.
        assert!(!t.contains(ms("2026-11-29T23:30:00Z")));
    }

    #[test]
    fn daylight_saving_moves_the_window_in_utc() {
        let t = parse(
            "name: london\ntime_intervals:\n  - times: [{ start_time: \"09:00\", end_time: \"17:00\" }]\n    location: Europe/London\n",
        )
        .expect("valid");
        // Winter: 09:00 London is 09:00 UTC; summer: 08:00 UTC.
        assert!(t.contains(ms("2026-01-15T09:00:00Z")) && !t.contains(ms("2026-01-15T08:30:00Z")));
        assert!(t.contains(ms("2026-07-15T08:30:00Z")) && !t.contains(ms("2026-07-15T16:30:00Z")));
        // The change itself: 2026-03-29 01:00 UTC clocks go forward.
        assert!(t.contains(ms("2026-03-29T08:00:00Z")) && !t.contains(ms("2026-03-28T08:30:00Z")));
    }

    #[test]
    fn days_of_month_count_from_the_end_and_months_and_years_by_name_or_number() {
        let t = parse(
            "name: close\ntime_intervals:\n  - days_of_month: [\"-1\"]\n    months: [\"february\", \"12\"]\n    years: [\"2028\"]\n",
        )
        .expect("valid");
        assert!(t.contains(ms("2028-02-29T12:00:00Z")), "the last day of a leap February");
        assert!(!t.contains(ms("2028-02-28T12:00:00Z")));
        assert!(t.contains(ms("2028-12-31T00:00:00Z")));
        assert!(!t.contains(ms("2027-12-31T00:00:00Z")), "another year");
    }

    #[test]
    fn bad_intervals_are_named() {
        let err = |yaml: &str| parse(yaml).expect_err("invalid");
        let e = err("name: x\ntime_intervals:\n  - weekdays: [\"funday\"]\n");
        assert!(e.contains("\"funday\" is not a day of the week"), "{e}");
        let e = err("name: x\ntime_intervals:\n  - location: Mars/Olympus\n");
        assert!(e.contains("not an IANA time zone"), "{e}");
        let e = err("name: x\ntime_intervals:\n  - times: [{ start_time: \"22:00\", end_time: \"06:00\" }]\n");
        assert!(e.contains("split a range over midnight"), "{e}");
        let e = err("name: x\ntime_intervals:\n  - days_of_month: [\"-3:5\"]\n");
        assert!(e.contains("mixes days"), "{e}");
        let e = err("name: x\ntime_intervals:\n  - location: Local\n");
        assert!(e.contains("Local is not accepted"), "{e}");
        let e = err("name: x\ntime_intervals:\n  - except_dates: [\"2026-13-01\"]\n");
        assert!(e.contains("is not a date"), "{e}");
    }
}
