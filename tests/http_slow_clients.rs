//! Hostile clients against the `serve` binary: headers trickling in byte by byte, thousands
//! of idle connections, more connections than `limits.max_connections`, eight searches at the
//! largest `limit` and `spss` accepted. The server must close
//! what it cannot use within its configured timeouts and keep answering other clients within
//! the request deadline. The peak RSS the server reaches (VmHWM) is printed for BENCHMARKS.md;
//! only statuses and the configured deadlines are asserted.

mod common;

use common::ServeProcess;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `limits.client_request_timeout_ms` of the server under test.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1_000);
/// `limits.request_timeout`: the deadline of every answer to a well-behaved client.
const DEADLINE: Duration = Duration::from_secs(10);
/// Allowance for the server to act on a timeout it has reached.
const ALLOWANCE: Duration = Duration::from_secs(10);

fn rss_kb(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn start(dir: &std::path::Path, extra: &[(&str, &str)]) -> ServeProcess {
    let db = dir.join("slow.db");
    let mut env = vec![
        ("DFT_LIMITS__CLIENT_REQUEST_TIMEOUT_MS", "1000"),
        ("DFT_LIMITS__KEEP_ALIVE", "2"),
        ("DFT_LIMITS__REQUEST_TIMEOUT", "10"),
    ];
    env.extend_from_slice(extra);
    ServeProcess::start(&["--embedded-path".as_ref(), db.as_os_str()], &env)
}

/// A well-behaved request; its status and how long it took.
async fn probe(base: &str) -> (u16, Duration) {
    let t = Instant::now();
    let r = reqwest::Client::new()
        .get(format!(
            "{base}/api/search?q=%7B%7D&start=1700000000&end=1700000600"
        ))
        .timeout(DEADLINE + ALLOWANCE)
        .send()
        .await
        .expect("a well-behaved client is answered");
    (r.status().as_u16(), t.elapsed())
}

/// Read until the server closes the connection (or `bound` passes); what it sent.
async fn until_closed(s: &mut TcpStream, bound: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let t = Instant::now();
    loop {
        let left = bound.checked_sub(t.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).to_string()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_headers_are_cut_off_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[]);
    let addr = p.base.trim_start_matches("http://").to_string();
    let rss_before = rss_kb(p.pid(), "VmRSS:");
    const SLOW: usize = 200;
    let mut tasks = Vec::new();
    for _ in 0..SLOW {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            let t = Instant::now();
            let head = b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            // One byte every 100 ms: the headers would take far longer than the timeout.
            for b in head.iter().chain(b"a".repeat(1000).iter()) {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if t.elapsed() > HEADER_TIMEOUT + ALLOWANCE {
                    break;
                }
            }
            let got = until_closed(&mut s, HEADER_TIMEOUT + ALLOWANCE).await;
            (got, t.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, took) = probe(&p.base).await;
    assert_eq!(status, 200);
    assert!(took < DEADLINE, "a good client waited {took:?}");
    let mut slowest_cut = Duration::ZERO;
    for t in tasks {
        let (got, elapsed) = t.await.unwrap();
        let got = got.expect("the server closed the trickling connection");
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 408"),
            "unexpected answer: {got:?}"
        );
        slowest_cut = slowest_cut.max(elapsed);
    }
    println!(
        "{SLOW} trickling clients: all cut off, the last after {:.0} ms (header timeout {} ms); \
         a good client answered in {:.0} ms; server RSS {} kB before, peak {} kB",
        slowest_cut.as_secs_f64() * 1000.0,
        HEADER_TIMEOUT.as_millis(),
        took.as_secs_f64() * 1000.0,
        rss_before,
        rss_kb(p.pid(), "VmHWM:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_and_a_connection_limit() {
    let dir = tempfile::tempdir().unwrap();
    // 2 workers × 500: past 1,000 open connections new ones wait in the accept queue.
    let p = start(dir.path(), &[("DFT_LIMITS__MAX_CONNECTIONS", "500")]);
    let addr = p.base.trim_start_matches("http://").to_string();
    let rss_before = rss_kb(p.pid(), "VmRSS:");
    const IDLE: usize = 3_000;
    let t = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    let opened = t.elapsed();
    let rss_open = rss_kb(p.pid(), "VmRSS:");
    // Served all the same, within the deadline: idle connections are closed after the
    // header timeout, freeing slots for waiting ones and for this client.
    let (status, took) = probe(&p.base).await;
    assert_eq!(status, 200);
    assert!(took < DEADLINE, "a good client waited {took:?}");
    let t = Instant::now();
    let mut closed = 0;
    for s in idle.iter_mut() {
        if until_closed(s, HEADER_TIMEOUT + DEADLINE + ALLOWANCE)
            .await
            .is_some()
        {
            closed += 1;
        }
    }
    println!(
        "{IDLE} idle connections opened in {:.0} ms; a good client answered in {:.0} ms; \
         {closed} closed by the server within {:.0} ms; server RSS {rss_before} kB before, \
         {rss_open} kB with them open, peak {} kB",
        opened.as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1000.0,
        t.elapsed().as_secs_f64() * 1000.0,
        rss_kb(p.pid(), "VmHWM:")
    );
    assert_eq!(
        closed, IDLE,
        "every idle connection is closed by the server"
    );
    let (status, _) = probe(&p.base).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_search_limits_answer_within_the_deadline() {
    use deepflow_tempo::synth::{self, Keys, Shape};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("slow.db");
    // 1,000 traces of 20 rows, one second apart.
    let t0_s: i64 = 1_700_000_000;
    let mut keys = Keys::new(0);
    let mut jsonl = String::new();
    for i in 0..1_000u64 {
        let shape = Shape {
            calls: 5,
            fanout: 2,
            services: 3,
        };
        let t = synth::zero_code_trace(i, (t0_s + i as i64) * 1_000_000, shape, &mut keys);
        for r in &t.rows {
            jsonl.push_str(&serde_json::to_string(r).unwrap());
            jsonl.push('\n');
        }
    }
    let file = dir.path().join("rows.jsonl");
    std::fs::write(&file, jsonl).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deepflow-tempo"))
        .args(["--log", "warn", "--embedded-path"])
        .arg(&db)
        .arg("load")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = start(dir.path(), &[("DFT_CACHE__MAX_ENTRIES", "0")]);
    let rss_before = rss_kb(p.pid(), "VmRSS:");
    let (start_s, end_s) = (t0_s - 60, t0_s + 1_100);
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{}{path}", p.base);
        async move {
            let t = Instant::now();
            let r = client
                .get(url)
                .timeout(DEADLINE + ALLOWANCE)
                .send()
                .await
                .expect("answered");
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            (status, body, t.elapsed())
        }
    };
    // The largest limit and spss accepted, eight at once.
    let searches: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(get(format!(
                "/api/search?q=%7B%7D&limit=262144&spss=100&start={start_s}&end={end_s}"
            )))
        })
        .collect();
    let mut traces = 0;
    let mut slowest = Duration::ZERO;
    for s in searches {
        let (status, body, took) = s.await.unwrap();
        // Documented outcomes only: an answer, a busy store, or the deadline.
        assert!([200, 429, 504].contains(&status), "{status}: {body}");
        assert!(took < DEADLINE + ALLOWANCE, "{took:?}");
        if status == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            traces = v["traces"].as_array().map(Vec::len).unwrap_or(0);
        }
        slowest = slowest.max(took);
    }
    let (status, body, took_tags) = get(format!(
        "/api/v2/search/tag/name/values?start={start_s}&end={end_s}"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    let values: serde_json::Value = serde_json::from_str(&body).unwrap();
    let n_values = values["tagValues"].as_array().map(Vec::len).unwrap_or(0);
    let (status, _) = probe(&p.base).await;
    assert_eq!(status, 200);
    println!(
        "8 concurrent searches with limit 262144 / spss 100 over 20,000 rows: {traces} traces each, \
         slowest {:.0} ms; {n_values} values of `name` in {:.0} ms; server RSS {rss_before} kB \
         before, peak {} kB",
        slowest.as_secs_f64() * 1000.0,
        took_tags.as_secs_f64() * 1000.0,
        rss_kb(p.pid(), "VmHWM:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_answered_at_the_request_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let deadline = Duration::from_secs(3);
    let p = start(dir.path(), &[("DFT_LIMITS__REQUEST_TIMEOUT", "3")]);
    let addr = p.base.trim_start_matches("http://").to_string();
    let s = TcpStream::connect(&addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let t = Instant::now();
    w.write_all(
        b"POST /v1/stats/querier/L7FlowTracing HTTP/1.1\r\nHost: x\r\n\
          Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    )
    .await
    .unwrap();
    // One byte every 100 ms: the body would take 100 s.
    let writer = tokio::spawn(async move {
        for _ in 0..999 {
            if w.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // Others are served meanwhile.
    let (status, took) = probe(&p.base).await;
    assert_eq!(status, 200);
    assert!(took < DEADLINE, "a good client waited {took:?}");
    // The slow request is answered (or its connection closed) by the request deadline.
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    let answered = loop {
        match tokio::time::timeout(deadline + ALLOWANCE, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break String::from_utf8_lossy(&out).to_string(),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break String::from_utf8_lossy(&out).to_string();
                }
            }
            Err(_) => panic!("no answer within the deadline + {ALLOWANCE:?}"),
        }
    };
    let after = t.elapsed();
    writer.abort();
    let _ = writer.await;
    println!(
        "trickling body: {:?} after {:.0} ms (request deadline {} s); a good client answered in {:.0} ms",
        answered.lines().next().unwrap_or("connection closed"),
        after.as_secs_f64() * 1000.0,
        deadline.as_secs(),
        took.as_secs_f64() * 1000.0
    );
    assert!(
        answered.is_empty()
            || answered.starts_with("HTTP/1.1 504")
            || answered.starts_with("HTTP/1.1 408"),
        "{answered}"
    );
}
