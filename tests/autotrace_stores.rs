//! Auto-tracing end to end through the search on both stores: the spec's S14 (completion API)
//! and S15 (search phase) scenarios, and a generated zero-code trace checked against its
//! ground truth. The same rows are inserted into SQLite and into ClickHouse.

#[macro_use]
mod common;

use async_trait::async_trait;
use deepflow_tempo::autotrace::{ExternalAppSpan, TraceParams, TraceResult};
use deepflow_tempo::query::trace::TraceService;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::{
    Facet, FlowQuery, FlowStore, SchemaOptions, SharedStore, StoreKind, StoreResult,
};
use deepflow_tempo::synth;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{s14_rows, S14_P as P, S14_T as T, S14_X as X, S14_Y as Y};
use common::{s15a_rows, s15b_rows, SPEC_T0 as T0};

on_both_stores!(
    s15a_iteration_and_tcp_reuse,
    s15b_trace_ids_expand_and_conflicts_drop,
    s14_completion_with_external_spans,
    s14_completion_of_an_unknown_trace_returns_the_external_spans,
    generated_zero_code_trace_matches_its_ground_truth,
    s15_with_inference_only_adds_or_corrects,
    s15b_with_inference_adds_the_second_trace,
    s14_with_inference_completes_as_deepflow,
);

/// A store that counts the reads it answers (to check one round trip per query).
struct Counting {
    inner: SharedStore,
    reads: Mutex<Vec<FlowQuery>>,
}

#[async_trait]
impl FlowStore for Counting {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn select_meta(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowMeta>> {
        self.reads.lock().unwrap().push(q.clone());
        self.inner.select_meta(org, q).await
    }
    async fn select_records(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowRecord>> {
        self.reads.lock().unwrap().push(q.clone());
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
        self.inner.distinct_values(org, q, facet).await
    }
}

/// `(n, parent n, reason)` of every span, by the low bits of `_id` (external spans: 0).
fn tree(result: &TraceResult) -> Vec<(u64, Option<u64>, Option<String>)> {
    let by_index: HashMap<usize, u64> = result
        .spans
        .iter()
        .map(|s| (s.id, s.ids[0] & 0xffff_ffff))
        .collect();
    result
        .spans
        .iter()
        .map(|s| {
            (
                s.ids[0] & 0xffff_ffff,
                s.parent_id.and_then(|p| by_index.get(&p).copied()),
                s.set_parent_info.clone(),
            )
        })
        .collect()
}

fn why(t: &[(u64, Option<u64>, Option<String>)], n: u64) -> (Option<u64>, Option<&str>) {
    let e = t
        .iter()
        .find(|e| e.0 == n)
        .unwrap_or_else(|| panic!("span {n} missing in {t:?}"));
    (e.1, e.2.as_deref())
}

const TCP: &str = "trace mounted due to tcp_seq";

/// DeepFlow's own answer (the reference-parity checks): no inference stage.
fn deepflow() -> TraceParams {
    TraceParams {
        inference: false,
        ..TraceParams::default()
    }
}

/// What the inference stage changes in a scenario's tree: `(n, parent before, parent after)`
/// of every span whose parent differs or that only one of the trees has (`Some(None)`: a root;
/// `None`: absent).
async fn inference_changes(
    store: SharedStore,
    org: OrgId,
    entry: u64,
) -> Vec<(u64, Option<Option<u64>>, Option<Option<u64>>)> {
    let mut trees = Vec::new();
    for inference in [false, true] {
        let params = TraceParams {
            inference,
            ..TraceParams::default()
        };
        let svc = TraceService::new(store.clone(), params);
        let (_, result, _) = svc
            .trace_by_id(org, entry, 1_699_999_940, 1_700_000_060)
            .await
            .unwrap();
        let t: HashMap<u64, Option<u64>> =
            tree(&result).into_iter().map(|(n, p, _)| (n, p)).collect();
        trees.push(t);
    }
    let mut keys: Vec<u64> = trees.iter().flat_map(|t| t.keys().copied()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|n| {
            let (a, b) = (trees[0].get(&n).copied(), trees[1].get(&n).copied());
            (a != b).then_some((n, a, b))
        })
        .collect()
}

/// With inference on, S14's completion is DeepFlow's: same spans, same parents, same reasons.
async fn s14_with_inference_completes_as_deepflow(store: SharedStore, org: OrgId) {
    store.insert_rows(org, &s14_rows()).await.unwrap();
    let mut trees = Vec::new();
    for inference in [false, true] {
        let params = TraceParams {
            inference,
            ..TraceParams::default()
        };
        let svc = TraceService::new(store.clone(), params.clone());
        let (_, result, _) = svc.complete(org, s14_spans(T), &params).await.unwrap();
        let mut t: Vec<_> = result
            .spans
            .iter()
            .map(|s| {
                (
                    s.ids.clone(),
                    s.record.span_id.clone(),
                    s.deepflow_parent_span_id.clone(),
                    s.set_parent_info.clone(),
                )
            })
            .collect();
        t.sort();
        trees.push(t);
    }
    assert!(!trees[0].is_empty());
    assert_eq!(trees[0], trees[1]);
}

/// With inference on, S15a's tree is DeepFlow's.
async fn s15_with_inference_only_adds_or_corrects(store: SharedStore, org: OrgId) {
    let a = s15a_rows();
    store.insert_rows(org, &a).await.unwrap();
    assert_eq!(
        inference_changes(store.clone(), org, a[0]._id).await,
        vec![]
    );
}

async fn s15b_with_inference_adds_the_second_trace(store: SharedStore, org: OrgId) {
    let b = s15b_rows();
    store.insert_rows(org, &b).await.unwrap();
    // S15b gains row 3, the server NIC of the call, whose trace id U DeepFlow cuts off: it
    // joins the TCP path between the client NIC (4) and the server process (2), which now
    // hangs under it, as a server process does under its NIC.
    assert_eq!(
        inference_changes(store, org, b[1]._id).await,
        vec![(2, Some(Some(4)), Some(Some(3))), (3, None, Some(Some(4)))]
    );
}

async fn s15a_iteration_and_tcp_reuse(store: SharedStore, org: OrgId) {
    let rows = s15a_rows();
    store.insert_rows(org, &rows).await.unwrap();
    let counting = Arc::new(Counting {
        inner: store,
        reads: Mutex::new(vec![]),
    });
    let svc = TraceService::new(counting.clone(), deepflow());
    let (outcome, result, _) = svc
        .trace_by_id(org, rows[0]._id, 1_699_999_940, 1_700_000_060)
        .await
        .unwrap();
    // Q1, Q3 (tcp+syscall), Q3 (syscall 8,9), Q3 (tcp 333/444), Q4.
    assert_eq!(counting.reads.lock().unwrap().len(), 5);
    assert_eq!(
        outcome.ids.len(),
        5,
        "row 6 (TCP sequence reuse 5 s later) is dropped"
    );
    let t = tree(&result);
    assert_eq!(t.len(), 5);
    assert_eq!(why(&t, 1), (None, None));
    assert_eq!(why(&t, 2), (Some(1), Some(TCP)));
    assert_eq!(why(&t, 3), (Some(2), Some(TCP)));
    assert_eq!(why(&t, 4), (Some(3), Some(TCP)));
    assert_eq!(
        why(&t, 5),
        (
            Some(4),
            Some("c-p sys-span mounted due to syscall_trace_id matched to s-p root")
        )
    );
    let s4 = result
        .spans
        .iter()
        .find(|s| s.ids[0] & 0xffff_ffff == 4)
        .unwrap();
    assert_eq!(s4.selftime, 6200);
}

async fn s15b_trace_ids_expand_and_conflicts_drop(store: SharedStore, org: OrgId) {
    let rows = s15b_rows();
    store.insert_rows(org, &rows).await.unwrap();
    let counting = Arc::new(Counting {
        inner: store,
        reads: Mutex::new(vec![]),
    });
    let svc = TraceService::new(counting.clone(), deepflow());
    let (outcome, result, _) = svc
        .trace_by_id(org, rows[1]._id, 1_699_999_940, 1_700_000_060)
        .await
        .unwrap();
    // Q1, Q2 (T), Q3, Q2 (V), Q4.
    assert_eq!(counting.reads.lock().unwrap().len(), 5);
    let mut got: Vec<u64> = outcome.ids.iter().map(|id| id & 0xffff_ffff).collect();
    got.sort();
    assert_eq!(got, vec![1, 2, 4, 5, 6], "row 3 carries foreign trace U");
    let t = tree(&result);
    assert_eq!(why(&t, 4), (None, None));
    assert_eq!(why(&t, 2), (Some(4), Some(TCP)));
    assert_eq!(
        why(&t, 1),
        (
            Some(2),
            Some("s-p sys_span mounted due to same span_id as parent")
        )
    );
    assert_eq!(
        why(&t, 5),
        (Some(1), Some("app_span mounted due to parent_span_id"))
    );
    assert_eq!(
        why(&t, 6),
        (Some(5), Some("s-app mounted due to parent_span_id"))
    );
    let s4 = result
        .spans
        .iter()
        .find(|s| s.ids[0] & 0xffff_ffff == 4)
        .unwrap();
    assert_eq!(s4.deepflow_span_id, "u1.c.0");
}

fn s14_spans(trace: &str) -> Vec<ExternalAppSpan> {
    vec![
        ExternalAppSpan {
            trace_id: trace.into(),
            span_id: X.into(),
            parent_span_id: P.into(),
            span_kind: 2,
            start_time_us: T0 + 1000,
            end_time_us: T0 + 19_000,
            _id: None,
        },
        ExternalAppSpan {
            trace_id: trace.into(),
            span_id: Y.into(),
            parent_span_id: X.into(),
            span_kind: 3,
            start_time_us: T0 + 4000,
            end_time_us: T0 + 16_000,
            _id: None,
        },
    ]
}

async fn s14_completion_with_external_spans(store: SharedStore, org: OrgId) {
    store.insert_rows(org, &s14_rows()).await.unwrap();
    let svc = TraceService::new(store, TraceParams::default());
    let (_, result, _) = svc
        .complete(org, s14_spans(T), &TraceParams::default())
        .await
        .unwrap();
    let dfid: HashMap<String, (String, Option<String>)> = result
        .spans
        .iter()
        .map(|s| {
            let key = if s.record.signal_source == 4 {
                s.record.span_id.clone()
            } else {
                (s.ids[0] & 0xffff_ffff).to_string()
            };
            (
                key,
                (s.deepflow_parent_span_id.clone(), s.set_parent_info.clone()),
            )
        })
        .collect();
    let get = |k: &str| {
        dfid.get(k)
            .unwrap_or_else(|| panic!("{k} missing: {dfid:?}"))
            .clone()
    };
    assert_eq!(get("1").0, "");
    assert_eq!(
        get("2"),
        ("1111111111111111.c-p.0".into(), Some(TCP.into()))
    );
    assert_eq!(
        get(X),
        (
            "1111111111111111.c-p.0".into(),
            Some("s-app mounted due to parent_span_id".into())
        )
    );
    assert_eq!(
        get(Y),
        (
            X.into(),
            Some("app_span mounted due to parent_span_id".into())
        )
    );
    assert_eq!(
        get("3"),
        (
            "1111111111111111.s-p.1".into(),
            Some("c-p sys-span mounted due to syscall_trace_id matched to s-p root".into())
        )
    );
    assert_eq!(
        get("4"),
        ("3333333333333333.c-p.4".into(), Some(TCP.into()))
    );
    assert_eq!(get("5"), ("3333333333333333.c.5".into(), Some(TCP.into())));
    let json = result.to_completion_json();
    assert!(json.get("services").is_none());
    assert_eq!(json["tracing"].as_array().unwrap().len(), 7);
}

async fn s14_completion_of_an_unknown_trace_returns_the_external_spans(
    store: SharedStore,
    org: OrgId,
) {
    store.insert_rows(org, &s14_rows()).await.unwrap();
    let svc = TraceService::new(store, TraceParams::default());
    let (_, result, _) = svc
        .complete(org, s14_spans("unknown"), &TraceParams::default())
        .await
        .unwrap();
    let spans: Vec<&str> = result
        .spans
        .iter()
        .map(|s| s.record.span_id.as_str())
        .collect();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(spans.contains(&X) && spans.contains(&Y));
}

async fn generated_zero_code_trace_matches_its_ground_truth(store: SharedStore, org: OrgId) {
    let shape = synth::Shape {
        calls: 60,
        fanout: 3,
        services: 6,
    };
    let start = T0 + 7_000_000;
    let trace = synth::zero_code_trace(11, start, shape, &mut synth::Keys::new(0));
    store.insert_rows(org, &trace.rows).await.unwrap();
    let svc = TraceService::new(store, TraceParams::default());
    let t = (trace.entry_id >> 32) as i64;
    let (_, result, _) = svc
        .trace_by_id(org, trace.entry_id, t - 60, t + 60)
        .await
        .unwrap();
    let index_to_id: HashMap<usize, u64> = result.spans.iter().map(|s| (s.id, s.ids[0])).collect();
    let got: HashMap<u64, Option<u64>> = result
        .spans
        .iter()
        .map(|s| (s.ids[0], s.parent_id.map(|p| index_to_id[&p])))
        .collect();
    assert_eq!(
        got.len(),
        trace.rows.len(),
        "every generated row is one span"
    );
    for (id, parent) in &trace.parent {
        assert_eq!(got.get(id), Some(parent), "parent of {id}");
    }
}
