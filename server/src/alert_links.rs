//! The ack and silence links of notifications (see
//! `tocsin_alerting::links`): `GET` shows the alert and a button, `POST`
//! (the button) acts. A `GET` never acts: mail scanners and chat robots
//! open the links they see, and must not acknowledge a page for the person
//! it was meant for. Every action and every refused link is audited with
//! the receiver the link was sent to (`link:<receiver>`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use tocsin_alerting::links::{Link, LinkAction, LinkError, Presented, SILENCE_FOR};
use tocsin_alerting::notify::html_escape;
use tocsin_alerting::{AlertEngine, EngineError};

use crate::guard::{AuditNote, ErrorNote, Routes};
use crate::http::AppState;

pub(crate) fn routes(r: Routes<AppState>) -> Routes<AppState> {
    use tocsin_auth::Access::SignedLink;
    r.get("/api/v1/alerts/{id}/link", SignedLink, show).post("/api/v1/alerts/{id}/link", SignedLink, act)
}

#[derive(Debug)]
struct LinkQuery {
    action: String,
    receiver: String,
    incident: i64,
    severity: String,
    expires: i64,
    sig: String,
}

impl LinkQuery {
    /// The link's parameters, read leniently: a damaged link (a number cut
    /// short by a mail client, a parameter twice) gets the refusal page
    /// that names what is wrong, not a bare 400.
    fn read(pairs: &[(String, String)]) -> Result<LinkQuery, String> {
        let mut q = LinkQuery {
            action: String::new(),
            receiver: String::new(),
            incident: 0,
            severity: String::new(),
            expires: 0,
            sig: String::new(),
        };
        let mut seen = std::collections::HashSet::new();
        for (k, v) in pairs {
            if !seen.insert(k.as_str()) {
                return Err(format!("this link is damaged: it has {k:?} twice"));
            }
            let number = |v: &str| {
                v.parse::<i64>()
                    .map_err(|_| format!("this link is damaged: {k}={:?} is not a number", tocsin_auth::clip(v)))
            };
            match k.as_str() {
                "action" => q.action = v.clone(),
                "receiver" => q.receiver = v.clone(),
                "severity" => q.severity = v.clone(),
                "sig" => q.sig = v.clone(),
                "incident" => q.incident = number(v)?,
                "expires" => q.expires = number(v)?,
                _ => {}
            }
        }
        Ok(q)
    }

    fn presented<'a>(&'a self, alert: &'a str) -> Presented<'a> {
        Presented {
            alert,
            severity: &self.severity,
            action: &self.action,
            receiver: &self.receiver,
            incident: self.incident,
            expires: self.expires,
            sig: &self.sig,
        }
    }
}

/// A small page that reads well on a phone.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\"><meta name=\"robots\" content=\"noindex\">\
         <title>{t}</title><style>body{{font-family:sans-serif;margin:1.5em;max-width:40em}}\
         button{{font-size:1.3em;padding:.6em 1.2em}}td{{padding:.2em .6em .2em 0}}</style></head>\
         <body><h2>{t}</h2>{body}</body></html>",
        t = html_escape(title)
    );
    // Not framed by another site (a hidden frame would make the button a
    // click-jacking target), no scripts, forms post back here only.
    let headers = [
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    (status, headers, Html(html)).into_response()
}

/// The refusal page of a link that is not valid, audited.
fn refused(id: &str, action: &str, e: &LinkError) -> Response {
    let status = match e {
        LinkError::Expired { .. } | LinkError::Stale { .. } | LinkError::Severity { .. } => StatusCode::GONE,
        LinkError::Action(_) | LinkError::Signature { .. } => StatusCode::FORBIDDEN,
    };
    let mut r = page(status, "This link does not work", &format!("<p>{}</p>", html_escape(&e.to_string())));
    noted(&mut r, id, action, None, Some(e.to_string()));
    r
}

/// The refusal page for a link that cannot be read.
fn damaged(id: &str, why: &str) -> Response {
    let mut r = page(StatusCode::BAD_REQUEST, "This link does not work", &format!("<p>{}</p>", html_escape(why)));
    noted(&mut r, id, "", None, Some(why.to_string()));
    r
}

/// Adds the audit entry's target, actor and error.
fn noted(r: &mut Response, id: &str, action: &str, receiver: Option<&str>, error: Option<String>) {
    let target = format!("alert {} {}", tocsin_auth::clip(id), tocsin_auth::clip(action));
    r.extensions_mut().insert(AuditNote {
        target: Some(target),
        actor: receiver.map(|rcv| format!("link:{}", tocsin_auth::clip(rcv))),
        ..AuditNote::default()
    });
    if let Some(e) = error {
        r.extensions_mut().insert(ErrorNote(e));
    }
}

/// The alert's name, severity, state and labels, as a table.
fn describe(alert: &serde_json::Value) -> String {
    let mut rows = String::new();
    let mut row = |k: &str, v: &str| {
        rows.push_str(&format!("<tr><td>{}</td><td><b>{}</b></td></tr>", html_escape(k), html_escape(v)));
    };
    for key in ["alertname", "state", "severity"] {
        row(key, alert[key].as_str().unwrap_or(""));
    }
    if let Some(v) = alert["value"].as_f64() {
        row("value", &tocsin_alerting::template::format_value(v));
    }
    if let Some(labels) = alert["labels"].as_object() {
        for (k, v) in labels.iter().filter(|(k, _)| !matches!(k.as_str(), "alertname" | "severity")) {
            row(k, v.as_str().unwrap_or(""));
        }
    }
    if let Some(s) = alert["annotations"]["summary"].as_str() {
        row("summary", s);
    }
    if let Some(by) = alert["ack"]["by"].as_str() {
        row("acknowledged by", by);
    }
    format!("<table>{rows}</table>")
}

/// The link presented in `pairs` for alert `id`, if it can be read and
/// holds; else the page that says why not.
fn checked(engine: &AlertEngine, id: &str, pairs: &[(String, String)]) -> Result<(LinkQuery, Link), Box<Response>> {
    let q = LinkQuery::read(pairs).map_err(|why| Box::new(damaged(id, &why)))?;
    let link = engine.check_link(&q.presented(id)).map_err(|e| Box::new(refused(id, &q.action, &e)))?;
    Ok((q, link))
}

fn verb(action: LinkAction) -> &'static str {
    match action {
        LinkAction::Ack => "Acknowledge",
        LinkAction::Silence => "Silence for 1 hour",
    }
}

/// `GET`: what the link would do, and the button that does it.
async fn show(
    State(engine): State<Arc<AlertEngine>>,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let (_, link) = match checked(&engine, &id, &pairs) {
        Ok(checked) => checked,
        Err(refusal) => return *refusal,
    };
    let Some(alert) = engine.alert(&id) else {
        return page(StatusCode::NOT_FOUND, "No such alert", "<p>The alert is gone: it resolved long ago.</p>");
    };
    let active = matches!(alert["state"].as_str(), Some("firing" | "pending"));
    let button = if active || link.action == LinkAction::Silence {
        format!("<form method=\"post\"><button type=\"submit\">{}</button></form>", verb(link.action))
    } else {
        "<p>Nothing to acknowledge: the alert is no longer firing.</p>".to_string()
    };
    page(
        StatusCode::OK,
        &format!("{}?", verb(link.action)),
        &format!("{}<p>As <b>{}</b>.</p>{button}", describe(&alert), html_escape(&link.receiver)),
    )
}

/// `POST`: acknowledges or silences, as the link says.
async fn act(
    State(engine): State<Arc<AlertEngine>>,
    Path(id): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let (q, link) = match checked(&engine, &id, &pairs) {
        Ok(checked) => checked,
        Err(refusal) => return *refusal,
    };
    let by = format!("{} (link)", link.receiver);
    let done = match link.action {
        LinkAction::Ack => engine
            .ack_from_link(&link, &by, "from the notification link")
            .await
            .map(|a| format!("<p>Acknowledged: escalation stops.</p>{}", describe(&a))),
        LinkAction::Silence => engine
            .silence_alert_once(
                &id,
                &q.sig,
                &by,
                &format!("silenced for 1 h from the notification link of alert {id}"),
                SILENCE_FOR,
            )
            .map(|(s, created)| {
                let what = if created { "Silenced" } else { "This link was used already: silenced" };
                format!(
                    "<p>{what} until {} (silence {}).</p>{}",
                    tocsin_alerting::dispatch::rfc3339(s.ends_at),
                    s.id,
                    engine.alert(&id).map(|a| describe(&a)).unwrap_or_default()
                )
            }),
    };
    // An ack waits for its record in the bucket inside the engine; a
    // silence here (under `wal = "object-store-sync"`).
    if done.is_ok() && matches!(link.action, LinkAction::Silence) {
        engine.journal_synced().await;
    }
    let (mut r, error) = match done {
        Ok(html) => (page(StatusCode::OK, "Done", &html), None),
        Err(e) => {
            let status = match &e {
                EngineError::NoSuchAlert(_) => StatusCode::NOT_FOUND,
                EngineError::BadRequest(_) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (page(status, "Not done", &format!("<p>{}</p>", html_escape(&e.to_string()))), Some(e.to_string()))
        }
    };
    noted(&mut r, &id, link.action.as_str(), Some(&link.receiver), error);
    r
}
