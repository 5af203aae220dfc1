//! The demo generator: its rows are valid DeepFlow rows, it is deterministic, and auto-tracing
//! rebuilds every generated request's tree exactly, from its zero-code entry row and from its
//! OpenTelemetry trace id, on the embedded store (every request of a generated minute) and on
//! ClickHouse (a sample).

mod common;

use deepflow_tempo::autotrace::{TraceParams, TraceResult};
use deepflow_tempo::demo::{self, Dataset, DemoOptions, Request};
use deepflow_tempo::query::trace::TraceService;
use deepflow_tempo::store::model::OrgId;
use deepflow_tempo::store::SharedStore;
use std::collections::{BTreeMap, BTreeSet, HashMap};

const END_US: i64 = 1_700_000_000_000_000;

fn minute() -> Dataset {
    demo::generate(&DemoOptions {
        seed: 7,
        minutes: 1,
        rate: 2.0,
        end_us: END_US,
    })
}

type Tree = BTreeMap<Vec<u64>, Option<Vec<u64>>>;

/// The expected tree: each span's sorted row ids → its parent's.
fn expected(r: &Request) -> Tree {
    let by_first: HashMap<u64, Vec<u64>> = r
        .spans
        .iter()
        .map(|s| {
            let mut ids = s.ids.clone();
            ids.sort();
            (s.ids[0], ids)
        })
        .collect();
    r.spans
        .iter()
        .map(|s| {
            (
                by_first[&s.ids[0]].clone(),
                s.parent.map(|p| by_first[&p].clone()),
            )
        })
        .collect()
}

fn got(result: &TraceResult) -> Tree {
    let ids: HashMap<usize, Vec<u64>> = result
        .spans
        .iter()
        .map(|s| {
            let mut v = s.ids.clone();
            v.sort();
            (s.id, v)
        })
        .collect();
    result
        .spans
        .iter()
        .map(|s| (ids[&s.id].clone(), s.parent_id.map(|p| ids[&p].clone())))
        .collect()
}

fn diff(want: &Tree, have: &Tree) -> String {
    let mut out = String::new();
    for (k, v) in want {
        match have.get(k) {
            None => out.push_str(&format!("missing span {k:?}\n")),
            Some(p) if p != v => out.push_str(&format!(
                "span {k:?}: parent {:?}, want {:?}\n",
                p.as_ref().map(|p| p[0]),
                v.as_ref().map(|p| p[0])
            )),
            _ => {}
        }
    }
    for k in have.keys() {
        if !want.contains_key(k) {
            out.push_str(&format!("unexpected span {k:?}\n"));
        }
    }
    out
}

async fn check_requests(store: SharedStore, org: OrgId, data: &Dataset, requests: &[&Request]) {
    demo::load(store.as_ref(), org, data, 5_000).await.unwrap();
    let svc = TraceService::new(store, TraceParams::default());
    let mut failures = Vec::new();
    for r in requests {
        let want = expected(r);
        let t = (r.entry_id >> 32) as i64;
        let (_, by_id, _) = svc
            .trace_by_id(org, r.entry_id, t - 60, t + 60)
            .await
            .unwrap();
        let d = diff(&want, &got(&by_id));
        if !d.is_empty() {
            failures.push(format!("request {} by entry _id:\n{d}", r.entry_id));
        }
        let (_, by_trace, _) = svc
            .trace_by_trace_id(org, &r.trace_id, t - 3600, t + 60)
            .await
            .unwrap();
        let d = diff(&want, &got(&by_trace));
        if !d.is_empty() {
            failures.push(format!(
                "request {} by trace id {}:\n{d}",
                r.entry_id, r.trace_id
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} traces differ from their ground truth; first:\n{}",
        failures.len(),
        2 * requests.len(),
        failures[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_minute_rebuilds_its_ground_truth_embedded() {
    let data = minute();
    assert!(
        data.requests.len() >= 60,
        "{} requests",
        data.requests.len()
    );
    let all: Vec<&Request> = data.requests.iter().collect();
    let (store, org) = common::sqlite_store().await;
    check_requests(store, org, &data, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_requests_rebuild_their_ground_truth_on_clickhouse() {
    let Some((store, org)) = common::clickhouse_store().await else {
        return;
    };
    let data = minute();
    // The first, the failing, the slow and a few ordinary requests.
    let mut pick: Vec<&Request> = data.requests.iter().step_by(20).collect();
    pick.extend(data.requests.iter().find(|r| r.failed));
    pick.extend(data.requests.iter().find(|r| r.has_error && !r.failed));
    pick.extend(data.requests.iter().find(|r| r.slow));
    check_requests(store, org, &data, &pick).await;
}

#[test]
fn generation_is_deterministic_and_rows_are_valid() {
    let a = minute();
    let b = minute();
    assert_eq!(a.rows, b.rows);
    assert_eq!(a.requests.len(), b.requests.len());
    let mut ids = BTreeSet::new();
    for r in &a.rows {
        assert!(ids.insert(r._id), "duplicate _id {}", r._id);
        assert!(r.start_time <= r.end_time);
        assert!(r.end_time <= END_US && r.start_time >= END_US - 60_000_000);
        assert_eq!(r.time as i64, r.end_time / 1_000_000);
        assert_eq!((r._id >> 32) as u32, r.time);
        assert_eq!(r.response_duration as i64, r.end_time - r.start_time);
        assert!(matches!(r.signal_source, 0 | 3 | 4));
        assert!(r.agent_id > 0);
        if r.signal_source == 4 {
            assert_eq!(r.protocol, 0);
            assert_eq!(r.trace_id.len(), 32);
            assert_eq!(r.span_id.len(), 16);
        } else {
            assert!(r.protocol == 6 || r.protocol == 17);
        }
    }
    // Every row belongs to exactly one request's ground truth.
    let truth: usize = a
        .requests
        .iter()
        .flat_map(|r| &r.spans)
        .map(|s| s.ids.len())
        .sum();
    assert_eq!(truth, a.rows.len());
    // A different period gives different keys (two demo runs never collide).
    let later = demo::generate(&DemoOptions {
        seed: 7,
        minutes: 1,
        rate: 2.0,
        end_us: END_US + 600_000_000,
    });
    let t1: BTreeSet<&str> = a.requests.iter().map(|r| r.trace_id.as_str()).collect();
    assert!(later
        .requests
        .iter()
        .all(|r| !t1.contains(r.trace_id.as_str())));
}

#[test]
fn the_dataset_has_every_kind_of_row_and_names_for_them() {
    let data = minute();
    let points: BTreeSet<(u16, &str)> = data
        .rows
        .iter()
        .map(|r| (r.signal_source, r.observation_point.as_str()))
        .collect();
    for want in [
        (0, "c"),
        (0, "c-nd"),
        (0, "s-nd"),
        (0, "s"),
        (3, "c-p"),
        (3, "s-p"),
        (4, "s-app"),
        (4, "app"),
        (4, "c-app"),
    ] {
        assert!(points.contains(&want), "no {want:?} rows");
    }
    let protocols: BTreeSet<u8> = data.rows.iter().map(|r| r.l7_protocol).collect();
    for p in [20, 60, 80, 120] {
        assert!(protocols.contains(&p), "no l7_protocol {p}");
    }
    assert!(data.rows.iter().any(|r| r.response_code == Some(500)));
    assert!(data.rows.iter().any(|r| r.response_code == Some(503)));
    assert!(data.requests.iter().any(|r| r.slow));
    assert!(data.requests.iter().any(|r| r.failed));
    // X-Request-ID: injected by the gateway (request without, response with) and passed on.
    let entries: HashMap<u64, &deepflow_tempo::store::model::L7FlowLogRow> =
        data.rows.iter().map(|r| (r._id, r)).collect();
    let roots: Vec<_> = data.requests.iter().map(|r| entries[&r.entry_id]).collect();
    assert!(roots
        .iter()
        .any(|r| r.x_request_id_0.is_empty() && !r.x_request_id_1.is_empty()));
    assert!(roots
        .iter()
        .any(|r| !r.x_request_id_0.is_empty() && r.x_request_id_0 == r.x_request_id_1));
    // Every pod and workload a row names has a name.
    let devices: BTreeSet<(u64, u64)> = data
        .names
        .devices
        .iter()
        .map(|d| (d.devicetype, d.deviceid))
        .collect();
    for r in &data.rows {
        for (t, id) in [
            (r.auto_instance_type_0, r.auto_instance_id_0),
            (r.auto_instance_type_1, r.auto_instance_id_1),
            (r.auto_service_type_0, r.auto_service_id_0),
            (r.auto_service_type_1, r.auto_service_id_1),
        ] {
            assert!(
                devices.contains(&(t as u64, id as u64)),
                "no name for {t}/{id}"
            );
        }
        assert!(devices.contains(&(14, r.pod_node_id_0 as u64)));
    }
}
