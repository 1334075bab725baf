//! Rule templates: one rule written once with `${parameters}`, instantiated
//! per group of devices with their values.
//!
//! ```yaml
//! templates:
//!   - name: disk_usage
//!     params: [device_type, warning, critical]
//!     rule:
//!       sql: SELECT host, last_value(used ORDER BY ts) AS value FROM disk WHERE type = '${device_type}' GROUP BY host
//!       thresholds: { warning: "> ${warning}", critical: "> ${critical}" }
//!       annotations: { summary: "disk {{ value }}% on {{ host }}" }
//! groups:
//!   - name: storage
//!     rules:
//!       - { alert: DiskUsageSsd, template: disk_usage, params: { device_type: ssd, warning: 80, critical: 90 } }
//!       - { alert: DiskUsageHdd, template: disk_usage, params: { device_type: hdd, warning: 85, critical: 95 } }
//! ```
//!
//! `${name}` is a parameter (replaced when the file loads); `{{ name }}` in
//! annotations stays a label of the alert (rendered when it fires).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::config::RuleFile;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    pub name: String,
    /// The parameters every use must give.
    #[serde(default)]
    pub params: Vec<String>,
    /// A rule without `alert` (each use names its own).
    pub rule: Value,
}

/// The templates of all files, by name.
pub type Templates = HashMap<String, TemplateFile>;

/// The rule a use of a template makes: the template's rule with the
/// parameters replaced, its `alert` the use's, and the use's `labels` and
/// `annotations` added over the template's.
pub fn instantiate(use_: &RuleFile, templates: &Templates) -> Result<RuleFile, String> {
    let Some(name) = &use_.template else { return Ok(use_.clone()) };
    let t = templates.get(name).ok_or_else(|| format!("unknown template {name:?}"))?;
    if use_.sql.is_some() || use_.on_ingest.is_some() || !use_.thresholds.is_empty() {
        return Err(format!("a rule made from template {name:?} takes its sql and thresholds from it; give `params`"));
    }
    let params: BTreeMap<String, String> = use_
        .params
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => return Err(format!("param {k:?} must be a string, number or boolean, not {other:?}")),
            };
            Ok((k.clone(), text))
        })
        .collect::<Result<_, String>>()?;
    if let Some(missing) = t.params.iter().find(|p| !params.contains_key(*p)) {
        return Err(format!("template {name:?} needs param {missing:?}"));
    }
    if let Some(extra) = params.keys().find(|p| !t.params.contains(p)) {
        return Err(format!("template {name:?} has no param {extra:?} (it takes {})", t.params.join(", ")));
    }
    let mut rule = t.rule.clone();
    substitute(&mut rule, &params);
    if let Value::Mapping(m) = &mut rule {
        m.insert(Value::String("alert".into()), Value::String(use_.alert.clone()));
    } else {
        return Err(format!("template {name:?}: `rule` must be a mapping"));
    }
    let mut made: RuleFile =
        serde_yaml_ng::from_value(rule).map_err(|e| format!("template {name:?} with these params: {e}"))?;
    if made.template.is_some() {
        return Err(format!("template {name:?}: a template's rule cannot use another template"));
    }
    made.labels.extend(use_.labels.clone());
    made.annotations.extend(use_.annotations.clone());
    if use_.for_.is_some() {
        made.for_ = use_.for_;
    }
    if !use_.depends_on.is_empty() {
        made.depends_on.clone_from(&use_.depends_on);
    }
    if !use_.active_during.is_empty() {
        made.active_during.clone_from(&use_.active_during);
    }
    Ok(made)
}

/// Replaces `${name}` in every string of `v`.
fn substitute(v: &mut Value, params: &BTreeMap<String, String>) {
    match v {
        Value::String(s) => {
            for (k, val) in params {
                *s = s.replace(&format!("${{{k}}}"), val);
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|i| substitute(i, params)),
        Value::Mapping(m) => m.iter_mut().for_each(|(_, i)| substitute(i, params)),
        Value::Tagged(t) => substitute(&mut t.value, params),
        _ => {}
    }
}
