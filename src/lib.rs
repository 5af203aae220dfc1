//! deepflow-tempo: Grafana Tempo's query API over DeepFlow's auto-tracing.
//!
//! Layering: `api` (HTTP handlers) → `query` (services) → pure engines (`autotrace`, `traceql`) → `store` (the
//! `FlowStore` trait over ClickHouse or the embedded SQLite store). `config` and `server` wire
//! the process; `load` imports rows; `metrics` owns the metrics registry that the HTTP
//! middleware, the metered store and the services record into.

pub mod api;
pub mod autotrace;
pub mod blindspots;
pub mod config;
pub mod demo;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod load;
pub mod metrics;
pub mod query;
pub mod server;
pub mod span;
pub mod store;
pub mod synth;
pub mod tempo;
pub mod traceql;
