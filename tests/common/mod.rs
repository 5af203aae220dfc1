//! Test support shared by the integration tests: a real ClickHouse engine (chDB behind the
//! project's HTTP front, `tools/ch_front.py`), fresh stores isolated per test, row builders.
//!
//! ClickHouse: `CLICKHOUSE_URL` when set (scripts/test.sh exports it), else one front spawned
//! per test binary from `CH_FRONT_PYTHON` / `CH_FRONT_SCRIPT` (defaults: the venv that
//! scripts/test.sh creates, and tools/ch_front.py). The front exits when the test process dies
//! (its stdin closes). Without ClickHouse a test skips with a message, except under `CI=true`,
//! where it fails.
#![allow(dead_code)]

use deepflow_tempo::store::clickhouse::{ClickHouseSettings, ClickHouseStore};
use deepflow_tempo::store::model::{make_id, L7FlowLogRow, OrgId};
use deepflow_tempo::store::sqlite::SqliteStore;
use deepflow_tempo::store::{FlowStore, SchemaOptions};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// A running front spawned by this process.
pub struct Front {
    pub url: String,
    pub port: u16,
    child: Child,
}

impl Front {
    /// Start a front on `port` (0 = any free port) with an in-memory engine.
    pub fn start(port: u16) -> Result<Front, String> {
        let python = std::env::var("CH_FRONT_PYTHON").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            format!("{home}/.cache/deepflow-tempo/chdb-venv/bin/python")
        });
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let script = std::env::var("CH_FRONT_SCRIPT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| root.join("tools/ch_front.py"));
        if !std::path::Path::new(&python).exists() {
            return Err(format!(
                "no chDB python at {python} (run scripts/test.sh once to create the venv)"
            ));
        }
        let mut child = Command::new(&python)
            .arg(&script)
            .args([
                "--port",
                &port.to_string(),
                "--path",
                ":memory:",
                "--log",
                "none",
                "--exit-on-stdin-eof",
            ])
            .arg("--config")
            .arg(root.join("tools/chdb-deepflow.xml"))
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", script.display()))?;
        let stdout = child.stdout.take().ok_or("front has no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("reading the front's URL: {e}"))?;
        let url = line.trim().to_string();
        if !url.starts_with("http://") {
            let _ = child.kill();
            return Err(format!("front printed {url:?} instead of its URL"));
        }
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or("front URL has no port")?;
        Ok(Front { url, port, child })
    }

    /// Stop the front (the engine and its data are gone).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SHARED: OnceLock<Option<String>> = OnceLock::new();
static KEEP: Mutex<Vec<Front>> = Mutex::new(Vec::new());

/// The ClickHouse URL for this test binary, or `None` (skip) outside CI.
pub fn clickhouse_url() -> Option<String> {
    SHARED
        .get_or_init(|| {
            if let Ok(url) = std::env::var("CLICKHOUSE_URL") {
                return Some(url);
            }
            match Front::start(0) {
                Ok(front) => {
                    let url = front.url.clone();
                    KEEP.lock().unwrap().push(front);
                    Some(url)
                }
                Err(e) => {
                    if std::env::var("CI").is_ok_and(|v| v == "true") {
                        panic!("ClickHouse is required under CI=true: {e}");
                    }
                    eprintln!("skipping ClickHouse tests: {e}");
                    None
                }
            }
        })
        .clone()
}

/// A fresh organisation number per test: each test gets its own databases
/// (`NNNN_flow_log`, `NNNN_flow_tag`), so tests run in parallel against one engine.
pub fn fresh_org() -> OrgId {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 2 + (std::process::id() % 97) as u16 * 100;
    OrgId(base + NEXT.fetch_add(1, Ordering::Relaxed) % 100)
}

pub fn clickhouse_settings(url: &str) -> ClickHouseSettings {
    ClickHouseSettings {
        url: url.to_string(),
        user: String::new(),
        password: String::new(),
        database: "flow_log".into(),
        dictionary_database: "flow_tag".into(),
        timeout: Duration::from_secs(60),
        max_rows: 100_000,
    }
}

/// A ClickHouse store with DeepFlow's schema freshly created for a new organisation.
pub async fn clickhouse_store() -> Option<(Arc<dyn FlowStore>, OrgId)> {
    let url = clickhouse_url()?;
    let org = fresh_org();
    let store = ClickHouseStore::new(clickhouse_settings(&url)).expect("valid settings");
    store
        .execute(&format!(
            "DROP DATABASE IF EXISTS `{}`",
            org.database("flow_log")
        ))
        .await
        .expect("drop flow db");
    store
        .execute(&format!(
            "DROP DATABASE IF EXISTS `{}`",
            org.database("flow_tag")
        ))
        .await
        .expect("drop tag db");
    store
        .apply_schema(org, SchemaOptions { without_ttl: true })
        .await
        .expect("apply DeepFlow's schema");
    Some((Arc::new(store), org))
}

/// An in-memory embedded store.
pub async fn sqlite_store() -> (Arc<dyn FlowStore>, OrgId) {
    let store = SqliteStore::open(":memory:", 100_000)
        .await
        .expect("open sqlite");
    (Arc::new(store), OrgId::DEFAULT)
}

/// Generate `n` varied rows (deterministic for a seed) starting at `t0_s`.
pub fn generated_rows(n: usize, seed: u64, t0_s: u32) -> Vec<L7FlowLogRow> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let taps = [
        "c-p", "c", "c-nd", "s-nd", "s", "s-p", "c-app", "s-app", "app",
    ];
    (0..n)
        .map(|i| {
            let r = next();
            let tap = taps[(r % taps.len() as u64) as usize];
            let start = (t0_s as i64) * 1_000_000 + (i as i64) * 1_000 + (r % 997) as i64;
            let dur = 100 + (r >> 8) % 50_000;
            let end = start + dur as i64;
            let sig = match tap {
                "c-p" | "s-p" => 3,
                "c-app" | "s-app" | "app" => 4,
                _ => 0,
            };
            L7FlowLogRow {
                _id: make_id((end / 1_000_000) as u32, 1, i as u32),
                time: (end / 1_000_000) as u32,
                start_time: start,
                end_time: end,
                response_duration: dur,
                observation_point: tap.into(),
                signal_source: sig,
                agent_id: (r % 5) as u16 + 1,
                protocol: if sig == 4 { 0 } else { 6 },
                l7_protocol: 20,
                biz_protocol: "HTTP".into(),
                r#type: 2,
                req_tcp_seq: (r >> 16) as u32 % 100_000,
                resp_tcp_seq: (r >> 20) as u32 % 100_000,
                syscall_trace_id_request: if sig == 3 { r >> 3 } else { 0 },
                trace_id: if i % 3 == 0 {
                    format!("trace-{}", i / 30)
                } else {
                    String::new()
                },
                span_id: format!("{:016x}", r),
                x_request_id_0: if i % 7 == 0 {
                    format!("xr-{}", i / 70)
                } else {
                    String::new()
                },
                request_id: if i % 2 == 0 { Some(r % 65536) } else { None },
                response_code: if i % 5 == 0 { None } else { Some(200) },
                request_type: "GET".into(),
                request_resource: format!("/api/{}", i % 13),
                endpoint: format!("/api/{}", i % 13),
                app_service: if sig == 4 {
                    format!("svc-{}", i % 4)
                } else {
                    String::new()
                },
                is_ipv4: 1,
                ..Default::default()
            }
        })
        .collect()
}
