//! HTTP handlers (actix-web): parse the request, call the service, encode the answer. Nothing
//! else: no SQL, no tracing logic.

pub mod deepflow;
pub mod health;
pub mod search;
pub mod tempo;

use crate::error::ApiError;
use crate::service::TempoService;
use crate::store::model::OrgId;
use crate::store::SharedStore;
use actix_web::{web, HttpRequest};
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub tempo: Arc<TempoService>,
    pub search: crate::search::SearchConfig,
}

/// Register every route, and the answer for requests none of them serves.
pub fn configure(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    deepflow::configure(cfg);
    tempo::configure(cfg);
    search::configure(cfg);
    cfg.default_service(web::to(no_route));
}

/// Longest part of a request path quoted back in a 404.
const SHOWN_PATH: usize = 200;

/// A request no route serves (unknown path, or a known path under another method): a 404 with a
/// message, where actix-web's default has no body.
async fn no_route(req: HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    let path = req.path();
    let mut end = path.len().min(SHOWN_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < path.len() { "…" } else { "" };
    Err(ApiError::NotFound(format!(
        "no route for {} {}{more}",
        req.method(),
        &path[..end]
    )))
}

/// Whether the client asked for protobuf (`Accept` contains `application/protobuf`).
pub fn wants_protobuf(req: &HttpRequest) -> bool {
    req.headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/protobuf"))
}

/// Answer 200 with `msg` as protobuf when the client asks for it, else with its JSON form.
pub fn negotiate(
    req: &HttpRequest,
    msg: &impl prost::Message,
    json: impl FnOnce() -> String,
) -> actix_web::HttpResponse {
    if wants_protobuf(req) {
        actix_web::HttpResponse::Ok()
            .content_type("application/protobuf")
            .body(msg.encode_to_vec())
    } else {
        actix_web::HttpResponse::Ok()
            .content_type("application/json")
            .body(json())
    }
}

/// The organisation a request reads: DeepFlow's `X-Org-Id`, else a numeric Tempo tenant
/// (`X-Scope-OrgID`), else the default organisation. Non-numeric Tempo tenants (such as
/// Grafana's "single-tenant") read the default organisation.
pub fn org_of(req: &HttpRequest) -> Result<OrgId, ApiError> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    // An X-Org-Id that is not visible ASCII names no organisation: refused, not ignored
    // (ignoring it would read the default organisation).
    if let Some(raw) = req.headers().get("x-org-id") {
        if raw.to_str().is_err() {
            return Err(ApiError::BadRequest(
                "X-Org-Id: invalid organisation id: not visible ASCII".into(),
            ));
        }
    }
    if let Some(v) = header("x-org-id").filter(|v| !v.is_empty()) {
        return v
            .parse()
            .map_err(|e: String| ApiError::BadRequest(format!("X-Org-Id: {e}")));
    }
    match header("x-scope-orgid") {
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => v
            .parse()
            .map_err(|e: String| ApiError::BadRequest(format!("X-Scope-OrgID: {e}"))),
        _ => Ok(OrgId::DEFAULT),
    }
}
