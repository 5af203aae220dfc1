//! Load bench: many concurrent Tempo trace-by-ID requests against the real server binary on
//! loopback, with the cache off (every request runs auto-tracing) and on (every request is a
//! cache hit after a warm-up pass).
//!
//! The server runs as a child process (`deepflow-tempo serve`) over an embedded store filled
//! with generated zero-code traces of ~100 flows, so its peak RSS (`VmHWM`) is its own. The
//! client keeps `concurrency` requests in flight until `requests` have been answered, and
//! reports throughput, p50/p99 latency, status counts and the server's peak RSS.
//!
//! `cargo bench --bench load` runs the full size (500 in flight); under `cargo test` (no
//! `--bench` argument) a small smoke version runs. Bounded in count: nothing here loops on
//! time.

use deepflow_tempo::store::model::OrgId;
use deepflow_tempo::store::sqlite::SqliteStore;
use deepflow_tempo::store::FlowStore;
use deepflow_tempo::synth::{self, Shape};
use deepflow_tempo::tempo::ids::TraceId;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(db: &str, cache_entries: usize) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_deepflow-tempo"))
            .arg("serve")
            .env("DFT_LISTEN", format!("127.0.0.1:{port}"))
            .env("DFT_STORE", "embedded")
            .env("DFT_EMBEDDED__PATH", db)
            .env("DFT_CACHE__MAX_ENTRIES", cache_entries.to_string())
            .env("DFT_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server binary starts");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
        for _ in 0..300 {
            if let Ok(r) = client.get(format!("{}/ready", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server did not become ready");
    }

    /// Peak resident set size of the server process, in MiB (Linux `VmHWM`).
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Run {
    elapsed: Duration,
    latencies_us: Vec<u64>,
    statuses: BTreeMap<u16, usize>,
}

/// Keep `concurrency` requests in flight until `requests` have been answered; request `k`
/// asks for `ids[k % ids.len()]`.
async fn run(
    client: &reqwest::Client,
    base: &str,
    ids: &[TraceId],
    requests: usize,
    concurrency: usize,
) -> Run {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ids: Arc<Vec<String>> = Arc::new(ids.iter().map(TraceId::to_hex).collect());
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, next, ids, base) =
            (client.clone(), next.clone(), ids.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if k >= requests {
                    break;
                }
                let url = format!("{base}/api/v2/traces/{}", ids[k % ids.len()]);
                let t = Instant::now();
                let status = match client
                    .get(&url)
                    .header("accept", "application/protobuf")
                    .send()
                    .await
                {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        s
                    }
                    Err(_) => 0, // connection error
                };
                lat.push(t.elapsed().as_micros() as u64);
                *statuses.entry(status).or_default() += 1;
            }
            (lat, statuses)
        }));
    }
    let mut latencies_us = Vec::with_capacity(requests);
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for t in tasks {
        let (lat, st) = t.await.unwrap();
        latencies_us.extend(lat);
        for (s, n) in st {
            *statuses.entry(s).or_default() += n;
        }
    }
    latencies_us.sort_unstable();
    Run {
        elapsed: started.elapsed(),
        latencies_us,
        statuses,
    }
}

fn pct_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, concurrency: usize, r: &Run, rss: Option<f64>) {
    let statuses: Vec<String> = r.statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
    println!(
        "| {name} | {concurrency} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {} |",
        r.latencies_us.len(),
        r.latencies_us.len() as f64 / r.elapsed.as_secs_f64(),
        pct_ms(&r.latencies_us, 0.5),
        pct_ms(&r.latencies_us, 0.99),
        pct_ms(&r.latencies_us, 1.0),
        statuses.join(" "),
        rss.map(|m| format!("{m:.0}")).unwrap_or_else(|| "?".into()),
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (traces, concurrency, requests) = if full {
        (2_000, 500, 2_000)
    } else {
        (40, 20, 100)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("load.db").to_string_lossy().into_owned();
        // Data: `traces` zero-code traces of 25 calls (100 flows) in the last hour.
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let t0 = now_us - 3_000_000_000;
        let t = Instant::now();
        let ids = {
            let store = SqliteStore::open(&db, 10_000).await.unwrap();
            let mut keys = synth::Keys::new(0);
            let mut ids = Vec::with_capacity(traces);
            let mut batch = Vec::new();
            for i in 0..traces {
                let tr = synth::zero_code_trace(
                    i as u64,
                    t0 + i as i64 * 1_000_000,
                    Shape {
                        calls: 25,
                        fanout: 3,
                        services: 30,
                    },
                    &mut keys,
                );
                ids.push(TraceId::zero_code(tr.entry_id));
                batch.extend(tr.rows);
                if batch.len() >= 20_000 {
                    store.insert_rows(OrgId::DEFAULT, &batch).await.unwrap();
                    batch.clear();
                }
            }
            store.insert_rows(OrgId::DEFAULT, &batch).await.unwrap();
            ids
        };
        eprintln!(
            "loaded {traces} traces ({} rows) in {:.1} s",
            traces * 100,
            t.elapsed().as_secs_f64()
        );
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        println!("\n| run | in flight | requests | req/s | p50 ms | p99 ms | max ms | statuses | server peak RSS MiB |");
        println!("|---|---|---|---|---|---|---|---|---|");

        // Uncached: every request runs auto-tracing (cache off; distinct ids first).
        let server = Server::start(&db, 0);
        server.wait_ready(&client).await;
        let r = run(&client, &server.base, &ids, requests, concurrency).await;
        report("uncached", concurrency, &r, server.peak_rss_mib());
        // Overload is answered, not suffered: 429 when no query slot frees up in time, 504
        // past the request deadline; nothing else.
        assert!(
            r.statuses.keys().all(|&s| matches!(s, 200 | 429 | 504)),
            "{:?}",
            r.statuses
        );
        drop(server);

        // Cached: one warm-up pass over a working set, then every request is a hit.
        let working_set = &ids[..ids.len().min(200)];
        let server = Server::start(&db, 10_000);
        server.wait_ready(&client).await;
        let warm = run(&client, &server.base, working_set, working_set.len(), 8).await;
        assert_eq!(warm.statuses.get(&200), Some(&working_set.len()), "{:?}", warm.statuses);
        let r = run(&client, &server.base, working_set, requests * 10, concurrency).await;
        report("cached", concurrency, &r, server.peak_rss_mib());
        assert_eq!(r.statuses.get(&200), Some(&(requests * 10)), "{:?}", r.statuses);
    });
}
