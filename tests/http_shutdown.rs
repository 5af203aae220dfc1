//! Graceful shutdown of the `serve` binary: after SIGTERM/SIGINT `/ready` answers 503 for
//! `limits.shutdown_delay_ms`, then the server stops accepting and in-flight requests drain: a request in flight finishes within
//! `limits.shutdown_grace`, one still waiting on the store past it is cancelled, and the
//! process exits 0. Requests are held in flight by pausing (SIGSTOP) this test's own
//! ClickHouse front. Durations are printed; the only bounds asserted are the configured grace
//! plus a fixed allowance for process exit.

mod common;

use common::{send_signal, Front, ServeProcess};
use deepflow_tempo::store::clickhouse::ClickHouseStore;
use deepflow_tempo::store::model::OrgId;
use deepflow_tempo::store::{FlowStore, SchemaOptions};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// Allowance past the grace period for the process to exit.
const EXIT_ALLOWANCE: Duration = Duration::from_secs(10);

async fn front_with_schema() -> Option<Front> {
    common::clickhouse_url()?;
    let front = Front::start(0).expect("start a ClickHouse front");
    ClickHouseStore::new(common::clickhouse_settings(&front.url))
        .unwrap()
        .apply_schema(OrgId::DEFAULT, SchemaOptions { without_ttl: true })
        .await
        .expect("schema");
    Some(front)
}

fn serve(front: &Front, grace_s: u64, delay_ms: u64) -> ServeProcess {
    let grace = grace_s.to_string();
    let delay = delay_ms.to_string();
    ServeProcess::start(
        &[],
        &[
            ("DFT_STORE", "clickhouse"),
            ("DFT_CLICKHOUSE__URL", &front.url),
            ("DFT_CLICKHOUSE__TIMEOUT", "120"),
            ("DFT_LIMITS__REQUEST_TIMEOUT", "120"),
            ("DFT_LIMITS__SHUTDOWN_GRACE", &grace),
            ("DFT_LIMITS__SHUTDOWN_DELAY_MS", &delay),
            ("DFT_CACHE__MAX_ENTRIES", "0"),
        ],
    )
}

/// Wait for the process to exit, at most `bound`.
async fn exit_within(p: &mut ServeProcess, bound: Duration) -> (ExitStatus, Duration) {
    let t = Instant::now();
    loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            return (st, t.elapsed());
        }
        assert!(t.elapsed() < bound, "serve still running after {bound:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn search(base: &str) -> tokio::task::JoinHandle<Result<u16, String>> {
    let url = format!("{base}/api/search?q=%7B%7D&start=1700000000&end=1700000600");
    tokio::spawn(async move {
        let r = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(r.status().as_u16())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_ready_says_503() {
    let Some(front) = front_with_schema().await else {
        return;
    };
    let (grace, delay_ms) = (30, 1_000);
    let mut p = serve(&front, grace, delay_ms);
    let ready = |base: &str| {
        let url = format!("{base}/ready");
        async move {
            reqwest::Client::new()
                .get(url)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        }
    };
    assert_eq!(ready(&p.base).await, Ok(200));

    send_signal(front.pid(), "STOP");
    let in_flight = search(&p.base);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t_signal = Instant::now();
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Within limits.shutdown_delay_ms: still accepting, /ready says no.
    assert_eq!(ready(&p.base).await, Ok(503), "/ready while draining");
    // Past it: not accepting any more.
    let port = p.base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            t.elapsed() < Duration::from_millis(delay_ms) + EXIT_ALLOWANCE,
            "still accepting long after limits.shutdown_delay_ms"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_accepting = t_signal.elapsed();
    send_signal(front.pid(), "CONT");
    let status = in_flight.await.unwrap();
    assert_eq!(status, Ok(200), "the in-flight request finishes");
    let (st, _) = exit_within(&mut p, Duration::from_secs(grace) + EXIT_ALLOWANCE).await;
    println!(
        "SIGTERM with one request in flight: stopped accepting after {:.0} ms, request finished (200), exit {st} {:.0} ms after the signal",
        stopped_accepting.as_secs_f64() * 1000.0,
        t_signal.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(st.code(), Some(0));
    front.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_the_store_query_is_cancelled_and_exit_is_0() {
    let Some(front) = front_with_schema().await else {
        return;
    };
    let grace = 2;
    let mut p = serve(&front, grace, 0);
    send_signal(front.pid(), "STOP");
    let in_flight = search(&p.base);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t_signal = Instant::now();
    p.signal("INT");
    let (st, took) = exit_within(&mut p, Duration::from_secs(grace) + EXIT_ALLOWANCE).await;
    let outcome = in_flight.await.unwrap();
    println!(
        "SIGINT with a request stuck on a paused store, grace {grace} s: exit {st} after {:.0} ms; the client saw {outcome:?}",
        took.as_secs_f64() * 1000.0
    );
    assert_eq!(st.code(), Some(0));
    assert!(t_signal.elapsed() >= Duration::from_secs(grace) || outcome.is_err());
    assert_ne!(outcome, Ok(200), "the request could not have finished");
    send_signal(front.pid(), "CONT");
    front.stop();
}

#[tokio::test]
async fn an_idle_server_exits_0_at_once_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idle.db");
    let mut p = ServeProcess::start(&["--embedded-path".as_ref(), db.as_os_str()], &[]);
    let r = reqwest::get(format!("{}/ready", p.base)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    drop(r);
    p.signal("TERM");
    // The default grace (30 s) bounds it; an idle server needs none of it.
    let (st, took) = exit_within(&mut p, Duration::from_secs(30) + EXIT_ALLOWANCE).await;
    println!(
        "idle SIGTERM: exit {st} after {:.0} ms",
        took.as_secs_f64() * 1000.0
    );
    assert_eq!(st.code(), Some(0));
}
