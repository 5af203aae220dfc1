//! Health, version and metrics routes: `/api/echo`, `/ready`, `/api/status/buildinfo`,
//! `/metrics`.

use super::AppState;
use actix_web::{web, HttpResponse};
use serde::Serialize;

/// The Tempo version we answer as. Grafana enables features (streaming, v2 traces) by semver;
/// 2.9.0 opens every gate it checks.
pub const TEMPO_COMPAT_VERSION: &str = "2.9.0";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::get("/api/echo", echo))
        .service(super::get("/ready", ready))
        .service(super::get("/api/status/buildinfo", buildinfo))
        .service(super::get("/metrics", metrics));
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(crate::metrics::metrics().render())
}

async fn echo() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("echo\n")
}

async fn ready(state: web::Data<AppState>) -> HttpResponse {
    match state.store.ping().await {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body("ready\n"),
        Err(e) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body(format!("{} store not ready: {e}\n", state.store.kind())),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BuildInfo {
    version: &'static str,
    revision: String,
    branch: &'static str,
    build_user: &'static str,
    build_date: &'static str,
    go_version: &'static str,
}

async fn buildinfo() -> HttpResponse {
    HttpResponse::Ok().json(BuildInfo {
        version: TEMPO_COMPAT_VERSION,
        revision: format!("{}-{}", env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION")),
        branch: "main",
        build_user: "deepflow-tempo",
        build_date: "unknown",
        go_version: "none (rust)",
    })
}
