//! Store faults on the test ClickHouse (chDB behind `tools/ch_front.py`, a front of this test's
//! own so it can be paused and killed): the engine killed mid-request, paused past
//! `clickhouse.timeout`, refusing connections, answering garbage or a truncated body (a tiny
//! fake HTTP server here), a column missing, a database missing for an organisation, a
//! `flow_tag` dictionary missing. Each answers its documented status (503, 504, 404) with a
//! plain-text body within the request deadline, never 500, and the server recovers by itself
//! when the store is back; the time to the first good answer is printed, not asserted.

mod common;

use common::{names, s4_rows, send_signal, Front, T4};
use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::clickhouse::ClickHouseStore;
use deepflow_tempo::store::model::OrgId;
use deepflow_tempo::store::{FlowStore, SchemaOptions, StoreKind};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `limits.request_timeout` of the servers under test: every answer must come within it.
const DEADLINE: Duration = Duration::from_secs(10);
/// `clickhouse.timeout`, seconds.
const CH_TIMEOUT_S: u64 = 2;
/// Longest a test waits for recovery.
const RECOVERY_BOUND: Duration = Duration::from_secs(30);

fn config(url: &str) -> Config {
    let mut cfg = Config {
        store: StoreKind::Clickhouse,
        ..Config::default()
    };
    cfg.clickhouse.url = url.to_string();
    cfg.clickhouse.timeout = CH_TIMEOUT_S;
    cfg.limits.request_timeout = DEADLINE.as_secs();
    // No answer from the trace cache: every request reaches the store.
    cfg.cache.max_entries = 0;
    cfg
}

fn start(url: &str) -> String {
    let cfg = config(url);
    let store = ClickHouseStore::new(server::clickhouse_settings(&cfg)).unwrap();
    let (srv, addrs) = server::bind(
        server::app_state(&cfg, std::sync::Arc::new(store)),
        "127.0.0.1:0",
    )
    .unwrap();
    tokio::spawn(srv);
    format!("http://{}", addrs[0])
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

async fn seed(url: &str, org: OrgId, t0: i64) {
    let store = ClickHouseStore::new(common::clickhouse_settings(url)).unwrap();
    store
        .apply_schema(org, SchemaOptions { without_ttl: true })
        .await
        .expect("schema");
    store.insert_rows(org, &s4_rows(t0)).await.expect("rows");
    store.insert_names(org, &names()).await.expect("names");
}

/// Run SQL on the front directly; its text answer.
async fn ch(url: &str, sql: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{url}/"))
        .body(sql.to_string())
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let ok = r.status().is_success();
    let text = r.text().await.unwrap();
    assert!(ok, "{sql}: {text}");
    text
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
    took: Duration,
}

/// Trace by id (Tempo) for T4: a read of rows and of the name dictionaries.
async fn trace(base: &str, org: OrgId) -> Answer {
    let t = Instant::now();
    let mut req = reqwest::Client::new()
        .get(format!("{base}/api/v2/traces/{T4}"))
        .timeout(Duration::from_secs(120));
    if !org.is_default() {
        req = req.header("X-Org-Id", org.0.to_string());
    }
    let r = req.send().await.expect("the server answers");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: r.text().await.unwrap(),
        took: t.elapsed(),
    }
}

/// The documented status, plain text, within the deadline.
fn assert_fault(what: &str, a: &Answer, status: u16, needle: &str) {
    println!(
        "{what}: {} in {:.0} ms: {}",
        a.status,
        a.took.as_secs_f64() * 1000.0,
        a.body.trim().chars().take(300).collect::<String>()
    );
    assert_eq!(a.status, status, "{what}: {}", a.body);
    assert_eq!(a.content_type, "text/plain; charset=utf-8", "{what}");
    assert!(
        a.body.contains(needle),
        "{what}: {needle:?} not in {:?}",
        a.body
    );
    assert!(a.took < DEADLINE, "{what}: answered after {:?}", a.took);
}

/// Poll until trace-by-id answers 200; the time it took. No answer may be a 500.
async fn recovery(what: &str, base: &str, org: OrgId, since: Instant) -> Duration {
    loop {
        let a = trace(base, org).await;
        assert_ne!(a.status, 500, "{what}: {}", a.body);
        if a.status == 200 {
            let took = since.elapsed();
            println!(
                "{what}: first good answer {:.0} ms after the store was back",
                took.as_secs_f64() * 1000.0
            );
            return took;
        }
        assert!(
            since.elapsed() < RECOVERY_BOUND,
            "{what}: no recovery within {RECOVERY_BOUND:?}; last {} {}",
            a.status,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn own_front() -> Option<Front> {
    common::clickhouse_url()?;
    Some(Front::start(0).expect("start a ClickHouse front"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_paused_killed_and_refusing_then_back() {
    let Some(front) = own_front() else { return };
    let (url, port) = (front.url.clone(), front.port);
    let org = OrgId::DEFAULT;
    let t0 = now_us() - 600_000_000;
    seed(&url, org, t0).await;
    let base = start(&url);
    assert_eq!(trace(&base, org).await.status, 200);

    // Paused (SIGSTOP) past clickhouse.timeout: 504, then good again once continued.
    send_signal(front.pid(), "STOP");
    let a = trace(&base, org).await;
    send_signal(front.pid(), "CONT");
    let back = Instant::now();
    assert_fault("paused engine", &a, 504, "");
    assert!(a.took >= Duration::from_secs(CH_TIMEOUT_S), "{:?}", a.took);
    recovery("paused engine", &base, org, back).await;

    // Killed mid-request: stopped so the request is surely in flight, then SIGKILL.
    send_signal(front.pid(), "STOP");
    let pending = tokio::spawn({
        let base = base.clone();
        async move { trace(&base, org).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_signal(front.pid(), "KILL");
    front.stop();
    let a = pending.await.unwrap();
    assert_fault("engine killed mid-request", &a, 503, "unavailable");

    // Refusing connections (nothing listens on the port).
    let a = trace(&base, org).await;
    assert_fault("connection refused", &a, 503, "unavailable");

    // Back on the same port, with its data again: the same server recovers by itself.
    let front = Front::start(port).expect("restart the front");
    let back = Instant::now();
    seed(&front.url, org, t0).await;
    recovery("engine restarted", &base, org, back).await;
    front.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_schema_column_database_and_dictionary() {
    let Some(front) = own_front() else { return };
    let url = front.url.clone();
    let org = OrgId(7);
    let t0 = now_us() - 600_000_000;
    seed(&url, org, t0).await;
    let base = start(&url);
    assert_eq!(trace(&base, org).await.status, 200);
    let flow_db = org.database("flow_log");
    let tag_db = org.database("flow_tag");

    // A column DeepFlow's table has is missing.
    let ty = ch(
        &url,
        &format!(
            "SELECT type FROM system.columns WHERE database = '{flow_db}' \
             AND table = 'l7_flow_log' AND name = 'x_request_id_0'"
        ),
    )
    .await;
    let ty = ty.trim().to_string();
    ch(
        &url,
        &format!("ALTER TABLE `{flow_db}`.`l7_flow_log` DROP COLUMN x_request_id_0"),
    )
    .await;
    let a = trace(&base, org).await;
    assert_fault("column missing", &a, 503, "columns");
    ch(
        &url,
        &format!("ALTER TABLE `{flow_db}`.`l7_flow_log` ADD COLUMN x_request_id_0 {ty}"),
    )
    .await;
    recovery("column restored", &base, org, Instant::now()).await;

    // A flow_tag dictionary is missing.
    let create = ch(
        &url,
        &format!("SELECT create_table_query FROM system.tables WHERE database = '{tag_db}' AND name = 'device_map'"),
    )
    .await;
    ch(&url, &format!("DROP DICTIONARY `{tag_db}`.`device_map`")).await;
    let a = trace(&base, org).await;
    assert_fault("dictionary missing", &a, 503, "flow_tag");
    let create = create.trim().replace("\\'", "'").replace("\\n", "\n");
    ch(&url, &create).await;
    recovery("dictionary restored", &base, org, Instant::now()).await;

    // The organisation's database is missing: it has no data, 404.
    let a = trace(&base, OrgId(8)).await;
    assert_fault("database missing", &a, 404, "no flow data");
    front.stop();
}

/// A fake ClickHouse answering every request with `answer`, then closing.
async fn fake_clickhouse(answer: &'static [u8]) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_answers_are_503_not_500() {
    for (what, answer) in [
        (
            "garbage body",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\nConnection: close\r\n\r\nthis is not rowbinary"[..],
        ),
        (
            "truncated body",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n\x05\x00\x00\x00"[..],
        ),
        (
            "an html error page",
            &b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 13\r\nConnection: close\r\n\r\n<h1>oops</h1>"[..],
        ),
    ] {
        let url = fake_clickhouse(answer).await;
        let base = start(&url);
        let a = trace(&base, OrgId::DEFAULT).await;
        assert_fault(what, &a, 503, "unavailable");
    }
}
