//! Syslog messages as log events: RFC 5424 and RFC 3164 (BSD) messages, in
//! the two TCP framings of RFC 6587 (octet counting and newline) or one per
//! UDP datagram. The listeners are the server's; this module parses.
//!
//! Mapping (docs/protocols.md, Syslog): `ts` from the message's timestamp
//! (the time received when it has none), `host` from HOSTNAME (the
//! sender's address when absent), `service` from APP-NAME (RFC 5424) or the
//! TAG before `[pid]:` (RFC 3164), `level` from the severity, and
//! `facility`, `severity`, `procid`, `msgid` and each structured-data
//! parameter (`<sd-id>.<name>`) in `attributes`.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use tocsin_proto::v1::{Label, LogEvent, WriteLogsRequest, WriteResponse};

use crate::{IngestError, IngestService};
use tocsin_auth::Principal;

/// Facility keywords (syslog(3), rsyslog), by number.
const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Severity keywords, by number.
const SEVERITIES: [&str; 8] = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"];

/// Tocsin's level of a syslog severity: emergency, alert and critical are
/// `fatal`; notice and informational are `info`.
fn level(severity: u8) -> &'static str {
    match severity {
        0..=2 => "fatal",
        3 => "error",
        4 => "warn",
        5 | 6 => "info",
        _ => "debug",
    }
}

/// Most structured-data parameters in one message; a message with more is
/// refused whole (with the reason).
pub const MAX_SD_PARAMS: usize = 128;

/// One message as a log event. `peer` (the sender's address) is the host
/// when the message names none; `now_ns` is the time when it carries none.
pub fn parse(msg: &[u8], peer: &str, now_ns: i64) -> Result<LogEvent, String> {
    let msg = trim_end(msg);
    let (pri, rest) = pri(msg)?;
    let (facility, severity) = (pri / 8, pri % 8);
    let mut event = LogEvent {
        timestamp: now_ns,
        level: level(severity).to_string(),
        attributes: vec![
            Label { name: "facility".into(), value: FACILITIES[usize::from(facility)].into() },
            Label { name: "severity".into(), value: SEVERITIES[usize::from(severity)].into() },
        ],
        ..LogEvent::default()
    };
    match rest.strip_prefix(b"1 ") {
        Some(rest) => rfc5424(rest, &mut event)?,
        None => rfc3164(rest, &mut event, now_ns)?,
    }
    if event.host.is_empty() {
        event.host = peer.to_string();
    }
    Ok(event)
}

/// Trailing newlines, carriage returns and NULs, which senders append.
fn trim_end(mut b: &[u8]) -> &[u8] {
    while let [head @ .., b'\n' | b'\r' | 0] = b {
        b = head;
    }
    b
}

/// `<PRI>`, 0 to 191. A message without one is user.notice (13), as RFC
/// 3164 says a relay treats it.
fn pri(msg: &[u8]) -> Result<(u8, &[u8]), String> {
    let Some(rest) = msg.strip_prefix(b"<") else { return Ok((13, msg)) };
    let end = rest.iter().take(4).position(|b| *b == b'>').ok_or("PRI: no '>' within 3 digits after '<'")?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!("PRI {:?} is not a number", String::from_utf8_lossy(digits)));
    }
    let n: u16 = digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0'));
    match u8::try_from(n) {
        Ok(n) if n <= 191 => Ok((n, &rest[end + 1..])),
        _ => Err(format!("PRI {n} is over 191")),
    }
}

/// The next space-separated field and what follows its space.
fn field(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|c| *c == b' ') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

/// A header field's text; `-` is RFC 5424's nil value.
fn text(b: &[u8]) -> String {
    if b == b"-" { String::new() } else { String::from_utf8_lossy(b).into_owned() }
}

/// The message text: a UTF-8 byte order mark dropped, invalid UTF-8
/// replaced.
fn body(b: &[u8]) -> String {
    String::from_utf8_lossy(b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b)).into_owned()
}

/// `TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID SP MSGID SP SD [SP MSG]`,
/// after `<PRI>1 `.
fn rfc5424(b: &[u8], e: &mut LogEvent) -> Result<(), String> {
    let (ts, b) = field(b);
    if ts != b"-" {
        e.timestamp = rfc3339(ts)?;
    }
    let (host, b) = field(b);
    let (app, b) = field(b);
    let (procid, b) = field(b);
    let (msgid, b) = field(b);
    if b.is_empty() {
        return Err("RFC 5424 header ends before STRUCTURED-DATA".into());
    }
    e.host = text(host);
    e.service = text(app);
    for (name, v) in [("procid", procid), ("msgid", msgid)] {
        if v != b"-" && !v.is_empty() {
            e.attributes.push(Label { name: name.into(), value: text(v) });
        }
    }
    let rest = match b.strip_prefix(b"-") {
        Some(rest) => rest,
        None => structured_data(b, &mut e.attributes)?,
    };
    e.message = match rest {
        [] => String::new(),
        // rsyslog's RFC 5424 template puts its `msg` property, which keeps
        // the space that followed the tag's colon, after the separator: one
        // more space is dropped.
        [b' ', msg @ ..] => body(msg.strip_prefix(b" ").unwrap_or(msg)),
        _ => return Err("RFC 5424: no space between STRUCTURED-DATA and MSG".into()),
    };
    Ok(())
}

/// `[id name="value" ...]...`: each parameter as the attribute `id.name`.
/// Values unescape `\"`, `\\` and `\]`. Returns what follows.
fn structured_data<'a>(mut b: &'a [u8], out: &mut Vec<Label>) -> Result<&'a [u8], String> {
    let mut params = 0;
    while let Some(rest) = b.strip_prefix(b"[") {
        let id_end = rest.iter().position(|c| matches!(c, b' ' | b']')).ok_or("STRUCTURED-DATA: '[' is not closed")?;
        let id = String::from_utf8_lossy(&rest[..id_end]).into_owned();
        if id.is_empty() {
            return Err("STRUCTURED-DATA: an element has no SD-ID".into());
        }
        let mut r = &rest[id_end..];
        loop {
            match r {
                [b']', tail @ ..] => {
                    b = tail;
                    break;
                }
                [b' ', tail @ ..] => {
                    let eq = tail.iter().position(|c| *c == b'=').ok_or_else(|| format!("SD-ID {id}: no '='"))?;
                    let name = String::from_utf8_lossy(&tail[..eq]).into_owned();
                    let Some(v) = tail[eq + 1..].strip_prefix(b"\"") else {
                        return Err(format!("SD-ID {id}: the value of {name} is not quoted"));
                    };
                    let (value, after) =
                        quoted(v).ok_or_else(|| format!("SD-ID {id}: the value of {name} is not closed"))?;
                    params += 1;
                    if params > MAX_SD_PARAMS {
                        return Err(format!("more than {MAX_SD_PARAMS} structured-data parameters"));
                    }
                    out.push(Label { name: format!("{id}.{name}"), value });
                    r = after;
                }
                _ => return Err(format!("SD-ID {id}: expected ' name=\"value\"' or ']'")),
            }
        }
    }
    Ok(b)
}

/// A quoted value's text (after the opening quote) and what follows the
/// closing one.
fn quoted(b: &[u8]) -> Option<(String, &[u8])> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => return Some((String::from_utf8_lossy(&v).into_owned(), &b[i + 1..])),
            b'\\' if matches!(b.get(i + 1), Some(b'"' | b'\\' | b']')) => {
                v.push(b[i + 1]);
                i += 2;
            }
            c => {
                v.push(c);
                i += 1;
            }
        }
    }
    None
}

/// RFC 3339 (`2026-12-05T20:01:02.123456+01:00`, `...Z`) as nanoseconds.
fn rfc3339(b: &[u8]) -> Result<i64, String> {
    let s = std::str::from_utf8(b).map_err(|_| "TIMESTAMP is not text".to_string())?;
    let t = DateTime::parse_from_rfc3339(s).map_err(|e| format!("TIMESTAMP {s:?} is not RFC 3339 ({e})"))?;
    t.timestamp_nanos_opt().ok_or_else(|| format!("TIMESTAMP {s:?} is out of range"))
}

/// `TIMESTAMP HOSTNAME TAG[PID]: MSG`, where TIMESTAMP is BSD's `Mmm dd
/// hh:mm:ss` (no year, no zone: read as UTC, in the year that puts it
/// closest before now) or RFC 3339 (rsyslog's forward format). Without a
/// timestamp, the whole is `TAG: MSG` (a local sender's form).
fn rfc3164(b: &[u8], e: &mut LogEvent, now_ns: i64) -> Result<(), String> {
    let b = if let Some((ts, rest)) = bsd_time(b, now_ns) {
        e.timestamp = ts;
        host_then(rest, e)
    } else {
        let (first, rest) = field(b);
        match first.first() {
            Some(c) if c.is_ascii_digit() && first.len() >= 20 && first.get(10) == Some(&b'T') => {
                e.timestamp = rfc3339(first)?;
                host_then(rest, e)
            }
            _ => b,
        }
    };
    tag(b, e);
    Ok(())
}

fn host_then<'a>(b: &'a [u8], e: &mut LogEvent) -> &'a [u8] {
    let (host, rest) = field(b);
    e.host = text(host);
    rest
}

/// `TAG[PID]: MSG` or `TAG: MSG`; a first word that is not followed by
/// `:` or `[` is part of the message.
fn tag(b: &[u8], e: &mut LogEvent) {
    let end = b.iter().take(48).position(|c| matches!(c, b':' | b'[' | b' '));
    if let Some(end) = end.filter(|i| *i > 0) {
        let name = &b[..end];
        let mut rest = &b[end..];
        let mut pid = None;
        if let Some(r) = rest.strip_prefix(b"[")
            && let Some(close) = r.iter().take(32).position(|c| *c == b']')
        {
            pid = Some(&r[..close]);
            rest = &r[close + 1..];
        }
        if let Some(r) = rest.strip_prefix(b":") {
            e.service = String::from_utf8_lossy(name).into_owned();
            if let Some(pid) = pid {
                e.attributes.push(Label { name: "procid".into(), value: text(pid) });
            }
            e.message = body(r.strip_prefix(b" ").unwrap_or(r));
            return;
        }
    }
    e.message = body(b);
}

/// BSD's `Mmm dd hh:mm:ss` (day space-padded or not) and what follows its
/// space.
fn bsd_time(b: &[u8], now_ns: i64) -> Option<(i64, &[u8])> {
    const MONTHS: [&[u8]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let month = MONTHS.iter().position(|m| b.starts_with(m))? as u32 + 1;
    let r = b.get(3..)?.strip_prefix(b" ")?;
    let r = r.strip_prefix(b" ").unwrap_or(r);
    let (day, r) = field(r);
    let (time, rest) = field(r);
    let num = |s: &[u8]| -> Option<u32> {
        (!s.is_empty() && s.len() <= 2 && s.iter().all(u8::is_ascii_digit))
            .then(|| s.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let day = num(day)?;
    let [h1, h2, b':', m1, m2, b':', s1, s2] = time else { return None };
    let (h, m, s) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?, num(&[*s1, *s2])?);
    let now = Utc.timestamp_nanos(now_ns);
    // The latest year that puts it at most a day after now: a message of
    // Dec 31 read on Jan 1 is last year's, one of Jan 1 read on Dec 31
    // (a sender ahead of us, or in a zone east of UTC) next year's.
    for year in [now.year() + 1, now.year(), now.year() - 1] {
        let t = NaiveDate::from_ymd_opt(year, month, day)?.and_hms_opt(h, m, s)?.and_utc();
        let ns = t.timestamp_nanos_opt()?;
        if ns <= now_ns.saturating_add(86_400_000_000_000) {
            return Some((ns, rest));
        }
    }
    None
}

/// How one TCP stream is cut into messages (RFC 6587): a frame that starts
/// with a digit is octet-counted (`LEN SP MSG`); any other ends at a
/// newline.
#[derive(Debug)]
pub enum Frame {
    /// A message: bytes `start..end` of the buffer; `consumed` bytes are done.
    Message { start: usize, end: usize, consumed: usize },
    /// Not a whole frame yet; the first `skipped` bytes (separators
    /// between frames) are done with.
    Incomplete { skipped: usize },
}

/// The next frame of `buf`. `max` bounds a frame's length: over it, the
/// stream cannot be followed (an error naming the length).
pub fn next_frame(buf: &[u8], max: usize) -> Result<Frame, String> {
    // Blank lines between frames are skipped.
    let skip = buf.iter().take_while(|c| matches!(c, b'\n' | b'\r' | 0)).count();
    let b = &buf[skip..];
    let incomplete = Ok(Frame::Incomplete { skipped: skip });
    match b.first() {
        None => incomplete,
        Some(b'1'..=b'9') => {
            let digits = b.iter().take(11).take_while(|c| c.is_ascii_digit()).count();
            if digits == b.len() {
                return if digits > 10 { Err("octet count longer than 10 digits".into()) } else { incomplete };
            }
            if b[digits] != b' ' {
                return Err(format!(
                    "a frame starting with a digit is octet-counted (RFC 6587), but {:?} is not followed by a space",
                    String::from_utf8_lossy(&b[..digits])
                ));
            }
            let len: u64 = b[..digits].iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'));
            if len > max as u64 {
                return Err(format!("octet-counted frame of {len} bytes is over the limit of {max}"));
            }
            let start = skip + digits + 1;
            let end = start + len as usize;
            if buf.len() < end { incomplete } else { Ok(Frame::Message { start, end, consumed: end }) }
        }
        Some(_) => match memchr::memchr(b'\n', b) {
            Some(i) if i > max => Err(format!("line of {i} bytes is over the limit of {max}")),
            Some(i) => Ok(Frame::Message { start: skip, end: skip + i, consumed: skip + i + 1 }),
            None if b.len() > max => Err(format!("line of more than {max} bytes without a newline")),
            None => incomplete,
        },
    }
}

/// Whether a stream starts like an HTTP request (`POST / HTTP/1.1`): a web
/// page can make a browser send one to any port, and its header lines
/// would be read as syslog messages.
pub fn looks_like_http(b: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] =
        [b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"DELETE ", b"PATCH ", b"CONNECT ", b"TRACE "];
    METHODS.iter().any(|m| b.starts_with(m))
}

/// A UDP datagram's message: some senders (syslog-ng's loggen) octet-count
/// inside UDP too (`LEN SP <PRI>...`); the count is dropped when it matches.
pub fn datagram_message(b: &[u8]) -> &[u8] {
    let digits = b.iter().take(10).take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 && b.get(digits) == Some(&b' ') && b.get(digits + 1) == Some(&b'<') {
        let len = b[..digits].iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        let msg = &b[digits + 1..];
        if trim_end(msg).len() <= len && len <= msg.len() {
            return msg;
        }
    }
    b
}

/// Whether a message holds anything but separators (an empty datagram is
/// no message).
pub fn is_blank(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'\n' | b'\r' | 0 | b' '))
}

impl IngestService {
    /// Writes syslog events into `database.table` as `who`; the answer
    /// names the events refused by storage.
    pub async fn syslog(
        &self,
        who: &Principal,
        database: &str,
        table: &str,
        events: Vec<LogEvent>,
    ) -> Result<WriteResponse, IngestError> {
        self.logs(who, WriteLogsRequest { database: database.to_string(), stream: table.to_string(), events }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_964_800_000_000_000; // 2025-12-05T20:00:00Z

    fn attr<'a>(e: &'a LogEvent, k: &str) -> Option<&'a str> {
        e.attributes.iter().find(|l| l.name == k).map(|l| l.value.as_str())
    }

    #[test]
    fn rfc5424_with_structured_data() {
        let m = br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Appli\"cation\]" eventID="1011"][examplePriority@32473 class="high"] An application event"#;
        let e = parse(m, "10.0.0.9", NOW).expect("parses");
        assert_eq!(e.timestamp, 1_065_910_455_003_000_000);
        assert_eq!(
            (e.host.as_str(), e.service.as_str(), e.level.as_str()),
            ("mymachine.example.com", "evntslog", "info")
        );
        assert_eq!(e.message, "An application event");
        assert_eq!(attr(&e, "facility"), Some("local4"));
        assert_eq!(attr(&e, "severity"), Some("notice"));
        assert_eq!(attr(&e, "msgid"), Some("ID47"));
        assert_eq!(attr(&e, "procid"), None);
        assert_eq!(attr(&e, "exampleSDID@32473.eventSource"), Some("Appli\"cation]"));
        assert_eq!(attr(&e, "examplePriority@32473.class"), Some("high"));
    }

    #[test]
    fn rfc5424_nil_fields_take_the_peer_and_now() {
        let e = parse(b"<11>1 - - - - - -  two spaces", "192.0.2.1", NOW).expect("parses");
        assert_eq!((e.timestamp, e.host.as_str(), e.service.as_str()), (NOW, "192.0.2.1", ""));
        assert_eq!((e.level.as_str(), e.message.as_str()), ("error", "two spaces"));
        let e = parse("<34>1 2025-12-05T21:00:00+01:00 h su 77 - - \u{feff}'su root' failed\n".as_bytes(), "", NOW)
            .expect("parses");
        assert_eq!(e.timestamp, NOW);
        assert_eq!((e.message.as_str(), attr(&e, "procid")), ("'su root' failed", Some("77")));
        assert_eq!((attr(&e, "facility"), e.level.as_str()), (Some("auth"), "fatal"));
    }

    #[test]
    fn rfc3164_forms() {
        let e = parse(b"<38>Dec  5 19:59:58 gw1 sshd[4242]: Accepted publickey for ops", "p", NOW).expect("parses");
        assert_eq!(e.timestamp, NOW - 2_000_000_000);
        assert_eq!((e.host.as_str(), e.service.as_str()), ("gw1", "sshd"));
        assert_eq!((e.message.as_str(), attr(&e, "procid")), ("Accepted publickey for ops", Some("4242")));
        // rsyslog's forward format: RFC 3339 time, then the BSD layout.
        let e = parse(b"<30>2025-12-05T20:00:00.5Z web01 nginx: up", "p", NOW).expect("parses");
        assert_eq!((e.timestamp, e.service.as_str(), e.message.as_str()), (NOW + 500_000_000, "nginx", "up"));
        // No timestamp, no host: a local sender's `tag: msg`.
        let e = parse(b"<13>cron: job done", "10.1.1.1", NOW).expect("parses");
        assert_eq!((e.host.as_str(), e.service.as_str(), e.message.as_str()), ("10.1.1.1", "cron", "job done"));
        // A first word that is no tag stays in the message; no PRI is user.notice.
        let e = parse(b"just some words", "p", NOW).expect("parses");
        assert_eq!((e.service.as_str(), e.message.as_str()), ("", "just some words"));
        assert_eq!((attr(&e, "facility"), attr(&e, "severity")), (Some("user"), Some("notice")));
        // Dec 31 read on Jan 1 is last year's.
        let jan1 = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z
        let e = parse(b"<13>Dec 31 23:59:59 h t: m", "p", jan1).expect("parses");
        assert_eq!(e.timestamp, jan1 - 1_000_000_000);
        // Jan 1 read an hour before the new year is next year's.
        let e = parse(b"<13>Jan  1 00:59:00 h t: m", "p", jan1 - 3_600_000_000_000).expect("parses");
        assert_eq!(e.timestamp, jan1 + 59 * 60 * 1_000_000_000);
    }

    #[test]
    fn malformed_messages_are_refused_with_the_reason() {
        for (m, why) in [
            (&b"<192>1 - - - - - -"[..], "over 191"),
            (b"<1x>hello", "not a number"),
            (b"<12345>hello", "no '>'"),
            (b"<13>1 - host app", "before STRUCTURED-DATA"),
            (b"<13>1 yesterday h a - - - m", "not RFC 3339"),
            (b"<13>1 - h a - - [id x=\"1 m", "not closed"),
            (b"<13>1 - h a - - [id x=1] m", "not quoted"),
            (b"<13>1 - h a - - [id x=\"1\"]m", "no space"),
        ] {
            let err = parse(m, "p", NOW).expect_err(&String::from_utf8_lossy(m));
            assert!(err.contains(why), "{}: {err}", String::from_utf8_lossy(m));
        }
        let many: String = (0..=MAX_SD_PARAMS).map(|i| format!(" p{i}=\"v\"")).collect();
        let err = parse(format!("<13>1 - h a - - [id{many}] m").as_bytes(), "p", NOW).expect_err("too many");
        assert!(err.contains("more than 128"), "{err}");
    }

    #[test]
    fn http_requests_blank_datagrams_and_counted_datagrams() {
        assert!(looks_like_http(b"POST / HTTP/1.1\r\nHost: x\r\n"));
        assert!(!looks_like_http(b"<13>POST / HTTP/1.1"));
        assert!(is_blank(b"\n\r\0 ") && !is_blank(b"<13>x"));
        assert_eq!(datagram_message(b"11 <13>1 - - -\n"), b"<13>1 - - -\n");
        assert_eq!(datagram_message(b"12 apples <13>"), b"12 apples <13>");
        assert_eq!(datagram_message(b"99 <13>short"), b"99 <13>short", "the count does not match");
    }

    #[test]
    fn octet_counted_and_newline_frames() {
        let buf = b"11 <13>1 - - -\n\n<13>hi there\n9 <13>x";
        let Ok(Frame::Message { start, end, consumed }) = next_frame(buf, 1024) else { panic!("first") };
        assert_eq!(&buf[start..end], b"<13>1 - - -");
        let rest = &buf[consumed..];
        let Ok(Frame::Message { start, end, consumed }) = next_frame(rest, 1024) else { panic!("second") };
        assert_eq!(&rest[start..end], b"<13>hi there");
        let rest = &rest[consumed..];
        assert!(matches!(next_frame(rest, 1024), Ok(Frame::Incomplete { skipped: 0 })), "5 of 9 bytes");
        assert!(matches!(next_frame(b"12", 1024), Ok(Frame::Incomplete { skipped: 0 })));
        assert!(matches!(next_frame(b"\n\r\0<13>no newline yet", 1024), Ok(Frame::Incomplete { skipped: 3 })));
        // Separators alone are consumed, however many (they held memory).
        assert!(matches!(next_frame(&[0u8; 5000], 1024), Ok(Frame::Incomplete { skipped: 5000 })));
        for (b, why) in [
            (&b"2000 <13>x"[..], "over the limit of 1024"),
            (b"99999999999", "longer than 10 digits"),
            (b"12x <13>", "not followed by a space"),
        ] {
            let err = next_frame(b, 1024).expect_err("refused");
            assert!(err.contains(why), "{err}");
        }
        let long = vec![b'a'; 2000];
        assert!(next_frame(&long, 1024).expect_err("no newline").contains("without a newline"));
    }
}
