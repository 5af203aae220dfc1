//! The server's guards over HTTP: the request deadline (504), client disconnects, query slots
//! (429), body and request limits (413/400/404/405), store outages (503) and organisations
//! without data (404). Store queries are made slow with a delaying store wrapper (embedded) or
//! a delaying TCP proxy in front of the test ClickHouse; "cancelled" means the store read's
//! future was dropped (wrapper) or the server closed its ClickHouse connection before the
//! answer came (proxy).
//!
//! No test depends on timing beyond generous upper bounds: a 504 with a 1 s deadline must
//! come well before the store would have answered (60 s), a cancellation is awaited for at
//! most 10 s.

mod common;

use async_trait::async_trait;
use common::{names, s4_rows, Front, T4};
use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::clickhouse::ClickHouseStore;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TRACING: &str = "/v1/stats/querier/L7FlowTracing";
/// The longest a test waits for something that should happen "promptly".
const PROMPTLY: Duration = Duration::from_secs(10);
/// How long the slow stores take to answer: far beyond every deadline the tests set.
const SLOW: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Helpers

fn start(store: SharedStore, cfg: &Config) -> String {
    let (srv, addrs) = server::bind(server::app_state(cfg, store), "127.0.0.1:0").expect("bind");
    tokio::spawn(srv);
    format!("http://{}", addrs[0])
}

/// Wait until `cond` holds; fail after [`PROMPTLY`].
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < PROMPTLY, "{what}: not within {PROMPTLY:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn assert_plain(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.content_type, "text/plain; charset=utf-8",
            "{}",
            self.body
        );
        assert!(
            self.body.contains(needle),
            "{needle:?} not in {:?}",
            self.body
        );
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let resp = req
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: resp.text().await.unwrap(),
    }
}

fn with_org(req: reqwest::RequestBuilder, org: OrgId) -> reqwest::RequestBuilder {
    if org.is_default() {
        req
    } else {
        req.header("X-Org-Id", org.0.to_string())
    }
}

async fn get(base: &str, path: &str, org: OrgId) -> Answer {
    send(with_org(
        reqwest::Client::new().get(format!("{base}{path}")),
        org,
    ))
    .await
}

async fn post(base: &str, path: &str, org: OrgId, body: &Value) -> Answer {
    let req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    send(with_org(req, org)).await
}

/// A raw HTTP/1.1 GET whose connection the test closes when it likes.
async fn open_get(base: &str, path: &str, org: OrgId) -> TcpStream {
    let mut s = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nX-Org-Id: {}\r\n\r\n",
        org.0
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s
}

// ---------------------------------------------------------------------------------------------
// A slow store

/// Reads wait `delay` before reaching the inner store (embedded, empty); counts reads that
/// started and reads whose future was dropped before they finished.
struct Slow {
    inner: SharedStore,
    delay: Duration,
    started: AtomicUsize,
    cancelled: Arc<AtomicUsize>,
}

/// Counts a drop unless disarmed.
struct OnDrop(Option<Arc<AtomicUsize>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.fetch_add(1, SeqCst);
        }
    }
}

impl Slow {
    async fn new(delay: Duration) -> Arc<Slow> {
        let (inner, _) = common::sqlite_store().await;
        Arc::new(Slow {
            inner,
            delay,
            started: AtomicUsize::new(0),
            cancelled: Arc::new(AtomicUsize::new(0)),
        })
    }

    async fn wait(&self) {
        self.started.fetch_add(1, SeqCst);
        let mut guard = OnDrop(Some(self.cancelled.clone()));
        tokio::time::sleep(self.delay).await;
        guard.0 = None;
    }

    fn started(&self) -> usize {
        self.started.load(SeqCst)
    }

    fn cancelled(&self) -> usize {
        self.cancelled.load(SeqCst)
    }
}

#[async_trait]
impl FlowStore for Slow {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn select_meta(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowMeta>> {
        self.wait().await;
        self.inner.select_meta(org, q).await
    }
    async fn select_records(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowRecord>> {
        self.wait().await;
        self.inner.select_records(org, q).await
    }
    async fn insert_rows(&self, org: OrgId, rows: &[L7FlowLogRow]) -> StoreResult<()> {
        self.inner.insert_rows(org, rows).await
    }
    async fn insert_names(&self, org: OrgId, n: &NameTables) -> StoreResult<()> {
        self.inner.insert_names(org, n).await
    }
    async fn apply_schema(&self, org: OrgId, o: SchemaOptions) -> StoreResult<()> {
        self.inner.apply_schema(org, o).await
    }
    fn schema_ddl(&self, org: OrgId) -> Vec<String> {
        self.inner.schema_ddl(org)
    }
    async fn distinct_values(
        &self,
        org: OrgId,
        q: &FlowQuery,
        facet: &Facet,
    ) -> StoreResult<Vec<String>> {
        self.wait().await;
        self.inner.distinct_values(org, q, facet).await
    }
}

// ---------------------------------------------------------------------------------------------
// A delaying TCP proxy in front of ClickHouse

/// Relays connections to `upstream`, holding each answer for `delay`. Notes the request line
/// of every request, and counts connections the downstream side (the server) closed while an
/// answer was still owed: cancelled queries.
struct Proxy {
    url: String,
    cancelled: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start(upstream: &str, delay: Duration) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cancelled = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (cancelled.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if let Ok(up) = TcpStream::connect(&upstream).await {
                    tokio::spawn(relay(down, up, delay, c.clone(), r.clone()));
                }
            }
        });
        Proxy {
            url,
            cancelled,
            requests,
        }
    }

    fn cancelled(&self) -> usize {
        self.cancelled.load(SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn relay(
    down: TcpStream,
    up: TcpStream,
    delay: Duration,
    cancelled: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let (mut down_r, mut down_w) = down.into_split();
    let (mut up_r, mut up_w) = up.into_split();
    // Set when request bytes went up, cleared once the answer has gone down.
    let owed = Arc::new(AtomicBool::new(false));
    let answers = tokio::spawn({
        let owed = owed.clone();
        async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = match up_r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let first_chunk = owed.load(SeqCst);
                if first_chunk {
                    tokio::time::sleep(delay).await;
                }
                if down_w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                owed.store(false, SeqCst);
            }
        }
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match down_r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.starts_with("POST ") || text.starts_with("GET ") {
            let line = text.lines().next().unwrap_or_default().to_string();
            requests.lock().unwrap().push(line);
        }
        owed.store(true, SeqCst);
        if up_w.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    if owed.load(SeqCst) {
        cancelled.fetch_add(1, SeqCst);
    }
    answers.abort();
}

/// The schema'd ClickHouse of this test binary, and a server reading it through a proxy that
/// holds every answer for [`SLOW`].
async fn slow_clickhouse(cfg: &Config) -> Option<(String, Proxy, OrgId)> {
    let (_, org) = common::clickhouse_store().await?;
    let url = common::clickhouse_url()?;
    let proxy = Proxy::start(&url, SLOW).await;
    let store = ClickHouseStore::new(common::clickhouse_settings(&proxy.url)).unwrap();
    Some((start(Arc::new(store), cfg), proxy, org))
}

fn deadline(secs: u64) -> Config {
    let mut cfg = Config::default();
    cfg.limits.request_timeout = secs;
    cfg
}

// ---------------------------------------------------------------------------------------------
// What actix-web does with a handler whose client went away

/// A one-route server whose handler waits for a minute; counts handlers started and handler
/// futures dropped before the minute was up.
fn parked_server(allow_half_closed: bool) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (s, d) = (started.clone(), dropped.clone());
    let srv = actix_web::HttpServer::new(move || {
        let (s, d) = (s.clone(), d.clone());
        actix_web::App::new().route(
            "/",
            actix_web::web::get().to(move || {
                let (s, d) = (s.clone(), d.clone());
                async move {
                    s.fetch_add(1, SeqCst);
                    let mut guard = OnDrop(Some(d));
                    tokio::time::sleep(SLOW).await;
                    guard.0 = None;
                    "done"
                }
            }),
        )
    })
    .workers(1)
    .h1_allow_half_closed(allow_half_closed)
    .bind("127.0.0.1:0")
    .unwrap();
    let base = format!("http://{}", srv.addrs()[0]);
    tokio::spawn(srv.run());
    (base, started, dropped)
}

/// The experiment behind `api::guard::ALLOW_HALF_CLOSED`: by default actix-web keeps running a
/// handler after its HTTP/1 client closed the connection (it takes the close for a
/// half-close); with half-closed connections refused, the handler's future is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actix_drops_a_disconnected_handler_only_when_half_closed_connections_are_refused() {
    let (default_base, default_started, default_dropped) = parked_server(true);
    let (refusing_base, refusing_started, refusing_dropped) = parked_server(false);
    let a = open_get(&default_base, "/", OrgId::DEFAULT).await;
    let b = open_get(&refusing_base, "/", OrgId::DEFAULT).await;
    eventually("both handlers start", || {
        default_started.load(SeqCst) == 1 && refusing_started.load(SeqCst) == 1
    })
    .await;
    drop(a);
    drop(b);
    eventually("the refusing server drops its handler", || {
        refusing_dropped.load(SeqCst) == 1
    })
    .await;
    // The default server read its client's close first, and had as long again to react.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        default_dropped.load(SeqCst),
        0,
        "actix-web now cancels disconnected handlers by default: ALLOW_HALF_CLOSED may go"
    );
}

// ---------------------------------------------------------------------------------------------
// Deadline and disconnects

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_deadline_is_a_504_and_its_store_reads_are_cancelled() {
    let slow = Slow::new(SLOW).await;
    let base = start(slow.clone(), &deadline(1));
    let t = Instant::now();
    let a = get(&base, "/api/search?q=%7B%7D", OrgId::DEFAULT).await;
    a.assert_plain(504, "limits.request_timeout");
    assert!(t.elapsed() < PROMPTLY, "504 after {:?}", t.elapsed());
    assert!(slow.started() >= 1);
    eventually("the store read is cancelled", || {
        slow.cancelled() == slow.started()
    })
    .await;

    // The DeepFlow API is bounded the same way.
    let started = slow.started();
    let body = json!({"time_start": 1, "time_end": 2, "database": "flow_log",
                      "table": "l7_flow_log", "_id": "42"});
    let a = post(&base, TRACING, OrgId::DEFAULT, &body).await;
    a.assert_plain(504, "limits.request_timeout");
    assert!(slow.started() > started);
    eventually("the store read is cancelled", || {
        slow.cancelled() == slow.started()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_store_reads() {
    let slow = Slow::new(SLOW).await;
    // The deadline is far away: only the disconnect can cancel the read.
    let base = start(slow.clone(), &deadline(600));
    let conn = open_get(&base, "/api/search?q=%7B%7D", OrgId::DEFAULT).await;
    eventually("the store read starts", || slow.started() == 1).await;
    assert_eq!(slow.cancelled(), 0);
    drop(conn);
    eventually("the store read is cancelled", || slow.cancelled() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_over_the_deadline_is_a_504_and_the_query_is_cancelled_upstream() {
    let Some((base, proxy, org)) = slow_clickhouse(&deadline(1)).await else {
        return;
    };
    let t = Instant::now();
    let a = get(&base, &format!("/api/v2/traces/{T4}"), org).await;
    a.assert_plain(504, "limits.request_timeout");
    assert!(t.elapsed() < PROMPTLY, "504 after {:?}", t.elapsed());
    eventually("the server closes its ClickHouse connection", || {
        proxy.cancelled() >= 1
    })
    .await;
    // Reads ask ClickHouse to stop a query whose client has gone (that needs readonly).
    let requests = proxy.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(
            r.contains("cancel_http_readonly_queries_on_client_close=1")
                && r.contains("readonly=2"),
            "{r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_a_client_that_disconnects_cancels_the_query_upstream() {
    let Some((base, proxy, org)) = slow_clickhouse(&deadline(600)).await else {
        return;
    };
    let conn = open_get(&base, &format!("/api/v2/traces/{T4}"), org).await;
    eventually("the query reaches ClickHouse", || {
        !proxy.requests().is_empty()
    })
    .await;
    assert_eq!(proxy.cancelled(), 0);
    drop(conn);
    eventually("the server closes its ClickHouse connection", || {
        proxy.cancelled() >= 1
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Query slots

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_store_answers_429_without_queueing_and_ready_takes_no_slot() {
    let slow = Slow::new(SLOW).await;
    let mut cfg = deadline(600);
    cfg.limits.max_concurrent_queries = 1;
    cfg.limits.queue_timeout_ms = 50;
    let base = start(slow.clone(), &cfg);

    // One request holds the only slot.
    let holder = open_get(&base, "/api/search?q=%7B%7D", OrgId::DEFAULT).await;
    eventually("the slot is taken", || slow.started() == 1).await;
    let answers = futures::future::join_all(
        (0..4).map(|_| get(&base, "/api/search?q=%7B%7D", OrgId::DEFAULT)),
    )
    .await;
    for a in &answers {
        a.assert_plain(429, "limits.max_concurrent_queries");
        assert!(a.body.contains("store overloaded"), "{}", a.body);
    }
    assert_eq!(
        slow.started(),
        1,
        "the refused requests never reached the store"
    );
    // /ready takes no slot.
    let a = get(&base, "/ready", OrgId::DEFAULT).await;
    assert_eq!((a.status, a.body.as_str()), (200, "ready\n"));
    // The DeepFlow API answers 429 in its envelope.
    let body = json!({"time_start": 1, "time_end": 2, "database": "flow_log",
                      "table": "l7_flow_log", "_id": "42"});
    let a = post(&base, TRACING, OrgId::DEFAULT, &body).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.json()["DESCRIPTION"]
        .as_str()
        .unwrap()
        .contains("limits.max_concurrent_queries"));

    // Cancelling the holder frees the slot for the next request.
    drop(holder);
    eventually("the holder's read is cancelled", || slow.cancelled() == 1).await;
    let next = open_get(&base, "/api/search?q=%7B%7D", OrgId::DEFAULT).await;
    eventually("the next request gets the slot", || slow.started() == 2).await;
    drop(next);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_over_a_slow_store_share_one_slot() {
    // Several requests at once against a store that answers slowly: the ones that found the
    // slot busy are refused with a clear 429, the one holding it is answered.
    let store = Slow::new(Duration::from_millis(300)).await;
    let mut cfg = Config::default();
    cfg.limits.max_concurrent_queries = 1;
    cfg.limits.queue_timeout_ms = 10;
    let base = start(store, &cfg);
    let answers = futures::future::join_all(
        (0..6).map(|_| get(&base, "/api/search?q=%7B%7D", OrgId::DEFAULT)),
    )
    .await;
    let mut seen = std::collections::BTreeMap::new();
    for a in &answers {
        *seen.entry(a.status).or_insert(0) += 1;
        match a.status {
            200 => {}
            429 => a.assert_plain(429, "limits.max_concurrent_queries"),
            s => panic!("unexpected {s}: {}", a.body),
        }
    }
    assert!(seen.get(&200).is_some_and(|&n| n >= 1), "{seen:?}");
    assert!(seen.get(&429).is_some_and(|&n| n >= 1), "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Limits and rejections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_and_bad_requests_get_clear_answers() {
    let (store, _) = common::sqlite_store().await;
    let mut cfg = Config::default();
    cfg.limits.max_body_bytes = 1024;
    let base = start(store, &cfg);
    let org = OrgId::DEFAULT;

    // DeepFlow's routes keep their envelope: a declared length over the limit...
    let big = json!({"pad": "x".repeat(2048)});
    let a = post(&base, TRACING, org, &big).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.json()["OPT_STATUS"], "INVALID_POST_DATA");
    assert!(a.json()["DESCRIPTION"]
        .as_str()
        .unwrap()
        .contains("larger than 1024 bytes (limits.max_body_bytes)"));
    // ...and a chunked body that grows over it.
    let mut s = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let chunk = "x".repeat(600);
    let req = format!(
        "POST {TRACING} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 256];
    let n = s.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // Under the limit, the same route answers.
    let small = json!({"time_start": 1, "time_end": 2, "database": "flow_log",
                       "table": "l7_flow_log", "_id": "42"});
    assert_eq!(post(&base, TRACING, org, &small).await.status, 200);

    // Everything else answers in plain text.
    get(&base, "/api/nowhere", org)
        .await
        .assert_plain(404, "no route for GET /api/nowhere");
    let a = send(reqwest::Client::new().post(format!("{base}/api/search"))).await;
    a.assert_plain(405, "method POST is not allowed on /api/search");
    let a = send(reqwest::Client::new().delete(format!("{base}{TRACING}"))).await;
    a.assert_plain(405, "allowed: POST");
    get(&base, &format!("/api/traces/{T4}?start=1&start=2"), org)
        .await
        .assert_plain(400, "invalid query string");
    // Tempo's search limits: 400, as Tempo answers them.
    get(&base, "/api/search?q=%7B%7D&limit=300000", org)
        .await
        .assert_plain(400, "exceeds max limit");
    get(&base, "/api/search?q=%7B%7D&spss=101", org)
        .await
        .assert_plain(400, "exceeds max spss");
    get(&base, "/api/search?q=%7B%7D&start=1&end=1000000000", org)
        .await
        .assert_plain(400, "exceeds");
}

// ---------------------------------------------------------------------------------------------
// ClickHouse outage and organisations without data

async fn seed(url: &str, org: OrgId, t0: i64) {
    let store = ClickHouseStore::new(common::clickhouse_settings(url)).unwrap();
    store
        .apply_schema(org, SchemaOptions { without_ttl: true })
        .await
        .expect("schema");
    store.insert_rows(org, &s4_rows(t0)).await.expect("rows");
    store.insert_names(org, &names()).await.expect("names");
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Trace by ID, search and the DeepFlow API: their statuses.
async fn three_routes(base: &str, org: OrgId, t0: i64) -> Vec<Answer> {
    let t = t0 / 1_000_000;
    let body = json!({"time_start": t - 60, "time_end": t + 60, "database": "flow_log",
                      "table": "l7_flow_log", "trace_id": T4});
    vec![
        get(base, &format!("/api/v2/traces/{T4}"), org).await,
        get(base, "/api/search?q=%7B%7D", org).await,
        post(base, TRACING, org, &body).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_outage_is_a_prompt_503_and_recovery_needs_no_restart() {
    if common::clickhouse_url().is_none() {
        return;
    }
    // A front of our own, so it can be stopped and started again on the same port.
    let front = Front::start(0).expect("start a ClickHouse front");
    let port = front.port;
    let org = common::fresh_org();
    let t0 = now_us() - 600_000_000;
    seed(&front.url, org, t0).await;
    let store: SharedStore =
        Arc::new(ClickHouseStore::new(common::clickhouse_settings(&front.url)).unwrap());
    let mut cfg = deadline(60);
    // No cached trace may answer for the store.
    cfg.cache.max_entries = 0;
    let base = start(store, &cfg);
    for a in three_routes(&base, org, t0).await {
        assert_eq!(a.status, 200, "{}", a.body);
    }

    front.stop();
    let t = Instant::now();
    let answers = three_routes(&base, org, t0).await;
    assert!(t.elapsed() < PROMPTLY, "503s after {:?}", t.elapsed());
    answers[0].assert_plain(503, "store unavailable");
    answers[1].assert_plain(503, "store unavailable");
    assert_eq!(answers[2].status, 503, "{}", answers[2].body);
    assert!(answers[2].json()["DESCRIPTION"]
        .as_str()
        .unwrap()
        .contains("store unavailable"));

    let front = Front::start(port).expect("restart the front on the same port");
    // The new engine starts empty.
    seed(&front.url, org, t0).await;
    let t = Instant::now();
    loop {
        let answers = three_routes(&base, org, t0).await;
        if answers.iter().all(|a| a.status == 200) {
            break;
        }
        assert!(
            t.elapsed() < PROMPTLY,
            "no recovery: {:?}",
            answers.iter().map(|a| a.status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    front.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_an_organisation_without_a_database_is_a_404_that_says_so() {
    let Some(url) = common::clickhouse_url() else {
        return;
    };
    let store: SharedStore =
        Arc::new(ClickHouseStore::new(common::clickhouse_settings(&url)).unwrap());
    let base = start(store, &Config::default());
    // No test creates organisation 9999's databases.
    let org = OrgId(9999);
    let t0 = now_us() - 600_000_000;
    let answers = three_routes(&base, org, t0).await;
    let needle = "organisation 9999 has no flow data: clickhouse has no database `9999_flow_log`";
    answers[0].assert_plain(404, needle);
    answers[1].assert_plain(404, needle);
    assert_eq!(answers[2].status, 404, "{}", answers[2].body);
    assert!(answers[2].json()["DESCRIPTION"]
        .as_str()
        .unwrap()
        .contains(needle));
}
