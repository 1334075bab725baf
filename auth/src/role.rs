//! Roles: a set of permissions and the data they apply to (databases and
//! table-name patterns). Five are built in; more come from `[auth.roles.*]`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::perm::Permission;

/// The database and table of the audit log, readable with [`Permission::Audit`] only.
pub const AUDIT_DATABASE: &str = "system";
pub const AUDIT_TABLE: &str = "audit";
/// The system tables about alerts, closed to roles with an alert scope.
pub(crate) const ALERT_TABLES: [&str; 3] = ["alerts", "alert_history", "notifications"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub permissions: BTreeSet<Permission>,
    /// Databases whose tables the role reads and writes; empty: every one.
    pub databases: Vec<String>,
    /// Table-name patterns (`*` matches any run of characters) the role
    /// reads and writes; a pattern with a `.` is matched against
    /// `database.table`. Empty: every table.
    pub tables: Vec<String>,
    /// Rows the role reads of some tables: only those whose column holds
    /// one of the values (every filter of a table applies).
    pub rows: Vec<RowFilter>,
    /// The alerts the role sees and acts on (acknowledges, silences);
    /// `None`: every alert.
    pub alerts: Option<AlertScope>,
}

/// `[auth.roles.NAME.alerts]`: the alerts a role sees and acts on: those of
/// the rule groups `groups` matches (patterns; empty: any group) whose
/// labels hold one of the values listed for each label in `labels`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertScope {
    pub groups: Vec<String>,
    pub labels: BTreeMap<String, Vec<String>>,
}

impl AlertScope {
    /// Whether an alert of rule group `group` with `labels` is in scope.
    pub fn covers<'a>(&self, group: &str, mut label: impl FnMut(&str) -> Option<&'a str>) -> bool {
        (self.groups.is_empty() || self.groups.iter().any(|g| glob(g, group)))
            && self.labels.iter().all(|(name, values)| label(name).is_some_and(|v| values.iter().any(|x| x == v)))
    }
}

/// `[[auth.roles.NAME.rows]]`: of the tables `tables` matches, the role
/// reads only the rows whose `column` is one of `values`. It applies to
/// every read: SQL of any shape (joins, subqueries, CTEs), tails and
/// traces. A table that has no such column is refused, not shown whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowFilter {
    /// Table pattern, as in `tables` (default `*`: every table of the role).
    #[serde(default = "every_table")]
    pub tables: String,
    /// The column (a tag, such as `service`).
    pub column: String,
    /// The values a visible row has in it.
    pub values: Vec<String>,
}

fn every_table() -> String {
    "*".into()
}

/// `[auth.roles.NAME]` in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSpec {
    pub permissions: Vec<String>,
    pub databases: Vec<String>,
    pub tables: Vec<String>,
    pub rows: Vec<RowFilter>,
    pub alerts: Option<AlertScope>,
}

impl Role {
    fn builtin(name: &str, permissions: &[Permission]) -> Role {
        Role {
            name: name.to_string(),
            permissions: permissions.iter().copied().collect(),
            databases: Vec::new(),
            tables: Vec::new(),
            rows: Vec::new(),
            alerts: None,
        }
    }

    /// `admin`, `editor`, `viewer`, `writer`, `alerter`, `auditor`.
    pub fn builtins() -> Vec<Role> {
        use Permission::*;
        vec![
            Role::builtin("admin", &Permission::ALL),
            Role::builtin("editor", &[Query, Write, Tail, Trace, ReadAlerts, Rules, Silence, Ack, Metrics, PostAlerts]),
            Role::builtin("viewer", &[Query, Tail, Trace, ReadAlerts, Metrics]),
            Role::builtin("writer", &[Write]),
            // What Prometheus or vmalert needs to send alerts, and no more.
            Role::builtin("alerter", &[PostAlerts]),
            Role {
                name: "auditor".into(),
                permissions: [Query, Audit].into_iter().collect(),
                databases: vec![AUDIT_DATABASE.into()],
                tables: vec![format!("{AUDIT_DATABASE}.{AUDIT_TABLE}")],
                rows: Vec::new(),
                alerts: None,
            },
        ]
    }

    pub fn from_spec(name: &str, spec: &RoleSpec) -> Result<Role, String> {
        let mut permissions = BTreeSet::new();
        for p in &spec.permissions {
            let p = Permission::parse(p).ok_or_else(|| {
                let known: Vec<&str> = Permission::ALL.iter().map(|p| p.name()).collect();
                format!("role {name:?}: unknown permission {p:?} (known: {})", known.join(", "))
            })?;
            permissions.insert(p);
        }
        for t in &spec.tables {
            if t.is_empty() || t.matches('.').count() > 1 {
                return Err(format!("role {name:?}: table pattern {t:?} must be TABLE or DATABASE.TABLE"));
            }
        }
        for f in &spec.rows {
            if f.tables.is_empty() || f.tables.matches('.').count() > 1 {
                return Err(format!(
                    "role {name:?}: rows table pattern {:?} must be TABLE or DATABASE.TABLE",
                    f.tables
                ));
            }
            if f.column.is_empty() {
                return Err(format!("role {name:?}: a rows filter needs a column"));
            }
            if f.values.is_empty() {
                return Err(format!(
                    "role {name:?}: the rows filter on {:?} has no values (a role that reads no rows of a table \
                     should not cover it)",
                    f.column
                ));
            }
        }
        Ok(Role {
            name: name.to_string(),
            permissions,
            databases: spec.databases.clone(),
            tables: spec.tables.clone(),
            rows: spec.rows.clone(),
            alerts: spec.alerts.clone(),
        })
    }

    /// The row filters that apply to `database.table`.
    pub fn row_filters(&self, database: &str, table: &str) -> Vec<&RowFilter> {
        self.rows.iter().filter(|f| table_matches(&f.tables, database, table)).collect()
    }

    pub fn has(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }

    /// Whether the role's data scope covers `database.table` (permissions
    /// aside). The audit table is covered only for roles with
    /// [`Permission::Audit`], whatever their scope says.
    pub fn covers(&self, database: &str, table: &str) -> bool {
        if database == AUDIT_DATABASE && table == AUDIT_TABLE && !self.has(Permission::Audit) {
            return false;
        }
        // The alert tables show every alert: a role limited to some alerts
        // does not read them with SQL (it reads its alerts over the API).
        if self.alerts.is_some() && database == AUDIT_DATABASE && ALERT_TABLES.contains(&table) {
            return false;
        }
        let db_ok = self.databases.is_empty() || self.databases.iter().any(|d| d == database);
        let table_ok = self.tables.is_empty() || self.tables.iter().any(|p| table_matches(p, database, table));
        db_ok && table_ok
    }
}

/// Whether a table pattern matches `database.table`: a pattern with a `.`
/// is matched against both; one without only against the table, and never
/// in `system` or `information_schema`, which describe every table.
fn table_matches(pattern: &str, database: &str, table: &str) -> bool {
    let catalog = database == AUDIT_DATABASE || database == "information_schema";
    match pattern.split_once('.') {
        Some((pd, pt)) => glob(pd, database) && glob(pt, table),
        None => !catalog && glob(pattern, table),
    }
}

/// Every role by name: the built-ins, then the configured ones (which may
/// not reuse a built-in's name).
pub fn roles_from_config(specs: &BTreeMap<String, RoleSpec>) -> Result<BTreeMap<String, Arc<Role>>, String> {
    let mut roles: BTreeMap<String, Arc<Role>> =
        Role::builtins().into_iter().map(|r| (r.name.clone(), Arc::new(r))).collect();
    for (name, spec) in specs {
        if roles.contains_key(name) {
            return Err(format!("role {name:?} is built in and cannot be redefined; choose another name"));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(format!("role name {name:?} must be letters, digits, '_' or '-'"));
        }
        roles.insert(name.clone(), Arc::new(Role::from_spec(name, spec)?));
    }
    Ok(roles)
}

/// `*` matches any run of characters (none included); everything else
/// matches itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if name.len() < first.len() + last.len() || !name.starts_with(first) || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob("billing_*", "billing_calls"));
        assert!(glob("billing_*", "billing_"));
        assert!(!glob("billing_*", "trading_calls"));
        assert!(glob("*_calls", "billing_calls"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxc"));
        assert!(!glob("ab*ba", "aba"), "prefix and suffix may not overlap");
        assert!(glob("*", "anything"));
        assert!(glob("cpu", "cpu"));
        assert!(!glob("cpu", "cpu2"));
    }

    #[test]
    fn scopes_limit_databases_and_tables() {
        let spec = RoleSpec {
            permissions: vec!["query".into()],
            databases: vec!["default".into()],
            tables: vec!["billing_*".into(), "logs".into()],
            rows: vec![],
            alerts: None,
        };
        let r = Role::from_spec("billing", &spec).expect("valid");
        assert!(r.covers("default", "billing_calls"));
        assert!(r.covers("default", "logs"));
        assert!(!r.covers("default", "trading"));
        assert!(!r.covers("other", "logs"));
        let dotted =
            Role::from_spec("x", &RoleSpec { tables: vec!["metrics.*".into()], ..RoleSpec::default() }).expect("valid");
        assert!(dotted.covers("metrics", "cpu"));
        let t_star =
            Role::from_spec("t", &RoleSpec { tables: vec!["t*".into()], ..RoleSpec::default() }).expect("valid");
        assert!(t_star.covers("public", "trading"));
        assert!(!t_star.covers("information_schema", "tables"), "a bare pattern stays out of the catalog");
        assert!(!t_star.covers("system", "alerts") && !r.covers("information_schema", "columns"));
        assert!(!dotted.covers("default", "cpu"));
    }

    #[test]
    fn only_auditors_and_admins_cover_the_audit_log() {
        let roles = roles_from_config(&BTreeMap::new()).expect("builtins");
        assert!(roles["admin"].covers(AUDIT_DATABASE, AUDIT_TABLE));
        assert!(roles["auditor"].covers(AUDIT_DATABASE, AUDIT_TABLE));
        assert!(!roles["auditor"].covers("default", "cpu"));
        assert!(!roles["viewer"].covers(AUDIT_DATABASE, AUDIT_TABLE));
        assert!(roles["viewer"].covers("system", "alerts"));
    }

    #[test]
    fn row_filters_apply_to_the_tables_their_pattern_matches() {
        let spec: RoleSpec = toml::from_str(
            r#"
            permissions = ["query", "tail"]
            tables = ["logs", "billing_*"]
            [[rows]]
            tables = "logs"
            column = "service"
            values = ["billing", "invoicing"]
            [[rows]]
            column = "region"
            values = ["eu"]
            "#,
        )
        .expect("toml");
        let r = Role::from_spec("billing_dev", &spec).expect("valid");
        let columns = |t: &str| r.row_filters("public", t).iter().map(|f| f.column.clone()).collect::<Vec<_>>();
        assert_eq!(columns("logs"), ["service", "region"]);
        assert_eq!(columns("billing_calls"), ["region"]);
        assert!(r.row_filters("system", "alerts").is_empty(), "bare patterns stay out of the catalog");
        let empty =
            RoleSpec { rows: vec![RowFilter { tables: "*".into(), column: "s".into(), values: vec![] }], ..spec };
        assert!(Role::from_spec("x", &empty).unwrap_err().contains("no values"));
    }

    #[test]
    fn alert_scopes_match_groups_and_labels() {
        let spec: RoleSpec = toml::from_str(
            r#"
            permissions = ["read_alerts", "ack", "silence"]
            [alerts]
            groups = ["billing*"]
            labels = { team = ["billing", "payments"] }
            "#,
        )
        .expect("toml");
        let scope = Role::from_spec("dev", &spec).expect("valid").alerts.expect("scope");
        let labels = |team: &'static str| move |n: &str| (n == "team").then_some(team);
        assert!(scope.covers("billing-api", labels("billing")));
        assert!(!scope.covers("trading", labels("billing")), "another group");
        assert!(!scope.covers("billing-api", labels("trading")), "another team");
        assert!(!scope.covers("billing-api", |_| None), "no team label");
        assert!(AlertScope::default().covers("anything", |_| None));
        let dev = Role::from_spec("dev", &spec).expect("valid");
        assert!(!dev.covers("system", "alerts") && !dev.covers("system", "alert_history"), "every alert is there");
        assert!(dev.covers("public", "cpu"));
    }

    #[test]
    fn configured_roles_are_checked() {
        let mut specs = BTreeMap::new();
        specs.insert("admin".to_string(), RoleSpec::default());
        assert!(roles_from_config(&specs).unwrap_err().contains("built in"));
        let mut specs = BTreeMap::new();
        specs.insert("ops".to_string(), RoleSpec { permissions: vec!["sudo".into()], ..RoleSpec::default() });
        assert!(roles_from_config(&specs).unwrap_err().contains("unknown permission \"sudo\""));
    }
}
