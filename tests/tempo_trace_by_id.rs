//! Tempo trace by ID over HTTP on both stores: v1/v2 × protobuf/JSON × with/without range,
//! zero-code trace IDs, ID forms Grafana sends (upper case, leading zeros trimmed), 400s, 404s,
//! partial traces, stable span IDs, and Tempo's structural rules (tempo-api.md §4.2) asserted
//! on every encoded trace.

#[macro_use]
mod common;

use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::SharedStore;
use deepflow_tempo::synth;
use deepflow_tempo::tempo::ids::TraceId;
use deepflow_tempo::tempo::pb;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{names, s4_rows, T4};

on_both_stores!(
    full_stack_trace_matrix,
    zero_code_trace_by_its_id,
    bad_requests_and_not_found,
    partial_traces,
    span_ids_are_stable_across_requests,
);

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

struct Server {
    base: String,
    client: reqwest::Client,
    org: OrgId,
}

impl Server {
    async fn start(store: SharedStore, org: OrgId, cfg: Config) -> Server {
        let (srv, addrs) = server::bind(server::app_state(&cfg, store), "127.0.0.1:0").unwrap();
        tokio::spawn(srv);
        Server {
            base: format!("http://{}", addrs[0]),
            client: reqwest::Client::new(),
            org,
        }
    }

    async fn get(&self, path: &str, protobuf: bool) -> (u16, String, Vec<u8>) {
        let mut req = self
            .client
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(60));
        if !self.org.is_default() {
            // DeepFlow's organisation header selects the per-test databases.
            req = req.header("X-Org-Id", self.org.0.to_string());
        }
        if protobuf {
            req = req.header("Accept", "application/protobuf");
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, ct, resp.bytes().await.unwrap().to_vec())
    }

    /// The trace at `path` (v1 or v2) in both encodings; asserts they agree.
    async fn trace(&self, path: &str) -> pb::Trace {
        let v2 = path.starts_with("/api/v2/");
        let (s, ct, body) = self.get(path, true).await;
        assert_eq!(s, 200, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(ct, "application/protobuf");
        check_wire_fields(&body, v2);
        let trace = if v2 {
            let r = pb::TraceByIdResponse::decode(body.as_slice()).unwrap();
            assert_eq!(r.status, pb::PartialStatus::Complete as i32);
            r.trace.expect("v2 always carries the trace field")
        } else {
            pb::Trace::decode(body.as_slice()).unwrap()
        };
        let (s, ct, body) = self.get(path, false).await;
        assert_eq!(s, 200);
        assert_eq!(ct, "application/json");
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let batches = if v2 {
            &j["trace"]["resourceSpans"]
        } else {
            &j["batches"]
        };
        assert_eq!(
            batches.as_array().unwrap().len(),
            trace.resource_spans.len(),
            "{j}"
        );
        let first = &batches[0]["scopeSpans"][0]["spans"][0];
        assert!(
            first["startTimeUnixNano"].is_string(),
            "64-bit integers are strings: {first}"
        );
        assert!(
            first["status"].is_object(),
            "every span has a status: {first}"
        );
        assert!(batches[0]["scopeSpans"][0]["scope"].is_object());
        if !v2 {
            assert!(j.get("resourceSpans").is_none());
        }
        check_structure(&trace);
        trace
    }
}

/// Walk the protobuf wire format: `scope_spans` is field 2 of ResourceSpans, never 1000.
fn check_wire_fields(body: &[u8], v2: bool) {
    fn fields(mut b: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = vec![];
        while !b.is_empty() {
            let key = prost::encoding::decode_varint(&mut b).unwrap();
            let (num, wt) = (key >> 3, key & 7);
            match wt {
                0 => {
                    prost::encoding::decode_varint(&mut b).unwrap();
                }
                1 => b = &b[8..],
                5 => b = &b[4..],
                2 => {
                    let len = prost::encoding::decode_varint(&mut b).unwrap() as usize;
                    out.push((num, b[..len].to_vec()));
                    b = &b[len..];
                }
                _ => panic!("unexpected wire type {wt}"),
            }
        }
        out
    }
    let trace = if v2 {
        fields(body)
            .into_iter()
            .find(|(n, _)| *n == 1)
            .expect("v2 field 1 (trace)")
            .1
    } else {
        body.to_vec()
    };
    for (n, rs) in fields(&trace) {
        assert_eq!(n, 1, "Trace.resourceSpans is field 1");
        let nums: Vec<u64> = fields(&rs).iter().map(|f| f.0).collect();
        assert!(
            nums.contains(&1) && nums.contains(&2),
            "ResourceSpans has resource (1) and scope_spans (2): {nums:?}"
        );
        assert!(!nums.contains(&1000), "field 1000 is never emitted");
    }
}

/// tempo-api.md §4.2: resource with service.name, scope and status present, parents exist,
/// every span carries one trace id, no duplicate span ids, no 8-zero-byte parents.
fn check_structure(t: &pb::Trace) {
    assert!(
        !t.resource_spans.is_empty(),
        "a found trace has resource spans"
    );
    let mut ids = HashSet::new();
    let mut parents = vec![];
    let trace_id = t.resource_spans[0].scope_spans[0].spans[0].trace_id.clone();
    assert_eq!(trace_id.len(), 16);
    for rs in &t.resource_spans {
        let res = rs.resource.as_ref().expect("resource present");
        let svc = res
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .expect("service.name");
        match &svc.value.as_ref().unwrap().value {
            Some(any_value::Value::StringValue(s)) => assert!(!s.is_empty()),
            other => panic!("service.name is a string: {other:?}"),
        }
        assert!(!rs.scope_spans.is_empty());
        for ss in &rs.scope_spans {
            let scope = ss.scope.as_ref().expect("scope present");
            assert!(scope.name.starts_with("deepflow."));
            for s in &ss.spans {
                assert!(s.status.is_some(), "status present");
                assert_eq!(s.trace_id, trace_id);
                assert_eq!(s.span_id.len(), 8);
                assert!(ids.insert(s.span_id.clone()), "duplicate span id");
                assert!(s.parent_span_id.is_empty() || s.parent_span_id.len() == 8);
                assert_ne!(s.parent_span_id, vec![0u8; 8]);
                assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
                if !s.parent_span_id.is_empty() {
                    parents.push(s.parent_span_id.clone());
                }
            }
        }
    }
    for p in parents {
        assert!(ids.contains(&p), "parent span exists");
    }
}

/// (name, kind, service.name, scope, parent name) of every span.
fn describe(t: &pb::Trace) -> Vec<(String, i32, String, String, String)> {
    let mut by_id = HashMap::new();
    let mut rows = vec![];
    for rs in &t.resource_spans {
        let svc = rs
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .unwrap();
        let svc = match &svc.value.as_ref().unwrap().value {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            _ => unreachable!(),
        };
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                by_id.insert(s.span_id.clone(), s.name.clone());
                rows.push((
                    s.name.clone(),
                    s.kind,
                    svc.clone(),
                    ss.scope.as_ref().unwrap().name.clone(),
                    s.parent_span_id.clone(),
                ));
            }
        }
    }
    let mut out: Vec<_> = rows
        .into_iter()
        .map(|(n, k, svc, scope, p)| (n, k, svc, scope, by_id.get(&p).cloned().unwrap_or_default()))
        .collect();
    out.sort();
    out
}

async fn full_stack_trace_matrix(store: SharedStore, org: OrgId) {
    let t0 = now_us() - 600_000_000;
    store.insert_rows(org, &s4_rows(t0)).await.unwrap();
    store.insert_names(org, &names()).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    let t = t0 / 1_000_000;
    let mut seen = vec![];
    for v in ["/api/traces", "/api/v2/traces"] {
        for range in [String::new(), format!("?start={}&end={}", t - 5, t + 5)] {
            let trace = srv.trace(&format!("{v}/{T4}{range}")).await;
            seen.push(describe(&trace));
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "every route and range gives the same trace"
    );
    let d = &seen[0];
    use SpanKind as K;
    let want = [
        // (name, kind, service, scope, parent)
        ("/api/401", K::Client, "svc-a", "deepflow.app", ""),
        ("/api/402", K::Client, "svc-a", "deepflow.ebpf", "/api/401"),
        (
            "/api/403",
            K::Client,
            "Client NIC @ agent 1",
            "deepflow.network",
            "/api/402",
        ),
        (
            "/api/404",
            K::Server,
            "Server NIC @ agent 2",
            "deepflow.network",
            "/api/403",
        ),
        ("/api/405", K::Server, "svc-b", "deepflow.ebpf", "/api/404"),
        ("/api/406", K::Server, "svc-b", "deepflow.app", "/api/405"),
        ("/api/407", K::Internal, "svc-b", "deepflow.app", "/api/406"),
        ("/api/408", K::Client, "svc-b", "deepflow.app", "/api/407"),
        ("/api/409", K::Client, "svc-b", "deepflow.ebpf", "/api/408"),
        ("/api/410", K::Server, "svc-c", "deepflow.ebpf", "/api/409"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(n, k, s, sc, p)| {
            (
                n.to_string(),
                *k as i32,
                s.to_string(),
                sc.to_string(),
                p.to_string(),
            )
        })
        .collect();
    assert_eq!(d, &want);
    // App spans keep their span ids; the trace id is the requested one.
    let trace = srv.trace(&format!("/api/traces/{T4}")).await;
    let all: Vec<_> = trace
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    assert!(all
        .iter()
        .any(|s| hex::encode(&s.span_id) == "aaaa000000000001"));
    assert!(all.iter().all(|s| hex::encode(&s.trace_id) == T4));
    // Resource attributes of an eBPF span.
    let ebpf = trace
        .resource_spans
        .iter()
        .find(|rs| rs.scope_spans[0].scope.as_ref().unwrap().name == "deepflow.ebpf")
        .unwrap();
    let keys: Vec<&str> = ebpf
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .map(|kv| kv.key.as_str())
        .collect();
    for k in [
        "service.name",
        "service.instance.id",
        "k8s.pod.name",
        "process.pid",
        "deepflow.agent_id",
    ] {
        assert!(keys.contains(&k), "{k} in {keys:?}");
    }
    // ID forms Grafana sends: upper case, leading zeros trimmed.
    let upper = srv
        .trace(&format!("/api/traces/{}", T4.to_uppercase()))
        .await;
    assert_eq!(describe(&upper), *d);
    let trimmed = T4.trim_start_matches('0');
    assert_ne!(trimmed, T4);
    let tr = srv.trace(&format!("/api/v2/traces/{trimmed}")).await;
    assert_eq!(describe(&tr), *d);
}

async fn zero_code_trace_by_its_id(store: SharedStore, org: OrgId) {
    let t0 = now_us() - 300_000_000;
    let trace = synth::zero_code_trace(
        5,
        t0,
        synth::Shape {
            calls: 8,
            fanout: 3,
            services: 4,
        },
        &mut synth::Keys::new(0),
    );
    store.insert_rows(org, &trace.rows).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    let id = TraceId::zero_code(trace.entry_id).to_hex();
    assert!(id.starts_with("64656570666c6f77"));
    for path in [
        format!("/api/traces/{id}"),
        format!("/api/v2/traces/{id}"),
        format!("/api/traces/{}", id.to_uppercase()),
    ] {
        let t = srv.trace(&path).await;
        let spans: usize = t
            .resource_spans
            .iter()
            .map(|rs| rs.scope_spans[0].spans.len())
            .sum();
        assert_eq!(spans, 32, "{path}");
        let all: Vec<_> = t
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .collect();
        assert!(all.iter().all(|s| hex::encode(&s.trace_id) == id));
        assert_eq!(
            all.iter().filter(|s| s.parent_span_id.is_empty()).count(),
            1,
            "one root"
        );
    }
}

async fn bad_requests_and_not_found(store: SharedStore, org: OrgId) {
    store
        .insert_rows(org, &s4_rows(now_us() - 600_000_000))
        .await
        .unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    for (path, needle) in [
        ("/api/traces/xyz", "non-hex"),
        (
            "/api/v2/traces/0af7651916cd43dd8448eb211c80319c00",
            "longer than 32",
        ),
        (
            &*format!("/api/traces/{T4}?start=20&end=10"),
            "start must be before end",
        ),
        (&*format!("/api/v2/traces/{T4}?start=abc"), "invalid start"),
    ] {
        let (s, ct, body) = srv.get(path, true).await;
        assert_eq!(s, 400, "{path}");
        assert!(ct.starts_with("text/plain"), "{path}: {ct}");
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains(needle), "{path}: {body}");
    }
    for path in [
        "/api/traces/1234567890abcdef1234567890abcdef",
        "/api/v2/traces/1234567890abcdef1234567890abcdef",
        // A zero-code ID whose row does not exist.
        "/api/traces/64656570666c6f770000000000000001",
        "/api/v2/traces/64656570666c6f770000000000000001",
    ] {
        for pbuf in [true, false] {
            let (s, _, body) = srv.get(path, pbuf).await;
            assert_eq!(s, 404, "{path}");
            assert!(body.is_empty(), "404 has an empty body");
        }
    }
}

async fn partial_traces(store: SharedStore, org: OrgId) {
    store
        .insert_rows(org, &s4_rows(now_us() - 600_000_000))
        .await
        .unwrap();
    let mut cfg = Config::default();
    cfg.tempo.max_flows = 4;
    let srv = Server::start(store, org, cfg).await;
    let (s, ct, body) = srv.get(&format!("/api/v2/traces/{T4}"), true).await;
    assert_eq!((s, ct.as_str()), (200, "application/protobuf"));
    let r = pb::TraceByIdResponse::decode(body.as_slice()).unwrap();
    assert_eq!(r.status, pb::PartialStatus::Partial as i32);
    assert!(r.message.contains("tempo.max_flows"), "{}", r.message);
    let t = r.trace.unwrap();
    check_structure(&t);
    assert_eq!(
        t.resource_spans
            .iter()
            .map(|rs| rs.scope_spans[0].spans.len())
            .sum::<usize>(),
        4
    );
    let (s, _, body) = srv.get(&format!("/api/v2/traces/{T4}"), false).await;
    assert_eq!(s, 200);
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["status"], "PARTIAL");
    assert!(j["message"].as_str().unwrap().contains("10 flows"));
    let (s, ct, body) = srv.get(&format!("/api/traces/{T4}"), true).await;
    assert_eq!(s, 422);
    assert!(ct.starts_with("text/plain"));
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("trace exceeds max size"));
}

async fn span_ids_are_stable_across_requests(store: SharedStore, org: OrgId) {
    let t0 = now_us() - 600_000_000;
    store.insert_rows(org, &s4_rows(t0)).await.unwrap();
    let mut cfg = Config::default();
    cfg.cache.max_entries = 0; // recompute every time
    let a = Server::start(store.clone(), org, cfg.clone()).await;
    let b = Server::start(store, org, cfg).await; // a second replica
    let ids = |t: &pb::Trace| -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v: Vec<_> = t
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| (s.span_id.clone(), s.parent_span_id.clone()))
            .collect();
        v.sort();
        v
    };
    let first = ids(&a.trace(&format!("/api/traces/{T4}")).await);
    assert_eq!(first, ids(&a.trace(&format!("/api/traces/{T4}")).await));
    assert_eq!(first, ids(&b.trace(&format!("/api/v2/traces/{T4}")).await));
}
