//! HTTP handlers (actix-web): parse the request, call the service, encode the answer. Nothing
//! else: no SQL, no tracing logic.

pub mod health;

use crate::store::SharedStore;
use actix_web::web;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: SharedStore,
}

/// Register every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    health::configure(cfg);
}
