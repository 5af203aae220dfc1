//! Process wiring: open the configured store, build the actix-web server.

use crate::api::{self, AppState};
use crate::config::Config;
use crate::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use crate::store::sqlite::{Access, SqliteStore};
use crate::store::{SharedStore, StoreKind, StoreResult};
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Open the store the configuration names. The embedded store creates its file and schema;
/// ClickHouse is only connected (nothing is created there).
pub async fn open_store(cfg: &Config) -> StoreResult<SharedStore> {
    open_store_for(cfg, Access::ReadWrite).await
}

/// [`open_store`] for a command that only reads (`trace`) when `access` is
/// [`Access::ReadOnly`]: the embedded file must exist and is never locked for writing.
pub async fn open_store_for(cfg: &Config, access: Access) -> StoreResult<SharedStore> {
    Ok(match cfg.store {
        StoreKind::Embedded => Arc::new(
            SqliteStore::open_with(&cfg.embedded.path, cfg.embedded.max_rows, access).await?,
        ),
        StoreKind::Clickhouse => Arc::new(ClickHouseStore::new(clickhouse_settings(cfg))?),
    })
}

pub fn clickhouse_settings(cfg: &Config) -> ClickHouseSettings {
    ClickHouseSettings {
        url: cfg.clickhouse.url.clone(),
        user: cfg.clickhouse.user.clone(),
        password: cfg.clickhouse.password.clone(),
        database: cfg.clickhouse.database.clone(),
        dictionary_database: cfg.clickhouse.dictionary_database.clone(),
        timeout: Duration::from_secs(cfg.clickhouse.timeout),
        max_rows: cfg.clickhouse.max_rows,
    }
}

/// The handlers' state for a configuration and an opened store, which is put behind the query
/// slots of `limits` (`store::guard`).
pub fn app_state(cfg: &Config, store: SharedStore) -> AppState {
    // Slots outside the meter: the store-latency metric does not include queue wait.
    let store = crate::store::metered::MeteredStore::wrap(store);
    let store = crate::store::guard::QuerySlots::wrap(store, &cfg.limits);
    let tracer = crate::query::trace::TraceService::new(store.clone(), cfg.tracing.clone());
    let tempo =
        crate::query::trace::TempoService::new(tracer, cfg.tempo.clone(), cfg.cache.clone());
    AppState {
        store,
        tempo: Arc::new(tempo),
        search: cfg.search.clone(),
        limits: cfg.limits.clone(),
        auth: cfg.auth.clone(),
        tenancy: cfg.tenancy.clone(),
    }
}

/// Bind the HTTP server on `listen` (port 0 picks a free one) and return it unstarted with
/// the addresses it bound.
pub fn bind(
    state: AppState,
    listen: &str,
) -> std::io::Result<(actix_web::dev::Server, Vec<SocketAddr>)> {
    let limits = state.limits.clone();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        // The last wrap is the outermost: request id → metrics → auth → handlers.
        App::new()
            .app_data(data.clone())
            .configure(|c| api::guard::configure(c, &limits))
            .wrap(from_fn(api::guard::rejections))
            .wrap(actix_web::middleware::Compress::default())
            .wrap(from_fn(api::auth::require_credentials))
            .wrap(from_fn(api::observe::http_metrics))
            .wrap(from_fn(api::observe::request_context))
            .configure(api::configure)
    })
    .h1_allow_half_closed(api::guard::ALLOW_HALF_CLOSED)
    .bind(listen)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}
