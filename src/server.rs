//! Process wiring: open the configured store, build the actix-web server.

pub use crate::api::health::Draining;
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
/// the addresses it bound. It handles no signals; see [`bind_with`] and [`serve_until_signal`].
pub fn bind(
    state: AppState,
    listen: &str,
) -> std::io::Result<(actix_web::dev::Server, Vec<SocketAddr>)> {
    bind_with(state, listen, Draining::default())
}

/// [`bind`] with the flag that `/ready` reports as 503 once set.
pub fn bind_with(
    state: AppState,
    listen: &str,
    draining: Draining,
) -> std::io::Result<(actix_web::dev::Server, Vec<SocketAddr>)> {
    let limits = state.limits.clone();
    let data = web::Data::new(state);
    let draining = web::Data::new(draining);
    let server = HttpServer::new({
        let limits = limits.clone();
        move || {
            // The last wrap is the outermost: request id → metrics → auth → handlers.
            App::new()
                .app_data(data.clone())
                .app_data(draining.clone())
                .configure(|c| api::guard::configure(c, &limits))
                .wrap(from_fn(api::guard::rejections))
                .wrap(actix_web::middleware::Compress::default())
                .wrap(from_fn(api::auth::require_credentials))
                .wrap(from_fn(api::observe::http_metrics))
                .wrap(from_fn(api::observe::request_context))
                .configure(api::configure)
        }
    })
    .h1_allow_half_closed(api::guard::ALLOW_HALF_CLOSED)
    // Slow or idle clients cannot hold resources: headers must arrive in time, idle
    // keep-alive connections are closed, connections per worker are capped.
    .client_request_timeout(Duration::from_millis(limits.client_request_timeout_ms))
    .client_disconnect_timeout(Duration::from_millis(limits.client_disconnect_timeout_ms))
    .keep_alive(if limits.keep_alive == 0 {
        actix_web::http::KeepAlive::Disabled
    } else {
        actix_web::http::KeepAlive::Timeout(Duration::from_secs(limits.keep_alive))
    })
    .max_connections(limits.max_connections)
    // Signals are handled by `serve_until_signal`, which first marks the server draining.
    .disable_signals()
    .shutdown_timeout(limits.shutdown_grace)
    .bind(listen)?;
    let addrs = server.addrs();
    Ok((server.run(), addrs))
}

/// Run `server` until SIGTERM or SIGINT, then shut down gracefully: `/ready` answers 503,
/// after `delay` (`limits.shutdown_delay_ms`) the listeners close, in-flight requests get `limits.shutdown_grace` seconds to finish (set on
/// the server by [`bind_with`]); past it their futures, store queries included, are dropped.
/// Returns when every worker has stopped, so the process can exit 0.
pub async fn serve_until_signal(
    server: actix_web::dev::Server,
    draining: Draining,
    delay: Duration,
) -> std::io::Result<()> {
    let handle = server.handle();
    let stopper = tokio::spawn(async move {
        let signal = wait_for_signal().await;
        draining.start();
        tracing::info!(
            signal,
            delay_ms = delay.as_millis() as u64,
            "shutting down: /ready answers 503"
        );
        tokio::time::sleep(delay).await;
        tracing::info!("no longer accepting: draining in-flight requests");
        handle.stop(true).await;
    });
    let result = server.await;
    stopper.abort();
    tracing::info!("stopped");
    result
}

/// The name of the first of SIGTERM / SIGINT received.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
