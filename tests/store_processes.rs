//! One embedded SQLite file shared by many processes at once, as users run them: `serve` in
//! one terminal, a `load` in another, scripts starting 16 `trace` processes together. Several
//! rounds; every process must succeed, the server must answer no 5xx and nothing slower than
//! its request deadline (`limits.request_timeout`). Figures are printed, not asserted.

mod common;

use common::ServeProcess;
use deepflow_tempo::synth::{self, Keys, Shape, SynthTrace};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::process::Command;

const ROUNDS: usize = 4;
const TRACERS: usize = 16;
/// `limits.request_timeout` of the server under test, seconds: the deadline every answer
/// must come within.
const DEADLINE_S: u64 = 10;
const T0_US: i64 = 1_700_000_000_000_000;
const SHAPE: Shape = Shape {
    calls: 5,
    fanout: 2,
    services: 3,
};

fn traces(n: usize, first_seed: u64, keys: &mut Keys) -> Vec<SynthTrace> {
    (0..n)
        .map(|i| {
            let seed = first_seed + i as u64;
            synth::zero_code_trace(seed, T0_US + seed as i64 * 1_000_000, SHAPE, keys)
        })
        .collect()
}

fn write_jsonl(path: &Path, traces: &[SynthTrace]) {
    let mut s = String::new();
    for t in traces {
        for r in &t.rows {
            s.push_str(&serde_json::to_string(r).unwrap());
            s.push('\n');
        }
    }
    std::fs::write(path, s).unwrap();
}

fn bin(db: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_deepflow-tempo"));
    c.args(["--log", "warn", "--embedded-path"]).arg(db);
    c.kill_on_drop(true);
    c
}

#[derive(Default)]
struct HttpFigures {
    requests: usize,
    server_errors: Vec<String>,
    slowest: Duration,
}

/// DeepFlow tracing and Tempo search against `base` until `stop` is set.
async fn hammer(
    base: String,
    entries: Vec<u64>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> HttpFigures {
    let client = reqwest::Client::new();
    let mut f = HttpFigures::default();
    let mut i = 0usize;
    while !*stop.borrow() {
        let id = entries[i % entries.len()];
        let t = (id >> 32) as i64;
        let t0 = Instant::now();
        let (what, resp) = if i.is_multiple_of(2) {
            let body = json!({"time_start": t - 60, "time_end": t + 60, "database": "flow_log",
                              "table": "l7_flow_log", "_id": id.to_string()});
            (
                "tracing",
                client
                    .post(format!("{base}/v1/stats/querier/L7FlowTracing"))
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .timeout(Duration::from_secs(120))
                    .send()
                    .await,
            )
        } else {
            (
                "search",
                client
                    .get(format!(
                        "{base}/api/search?q=%7B%7D&start={}&end={}",
                        t - 600,
                        t + 600
                    ))
                    .timeout(Duration::from_secs(120))
                    .send()
                    .await,
            )
        };
        let resp = resp.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let took = t0.elapsed();
        f.slowest = f.slowest.max(took);
        f.requests += 1;
        if status >= 500 {
            f.server_errors.push(format!("{what} {status}: {body}"));
        } else {
            assert_eq!(status, 200, "{what}: {body}");
            if what == "tracing" {
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    v["DATA"]["tracing"].as_array().map(Vec::len),
                    Some(20),
                    "{body}"
                );
            }
        }
        i += 1;
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sixteen_traces_and_a_load_share_one_embedded_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let mut keys = Keys::new(0);
    let base_traces = traces(8, 0, &mut keys);
    let entries: Vec<u64> = base_traces.iter().map(|t| t.entry_id).collect();
    let first = dir.path().join("base.jsonl");
    write_jsonl(&first, &base_traces);
    let out = bin(&db).arg("load").arg(&first).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let config = dir.path().join("serve.toml");
    std::fs::write(
        &config,
        format!("[limits]\nrequest_timeout = {DEADLINE_S}\n"),
    )
    .unwrap();
    let serve = ServeProcess::start(
        &[
            "--config".as_ref(),
            config.as_os_str(),
            "--embedded-path".as_ref(),
            db.as_os_str(),
        ],
        &[],
    );

    let mut total_http = 0;
    let mut slowest_http = Duration::ZERO;
    let mut slowest_trace = Duration::ZERO;
    let mut loaded_rows = 0;
    for round in 0..ROUNDS {
        // Each round's load: 200 new traces (4,000 rows) in batches of 500, so the writer
        // commits eight times while the readers run.
        let more = traces(200, 1_000 + round as u64 * 1_000, &mut keys);
        let file = dir.path().join(format!("round{round}.jsonl"));
        write_jsonl(&file, &more);
        loaded_rows += more.len() * 20;

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let http = tokio::spawn(hammer(serve.base.clone(), entries.clone(), stop_rx));
        let t_round = Instant::now();
        let load = tokio::spawn(
            bin(&db)
                .args(["load", "--batch", "500"])
                .arg(&file)
                .output(),
        );
        let tracers: Vec<_> = (0..TRACERS)
            .map(|i| {
                let id = entries[i % entries.len()];
                let mut c = bin(&db);
                c.args(["trace", "--json", "--id", &id.to_string()]);
                tokio::spawn(async move {
                    let t = Instant::now();
                    let out = c.output().await.unwrap();
                    (out, t.elapsed())
                })
            })
            .collect();
        let mut failures = Vec::new();
        for t in tracers {
            let (out, took) = t.await.unwrap();
            slowest_trace = slowest_trace.max(took);
            if !out.status.success() {
                failures.push(String::from_utf8_lossy(&out.stderr).to_string());
                continue;
            }
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["tracing"].as_array().map(Vec::len), Some(20));
        }
        let load = load.await.unwrap().unwrap();
        if !load.status.success() {
            failures.push(format!("load: {}", String::from_utf8_lossy(&load.stderr)));
        }
        stop_tx.send(true).unwrap();
        let f = http.await.unwrap();
        println!(
            "round {round}: {TRACERS} trace processes + load of {} rows in {:.2} s; {} HTTP requests, slowest {:.0} ms",
            more.len() * 20,
            t_round.elapsed().as_secs_f64(),
            f.requests,
            f.slowest.as_secs_f64() * 1000.0
        );
        assert!(failures.is_empty(), "round {round}: {failures:#?}");
        assert!(
            f.server_errors.is_empty(),
            "round {round}: {:#?}",
            f.server_errors
        );
        assert!(
            f.slowest < Duration::from_secs(DEADLINE_S),
            "round {round}: an answer took {:?}, past the {DEADLINE_S} s deadline",
            f.slowest
        );
        total_http += f.requests;
        slowest_http = slowest_http.max(f.slowest);
    }
    println!(
        "{ROUNDS} rounds: {} trace processes, {loaded_rows} rows loaded, {total_http} HTTP requests; \
         slowest trace process {:.0} ms, slowest HTTP answer {:.0} ms; 0 failures, 0 5xx",
        ROUNDS * TRACERS,
        slowest_trace.as_secs_f64() * 1000.0,
        slowest_http.as_secs_f64() * 1000.0
    );
    // Every round's rows are there.
    let out = bin(&db)
        .args([
            "trace",
            "--json",
            "--id",
            &last_entry_id(&dir.path().join(format!("round{}.jsonl", ROUNDS - 1))),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(serve);
}

/// `_id` of the first row of the last trace in a JSON Lines file.
fn last_entry_id(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let row: Value = serde_json::from_str(lines[lines.len() - 20]).unwrap();
    row["_id"].to_string().trim_matches('"').to_string()
}

#[tokio::test]
async fn trace_on_a_missing_file_is_a_clear_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    let out = bin(&db)
        .args(["trace", "--id", "1"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!db.exists(), "a read-only command created the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_loads_creating_one_fresh_file_together_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let mut keys = Keys::new(0);
    let mut jobs = Vec::new();
    for i in 0..8u64 {
        let file = dir.path().join(format!("l{i}.jsonl"));
        write_jsonl(&file, &traces(10, 100 * i, &mut keys));
        jobs.push(tokio::spawn(bin(&db).arg("load").arg(&file).output()));
    }
    for j in jobs {
        let out = j.await.unwrap().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("loaded 200 rows"));
    }
}
