//! The §10 scenarios S1–S13 of the tracing spec, driven through `assemble` (the rows are the
//! fetch result), with the project policy of §9 applied. Each scenario also runs through the
//! inference stage (`autotrace::infer`), whose changes to DeepFlow's tree are listed in
//! [`INFERENCE_CHANGES`].

mod autotrace_common;

use autotrace_common::*;
use deepflow_tempo::autotrace::{assemble, infer, TraceParams, TraceResult, TracingSource};
use deepflow_tempo::store::model::{signal_source, FlowRecord};
use std::collections::HashMap;

/// `(span, parent before, parent after)`, by first row `_id`.
type Change = (u64, Option<u64>, Option<u64>);

/// What the inference stage changes in each scenario's tree: `(span, parent before, parent
/// after)` by first row `_id` (`None`: a root). A scenario not listed keeps DeepFlow's tree.
/// Every change is a corrected parent: a call that DeepFlow hangs under the server process
/// span that read the request moves under the application span of that process that made it
/// (`infer::INNERMOST_APP`). No span is added: a scenario's rows are the whole fetch result,
/// so no thread-hop probe finds a row the trace lacks.
const INFERENCE_CHANGES: &[(&str, &[Change])] = &[(
    "s4b_uninstrumented_call_inside_app_spans",
    &[(409, Some(405), Some(408))],
)];

fn run(name: &str, rows: Vec<FlowRecord>, entry: u64) -> TraceResult {
    run_with(name, rows, entry, &TraceParams::default())
}

/// DeepFlow's answer for the scenario's rows (what each test checks), after checking what the
/// inference stage changes in it against [`INFERENCE_CHANGES`].
fn run_with(name: &str, rows: Vec<FlowRecord>, entry: u64, p: &TraceParams) -> TraceResult {
    let reference = assemble(rows.clone(), vec![], Some(entry), p);
    let inferred = with_inference(reference.clone(), &rows);
    let listed = INFERENCE_CHANGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c.to_vec())
        .unwrap_or_default();
    assert_eq!(
        changes(&reference, &inferred),
        listed,
        "{name}: the inference stage's changes to DeepFlow's tree"
    );
    for &(n, _, after) in &listed {
        let span = View(&inferred).span(n).clone();
        assert!(span.inferred, "{name}: span {n} is marked inferred");
        assert_eq!(
            span.set_parent_info.as_deref(),
            Some(infer::INNERMOST_APP),
            "{name}: span {n}"
        );
        let parent = View(&inferred)
            .span(after.expect("a parent"))
            .record
            .clone();
        assert_eq!(
            parent.signal_source,
            signal_source::OTEL,
            "{name}: span {n}"
        );
        assert!(
            parent.start_time_us <= span.record.start_time_us
                && span.record.end_time_us <= parent.end_time_us,
            "{name}: span {n} lies inside its new parent"
        );
    }
    reference
}

/// The inference stage over `result`, assembled from the fetch result `rows`, as the trace
/// service runs it: thread-hop probes (answered from the same rows), then the rules, applied.
fn with_inference(mut result: TraceResult, rows: &[FlowRecord]) -> TraceResult {
    let known = rows.iter().map(|r| r._id).collect();
    let mut adopted = Vec::new();
    for probe in infer::probes(&result, &Default::default(), usize::MAX) {
        let rows = infer::adopt(&probe, rows, &known, false);
        adopted.extend(rows.into_iter().map(|id| (id, probe.server)));
    }
    assert_eq!(adopted, vec![], "every row is in the fetch result already");
    infer::apply(&mut result, &adopted, true);
    result
}

/// `(span, parent before, parent after)` of every span whose parent differs.
fn changes(before: &TraceResult, after: &TraceResult) -> Vec<Change> {
    let parents = |r: &TraceResult| -> HashMap<u64, Option<u64>> {
        let first: HashMap<usize, u64> = r.spans.iter().map(|s| (s.id, s.ids[0])).collect();
        r.spans
            .iter()
            .map(|s| (s.ids[0], s.parent_id.map(|p| first[&p])))
            .collect()
    };
    let (a, b) = (parents(before), parents(after));
    assert_eq!(
        a.len(),
        b.len(),
        "the inference stage adds no span to a fetch result"
    );
    let mut out: Vec<_> = a
        .iter()
        .filter(|(n, p)| b.get(n) != Some(p))
        .map(|(&n, &p)| (n, p, b[&n]))
        .collect();
    out.sort();
    out
}

#[test]
fn s1_single_http_call() {
    let rows = vec![
        row(101, 3, "c-p", 1, 1000, 9000)
            .seq(111, 222)
            .sys(7, 7)
            .pid(10)
            .svc0(50, "svc-a", 5)
            .kname0("curl")
            .b(),
        row(102, 0, "c", 1, 1100, 8900)
            .seq(111, 222)
            .svc0(50, "svc-a", 5)
            .svc1(60, "svc-b", 6)
            .b(),
        row(103, 0, "s", 2, 1300, 8700)
            .seq(111, 222)
            .svc0(50, "svc-a", 5)
            .svc1(60, "svc-b", 6)
            .b(),
        row(104, 3, "s-p", 2, 1400, 8600)
            .seq(111, 222)
            .sys(8, 8)
            .pid(20)
            .svc1(60, "svc-b", 6)
            .kname1("java")
            .b(),
    ];
    let res = run("s1_single_http_call", rows, 101);
    let v = View(&res);
    v.check(&[
        (101, None, None, 200),
        (102, Some(101), Some("tcp"), 400),
        (103, Some(102), Some("tcp"), 200),
        (104, Some(103), Some("tcp"), 7200),
    ]);
    let idx: Vec<usize> = [101, 102, 103, 104].iter().map(|&i| v.span(i).id).collect();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    assert_eq!(v.span(101).deepflow_span_id, format!("0x{:x}.c-p.0", 101));
    assert_eq!(v.span(102).deepflow_span_id, "None.c.1");
    assert_eq!(v.span(103).deepflow_span_id, "None.s.2");
    assert_eq!(v.span(104).deepflow_span_id, format!("0x{:x}.s-p.3", 104));
    assert_eq!(
        v.span(102).deepflow_parent_span_id,
        format!("0x{:x}.c-p.0", 101)
    );
    assert_eq!(v.span(101).service_uid.as_deref(), Some("50-"));
    assert_eq!(v.span(102).service_uid, None);
    assert_eq!(v.span(103).service_uid, None);
    assert_eq!(v.span(104).service_uid.as_deref(), Some("60-"));
    let auto: Vec<Option<&str>> = [101, 102, 103, 104]
        .iter()
        .map(|&i| v.span(i).auto_service.as_deref())
        .collect();
    assert_eq!(
        auto,
        vec![Some("svc-a"), Some("svc-a"), Some("svc-b"), Some("svc-b")]
    );
    assert_eq!(
        v.services(),
        vec![
            svc("60-", "svc-b", 7200, "97.30"),
            svc("50-", "svc-a", 200, "2.70")
        ]
    );
    let mut rel = v.span(101).related_ids.clone();
    rel.sort();
    assert_eq!(rel, vec!["1-network-102", "2-network-103", "3-network-104"]);
    assert!(res.host_clock_correction.is_empty());
    assert_eq!(v.order(), vec![101, 102, 103, 104]);
    // the DeepFlow JSON carries the §7.9 names
    let json = res.to_deepflow_json(false);
    let t0 = &json["tracing"][0];
    assert_eq!(t0["vtap_id"], 1);
    assert_eq!(t0["tap_side"], "c-p");
    assert_eq!(t0["Enum(tap_side)"], "Client Process");
    assert_eq!(t0["flow_id"], "0");
    assert_eq!(t0["syscall_trace_id_request"], "7");
    assert_eq!(t0["parent_id"], -1);
    assert_eq!(t0["_ids"][0], "101");
    assert_eq!(json["services"][0]["duration_ratio"], "97.30");
    assert!(json["host_clock_correction"]
        .as_object()
        .unwrap()
        .is_empty());
}

#[test]
fn s2_request_and_response_merge() {
    let rows = vec![
        row(201, 0, "c", 1, 1000, 1000)
            .ty(0)
            .flow(900)
            .seq(100, 0)
            .with(|r| r.response_code = None)
            .b(),
        row(202, 0, "c", 1, 9000, 9000)
            .ty(1)
            .flow(900)
            .seq(0, 200)
            .with(|r| {
                r.request_type.clear();
                r.request_resource.clear();
                r.endpoint.clear();
            })
            .b(),
        row(203, 0, "s", 2, 1200, 8800).flow(901).seq(100, 200).b(),
    ];
    let res = run("s2_request_and_response_merge", rows, 201);
    let v = View(&res);
    let m = v.span(201);
    assert_eq!(m.id, 0);
    assert_eq!(m.ids, vec![201, 202]);
    assert_eq!(m.record.r#type, 2);
    assert_eq!((m.record.start_time_us, m.record.end_time_us), (1000, 9000));
    assert_eq!(m.duration(), 8000);
    assert_eq!((m.record.req_tcp_seq, m.record.resp_tcp_seq), (100, 200));
    assert_eq!(m.record.response_code, Some(200));
    assert_eq!(m.record.request_type, "GET");
    assert_eq!(v.span(203).id, 1);
    v.check(&[(201, None, None, 400), (203, Some(201), Some("tcp"), 7600)]);
    assert_eq!(
        res.to_deepflow_json(false)["tracing"][0]["_ids"],
        serde_json::json!(["201", "202"])
    );
}

#[test]
fn s3_server_nic_sp_and_otel_server_span() {
    let t = "T3";
    let a = "1000000000000001";
    let rows = vec![
        row(301, 0, "c", 1, 0, 10000).seq(100, 200).tr(t).sp(a).b(),
        row(302, 0, "s", 2, 300, 9700)
            .seq(100, 200)
            .tr(t)
            .sp(a)
            .svc1(60, "svc-b", 6)
            .b(),
        row(303, 3, "s-p", 2, 400, 9600)
            .seq(100, 200)
            .tr(t)
            .sp(a)
            .pid(20)
            .sys(5, 5)
            .svc1(60, "svc-b", 6)
            .b(),
        row(304, 4, "s-app", 2, 500, 9500)
            .tr(t)
            .sp("2000000000000001")
            .psp(a)
            .proto(0)
            .app("svc-b")
            .svc1(60, "svc-b", 6)
            .b(),
    ];
    let res = run("s3_server_nic_sp_and_otel_server_span", rows, 301);
    let v = View(&res);
    v.check(&[
        (301, None, None, 600),
        (302, Some(301), Some("tcp"), 200),
        (303, Some(302), Some("tcp"), 200),
        (
            304,
            Some(303),
            Some("s-p sys_span mounted due to same span_id as parent"),
            9000,
        ),
    ]);
    assert_eq!(v.span(301).deepflow_span_id, "1000000000000001.c.0");
    assert_eq!(v.span(302).deepflow_span_id, "1000000000000001.s.1");
    assert_eq!(v.span(303).deepflow_span_id, "1000000000000001.s-p.2");
    assert_eq!(v.span(304).deepflow_span_id, "2000000000000001");
    assert_eq!(v.services(), vec![svc("60-", "svc-b", 9200, "100.00")]);
}

/// S4's rows: a full stack with every link evidenced.
fn s4_rows() -> Vec<FlowRecord> {
    let t = "T4";
    let (a1, b1, b2, b3) = (
        "aaaa000000000001",
        "bbbb000000000001",
        "bbbb000000000002",
        "bbbb000000000003",
    );
    let a0 = |r: R| r.svc0(50, "svc-a", 5);
    let bb1 = |r: R| r.svc1(60, "svc-b", 6);
    let bb0 = |r: R| r.svc0(60, "svc-b", 6);
    let c1 = |r: R| r.svc1(70, "svc-c", 7);
    vec![
        a0(row(401, 4, "c-app", 1, 0, 10000))
            .tr(t)
            .sp(a1)
            .proto(0)
            .app("svc-a")
            .b(),
        bb1(a0(row(402, 3, "c-p", 1, 500, 9500)))
            .tr(t)
            .seq(111, 222)
            .sys(1, 2)
            .pid(10)
            .sp(a1)
            .b(),
        bb1(a0(row(403, 0, "c", 1, 600, 9400)))
            .tr(t)
            .seq(111, 222)
            .sp(a1)
            .b(),
        bb1(a0(row(404, 0, "s", 2, 800, 9200)))
            .tr(t)
            .seq(111, 222)
            .sp(a1)
            .b(),
        bb1(a0(row(405, 3, "s-p", 2, 900, 9100)))
            .tr(t)
            .seq(111, 222)
            .sys(3, 4)
            .pid(20)
            .sp(a1)
            .b(),
        bb1(row(406, 4, "s-app", 2, 1000, 9000))
            .tr(t)
            .sp(b1)
            .psp(a1)
            .proto(0)
            .app("svc-b")
            .b(),
        bb1(row(407, 4, "app", 2, 1500, 8500))
            .tr(t)
            .sp(b2)
            .psp(b1)
            .proto(0)
            .app("svc-b")
            .b(),
        bb0(row(408, 4, "c-app", 2, 2000, 8000))
            .tr(t)
            .sp(b3)
            .psp(b2)
            .proto(0)
            .app("svc-b")
            .b(),
        c1(bb0(row(409, 3, "c-p", 2, 2100, 7900)))
            .tr(t)
            .seq(333, 444)
            .sys(3, 4)
            .pid(20)
            .sp(b3)
            .b(),
        c1(bb0(row(410, 3, "s-p", 3, 2300, 7700)))
            .tr(t)
            .seq(333, 444)
            .sys(5, 5)
            .pid(30)
            .sp(b3)
            .b(),
    ]
}

#[test]
fn s4_full_stack() {
    let rows = s4_rows();
    let (a1, b1, b2, b3) = (
        "aaaa000000000001",
        "bbbb000000000001",
        "bbbb000000000002",
        "bbbb000000000003",
    );
    let res = run("s4_full_stack", rows, 401);
    let v = View(&res);
    v.check(&[
        (401, None, None, 1000),
        (
            402,
            Some(401),
            Some("c-p sys_span mounted due to same span_id as child"),
            200,
        ),
        (403, Some(402), Some("tcp"), 400),
        (404, Some(403), Some("tcp"), 200),
        (405, Some(404), Some("tcp"), 200),
        (
            406,
            Some(405),
            Some("s-p sys_span mounted due to same span_id as parent"),
            1000,
        ),
        (
            407,
            Some(406),
            Some("app_span mounted due to parent_span_id"),
            1000,
        ),
        (
            408,
            Some(407),
            Some("app_span mounted due to parent_span_id"),
            200,
        ),
        (
            409,
            Some(408),
            Some("c-p sys_span mounted due to same span_id as child"),
            400,
        ),
        (410, Some(409), Some("tcp"), 5400),
    ]);
    let ids: Vec<&str> = (401..=410)
        .map(|i| v.span(i).deepflow_span_id.as_str())
        .collect();
    assert_eq!(
        ids,
        vec![
            a1,
            "aaaa000000000001.c-p.1",
            "aaaa000000000001.c.2",
            "aaaa000000000001.s.3",
            "aaaa000000000001.s-p.4",
            b1,
            b2,
            b3,
            "bbbb000000000003.c-p.8",
            "bbbb000000000003.s-p.9"
        ]
    );
    assert_eq!(
        v.services(),
        vec![
            svc("70-", "svc-c", 5400, "57.45"),
            svc("60-", "svc-b", 2800, "29.79"),
            svc("50-", "svc-a", 1200, "12.77")
        ]
    );
    assert_eq!(v.order(), (401..=410).collect::<Vec<_>>());
}

/// S4 where svc-b's instrumentation does not propagate into its call to svc-c (rows 409, 410
/// carry no span id): DeepFlow hangs the call under svc-b's server process span (same
/// syscall trace id); the inference stage moves it under the application span that made it,
/// the innermost of the chain 406 ⊃ 407 ⊃ 408 enclosing it.
#[test]
fn s4b_uninstrumented_call_inside_app_spans() {
    let rows: Vec<FlowRecord> = s4_rows()
        .into_iter()
        .map(|mut r| {
            if r._id >= 409 {
                r.span_id.clear();
            }
            r
        })
        .collect();
    let res = run("s4b_uninstrumented_call_inside_app_spans", rows, 401);
    let v = View(&res);
    assert_eq!(v.span(409).parent_id, Some(v.span(405).id));
    assert_eq!(v.span(410).parent_id, Some(v.span(409).id));
}

fn s5_rows() -> Vec<FlowRecord> {
    let b = |r: R| r.svc0(60, "svc-b", 6).svc1(60, "svc-b", 6).pid(20);
    let dns = |r: R| {
        r.proto(17)
            .l7(120, "DNS")
            .flow(77)
            .req_id(Some(4660))
            .with(|r| {
                r.endpoint.clear();
                r.request_type = "A".into();
                r.request_resource = "db.svc".into();
            })
    };
    vec![
        b(row(501, 3, "s-p", 2, 0, 20000))
            .seq(100, 200)
            .sys(1001, 1003)
            .cap(1, 9)
            .b(),
        dns(b(row(502, 3, "c-p", 2, 1000, 1000)))
            .ty(0)
            .sys(1001, 0)
            .cap(2, 0)
            .with(|r| r.response_code = None)
            .b(),
        dns(b(row(503, 3, "c-p", 2, 1800, 1800)))
            .ty(1)
            .sys(0, 1002)
            .cap(0, 3)
            .with(|r| r.response_code = Some(0))
            .b(),
        dns(b(row(504, 3, "c-p", 2, 1900, 1900)))
            .ty(1)
            .sys(0, 1002)
            .cap(0, 4)
            .with(|r| r.response_code = Some(0))
            .b(),
        b(row(505, 3, "c-p", 2, 3000, 15000))
            .seq(300, 400)
            .sys(1002, 1003)
            .cap(5, 8)
            .b(),
    ]
}

#[test]
fn s5_dns_merge_and_syscall_chaining() {
    let res = run("s5_dns_merge_and_syscall_chaining", s5_rows(), 501);
    let v = View(&res);
    let d = v.span(502);
    assert_eq!(d.id, 1);
    assert_eq!(d.ids, vec![502, 503, 504]);
    assert_eq!(d.record.r#type, 2);
    assert_eq!(
        (d.record.start_time_us, d.record.end_time_us, d.duration()),
        (1000, 1900, 900)
    );
    assert_eq!(d.record.syscall_trace_id_response, 1002);
    assert_eq!(d.record.syscall_cap_seq_1, 4);
    // Policy P-4 (real union-find): 505 is in the DNS c-p's sibling group, so attaching the DNS
    // c-p also attaches 505 as its brother. The reference (and the §10 text) reaches the same
    // parent through "syscall_trace_id matched to c-p child".
    v.check(&[
        (501, None, None, 7100),
        (
            502,
            Some(501),
            Some("c-p sys-span mounted due to syscall_trace_id matched to s-p root"),
            900,
        ),
        (
            505,
            Some(501),
            Some("c-p sys-span mounted due to brother c-p"),
            12000,
        ),
    ]);
    assert_eq!(v.span(501).childs, vec![1, 2]);
    assert_eq!(v.order(), vec![501, 505, 502]);
    assert_eq!(v.services(), vec![svc("60-", "svc-b", 20000, "100.00")]);
}

fn s5b_rows() -> Vec<FlowRecord> {
    let d = |r: R| {
        r.proto(17).l7(120, "DNS").req_id(Some(4660)).with(|r| {
            r.request_type = "A".into();
            r.request_resource = "x.svc".into();
            r.endpoint.clear();
        })
    };
    vec![
        d(row(511, 3, "c-p", 1, 0, 900))
            .flow(5)
            .pid(3)
            .inst0(5)
            .sys(1, 2)
            .b(),
        d(row(512, 0, "c", 1, 50, 850)).flow(6).b(),
        d(row(513, 0, "s", 2, 100, 800)).flow(7).b(),
    ]
}

#[test]
fn s5b_dns_request_id_default_off() {
    let res = run("s5b_dns_request_id_default_off", s5b_rows(), 511);
    let v = View(&res);
    assert_eq!(v.order(), vec![513, 512, 511]);
    for id in [511, 512, 513] {
        assert_eq!(v.parent(id), None);
    }
}

#[test]
fn s5b_dns_request_id_on() {
    let p = TraceParams {
        tracing_source: vec![
            TracingSource::TraceId,
            TracingSource::Syscall,
            TracingSource::TcpSeq,
            TracingSource::XRequestId,
            TracingSource::Dns,
        ],
        ..TraceParams::default()
    };
    let res = run_with("s5b_dns_request_id_on", s5b_rows(), 511, &p);
    let v = View(&res);
    v.check(&[
        (511, None, None, 100),
        (512, Some(511), Some("tcp"), 100),
        (513, Some(512), Some("tcp"), 700),
    ]);
    assert!(v
        .span(511)
        .related_ids
        .contains(&"1-request_id-512".to_string()));
}

fn s6_rows() -> Vec<R> {
    vec![
        row(601, 0, "c", 1, 0, 10000).seq(100, 200).x1("R1"),
        row(602, 0, "s", 2, 200, 9800).seq(100, 200).x1("R1"),
        row(603, 0, "c", 2, 1000, 9000).seq(300, 400).x0("R1"),
        row(604, 0, "s", 3, 1200, 8800).seq(300, 400).x0("R1"),
    ]
}

#[test]
fn s6a_gateway_injects_x_request_id() {
    let rows = s6_rows().into_iter().map(R::b).collect();
    let res = run("s6a_gateway_injects_x_request_id", rows, 601);
    let v = View(&res);
    v.check(&[
        (601, None, None, 400),
        (602, Some(601), Some("tcp"), 1600),
        (
            603,
            Some(602),
            Some("net_span mounted due to x_request_id 1->0"),
            400,
        ),
        (604, Some(603), Some("tcp"), 7600),
    ]);
    let rel = &v.span(601).related_ids;
    assert!(rel.contains(&"2-xrequestid-603".to_string()));
    assert!(rel.contains(&"3-xrequestid-604".to_string()));
}

#[test]
fn s6b_pass_through_without_echo_is_not_linked() {
    let mut rows = s6_rows();
    rows[0] = rows[0].clone().x0("R1").x1("");
    rows[1] = rows[1].clone().x0("R1").x1("");
    let res = run(
        "s6b_pass_through_without_echo_is_not_linked",
        rows.into_iter().map(R::b).collect(),
        601,
    );
    let v = View(&res);
    assert_eq!(v.parent(603), None);
    assert_eq!(v.parent(602), Some(601));
    assert_eq!(v.parent(604), Some(603));
    assert_eq!(v.order(), vec![603, 604, 601, 602]);
}

#[test]
fn s6c_backend_echo_links_zero_to_zero() {
    let mut rows = s6_rows();
    rows[0] = rows[0].clone().x0("R1").x1("");
    rows[1] = rows[1].clone().x0("R1").x1("");
    rows[2] = rows[2].clone().x1("R1");
    rows[3] = rows[3].clone().x1("R1");
    let res = run(
        "s6c_backend_echo_links_zero_to_zero",
        rows.into_iter().map(R::b).collect(),
        601,
    );
    let v = View(&res);
    assert_eq!(v.parent(603), Some(602));
    assert_eq!(
        v.why(603),
        Some("net_span mounted due to x_request_id 0->0")
    );
    assert_eq!(v.parent(604), Some(603));
}

#[test]
fn s6d_child_slower_than_parent_is_not_linked() {
    let mut rows = s6_rows();
    rows[2] = row(603, 0, "c", 2, 1000, 11000).seq(300, 400).x0("R1");
    let res = run(
        "s6d_child_slower_than_parent_is_not_linked",
        rows.into_iter().map(R::b).collect(),
        601,
    );
    let v = View(&res);
    assert_eq!(v.parent(603), None);
    assert_eq!(v.parent(604), Some(603));
    assert_eq!(v.parent(602), Some(601));
}

#[test]
fn s7_nginx_cross_thread_by_x_request_id() {
    let g0 = |r: R| r.svc0(80, "nginx", 8);
    let g1 = |r: R| r.svc1(80, "nginx", 8);
    let b1 = |r: R| r.svc1(60, "svc-b", 6);
    let rows = vec![
        g1(row(701, 0, "s", 2, 0, 20000)).seq(100, 200).x1("R1").b(),
        g1(row(702, 3, "s-p", 2, 100, 19900))
            .seq(100, 200)
            .sys(501, 502)
            .x1("R1")
            .pid(50)
            .kname1("nginx")
            .b(),
        b1(g0(row(703, 3, "c-p", 2, 2000, 18000)))
            .seq(300, 400)
            .sys(601, 602)
            .x0("R1")
            .pid(50)
            .kname0("nginx")
            .b(),
        b1(g0(row(704, 0, "c", 2, 2100, 17900)))
            .seq(300, 400)
            .x0("R1")
            .b(),
        b1(g0(row(705, 0, "s", 3, 2500, 17500)))
            .seq(300, 400)
            .x0("R1")
            .b(),
        b1(row(706, 3, "s-p", 3, 2600, 17400))
            .seq(300, 400)
            .sys(701, 701)
            .x0("R1")
            .pid(60)
            .b(),
    ];
    let res = run("s7_nginx_cross_thread_by_x_request_id", rows, 701);
    let v = View(&res);
    v.check(&[
        (701, None, None, 200),
        (702, Some(701), Some("tcp"), 3800),
        (
            703,
            Some(702),
            Some("c-p sys-span mounted due to x_request_id matched to s-p root"),
            200,
        ),
        (704, Some(703), Some("tcp"), 800),
        (705, Some(704), Some("tcp"), 200),
        (706, Some(705), Some("tcp"), 14800),
    ]);
    assert_eq!(
        v.services(),
        vec![
            svc("60-", "svc-b", 14800, "78.72"),
            svc("80-", "nginx", 4000, "21.28")
        ]
    );
}

#[test]
fn s8_tcp_seq_reuse_and_pruning() {
    let rows = vec![
        row(801, 0, "c", 1, 0, 10000).seq(100, 200).tr("T1").b(),
        row(802, 0, "s", 2, 300, 9700).seq(100, 200).tr("T1").b(),
        row(803, 0, "c", 1, 1_000_000, 1_005_000).seq(100, 999).b(),
        row(804, 0, "s", 2, 1_000_300, 1_004_700).seq(100, 999).b(),
        row(805, 0, "c", 3, 2_000_000, 2_001_000)
            .seq(500, 600)
            .tr("T1")
            .b(),
        row(806, 0, "c", 4, -8000, -5000).seq(700, 800).b(),
        row(807, 0, "c", 4, -40000, -20000).seq(900, 901).b(),
    ];
    let res = run("s8_tcp_seq_reuse_and_pruning", rows.clone(), 801);
    let v = View(&res);
    assert_eq!(v.parent(802), Some(801));
    assert_eq!(v.why(802), Some(TCP));
    assert_eq!(v.order(), vec![805, 801, 802, 806]);
    // without an entry nothing is pruned, and 803 → 804 is its own tree
    let all = assemble(rows, vec![], None, &TraceParams::default());
    let va = View(&all);
    assert_eq!(all.spans.len(), 7);
    assert_eq!(va.parent(804), Some(803));
}

#[test]
fn s9a_client_and_server_on_the_same_node() {
    let rows = vec![
        row(901, 3, "c-p", 1, 0, 10000)
            .seq(100, 200)
            .sys(1, 1)
            .pid(10)
            .b(),
        row(902, 0, "c", 1, 100, 9900).seq(100, 200).b(),
        row(903, 0, "s", 1, 500, 9500).seq(100, 200).b(),
        row(904, 3, "s-p", 1, 600, 9400)
            .seq(100, 200)
            .sys(2, 2)
            .pid(11)
            .b(),
    ];
    let res = run("s9a_client_and_server_on_the_same_node", rows, 901);
    View(&res).check(&[
        (901, None, None, 200),
        (902, Some(901), Some("tcp"), 800),
        (903, Some(902), Some("tcp"), 200),
        (904, Some(903), Some("tcp"), 8800),
    ]);
}

#[test]
fn s9b_foreign_agent_hop_under_policy_n2() {
    let rows = vec![
        row(911, 3, "c-p", 1, 0, 10000)
            .seq(100, 200)
            .sys(1, 1)
            .pid(10)
            .b(),
        row(912, 0, "c", 1, 100, 9900).seq(100, 200).b(),
        row(913, 0, "c-gw", 9, 300, 9700).seq(100, 200).b(),
        row(914, 0, "s", 1, 500, 9500).seq(100, 200).b(),
        row(915, 3, "s-p", 1, 600, 9400)
            .seq(100, 200)
            .sys(2, 2)
            .pid(11)
            .b(),
    ];
    let res = run("s9b_foreign_agent_hop_under_policy_n2", rows, 911);
    let v = View(&res);
    v.check(&[
        (911, None, None, 200),
        (912, Some(911), Some("tcp"), 400),
        (913, Some(912), Some("tcp"), 400),
        (914, Some(913), Some("tcp"), 200),
        (915, Some(914), Some("tcp"), 8800),
    ]);
    assert!(res.host_clock_correction.is_empty());
    assert_eq!(v.order(), vec![911, 912, 913, 914, 915]);
}

#[test]
fn s9c_multi_hop_across_agents() {
    let rows = vec![
        row(921, 0, "c", 1, 0, 10000).seq(100, 200).b(),
        row(922, 0, "c-nd", 1, 50, 9950).seq(100, 200).b(),
        row(923, 0, "s-nd", 2, 500, 9500).seq(100, 200).b(),
        row(924, 0, "s", 2, 550, 9450).seq(100, 200).b(),
        row(925, 0, "c-gw", 7, 300, 9700).seq(100, 200).b(),
    ];
    let res = run("s9c_multi_hop_across_agents", rows, 921);
    View(&res).check(&[
        (921, None, None, 100),
        (922, Some(921), Some("tcp"), 500),
        (925, Some(922), Some("tcp"), 400),
        (923, Some(925), Some("tcp"), 100),
        (924, Some(923), Some("tcp"), 8900),
    ]);
}

#[test]
fn s10_host_clock_skew() {
    let rows = vec![
        row(1001, 3, "c-p", 1, 0, 10000)
            .seq(100, 200)
            .sys(1, 1)
            .pid(10)
            .b(),
        row(1002, 0, "c", 1, 100, 9900).seq(100, 200).b(),
        row(1003, 0, "s", 2, 3300, 12700).seq(100, 200).b(),
        row(1004, 3, "s-p", 2, 3400, 12600)
            .seq(100, 200)
            .sys(2, 2)
            .pid(11)
            .b(),
    ];
    let res = run("s10_host_clock_skew", rows, 1001);
    let v = View(&res);
    assert_eq!(v.parent(1002), Some(1001));
    assert_eq!(v.parent(1003), Some(1002));
    assert_eq!(v.parent(1004), Some(1003));
    assert_eq!(res.host_clock_correction.get(&2), Some(&-2800));
    assert_eq!(res.host_clock_correction.len(), 1);
    let r = |id| {
        (
            v.span(id).render_start_time_us,
            v.span(id).render_end_time_us,
        )
    };
    assert_eq!(r(1003), (500, 9900));
    assert_eq!(r(1004), (600, 9800));
    assert_eq!(r(1001), (0, 10000));
    assert_eq!(r(1002), (100, 9900));
    assert_eq!(
        res.to_deepflow_json(false)["host_clock_correction"],
        serde_json::json!({"2": -2800})
    );
}

#[test]
fn s11_same_process_without_syscall_links() {
    let b = |r: R| r.svc0(60, "svc-b", 6).svc1(60, "svc-b", 6).pid(20);
    let rows = vec![
        b(row(1101, 3, "s-p", 2, 0, 5000))
            .seq(100, 200)
            .sys(11, 11)
            .tr("T")
            .b(),
        b(row(1102, 3, "c-p", 2, 1000, 4000))
            .seq(300, 400)
            .sys(21, 22)
            .tr("T")
            .b(),
        b(row(1103, 3, "c-p", 2, 3000, 9000))
            .seq(500, 600)
            .sys(31, 32)
            .tr("T")
            .b(),
        b(row(1104, 3, "c-p", 2, 2000, 2500))
            .seq(700, 800)
            .sys(41, 42)
            .tr("U")
            .b(),
    ];
    let res = run("s11_same_process_without_syscall_links", rows, 1101);
    let v = View(&res);
    v.check(&[
        (1101, None, None, 0),
        (1102, Some(1101), Some("c-p sys-span mounted due to same process/trace_id and time cover by s-p root"), 3000),
        (1103, Some(1101), Some("c-p sys-span mounted due to preceding c-p as async span after s-p root by same process/trace_id"), 6000),
        (1104, None, None, 500),
    ]);
    assert_eq!(v.services(), vec![svc("60-", "svc-b", 9500, "100.00")]);
}

fn s12_rows() -> Vec<FlowRecord> {
    vec![
        row(1201, 0, "c", 1, 0, 10000).seq(100, 200).tr("T").b(),
        row(1202, 0, "s", 3, 2000, 8000).seq(500, 600).tr("T").b(),
        row(1203, 3, "s-p", 3, 2100, 7900)
            .seq(500, 600)
            .tr("T")
            .pid(5)
            .sys(1, 1)
            .b(),
    ]
}

#[test]
fn s12_weak_net_strategy_off() {
    let res = run("s12_weak_net_strategy_off", s12_rows(), 1201);
    let v = View(&res);
    v.check(&[
        (1201, None, None, 10000),
        (1202, None, None, 200),
        (1203, Some(1202), Some("tcp"), 5800),
    ]);
}

#[test]
fn s12_weak_net_strategy_on() {
    let p: TraceParams = serde_json::from_str(
        r#"{"span_set_connection_strategies":["net_span_c_to_s_via_trace_id"]}"#,
    )
    .unwrap();
    let res = run_with("s12_weak_net_strategy_on", s12_rows(), 1201, &p);
    let v = View(&res);
    v.check(&[
        (1201, None, None, 4000),
        (
            1202,
            Some(1201),
            Some("net_span c->s weakly mounted due to trace_id"),
            200,
        ),
        (1203, Some(1202), Some("tcp"), 5800),
    ]);
}

#[test]
fn s13_grpc_stream_and_zero_duration_child_under_policy_o1() {
    let g = |r: R| r.l7(41, "gRPC").req_id(Some(7));
    let rows = vec![
        g(row(1301, 0, "c", 1, 0, 10000)).flow(1).seq(100, 200).b(),
        g(row(1302, 0, "s", 3, 2000, 2000))
            .flow(2)
            .seq(500, 600)
            .b(),
        g(row(1303, 0, "s", 3, 3000, 5000))
            .flow(3)
            .seq(700, 800)
            .b(),
    ];
    let res = run(
        "s13_grpc_stream_and_zero_duration_child_under_policy_o1",
        rows,
        1301,
    );
    let v = View(&res);
    let why = Some("net_span mounted due to grpc request_id");
    v.check(&[
        (1301, None, None, 8000),
        (1302, Some(1301), why, 0),
        (1303, Some(1301), why, 2000),
    ]);
    assert_eq!(v.span(1301).childs, vec![v.span(1302).id, v.span(1303).id]);
    assert_eq!(v.order(), vec![1301, 1303, 1302]);
}

#[test]
fn unknown_signal_source_joins_the_nss_of_a_related_packet_span() {
    // §2.4.1: an xFlow row with the same TCP seqs as a packet `c` row becomes its child
    let rows = vec![
        row(1401, 0, "c", 1, 0, 10000).seq(100, 200).b(),
        row(1402, 1, "c", 1, 0, 10000).seq(100, 200).b(),
        row(1403, 1, "c", 1, 0, 10000).seq(900, 901).b(),
    ];
    let res = run(
        "unknown_signal_source_joins_the_nss_of_a_related_packet_span",
        rows,
        1401,
    );
    let v = View(&res);
    assert_eq!(v.parent(1402), Some(1401));
    assert_eq!(v.why(1402), Some(TCP));
    assert_eq!(v.span(1402).deepflow_span_id, "None.c.1");
    assert_eq!(v.span(1402).auto_service, None);
    // an unrelated unknown-source row has no record
    assert!(res.spans.iter().all(|s| !s.ids.contains(&1403)));
}

#[test]
fn empty_input_renders_empty_data() {
    let res = assemble(vec![], vec![], None, &TraceParams::default());
    assert_eq!(res.to_deepflow_json(false), serde_json::json!({}));
    assert_eq!(res.to_completion_json(), serde_json::json!({}));
}

#[test]
fn attributes_are_rendered_per_request() {
    let rows = vec![row(1501, 0, "c", 1, 0, 10)
        .with(|r| {
            r.attribute_names = vec!["k".into(), "q\"".into()];
            r.attribute_values = vec!["v".into(), "w".into()];
        })
        .b()];
    let res = run("attributes_are_rendered_per_request", rows, 1501);
    assert_eq!(
        res.to_deepflow_json(false)["tracing"][0]["attribute"],
        serde_json::Value::Null
    );
    assert_eq!(
        res.to_deepflow_json(true)["tracing"][0]["attribute"],
        r#"{"k":"v","q\"":"w"}"#
    );
}
