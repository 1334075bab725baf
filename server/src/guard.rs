//! The one policy check every request goes through, per transport.
//!
//! - HTTP: routes are added only through [`Routes`], which takes the
//!   [`Access`] each (method, path) needs; one middleware looks the matched
//!   route up in that table, authenticates the caller and checks the
//!   permission, and refuses a route the table does not know (fail closed).
//! - gRPC: [`GrpcGuardLayer`] wraps every service of the gRPC server; it
//!   looks the method's path up in [`grpc_access`], which names every method
//!   Tocsin serves, and refuses any other (fail closed).
//!
//! Both put the caller's [`Principal`] in the request's extensions, where
//! handlers find it to check the tables they touch.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use tocsin_auth::{Access, AuditEntry, AuditLog, Auth, AuthError, Credentials, Permission, Principal};

use crate::http::ApiError;

/// Where the route table is served.
pub(crate) const ROUTES_PATH: &str = "/api/v1/auth/routes";

/// The HTTP routes with the access each needs; the only way routes are added.
pub(crate) struct Routes<S> {
    paths: Vec<(&'static str, MethodRouter<S>)>,
    table: Vec<RouteAccess>,
}

/// One declared route.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct RouteAccess {
    #[serde(serialize_with = "method_name")]
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    #[serde(serialize_with = "access_name")]
    pub(crate) access: Access,
}

fn method_name<S: serde::Serializer>(m: &Method, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(m.as_str())
}

fn access_name<S: serde::Serializer>(a: &Access, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&a.to_string())
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub(crate) fn new() -> Self {
        Routes { paths: Vec::new(), table: Vec::new() }
    }

    pub(crate) fn get<H, T>(self, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(Method::GET, path, access, on(MethodFilter::GET, handler))
    }

    pub(crate) fn post<H, T>(self, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(Method::POST, path, access, on(MethodFilter::POST, handler))
    }

    pub(crate) fn put<H, T>(self, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(Method::PUT, path, access, on(MethodFilter::PUT, handler))
    }

    pub(crate) fn delete<H, T>(self, path: &'static str, access: Access, handler: H) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        self.add(Method::DELETE, path, access, on(MethodFilter::DELETE, handler))
    }

    fn add(mut self, method: Method, path: &'static str, access: Access, route: MethodRouter<S>) -> Self {
        assert!(
            !self.table.iter().any(|r| r.method == method && r.path == path),
            "route {method} {path} is declared twice"
        );
        self.table.push(RouteAccess { method, path, access });
        match self.paths.iter_mut().find(|(p, _)| *p == path) {
            Some((_, existing)) => *existing = std::mem::take(existing).merge(route),
            None => self.paths.push((path, route)),
        }
        self
    }

    /// The router with the guard in front of every route, and
    /// `GET /api/v1/auth/routes`, which lists them with their access.
    /// The router; on a reader (`reader`), every route that would change
    /// something is refused ([`changes_state`]).
    pub(crate) fn build(
        mut self,
        auth: Arc<Auth>,
        audit: Arc<AuditLog>,
        browsers: BrowserPolicy,
        reader: bool,
    ) -> Router<S> {
        let mut listed = self.table.clone();
        listed.push(RouteAccess { method: Method::GET, path: ROUTES_PATH, access: Access::Public });
        let listed = Arc::new(listed);
        let answer = Arc::clone(&listed);
        self = self.get(ROUTES_PATH, Access::Public, move || async move { axum::Json(answer) });
        let mut router = Router::new();
        for (path, route) in self.paths {
            router = router.route(path, route);
        }
        let guard = Arc::new(HttpGuard { browsers, auth, audit, table: index(&listed), reader });
        // `route_layer`: after routing, so the matched path is known; every
        // route is in place by now (there is no other way to add one).
        router.route_layer(axum::middleware::from_fn_with_state(guard, http_guard))
    }
}

fn index(table: &[RouteAccess]) -> HashMap<(Method, &'static str), Access> {
    table.iter().map(|r| ((r.method.clone(), r.path), r.access)).collect()
}

/// What the browser checks accept (see [`browser_check`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct BrowserPolicy {
    /// Auth off on a loopback address: only loopback names in `Host`.
    pub(crate) loopback_only: bool,
    /// The origin (`scheme://host[:port]`) of `[alerting] external_url`:
    /// its pages (the signed links' pages, seen through a proxy that
    /// rewrites `Host`) are this server's own.
    pub(crate) own_origin: Option<String>,
}

impl BrowserPolicy {
    pub(crate) fn new(loopback_only: bool, external_url: &str) -> BrowserPolicy {
        let own = external_url
            .split_once("://")
            .map(|(scheme, rest)| (scheme, rest.split('/').next().unwrap_or("")))
            .filter(|(_, host)| !host.is_empty())
            .map(|(scheme, host)| format!("{scheme}://{host}"));
        BrowserPolicy { loopback_only, own_origin: own }
    }
}

struct HttpGuard {
    browsers: BrowserPolicy,
    auth: Arc<Auth>,
    audit: Arc<AuditLog>,
    table: HashMap<(Method, &'static str), Access>,
    /// `--role reader`.
    reader: bool,
}

/// Whether a request to a route changes something (writes, alert actions,
/// tokens and users, administration), which a reader refuses: its data is
/// the writer's copy, replaced at each refresh. SQL is let through (a
/// reader's storage refuses `INSERT` itself), and so are logins.
fn changes_state(method: &Method, path: &str, access: Access) -> bool {
    use tocsin_auth::Permission::*;
    // Checking a rules file changes nothing.
    *method != Method::GET
        && path != "/api/v1/rules/check"
        && match access {
            Access::Public | Access::Statements => false,
            // A logout ends a session of this reader's; a password is the writer's.
            Access::Authenticated => path != "/api/v1/logout",
            Access::SignedLink => true,
            Access::Requires(p) => !matches!(p, Query | Tail | Trace | ReadAlerts | Metrics),
        }
}

/// The answer to an authentication or permission error: its class's
/// status; a 401 names the scheme clients may answer with.
pub(crate) fn auth_error(e: AuthError) -> Response {
    auth_error_shaped(e, false)
}

/// [`auth_error`], with the message as a bare JSON string when `bare`
/// (Alertmanager's API: amtool printed `{}` for an object).
fn auth_error_shaped(e: AuthError, bare: bool) -> Response {
    let unauthenticated = matches!(e, AuthError::Unauthenticated(_));
    let error = ApiError::from(e);
    let mut r = if bare { error.into_bare_response() } else { error.into_response() };
    if unauthenticated {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tocsin\""));
    }
    r
}

/// What an HTTP request presents: the `Authorization` header, or InfluxDB
/// v1's `u` and `p` parameters on `/write` and `/query`.
fn http_credentials(headers: &HeaderMap, path: &str, query: Option<&str>) -> Result<Credentials, AuthError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| AuthError::Unauthenticated("the Authorization header is not text".into()))?;
        return Credentials::from_authorization(v);
    }
    if (path == "/write" || path == "/query")
        && let Some(q) = query
    {
        let (mut user, mut password) = (None, None);
        for (k, v) in url_pairs(q) {
            match k.as_str() {
                "u" => user = Some(v),
                "p" => password = Some(v),
                _ => {}
            }
        }
        match (user, password) {
            (user, Some(password)) => return Ok(Credentials::Basic { user: user.unwrap_or_default(), password }),
            // `?u=<token>` alone, as some v1 clients are configured.
            (Some(user), None) => return Ok(Credentials::Basic { user, password: String::new() }),
            (None, None) => {}
        }
    }
    Ok(Credentials::None)
}

/// `a=1&b=2` decoded (percent-encoding and `+`).
fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (b, _) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Keeps a web page in a browser from driving the server (CSRF, DNS
/// rebinding): a request that changes something and comes from a page of
/// another origin is refused (browsers always send `Origin` then); one
/// with a body type a page may send without asking (`text/plain`, forms)
/// must carry an `Authorization` header, which a page cannot add without
/// the server's consent (CORS, which Tocsin never gives); and with auth off
/// on loopback, a `Host` that is not a loopback name is refused (a rebound
/// DNS name pointing at 127.0.0.1).
///
/// A signed link (`link`) is its own authority, posted by its page's form
/// without an `Authorization` header; only the origin checks apply to it,
/// so that no other site's page can post it for whoever holds it.
fn browser_check(method: &Method, headers: &HeaderMap, policy: &BrowserPolicy, link: bool) -> Result<(), String> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    if policy.loopback_only && !host.is_empty() && !is_loopback_host(host) {
        return Err(format!(
            "Host {:?} is not a loopback name; with authentication off this server answers only to localhost, \
             127.0.0.1 and [::1]",
            tocsin_auth::clip(host)
        ));
    }
    if *method == Method::GET {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
        && origin != "null"
    {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        let own = policy.own_origin.as_deref().is_some_and(|o| origin.eq_ignore_ascii_case(o));
        if !origin_host.eq_ignore_ascii_case(host) && !own {
            return Err(format!(
                "cross-origin request from {:?} refused: a web page may not change this server",
                tocsin_auth::clip(origin)
            ));
        }
    } else if headers.get(header::ORIGIN).is_some() {
        return Err("request from an opaque origin (Origin: null) refused".into());
    }
    if link {
        return Ok(());
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|c| c.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let simple = matches!(essence.as_str(), "text/plain" | "application/x-www-form-urlencoded" | "multipart/form-data");
    if simple && headers.get(header::AUTHORIZATION).is_none() && headers.get(header::USER_AGENT).is_some_and(is_browser)
    {
        return Err(format!(
            "a {essence} body from a browser needs an Authorization header (send JSON with a token from a script)"
        ));
    }
    Ok(())
}

/// Browsers say `Mozilla/5.0`; collectors (Telegraf, curl, Prometheus) do not.
fn is_browser(agent: &HeaderValue) -> bool {
    agent.to_str().is_ok_and(|a| a.starts_with("Mozilla/"))
}

fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What a handler adds to its request's audit entry: the statement or
/// object it acted on, and the rows.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditNote {
    pub(crate) target: Option<String>,
    pub(crate) rows: Option<u64>,
    /// Who acted, when no principal did (`link:<receiver>`).
    pub(crate) actor: Option<String>,
}

/// The error message of a failed request, for its audit entry.
#[derive(Debug, Clone)]
pub(crate) struct ErrorNote(pub(crate) String);

/// Which requests are audited: every refusal by the guard; every request
/// that changes something, except writes of data (their volume is the
/// ingest metrics' to count); every SQL statement; every look at tokens
/// and the audit log.
fn audited(method: &Method, access: Access) -> bool {
    match access {
        Access::Public | Access::SignedLink => false,
        Access::Statements | Access::Authenticated => true,
        Access::Requires(Permission::Write) => false,
        Access::Requires(Permission::Users | Permission::Audit) => true,
        Access::Requires(_) => method != Method::GET,
    }
}

fn outcome(status: StatusCode) -> &'static str {
    if status.is_success() {
        "ok"
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        "denied"
    } else {
        "error"
    }
}

async fn http_guard(
    State(guard): State<Arc<HttpGuard>>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = if request.method() == Method::HEAD { Method::GET } else { request.method().clone() };
    let Some(matched) = matched else {
        return ApiError::new(StatusCode::NOT_FOUND, "no such endpoint".into()).into_response();
    };
    let Some(access) = guard.table.get(&(method.clone(), matched.as_str())).copied() else {
        if guard.table.keys().any(|(_, p)| *p == matched.as_str()) {
            // A method the route does not serve (OPTIONS, PUT, ...).
            return ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not served here"))
                .into_response();
        }
        tracing::error!(method = %method, path = matched.as_str(), "a route without a declared permission was refused");
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{method} {} declares no permission, so it is refused (a server defect)", matched.as_str()),
        )
        .into_response();
    };
    if guard.reader && changes_state(&method, matched.as_str(), access) {
        return ApiError::from(AuthError::Forbidden(format!(
            "this server is a reader (--role reader): it answers queries from the writer's copy and refuses \
             {method} {}; send it to the writer",
            matched.as_str()
        )))
        .into_response();
    }
    if guard.reader && matches!(access, Access::Requires(Permission::Tail)) {
        return ApiError::from(AuthError::Forbidden(
            "this server is a reader (--role reader): a live tail follows writes as they arrive, which only the \
             writer sees; follow it there"
                .into(),
        ))
        .into_response();
    }
    let source = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let link = matches!(access, Access::SignedLink);
    if let Err(why) = browser_check(&method, request.headers(), &guard.browsers, link) {
        let response = ApiError::new(StatusCode::FORBIDDEN, why.clone()).into_response();
        // Refused before anyone is known: audited as unauthenticated.
        guard.audit.record(AuditEntry {
            actor: "unauthenticated".into(),
            source,
            interface: "http".into(),
            action: format!("{method} {}", matched.as_str()),
            target: request.uri().path().to_string(),
            outcome: outcome(response.status()).into(),
            status: response.status().as_u16(),
            detail: why,
            duration_us: started.elapsed().as_micros() as u64,
            ..AuditEntry::default()
        });
        return response;
    }
    if matches!(access, Access::Public | Access::SignedLink) {
        // Public routes that check credentials themselves (the login, a
        // signed link) say whom and what to audit in their response.
        let mut response = next.run(request).await;
        if let Some(note) = response.extensions_mut().remove::<AuditNote>() {
            let who = response.extensions_mut().remove::<Principal>();
            let detail = response.extensions_mut().remove::<ErrorNote>().map(|n| n.0).unwrap_or_default();
            let status = response.status();
            guard.audit.record(AuditEntry {
                actor: note
                    .actor
                    .clone()
                    .or_else(|| who.as_ref().map(|p| p.name.clone()))
                    .unwrap_or_else(|| "unauthenticated".to_string()),
                role: who.as_ref().map(|p| p.role.name.clone()).unwrap_or_default(),
                source,
                interface: "http".into(),
                action: format!("{method} {}", matched.as_str()),
                target: note.target.unwrap_or_else(|| request_path(&matched)),
                outcome: outcome(status).into(),
                status: status.as_u16(),
                detail,
                duration_us: started.elapsed().as_micros() as u64,
                rows: note.rows,
                ..AuditEntry::default()
            });
        }
        return response;
    }
    let entry = |who: Option<&Principal>, status: StatusCode, detail: String, note: AuditNote| AuditEntry {
        actor: who.map_or_else(|| "unauthenticated".to_string(), |p| p.name.clone()),
        role: who.map(|p| p.role.name.clone()).unwrap_or_default(),
        source: source.clone(),
        interface: "http".into(),
        action: format!("{method} {}", matched.as_str()),
        target: note.target.unwrap_or_else(|| request_path(&matched)),
        outcome: outcome(status).into(),
        status: status.as_u16(),
        detail,
        duration_us: started.elapsed().as_micros() as u64,
        rows: note.rows,
        ..AuditEntry::default()
    };
    let path = request.uri().path().to_string();
    // Alertmanager's API answers errors as bare strings (see
    // `alertmanager_api`); InfluxDB's /api/v2/write is not part of it.
    let alertmanager = ["/api/v2/alerts", "/api/v2/silence", "/api/v2/status", "/api/v2/receivers"]
        .iter()
        .any(|p| path.starts_with(p));
    let denied = |who: Option<&Principal>, e: AuthError| {
        let message = e.to_string();
        let response = auth_error_shaped(e, alertmanager);
        let note = AuditNote { target: Some(path.clone()), ..AuditNote::default() };
        guard.audit.record(entry(who, response.status(), message, note));
        response
    };
    let who = match http_credentials(request.headers(), &path, request.uri().query()) {
        Ok(c) if c.is_password() => {
            // Argon2 takes tens of milliseconds: not on the async workers.
            let auth = Arc::clone(&guard.auth);
            tokio::task::spawn_blocking(move || auth.authenticate(&c))
                .await
                .unwrap_or_else(|e| Err(AuthError::Unauthenticated(format!("authentication failed: {e}"))))
        }
        Ok(c) => guard.auth.authenticate(&c),
        Err(e) => Err(e),
    };
    let who = match who {
        Ok(who) => who,
        Err(e) => return denied(None, e),
    };
    if let Access::Requires(p) = access
        && let Err(e) = who.require(p)
    {
        return denied(Some(&who), e);
    }
    request.extensions_mut().insert(who.clone());
    let mut response = next.run(request).await;
    // Writes of data are not audited one by one, but their refusals by
    // authority are (a database outside the token's scope). Bad or
    // oversized bodies and a full disk are the metrics' to count.
    let refused_write = matches!(access, Access::Requires(Permission::Write))
        && matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if audited(&method, access) || refused_write {
        let note = response.extensions_mut().remove::<AuditNote>().unwrap_or_default();
        let detail = response.extensions_mut().remove::<ErrorNote>().map(|n| n.0).unwrap_or_default();
        let note = AuditNote { target: note.target.or(Some(path)), ..note };
        guard.audit.record(entry(Some(&who), response.status(), detail, note));
    }
    response
}

fn request_path(matched: &MatchedPath) -> String {
    matched.as_str().to_string()
}

/// The access each gRPC method needs, by its path (`/package.Service/Method`);
/// `None` for a method Tocsin does not know, which the guard refuses.
pub(crate) fn grpc_access(path: &str) -> Option<Access> {
    use Permission::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let access = match (service, method) {
        ("tocsin.v1.Ingest", "WriteSeries" | "WriteRows" | "WriteLogs" | "WriteStream") => Access::Requires(Write),
        ("tocsin.v1.Ingest", "Tail") => Access::Requires(Tail),
        ("opentelemetry.proto.collector.metrics.v1.MetricsService", "Export")
        | ("opentelemetry.proto.collector.logs.v1.LogsService", "Export")
        | ("opentelemetry.proto.collector.trace.v1.TraceService", "Export") => Access::Requires(Write),
        // The handshake is how a Flight SQL client logs in; it checks the
        // credentials itself.
        ("arrow.flight.protocol.FlightService", "Handshake") => Access::Public,
        // Statements: each table is checked against the caller when the
        // statement is planned (reads need query, INSERT needs write).
        (
            "arrow.flight.protocol.FlightService",
            "ListFlights" | "GetFlightInfo" | "PollFlightInfo" | "GetSchema" | "DoGet" | "DoPut" | "DoExchange"
            | "DoAction" | "ListActions",
        ) => Access::Statements,
        _ => return None,
    };
    Some(access)
}

/// Wraps every gRPC service: see the module's documentation.
#[derive(Clone)]
pub(crate) struct GrpcGuardLayer {
    pub(crate) auth: Arc<Auth>,
    pub(crate) audit: Arc<AuditLog>,
    /// `--role reader`: writes and live tails are refused.
    pub(crate) reader: bool,
}

impl<S> tower_layer::Layer<S> for GrpcGuardLayer {
    type Service = GrpcGuard<S>;

    fn layer(&self, inner: S) -> GrpcGuard<S> {
        GrpcGuard { inner, auth: Arc::clone(&self.auth), audit: Arc::clone(&self.audit), reader: self.reader }
    }
}

#[derive(Clone)]
pub(crate) struct GrpcGuard<S> {
    inner: S,
    auth: Arc<Auth>,
    audit: Arc<AuditLog>,
    reader: bool,
}

/// What the gRPC guard decided before authenticating.
enum GrpcCheck {
    /// Refused already (unknown method, unreadable metadata).
    Refused(tonic::Status),
    /// Anyone may call it.
    Public,
    /// Authenticate these (or audit why they could not be read) and
    /// require that.
    Authenticate(Result<Credentials, AuthError>, Access),
}

impl<S> GrpcGuard<S> {
    fn precheck(request: &axum::http::Request<tonic::body::Body>, reader: bool) -> GrpcCheck {
        let path = request.uri().path();
        let Some(access) = grpc_access(path) else {
            // Not a method Tocsin serves (a health probe, reflection): the
            // answer a server without it gives.
            tracing::debug!(path, "unknown gRPC method");
            return GrpcCheck::Refused(tonic::Status::unimplemented(format!("{path} is not served here")));
        };
        if reader && matches!(access, Access::Requires(Permission::Write | Permission::Tail)) {
            return GrpcCheck::Refused(tonic::Status::permission_denied(format!(
                "this server is a reader (--role reader): it answers queries from the writer's copy and refuses \
                 {path} (writes, and live tails, which follow writes as they arrive); send it to the writer"
            )));
        }
        if access == Access::Public {
            return GrpcCheck::Public;
        }
        let credentials = match request.headers().get(header::AUTHORIZATION) {
            Some(v) => v
                .to_str()
                .map_err(|_| AuthError::Unauthenticated("the authorization metadata is not text".into()))
                .and_then(Credentials::from_authorization),
            None => Ok(Credentials::None),
        };
        GrpcCheck::Authenticate(credentials, access)
    }
}

/// Checks the caller of one gRPC request; on success the principal is in
/// the request's extensions.
fn grpc_finish(
    auth: &Auth,
    audit: &AuditLog,
    request: &mut axum::http::Request<tonic::body::Body>,
    credentials: Result<Credentials, AuthError>,
    access: Access,
) -> Result<(), tonic::Status> {
    let path = request.uri().path().to_string();
    let denied = |who: Option<&Principal>, e: AuthError| {
        let status = grpc_status(e);
        audit.record(AuditEntry {
            actor: who.map_or_else(|| "unauthenticated".to_string(), |p| p.name.clone()),
            role: who.map(|p| p.role.name.clone()).unwrap_or_default(),
            source: grpc_source(request.extensions()),
            interface: "grpc".into(),
            action: path.clone(),
            target: path.clone(),
            outcome: "denied".into(),
            status: if status.code() == tonic::Code::Unauthenticated { 401 } else { 403 },
            detail: status.message().to_string(),
            ..AuditEntry::default()
        });
        status
    };
    let who = match credentials.and_then(|c| auth.authenticate(&c)) {
        Ok(who) => who,
        Err(e) => return Err(denied(None, e)),
    };
    if let Access::Requires(p) = access
        && let Err(e) = who.require(p)
    {
        return Err(denied(Some(&who), e));
    }
    request.extensions_mut().insert(who);
    Ok(())
}

/// The client's address of a gRPC request, when known.
pub(crate) fn grpc_source(extensions: &axum::http::Extensions) -> String {
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// `UNAUTHENTICATED`, `PERMISSION_DENIED`, ...
pub(crate) fn grpc_status(e: AuthError) -> tonic::Status {
    tocsin_ingest::errors::grpc_status(&e)
}

type GrpcResponse = axum::http::Response<tonic::body::Body>;

/// Who made a gRPC call, kept to audit its answer.
struct CallInfo {
    who: Option<Principal>,
    source: String,
    path: String,
}

impl CallInfo {
    fn of(request: &axum::http::Request<tonic::body::Body>) -> CallInfo {
        CallInfo {
            who: request.extensions().get::<Principal>().cloned(),
            source: grpc_source(request.extensions()),
            path: request.uri().path().to_string(),
        }
    }

    /// Audits a call the service itself refused for authority (a database
    /// outside the token's scope: `PERMISSION_DENIED` in a trailers-only
    /// answer), as the guard audits its own refusals; and a Flight ticket
    /// that does not even decode, or decodes to no ticket Tocsin issues,
    /// which arrow-flight refuses before Tocsin's `DoGet` (which audits
    /// every ticket it opens) sees it.
    fn audit_refusal(self, audit: &AuditLog, response: &GrpcResponse) {
        let Some(code) = response.headers().get("grpc-status").map(|s| s.as_bytes().to_vec()) else { return };
        let detail = response
            .headers()
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        let flight = self.path.starts_with("/arrow.flight.protocol.");
        let (outcome, status) = match code.as_slice() {
            b"7" => ("denied", 403),
            b"3" if flight && self.path.ends_with("/DoGet") && detail.starts_with("DecodeError") => ("error", 400),
            // A ticket that decodes to no ticket Tocsin issues (empty, or
            // another Flight SQL command): arrow-flight's own answer.
            b"12" if flight && self.path.ends_with("/DoGet") => ("error", 400),
            _ => return,
        };
        audit.record(AuditEntry {
            actor: self.who.as_ref().map_or_else(|| "unauthenticated".to_string(), |p| p.name.clone()),
            role: self.who.as_ref().map(|p| p.role.name.clone()).unwrap_or_default(),
            source: self.source,
            interface: if flight { "flight" } else { "grpc" }.into(),
            action: self.path.clone(),
            target: self.path,
            outcome: outcome.into(),
            status,
            detail,
            ..AuditEntry::default()
        });
    }
}

impl<S> tower_service::Service<axum::http::Request<tonic::body::Body>> for GrpcGuard<S>
where
    S: tower_service::Service<axum::http::Request<tonic::body::Body>, Response = GrpcResponse> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = GrpcResponse;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<GrpcResponse, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<tonic::body::Body>) -> Self::Future {
        use futures::FutureExt as _;
        let refused = |status: tonic::Status| futures::future::ready(Ok(status.into_http())).boxed();
        match Self::precheck(&request, self.reader) {
            GrpcCheck::Refused(status) => refused(status),
            GrpcCheck::Public => self.inner.call(request).boxed(),
            GrpcCheck::Authenticate(credentials, access)
                if credentials.as_ref().is_ok_and(Credentials::is_password) =>
            {
                // A password hash takes tens of milliseconds: not on the
                // async workers. The service that was made ready is taken,
                // a clone left in its place (tower's usual dance).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let (auth, audit) = (Arc::clone(&self.auth), Arc::clone(&self.audit));
                let audit_after = Arc::clone(&self.audit);
                async move {
                    let checked = tokio::task::spawn_blocking(move || {
                        let r = grpc_finish(&auth, &audit, &mut request, credentials, access);
                        (r, request)
                    })
                    .await;
                    match checked {
                        Ok((Ok(()), request)) => {
                            let info = CallInfo::of(&request);
                            let response = inner.call(request).await?;
                            info.audit_refusal(&audit_after, &response);
                            Ok(response)
                        }
                        Ok((Err(status), _)) => Ok(status.into_http()),
                        Err(e) => Ok(tonic::Status::internal(format!("authentication failed: {e}")).into_http()),
                    }
                }
                .boxed()
            }
            GrpcCheck::Authenticate(credentials, access) => {
                match grpc_finish(&self.auth, &self.audit, &mut request, credentials, access) {
                    Ok(()) => {
                        let info = CallInfo::of(&request);
                        let audit = Arc::clone(&self.audit);
                        let call = self.inner.call(request);
                        async move {
                            let response = call.await?;
                            info.audit_refusal(&audit, &response);
                            Ok(response)
                        }
                        .boxed()
                    }
                    Err(status) => refused(status),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_method_served_declares_its_access() {
        for path in tocsin_proto::GRPC_METHODS {
            assert!(grpc_access(path).is_some(), "{path} has no declared access");
        }
        for m in [
            "Handshake",
            "ListFlights",
            "GetFlightInfo",
            "PollFlightInfo",
            "GetSchema",
            "DoGet",
            "DoPut",
            "DoExchange",
            "DoAction",
            "ListActions",
        ] {
            assert!(grpc_access(&format!("/arrow.flight.protocol.FlightService/{m}")).is_some(), "{m}");
        }
        assert_eq!(grpc_access("/tocsin.v1.Ingest/DropEverything"), None);
        assert_eq!(grpc_access("/grpc.reflection.v1.ServerReflection/Info"), None);
        assert_eq!(grpc_access("garbage"), None);
    }

    /// Routes are added through [`Routes`] only, so none can miss the guard
    /// (which also refuses any matched route its table does not name).
    #[test]
    fn no_route_is_added_outside_the_guarded_table() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).expect("server/src") {
            let path = entry.expect("entry").path();
            if path.file_name().is_some_and(|n| n == "guard.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for needle in [".route(", ".nest(", ".route_service(", ".nest_service(", "Router::new()"] {
                assert!(!text.contains(needle), "{} adds a route with {needle} outside guard::Routes", path.display());
            }
            files += 1;
        }
        assert!(files > 5, "the scan found the sources");
    }

    #[test]
    fn pages_of_other_sites_cannot_drive_the_server() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
            }
            m
        };
        let post = Method::POST;
        let policy = |loopback_only: bool| BrowserPolicy { loopback_only, own_origin: None };
        let ok = |m: &Method, headers: HeaderMap, loopback: bool| {
            browser_check(m, &headers, &policy(loopback), false).is_ok()
        };
        // A signed link's form: no token needed, but no other site may post it.
        let link_form = [
            ("host", "tocsin.example"),
            ("content-type", "application/x-www-form-urlencoded"),
            ("user-agent", "Mozilla/5.0"),
        ];
        assert!(browser_check(&Method::POST, &h(&link_form), &policy(false), true).is_ok());
        let mut foreign = h(&link_form);
        foreign.insert(header::ORIGIN, "https://evil.example".parse().expect("value"));
        assert!(
            browser_check(&Method::POST, &foreign, &policy(false), true).is_err(),
            "another site's page posting a link"
        );
        let mut own = h(&link_form);
        own.insert(header::ORIGIN, "https://tocsin.example".parse().expect("value"));
        assert!(browser_check(&Method::POST, &own, &policy(false), true).is_ok(), "the link's own page");
        // Behind a proxy that rewrites Host (nginx's default): the page's
        // origin is the external URL's.
        let mut proxied = h(&link_form);
        proxied.insert(header::HOST, "127.0.0.1:4318".parse().expect("value"));
        proxied.insert(header::ORIGIN, "https://tocsin.example".parse().expect("value"));
        assert!(browser_check(&Method::POST, &proxied, &policy(false), true).is_err());
        let behind = BrowserPolicy::new(false, "https://tocsin.example/");
        assert_eq!(behind.own_origin.as_deref(), Some("https://tocsin.example"));
        assert!(browser_check(&Method::POST, &proxied, &behind, true).is_ok(), "the external URL's own page");
        let mut plain = proxied.clone();
        plain.insert(header::ORIGIN, "http://tocsin.example".parse().expect("value"));
        assert!(browser_check(&Method::POST, &plain, &behind, true).is_err(), "another scheme is another origin");
        assert!(browser_check(&Method::POST, &foreign, &behind, true).is_err());
        assert!(ok(&post, h(&[("host", "localhost:4318"), ("content-type", "application/json")]), true));
        assert!(ok(&post, h(&[("host", "127.0.0.1:4318"), ("origin", "http://127.0.0.1:4318")]), true));
        assert!(!ok(&post, h(&[("host", "127.0.0.1:4318"), ("origin", "https://evil.example")]), true));
        assert!(!ok(&post, h(&[("host", "127.0.0.1:4318"), ("origin", "null")]), true));
        // DNS rebinding: evil.example resolved to 127.0.0.1.
        assert!(!ok(&Method::GET, h(&[("host", "evil.example:4318")]), true));
        assert!(ok(&Method::GET, h(&[("host", "evil.example:4318")]), false), "with auth on, tokens protect");
        assert!(ok(&Method::GET, h(&[("host", "[::1]:4318")]), true));
        let form = [("host", "localhost"), ("content-type", "text/plain;charset=UTF-8"), ("user-agent", "Mozilla/5.0")];
        assert!(!ok(&post, h(&form), true), "a browser's simple POST without a token");
        let mut with_token = h(&form);
        with_token.insert(header::AUTHORIZATION, "Bearer x".parse().expect("value"));
        assert!(ok(&post, with_token, true));
        assert!(ok(
            &post,
            h(&[("host", "localhost"), ("content-type", "text/plain"), ("user-agent", "Telegraf")]),
            true
        ));
    }

    #[test]
    fn influx_v1_parameters_are_decoded() {
        let h = HeaderMap::new();
        let c = http_credentials(&h, "/write", Some("db=x&u=me&p=a%2Bb+c")).expect("parsed");
        assert_eq!(c, Credentials::Basic { user: "me".into(), password: "a+b c".into() });
        assert_eq!(http_credentials(&h, "/api/v1/sql", Some("p=x")).expect("parsed"), Credentials::None);
    }
}
