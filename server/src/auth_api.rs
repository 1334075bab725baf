//! Tokens, users and logins over HTTP (what `tocsin token ...`, `tocsin
//! user ...` and `tocsin login` call):
//!
//! - `POST /api/v1/tokens`, `GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`
//!   and `POST /api/v1/users`, `GET /api/v1/users`,
//!   `DELETE /api/v1/users/{name}`: the `users` permission.
//! - `POST /api/v1/users/{name}/password` `{"password": ..., "current": ...}`:
//!   the `users` permission, or the user themself with the current password.
//! - `POST /api/v1/login` (public): a user's name and password, as
//!   `Authorization: Basic` or JSON `{"user": ..., "password": ...}`, give a
//!   session token; `POST /api/v1/logout` ends the session presented.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tocsin_auth::{AuthError, Credentials, Principal, TokenRecord, UserRecord};

use crate::alerts_api::parse_json;
use crate::guard::{AuditNote, ErrorNote, Routes};
use crate::http::{ApiError, AppState};

pub(crate) fn routes(r: Routes<AppState>) -> Routes<AppState> {
    use tocsin_auth::Access::{Authenticated, Public, Requires};
    use tocsin_auth::Permission::Users;
    r.post("/api/v1/tokens", Requires(Users), create)
        .get("/api/v1/tokens", Requires(Users), list)
        .delete("/api/v1/tokens/{id}", Requires(Users), revoke)
        .post("/api/v1/users", Requires(Users), create_user)
        .get("/api/v1/users", Requires(Users), list_users)
        .delete("/api/v1/users/{name}", Requires(Users), delete_user)
        .post("/api/v1/users/{name}/password", Authenticated, set_password)
        .post("/api/v1/login", Public, login)
        .post("/api/v1/logout", Authenticated, logout)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    role: String,
    #[serde(default)]
    database: Option<String>,
    /// `30d`, `12h`, ...; none: never.
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    description: String,
}

/// A token's record as shown: never its hash.
fn shown(r: &TokenRecord, now_secs: u64) -> serde_json::Value {
    json!({
        "id": r.id,
        "role": r.role,
        "database": r.database,
        "description": r.description,
        "created_by": r.created_by,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "revoked_at": r.revoked_at,
        "active": r.is_active(now_secs),
    })
}

fn now_secs() -> u64 {
    u64::try_from(tocsin_storage::now_ns() / 1_000_000_000).unwrap_or(0)
}

async fn create(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(r#"request body must be JSON like {{"role": "viewer", "expires": "30d"}}: {e}"#))
    })?;
    let expires = req
        .expires
        .as_deref()
        .map(crate::config::parse_duration)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("expires: {e}")))?;
    let (record, token) = app.auth.create_token(&who, &req.role, req.database, expires, &req.description)?;
    tracing::info!(by = %who.name, id = %record.id, role = %record.role, "token created");
    let mut body = shown(&record, now_secs());
    body["token"] = json!(token);
    let mut response = (StatusCode::CREATED, axum::Json(body)).into_response();
    let target =
        format!("token {} role {} database {}", record.id, record.role, record.database.as_deref().unwrap_or("*"));
    response.extensions_mut().insert(AuditNote { target: Some(target), ..AuditNote::default() });
    Ok(response)
}

async fn list(State(app): State<AppState>) -> Response {
    let now = now_secs();
    let tokens: Vec<serde_json::Value> = app.auth.tokens().iter().map(|r| shown(r, now)).collect();
    axum::Json(json!({ "tokens": tokens })).into_response()
}

async fn revoke(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = app.auth.revoke_token(&id)?;
    tracing::info!(by = %who.name, id = %record.id, "token revoked");
    Ok(axum::Json(shown(&record, now_secs())).into_response())
}

/// A user as shown: never the password hash.
fn shown_user(u: &UserRecord) -> serde_json::Value {
    json!({
        "name": u.name,
        "role": u.role,
        "database": u.database,
        "created_by": u.created_by,
        "created_at": u.created_at,
        "password_set_at": u.password_set_at,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    name: String,
    password: String,
    role: String,
    #[serde(default)]
    database: Option<String>,
}

/// Runs a password hash off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, AuthError> + Send + 'static) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(format!("password hashing failed: {e}"))),
    }
}

fn noted(mut response: Response, target: String) -> Response {
    response.extensions_mut().insert(AuditNote { target: Some(target), ..AuditNote::default() });
    response
}

async fn create_user(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: CreateUser = parse_json(&body, r#"{"name": "alice", "password": "...", "role": "viewer"}"#)?;
    let auth = std::sync::Arc::clone(&app.auth);
    let by = who.clone();
    let record = blocking(move || auth.create_user(&by, &req.name, &req.password, &req.role, req.database)).await?;
    tracing::info!(by = %who.name, user = %record.name, role = %record.role, "user created");
    let target =
        format!("user {} role {} database {}", record.name, record.role, record.database.as_deref().unwrap_or("*"));
    Ok(noted((StatusCode::CREATED, axum::Json(shown_user(&record))).into_response(), target))
}

async fn list_users(State(app): State<AppState>) -> Response {
    let users: Vec<serde_json::Value> = app.auth.users().iter().map(shown_user).collect();
    axum::Json(json!({ "users": users })).into_response()
}

async fn delete_user(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let record = app.auth.delete_user(&who, &name)?;
    tracing::info!(by = %who.name, user = %record.name, "user deleted");
    Ok(noted(axum::Json(shown_user(&record)).into_response(), format!("user {}", record.name)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
    /// The caller's current password, when changing their own.
    #[serde(default)]
    current: Option<String>,
}

async fn set_password(
    State(app): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Who may, before what: someone else's password route tells nothing
    // about the body it would take.
    app.auth.may_set_password(&who, &name)?;
    let req: NewPassword = parse_json(&body, r#"{"password": "..."}"#)?;
    let auth = std::sync::Arc::clone(&app.auth);
    let (by, user) = (who.clone(), name.clone());
    let record = blocking(move || auth.set_password(&by, &user, &req.password, req.current.as_deref())).await?;
    tracing::info!(by = %who.name, user = %record.name, "password set");
    Ok(noted(axum::Json(shown_user(&record)).into_response(), format!("password of user {}", record.name)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

/// Public: checks the credentials itself and tells the guard what to audit
/// (the user named, success or failure).
async fn login(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let from_header = headers.get(header::AUTHORIZATION).map(|v| {
        v.to_str()
            .map_err(|_| AuthError::Unauthenticated("the Authorization header is not text".into()))
            .and_then(Credentials::from_authorization)
    });
    let (user, password) = match from_header {
        Some(Ok(Credentials::Basic { user, password })) => (user, password),
        Some(Ok(_)) => {
            return ApiError::bad_request("log in with Basic authorization (a user and password)").into_response();
        }
        Some(Err(e)) => return crate::guard::auth_error(e),
        None if body.is_empty() => {
            return ApiError::bad_request(
                r#"send the user and password as Basic authorization or JSON {"user": ..., "password": ...}"#,
            )
            .into_response();
        }
        None => match parse_json::<Login>(&body, r#"{"user": "alice", "password": "..."}"#) {
            Ok(l) => (l.user, l.password),
            Err(e) => return e.into_response(),
        },
    };
    let target = format!("user {}", tocsin_auth::shown_user(&user));
    let auth = std::sync::Arc::clone(&app.auth);
    let result = tokio::task::spawn_blocking(move || auth.login(&user, &password))
        .await
        .unwrap_or_else(|e| Err(AuthError::Unauthenticated(format!("login failed: {e}"))));
    match result {
        Ok((who, token, expires_at)) => {
            tracing::info!(user = %who.name, "login");
            let body = json!({ "user": who.name, "role": who.role.name, "token": token, "expires_at": expires_at });
            let mut response = noted(axum::Json(body).into_response(), target);
            response.extensions_mut().insert(who);
            response
        }
        Err(e) => {
            let message = e.to_string();
            let mut response = noted(crate::guard::auth_error(e), target);
            response.extensions_mut().insert(ErrorNote(message));
            response
        }
    }
}

/// Ends the session whose token the request carries.
async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Credentials::from_authorization(v).ok());
    match token {
        Some(Credentials::Token(t)) if app.auth.logout(&t) => Ok(StatusCode::NO_CONTENT.into_response()),
        _ => Err(ApiError::bad_request(
            "only a session token from /api/v1/login is logged out; API tokens are revoked with `tocsin token revoke`",
        )),
    }
}
