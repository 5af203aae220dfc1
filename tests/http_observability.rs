//! Observability over HTTP: `/metrics` (every family, counts that move with requests, route
//! patterns instead of paths, store outcomes), request ids (kept when sane, generated
//! otherwise, returned on every answer, in the one log line per request), and `Server-Timing`
//! on trace by ID (cache miss and hit), search and DeepFlow's API.
//!
//! The metrics registry is process-wide and tests run in parallel, so counts are compared as
//! "grew by at least", never as exact values.

mod common;

use common::{ids, spec_row};
use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::clickhouse::ClickHouseStore;
use deepflow_tempo::store::model::L7FlowLogRow;
use deepflow_tempo::store::SharedStore;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const TRACE: &str = "3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c";
const RANGE: &str = "start=1699999900&end=1700000100";

fn app_row(n: u32, trace: &str, service: &str) -> L7FlowLogRow {
    let mut r = ids(
        spec_row(n, 4, "s-app", 1, n as i64 * 1000, n as i64 * 1000 + 500),
        trace,
        &format!("{n:016x}"),
        "",
    );
    r.app_service = service.into();
    r
}

struct Srv {
    base: String,
    http: reqwest::Client,
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn start_on(store: SharedStore, cfg: Config) -> Srv {
    let (srv, addrs) = server::bind(server::app_state(&cfg, store), "127.0.0.1:0").unwrap();
    tokio::spawn(srv);
    Srv {
        base: format!("http://{}", addrs[0]),
        http: common::http_client(),
    }
}

/// A server over the embedded store holding one two-span trace.
async fn start(cfg: Config) -> Srv {
    let (store, org) = common::sqlite_store().await;
    store
        .insert_rows(
            org,
            &[app_row(1, TRACE, "svc-a"), app_row(2, TRACE, "svc-b")],
        )
        .await
        .unwrap();
    start_on(store, cfg).await
}

impl Srv {
    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.timeout(Duration::from_secs(30)).send().await.unwrap();
        Answer {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn tracing(&self, by_trace_id: bool) -> Answer {
        let mut body = serde_json::json!({
            "time_start": 1_699_999_900,
            "time_end": 1_700_000_100,
            "database": "flow_log",
            "table": "l7_flow_log",
        });
        if by_trace_id {
            body["trace_id"] = TRACE.into();
        } else {
            body["_id"] = "1".into();
        }
        self.send(
            self.http
                .post(format!("{}/v1/stats/querier/L7FlowTracing", self.base))
                .json(&body),
        )
        .await
    }

    async fn scrape(&self) -> String {
        let a = self.get("/metrics").await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            a.header("content-type")
                .unwrap()
                .starts_with("application/openmetrics-text"),
            "{:?}",
            a.header("content-type")
        );
        a.body
    }
}

/// The value of the sample `series` (name and labels exactly as exposed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.split(' ').next().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}

/// `after - before` of one series.
fn grew(before: &str, after: &str, series: &str) -> f64 {
    sample(after, series) - sample(before, series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_families_and_counts_move_with_requests() {
    let s = start(Config::default()).await;
    let before = s.scrape().await;
    let trace_path = format!("/api/v2/traces/{TRACE}?{RANGE}");
    assert_eq!(s.get(&trace_path).await.status, 200); // miss: assembled
    assert_eq!(s.get(&trace_path).await.status, 200); // hit
    assert_eq!(
        s.get(&format!("/api/search?q=%7B%7D&{RANGE}")).await.status,
        200
    );
    let tag_values = format!("/api/v2/search/tag/resource.service.name/values?{RANGE}");
    assert_eq!(s.get(&tag_values).await.status, 200);
    assert_eq!(s.get("/api/traces/not-hex").await.status, 400);
    assert_eq!(s.get("/no/such/route").await.status, 404);
    assert_eq!(s.tracing(true).await.status, 200);
    let after = s.scrape().await;

    for family in [
        "# TYPE deepflow_tempo_http_requests counter",
        "# TYPE deepflow_tempo_http_request_duration_seconds histogram",
        "# TYPE deepflow_tempo_store_queries counter",
        "# TYPE deepflow_tempo_store_query_duration_seconds histogram",
        "# TYPE deepflow_tempo_trace_cache_lookups counter",
        "# TYPE deepflow_tempo_trace_flows histogram",
        "# TYPE deepflow_tempo_trace_search_iterations histogram",
        "# TYPE deepflow_tempo_trace_store_reads histogram",
    ] {
        assert!(
            after.lines().any(|l| l == family),
            "{family} missing:\n{after}"
        );
    }
    assert!(after.ends_with("# EOF\n"));

    let http = |route: &str, method: &str, status: u16| {
        format!(
            "deepflow_tempo_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
        )
    };
    let checks = [
        (http("/api/v2/traces/{id}", "GET", 200), 2.0),
        (http("/api/traces/{id}", "GET", 400), 1.0),
        (http("/api/search", "GET", 200), 1.0),
        (http("/api/v2/search/tag/{rest:.*}", "GET", 200), 1.0),
        (http("unmatched", "GET", 404), 1.0),
        (http("/v1/stats/querier/L7FlowTracing", "POST", 200), 1.0),
        (http("/metrics", "GET", 200), 1.0),
        (
            "deepflow_tempo_http_request_duration_seconds_count{route=\"/api/v2/traces/{id}\"}"
                .into(),
            2.0,
        ),
        (
            "deepflow_tempo_store_queries_total{kind=\"meta\",outcome=\"ok\"}".into(),
            1.0,
        ),
        (
            "deepflow_tempo_store_queries_total{kind=\"records\",outcome=\"ok\"}".into(),
            1.0,
        ),
        (
            "deepflow_tempo_store_queries_total{kind=\"distinct\",outcome=\"ok\"}".into(),
            1.0,
        ),
        (
            "deepflow_tempo_store_query_duration_seconds_count{kind=\"records\"}".into(),
            1.0,
        ),
        (
            "deepflow_tempo_trace_cache_lookups_total{result=\"hit\"}".into(),
            1.0,
        ),
        (
            "deepflow_tempo_trace_cache_lookups_total{result=\"miss\"}".into(),
            1.0,
        ),
        // The Tempo trace and the DeepFlow API's trace were assembled.
        ("deepflow_tempo_trace_flows_count".into(), 2.0),
        ("deepflow_tempo_trace_flows_sum".into(), 4.0),
        ("deepflow_tempo_trace_search_iterations_count".into(), 2.0),
        ("deepflow_tempo_trace_store_reads_count".into(), 2.0),
    ];
    for (series, at_least) in checks {
        let d = grew(&before, &after, &series);
        assert!(
            d >= at_least,
            "{series} grew by {d}, expected >= {at_least}"
        );
    }
    // Bounded labels: paths with ids never become series.
    assert!(!after.contains(TRACE), "a raw path leaked into a label");
    assert!(!after.contains("not-hex"));
    assert!(!after.contains("/no/such/route"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_counted_by_outcome() {
    // Nothing listens on port 1: every ClickHouse call fails as unavailable.
    let mut settings = common::clickhouse_settings("http://127.0.0.1:1");
    settings.timeout = Duration::from_secs(5);
    let store: SharedStore = Arc::new(ClickHouseStore::new(settings).unwrap());
    let s = start_on(store, Config::default()).await;
    let series = "deepflow_tempo_store_queries_total{kind=\"ping\",outcome=\"unavailable\"}";
    let before = s.scrape().await;
    assert_eq!(s.get("/ready").await.status, 503);
    let after = s.scrape().await;
    assert!(grew(&before, &after, series) >= 1.0, "{after}");
    let series =
        "deepflow_tempo_http_requests_total{route=\"/ready\",method=\"GET\",status=\"503\"}";
    assert!(grew(&before, &after, series) >= 1.0, "{after}");
}

// ---------------------------------------------------------------------------------------------
// Request ids and the per-request log line

/// Everything the process logs, captured once for the whole test binary.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("deepflow_tempo=info"))
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log lines that mention `needle`.
fn log_lines(logs: &Mutex<Vec<u8>>, needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&logs.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_generated_returned_and_logged() {
    let logs = captured_logs();
    let s = start(Config::default()).await;

    // A sane client id is kept and returned.
    let id = "req-7f3a.observability:test";
    let a = s
        .send(
            s.http
                .get(format!("{}/api/echo", s.base))
                .header("X-Request-Id", id),
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-request-id"), Some(id));
    // One structured line for the request, in its span.
    let lines = log_lines(&logs, id);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for part in [
        "request served",
        "method=GET",
        "route=/api/echo",
        "org=1",
        "status=200",
        "latency_ms=",
    ] {
        assert!(lines[0].contains(part), "{part} missing: {}", lines[0]);
    }

    // No id, or one too long or unprintable: a generated one.
    let mut seen = std::collections::HashSet::new();
    for bad in [None, Some("x".repeat(200)), Some("has space".to_string())] {
        let mut req = s.http.get(format!("{}/api/echo", s.base));
        if let Some(b) = &bad {
            req = req.header("X-Request-Id", b.as_str());
        }
        let a = s.send(req).await;
        let got = a.header("x-request-id").expect("always an id").to_string();
        assert_eq!(got.len(), 32, "{got}");
        assert!(got.bytes().all(|c| c.is_ascii_hexdigit()), "{got}");
        assert!(seen.insert(got.clone()), "ids repeat: {got}");
        assert_eq!(log_lines(&logs, &got).len(), 1);
    }

    // Errors carry the id too, and the log names the route pattern and organisation.
    let id = "trace-by-id-error-request";
    let a = s
        .send(
            s.http
                .get(format!("{}/api/v2/traces/zz", s.base))
                .header("X-Request-Id", id)
                .header("X-Org-Id", "7"),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.header("x-request-id"), Some(id));
    let lines = log_lines(&logs, id);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("route=/api/v2/traces/{id}"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("org=7") && lines[0].contains("status=400"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_have_ids_too() {
    let mut cfg = Config::default();
    cfg.auth.token = "tok".into();
    let s = start(cfg).await;
    let a = s
        .send(
            s.http
                .get(format!("{}/api/echo", s.base))
                .header("X-Request-Id", "refused-1"),
        )
        .await;
    assert_eq!(a.status, 401);
    assert_eq!(a.header("x-request-id"), Some("refused-1"));
}

// ---------------------------------------------------------------------------------------------
// Server-Timing

/// The `name;dur=` entries of a Server-Timing value (asserting each duration is a number).
fn timing(a: &Answer) -> Vec<(String, Option<f64>, Option<String>)> {
    let v = a.header("server-timing").expect("Server-Timing header");
    v.split(',')
        .map(|m| {
            let mut parts = m.trim().split(';');
            let name = parts.next().unwrap().to_string();
            let (mut dur, mut desc) = (None, None);
            for p in parts {
                if let Some(d) = p.strip_prefix("dur=") {
                    let d: f64 = d.parse().unwrap_or_else(|_| panic!("{v}"));
                    assert!(d >= 0.0, "{v}");
                    dur = Some(d);
                } else if let Some(d) = p.strip_prefix("desc=") {
                    desc = Some(d.to_string());
                }
            }
            (name, dur, desc)
        })
        .collect()
}

fn names(t: &[(String, Option<f64>, Option<String>)]) -> Vec<&str> {
    t.iter().map(|m| m.0.as_str()).collect()
}

const PHASES: [&str; 4] = ["store", "search", "assembly", "encode"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_on_traces_search_and_deepflow_api() {
    let s = start(Config::default()).await;
    // v1 and v2 share the cache: another range makes v1's first answer a miss too.
    for path in [
        format!("/api/v2/traces/{TRACE}?{RANGE}"),
        format!("/api/traces/{TRACE}?start=1699999800&end=1700000200"),
    ] {
        // First: built from the store.
        let a = s.get(&path).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let t = timing(&a);
        assert_eq!(names(&t), [&PHASES[..], &["cache"]].concat(), "{t:?}");
        assert!(t[..4].iter().all(|m| m.1.is_some()), "{t:?}");
        assert_eq!(t[4].2.as_deref(), Some("miss"));
        // Then: from the cache.
        let a = s.get(&path).await;
        let t = timing(&a);
        assert_eq!(names(&t), ["cache", "encode"], "{t:?}");
        assert_eq!(t[0].2.as_deref(), Some("hit"));
        assert!(t[1].1.is_some());
    }
    let a = s.get(&format!("/api/search?q=%7B%7D&{RANGE}")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let t = timing(&a);
    assert_eq!(names(&t), PHASES, "{t:?}");
    assert!(t.iter().all(|m| m.1.is_some()));
    // Structural search assembles traces: the same four phases.
    let a = s
        .get(&format!("/api/search?q=%7B%7D%20%3E%3E%20%7B%7D&{RANGE}"))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(names(&timing(&a)), PHASES);
    for by_trace_id in [true, false] {
        let a = s.tracing(by_trace_id).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let t = timing(&a);
        assert_eq!(names(&t), PHASES, "{t:?}");
        assert!(t.iter().all(|m| m.1.is_some()));
    }
}
