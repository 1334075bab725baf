//! Label matchers: routes, inhibition rules, silences and maintenance
//! windows all select alerts by label equality or regex.

use std::collections::BTreeMap;

use regex::Regex;

/// A set of labels; ordered, so that fingerprints are stable.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub enum LabelMatcher {
    Eq { name: String, value: String },
    NotEq { name: String, value: String },
    Re { name: String, re: Regex },
    NotRe { name: String, re: Regex },
}

impl LabelMatcher {
    /// A matcher as the silences API spells it (Alertmanager's fields).
    pub fn new(name: &str, value: &str, is_regex: bool, is_equal: bool) -> Result<LabelMatcher, String> {
        if name.is_empty() {
            return Err("a matcher needs a label name".into());
        }
        Ok(match (is_regex, is_equal) {
            (false, true) => LabelMatcher::Eq { name: name.into(), value: value.into() },
            (false, false) => LabelMatcher::NotEq { name: name.into(), value: value.into() },
            (true, eq) => match LabelMatcher::regex(name, value)? {
                LabelMatcher::Re { name, re } if !eq => LabelMatcher::NotRe { name, re },
                m => m,
            },
        })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let get = |n: &str| labels.get(n).map(String::as_str).unwrap_or("");
        match self {
            LabelMatcher::Eq { name, value } => get(name) == value,
            LabelMatcher::NotEq { name, value } => get(name) != value,
            LabelMatcher::Re { name, re } => re.is_match(get(name)),
            LabelMatcher::NotRe { name, re } => !re.is_match(get(name)),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            LabelMatcher::Eq { name, .. }
            | LabelMatcher::NotEq { name, .. }
            | LabelMatcher::Re { name, .. }
            | LabelMatcher::NotRe { name, .. } => name,
        }
    }

    /// The matched value or pattern, and the (is_regex, is_equal) pair.
    pub fn parts(&self) -> (&str, bool, bool) {
        match self {
            LabelMatcher::Eq { value, .. } => (value, false, true),
            LabelMatcher::NotEq { value, .. } => (value, false, false),
            LabelMatcher::Re { re, .. } => (strip_anchors(re.as_str()), true, true),
            LabelMatcher::NotRe { re, .. } => (strip_anchors(re.as_str()), true, false),
        }
    }
}

fn strip_anchors(s: &str) -> &str {
    s.strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(s)
}

/// All of them must match (an empty set matches everything).
#[derive(Debug, Clone, Default)]
pub struct Matchers(pub Vec<LabelMatcher>);

impl Matchers {
    pub fn from_maps(eq: &BTreeMap<String, String>, re: &BTreeMap<String, String>) -> Result<Matchers, String> {
        let mut v: Vec<LabelMatcher> =
            eq.iter().map(|(n, val)| LabelMatcher::Eq { name: n.clone(), value: val.clone() }).collect();
        for (n, pattern) in re {
            v.push(LabelMatcher::regex(n, pattern)?);
        }
        Ok(Matchers(v))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|m| m.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A stable 64-bit fingerprint of a label set (FNV-1a over the sorted
/// pairs), as 16 hex digits: the alert instance's `id`.
pub fn fingerprint(labels: &Labels) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn regex_matchers_are_anchored() {
        let m = LabelMatcher::new("host", "web-.*", true, true).expect("valid");
        assert!(m.matches(&labels(&[("host", "web-1")])));
        assert!(!m.matches(&labels(&[("host", "db-web-1")])));
        let m = LabelMatcher::new("host", "web-.*", true, false).expect("valid");
        assert!(m.matches(&labels(&[("host", "db-1")])));
        assert_eq!(m.parts(), ("web-.*", true, false));
    }

    #[test]
    fn missing_label_matches_empty_value() {
        let m = LabelMatcher::new("team", "", false, true).expect("valid");
        assert!(m.matches(&labels(&[("host", "a")])));
    }

    #[test]
    fn fingerprints_are_stable_and_distinguish_label_boundaries() {
        let a = fingerprint(&labels(&[("a", "bc")]));
        let b = fingerprint(&labels(&[("ab", "c")]));
        assert_ne!(a, b);
        assert_eq!(a, fingerprint(&labels(&[("a", "bc")])));
        assert_eq!(a.len(), 16);
    }
}
