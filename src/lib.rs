//! deepflow-tempo: Grafana Tempo's query API over DeepFlow's auto-tracing.
//!
//! Layering: `api` (HTTP handlers) → `service` → pure engines (`autotrace`) → `store` (the
//! `FlowStore` trait over ClickHouse or the embedded SQLite store).

pub mod autotrace;
pub mod store;
