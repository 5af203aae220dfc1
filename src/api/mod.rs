//! HTTP handlers (actix-web): parse the request, call the service, encode the answer. Nothing
//! else: no SQL, no tracing logic.

pub mod auth;
pub mod deepflow;
pub mod guard;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod search;
pub mod tempo;

use crate::error::ApiError;
use crate::query::trace::TempoService;
use crate::store::model::OrgId;
use crate::store::SharedStore;
use actix_web::{web, HttpRequest};
use std::sync::Arc;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
    pub tempo: Arc<TempoService>,
    pub search: crate::query::search::SearchConfig,
    pub limits: crate::config::LimitsConfig,
    pub auth: crate::config::AuthConfig,
    pub tenancy: crate::config::TenancyConfig,
}

/// Register every route (requests none of them serves: `guard::configure`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
    deepflow::configure(cfg);
    tempo::configure(cfg);
    search::configure(cfg);
    metrics::configure(cfg);
}

/// `GET path`, served by `handler` under the request deadline ([`guard::deadline`]); other
/// methods get `405` with `Allow`. Every API route is registered through [`get`] or [`post`].
pub fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path).route(
        web::get()
            .to(handler)
            .wrap(actix_web::middleware::from_fn(guard::deadline)),
    )
}

/// `POST path` (see [`get`]).
pub fn post<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path).route(
        web::post()
            .to(handler)
            .wrap(actix_web::middleware::from_fn(guard::deadline)),
    )
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

/// The organisation a request reads ([`resolve_org`]), if `tenancy.allowed_orgs` lets it:
/// an organisation off a non-empty allow-list is a 403.
pub fn org_of(req: &HttpRequest) -> Result<OrgId, ApiError> {
    let org = resolve_org(req)?;
    let allowed = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.tenancy.allowed_orgs.as_slice())
        .unwrap_or_default();
    if allowed.is_empty() || allowed.contains(&org.0) {
        Ok(org)
    } else {
        Err(ApiError::Forbidden(format!(
            "organisation {} is not served here: tenancy.allowed_orgs does not list it \
             (the organisation comes from X-Org-Id, else a numeric X-Scope-OrgID, else 1)",
            org.0
        )))
    }
}

/// `resp` with a `Server-Timing` header (`value` as [`crate::query::trace::TraceTiming::server_timing`]
/// writes it).
pub fn with_server_timing(
    mut resp: actix_web::HttpResponse,
    value: &str,
) -> actix_web::HttpResponse {
    use actix_web::http::header::{HeaderName, HeaderValue};
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut()
            .insert(HeaderName::from_static("server-timing"), v);
    }
    resp
}

/// The organisation a request names: DeepFlow's `X-Org-Id`, else a numeric Tempo tenant
/// (`X-Scope-OrgID`), else the default organisation. Non-numeric Tempo tenants (such as
/// Grafana's "single-tenant") read the default organisation. No allow-list: see [`org_of`].
pub fn resolve_org(req: &HttpRequest) -> Result<OrgId, ApiError> {
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
