//! Who may do what: authentication (API tokens for programs; users with
//! argon2id passwords and session tokens for people), roles with
//! permissions and data scopes, and the one policy check every interface
//! goes through.
//!
//! Every entry point (HTTP route, gRPC method) declares the [`Access`] it
//! needs; the server's one guard per transport turns the request's
//! [`Credentials`] into a [`Principal`] with [`Auth::authenticate`] and
//! checks the declared permission with [`Principal::require`]. Handlers that
//! touch tables check each one with [`Principal::check_table`].
//!
//! ```
//! # fn f() -> Result<(), tocsin_auth::AuthError> {
//! use std::sync::Arc;
//! use tocsin_auth::{Auth, AuthConfig, Credentials, Permission};
//! let dir = tempfile::tempdir().unwrap();
//! let config = AuthConfig { enabled: true, ..AuthConfig::new(dir.path()) };
//! let (auth, bootstrap) = Auth::open(config, Arc::new(tocsin_storage::SystemClock))?;
//! let admin = auth.authenticate(&Credentials::Token(bootstrap.unwrap()))?;
//! let (_, viewer) = auth.create_token(&admin, "viewer", None, None, "dashboards")?;
//! let viewer = auth.authenticate(&Credentials::Token(viewer))?;
//! assert!(viewer.require(Permission::Query).is_ok());
//! assert!(viewer.require(Permission::Write).is_err());
//! # Ok(()) }
//! ```

pub mod audit;
mod credentials;
pub mod mac;
mod perm;
mod role;
mod token;
mod user;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tocsin_storage::Clock;

pub use audit::{AuditEntry, AuditLog};
pub use credentials::Credentials;
pub use mac::Signer;
pub use perm::{Access, Permission};
pub use role::{AUDIT_DATABASE, AUDIT_TABLE, AlertScope, Role, RoleSpec, RowFilter, glob, roles_from_config};
pub use token::TokenRecord;
pub use user::{MAX_USERS, UserRecord};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or ones that prove nothing (HTTP 401, gRPC `UNAUTHENTICATED`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Proven identity, not allowed (HTTP 403, gRPC `PERMISSION_DENIED`).
    #[error("permission denied: {0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} cannot be read ({reason}); restore it from a backup or move it away to start with no tokens")]
    Corrupt { path: PathBuf, reason: String },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    /// Too much work at once (password checks); retry shortly (HTTP 503,
    /// gRPC `UNAVAILABLE`).
    #[error("overloaded: {0}")]
    Overloaded(String),
}

impl tocsin_storage::errors::Classify for AuthError {
    fn class(&self) -> tocsin_storage::errors::ErrorClass {
        use tocsin_storage::errors::ErrorClass;
        match self {
            AuthError::Unauthenticated(_) => ErrorClass::Unauthenticated,
            AuthError::Forbidden(_) => ErrorClass::PermissionDenied,
            AuthError::NotFound(_) => ErrorClass::NotFound,
            AuthError::Invalid(_) => ErrorClass::Invalid,
            AuthError::Overloaded(_) => ErrorClass::Overloaded,
            AuthError::Io { .. } | AuthError::Corrupt { .. } | AuthError::Random(_) => ErrorClass::Internal,
        }
    }
}

/// `[auth]`: off by default (the server then binds to loopback only).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub enabled: bool,
    /// The data directory: tokens go to `auth/tokens.json`, the bootstrap
    /// admin token to `admin-token`.
    pub data_dir: PathBuf,
    /// Configured roles besides the built-in ones.
    pub roles: BTreeMap<String, RoleSpec>,
    /// How long a session token from a user's login lasts.
    pub session_ttl: Duration,
}

/// A session's default lifetime: a working day.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

impl AuthConfig {
    pub fn new(data_dir: &Path) -> AuthConfig {
        AuthConfig {
            enabled: false,
            data_dir: data_dir.to_path_buf(),
            roles: BTreeMap::new(),
            session_ttl: DEFAULT_SESSION_TTL,
        }
    }
}

/// Who is calling: a token's or user's name and role, and the database a
/// token is restricted to.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `token:<id>`, `user:<name>`, or `anonymous` when auth is off.
    pub name: String,
    pub role: Arc<Role>,
    pub database: Option<String>,
    /// Set when the token is revoked: long requests (a tail) stop then.
    revoked: Arc<AtomicBool>,
    /// Unix seconds.
    expires_at: Option<u64>,
    /// What `expires_at` is compared with.
    clock: Arc<dyn Clock>,
}

impl Principal {
    /// The caller when auth is off: may do everything.
    pub fn anonymous() -> Principal {
        let admin = Role::builtins().into_iter().find(|r| r.name == "admin").expect("admin is built in");
        Principal {
            name: "anonymous".into(),
            role: Arc::new(admin),
            database: None,
            revoked: Arc::default(),
            expires_at: None,
            clock: Arc::new(tocsin_storage::SystemClock),
        }
    }

    /// The caller a listener without credentials writes as (syslog): named
    /// `name`, allowed to write `database.table` and nothing else.
    pub fn listener(name: &str, database: &str, table: &str) -> Principal {
        let role = Role {
            name: name.to_string(),
            permissions: [Permission::Write].into_iter().collect(),
            databases: vec![database.to_string()],
            tables: vec![format!("{database}.{table}")],
            rows: Vec::new(),
            alerts: None,
        };
        Principal {
            name: name.to_string(),
            role: Arc::new(role),
            database: Some(database.to_string()),
            revoked: Arc::default(),
            expires_at: None,
            clock: Arc::new(tocsin_storage::SystemClock),
        }
    }

    /// Whether the credentials are still good (not revoked, not expired):
    /// checked by requests that outlive their start, such as a tail.
    pub fn is_current(&self) -> bool {
        let now = self.clock.unix_secs();
        !self.revoked.load(Ordering::Relaxed) && self.expires_at.is_none_or(|e| now < e)
    }

    /// Ok if the role grants `p`; otherwise an error naming it.
    pub fn require(&self, p: Permission) -> Result<(), AuthError> {
        use Permission::{Ack, PostAlerts, ReadAlerts, Rules, Silence};
        // Alerts are not kept by database: a token limited to one would see
        // (and act on) alerts computed from the others. Refused instead; an
        // alert scope on the role is the way to limit what alerts one sees.
        if let Some(db) = &self.database
            && matches!(p, ReadAlerts | Ack | Silence | Rules | PostAlerts)
        {
            return Err(AuthError::Forbidden(format!(
                "{} is limited to database {db:?}, and alerts are not kept by database: such a token cannot use the \
                 alerting API (limit a role's alerts with [auth.roles.NAME.alerts] instead)",
                self.name
            )));
        }
        if self.role.has(p) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "{} (role {}) does not have the {p} permission",
                self.name, self.role.name
            )))
        }
    }

    /// Ok if the caller may use `database.table` for `p` (query reads,
    /// write writes): the permission, the role's scope and the token's
    /// database all have to allow it. The error names the table.
    pub fn check_table(&self, p: Permission, database: &str, table: &str) -> Result<(), AuthError> {
        self.require(p)?;
        // Every reader may list the tables and columns it may read: the
        // query layer filters the rows of these two to its scope.
        if p == Permission::Query && database == "information_schema" && CATALOG_LISTS.contains(&table) {
            return Ok(());
        }
        let in_db = self.database.as_deref().is_none_or(|d| d == database);
        if in_db && self.role.covers(database, table) {
            return Ok(());
        }
        let verb = if p == Permission::Write { "write" } else { "read" };
        Err(AuthError::Forbidden(format!(
            "{} (role {}) may not {verb} table {}.{}",
            self.name,
            self.role.name,
            clip(database),
            clip(table)
        )))
    }

    /// The row filters of the caller's role on `database.table`: the rows it
    /// reads there are those whose column holds one of the values.
    pub fn row_filters(&self, database: &str, table: &str) -> Vec<RowFilter> {
        self.role.row_filters(database, table).into_iter().cloned().collect()
    }

    /// This caller with `p` granted on top of its role, for a server-side
    /// read done on its behalf after its own check (a trace reads its table
    /// with SQL under the caller's scope and row filters).
    pub fn granted(&self, p: Permission) -> Principal {
        let mut role = (*self.role).clone();
        role.permissions.insert(p);
        Principal { role: Arc::new(role), ..self.clone() }
    }

    /// Ok if the caller may write to some table of `database` (before the
    /// tables of a request are known).
    pub fn check_database(&self, p: Permission, database: &str) -> Result<(), AuthError> {
        self.require(p)?;
        let token_ok = self.database.as_deref().is_none_or(|d| d == database);
        let role_ok = self.role.databases.is_empty() || self.role.databases.iter().any(|d| d == database);
        if token_ok && role_ok {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "{} (role {}) may not use database {}",
                self.name,
                self.role.name,
                clip(database)
            )))
        }
    }
}

/// The authenticator of one server: roles, tokens, users and their
/// sessions, and whether auth is on.
#[derive(Debug)]
pub struct Auth {
    enabled: bool,
    roles: BTreeMap<String, Arc<Role>>,
    tokens_path: PathBuf,
    tokens: Mutex<Vec<TokenRecord>>,
    /// Per token id (or `user:<name>` for password logins), the flag its
    /// principals see when it is revoked.
    revoked: Mutex<HashMap<String, Arc<AtomicBool>>>,
    users_path: PathBuf,
    users: Mutex<Vec<UserRecord>>,
    /// Session tokens by id; in memory only (a restart logs everyone out).
    sessions: Mutex<HashMap<String, Session>>,
    session_ttl: Duration,
    /// Recent successful password checks, so that HTTP Basic does not run
    /// argon2 on every request: SHA-256 of (name, password, stored hash) →
    /// when verified (unix seconds). A new password changes the key.
    verified: Mutex<HashMap<[u8; 32], u64>>,
    /// Logins per user name that failed or are being checked: (count,
    /// first attempt, unix seconds). An attempt counts before argon2 runs,
    /// so parallel guesses cannot get past the lockout.
    failures: Mutex<HashMap<String, (u32, u64)>>,
    /// Bounds the argon2 runs at once (19 MiB and tens of ms each).
    hashing: HashSlots,
    clock: Arc<dyn Clock>,
}

/// Password hashes (argon2id) running at once; more wait for a slot up to
/// [`HASH_WAIT`], and past [`MAX_HASH_WAITERS`] waiting they are refused
/// at once as overloaded (`tocsin_limit_refusals_total{limit="password_checks"}`),
/// so a flood of logins costs bounded memory and CPU and leaves the rest
/// of the server running.
const MAX_HASHING: usize = 4;
const MAX_HASH_WAITERS: usize = 64;
const HASH_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct HashSlots {
    /// (running, waiting)
    state: Mutex<(usize, usize)>,
    freed: parking_lot::Condvar,
}

struct HashSlot<'a>(&'a HashSlots);

impl HashSlots {
    /// Blocks (the caller is on a blocking thread) until a slot is free.
    fn acquire(&self) -> Result<HashSlot<'_>, AuthError> {
        let refuse = || {
            tocsin_storage::refusals::refused("password_checks");
            AuthError::Overloaded("too many password checks at once; retry in a few seconds".into())
        };
        let mut state = self.state.lock();
        if state.0 < MAX_HASHING {
            state.0 += 1;
            return Ok(HashSlot(self));
        }
        if state.1 >= MAX_HASH_WAITERS {
            return Err(refuse());
        }
        state.1 += 1;
        let deadline = std::time::Instant::now() + HASH_WAIT;
        while state.0 >= MAX_HASHING {
            if self.freed.wait_until(&mut state, deadline).timed_out() && state.0 >= MAX_HASHING {
                state.1 -= 1;
                return Err(refuse());
            }
        }
        state.1 -= 1;
        state.0 += 1;
        Ok(HashSlot(self))
    }
}

impl Drop for HashSlot<'_> {
    fn drop(&mut self) {
        self.0.state.lock().0 -= 1;
        self.0.freed.notify_one();
    }
}

#[derive(Debug)]
struct Session {
    sha256: String,
    user: String,
    expires_at: u64,
    revoked: Arc<AtomicBool>,
}

/// A password check is trusted this long before argon2 runs again.
const VERIFIED_TTL_SECS: u64 = 300;
/// After this many failed logins within [`LOCKOUT_SECS`], a user name is
/// refused until the window has passed.
const MAX_FAILURES: u32 = 10;
const LOCKOUT_SECS: u64 = 300;
/// Most sessions held; the oldest of a user's go first past [`MAX_USER_SESSIONS`].
const MAX_SESSIONS: usize = 100_000;
const MAX_USER_SESSIONS: usize = 1_000;

impl Auth {
    /// Loads the roles and the token store. With auth on and no token store
    /// yet (the first start), creates the bootstrap admin token, writes it
    /// to `<data-dir>/admin-token` (mode 0600) and returns it to be printed
    /// once.
    pub fn open(config: AuthConfig, clock: Arc<dyn Clock>) -> Result<(Auth, Option<String>), AuthError> {
        let roles = roles_from_config(&config.roles).map_err(AuthError::Invalid)?;
        let tokens_path = config.data_dir.join("auth").join("tokens.json");
        let users_path = config.data_dir.join("auth").join("users.json");
        let loaded = token::load(&tokens_path)?;
        let now = clock.unix_secs();
        // No usable admin token (a first start, or every one revoked or
        // expired): make one, or nobody could manage the server.
        let first_start =
            loaded.as_ref().is_none_or(|tokens| !tokens.iter().any(|t| t.role == "admin" && t.is_active(now)));
        let auth = Auth {
            enabled: config.enabled,
            roles,
            tokens_path,
            tokens: Mutex::new(loaded.unwrap_or_default()),
            revoked: Mutex::default(),
            users: Mutex::new(user::load(&users_path)?),
            users_path,
            sessions: Mutex::default(),
            session_ttl: config.session_ttl,
            verified: Mutex::default(),
            failures: Mutex::default(),
            hashing: HashSlots::default(),
            clock,
        };
        if !(config.enabled && first_start) {
            return Ok((auth, None));
        }
        let (_, token) = auth.insert_token("admin", None, None, "bootstrap admin token", "bootstrap")?;
        let path = admin_token_path(&config.data_dir);
        token::write_private(&path, format!("{token}\n").as_bytes())?;
        Ok((auth, Some(token)))
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn roles(&self) -> impl Iterator<Item = &Arc<Role>> {
        self.roles.values()
    }

    /// The caller behind `credentials`; with auth off, [`Principal::anonymous`].
    pub fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        if !self.enabled {
            return Ok(Principal::anonymous());
        }
        match credentials {
            Credentials::None => Err(AuthError::Unauthenticated(
                "this server requires a token: send `Authorization: Bearer <token>` (see docs/security.md)".into(),
            )),
            Credentials::Token(t) => self.verify_token(t),
            Credentials::Basic { user, password } => {
                if token::token_id(password).is_some() {
                    self.verify_token(password)
                } else if token::token_id(user).is_some() && password.is_empty() {
                    self.verify_token(user)
                } else {
                    self.verify_password(user, password)
                }
            }
        }
    }

    /// A user's name and password checked (argon2id, or a recent identical
    /// check), with a lockout after repeated failures.
    fn verify_password(&self, name: &str, password: &str) -> Result<Principal, AuthError> {
        let now = self.clock.unix_secs();
        // The attempt counts before the check: a success takes it back.
        {
            let mut failures = self.failures.lock();
            if failures.len() > 100_000 {
                // Forget windows that have passed, then (under a flood of
                // names) counts short of a lockout; no lockout is lifted early.
                failures.retain(|_, (_, first)| now < *first + LOCKOUT_SECS);
                if failures.len() > 100_000 {
                    failures.retain(|_, (count, _)| *count >= MAX_FAILURES);
                }
            }
            let f = failures.entry(name.to_string()).or_insert((0, now));
            if now >= f.1 + LOCKOUT_SECS {
                *f = (0, now);
            }
            if f.0 >= MAX_FAILURES {
                return Err(AuthError::Unauthenticated(format!(
                    "too many failed logins for {:?}; try again in {} s",
                    shown_user(name),
                    f.1 + LOCKOUT_SECS - now
                )));
            }
            f.0 += 1;
        }
        let record = self.users.lock().iter().find(|u| u.name == name).cloned();
        let key = record.as_ref().map(|r| verified_key(name, password, &r.password));
        let cached = key.is_some_and(|k| self.verified.lock().get(&k).is_some_and(|&at| now < at + VERIFIED_TTL_SECS));
        let ok = cached || {
            let _slot = self.hashing.acquire().inspect_err(|_| self.take_back_attempt(name))?;
            match &record {
                Some(r) => user::verify_password(password, &r.password),
                None => {
                    // As slow as a wrong password, so that names cannot be
                    // told apart by timing.
                    user::verify_password(password, dummy_hash());
                    false
                }
            }
        };
        let (Some(record), Some(key), true) = (record, key, ok) else {
            return Err(AuthError::Unauthenticated(format!("unknown user {:?} or wrong password", shown_user(name))));
        };
        // A success takes back its own attempt, not the failures before it:
        // they count until their window ends (else each of the owner's
        // logins, a dashboard's Basic request every 10 s, would reset the
        // count, and an attacker get 9 guesses per request).
        self.take_back_attempt(name);
        if !cached {
            let mut verified = self.verified.lock();
            verified.retain(|_, at| now < *at + VERIFIED_TTL_SECS);
            if verified.len() < 100_000 {
                verified.insert(key, now);
            }
        }
        let revoked = Arc::clone(self.revoked.lock().entry(format!("user:{name}")).or_default());
        self.user_principal(&record, revoked, None)
    }

    /// Takes back an attempt counted by [`Auth::verify_password`] that was
    /// never checked (refused as overloaded).
    fn take_back_attempt(&self, name: &str) {
        let mut failures = self.failures.lock();
        if let Some(f) = failures.get_mut(name) {
            f.0 = f.0.saturating_sub(1);
            if f.0 == 0 {
                failures.remove(name);
            }
        }
    }

    /// argon2id of a new password, within the bound on hashes at once.
    fn hash_new_password(&self, password: &str) -> Result<String, AuthError> {
        let _slot = self.hashing.acquire()?;
        user::hash_password(password)
    }

    fn user_principal(
        &self,
        record: &UserRecord,
        revoked: Arc<AtomicBool>,
        expires_at: Option<u64>,
    ) -> Result<Principal, AuthError> {
        let role = self.roles.get(&record.role).cloned().ok_or_else(|| {
            AuthError::Forbidden(format!(
                "user {} has role {:?}, which is no longer configured",
                record.name, record.role
            ))
        })?;
        Ok(Principal {
            name: format!("user:{}", record.name),
            role,
            database: record.database.clone(),
            revoked,
            expires_at,
            clock: Arc::clone(&self.clock),
        })
    }

    /// A user's login: checks the password and returns the principal, a
    /// new session token (shown once, valid for `[auth] session_ttl`) and
    /// when it expires (unix seconds).
    pub fn login(&self, name: &str, password: &str) -> Result<(Principal, String, u64), AuthError> {
        if !self.enabled {
            return Err(AuthError::Invalid("authentication is off: there is nothing to log in to".into()));
        }
        let who = self.verify_password(name, password)?;
        let new = token::generate()?;
        let now = self.clock.unix_secs();
        let expires_at = now.saturating_add(self.session_ttl.as_secs().max(1));
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| now < s.expires_at && !s.revoked.load(Ordering::Relaxed));
        let mine: Vec<(String, u64)> =
            sessions.iter().filter(|(_, s)| s.user == name).map(|(id, s)| (id.clone(), s.expires_at)).collect();
        if mine.len() >= MAX_USER_SESSIONS
            && let Some((oldest, _)) = mine.iter().min_by_key(|(_, e)| *e)
        {
            sessions.remove(oldest);
        }
        if sessions.len() >= MAX_SESSIONS {
            return Err(AuthError::Invalid(format!("the server holds {MAX_SESSIONS} sessions, the most it keeps")));
        }
        let revoked = Arc::new(AtomicBool::new(false));
        sessions.insert(
            new.id,
            Session { sha256: new.sha256, user: name.to_string(), expires_at, revoked: Arc::clone(&revoked) },
        );
        let who = Principal { revoked, expires_at: Some(expires_at), ..who };
        Ok((who, new.token, expires_at))
    }

    /// Ends the session whose token this is (a logout); `false` if it is
    /// not a live session token.
    pub fn logout(&self, session_token: &str) -> bool {
        let Some(id) = token::token_id(session_token) else { return false };
        let mut sessions = self.sessions.lock();
        if !sessions.get(id).is_some_and(|s| token::matches(session_token, &s.sha256)) {
            return false;
        }
        if let Some(s) = sessions.remove(id) {
            s.revoked.store(true, Ordering::Relaxed);
        }
        true
    }

    fn verify_session(&self, id: &str, candidate: &str) -> Option<Result<Principal, AuthError>> {
        let sessions = self.sessions.lock();
        let s = sessions.get(id)?;
        if !token::matches(candidate, &s.sha256) {
            return None;
        }
        if self.clock.unix_secs() >= s.expires_at {
            return Some(Err(AuthError::Unauthenticated(format!("session {id} has expired; log in again"))));
        }
        let Some(record) = self.users.lock().iter().find(|u| u.name == s.user).cloned() else {
            return Some(Err(AuthError::Unauthenticated(format!("user {} no longer exists", s.user))));
        };
        Some(self.user_principal(&record, Arc::clone(&s.revoked), Some(s.expires_at)))
    }

    /// Creates user `name` with `password` and `role` (restricted to
    /// `database`). Needs the `users` permission and auth on.
    pub fn create_user(
        &self,
        by: &Principal,
        name: &str,
        password: &str,
        role: &str,
        database: Option<String>,
    ) -> Result<UserRecord, AuthError> {
        by.require(Permission::Users)?;
        if !self.enabled {
            return Err(AuthError::Invalid(
                "authentication is off: users are created on a server started with --auth".into(),
            ));
        }
        user::check_name(name)?;
        user::check_password(password)?;
        self.check_role_and_database(role, database.as_deref())?;
        let hash = self.hash_new_password(password)?;
        let mut users = self.users.lock();
        if users.iter().any(|u| u.name == name) {
            return Err(AuthError::Invalid(format!("user {name:?} already exists")));
        }
        if users.len() >= MAX_USERS {
            return Err(AuthError::Invalid(format!("the server holds {MAX_USERS} users, the most it keeps")));
        }
        let now = self.clock.unix_secs();
        let record = UserRecord {
            name: name.to_string(),
            password: hash,
            role: role.to_string(),
            database,
            created_by: by.name.clone(),
            created_at: now,
            password_set_at: now,
        };
        let mut next = users.clone();
        next.push(record.clone());
        user::save(&self.users_path, &next)?;
        *users = next;
        Ok(record)
    }

    /// Every user (with password hashes: callers show what they choose).
    pub fn users(&self) -> Vec<UserRecord> {
        self.users.lock().clone()
    }

    /// Sets a user's password: the `users` permission, or the user
    /// themself with their current password (a stolen session alone cannot
    /// lock its owner out). Ends every session of the user.
    /// Ok if `by` may set `name`'s password at all: a user manager, or the
    /// user themself (who then has to give the current one).
    pub fn may_set_password(&self, by: &Principal, name: &str) -> Result<(), AuthError> {
        if by.name == format!("user:{name}") {
            return Ok(());
        }
        by.require(Permission::Users)
    }

    pub fn set_password(
        &self,
        by: &Principal,
        name: &str,
        password: &str,
        current: Option<&str>,
    ) -> Result<UserRecord, AuthError> {
        self.may_set_password(by, name)?;
        if by.require(Permission::Users).is_err() {
            let Some(current) = current else {
                return Err(AuthError::Invalid("changing your own password needs your current password".into()));
            };
            // Counted towards the lockout like any failed login.
            match self.verify_password(name, current) {
                Ok(_) => {}
                Err(AuthError::Unauthenticated(_)) => {
                    return Err(AuthError::Forbidden("the current password is wrong".into()));
                }
                Err(e) => return Err(e),
            }
        }
        user::check_password(password)?;
        let hash = self.hash_new_password(password)?;
        let out = self.change_user(name, |u, now| {
            u.password = hash;
            u.password_set_at = now;
        })?;
        self.end_sessions(name);
        Ok(out)
    }

    /// Deletes user `name`: their sessions and open requests end at once.
    pub fn delete_user(&self, by: &Principal, name: &str) -> Result<UserRecord, AuthError> {
        by.require(Permission::Users)?;
        let mut users = self.users.lock();
        let Some(pos) = users.iter().position(|u| u.name == name) else {
            return Err(AuthError::NotFound(format!("no user {:?}", shown_user(name))));
        };
        let mut next = users.clone();
        let removed = next.remove(pos);
        user::save(&self.users_path, &next)?;
        *users = next;
        drop(users);
        self.end_sessions(name);
        Ok(removed)
    }

    fn change_user(&self, name: &str, change: impl FnOnce(&mut UserRecord, u64)) -> Result<UserRecord, AuthError> {
        let mut users = self.users.lock();
        let mut next = users.clone();
        let record = next
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| AuthError::NotFound(format!("no user {:?}", shown_user(name))))?;
        change(record, self.clock.unix_secs());
        let out = record.clone();
        user::save(&self.users_path, &next)?;
        *users = next;
        Ok(out)
    }

    /// Ends every session of user `name` and every request that logged in
    /// with the password; the next ones start afresh.
    fn end_sessions(&self, name: &str) {
        let mut sessions = self.sessions.lock();
        sessions.retain(|_, s| {
            let keep = s.user != name;
            if !keep {
                s.revoked.store(true, Ordering::Relaxed);
            }
            keep
        });
        if let Some(flag) = self.revoked.lock().remove(&format!("user:{name}")) {
            flag.store(true, Ordering::Relaxed);
        }
        self.verified.lock().clear();
    }

    fn check_role_and_database(&self, role: &str, database: Option<&str>) -> Result<(), AuthError> {
        if !self.roles.contains_key(role) {
            let known: Vec<&str> = self.roles.keys().map(String::as_str).collect();
            return Err(AuthError::Invalid(format!("no role {:?} (known: {})", clip(role), known.join(", "))));
        }
        if let Some(d) = database
            && (d.is_empty() || d.len() > 255 || d.starts_with('.') || d.contains(['/', '\\']))
        {
            return Err(AuthError::Invalid(format!("{:?} is not a database name", clip(d))));
        }
        Ok(())
    }

    fn verify_token(&self, candidate: &str) -> Result<Principal, AuthError> {
        let bad = || AuthError::Unauthenticated("invalid token".into());
        let id = token::token_id(candidate).ok_or_else(bad)?;
        let found = self.tokens.lock().iter().find(|r| r.id == id).cloned();
        let Some(record) = found else {
            return self.verify_session(id, candidate).unwrap_or_else(|| Err(bad()));
        };
        if !token::matches(candidate, &record.sha256) {
            return Err(bad());
        }
        let now = self.clock.unix_secs();
        if record.revoked_at.is_some() {
            return Err(AuthError::Unauthenticated(format!("token {id} was revoked")));
        }
        if !record.is_active(now) {
            return Err(AuthError::Unauthenticated(format!("token {id} has expired")));
        }
        let role = self.roles.get(&record.role).cloned().ok_or_else(|| {
            AuthError::Forbidden(format!("token {id} has role {:?}, which is no longer configured", record.role))
        })?;
        let revoked = Arc::clone(self.revoked.lock().entry(record.id.clone()).or_default());
        Ok(Principal {
            name: format!("token:{id}"),
            role,
            database: record.database,
            revoked,
            expires_at: record.expires_at,
            clock: Arc::clone(&self.clock),
        })
    }

    /// Creates a token for `role` (restricted to `database`, expiring after
    /// `expires`); returns its record and the token, which is never stored.
    pub fn create_token(
        &self,
        by: &Principal,
        role: &str,
        database: Option<String>,
        expires: Option<Duration>,
        description: &str,
    ) -> Result<(TokenRecord, String), AuthError> {
        by.require(Permission::Users)?;
        if !self.enabled {
            // With auth off anyone on the machine could mint a token that
            // would become a credential the day auth is switched on.
            return Err(AuthError::Invalid(
                "authentication is off: tokens are created on a server started with --auth".into(),
            ));
        }
        if self.tokens.lock().len() >= MAX_TOKENS {
            return Err(AuthError::Invalid(format!(
                "the server holds {MAX_TOKENS} tokens (revoked ones included), the most it keeps"
            )));
        }
        self.check_role_and_database(role, database.as_deref())?;
        if description.len() > 1024 {
            return Err(AuthError::Invalid("the description must be at most 1 KiB".into()));
        }
        let expires_at = match expires {
            Some(d) if d.is_zero() => return Err(AuthError::Invalid("an expiry must be in the future".into())),
            Some(d) => Some(self.clock.unix_secs().saturating_add(d.as_secs().max(1))),
            None => None,
        };
        self.insert_token(role, database, expires_at, description, &by.name)
    }

    fn insert_token(
        &self,
        role: &str,
        database: Option<String>,
        expires_at: Option<u64>,
        description: &str,
        by: &str,
    ) -> Result<(TokenRecord, String), AuthError> {
        let new = token::generate()?;
        let record = TokenRecord {
            id: new.id,
            sha256: new.sha256,
            role: role.to_string(),
            database,
            description: description.to_string(),
            created_by: by.to_string(),
            created_at: self.clock.unix_secs(),
            expires_at,
            revoked_at: None,
        };
        let mut tokens = self.tokens.lock();
        let mut next = tokens.clone();
        next.push(record.clone());
        token::save(&self.tokens_path, &next)?;
        *tokens = next;
        Ok((record, new.token))
    }

    /// Every token ever created, revoked and expired ones included.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.tokens.lock().clone()
    }

    /// Revokes token `id` at once; its next request is refused.
    /// Reads the token and user files again (a reader's copy of the
    /// writer's, replaced since): tokens revoked or gone stop working, also
    /// for the requests and streams that hold them; users removed or whose
    /// password changed are logged out.
    pub fn reload_stores(&self) -> Result<(), AuthError> {
        let tokens = token::load(&self.tokens_path)?.unwrap_or_default();
        let users = user::load(&self.users_path)?;
        let now = self.clock.unix_secs();
        let usable: std::collections::HashSet<&str> =
            tokens.iter().filter(|t| t.revoked_at.is_none() && t.is_active(now)).map(|t| t.id.as_str()).collect();
        let gone: Vec<String> = self
            .users
            .lock()
            .iter()
            .filter(|old| {
                !users.iter().any(|u| {
                    u.name == old.name && u.password == old.password && u.role == old.role && u.database == old.database
                })
            })
            .map(|u| u.name.clone())
            .collect();
        {
            let revoked = self.revoked.lock();
            for (id, flag) in revoked.iter() {
                if !id.starts_with("user:") && !usable.contains(id.as_str()) {
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
        *self.tokens.lock() = tokens;
        *self.users.lock() = users;
        for name in gone {
            self.end_sessions(&name);
        }
        Ok(())
    }

    pub fn revoke_token(&self, id: &str) -> Result<TokenRecord, AuthError> {
        let mut tokens = self.tokens.lock();
        let mut next = tokens.clone();
        let record = next
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or_else(|| AuthError::NotFound(format!("no token with id {:?}", clip(id))))?;
        if record.revoked_at.is_none() {
            record.revoked_at = Some(self.clock.unix_secs());
        }
        let out = record.clone();
        token::save(&self.tokens_path, &next)?;
        *tokens = next;
        if let Some(flag) = self.revoked.lock().get(id) {
            flag.store(true, Ordering::Relaxed);
        }
        Ok(out)
    }
}

fn verified_key(name: &str, password: &str, phc: &str) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in [name, password, phc] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// A hash checked against when the user does not exist.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| user::hash_password("no such user, no such password").unwrap_or_default())
}

/// 64 random bits from the operating system (handles others must not guess).
pub fn random_u64() -> Result<u64, AuthError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(u64::from_le_bytes(b))
}

/// The `information_schema` tables every reader may query, filtered to the
/// tables it may read (`SHOW TABLES`, `SHOW COLUMNS`; `views` lists every
/// table too).
pub const CATALOG_LISTS: [&str; 3] = ["tables", "columns", "views"];

/// Most tokens kept (each creation rewrites the store).
pub const MAX_TOKENS: usize = 10_000;

/// Where the bootstrap admin token is written.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-token")
}

/// At most 200 bytes of a client-given name, for messages.
pub fn clip(s: &str) -> &str {
    clip_to(s, 200)
}

/// A user name as errors and the audit log show it: clipped, and cut
/// after the id of anything that looks like a token. A client that puts
/// its token in the user name (Basic `TOKEN:x`, InfluxDB's `u=`, a Flight
/// SQL handshake) must not have the secret repeated in the answer and the
/// audit log, where an auditor reads it; the id says which to revoke.
pub fn shown_user(name: &str) -> String {
    const PREFIX: &str = "tocsin_";
    match name.find(PREFIX) {
        None => clip(name).to_string(),
        Some(at) => {
            let id: String = name[at + PREFIX.len()..].chars().take_while(char::is_ascii_hexdigit).take(16).collect();
            format!("{}{PREFIX}{id}_... (a token; its secret is not shown)", clip_to(&name[..at], 64))
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn clip_to(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Most bytes of a statement kept in its audit entry.
pub const AUDIT_STATEMENT_BYTES: usize = 4096;

/// A statement as its audit entry keeps it: whole up to
/// [`AUDIT_STATEMENT_BYTES`]; longer, its beginning, its full length and
/// the SHA-256 of the whole text, so that what was cut off (a harmless
/// beginning padded to hide the rest) is still pinned down.
pub fn audit_statement(sql: &str) -> String {
    if sql.len() <= AUDIT_STATEMENT_BYTES {
        return sql.to_string();
    }
    use sha2::{Digest as _, Sha256};
    let hash: String = Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("{}... [cut: {} bytes in all, sha256 {hash}]", clip_to(sql, AUDIT_STATEMENT_BYTES), sql.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_storage::ManualClock;

    #[test]
    fn a_long_statement_is_audited_with_its_length_and_hash() {
        assert_eq!(audit_statement("SELECT 1"), "SELECT 1");
        let padded = format!("SELECT 'innocent' /*{}*/, (SELECT secret FROM t)", " ".repeat(5000));
        let a = audit_statement(&padded);
        assert!(a.len() < 4300 && a.contains(&format!("{} bytes in all", padded.len())), "{}", &a[4000..]);
        let other = padded.replace("secret", "public");
        assert_ne!(audit_statement(&other), a, "a different tail, a different hash");
    }

    fn open(dir: &Path, clock: Arc<ManualClock>) -> (Auth, Option<String>) {
        let config = AuthConfig { enabled: true, ..AuthConfig::new(dir) };
        Auth::open(config, clock).expect("open")
    }

    #[test]
    fn first_start_writes_a_private_admin_token_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let (auth, token) = open(dir.path(), Arc::clone(&clock));
        let token = token.expect("a bootstrap token on first start");
        let file = std::fs::read_to_string(admin_token_path(dir.path())).expect("admin-token");
        assert_eq!(file.trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(admin_token_path(dir.path())).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let admin = auth.authenticate(&Credentials::Token(token.clone())).expect("admin");
        assert_eq!(admin.role.name, "admin");
        drop(auth);
        let (again, none) = open(dir.path(), clock);
        assert!(none.is_none(), "the bootstrap token is made once");
        assert!(again.authenticate(&Credentials::Token(token)).is_ok(), "and survives a restart");
    }

    #[test]
    fn missing_wrong_revoked_and_expired_tokens_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let (auth, token) = open(dir.path(), Arc::clone(&clock));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        let unauth = |r: Result<Principal, AuthError>| matches!(r, Err(AuthError::Unauthenticated(_)));
        assert!(unauth(auth.authenticate(&Credentials::None)));
        assert!(unauth(auth.authenticate(&Credentials::Token("tocsin_000000000000_x".into()))));
        let (rec, t) = auth.create_token(&admin, "writer", None, Some(Duration::from_secs(3600)), "").expect("create");
        let mut forged = t.clone();
        forged.pop();
        forged.push('!');
        assert!(unauth(auth.authenticate(&Credentials::Token(forged))));
        let basic = Credentials::Basic { user: "prometheus".into(), password: t.clone() };
        assert_eq!(auth.authenticate(&basic).expect("token as password").role.name, "writer");
        clock.advance(Duration::from_secs(3600));
        let err = auth.authenticate(&Credentials::Token(t.clone())).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        let (rec2, t2) = auth.create_token(&admin, "viewer", None, None, "").expect("create");
        assert!(auth.authenticate(&Credentials::Token(t2.clone())).is_ok());
        let held = auth.authenticate(&Credentials::Token(t2.clone())).expect("viewer");
        assert!(held.is_current());
        auth.revoke_token(&rec2.id).expect("revoke");
        assert!(!held.is_current(), "a principal already handed out sees the revocation");
        let err = auth.authenticate(&Credentials::Token(t2)).unwrap_err();
        assert!(err.to_string().contains("revoked"), "{err}");
        assert!(matches!(auth.revoke_token("nope"), Err(AuthError::NotFound(_))));
        assert_eq!(auth.tokens().iter().filter(|r| r.id == rec.id).count(), 1);
    }

    #[test]
    fn only_users_admins_create_tokens_and_roles_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, token) = open(dir.path(), Arc::new(ManualClock::new(0)));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        assert!(matches!(auth.create_token(&admin, "root", None, None, ""), Err(AuthError::Invalid(_))));
        let (_, t) = auth.create_token(&admin, "editor", None, None, "").expect("create");
        let editor = auth.authenticate(&Credentials::Token(t)).expect("editor");
        assert!(matches!(auth.create_token(&editor, "admin", None, None, ""), Err(AuthError::Forbidden(_))));
    }

    #[test]
    fn a_database_token_stays_in_its_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, token) = open(dir.path(), Arc::new(ManualClock::new(0)));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        let (_, t) = auth.create_token(&admin, "writer", Some("telegraf".into()), None, "").expect("create");
        let p = auth.authenticate(&Credentials::Token(t)).expect("writer");
        assert!(p.check_table(Permission::Write, "telegraf", "cpu").is_ok());
        let err = p.check_table(Permission::Write, "default", "cpu").unwrap_err();
        assert!(err.to_string().contains("may not write table default.cpu"), "{err}");
        assert!(p.check_table(Permission::Query, "telegraf", "cpu").is_err(), "a writer does not read");
        assert!(p.check_database(Permission::Write, "default").is_err());
    }

    #[test]
    fn with_auth_off_everyone_is_anonymous_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, token) = Auth::open(AuthConfig::new(dir.path()), Arc::new(ManualClock::new(0))).expect("open");
        assert!(token.is_none());
        assert!(!admin_token_path(dir.path()).exists());
        assert_eq!(auth.authenticate(&Credentials::None).expect("anonymous").name, "anonymous");
        // No token can be planted for the day auth is switched on.
        let err = auth.create_token(&Principal::anonymous(), "admin", None, None, "").unwrap_err();
        assert!(err.to_string().contains("authentication is off"), "{err}");
    }

    #[test]
    fn with_every_admin_token_revoked_a_restart_makes_a_new_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(0));
        let (auth, token) = open(dir.path(), Arc::clone(&clock));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        let (_, viewer) = auth.create_token(&admin, "viewer", None, None, "").expect("viewer");
        for t in auth.tokens().into_iter().filter(|t| t.role == "admin") {
            auth.revoke_token(&t.id).expect("revoke");
        }
        drop(auth);
        let (auth, again) = open(dir.path(), clock);
        let again = again.expect("a new admin token");
        assert_eq!(auth.authenticate(&Credentials::Token(again)).expect("new admin").role.name, "admin");
        assert!(auth.authenticate(&Credentials::Token(viewer)).is_ok(), "other tokens are kept");
    }

    #[test]
    fn users_log_in_with_passwords_and_get_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
        let (auth, token) = open(dir.path(), Arc::clone(&clock));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        let alice = auth.create_user(&admin, "alice", "correct horse", "viewer", None).expect("create");
        assert!(alice.password.starts_with("$argon2id$"));
        assert!(auth.create_user(&admin, "alice", "correct horse", "viewer", None).is_err(), "names are unique");
        let basic = |p: &str| Credentials::Basic { user: "alice".into(), password: p.into() };
        assert!(basic("correct horse").is_password());
        let p = auth.authenticate(&basic("correct horse")).expect("password");
        assert_eq!((p.name.as_str(), p.role.name.as_str()), ("user:alice", "viewer"));
        assert!(auth.authenticate(&basic("correct horse")).is_ok(), "a cached check");
        let err = auth.authenticate(&basic("wrong horse")).unwrap_err();
        assert!(matches!(err, AuthError::Unauthenticated(_)), "{err}");
        let unknown = Credentials::Basic { user: "mallory".into(), password: "correct horse".into() };
        assert!(auth.authenticate(&unknown).is_err());
        // A login is a session token, which works as a bearer token.
        let (who, session, expires) = auth.login("alice", "correct horse").expect("login");
        assert_eq!(who.name, "user:alice");
        assert_eq!(expires, clock.unix_secs() + DEFAULT_SESSION_TTL.as_secs());
        let s = auth.authenticate(&Credentials::Token(session.clone())).expect("session");
        assert_eq!(s.name, "user:alice");
        assert!(s.is_current());
        // Sessions live in memory only, and end at logout.
        assert!(!std::fs::read_to_string(dir.path().join("auth/users.json")).expect("users").contains(&session));
        assert!(auth.logout(&session));
        assert!(!s.is_current(), "an open request sees the logout");
        assert!(auth.authenticate(&Credentials::Token(session)).is_err());
        // Expiry.
        let (_, session, _) = auth.login("alice", "correct horse").expect("login");
        clock.advance(DEFAULT_SESSION_TTL);
        let err = auth.authenticate(&Credentials::Token(session)).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        // Users survive a restart; a new password ends the old sessions.
        drop(auth);
        let (auth, _) = open(dir.path(), Arc::clone(&clock));
        let (_, session, _) = auth.login("alice", "correct horse").expect("login after restart");
        let me = auth.authenticate(&Credentials::Token(session.clone())).expect("alice");
        assert!(auth.set_password(&me, "alice", "battery staple", None).is_err(), "needs the current password");
        assert!(auth.set_password(&me, "alice", "battery staple", Some("wrong horse")).is_err());
        auth.set_password(&me, "alice", "battery staple", Some("correct horse")).expect("own password");
        assert!(!me.is_current());
        assert!(auth.authenticate(&Credentials::Token(session)).is_err());
        assert!(auth.authenticate(&basic("correct horse")).is_err(), "the old password no longer works");
        let me = auth.authenticate(&basic("battery staple")).expect("new password");
        auth.create_user(&admin, "bob", "bob's password", "editor", None).expect("bob");
        let err = auth.set_password(&me, "bob", "not yours at all", Some("battery staple")).unwrap_err();
        assert!(matches!(err, AuthError::Forbidden(_)), "a viewer sets only their own password");
        let admin = auth
            .authenticate(&Credentials::Token(
                std::fs::read_to_string(admin_token_path(dir.path())).expect("t").trim().into(),
            ))
            .expect("admin");
        auth.delete_user(&admin, "alice").expect("delete");
        assert!(!me.is_current(), "deleting a user ends their open requests");
        assert!(auth.authenticate(&basic("battery staple")).is_err());
        assert!(matches!(auth.delete_user(&admin, "alice"), Err(AuthError::NotFound(_))));
    }

    #[test]
    fn repeated_failed_logins_lock_the_name_for_a_while() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(0));
        let (auth, token) = open(dir.path(), Arc::clone(&clock));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        auth.create_user(&admin, "carol", "right password", "viewer", None).expect("create");
        for _ in 0..MAX_FAILURES {
            assert!(auth.login("carol", "wrong password").is_err());
        }
        let err = auth.login("carol", "right password").unwrap_err();
        assert!(err.to_string().contains("too many failed logins"), "{err}");
        clock.advance(Duration::from_secs(LOCKOUT_SECS));
        assert!(auth.login("carol", "right password").is_ok(), "the lock ends");
    }

    /// Found by review 2: a success cleared the failures, so the owner's
    /// dashboard (HTTP Basic on every request) gave an attacker 9 guesses
    /// per request of its own.
    #[test]
    fn the_owners_logins_do_not_reset_the_count_of_failures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::new(0));
        let (auth, token) = open(dir.path(), Arc::clone(&clock));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        auth.create_user(&admin, "dave", "right password", "viewer", None).expect("create");
        let basic = |p: &str| Credentials::Basic { user: "dave".into(), password: p.into() };
        let mut checked = 0;
        for _ in 0..5 {
            for _ in 0..(MAX_FAILURES - 1) {
                if auth.authenticate(&basic("guess")).is_err_and(|e| e.to_string().contains("wrong password")) {
                    checked += 1;
                }
            }
            let _ = auth.authenticate(&basic("right password"));
        }
        assert_eq!(checked, MAX_FAILURES, "wrong passwords checked within one window");
        let err = auth.authenticate(&basic("right password")).unwrap_err();
        assert!(err.to_string().contains("too many failed logins"), "{err}");
        clock.advance(Duration::from_secs(LOCKOUT_SECS));
        assert!(auth.authenticate(&basic("right password")).is_ok(), "the window ends");
        for _ in 0..(3 * MAX_FAILURES) {
            assert!(auth.authenticate(&basic("right password")).is_ok(), "successes use up nothing");
        }
    }

    #[test]
    fn parallel_guesses_cannot_pass_the_lockout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, token) = open(dir.path(), Arc::new(ManualClock::new(0)));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        auth.create_user(&admin, "erin", "right password", "viewer", None).expect("create");
        let checked = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..(3 * MAX_FAILURES) {
                let (auth, checked) = (&auth, &checked);
                s.spawn(move || {
                    let err = auth.login("erin", &format!("guess {i}")).unwrap_err().to_string();
                    if err.contains("wrong password") {
                        checked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert!(err.contains("too many failed logins"), "{err}");
                    }
                });
            }
        });
        assert_eq!(checked.load(Ordering::Relaxed), MAX_FAILURES as usize, "guesses checked");
        let err = auth.login("erin", "right password").unwrap_err();
        assert!(err.to_string().contains("too many failed logins"), "{err}");
    }

    #[test]
    fn password_hashes_at_once_are_bounded() {
        let slots = HashSlots::default();
        let held: Vec<_> = (0..MAX_HASHING).map(|_| slots.acquire().expect("free slot")).collect();
        let got = AtomicBool::new(false);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let slot = slots.acquire().expect("a slot once one is freed");
                got.store(true, Ordering::SeqCst);
                drop(slot);
            });
            std::thread::sleep(Duration::from_millis(100));
            assert!(!got.load(Ordering::SeqCst), "no slot while all are held");
            drop(held);
            waiter.join().expect("waiter");
        });
        assert!(got.load(Ordering::SeqCst));
        assert_eq!(*slots.state.lock(), (0, 0), "every slot returned");
        // With the queue full, a check is refused at once.
        let _held: Vec<_> = (0..MAX_HASHING).map(|_| slots.acquire().expect("free slot")).collect();
        slots.state.lock().1 = MAX_HASH_WAITERS;
        let before = tocsin_storage::refusals::count("password_checks");
        assert!(matches!(slots.acquire(), Err(AuthError::Overloaded(_))));
        assert_eq!(tocsin_storage::refusals::count("password_checks"), before + 1);
        slots.state.lock().1 = 0;
    }

    #[test]
    fn users_are_checked_when_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, token) = open(dir.path(), Arc::new(ManualClock::new(0)));
        let admin = auth.authenticate(&Credentials::Token(token.expect("bootstrap"))).expect("admin");
        assert!(
            auth.create_user(&admin, "dave", "short", "viewer", None).unwrap_err().to_string().contains("at least")
        );
        assert!(
            auth.create_user(&admin, "dave", "long enough", "root", None).unwrap_err().to_string().contains("no role")
        );
        assert!(auth.create_user(&admin, "a b", "long enough", "viewer", None).is_err());
        assert!(auth.create_user(&admin, "dave", "long enough", "viewer", Some("../x".into())).is_err());
        let (_, t) = auth.create_token(&admin, "editor", None, None, "").expect("editor");
        let editor = auth.authenticate(&Credentials::Token(t)).expect("editor");
        assert!(matches!(
            auth.create_user(&editor, "dave", "long enough", "admin", None),
            Err(AuthError::Forbidden(_))
        ));
        let (off, _) = Auth::open(AuthConfig::new(dir.path()), Arc::new(ManualClock::new(0))).expect("open");
        let err = off.create_user(&Principal::anonymous(), "dave", "long enough", "admin", None).unwrap_err();
        assert!(err.to_string().contains("authentication is off"), "{err}");
    }
}
