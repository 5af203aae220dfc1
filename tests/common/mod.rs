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
use deepflow_tempo::store::model::{make_id, DeviceName, L7FlowLogRow, NameTables, OrgId, PodName};
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

/// An HTTP client for a test server with the default `limits.keep_alive` (5 s): it drops a
/// pooled connection after 2 s idle, so it never sends a request on a connection the server
/// is closing at that moment (the request then fails with "connection closed before message
/// completed", seen under load when a test paused between requests).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("an HTTP client")
}

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
///
/// Test processes share one ClickHouse front, so a number is claimed for the front by creating
/// a directory named after it (atomic across processes): two test binaries never write to one
/// organisation, whose rows (same `_id`s, other traces) would show up in each other's answers.
pub fn fresh_org() -> OrgId {
    static NEXT: AtomicU16 = AtomicU16::new(2);
    static CLAIMS: OnceLock<Option<PathBuf>> = OnceLock::new();
    let claims = CLAIMS.get_or_init(|| {
        let front: String = clickhouse_url()?
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = std::env::temp_dir()
            .join("deepflow-tempo-test-orgs")
            .join(front);
        std::fs::create_dir_all(&dir).ok()?;
        Some(dir)
    });
    if let Some(dir) = claims {
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            // Organisations above 9901 stay free (a test needs one without databases).
            if n > 9901 {
                break;
            }
            if std::fs::create_dir(dir.join(n.to_string())).is_ok() {
                return OrgId(n);
            }
        }
    }
    // Every number claimed (or no front): spread this process over the organisations 2..=9901.
    static FALLBACK: AtomicU16 = AtomicU16::new(0);
    static BASE: OnceLock<u16> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        2 + ((std::process::id() ^ nanos) % 99) as u16 * 100
    });
    OrgId(base + FALLBACK.fetch_add(1, Ordering::Relaxed) % 100)
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

/// The application trace id of the S4 fixture.
pub const T4: &str = "0af7651916cd43dd8448eb211c80319c";

/// The spec's S4 (two instrumented services, eBPF and packets, trace T4) at `t0` µs.
pub fn s4_rows(t0: i64) -> Vec<L7FlowLogRow> {
    struct R(
        u32,
        u16,
        &'static str,
        u16,
        i64,
        i64,
        (u32, u32),
        (u64, u64),
        i32,
        &'static str,
        &'static str,
        (u32, u32),
    );
    let a = (50, 5);
    let b = (60, 6);
    let c = (70, 7);
    let rows = [
        R(
            401,
            4,
            "c-app",
            1,
            0,
            10_000,
            (0, 0),
            (0, 0),
            0,
            "aaaa000000000001",
            "",
            a,
        ),
        R(
            402,
            3,
            "c-p",
            1,
            500,
            9500,
            (111, 222),
            (1, 2),
            10,
            "aaaa000000000001",
            "",
            a,
        ),
        R(
            403,
            0,
            "c",
            1,
            600,
            9400,
            (111, 222),
            (0, 0),
            0,
            "aaaa000000000001",
            "",
            a,
        ),
        R(
            404,
            0,
            "s",
            2,
            800,
            9200,
            (111, 222),
            (0, 0),
            0,
            "aaaa000000000001",
            "",
            b,
        ),
        R(
            405,
            3,
            "s-p",
            2,
            900,
            9100,
            (111, 222),
            (3, 4),
            20,
            "aaaa000000000001",
            "",
            b,
        ),
        R(
            406,
            4,
            "s-app",
            2,
            1000,
            9000,
            (0, 0),
            (0, 0),
            0,
            "bbbb000000000001",
            "aaaa000000000001",
            b,
        ),
        R(
            407,
            4,
            "app",
            2,
            1500,
            8500,
            (0, 0),
            (0, 0),
            0,
            "bbbb000000000002",
            "bbbb000000000001",
            b,
        ),
        R(
            408,
            4,
            "c-app",
            2,
            2000,
            8000,
            (0, 0),
            (0, 0),
            0,
            "bbbb000000000003",
            "bbbb000000000002",
            b,
        ),
        R(
            409,
            3,
            "c-p",
            2,
            2100,
            7900,
            (333, 444),
            (3, 4),
            20,
            "bbbb000000000003",
            "",
            b,
        ),
        R(
            410,
            3,
            "s-p",
            3,
            2300,
            7700,
            (333, 444),
            (5, 5),
            30,
            "bbbb000000000003",
            "",
            c,
        ),
    ];
    rows.iter()
        .map(|R(n, sig, tap, ag, s, e, seq, sys, pid, sp, psp, own)| {
            let (s, e) = (t0 + s, t0 + e);
            let client = tap.starts_with('c');
            // Client rows: side 0 is the own service, side 1 the callee (B or C); server rows: side 1.
            let callee = if *n <= 405 { b } else { c };
            let (side0, side1) = if client {
                (*own, callee)
            } else {
                (if *n <= 406 { a } else { b }, *own)
            };
            let mut r = L7FlowLogRow {
                _id: make_id((e / 1_000_000) as u32, 1, *n),
                start_time: s,
                end_time: e,
                signal_source: *sig,
                observation_point: tap.to_string(),
                agent_id: *ag,
                r#type: 2,
                protocol: if *sig == 4 { 0 } else { 6 },
                l7_protocol: 20,
                biz_protocol: "HTTP".into(),
                version: "1.1".into(),
                request_type: "GET".into(),
                request_resource: format!("/api/{n}"),
                endpoint: format!("/api/{n}"),
                response_code: Some(200),
                server_port: 80,
                req_tcp_seq: seq.0,
                resp_tcp_seq: seq.1,
                syscall_trace_id_request: sys.0,
                syscall_trace_id_response: sys.1,
                trace_id: T4.into(),
                span_id: sp.to_string(),
                parent_span_id: psp.to_string(),
                auto_instance_type_0: 10,
                auto_instance_type_1: 10,
                auto_service_type_0: 130,
                auto_service_type_1: 130,
                auto_service_id_0: side0.0,
                auto_instance_id_0: side0.1,
                auto_service_id_1: side1.0,
                auto_instance_id_1: side1.1,
                pod_id_0: side0.1,
                pod_id_1: side1.1,
                app_service: if *sig == 4 {
                    format!("svc-{}", (b'a' + (own.1 - 5) as u8) as char)
                } else {
                    String::new()
                },
                ..Default::default()
            };
            if client {
                r.process_id_0 = *pid;
            } else {
                r.process_id_1 = *pid;
            }
            r.normalise(*n);
            r
        })
        .collect()
}

pub fn names() -> NameTables {
    let dev = |t: u64, id: u64, name: &str| DeviceName {
        devicetype: t,
        deviceid: id,
        name: name.into(),
        ..Default::default()
    };
    NameTables {
        devices: vec![
            dev(130, 50, "svc-a"),
            dev(130, 60, "svc-b"),
            dev(130, 70, "svc-c"),
            dev(10, 5, "svc-a-7d9f"),
            dev(10, 6, "svc-b-5c4d"),
            dev(10, 7, "svc-c-1a2b"),
        ],
        pods: vec![
            PodName {
                id: 5,
                name: "svc-a-7d9f".into(),
                ..Default::default()
            },
            PodName {
                id: 6,
                name: "svc-b-5c4d".into(),
                ..Default::default()
            },
            PodName {
                id: 7,
                name: "svc-c-1a2b".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// The time origin of the spec's S14/S15 scenarios (µs).
pub const SPEC_T0: i64 = 1_700_000_000_000_000;

/// The spec's default row (§10) at `SPEC_T0 + start .. SPEC_T0 + end`, `_id = (sec << 32) | n`.
pub fn spec_row(n: u32, sig: u16, tap: &str, agent: u16, start: i64, end: i64) -> L7FlowLogRow {
    let (s, e) = (SPEC_T0 + start, SPEC_T0 + end);
    let mut r = L7FlowLogRow {
        _id: ((e / 1_000_000) as u64) << 32 | n as u64,
        start_time: s,
        end_time: e,
        signal_source: sig,
        observation_point: tap.into(),
        agent_id: agent,
        r#type: 2,
        protocol: if sig == 4 { 0 } else { 6 },
        l7_protocol: 20,
        biz_protocol: "HTTP".into(),
        version: "1.1".into(),
        request_type: "GET".into(),
        request_resource: "/api".into(),
        endpoint: "/api".into(),
        response_code: Some(200),
        server_port: 80,
        auto_instance_type_0: 10,
        auto_instance_type_1: 10,
        auto_service_type_0: 130,
        auto_service_type_1: 130,
        response_duration: (end - start) as u64,
        ..Default::default()
    };
    r.normalise(n);
    r
}

pub fn seq(mut r: L7FlowLogRow, req: u32, resp: u32) -> L7FlowLogRow {
    r.req_tcp_seq = req;
    r.resp_tcp_seq = resp;
    r
}

pub fn sys(mut r: L7FlowLogRow, req: u64, resp: u64, pid: i32, inst: u32) -> L7FlowLogRow {
    r.syscall_trace_id_request = req;
    r.syscall_trace_id_response = resp;
    if r.observation_point.starts_with('c') {
        r.process_id_0 = pid;
        r.auto_instance_id_0 = inst;
    } else {
        r.process_id_1 = pid;
        r.auto_instance_id_1 = inst;
    }
    r
}

pub fn ids(mut r: L7FlowLogRow, trace: &str, span: &str, parent: &str) -> L7FlowLogRow {
    let mut parts = trace.split(',');
    r.trace_id = parts.next().unwrap_or("").into();
    r._trace_id_2 = parts.next().unwrap_or("").into();
    r.span_id = span.into();
    r.parent_span_id = parent.into();
    r
}

/// For every listed case, one test on the embedded store (in module `sqlite`) and one on
/// ClickHouse (in module `clickhouse`, skipped outside CI without a ClickHouse engine).
/// `on_both_stores!(a, b)` calls `a(store, org)`; `on_both_stores!(with prep; a, b)` calls
/// `a(prep(store, org).await)`.
#[allow(unused_macros)]
macro_rules! on_both_stores {
    (with $prep:path; $($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, org) = crate::common::sqlite_store().await;
                    super::$case($prep(store, org).await).await;
                }
            )*
        }
        mod clickhouse {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some((store, org)) = crate::common::clickhouse_store().await else { return };
                    super::$case($prep(store, org).await).await;
                }
            )*
        }
    };
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, org) = crate::common::sqlite_store().await;
                    super::$case(store, org).await;
                }
            )*
        }
        mod clickhouse {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some((store, org)) = crate::common::clickhouse_store().await else { return };
                    super::$case(store, org).await;
                }
            )*
        }
    };
}

/// Every span field of §7.9.
pub const SPAN_FIELDS: &[&str] = &[
    "id",
    "_ids",
    "related_ids",
    "signal_source",
    "type",
    "start_time_us",
    "end_time_us",
    "duration",
    "selftime",
    "tap_side",
    "Enum(tap_side)",
    "l7_protocol",
    "Enum(l7_protocol)",
    "l7_protocol_str",
    "endpoint",
    "request_type",
    "request_resource",
    "response_status",
    "response_exception",
    "biz_response_code",
    "response_code",
    "flow_id",
    "request_id",
    "x_request_id_0",
    "x_request_id_1",
    "span_id",
    "parent_span_id",
    "req_tcp_seq",
    "resp_tcp_seq",
    "syscall_cap_seq_0",
    "syscall_cap_seq_1",
    "syscall_trace_id_request",
    "syscall_trace_id_response",
    "trace_id",
    "attribute",
    "parent_id",
    "childs",
    "process_id",
    "vtap_id",
    "service_uid",
    "service_uname",
    "app_service",
    "app_instance",
    "tap_port",
    "tap_port_name",
    "resource_from_vtap",
    "set_parent_info",
    "auto_instance",
    "auto_instance_id",
    "auto_instance_type",
    "tap_id",
    "tap",
    "_querier_region",
    "is_tls",
    "is_async",
    "subnet",
    "ip",
    "process_kname",
    "gprocess",
    "auto_service",
    "auto_service_id",
    "auto_service_type",
    "deepflow_span_id",
    "deepflow_parent_span_id",
    "render_start_time_us",
    "render_end_time_us",
];

/// The spec's S14: trace id and span ids P, X, Y, and DeepFlow's rows of that trace.
pub const S14_T: &str = "0af7651916cd43dd8448eb211c80319c";
pub const S14_P: &str = "1111111111111111";
pub const S14_X: &str = "2222222222222222";
pub const S14_Y: &str = "3333333333333333";

pub fn s14_rows() -> Vec<L7FlowLogRow> {
    vec![
        ids(
            sys(
                seq(spec_row(1, 3, "c-p", 1, 0, 20_000), 111, 222),
                1,
                1,
                10,
                5,
            ),
            S14_T,
            S14_P,
            "",
        ),
        ids(
            sys(
                seq(spec_row(2, 3, "s-p", 2, 500, 19_500), 111, 222),
                3,
                4,
                20,
                6,
            ),
            S14_T,
            S14_P,
            "",
        ),
        ids(
            sys(
                seq(spec_row(3, 3, "c-p", 2, 5000, 15_000), 333, 444),
                3,
                4,
                20,
                6,
            ),
            S14_T,
            S14_Y,
            "",
        ),
        ids(
            seq(spec_row(4, 0, "c", 2, 5100, 14_900), 333, 444),
            S14_T,
            S14_Y,
            "",
        ),
        ids(
            sys(
                seq(spec_row(5, 3, "s-p", 3, 5500, 14_500), 333, 444),
                5,
                5,
                30,
                7,
            ),
            S14_T,
            S14_Y,
            "",
        ),
    ]
}

/// The spec's S15a rows (iteration and TCP sequence reuse; row 6 is 5 s later).
pub fn s15a_rows() -> Vec<L7FlowLogRow> {
    let mut r6 = seq(spec_row(6, 0, "c", 3, 5_000_000, 5_001_000), 111, 999);
    r6._id = (1_700_000_005u64 << 32) | 6;
    vec![
        sys(
            seq(spec_row(1, 3, "c-p", 1, 1000, 9000), 111, 222),
            7,
            7,
            10,
            5,
        ),
        seq(spec_row(2, 0, "c", 1, 1100, 8900), 111, 222),
        seq(spec_row(3, 0, "s", 2, 1300, 8700), 111, 222),
        sys(
            seq(spec_row(4, 3, "s-p", 2, 1400, 8600), 111, 222),
            8,
            9,
            20,
            6,
        ),
        sys(
            seq(spec_row(5, 3, "c-p", 2, 2000, 3000), 333, 444),
            8,
            9,
            20,
            6,
        ),
        r6,
    ]
}

/// The spec's S15b rows (trace id expansion and a conflicting trace id).
pub fn s15b_rows() -> Vec<L7FlowLogRow> {
    let mut r1 = ids(spec_row(1, 4, "s-app", 1, 100, 9900), "T", "s1", "u1");
    r1.auto_instance_id_1 = 5;
    let r2 = ids(
        sys(seq(spec_row(2, 3, "s-p", 1, 0, 10_000), 10, 20), 1, 1, 3, 5),
        "T",
        "u1",
        "",
    );
    let r3 = ids(
        seq(spec_row(3, 0, "s", 1, -100, 10_100), 10, 20),
        "U",
        "",
        "",
    );
    let r4 = seq(spec_row(4, 0, "c", 9, -500, 10_500), 10, 20);
    let mut r5 = ids(spec_row(5, 4, "c-app", 1, 1000, 2000), "T,V", "s2", "s1");
    r5.auto_instance_id_0 = 5;
    let mut r6 = ids(spec_row(6, 4, "s-app", 7, 1200, 1800), "V", "v1", "s2");
    r6.auto_instance_id_1 = 8;
    vec![r1, r2, r3, r4, r5, r6]
}

/// The `deepflow-tempo serve` binary running as its own process on a free loopback port.
pub struct ServeProcess {
    pub base: String,
    pub child: Child,
}

impl ServeProcess {
    /// Start `serve` with `args` (global flags such as `--embedded-path`, `--config`) and
    /// `env` on a port it picks itself (`--listen 127.0.0.1:0`), read the address it prints,
    /// and wait (at most 30 s) until it answers `/ready`. A port picked here and handed over
    /// could be taken by another process of the run in between.
    pub fn start(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> ServeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deepflow-tempo"));
        cmd.args(["--log", "warn", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg("serve")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start deepflow-tempo serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the announced URL, then keeps draining stdout so the process never blocks.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("serving the Tempo API on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(url.trim().to_string());
                    }
                }
            }
        });
        let mut p = ServeProcess {
            base: String::new(),
            child,
        };
        let t = std::time::Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(url) => {
                    p.base = url;
                    break;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = p.child.wait();
                    panic!("serve exited during startup: {status:?}");
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("serve exited during startup: {status}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "serve did not listen within 30 s"
            );
        }
        let port = p.base.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        while !ready_once(port) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "serve did not answer /ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send `signal` ("TERM", "INT", "STOP", "CONT", "KILL") with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        send_signal(self.pid(), signal);
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One blocking `GET /ready` on its own connection: true on `200`.
fn ready_once(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    if c.write_all(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    c.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// `kill -<signal> <pid>`.
pub fn send_signal(pid: i32, signal: &str) {
    let st = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -{signal} {pid} failed");
}

impl Front {
    /// The front's process id (to stop, continue or kill it in fault tests).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}
