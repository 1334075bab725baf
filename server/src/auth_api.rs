//! Token management over HTTP (what `tocsin token ...` calls):
//! `POST /api/v1/tokens`, `GET /api/v1/tokens`, `DELETE /api/v1/tokens/{id}`.
//! All need the `users` permission.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tocsin_auth::{Principal, TokenRecord};

use crate::guard::{AuditNote, Routes};
use crate::http::{ApiError, AppState};

pub(crate) fn routes(r: Routes<AppState>) -> Routes<AppState> {
    use tocsin_auth::Access::Requires;
    use tocsin_auth::Permission::Users;
    r.post("/api/v1/tokens", Requires(Users), create).get("/api/v1/tokens", Requires(Users), list).delete(
        "/api/v1/tokens/{id}",
        Requires(Users),
        revoke,
    )
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
    response.extensions_mut().insert(AuditNote { target: Some(target), rows: None });
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
