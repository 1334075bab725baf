//! Links in notifications that act on one alert without a login: open the
//! link on a phone, confirm, and the alert is acknowledged (or silenced for
//! an hour). Each link is single-purpose: an HMAC-SHA-256, under a key kept
//! in the alerting state directory, over the alert id, the incident (when
//! the firing it was sent for began: a link does nothing to a later
//! firing of the same alert), the action, the receiver the notification
//! went to (who acted, for the history and the audit log) and the expiry.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tocsin_auth::Signer;

/// What a link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    Ack,
    /// Silences the alert (its identity labels) for [`SILENCE_FOR`].
    Silence,
}

/// How long a silence made from a link lasts.
pub const SILENCE_FOR: Duration = Duration::from_secs(3600);

/// How long a link works after its notification was made, unless
/// configured.
pub const DEFAULT_LINK_TTL: Duration = Duration::from_secs(24 * 3600);

impl LinkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAction::Ack => "ack",
            LinkAction::Silence => "silence",
        }
    }

    pub fn parse(s: &str) -> Option<LinkAction> {
        match s {
            "ack" => Some(LinkAction::Ack),
            "silence" => Some(LinkAction::Silence),
            _ => None,
        }
    }
}

/// One link's fields, as they come back in its query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub alert: String,
    /// When the firing the link was sent for began (ms).
    pub incident: i64,
    /// The severity the alert had in that notification (empty for none).
    pub severity: String,
    pub action: LinkAction,
    /// The receiver the notification with the link was sent to.
    pub receiver: String,
    /// Unix seconds.
    pub expires: i64,
}

/// Why a link was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("unknown action {0:?} (a link acknowledges or silences)")]
    Action(String),
    #[error("this link is not valid for alert {alert}: it was altered, or made for another alert, action or server")]
    Signature { alert: String },
    #[error("this link expired at {at} (links work for {ttl} after their notification); use the API or CLI")]
    Expired { at: String, ttl: String },
    #[error(
        "this link was for the firing of alert {alert} that began at {began}; that firing is over (the alert \
         resolved, and may have fired again since: use the link of its newest notification)"
    )]
    Stale { alert: String, began: String },
    #[error(
        "this link was sent when alert {alert} was {was}; it is {now} now, and a page of that is on its way: use \
         the link of the newest notification"
    )]
    Severity { alert: String, was: String, now: String },
}

/// What a link is made for: one alert, in the firing that began at
/// `incident` (ms), at `severity` (empty for none).
#[derive(Debug, Clone, Copy)]
pub struct LinkTarget<'a> {
    pub alert: &'a str,
    pub incident: i64,
    pub severity: &'a str,
}

/// A link's fields as presented (its query string), to check.
#[derive(Debug, Clone, Copy)]
pub struct Presented<'a> {
    pub alert: &'a str,
    pub severity: &'a str,
    pub action: &'a str,
    pub receiver: &'a str,
    pub incident: i64,
    pub expires: i64,
    pub sig: &'a str,
}

/// Makes and checks links.
pub struct Links {
    signer: Signer,
    base_url: String,
    ttl: Duration,
}

impl Links {
    /// The key in `state_dir/link-key` (made on first use, mode 0600), so
    /// that links outlive a restart.
    pub fn open(state_dir: &Path, base_url: &str, ttl: Duration) -> Result<Links, std::io::Error> {
        let path = key_path(state_dir);
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => parse_key(text.trim()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is not 64 hex digits; delete it to make a new key (old links stop working)",
                        path.display()
                    ),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = tocsin_auth::mac::random_key().map_err(std::io::Error::other)?;
                let tmp = path.with_extension("tmp");
                let mut f = open_private(&tmp)?;
                f.write_all(hex(&key).as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                key
            }
            Err(e) => return Err(e),
        };
        Ok(Links { signer: Signer::with_key(key), base_url: base_url.trim_end_matches('/').to_string(), ttl })
    }

    /// The URL of `action` on the firing of `alert` that began at
    /// `incident` (ms), for `receiver`, made at `now_ms`.
    pub fn url(&self, to: &LinkTarget<'_>, action: LinkAction, receiver: &str, now_ms: i64) -> String {
        let expires = now_ms / 1000 + self.ttl.as_secs() as i64;
        let link = Link {
            alert: to.alert.to_string(),
            incident: to.incident,
            severity: to.severity.to_string(),
            action,
            receiver: receiver.to_string(),
            expires,
        };
        format!(
            "{}/api/v1/alerts/{}/link?action={}&incident={}&severity={}&receiver={}&expires={expires}&sig={}",
            self.base_url,
            query_escape(to.alert),
            action.as_str(),
            to.incident,
            query_escape(to.severity),
            query_escape(receiver),
            hex(&self.tag(&link))
        )
    }

    /// The link, if its signature is this server's for its fields and it
    /// has not expired at `now_ms`. (Whether its incident is the alert's
    /// current one is the engine's to check.)
    pub fn check(&self, p: &Presented<'_>, now_ms: i64) -> Result<Link, LinkError> {
        let action =
            LinkAction::parse(p.action).ok_or_else(|| LinkError::Action(tocsin_auth::clip(p.action).into()))?;
        let link = Link {
            alert: p.alert.to_string(),
            incident: p.incident,
            severity: p.severity.to_string(),
            action,
            receiver: p.receiver.to_string(),
            expires: p.expires,
        };
        let good = parse_key(p.sig).is_some_and(|sig| tocsin_auth::mac::same_bytes(&sig, &self.tag(&link)));
        if !good {
            return Err(LinkError::Signature { alert: tocsin_auth::clip(p.alert).into() });
        }
        let expires = p.expires;
        if now_ms / 1000 >= expires {
            return Err(LinkError::Expired {
                at: crate::dispatch::rfc3339(expires.saturating_mul(1000)),
                ttl: crate::duration::format(self.ttl),
            });
        }
        Ok(link)
    }

    fn tag(&self, l: &Link) -> [u8; 32] {
        // Each field ends with a NUL (none can hold one: ids are hex, the
        // receiver a configured name), so no two links share a message.
        self.signer.tag(&[
            b"tocsin-link-v3\0",
            l.alert.as_bytes(),
            b"\0",
            l.incident.to_string().as_bytes(),
            b"\0",
            l.severity.as_bytes(),
            b"\0",
            l.action.as_str().as_bytes(),
            b"\0",
            l.receiver.as_bytes(),
            b"\0",
            l.expires.to_string().as_bytes(),
        ])
    }
}

fn key_path(state_dir: &Path) -> PathBuf {
    state_dir.join("link-key")
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(path)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_key(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Percent-encodes what is not unreserved (RFC 3986).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const INCIDENT: i64 = NOW - 300_000;

    /// The query string of a URL, decoded into (name, value) pairs.
    fn fields(url: &str) -> std::collections::HashMap<String, String> {
        let query = url.split_once('?').expect("query").1;
        query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("k=v");
                let v = v.replace("%20", " ");
                (k.to_string(), v)
            })
            .collect()
    }

    #[test]
    fn a_link_works_for_its_alert_action_and_time_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let links = Links::open(dir.path(), "https://tocsin.example/", DEFAULT_LINK_TTL).expect("open");
        let to = LinkTarget { alert: "e256b8474c777079", incident: INCIDENT, severity: "critical" };
        let url = links.url(&to, LinkAction::Ack, "oncall", NOW);
        assert!(url.starts_with("https://tocsin.example/api/v1/alerts/e256b8474c777079/link?action=ack&"), "{url}");
        let f = fields(&url);
        let expires: i64 = f["expires"].parse().expect("expires");
        assert_eq!(f["incident"], INCIDENT.to_string());
        let check = |alert: &str, action: &str, receiver: &str, expires: i64, sig: &str, now: i64| {
            links.check(
                &Presented { alert, severity: "critical", action, receiver, incident: INCIDENT, expires, sig },
                now,
            )
        };
        let ok = check("e256b8474c777079", "ack", "oncall", expires, &f["sig"], NOW + 1000).expect("valid");
        assert_eq!((ok.action, ok.receiver.as_str()), (LinkAction::Ack, "oncall"));
        // Another alert, action, receiver or expiry: the signature fails.
        for (alert, action, receiver, exp) in [
            ("e256b8474c777078", "ack", "oncall", expires),
            ("e256b8474c777079", "silence", "oncall", expires),
            ("e256b8474c777079", "ack", "backup", expires),
            ("e256b8474c777079", "ack", "oncall", expires + 86_400),
        ] {
            let err = check(alert, action, receiver, exp, &f["sig"], NOW).expect_err("not this link");
            assert!(matches!(err, LinkError::Signature { .. }), "{err}");
        }
        // Another incident of the same alert: the signature fails too.
        let p = Presented {
            alert: "e256b8474c777079",
            severity: "critical",
            action: "ack",
            receiver: "oncall",
            incident: INCIDENT + 60_000,
            expires,
            sig: &f["sig"],
        };
        assert!(matches!(links.check(&p, NOW), Err(LinkError::Signature { .. })));
        // Or another severity.
        let warning = Presented { incident: INCIDENT, severity: "warning", ..p };
        assert!(matches!(links.check(&warning, NOW), Err(LinkError::Signature { .. })));
        let mut bad = f["sig"].clone();
        bad.replace_range(0..1, if bad.starts_with('0') { "1" } else { "0" });
        assert!(matches!(
            check("e256b8474c777079", "ack", "oncall", expires, &bad, NOW),
            Err(LinkError::Signature { .. })
        ));
        assert!(matches!(
            check("e256b8474c777079", "ack", "oncall", expires, "zz", NOW),
            Err(LinkError::Signature { .. })
        ));
        assert!(matches!(
            check("e256b8474c777079", "delete", "oncall", expires, &f["sig"], NOW),
            Err(LinkError::Action(_))
        ));
        // Expired a day later.
        let err =
            check("e256b8474c777079", "ack", "oncall", expires, &f["sig"], NOW + 24 * 3_600_000).expect_err("late");
        assert!(err.to_string().contains("expired at 2027-01-16T08:00:00.000Z"), "{err}");
        assert!(err.to_string().contains("links work for 1d after"), "{err}");
        // A TTL under an hour is said as it is (it said "0 h").
        let short = Links::open(dir.path(), "https://tocsin.example", Duration::from_secs(30 * 60)).expect("open");
        let q = fields(&short.url(&to, LinkAction::Ack, "oncall", NOW));
        let p = Presented {
            alert: "e256b8474c777079",
            severity: "critical",
            action: "ack",
            receiver: "oncall",
            incident: INCIDENT,
            expires: q["expires"].parse().expect("expires"),
            sig: &q["sig"],
        };
        let err = short.check(&p, NOW + 3_600_000).expect_err("late");
        assert!(err.to_string().contains("links work for 30m after"), "{err}");
        // The key outlives a restart, and is the owner's only.
        let again = Links::open(dir.path(), "https://tocsin.example", DEFAULT_LINK_TTL).expect("reopen");
        let p = Presented { incident: INCIDENT, ..p };
        assert!(again.check(&p, NOW).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("link-key")).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = tempfile::tempdir().expect("tempdir");
        let elsewhere = Links::open(other.path(), "https://tocsin.example", DEFAULT_LINK_TTL).expect("open");
        assert!(elsewhere.check(&p, NOW).is_err());
    }

    #[test]
    fn a_damaged_key_file_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("link-key"), "not a key").expect("write");
        let err = Links::open(dir.path(), "http://x", DEFAULT_LINK_TTL).err().expect("refused");
        assert!(err.to_string().contains("link-key is not 64 hex digits"), "{err}");
    }
}
