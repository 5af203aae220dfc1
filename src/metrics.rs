//! The process's metrics: owns the one registry and every metric family, and renders them in
//! the Prometheus/OpenMetrics text format for `GET /metrics`.
//!
//! Recorders live where the facts are (the HTTP middleware in `api::observe`, the metered
//! store in `store::metered`, the trace cache and the tracing loop in `service`); they call the
//! typed helpers below. This module must not read requests, stores or configuration. Every
//! label takes values from a closed set (route patterns, not raw paths), so the number of
//! series stays bounded whatever clients send.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Duration;

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name.
pub const PREFIX: &str = "deepflow_tempo";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreKindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms … about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    store_queries: Family<StoreLabels, Counter>,
    store_duration: HistogramFamily<StoreKindLabels>,
    cache_lookups: Family<CacheLabels, Counter>,
    trace_flows: Histogram,
    trace_iterations: Histogram,
    trace_store_reads: Histogram,
}

/// The process-wide metrics (created on first use).
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// An HTTP method as a label: the standard ones by name, anything else as `other`.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        _ => "other",
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (until the response head), by route pattern",
            http_duration.clone(),
        );
        let store_queries = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_queries",
            "Store operations, by kind (meta, records, distinct, ping, insert_rows, insert_names, apply_schema) and outcome (ok, unavailable, timeout, failed, invalid, not_found, overloaded)",
            store_queries.clone(),
        );
        let store_duration: HistogramFamily<StoreKindLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "store_query_duration_seconds",
            "Time of store operations, by kind",
            store_duration.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "trace_cache_lookups",
            "Trace cache lookups of trace by ID, by result (hit, miss)",
            cache_lookups.clone(),
        );
        let trace_flows = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "trace_flows",
            "Flows (spans) per assembled trace",
            trace_flows.clone(),
        );
        let trace_iterations =
            Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0]);
        registry.register(
            "trace_search_iterations",
            "Auto-tracing search iterations per assembled trace",
            trace_iterations.clone(),
        );
        let trace_store_reads = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "trace_store_reads",
            "Store reads made by auto-tracing per assembled trace",
            trace_store_reads.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            store_queries,
            store_duration,
            cache_lookups,
            trace_flows,
            trace_iterations,
            trace_store_reads,
        }
    }

    /// One answered HTTP request. `route` is the matched route pattern (or a fixed word for
    /// none), never the raw path.
    pub fn http_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let route = route.to_string();
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.clone(),
                method: method_label(method),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels { route })
            .observe(elapsed.as_secs_f64());
    }

    /// One store operation of `kind` that ended with `outcome`.
    pub fn store_query(&self, kind: &'static str, outcome: &'static str, elapsed: Duration) {
        self.store_queries
            .get_or_create(&StoreLabels { kind, outcome })
            .inc();
        self.store_duration
            .get_or_create(&StoreKindLabels { kind })
            .observe(elapsed.as_secs_f64());
    }

    /// One trace cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .get_or_create(&CacheLabels { result })
            .inc();
    }

    /// One assembled trace: its flows, search iterations and store reads.
    pub fn assembled_trace(&self, flows: usize, iterations: u32, store_reads: u32) {
        self.trace_flows.observe(flows as f64);
        self.trace_iterations.observe(iterations as f64);
        self.trace_store_reads.observe(store_reads as f64);
    }

    /// Every family in the text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a failing label encoder would be a bug here.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_labels() {
        let m = Metrics::new();
        m.http_request("/api/traces/{id}", "GET", 200, Duration::from_millis(3));
        m.http_request("/api/traces/{id}", "BREW", 404, Duration::from_millis(1));
        m.store_query("meta", "ok", Duration::from_millis(2));
        m.cache_lookup(true);
        m.cache_lookup(false);
        m.assembled_trace(12, 3, 4);
        let text = m.render();
        for line in [
            r#"deepflow_tempo_http_requests_total{route="/api/traces/{id}",method="GET",status="200"} 1"#,
            r#"deepflow_tempo_http_requests_total{route="/api/traces/{id}",method="other",status="404"} 1"#,
            r#"deepflow_tempo_http_request_duration_seconds_count{route="/api/traces/{id}"} 2"#,
            r#"deepflow_tempo_store_queries_total{kind="meta",outcome="ok"} 1"#,
            r#"deepflow_tempo_store_query_duration_seconds_count{kind="meta"} 1"#,
            r#"deepflow_tempo_trace_cache_lookups_total{result="hit"} 1"#,
            r#"deepflow_tempo_trace_cache_lookups_total{result="miss"} 1"#,
            "deepflow_tempo_trace_flows_sum 12.0",
            "deepflow_tempo_trace_search_iterations_sum 3.0",
            "deepflow_tempo_trace_store_reads_sum 4.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
