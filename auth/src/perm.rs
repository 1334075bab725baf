//! What a caller may do: one permission per function of the product.

use std::fmt;

/// A function of the product a role may be granted. Every entry point
/// (HTTP route, gRPC method) declares the one it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Run SQL reads (SELECT, EXPLAIN, SHOW) on the tables of the role's scope.
    Query,
    /// Write rows: every ingest protocol and SQL `INSERT`.
    Write,
    /// Follow the log stream live.
    Tail,
    /// Follow one business flow by trace id.
    Trace,
    /// See alerts, silences and rule health.
    ReadAlerts,
    /// Reload rules.
    Rules,
    /// Create and expire silences.
    Silence,
    /// Acknowledge, unacknowledge and resolve alerts.
    Ack,
    /// Persist, compact and other administration of the server.
    Admin,
    /// Create, list and revoke tokens and users.
    Users,
    /// Read the audit log.
    Audit,
    /// Scrape the server's own metrics.
    Metrics,
    /// Post alerts through Alertmanager's API (Prometheus, vmalert): they
    /// page people, so collectors' `write` tokens may not.
    PostAlerts,
}

impl Permission {
    pub const ALL: [Permission; 13] = [
        Permission::Query,
        Permission::Write,
        Permission::Tail,
        Permission::Trace,
        Permission::ReadAlerts,
        Permission::Rules,
        Permission::Silence,
        Permission::Ack,
        Permission::Admin,
        Permission::Users,
        Permission::Audit,
        Permission::Metrics,
        Permission::PostAlerts,
    ];

    /// The name used in configuration files and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Query => "query",
            Permission::Write => "write",
            Permission::Tail => "tail",
            Permission::Trace => "trace",
            Permission::ReadAlerts => "read_alerts",
            Permission::Rules => "rules",
            Permission::Silence => "silence",
            Permission::Ack => "ack",
            Permission::Admin => "admin",
            Permission::Users => "users",
            Permission::Audit => "audit",
            Permission::Metrics => "metrics",
            Permission::PostAlerts => "post_alerts",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == s)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an entry point requires: nothing (health, the login itself) or one
/// permission. Declared next to every route and gRPC method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, even unauthenticated (`GET /health`, the Flight SQL handshake).
    Public,
    /// Callers whose role grants this permission.
    Requires(Permission),
    /// Any authenticated caller; the handler checks the rest (a logout, a
    /// user changing their own password).
    Authenticated,
    /// Any authenticated caller: the handler runs SQL statements and checks
    /// every table each one touches (reading needs `query`, `INSERT`
    /// needs `write` on its table).
    Statements,
    /// Anyone holding a link the server signed (the ack and silence links
    /// of notifications): the handler checks the signature, and audits.
    SignedLink,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Public => f.write_str("public"),
            Access::Authenticated => f.write_str("authenticated"),
            Access::Requires(p) => p.fmt(f),
            Access::Statements => f.write_str("query or write, per table"),
            Access::SignedLink => f.write_str("a signed link"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_parses_back_from_its_name() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.name()), Some(p));
        }
        assert_eq!(Permission::parse("root"), None);
    }
}
