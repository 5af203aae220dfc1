//! Health, version and metrics routes: `/api/echo`, `/ready`, `/api/status/buildinfo`,
//! `/metrics`.

use super::AppState;
use actix_web::{web, HttpResponse};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once the process is shutting down: `/ready` then answers 503 so a load balancer
/// sends no new work while in-flight requests finish.
#[derive(Debug, Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

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

async fn ready(state: web::Data<AppState>, draining: Option<web::Data<Draining>>) -> HttpResponse {
    if draining.is_some_and(|d| d.is_draining()) {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body("shutting down: draining in-flight requests\n");
    }
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
