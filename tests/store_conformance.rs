//! One conformance suite, run against both stores: every case below runs once on the embedded
//! SQLite store and once on ClickHouse (chDB behind the project's HTTP front).

#[macro_use]
mod common;

use deepflow_tempo::load;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::{CmpOp, Col, Facet, Filter, FlowQuery, Order, SharedStore, TimeWindow};
use std::net::{Ipv4Addr, Ipv6Addr};

const T0: u32 = 1_700_000_000;

on_both_stores!(
    ping_answers,
    key_lookups_keep_their_meaning,
    meta_roundtrip_by_id,
    id_lookup_without_window_finds_rows,
    window_bounds_are_inclusive,
    trace_ids_match_either_column,
    association_clauses_or_together,
    dns_request_id_clause,
    empty_key_lists_match_nothing,
    limit_and_order,
    full_record_roundtrip_with_names,
    ip_like_instances_use_ip_and_subnet,
    large_unsigned_values_roundtrip,
    organisations_are_isolated,
    hostile_strings_stay_literal,
    load_round_trips_ten_thousand_rows,
    load_keeps_no_half_batch,
    comparisons_attributes_and_negation,
    service_names_and_facets,
    service_names_follow_the_span_model,
    span_model_keys_in_sql_follow_the_span_model,
    most_recent_first,
);

fn row(n: u32) -> L7FlowLogRow {
    let start = T0 as i64 * 1_000_000 + n as i64 * 1000;
    let mut r = L7FlowLogRow {
        _id: make_id(T0, 1, n),
        start_time: start,
        end_time: start + 500,
        observation_point: "c".into(),
        protocol: 6,
        l7_protocol: 20,
        r#type: 2,
        ..Default::default()
    };
    r.normalise(n);
    r
}

fn ids(meta: &[FlowMeta]) -> Vec<u64> {
    let mut v: Vec<u64> = meta.iter().map(|m| m._id).collect();
    v.sort();
    v
}

async fn ping_answers(store: SharedStore, _org: OrgId) {
    store.ping().await.expect("ping");
}

async fn meta_roundtrip_by_id(store: SharedStore, org: OrgId) {
    let mut r = row(1);
    r.signal_source = 3;
    r.req_tcp_seq = 111;
    r.resp_tcp_seq = 222;
    r.agent_id = 7;
    r.syscall_trace_id_request = 71;
    r.syscall_trace_id_response = 72;
    r.span_id = "aaaa000000000001".into();
    r.parent_span_id = "p1".into();
    r.request_id = Some(4660);
    r.trace_id = "T1".into();
    r._trace_id_2 = "T2".into();
    r.x_request_id_0 = "x0".into();
    r.x_request_id_1 = "x1".into();
    r.observation_point = "c-p".into();
    let other = row(2);
    store.insert_rows(org, &[r.clone(), other]).await.unwrap();
    let got = store
        .select_meta(org, &FlowQuery::new(Filter::ids([r._id])))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![FlowMeta {
            _id: r._id,
            r#type: 2,
            signal_source: 3,
            req_tcp_seq: 111,
            resp_tcp_seq: 222,
            start_time_us: r.start_time,
            end_time_us: r.end_time,
            agent_id: 7,
            protocol: 6,
            syscall_trace_id_request: 71,
            syscall_trace_id_response: 72,
            span_id: "aaaa000000000001".into(),
            parent_span_id: "p1".into(),
            request_id: Some(4660),
            l7_protocol: 20,
            trace_id: "T1".into(),
            _trace_id_2: "T2".into(),
            x_request_id_0: "x0".into(),
            x_request_id_1: "x1".into(),
            observation_point: "c-p".into(),
            time: r.time,
        }]
    );
    assert_eq!(got[0].trace_ids(), vec!["T1", "T2"]);
}

async fn id_lookup_without_window_finds_rows(store: SharedStore, org: OrgId) {
    // Rows in different seconds; an `_id` lookup derives its window from the ids themselves.
    let mut a = row(1);
    let mut b = row(2);
    b.end_time += 3_000_000;
    b.time = 0;
    b._id = 0;
    b.normalise(2);
    a.request_id = None;
    store
        .insert_rows(org, &[a.clone(), b.clone()])
        .await
        .unwrap();
    let got = store
        .select_meta(org, &FlowQuery::new(Filter::ids([a._id, b._id])))
        .await
        .unwrap();
    assert_eq!(ids(&got), {
        let mut v = vec![a._id, b._id];
        v.sort();
        v
    });
    assert_eq!(
        got.iter().find(|m| m._id == a._id).unwrap().request_id,
        None
    );
}

async fn window_bounds_are_inclusive(store: SharedStore, org: OrgId) {
    let rows: Vec<L7FlowLogRow> = (0..5)
        .map(|i| {
            let mut r = row(i);
            r.end_time = (T0 + i) as i64 * 1_000_000;
            r.start_time = r.end_time - 100;
            r.time = 0;
            r._id = 0;
            r.normalise(i);
            r.trace_id = "W".into();
            r
        })
        .collect();
    store.insert_rows(org, &rows).await.unwrap();
    let q =
        FlowQuery::new(Filter::TraceIdIn(vec!["W".into()])).window(TimeWindow::new(T0 + 1, T0 + 3));
    let got = store.select_meta(org, &q).await.unwrap();
    assert_eq!(ids(&got), vec![rows[1]._id, rows[2]._id, rows[3]._id]);
}

async fn trace_ids_match_either_column(store: SharedStore, org: OrgId) {
    let mut a = row(1);
    a.trace_id = "A".into();
    let mut b = row(2);
    b.trace_id = "B".into();
    b._trace_id_2 = "A".into();
    let mut c = row(3);
    c.trace_id = "C".into();
    store
        .insert_rows(org, &[a.clone(), b.clone(), c.clone()])
        .await
        .unwrap();
    let w = TimeWindow::new(T0 - 10, T0 + 10);
    let got = store
        .select_meta(
            org,
            &FlowQuery::new(Filter::TraceIdIn(vec!["A".into()])).window(w),
        )
        .await
        .unwrap();
    assert_eq!(ids(&got), vec![a._id, b._id]);
    let got = store
        .select_meta(
            org,
            &FlowQuery::new(Filter::TraceIdIn(vec!["B".into(), "C".into()])).window(w),
        )
        .await
        .unwrap();
    assert_eq!(ids(&got), vec![b._id, c._id]);
}

async fn association_clauses_or_together(store: SharedStore, org: OrgId) {
    let mut rows: Vec<L7FlowLogRow> = (1..=6).map(row).collect();
    rows[0].req_tcp_seq = 111;
    rows[1].resp_tcp_seq = 222;
    rows[2].syscall_trace_id_response = 7;
    rows[3].x_request_id_1 = "R1".into();
    rows[4].req_tcp_seq = 999; // matches nothing
    rows[5].x_request_id_0 = "R1".into();
    store.insert_rows(org, &rows).await.unwrap();
    let q3 = Filter::Or(vec![
        Filter::Or(vec![
            Filter::IntIn(Col::ReqTcpSeq, vec![111, 333]),
            Filter::IntIn(Col::RespTcpSeq, vec![222]),
        ]),
        Filter::Or(vec![
            Filter::IntIn(Col::SyscallTraceIdRequest, vec![7]),
            Filter::IntIn(Col::SyscallTraceIdResponse, vec![7]),
        ]),
        Filter::Or(vec![
            Filter::StrIn(Col::XRequestId0, vec!["R1".into()]),
            Filter::StrIn(Col::XRequestId1, vec!["R1".into()]),
        ]),
    ]);
    let got = store
        .select_meta(org, &FlowQuery::new(q3).window(TimeWindow::new(T0, T0)))
        .await
        .unwrap();
    let mut want: Vec<u64> = [0, 1, 2, 3, 5].iter().map(|&i| rows[i]._id).collect();
    want.sort();
    assert_eq!(ids(&got), want);
}

/// Key lists read through the key indexes mean what they say: empty values (0, '') still
/// match the rows holding them, the window and the other parts of a conjunction still apply,
/// and a negated list selects the rest.
async fn key_lookups_keep_their_meaning(store: SharedStore, org: OrgId) {
    let mut rows: Vec<L7FlowLogRow> = (1..=5).map(row).collect();
    rows[0].req_tcp_seq = 111;
    rows[1].req_tcp_seq = 111;
    rows[1].l7_protocol = 120;
    rows[2].x_request_id_0 = "R".into();
    rows[3].trace_id = "T".into();
    rows[4].time += 100;
    rows[4].req_tcp_seq = 111;
    store.insert_rows(org, &rows).await.unwrap();
    let id = |i: usize| rows[i]._id;
    let w = TimeWindow::new(T0, T0);
    let cases: Vec<(Filter, Vec<u64>)> = vec![
        (Filter::IntIn(Col::ReqTcpSeq, vec![111]), vec![id(0), id(1)]),
        (
            Filter::IntIn(Col::ReqTcpSeq, vec![0, 111]),
            (0..4).map(id).collect(),
        ),
        (
            Filter::StrIn(Col::XRequestId0, vec!["".into(), "R".into()]),
            (0..4).map(id).collect(),
        ),
        (
            Filter::Or(vec![
                Filter::IntIn(Col::ReqTcpSeq, vec![111]),
                Filter::StrIn(Col::XRequestId0, vec!["R".into()]),
                Filter::TraceIdIn(vec!["T".into()]),
            ]),
            (0..4).map(id).collect(),
        ),
        (
            Filter::And(vec![
                Filter::IntIn(Col::ReqTcpSeq, vec![111]),
                Filter::IntIn(Col::L7Protocol, vec![120]),
            ]),
            vec![id(1)],
        ),
        (
            Filter::Not(Box::new(Filter::IntIn(Col::ReqTcpSeq, vec![111]))),
            vec![id(2), id(3)],
        ),
        (Filter::ids([id(0), id(4)]), vec![id(0)]),
    ];
    for (f, mut want) in cases {
        want.sort();
        let got = store
            .select_meta(org, &FlowQuery::new(f.clone()).window(w))
            .await
            .unwrap();
        assert_eq!(ids(&got), want, "{f:?}");
        let got = store
            .select_records(org, &FlowQuery::new(f.clone()).window(w))
            .await
            .unwrap();
        let mut got: Vec<u64> = got.iter().map(|r| r._id).collect();
        got.sort();
        assert_eq!(got, want, "{f:?} (records)");
    }
}

async fn dns_request_id_clause(store: SharedStore, org: OrgId) {
    let mut dns = row(1);
    dns.l7_protocol = 120;
    dns.request_id = Some(4660);
    let mut http = row(2);
    http.request_id = Some(4660);
    store.insert_rows(org, &[dns.clone(), http]).await.unwrap();
    let f = Filter::And(vec![
        Filter::IntIn(Col::L7Protocol, vec![120]),
        Filter::IntIn(Col::RequestId, vec![4660]),
    ]);
    let got = store
        .select_meta(org, &FlowQuery::new(f).window(TimeWindow::new(T0, T0)))
        .await
        .unwrap();
    assert_eq!(ids(&got), vec![dns._id]);
}

async fn empty_key_lists_match_nothing(store: SharedStore, org: OrgId) {
    store.insert_rows(org, &[row(1), row(2)]).await.unwrap();
    let w = TimeWindow::new(T0, T0);
    for f in [
        Filter::IntIn(Col::ReqTcpSeq, vec![]),
        Filter::StrIn(Col::XRequestId0, vec![]),
        Filter::TraceIdIn(vec![]),
        Filter::False,
        Filter::Or(vec![]),
    ] {
        let got = store
            .select_meta(org, &FlowQuery::new(f.clone()).window(w))
            .await
            .unwrap();
        assert!(got.is_empty(), "{f:?} matched {got:?}");
    }
    let all = store
        .select_meta(org, &FlowQuery::new(Filter::True).window(w))
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let all = store
        .select_meta(org, &FlowQuery::new(Filter::And(vec![])).window(w))
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
}

async fn limit_and_order(store: SharedStore, org: OrgId) {
    let mut rows: Vec<L7FlowLogRow> = (1..=20).map(row).collect();
    rows.reverse();
    store.insert_rows(org, &rows).await.unwrap();
    let w = TimeWindow::new(T0, T0);
    let got = store
        .select_meta(org, &FlowQuery::new(Filter::True).window(w).limit(7))
        .await
        .unwrap();
    assert_eq!(got.len(), 7);
    let got = store
        .select_records(
            org,
            &FlowQuery::new(Filter::True)
                .window(w)
                .order(Order::StartTimeAsc),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 20);
    assert!(got
        .windows(2)
        .all(|p| p[0].start_time_us <= p[1].start_time_us));
}

async fn full_record_roundtrip_with_names(store: SharedStore, org: OrgId) {
    let mut r = row(1);
    r.signal_source = 3;
    r.observation_point = "s-p".into();
    r.biz_protocol = "HTTP".into();
    r.version = "1.1".into();
    r.agent_id = 9;
    r.capture_nic = 33;
    r.capture_nic_type = 1;
    r.capture_network_type_id = 3;
    r.ip4_0 = Ip4(Ipv4Addr::new(10, 1, 2, 3));
    r.ip4_1 = Ip4(Ipv4Addr::new(10, 9, 8, 7));
    r.client_port = 40000;
    r.server_port = 8080;
    r.subnet_id_0 = 5;
    r.subnet_id_1 = 6;
    r.auto_instance_type_1 = 10;
    r.auto_instance_id_1 = 501;
    r.auto_service_type_1 = 130;
    r.auto_service_id_1 = 601;
    r.auto_instance_type_0 = 120;
    r.auto_instance_id_0 = 77;
    r.gprocess_id_1 = 77;
    r.pod_id_1 = 501;
    r.pod_node_id_1 = 21;
    r.host_id_1 = 31;
    r.process_id_1 = 4242;
    r.process_kname_1 = "java".into();
    r.syscall_cap_seq_0 = 5;
    r.syscall_cap_seq_1 = 6;
    r.flow_id = 123456;
    r.is_tls = 1;
    r.response_status = 3;
    r.response_code = Some(503);
    r.response_exception = "Service Unavailable".into();
    r.response_result = "r".into();
    r.biz_response_code = "E1".into();
    r.request_type = "POST".into();
    r.request_domain = "reviews:9080".into();
    r.request_resource = "/reviews/0".into();
    r.endpoint = "/reviews/{id}".into();
    r.http_proxy_client = "10.0.0.9".into();
    r.app_service = "reviews".into();
    r.app_instance = "reviews-v1".into();
    r.span_kind = Some(2);
    r.attribute_names = vec!["http.flavor".into(), "net.peer.name".into()];
    r.attribute_values = vec!["1.1".into(), "ratings".into()];
    r.events = r#"[{"name":"e"}]"#.into();
    r.response_duration = 500;
    store.insert_rows(org, &[r.clone()]).await.unwrap();
    store
        .insert_names(
            org,
            &NameTables {
                devices: vec![
                    DeviceName {
                        devicetype: 10,
                        deviceid: 501,
                        name: "reviews-v1-abc".into(),
                        ..Default::default()
                    },
                    DeviceName {
                        devicetype: 130,
                        deviceid: 601,
                        name: "reviews".into(),
                        ..Default::default()
                    },
                    DeviceName {
                        devicetype: 120,
                        deviceid: 77,
                        name: "java (4242)".into(),
                        ..Default::default()
                    },
                    DeviceName {
                        devicetype: 14,
                        deviceid: 21,
                        name: "node-1".into(),
                        ..Default::default()
                    },
                    DeviceName {
                        devicetype: 6,
                        deviceid: 31,
                        name: "host-1".into(),
                        ..Default::default()
                    },
                ],
                pods: vec![PodName {
                    id: 501,
                    name: "reviews-v1-abc".into(),
                    ..Default::default()
                }],
                subnets: vec![
                    IdName {
                        id: 5,
                        name: "net-a".into(),
                    },
                    IdName {
                        id: 6,
                        name: "net-b".into(),
                    },
                ],
                gprocesses: vec![IdName {
                    id: 77,
                    name: "java".into(),
                }],
                vtap_ports: vec![VtapPortName {
                    vtap_id: 9,
                    tap_port: 33,
                    name: "eth0".into(),
                    host_name: "host-1".into(),
                    pod_node_name: "node-1".into(),
                    device_type: 14,
                    device_name: "node-1".into(),
                    ..Default::default()
                }],
            },
        )
        .await
        .unwrap();
    let got = store
        .select_records(org, &FlowQuery::new(Filter::ids([r._id])))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(g._id, r._id);
    assert_eq!(g.time, T0);
    assert_eq!((g.start_time_us, g.end_time_us), (r.start_time, r.end_time));
    assert_eq!(g.observation_point, "s-p");
    assert_eq!(g.observation_point_name(), "Server Process");
    assert_eq!(g.l7_protocol_name(), "HTTP");
    assert_eq!(
        (g.biz_protocol.as_str(), g.version.as_str()),
        ("HTTP", "1.1")
    );
    assert_eq!((g.agent_id, g.capture_nic, g.capture_nic_type), (9, 33, 1));
    assert_eq!(g.capture_nic_name, "eth0");
    assert_eq!(
        (g.vtap_device_type, g.vtap_device_name.as_str()),
        (14, "node-1")
    );
    assert_eq!(
        (g.vtap_host_name.as_str(), g.vtap_pod_node_name.as_str()),
        ("host-1", "node-1")
    );
    assert_eq!(g.tap, "云网络");
    assert_eq!((g.ip_0.as_str(), g.ip_1.as_str()), ("10.1.2.3", "10.9.8.7"));
    assert_eq!((g.client_port, g.server_port), (40000, 8080));
    assert_eq!(
        (g.subnet_0.as_str(), g.subnet_1.as_str()),
        ("net-a", "net-b")
    );
    assert_eq!(g.auto_instance(1), "reviews-v1-abc");
    assert_eq!(g.auto_instance_id(1), 501);
    assert_eq!(g.auto_service(1), "reviews");
    assert_eq!(g.auto_service_id(1), 601);
    assert_eq!(g.auto_instance(0), "java (4242)");
    assert_eq!((g.gprocess_1.as_str(), g.gprocess_0.as_str()), ("java", ""));
    assert_eq!(g.pod_1, "reviews-v1-abc");
    assert_eq!(g.pod_node_1, "node-1");
    assert_eq!(g.host_1, "host-1");
    assert_eq!((g.process_id_1, g.process_kname_1.as_str()), (4242, "java"));
    assert_eq!((g.syscall_cap_seq_0, g.syscall_cap_seq_1), (5, 6));
    assert_eq!(g.flow_id, 123456);
    assert_eq!(
        (g.is_tls, g.response_status, g.response_code),
        (1, 3, Some(503))
    );
    assert_eq!(g.response_exception, "Service Unavailable");
    assert_eq!(g.biz_response_code, "E1");
    assert_eq!(
        (
            g.request_type.as_str(),
            g.request_domain.as_str(),
            g.request_resource.as_str(),
            g.endpoint.as_str()
        ),
        ("POST", "reviews:9080", "/reviews/0", "/reviews/{id}")
    );
    assert_eq!(g.http_proxy_client, "10.0.0.9");
    assert_eq!(
        (g.app_service.as_str(), g.app_instance.as_str()),
        ("reviews", "reviews-v1")
    );
    assert_eq!(g.span_kind, Some(2));
    assert_eq!(
        g.attributes().collect::<Vec<_>>(),
        vec![("http.flavor", "1.1"), ("net.peer.name", "ratings")]
    );
    assert_eq!(g.events, r#"[{"name":"e"}]"#);
    assert_eq!(g.response_duration, 500);
    assert_eq!(g.request_id, None);
}

async fn ip_like_instances_use_ip_and_subnet(store: SharedStore, org: OrgId) {
    let mut r = row(1);
    r.is_ipv4 = 0;
    r.ip6_0 = Ip6("fd00::1".parse::<Ipv6Addr>().unwrap());
    r.ip6_1 = Ip6("fd00::2".parse::<Ipv6Addr>().unwrap());
    r.subnet_id_0 = 12;
    r.auto_instance_type_0 = 255;
    r.auto_instance_id_0 = 999;
    r.auto_service_type_0 = 0;
    r.auto_service_id_0 = 888;
    store.insert_rows(org, &[r.clone()]).await.unwrap();
    let got = store
        .select_records(org, &FlowQuery::new(Filter::ids([r._id])))
        .await
        .unwrap();
    let g = &got[0];
    assert_eq!((g.ip_0.as_str(), g.ip_1.as_str()), ("fd00::1", "fd00::2"));
    assert_eq!(g.auto_instance(0), "fd00::1");
    assert_eq!(g.auto_instance_id(0), 12);
    assert_eq!(g.auto_service(0), "fd00::1");
    assert_eq!(g.auto_service_id(0), 12);
}

async fn large_unsigned_values_roundtrip(store: SharedStore, org: OrgId) {
    let mut r = row(1);
    r.syscall_trace_id_request = u64::MAX - 5;
    r.syscall_trace_id_response = 1 << 63;
    r.flow_id = u64::MAX;
    r.req_tcp_seq = u32::MAX;
    r.request_id = Some(u64::MAX);
    store.insert_rows(org, &[r.clone()]).await.unwrap();
    let f = Filter::IntIn(Col::SyscallTraceIdRequest, vec![u64::MAX - 5]);
    let got = store
        .select_records(org, &FlowQuery::new(f).window(TimeWindow::new(T0, T0)))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].syscall_trace_id_request, u64::MAX - 5);
    assert_eq!(got[0].syscall_trace_id_response, 1 << 63);
    assert_eq!(got[0].flow_id, u64::MAX);
    assert_eq!(got[0].req_tcp_seq, u32::MAX);
    assert_eq!(got[0].request_id, Some(u64::MAX));
}

async fn organisations_are_isolated(store: SharedStore, org: OrgId) {
    // The embedded store keeps every org in one file; ClickHouse in NNNN_ databases.
    let other = if store.kind() == deepflow_tempo::store::StoreKind::Embedded {
        OrgId(org.0 + 1)
    } else {
        crate::common::fresh_org()
    };
    if store.kind() == deepflow_tempo::store::StoreKind::Clickhouse {
        store
            .apply_schema(
                other,
                deepflow_tempo::store::SchemaOptions { without_ttl: true },
            )
            .await
            .unwrap();
    }
    let mut mine = row(1);
    mine.trace_id = "shared".into();
    let mut theirs = row(2);
    theirs.trace_id = "shared".into();
    store.insert_rows(org, &[mine.clone()]).await.unwrap();
    store.insert_rows(other, &[theirs.clone()]).await.unwrap();
    let q =
        FlowQuery::new(Filter::TraceIdIn(vec!["shared".into()])).window(TimeWindow::new(T0, T0));
    assert_eq!(
        ids(&store.select_meta(org, &q).await.unwrap()),
        vec![mine._id]
    );
    assert_eq!(
        ids(&store.select_meta(other, &q).await.unwrap()),
        vec![theirs._id]
    );
}

async fn hostile_strings_stay_literal(store: SharedStore, org: OrgId) {
    let nasty = [
        "' OR 1=1 --",
        "x'); DROP TABLE l7_flow_log; --",
        "back\\slash \\' quote",
        "?",
        "{id:UInt64}",
        "ünïcødé ✓",
        "\"double\"",
        "%_*",
    ];
    let rows: Vec<L7FlowLogRow> = nasty
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut r = row(i as u32 + 1);
            r.x_request_id_0 = s.to_string();
            r.trace_id = s.to_string();
            r
        })
        .collect();
    store.insert_rows(org, &rows).await.unwrap();
    let w = TimeWindow::new(T0, T0);
    for (i, s) in nasty.iter().enumerate() {
        let got = store
            .select_meta(
                org,
                &FlowQuery::new(Filter::StrIn(Col::XRequestId0, vec![s.to_string()])).window(w),
            )
            .await
            .unwrap();
        assert_eq!(ids(&got), vec![rows[i]._id], "{s:?}");
        let got = store
            .select_meta(
                org,
                &FlowQuery::new(Filter::TraceIdIn(vec![s.to_string()])).window(w),
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "{s:?}");
        assert_eq!(got[0].trace_id, *s);
    }
    let all = store
        .select_meta(org, &FlowQuery::new(Filter::True).window(w))
        .await
        .unwrap();
    assert_eq!(all.len(), nasty.len());
}

async fn load_round_trips_ten_thousand_rows(store: SharedStore, org: OrgId) {
    let rows = crate::common::generated_rows(10_000, 42, T0);
    let mut jsonl = String::new();
    for r in &rows {
        jsonl.push_str(&serde_json::to_string(r).unwrap());
        jsonl.push('\n');
    }
    let stats = load::load_rows(
        store.as_ref(),
        org,
        std::io::Cursor::new(jsonl),
        2_500,
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        stats,
        load::LoadStats {
            rows: 10_000,
            batches: 4
        }
    );
    let window = TimeWindow::new(T0, T0 + 20);
    let all = store
        .select_meta(
            org,
            &FlowQuery::new(Filter::True).window(window).limit(20_000),
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 10_000);
    // Conformance reads find the loaded rows by each key kind.
    let traced: Vec<&L7FlowLogRow> = rows.iter().filter(|r| r.trace_id == "trace-7").collect();
    let got = store
        .select_meta(
            org,
            &FlowQuery::new(Filter::TraceIdIn(vec!["trace-7".into()])).window(window),
        )
        .await
        .unwrap();
    assert_eq!(got.len(), traced.len());
    let sample: Vec<u64> = rows.iter().step_by(97).map(|r| r._id).collect();
    let got = store
        .select_records(org, &FlowQuery::new(Filter::ids(sample.clone())))
        .await
        .unwrap();
    assert_eq!(got.len(), sample.len());
    for g in &got {
        let want = rows.iter().find(|r| r._id == g._id).unwrap();
        assert_eq!(g.start_time_us, want.start_time);
        assert_eq!(g.span_id, want.span_id);
        assert_eq!(g.request_id, want.request_id);
        assert_eq!(g.response_code, want.response_code);
        assert_eq!(g.observation_point, want.observation_point);
    }
    let seq = rows[500].req_tcp_seq as u64;
    let got = store
        .select_meta(
            org,
            &FlowQuery::new(Filter::IntIn(Col::ReqTcpSeq, vec![seq])).window(window),
        )
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        rows.iter().filter(|r| r.req_tcp_seq as u64 == seq).count()
    );
}

async fn load_keeps_no_half_batch(store: SharedStore, org: OrgId) {
    let rows = crate::common::generated_rows(10, 7, T0);
    let mut lines: Vec<String> = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    lines[7] = r#"{"agent_id": "seven"}"#.into();
    let err = load::load_rows(
        store.as_ref(),
        org,
        std::io::Cursor::new(lines.join("\n")),
        5,
        false,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string().split(':').take(2).collect::<Vec<_>>(),
        vec!["line 8", " field `agent_id`"]
    );
    let all = store
        .select_meta(
            org,
            &FlowQuery::new(Filter::True).window(TimeWindow::new(T0, T0 + 5)),
        )
        .await
        .unwrap();
    assert_eq!(
        all.len(),
        5,
        "the first batch is written, the bad one not at all"
    );
}

async fn comparisons_attributes_and_negation(store: SharedStore, org: OrgId) {
    let mut rows: Vec<L7FlowLogRow> = (1..=4).map(row).collect();
    rows[0].response_duration = 100;
    rows[1].response_duration = 5_000;
    rows[2].response_duration = 90_000;
    rows[3].response_duration = 250_000;
    rows[0].response_code = Some(200);
    rows[1].response_code = Some(503);
    rows[2].response_code = None;
    rows[3].response_code = Some(404);
    rows[0].request_type = "GET".into();
    rows[1].request_type = "POST".into();
    rows[2].attribute_names = vec!["http.route".into(), "tenant".into()];
    rows[2].attribute_values = vec!["/users/{id}".into(), "acme".into()];
    rows[3].attribute_names = vec!["tenant".into()];
    rows[3].attribute_values = vec!["other".into()];
    store.insert_rows(org, &rows).await.unwrap();
    let w = TimeWindow::new(T0, T0);
    let q = |f: Filter| FlowQuery::new(f).window(w);
    let got = |v: Vec<FlowMeta>| ids(&v);
    let id = |i: usize| rows[i]._id;
    let sorted = |mut v: Vec<u64>| {
        v.sort();
        v
    };
    let r = store
        .select_meta(
            org,
            &q(Filter::IntCmp(Col::ResponseDuration, CmpOp::Gt, 5_000)),
        )
        .await
        .unwrap();
    assert_eq!(got(r), sorted(vec![id(2), id(3)]));
    let r = store
        .select_meta(org, &q(Filter::IntCmp(Col::ResponseCode, CmpOp::Gte, 400)))
        .await
        .unwrap();
    assert_eq!(
        got(r),
        sorted(vec![id(1), id(3)]),
        "NULL never matches a comparison"
    );
    let r = store
        .select_meta(
            org,
            &q(Filter::StrCmp(Col::RequestType, CmpOp::Eq, "POST".into())),
        )
        .await
        .unwrap();
    assert_eq!(got(r), vec![id(1)]);
    let r = store
        .select_meta(
            org,
            &q(Filter::Attr("tenant".into(), CmpOp::Eq, "acme".into())),
        )
        .await
        .unwrap();
    assert_eq!(got(r), vec![id(2)]);
    let r = store
        .select_meta(org, &q(Filter::AttrExists("tenant".into())))
        .await
        .unwrap();
    assert_eq!(got(r), sorted(vec![id(2), id(3)]));
    let r = store
        .select_meta(
            org,
            &q(Filter::Not(Box::new(Filter::AttrExists("tenant".into())))),
        )
        .await
        .unwrap();
    assert_eq!(got(r), sorted(vec![id(0), id(1)]));
    // The regex filter is exact on ClickHouse and lets every row through on SQLite (no regex
    // engine); the search re-checks rows either way.
    let r = store
        .select_meta(
            org,
            &q(Filter::StrRegex(Col::RequestType, "^P.*".into(), false)),
        )
        .await
        .unwrap();
    assert!(got(r).contains(&id(1)));
    let names = store
        .distinct_values(
            org,
            &FlowQuery::new(Filter::True).window(w).limit(10),
            &Facet::AttributeNames,
        )
        .await
        .unwrap();
    assert_eq!(names, vec!["http.route", "tenant"]);
    let values = store
        .distinct_values(
            org,
            &FlowQuery::new(Filter::True).window(w).limit(10),
            &Facet::AttributeValues("tenant".into()),
        )
        .await
        .unwrap();
    assert_eq!(values, vec!["acme", "other"]);
    let codes = store
        .distinct_values(
            org,
            &FlowQuery::new(Filter::True).window(w).limit(10),
            &Facet::Column(Col::ResponseCode),
        )
        .await
        .unwrap();
    assert_eq!(codes, vec!["200", "404", "503"]);
}

async fn service_names_and_facets(store: SharedStore, org: OrgId) {
    let mut app = row(1);
    app.signal_source = 4;
    app.observation_point = "s-app".into();
    app.app_service = "reviews".into();
    let mut ebpf = row(2);
    ebpf.signal_source = 3;
    ebpf.observation_point = "s-p".into();
    ebpf.auto_service_type_1 = 130;
    ebpf.auto_service_id_1 = 601;
    ebpf.pod_id_1 = 501;
    ebpf.pod_node_id_1 = 21;
    ebpf.host_id_1 = 31;
    let mut net = row(3);
    net.signal_source = 0;
    net.observation_point = "c".into();
    net.auto_service_type_0 = 255;
    net.ip4_0 = Ip4(Ipv4Addr::new(10, 0, 0, 7));
    net.pod_node_id_0 = 21;
    // A process talking to an address DeepFlow knows no service for: named by the address.
    let mut ebpf_ip = row(4);
    ebpf_ip.signal_source = 3;
    ebpf_ip.observation_point = "c-p".into();
    ebpf_ip.auto_service_type_0 = 255;
    ebpf_ip.ip4_0 = Ip4(Ipv4Addr::new(10, 0, 0, 9));
    // A process without service or name.
    let mut ebpf_unknown = row(5);
    ebpf_unknown.signal_source = 3;
    ebpf_unknown.observation_point = "s-p".into();
    ebpf_unknown.auto_service_type_1 = 130;
    ebpf_unknown.auto_service_id_1 = 699;
    store
        .insert_rows(
            org,
            &[
                app.clone(),
                ebpf.clone(),
                net.clone(),
                ebpf_ip.clone(),
                ebpf_unknown.clone(),
            ],
        )
        .await
        .unwrap();
    store
        .insert_names(
            org,
            &NameTables {
                devices: vec![
                    DeviceName {
                        devicetype: 130,
                        deviceid: 601,
                        name: "ratings".into(),
                        ..Default::default()
                    },
                    DeviceName {
                        devicetype: 14,
                        deviceid: 21,
                        name: "node-1".into(),
                        ..Default::default()
                    },
                    DeviceName {
                        devicetype: 6,
                        deviceid: 31,
                        name: "host-1".into(),
                        ..Default::default()
                    },
                ],
                pods: vec![PodName {
                    id: 501,
                    name: "ratings-v1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let w = TimeWindow::new(T0, T0);
    let all = FlowQuery::new(Filter::True).window(w).limit(10);
    let services = store
        .distinct_values(org, &all, &Facet::Service)
        .await
        .unwrap();
    // The span model's names: a network span is named after where it was observed.
    assert_eq!(
        services,
        vec![
            "10.0.0.9",
            "Client NIC @ node-1",
            "ratings",
            "reviews",
            "unknown process"
        ]
    );
    let every = [app._id, ebpf._id, net._id, ebpf_ip._id, ebpf_unknown._id];
    for (name, want) in [
        ("reviews", app._id),
        ("ratings", ebpf._id),
        ("Client NIC @ node-1", net._id),
        ("10.0.0.9", ebpf_ip._id),
        ("unknown process", ebpf_unknown._id),
    ] {
        let by_name = |f: Filter| {
            let store = store.clone();
            async move {
                let got = store
                    .select_meta(org, &FlowQuery::new(f).window(w))
                    .await
                    .unwrap();
                ids(&got)
            }
        };
        let only = Filter::ServiceIn(vec![name.into()]);
        assert_eq!(by_name(only.clone()).await, vec![want], "{name}");
        let mut others: Vec<u64> = every.iter().copied().filter(|&i| i != want).collect();
        others.sort();
        assert_eq!(
            by_name(Filter::Not(Box::new(only))).await,
            others,
            "not {name}"
        );
        // With a name no row has, and with another row's name.
        let pair = Filter::ServiceIn(vec![name.into(), "nobody".into()]);
        assert_eq!(by_name(pair).await, vec![want], "{name} or nobody");
    }
    assert_eq!(
        store.distinct_values(org, &all, &Facet::Pod).await.unwrap(),
        vec!["ratings-v1"]
    );
    assert_eq!(
        store
            .distinct_values(org, &all, &Facet::Node)
            .await
            .unwrap(),
        vec!["node-1"]
    );
    assert_eq!(
        store
            .distinct_values(org, &all, &Facet::Host)
            .await
            .unwrap(),
        vec!["host-1"]
    );
    let ops = store
        .distinct_values(org, &all, &Facet::Column(Col::ObservationPoint))
        .await
        .unwrap();
    assert_eq!(ops, vec!["c", "c-p", "s-app", "s-p"]);
}

/// A minute of the demo (application, eBPF and network spans of every kind, with names)
/// loaded and read back whole, and the window that holds it.
async fn load_demo_minute(
    store: &SharedStore,
    org: OrgId,
    seed: u64,
) -> (Vec<FlowRecord>, TimeWindow) {
    let end_us = (T0 as i64 + 60) * 1_000_000;
    let data = deepflow_tempo::demo::generate(&deepflow_tempo::demo::DemoOptions {
        seed,
        minutes: 1,
        rate: 1.0,
        end_us,
    });
    store.insert_rows(org, &data.rows).await.unwrap();
    store.insert_names(org, &data.names).await.unwrap();
    let w = TimeWindow::new(T0 - 120, T0 + 120);
    let records = store
        .select_records(org, &FlowQuery::new(Filter::True).window(w).limit(100_000))
        .await
        .unwrap();
    assert_eq!(records.len(), data.rows.len());
    (records, w)
}

/// The stores' SQL form of `service.name` is the span model's: over a minute of the demo
/// (application, eBPF and network spans of every kind, with names), the distinct service names
/// are those `span::SpanFacts` gives the rows, and selecting by each name finds exactly the rows
/// the model gives that name.
async fn service_names_follow_the_span_model(store: SharedStore, org: OrgId) {
    let (records, w) = load_demo_minute(&store, org, 7).await;
    let mut by_name: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for r in &records {
        let name = deepflow_tempo::span::SpanFacts::of_row(r)
            .service_name()
            .into_owned();
        by_name.entry(name).or_default().push(r._id);
    }
    assert!(by_name.keys().any(|k| k.contains(" @ ")), "{by_name:?}");
    let services = store
        .distinct_values(
            org,
            &FlowQuery::new(Filter::True).window(w).limit(10_000),
            &Facet::Service,
        )
        .await
        .unwrap();
    assert_eq!(
        services,
        by_name.keys().cloned().collect::<Vec<_>>(),
        "distinct service names"
    );
    for (name, want) in &mut by_name {
        want.sort();
        let got = store
            .select_meta(
                org,
                &FlowQuery::new(Filter::ServiceIn(vec![name.clone()]))
                    .window(w)
                    .limit(100_000),
            )
            .await
            .unwrap();
        assert_eq!(&ids(&got), want, "rows of {name}");
    }
}

/// Every key of the span model the stores compute in SQL (name, status, kind, service, each
/// span attribute derived from DeepFlow's columns, an OTel attribute) groups and compares the
/// demo's rows (application, eBPF and network spans of every protocol) exactly as
/// `deepflow_tempo::span` computes it in the process.
async fn span_model_keys_in_sql_follow_the_span_model(store: SharedStore, org: OrgId) {
    use deepflow_tempo::store::span_sql::DERIVED_SPAN_ATTRIBUTES;
    use deepflow_tempo::store::{Aggregation, GroupKey, KeyValue};
    use deepflow_tempo::traceql::Static;
    use std::collections::BTreeMap;
    let (records, _) = load_demo_minute(&store, org, 11).await;
    let text = |v: Option<Static>| match v {
        None => String::new(),
        Some(Static::String(s)) => s,
        Some(Static::Int(i)) => i.to_string(),
        Some(other) => other.to_string(),
    };
    let mut keys: Vec<GroupKey> = vec![
        GroupKey::SpanName,
        GroupKey::Status,
        GroupKey::Kind,
        GroupKey::Service,
    ];
    keys.extend(
        DERIVED_SPAN_ATTRIBUTES
            .iter()
            .map(|(n, _)| GroupKey::SpanAttr(n.to_string())),
    );
    let otel_names: std::collections::BTreeSet<String> = records
        .iter()
        .flat_map(|r| r.attributes().map(|(k, _)| k.to_string()))
        .collect();
    keys.extend(otel_names.iter().take(3).cloned().map(GroupKey::SpanAttr));
    keys.push(GroupKey::SpanAttr("no.such.attribute".into()));
    let expected_of = |key: &GroupKey, r: &FlowRecord| {
        let f = deepflow_tempo::span::SpanFacts::of_row(r);
        match key {
            GroupKey::SpanName => f.name(),
            GroupKey::Status => f.traceql_status().as_str().to_string(),
            GroupKey::Kind => f.traceql_kind().as_str().to_string(),
            GroupKey::Service => f.service_name().into_owned(),
            GroupKey::SpanAttr(n) => text(f.span_attr(n)),
            GroupKey::Column(_) => unreachable!(),
        }
    };
    let count = |filter: Filter, by: Vec<GroupKey>| {
        let store = store.clone();
        async move {
            let agg = Aggregation {
                filter,
                start_us: (T0 as i64 - 120) * 1_000_000,
                end_us: (T0 as i64 + 120) * 1_000_000,
                step_us: 240_000_000,
                by,
                value: None,
                log2: None,
                max_rows: 100_000,
                exemplars: false,
            };
            let mut out: BTreeMap<String, u64> = BTreeMap::new();
            for r in store.aggregate(org, &agg).await.unwrap() {
                *out.entry(r.group.join("|")).or_default() += r.count;
            }
            out
        }
    };
    let mut kinds_seen = 0;
    for key in &keys {
        let mut want: BTreeMap<String, u64> = BTreeMap::new();
        for r in &records {
            *want.entry(expected_of(key, r)).or_default() += 1;
        }
        let got = count(Filter::True, vec![key.clone()]).await;
        assert_eq!(got, want, "groups of {key:?}");
        if want.len() > 1 {
            kinds_seen += 1;
        }
        // Comparisons: `=` and `!=` on the most frequent present value, presence.
        let Some((value, _)) = want
            .iter()
            .filter(|(v, _)| !v.is_empty())
            .max_by_key(|(v, n)| (**n, std::cmp::Reverse((*v).clone())))
        else {
            continue;
        };
        let optional = matches!(key, GroupKey::SpanAttr(_));
        let present = |v: &str| !optional || !v.is_empty();
        for op in [CmpOp::Eq, CmpOp::Neq, CmpOp::Lt, CmpOp::Gte] {
            let n: u64 = records
                .iter()
                .map(|r| expected_of(key, r))
                .filter(|v| {
                    present(v)
                        && match op {
                            CmpOp::Eq => v == value,
                            CmpOp::Neq => v != value,
                            CmpOp::Lt => v < value,
                            _ => v >= value,
                        }
                })
                .count() as u64;
            let got = count(
                Filter::KeyCmp(key.clone(), op, KeyValue::Str(value.clone())),
                vec![],
            )
            .await;
            assert_eq!(got.values().sum::<u64>(), n, "{key:?} {op:?} {value:?}");
        }
    }
    assert!(
        kinds_seen >= 20,
        "the demo exercises most keys: {kinds_seen}"
    );
    // Integer attributes compare as integers.
    let codes: Vec<i64> = records
        .iter()
        .filter_map(|r| {
            match deepflow_tempo::span::SpanFacts::of_row(r).span_attr("http.status_code") {
                Some(Static::Int(c)) => Some(c),
                _ => None,
            }
        })
        .collect();
    assert!(!codes.is_empty());
    let got = count(
        Filter::KeyCmp(
            GroupKey::SpanAttr("http.status_code".into()),
            CmpOp::Gte,
            KeyValue::Int(400),
        ),
        vec![],
    )
    .await;
    assert_eq!(
        got.values().sum::<u64>(),
        codes.iter().filter(|&&c| c >= 400).count() as u64
    );
}

async fn most_recent_first(store: SharedStore, org: OrgId) {
    let rows: Vec<L7FlowLogRow> = (0..5)
        .map(|i| {
            let mut r = row(i);
            r.end_time = (T0 + i) as i64 * 1_000_000;
            r.start_time = r.end_time - 100;
            r.time = 0;
            r._id = 0;
            r.normalise(i);
            r
        })
        .collect();
    store.insert_rows(org, &rows).await.unwrap();
    let got = store
        .select_meta(
            org,
            &FlowQuery::new(Filter::True)
                .window(TimeWindow::new(T0, T0 + 10))
                .order(Order::TimeDesc)
                .limit(2),
        )
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|m| m._id).collect::<Vec<_>>(),
        vec![rows[4]._id, rows[3]._id]
    );
}
