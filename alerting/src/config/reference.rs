//! docs/alerting-reference.md lists every key of every rules-file object:
//! this test asks each configuration type which keys it accepts (serde
//! names them when it refuses an unknown one) and checks that the table
//! under the type's heading lists exactly those.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;

use super::*;

/// The keys `T` accepts, from the error it gives for an unknown one.
fn accepted<T: DeserializeOwned>() -> BTreeSet<String> {
    let err = match serde_yaml_ng::from_str::<T>("zz_not_a_key: 1") {
        Ok(_) => panic!("{} accepted an unknown key", std::any::type_name::<T>()),
        Err(e) => e.to_string(),
    };
    let list = err
        .split_once("expected one of ")
        .or_else(|| err.split_once("expected "))
        .map(|(_, l)| l)
        .unwrap_or_else(|| panic!("{}: no key list in {err:?}", std::any::type_name::<T>()));
    list.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// Type name → the keys its table lists, from the `### ... (`Type`)`
/// headings and the first column of the table under each.
fn documented(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("### ") {
            current = h.rsplit_once("(`").and_then(|(_, t)| t.strip_suffix("`)")).map(str::to_string);
            if let Some(t) = &current {
                assert!(out.insert(t.clone(), BTreeSet::new()).is_none(), "{t} has two headings");
            }
            continue;
        }
        let Some(t) = &current else { continue };
        let Some(row) = line.strip_prefix("| `") else { continue };
        let key = row.split('`').next().unwrap_or_default();
        out.get_mut(t).map(|keys| keys.insert(key.to_string()));
    }
    out
}

#[test]
fn the_yaml_reference_lists_exactly_the_keys_each_type_accepts() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/alerting-reference.md");
    let text = std::fs::read_to_string(path).expect("docs/alerting-reference.md");
    let docs = documented(&text);
    let types: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
        ("RulesFile", accepted::<RulesFile>()),
        ("GroupFile", accepted::<GroupFile>()),
        ("RuleFile", accepted::<RuleFile>()),
        ("OnIngestFile", accepted::<OnIngestFile>()),
        ("ConditionFile", accepted::<ConditionFile>()),
        ("FlapFile", accepted::<FlapFile>()),
        ("DependsOnFile", accepted::<DependsOnFile>()),
        ("RouteFile", accepted::<RouteFile>()),
        ("InhibitFile", accepted::<InhibitFile>()),
        ("EscalationFile", accepted::<EscalationFile>()),
        ("StepFile", accepted::<StepFile>()),
        ("ReceiverFile", accepted::<ReceiverFile>()),
        ("RateLimitFile", accepted::<RateLimitFile>()),
        ("WebhookFile", accepted::<WebhookFile>()),
        ("RobotFile", accepted::<RobotFile>()),
        ("EmailFile", accepted::<EmailFile>()),
        ("MaintenanceFile", accepted::<MaintenanceFile>()),
        ("TimeIntervalFile", accepted::<crate::calendar::TimeIntervalFile>()),
        ("IntervalFile", accepted::<crate::calendar::IntervalFile>()),
        ("TimeRangeFile", accepted::<crate::calendar::TimeRangeFile>()),
        ("Person", accepted::<crate::oncall::Person>()),
        ("ScheduleFile", accepted::<crate::oncall::ScheduleFile>()),
        ("LayerFile", accepted::<crate::oncall::LayerFile>()),
        ("OverrideFile", accepted::<crate::oncall::OverrideFile>()),
        ("TemplateFile", accepted::<crate::templates::TemplateFile>()),
    ]);
    let headings: BTreeSet<&str> = docs.keys().map(String::as_str).collect();
    let known: BTreeSet<&str> = types.keys().copied().collect();
    assert_eq!(headings, known, "headings of docs/alerting-reference.md against the types this test knows");
    for (t, keys) in &types {
        assert_eq!(&docs[*t], keys, "docs/alerting-reference.md, the table of {t}: listed keys against accepted ones");
    }
}

#[test]
fn a_misspelt_key_is_refused_with_the_keys_it_could_be() {
    let err = serde_yaml_ng::from_str::<RouteFile>("group_intreval: 5m").expect_err("refused").to_string();
    assert!(err.contains("group_intreval") && err.contains("group_interval"), "{err}");
}
