//! S14 and S15 of the tracing spec through the sans-IO search state machine, driven by an
//! in-memory evaluator over exactly the listed rows: the query sequence (keys, windows) and the
//! final tree are asserted.

mod autotrace_common;

use autotrace_common::*;
use deepflow_tempo::autotrace::{
    ExternalAppSpan, Search, SearchError, SearchOutcome, SearchQuery, StopReason, TimeWindow,
    TraceParams,
};
use deepflow_tempo::store::model::FlowRecord;

const T0: i64 = 1_700_000_000_000_000;
const SEC: u64 = 1_700_000_000;

fn id(n: u64) -> u64 {
    (SEC << 32) | n
}

/// A row at `T0 + offset` with `_id = (1700000000 << 32) | n`.
fn at(n: u64, sig: u16, tap: &str, ag: u16, start: i64, end: i64) -> R {
    row(id(n), sig, tap, ag, T0 + start, T0 + end)
}

fn drive(mut s: Search, ev: &Evaluator) -> (Vec<SearchQuery>, SearchOutcome) {
    let mut qs = Vec::new();
    while let Some(q) = s.next().unwrap() {
        assert_eq!(s.next(), Err(SearchError::AwaitingRows));
        qs.push(q.clone());
        match &q {
            SearchQuery::Fetch { .. } => s.feed_records(ev.fetch(&q)).unwrap(),
            _ => s.feed_meta(ev.meta(&q)).unwrap(),
        }
    }
    assert!(s.is_done());
    (qs, s.finish())
}

fn assoc(req: &[u32], resp: &[u32], sys: &[u64], w: TimeWindow) -> SearchQuery {
    SearchQuery::Associate {
        req_tcp_seqs: req.to_vec(),
        resp_tcp_seqs: resp.to_vec(),
        syscall_ids: sys.to_vec(),
        x_request_ids: vec![],
        dns_request_ids: vec![],
        window: w,
        limit: 1000,
    }
}

fn s14_rows() -> Vec<FlowRecord> {
    let (t, p, y) = (
        "0af7651916cd43dd8448eb211c80319c",
        "1111111111111111",
        "3333333333333333",
    );
    vec![
        at(1, 3, "c-p", 1, 0, 20000)
            .tr(t)
            .sp(p)
            .seq(111, 222)
            .sys(1, 1)
            .pid(10)
            .inst0(5)
            .b(),
        at(2, 3, "s-p", 2, 500, 19500)
            .tr(t)
            .sp(p)
            .seq(111, 222)
            .sys(3, 4)
            .pid(20)
            .inst1(6)
            .b(),
        at(3, 3, "c-p", 2, 5000, 15000)
            .tr(t)
            .sp(y)
            .seq(333, 444)
            .sys(3, 4)
            .pid(20)
            .inst0(6)
            .b(),
        at(4, 0, "c", 2, 5100, 14900).tr(t).sp(y).seq(333, 444).b(),
        at(5, 3, "s-p", 3, 5500, 14500)
            .tr(t)
            .sp(y)
            .seq(333, 444)
            .sys(5, 5)
            .pid(30)
            .inst1(7)
            .b(),
    ]
}

#[test]
fn s14_tracing_completion_with_external_spans() {
    let t = "0af7651916cd43dd8448eb211c80319c";
    let (p, x, y) = ("1111111111111111", "2222222222222222", "3333333333333333");
    let spans = vec![
        ExternalAppSpan {
            trace_id: t.into(),
            span_id: x.into(),
            parent_span_id: p.into(),
            span_kind: 2,
            start_time_us: T0 + 1000,
            end_time_us: T0 + 19000,
            _id: None,
        },
        ExternalAppSpan {
            trace_id: t.into(),
            span_id: y.into(),
            parent_span_id: x.into(),
            span_kind: 3,
            start_time_us: T0 + 4000,
            end_time_us: T0 + 16000,
            _id: None,
        },
    ];
    let params = TraceParams::default();
    let ev = Evaluator { rows: s14_rows() };
    let (qs, out) = drive(Search::for_completion(spans.clone(), &params), &ev);
    let w = TimeWindow::new(1_699_999_997, 1_700_000_003);
    assert_eq!(
        qs,
        vec![
            SearchQuery::EntryByTraceId {
                trace_id: t.into(),
                window: w,
                otel_only: false,
                limit: 1
            },
            SearchQuery::EntryById {
                id: id(1),
                otel_only: false,
                limit: 1000
            },
            SearchQuery::ByTraceIds {
                trace_ids: vec![t.into()],
                window: w,
                otel_only: false,
                limit: 1000
            },
            assoc(&[111, 333], &[222, 444], &[1, 3, 4, 5], w),
            SearchQuery::Fetch {
                ids: (1..=5).map(id).collect(),
                window: TimeWindow::new(SEC as i64, SEC as i64)
            },
        ]
    );
    assert_eq!(out.stop_reason, Some(StopReason::NothingAccepted));
    assert!(!out.hit_limit);
    assert_eq!(out.entry_id, Some(spans[0].effective_id()));
    let res = out.assemble(&params);
    let v = View(&res);
    let xid = spans[0].effective_id();
    let yid = spans[1].effective_id();
    let expect = [
        (id(1), "1111111111111111.c-p.0", "", None),
        (
            id(2),
            "1111111111111111.s-p.1",
            "1111111111111111.c-p.0",
            Some(TCP),
        ),
        (
            xid,
            x,
            "1111111111111111.c-p.0",
            Some("s-app mounted due to parent_span_id"),
        ),
        (yid, y, x, Some("app_span mounted due to parent_span_id")),
        (
            id(3),
            "3333333333333333.c-p.4",
            "1111111111111111.s-p.1",
            Some("c-p sys-span mounted due to syscall_trace_id matched to s-p root"),
        ),
        (
            id(4),
            "3333333333333333.c.5",
            "3333333333333333.c-p.4",
            Some(TCP),
        ),
        (
            id(5),
            "3333333333333333.s-p.6",
            "3333333333333333.c.5",
            Some(TCP),
        ),
    ];
    for (i, dsid, parent, why) in expect {
        let s = v.span(i);
        assert_eq!(s.deepflow_span_id, dsid, "dsid of {i}");
        assert_eq!(s.deepflow_parent_span_id, parent, "parent dsid of {i}");
        assert_eq!(s.set_parent_info.as_deref(), why, "why of {i}");
    }
    let json = res.to_completion_json();
    assert!(json.get("services").is_none());
    assert!(json.get("host_clock_correction").is_some());
    let first = json["tracing"][0].as_object().unwrap();
    for k in [
        "selftime",
        "id",
        "parent_id",
        "childs",
        "set_parent_info",
        "auto_instance",
        "Enum(tap_side)",
    ] {
        assert!(!first.contains_key(k), "{k} must be dropped");
    }
    assert!(first.contains_key("deepflow_parent_span_id"));
}

#[test]
fn s14_unknown_trace_returns_the_external_spans_alone() {
    let spans = vec![ExternalAppSpan {
        trace_id: "nope".into(),
        span_id: "a".into(),
        span_kind: 2,
        start_time_us: T0,
        end_time_us: T0 + 10,
        ..Default::default()
    }];
    let params = TraceParams::default();
    let ev = Evaluator { rows: s14_rows() };
    let (qs, out) = drive(Search::for_completion(spans, &params), &ev);
    assert_eq!(qs.len(), 1);
    assert_eq!(out.stop_reason, Some(StopReason::EntryNotFound));
    let res = out.assemble(&params);
    assert_eq!(res.spans.len(), 1);
    assert_eq!(res.spans[0].deepflow_span_id, "a");
}

fn s15a_rows() -> Vec<FlowRecord> {
    vec![
        at(1, 3, "c-p", 1, 1000, 9000)
            .seq(111, 222)
            .sys(7, 7)
            .pid(10)
            .inst0(5)
            .b(),
        at(2, 0, "c", 1, 1100, 8900).seq(111, 222).b(),
        at(3, 0, "s", 2, 1300, 8700).seq(111, 222).b(),
        at(4, 3, "s-p", 2, 1400, 8600)
            .seq(111, 222)
            .sys(8, 9)
            .pid(20)
            .inst1(6)
            .b(),
        at(5, 3, "c-p", 2, 2000, 3000)
            .seq(333, 444)
            .sys(8, 9)
            .pid(20)
            .inst0(6)
            .b(),
        row(
            ((SEC + 5) << 32) | 6,
            0,
            "c",
            3,
            T0 + 5_000_000,
            T0 + 5_001_000,
        )
        .seq(111, 999)
        .b(),
    ]
}

#[test]
fn s15a_iteration_and_tcp_reuse() {
    let params = TraceParams::default();
    let w = TimeWindow::new(1_699_999_940, 1_700_000_060);
    let ev = Evaluator { rows: s15a_rows() };
    let (qs, out) = drive(Search::by_id(id(1), w, &params), &ev);
    assert_eq!(
        qs,
        vec![
            SearchQuery::EntryById {
                id: id(1),
                otel_only: false,
                limit: 1000
            },
            assoc(&[111], &[222], &[7], w),
            assoc(&[], &[], &[8, 9], w),
            assoc(&[333], &[444], &[], w),
            SearchQuery::Fetch {
                ids: (1..=5).map(id).collect(),
                window: TimeWindow::new(SEC as i64, SEC as i64)
            },
        ]
    );
    assert_eq!(out.stop_reason, Some(StopReason::NothingAccepted));
    let res = out.assemble(&params);
    let v = View(&res);
    v.check(&[
        (id(1), None, None, 200),
        (id(2), Some(id(1)), Some("tcp"), 400),
        (id(3), Some(id(2)), Some("tcp"), 200),
        (id(4), Some(id(3)), Some("tcp"), 6200),
        (
            id(5),
            Some(id(4)),
            Some("c-p sys-span mounted due to syscall_trace_id matched to s-p root"),
            1000,
        ),
    ]);
}

fn s15b_rows() -> Vec<FlowRecord> {
    vec![
        at(1, 4, "s-app", 1, 100, 9900)
            .tr("T")
            .sp("s1")
            .psp("u1")
            .inst1(5)
            .proto(0)
            .b(),
        at(2, 3, "s-p", 1, 0, 10000)
            .tr("T")
            .sp("u1")
            .seq(10, 20)
            .pid(3)
            .inst1(5)
            .sys(1, 1)
            .b(),
        at(3, 0, "s", 1, -100, 10100).tr("U").seq(10, 20).b(),
        at(4, 0, "c", 9, -500, 10500).seq(10, 20).b(),
        at(5, 4, "c-app", 1, 1000, 2000)
            .tr("T,V")
            .sp("s2")
            .psp("s1")
            .inst0(5)
            .proto(0)
            .b(),
        at(6, 4, "s-app", 7, 1200, 1800)
            .tr("V")
            .sp("v1")
            .psp("s2")
            .inst1(8)
            .proto(0)
            .b(),
    ]
}

#[test]
fn s15b_trace_ids_expand_and_conflicts_drop() {
    let params = TraceParams::default();
    let w = TimeWindow::new(1_699_999_940, 1_700_000_060);
    let ev = Evaluator { rows: s15b_rows() };
    let (qs, out) = drive(Search::by_id(id(2), w, &params), &ev);
    let q2 = |t: &[&str]| SearchQuery::ByTraceIds {
        trace_ids: t.iter().map(|s| s.to_string()).collect(),
        window: w,
        otel_only: false,
        limit: 1000,
    };
    assert_eq!(
        qs,
        vec![
            SearchQuery::EntryById {
                id: id(2),
                otel_only: false,
                limit: 1000
            },
            q2(&["T"]),
            assoc(&[10], &[20], &[1], w),
            q2(&["V"]),
            SearchQuery::Fetch {
                ids: vec![id(1), id(2), id(4), id(5), id(6)],
                window: TimeWindow::new(SEC as i64, SEC as i64)
            },
        ]
    );
    assert_eq!(out.stop_reason, Some(StopReason::NoNewKeys));
    let res = out.assemble(&params);
    let v = View(&res);
    assert_eq!(v.parent(id(4)), None);
    assert_eq!(v.parent(id(2)), Some(id(4)));
    assert_eq!(v.why(id(2)), Some(TCP));
    assert_eq!(v.parent(id(1)), Some(id(2)));
    assert_eq!(
        v.why(id(1)),
        Some("s-p sys_span mounted due to same span_id as parent")
    );
    assert_eq!(v.parent(id(5)), Some(id(1)));
    assert_eq!(v.why(id(5)), Some("app_span mounted due to parent_span_id"));
    assert_eq!(v.parent(id(6)), Some(id(5)));
    assert_eq!(v.why(id(6)), Some("s-app mounted due to parent_span_id"));
    assert_eq!(v.span(id(4)).deepflow_span_id, "u1.c.0");
    assert_eq!(v.order(), vec![id(4), id(2), id(1), id(5), id(6)]);
}

#[test]
fn tempo_path_seeds_from_every_row_of_the_trace() {
    let params = TraceParams::default();
    let w = TimeWindow::new(1_699_999_940, 1_700_000_060);
    let ev = Evaluator { rows: s15b_rows() };
    let (qs, out) = drive(Search::by_trace_id("T", w, &params), &ev);
    assert_eq!(
        qs[0],
        SearchQuery::EntryByTraceId {
            trace_id: "T".into(),
            window: w,
            otel_only: false,
            limit: 1000
        }
    );
    // Q0 is the first trace-id step: the association of the seed rows follows directly
    assert!(matches!(qs[1], SearchQuery::Associate { .. }));
    assert_eq!(out.entry_id, Some(id(1)));
    assert_eq!(out.ids, vec![id(1), id(2), id(4), id(5), id(6)]);
}

#[test]
fn otel_only_mode_stops_after_the_trace_id_step() {
    let params = TraceParams {
        otel_only: true,
        ..TraceParams::default()
    };
    let w = TimeWindow::new(1_699_999_940, 1_700_000_060);
    let ev = Evaluator { rows: s15b_rows() };
    let (qs, out) = drive(Search::by_id(id(1), w, &params), &ev);
    assert_eq!(qs.len(), 3, "{qs:?}");
    assert!(matches!(
        qs[1],
        SearchQuery::ByTraceIds {
            otel_only: true,
            ..
        }
    ));
    assert_eq!(out.stop_reason, Some(StopReason::OtelOnly));
    assert_eq!(out.ids, vec![id(1), id(5)]);
}

#[test]
fn limits_are_reported() {
    let params = TraceParams {
        l7_tracing_limit: 2,
        ..TraceParams::default()
    };
    let w = TimeWindow::new(1_699_999_940, 1_700_000_060);
    let ev = Evaluator { rows: s15a_rows() };
    let (_, out) = drive(Search::by_id(id(1), w, &params), &ev);
    assert!(out.hit_limit);
}

#[test]
fn expanded_time_range_widens_trace_queries_and_follows_the_rows() {
    let params = TraceParams {
        iteration_expand_time_range: 100,
        ..TraceParams::default()
    };
    let w = TimeWindow::new(1_699_999_990, 1_700_000_010);
    let mut rows = s15b_rows();
    // a row of trace T found only thanks to the wider trace-id window, ending 50 s later
    rows.push(
        row(
            ((SEC + 50) << 32) | 7,
            0,
            "c",
            4,
            T0 + 49_000_000,
            T0 + 50_000_000,
        )
        .tr("T")
        .seq(77, 88)
        .b(),
    );
    let ev = Evaluator { rows };
    let (qs, out) = drive(Search::by_id(id(2), w, &params), &ev);
    let SearchQuery::ByTraceIds { window, .. } = &qs[1] else {
        panic!("{qs:?}")
    };
    assert_eq!(*window, TimeWindow::new(1_699_999_890, 1_700_000_110));
    let SearchQuery::Associate { window, .. } = &qs[2] else {
        panic!("{qs:?}")
    };
    assert_eq!(*window, TimeWindow::new(1_699_999_990, 1_700_000_050));
    assert!(out.ids.contains(&(((SEC + 50) << 32) | 7)));
}

#[test]
fn multiple_trace_ids_can_be_allowed() {
    let params = TraceParams {
        allow_multiple_trace_ids_in_tracing_result: true,
        ..TraceParams::default()
    };
    let w = TimeWindow::new(1_699_999_940, 1_700_000_060);
    let ev = Evaluator { rows: s15b_rows() };
    let (qs, out) = drive(Search::by_id(id(2), w, &params), &ev);
    // row 3 (trace U) is now accepted and U is searched
    assert!(out.ids.contains(&id(3)));
    assert!(qs.iter().any(|q| matches!(q, SearchQuery::ByTraceIds { trace_ids, .. } if trace_ids.contains(&"U".to_string()))));
}
