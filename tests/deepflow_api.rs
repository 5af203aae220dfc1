//! DeepFlow's tracing API over HTTP (spec `autotrace.md` §1, §7.9, §8): S14 (tracing
//! completion) and S15 (L7FlowTracing) end to end on both stores, the public document's
//! example completion request, `TracingAlgoParams`, the `debug` extras, store failures, and a
//! validation matrix covering every field of both requests wrong in every way §1.1–1.2 lists,
//! extreme values, and random bodies (always a 200 or a 400 in the envelope).

#[macro_use]
mod common;

use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::SharedStore;
use serde_json::{json, Value};
use std::collections::HashMap;

use common::{s14_rows, S14_P as P, S14_T as T, S14_X as X, S14_Y as Y};
use common::{s15a_rows, s15b_rows, SPAN_FIELDS, SPEC_T0 as T0};
const TRACING: &str = "/v1/stats/querier/L7FlowTracing";
const COMPLETION: &str = "/v1/stats/querier/tracing-completion-by-external-app-spans";
const PARAMS: &str = "/v1/stats/querier/TracingAlgoParams";

on_both_stores!(
    s14_completion_over_http,
    s14_completion_of_an_unknown_trace_returns_the_external_spans,
    s15a_tracing_by_id_over_http,
    s15b_tracing_by_id_and_by_trace_id_over_http,
    tracing_of_nothing_is_empty_data,
    public_document_example_completes,
);

// ---------------------------------------------------------------------------------------------
// Server and rows

struct Server {
    base: String,
    client: reqwest::Client,
    org: OrgId,
}

/// A response: status, content type, body as JSON.
struct Answer {
    status: u16,
    content_type: String,
    body: Value,
}

impl Server {
    async fn start(store: SharedStore, org: OrgId, cfg: Config) -> Server {
        let (srv, addrs) = server::bind(server::app_state(&cfg, store), "127.0.0.1:0").unwrap();
        tokio::spawn(srv);
        Server {
            base: format!("http://{}", addrs[0]),
            client: common::http_client(),
            org,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let req = if self.org.is_default() {
            req
        } else {
            // DeepFlow's organisation header selects the per-test databases.
            req.header("X-Org-Id", self.org.0.to_string())
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn post_text(&self, path: &str, body: &str) -> Answer {
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.post_text(path, &body.to_string()).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.client.get(format!("{}{path}", self.base)))
            .await
    }
}

/// A 200 with the success envelope of `kind`; its DATA.
fn data(a: &Answer, kind: &str) -> Value {
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.content_type, "application/json");
    assert_eq!(a.body["OPT_STATUS"], "SUCCESS", "{}", a.body);
    assert_eq!(a.body["DESCRIPTION"], "");
    assert_eq!(a.body["TYPE"], kind);
    assert!(a.body["DATA"].is_object(), "{}", a.body);
    a.body["DATA"].clone()
}

/// The low bits of a span's first `_id` (0 for external spans, whose ids are generated).
fn n_of(span: &Value) -> u64 {
    let id: u64 = span["_ids"][0].as_str().unwrap().parse().unwrap();
    id & 0xffff_ffff
}

/// `n → (parent n, set_parent_info)` of an L7FlowTracing answer.
fn tree(tracing: &[Value]) -> HashMap<u64, (Option<u64>, Option<String>)> {
    let by_index: HashMap<i64, u64> = tracing
        .iter()
        .map(|s| (s["id"].as_i64().unwrap(), n_of(s)))
        .collect();
    tracing
        .iter()
        .map(|s| {
            let parent = s["parent_id"].as_i64().unwrap();
            (
                n_of(s),
                (
                    by_index.get(&parent).copied(),
                    s["set_parent_info"].as_str().map(str::to_string),
                ),
            )
        })
        .collect()
}

const TCP: &str = "trace mounted due to tcp_seq";

/// The fields §8.1 step 7 removes from completion spans.
const COMPLETION_DROPPED: [&str; 12] = [
    "selftime",
    "Enum(tap_side)",
    "id",
    "parent_id",
    "childs",
    "service_uid",
    "service_uname",
    "tap_port",
    "tap_port_name",
    "resource_from_vtap",
    "set_parent_info",
    "auto_instance",
];

// ---------------------------------------------------------------------------------------------
// S14: tracing completion

/// S14's request body with `trace` as the external spans' trace id.
fn s14_request(trace: &str) -> Value {
    json!({"app_spans": [
        {"trace_id": trace, "span_id": X, "parent_span_id": P, "span_kind": 2,
         "start_time_us": T0 + 1000, "end_time_us": T0 + 19_000},
        {"trace_id": trace, "span_id": Y, "parent_span_id": X, "span_kind": 3,
         "start_time_us": T0 + 4000, "end_time_us": T0 + 16_000},
    ]})
}

async fn s14_completion_over_http(store: SharedStore, org: OrgId) {
    store.insert_rows(org, &s14_rows()).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    let mut req = s14_request(T);
    req["debug"] = json!(true);
    let a = srv.post(COMPLETION, &req).await;
    let d = data(&a, "tracing-completion-by-external-app-spans");
    assert!(d.get("services").is_none(), "completion drops services");
    assert!(d["host_clock_correction"].is_object());
    let tracing = d["tracing"].as_array().unwrap();
    assert_eq!(
        tracing.len(),
        7,
        "five DeepFlow rows and two external spans"
    );
    for s in tracing {
        for k in COMPLETION_DROPPED {
            assert!(s.get(k).is_none(), "{k} must be dropped: {s}");
        }
        for k in [
            "deepflow_span_id",
            "deepflow_parent_span_id",
            "_ids",
            "tap_side",
        ] {
            assert!(s.get(k).is_some(), "{k} missing: {s}");
        }
    }
    // Key: external spans by span_id, DeepFlow rows by n.
    let parents: HashMap<String, (String, String)> = tracing
        .iter()
        .map(|s| {
            let key = if s["signal_source"] == 4 {
                s["span_id"].as_str().unwrap().to_string()
            } else {
                n_of(s).to_string()
            };
            (
                key,
                (
                    s["deepflow_span_id"].as_str().unwrap().to_string(),
                    s["deepflow_parent_span_id"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    let want = [
        ("1", "1111111111111111.c-p.0", ""),
        ("2", "1111111111111111.s-p.1", "1111111111111111.c-p.0"),
        (X, X, "1111111111111111.c-p.0"),
        (Y, Y, X),
        ("3", "3333333333333333.c-p.4", "1111111111111111.s-p.1"),
        ("4", "3333333333333333.c.5", "3333333333333333.c-p.4"),
        ("5", "3333333333333333.s-p.6", "3333333333333333.c.5"),
    ];
    for (k, id, parent) in want {
        assert_eq!(
            parents.get(k),
            Some(&(id.to_string(), parent.to_string())),
            "span {k}: {parents:?}"
        );
    }
    // Q0, Q1, Q2, Q3, Q4 (§10 S14).
    assert_eq!(a.body["_QUERY_IDS"], json!([1, 2, 3, 4, 5]), "{}", a.body);
    let info = &a.body["_TSDB_INFO"];
    assert_eq!(info["query_count"], 5);
    assert_eq!(info["queries"].as_array().unwrap().len(), 5);
    assert!(info["queries"][0]["filter"]
        .as_str()
        .unwrap()
        .contains("FastFilter(trace_id) IN ('0af7651916cd43dd8448eb211c80319c')"));
    assert!(info["store_time_us"].is_u64());
}

async fn s14_completion_of_an_unknown_trace_returns_the_external_spans(
    store: SharedStore,
    org: OrgId,
) {
    store.insert_rows(org, &s14_rows()).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    let a = srv.post(COMPLETION, &s14_request("unknown")).await;
    let d = data(&a, "tracing-completion-by-external-app-spans");
    let tracing = d["tracing"].as_array().unwrap();
    let mut spans: Vec<&str> = tracing
        .iter()
        .map(|s| s["span_id"].as_str().unwrap())
        .collect();
    spans.sort();
    assert_eq!(spans, vec![X, Y]);
    let y = tracing.iter().find(|s| s["span_id"] == Y).unwrap();
    assert_eq!(y["deepflow_parent_span_id"], X);
    assert_eq!(y["tap_side"], "c-app");
}

/// The public Trace Completion API document's example request: its values and fields as
/// written (the document's trailing comma and `...` elision are not JSON, so they are left out).
const DOCUMENT_EXAMPLE: &str = r#"{
  "max_iteration": 30,
  "network_delay_us": 3000000,
  "app_spans":[
    {
      "trace_id": "xxxx",
      "span_id": "xxxx",
      "parent_span_id": "xxxx",
      "span_kind": 0,
      "start_time_us": 1681960139619998,
      "end_time_us": 1681960139620004
    }
  ]
}"#;

async fn public_document_example_completes(store: SharedStore, org: OrgId) {
    store.insert_rows(org, &s14_rows()).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    let a = srv.post_text(COMPLETION, DOCUMENT_EXAMPLE).await;
    let d = data(&a, "tracing-completion-by-external-app-spans");
    let tracing = d["tracing"].as_array().unwrap();
    assert_eq!(tracing.len(), 1, "{d}");
    let s = &tracing[0];
    assert_eq!(s["span_id"], "xxxx");
    assert_eq!(s["trace_id"], "xxxx");
    assert_eq!(s["signal_source"], 4);
    assert_eq!(
        s["tap_side"], "app",
        "span_kind 0 (unspecified) is an app span"
    );
    assert_eq!(s["start_time_us"], 1_681_960_139_619_998i64);
    assert_eq!(s["duration"], 6);
    assert!(d["host_clock_correction"].is_object());
    // The document's text exactly as printed (trailing comma, `...`) is not JSON: a 400 in the
    // envelope, not a 500.
    let printed = DOCUMENT_EXAMPLE.replace(
        "\"end_time_us\": 1681960139620004\n    }",
        "\"end_time_us\": 1681960139620004,\n    },\n    ...",
    );
    let a = srv.post_text(COMPLETION, &printed).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["OPT_STATUS"], "INVALID_POST_DATA");
}

// ---------------------------------------------------------------------------------------------
// S15: L7FlowTracing

fn tracing_request(id: u64) -> Value {
    json!({
        "time_start": 1_699_999_940,
        "time_end": 1_700_000_060,
        "database": "flow_log",
        "table": "l7_flow_log",
        "_id": id.to_string(),
    })
}

async fn s15a_tracing_by_id_over_http(store: SharedStore, org: OrgId) {
    let rows = s15a_rows();
    store.insert_rows(org, &rows).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    let mut req = tracing_request(rows[0]._id);
    req["debug"] = json!(true);
    let a = srv.post(TRACING, &req).await;
    let d = data(&a, "Flow_Log_L7_Tracing");
    for k in ["tracing", "services", "host_clock_correction"] {
        assert!(d.get(k).is_some(), "{k} missing: {d}");
    }
    let tracing = d["tracing"].as_array().unwrap();
    assert_eq!(
        tracing.len(),
        5,
        "row 6 (TCP sequence reuse 5 s later) is dropped"
    );
    for s in tracing {
        for k in SPAN_FIELDS {
            assert!(s.get(k).is_some(), "§7.9 field {k} missing: {s}");
        }
        assert!(s["attribute"].is_null(), "has_attributes is 0");
    }
    let t = tree(tracing);
    assert_eq!(t[&1], (None, None));
    assert_eq!(t[&2], (Some(1), Some(TCP.into())));
    assert_eq!(t[&3], (Some(2), Some(TCP.into())));
    assert_eq!(t[&4], (Some(3), Some(TCP.into())));
    assert_eq!(
        t[&5],
        (
            Some(4),
            Some("c-p sys-span mounted due to syscall_trace_id matched to s-p root".into())
        )
    );
    let s4 = tracing.iter().find(|s| n_of(s) == 4).unwrap();
    assert_eq!(s4["selftime"], 6200);
    // O-3: network spans of an NSS without span_id keep the literal `None` prefix.
    let s2 = tracing.iter().find(|s| n_of(s) == 2).unwrap();
    assert!(
        s2["deepflow_span_id"]
            .as_str()
            .unwrap()
            .starts_with("None.c."),
        "{s2}"
    );
    // Q1, Q3 (tcp + syscall), Q3 (syscall 8,9), Q3 (tcp 333/444), Q4 (§10 S15a).
    assert_eq!(a.body["_QUERY_IDS"].as_array().unwrap().len(), 5);
    let info = &a.body["_TSDB_INFO"];
    assert_eq!(info["query_count"], 5);
    let first = info["queries"][0]["filter"].as_str().unwrap();
    assert!(
        first.contains(&format!("_id IN ({})", rows[0]._id)),
        "{first}"
    );
    assert_eq!(info["queries"][4]["read"], "records");
    assert_eq!(info["queries"][4]["rows"], 5);

    // max_iteration bounds the search: one iteration finds 1–4 only (5 needs the second);
    // 0 counts as 1.
    for (n, want) in [(1, 4), (0, 4), (2, 5)] {
        let mut req = tracing_request(rows[0]._id);
        req["max_iteration"] = json!(n);
        let d = data(&srv.post(TRACING, &req).await, "Flow_Log_L7_Tracing");
        assert_eq!(
            d["tracing"].as_array().unwrap().len(),
            want,
            "max_iteration {n}"
        );
    }

    // Without debug: no extras. has_attributes: the attribute JSON string per span.
    let mut req = tracing_request(rows[0]._id);
    req["has_attributes"] = json!(1);
    let a = srv.post(TRACING, &req).await;
    assert!(a.body.get("_QUERY_IDS").is_none() && a.body.get("_TSDB_INFO").is_none());
    let d = data(&a, "Flow_Log_L7_Tracing");
    assert!(d["tracing"][0]["attribute"].is_string(), "{d}");
}

async fn s15b_tracing_by_id_and_by_trace_id_over_http(store: SharedStore, org: OrgId) {
    let rows = s15b_rows();
    store.insert_rows(org, &rows).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    // The UPPER-CASE aliases, and `_id` as a JSON number.
    let req = json!({
        "TIME_START": "1699999940",
        "TIME_END": 1_700_000_060,
        "DATABASE": "flow_log",
        "TABLE": "l7_flow_log",
        "_id": rows[1]._id,
        "MAX_ITERATION": 30,
        "NETWORK_DELAY_US": 50000,
        "HOST_CLOCK_OFFSET_US": 10000,
        "NTP_DELAY_US": 10000,
        "SIGNAL_SOURCES": ["otel", "ebpf"],
        "REGION": "",
        "DEBUG": false,
    });
    let a = srv.post(TRACING, &req).await;
    let d = data(&a, "Flow_Log_L7_Tracing");
    let tracing = d["tracing"].as_array().unwrap();
    let t = tree(tracing);
    let mut got: Vec<u64> = t.keys().copied().collect();
    got.sort();
    assert_eq!(got, vec![1, 2, 4, 5, 6], "row 3 carries foreign trace U");
    assert_eq!(t[&4], (None, None));
    assert_eq!(t[&2], (Some(4), Some(TCP.into())));
    assert_eq!(
        t[&1],
        (
            Some(2),
            Some("s-p sys_span mounted due to same span_id as parent".into())
        )
    );
    assert_eq!(
        t[&5],
        (
            Some(1),
            Some("app_span mounted due to parent_span_id".into())
        )
    );
    assert_eq!(
        t[&6],
        (Some(5), Some("s-app mounted due to parent_span_id".into()))
    );
    let s4 = tracing.iter().find(|s| n_of(s) == 4).unwrap();
    assert_eq!(s4["deepflow_span_id"], "u1.c.0");
    assert!(d["services"].is_array());

    // Without `_id`, the trace id is the entry (the Tempo/Grafana path): the same trace.
    let mut by_trace = tracing_request(0);
    by_trace["_id"] = json!("");
    by_trace["trace_id"] = json!("T");
    let d = data(&srv.post(TRACING, &by_trace).await, "Flow_Log_L7_Tracing");
    let mut got: Vec<u64> = tree(d["tracing"].as_array().unwrap())
        .keys()
        .copied()
        .collect();
    got.sort();
    assert_eq!(got, vec![1, 2, 4, 5, 6]);

    // signal_sources == ["otel"]: OTel-only mode keeps the app spans only.
    by_trace["signal_sources"] = json!(["otel"]);
    let d = data(&srv.post(TRACING, &by_trace).await, "Flow_Log_L7_Tracing");
    let tracing = d["tracing"].as_array().unwrap();
    assert!(!tracing.is_empty());
    assert!(tracing.iter().all(|s| s["signal_source"] == 4), "{d}");
}

async fn tracing_of_nothing_is_empty_data(store: SharedStore, org: OrgId) {
    store.insert_rows(org, &s15a_rows()).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    let unknown_id = (1_700_000_000u64 << 32) | 77;
    let d = data(
        &srv.post(TRACING, &tracing_request(unknown_id)).await,
        "Flow_Log_L7_Tracing",
    );
    assert_eq!(d, json!({}));
    let mut req = tracing_request(0);
    req.as_object_mut().unwrap().remove("_id");
    req["trace_id"] = json!("no-such-trace");
    let d = data(&srv.post(TRACING, &req).await, "Flow_Log_L7_Tracing");
    assert_eq!(d, json!({}));
    // Neither `_id` nor `trace_id`: nothing to trace.
    req.as_object_mut().unwrap().remove("trace_id");
    let d = data(&srv.post(TRACING, &req).await, "Flow_Log_L7_Tracing");
    assert_eq!(d, json!({}));
}

// ---------------------------------------------------------------------------------------------
// TracingAlgoParams, store failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_algo_params_come_from_the_configuration() {
    let (store, org) = common::sqlite_store().await;
    let srv = Server::start(store.clone(), org, Config::default()).await;
    let d = data(&srv.get(PARAMS).await, "TracingAlgoParams");
    assert_eq!(
        d,
        json!({"network_delay_us": 50000, "host_clock_offset_us": 10000, "max_iteration": 30})
    );
    let mut cfg = Config::default();
    cfg.tracing.network_delay_us = 3_000_000;
    cfg.tracing.host_clock_offset_us = 20_000;
    cfg.tracing.max_iteration = 7;
    let srv = Server::start(store, org, cfg).await;
    let d = data(&srv.get(PARAMS).await, "TracingAlgoParams");
    assert_eq!(
        d,
        json!({"network_delay_us": 3_000_000, "host_clock_offset_us": 20_000, "max_iteration": 7})
    );
}

fn clickhouse_at(url: &str, timeout_s: u64) -> SharedStore {
    let mut s = common::clickhouse_settings(url);
    s.timeout = std::time::Duration::from_secs(timeout_s);
    std::sync::Arc::new(deepflow_tempo::store::clickhouse::ClickHouseStore::new(s).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failures_are_enveloped_503_and_504() {
    // Nothing listens on the port: unavailable. The socket holds the port (bound, never
    // listening) so no other process of the run can take it meanwhile.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    let srv = Server::start(
        clickhouse_at(&format!("http://127.0.0.1:{port}"), 5),
        OrgId::DEFAULT,
        Config::default(),
    )
    .await;
    let a = srv.post(TRACING, &tracing_request(5)).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.content_type, "application/json");
    assert_eq!(a.body["OPT_STATUS"], "INTERNAL_SERVER_ERROR");
    assert!(a.body["DESCRIPTION"]
        .as_str()
        .unwrap()
        .contains("unavailable"));
    let a = srv.post(COMPLETION, &s14_request(T)).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.body["OPT_STATUS"], "INTERNAL_SERVER_ERROR");

    // A peer that accepts and never answers: timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let srv = Server::start(
        clickhouse_at(&format!("http://{addr}"), 1),
        OrgId::DEFAULT,
        Config::default(),
    )
    .await;
    let a = srv.post(TRACING, &tracing_request(5)).await;
    assert_eq!(a.status, 504, "{}", a.body);
    assert_eq!(a.body["OPT_STATUS"], "INTERNAL_SERVER_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_org_header_is_invalid_post_data() {
    let (store, org) = common::sqlite_store().await;
    let srv = Server::start(store, org, Config::default()).await;
    let a = srv
        .send(
            srv.client
                .post(format!("{}{TRACING}", srv.base))
                .header("X-Org-Id", "acme")
                .body(tracing_request(1).to_string()),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["OPT_STATUS"], "INVALID_POST_DATA");
    assert!(a.body["DESCRIPTION"].as_str().unwrap().contains("X-Org-Id"));
}

// ---------------------------------------------------------------------------------------------
// Validation matrix

/// A 400 `INVALID_POST_DATA`; its DESCRIPTION parsed as the validation error JSON.
fn invalid(a: &Answer) -> Value {
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.content_type, "application/json");
    assert_eq!(a.body["OPT_STATUS"], "INVALID_POST_DATA", "{}", a.body);
    let d = a.body["DESCRIPTION"].as_str().unwrap();
    serde_json::from_str(d).unwrap_or_else(|e| panic!("DESCRIPTION is not JSON ({e}): {d}"))
}

const REQUIRED: &str = "This field is required.";

fn not_int(v: &str) -> String {
    format!("Value '{v}' is not int.")
}

fn not_string(v: &str) -> String {
    format!("Couldn't interpret '{v}' as string.")
}

fn at_least(n: i64) -> String {
    format!("Int value should be greater than or equal to {n}.")
}

/// `base` with `key` set to `value` (`None` removes it).
fn with(base: &Value, key: &str, value: Option<Value>) -> Value {
    let mut b = base.clone();
    match value {
        Some(v) => b[key] = v,
        None => {
            b.as_object_mut().unwrap().remove(key);
        }
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_flow_tracing_validation_matrix() {
    let (store, org) = common::sqlite_store().await;
    let srv = Server::start(store, org, Config::default()).await;
    let base = tracing_request(5);
    // (field, value or None for missing, the key the error is under, message)
    let mut cases: Vec<(&str, Option<Value>, &str, Value)> = Vec::new();
    for f in ["time_start", "time_end"] {
        cases.push((f, None, f, json!(REQUIRED)));
        cases.push((f, Some(Value::Null), f, json!(REQUIRED)));
        cases.push((f, Some(json!("abc")), f, json!(not_int("abc"))));
        cases.push((f, Some(json!("1.5")), f, json!(not_int("1.5"))));
        cases.push((f, Some(json!(1.5)), f, json!(not_int("1.5"))));
        cases.push((f, Some(json!(true)), f, json!(not_int("true"))));
        cases.push((f, Some(json!([1])), f, json!(not_int("[1]"))));
        cases.push((f, Some(json!({"a": 1})), f, json!(not_int("{\"a\":1}"))));
        cases.push((f, Some(json!(-1)), f, json!(at_least(0))));
        cases.push((f, Some(json!("-1")), f, json!(at_least(0))));
    }
    for f in ["database", "table"] {
        cases.push((f, None, f, json!(REQUIRED)));
        cases.push((f, Some(Value::Null), f, json!(REQUIRED)));
        cases.push((f, Some(json!(1.5)), f, json!(not_string("1.5"))));
        cases.push((f, Some(json!(true)), f, json!(not_string("true"))));
        cases.push((f, Some(json!(["x"])), f, json!(not_string("[\"x\"]"))));
        cases.push((f, Some(json!({})), f, json!(not_string("{}"))));
    }
    for (v, shown) in [
        (json!("abc"), "abc"),
        (json!("-5"), "-5"),
        (json!(-5), "-5"),
        (json!("18446744073709551616"), "18446744073709551616"),
        (json!("0x10"), "0x10"),
    ] {
        cases.push((
            "_id",
            Some(v),
            "_id",
            json!(format!("Value '{shown}' is not a decimal UInt64.")),
        ));
    }
    cases.push(("_id", Some(json!(1.5)), "_id", json!(not_string("1.5"))));
    cases.push(("_id", Some(json!([1])), "_id", json!(not_string("[1]"))));
    for v in [json!(1.5), json!(false), json!(["T"]), json!({"t": 1})] {
        let shown = v.to_string();
        cases.push((
            "trace_id",
            Some(v.clone()),
            "trace_id",
            json!(not_string(&shown)),
        ));
        cases.push(("region", Some(v), "region", json!(not_string(&shown))));
    }
    cases.push((
        "has_attributes",
        Some(json!("yes")),
        "has_attributes",
        json!(not_int("yes")),
    ));
    cases.push((
        "has_attributes",
        Some(json!(0.5)),
        "has_attributes",
        json!(not_int("0.5")),
    ));
    for (f, alias, min) in [
        ("max_iteration", "MAX_ITERATION", 0),
        ("network_delay_us", "NETWORK_DELAY_US", 1),
        ("host_clock_offset_us", "HOST_CLOCK_OFFSET_US", 1),
        ("ntp_delay_us", "NTP_DELAY_US", 1),
    ] {
        cases.push((f, Some(json!(min - 1)), f, json!(at_least(min))));
        cases.push((f, Some(json!(-100)), f, json!(at_least(min))));
        cases.push((alias, Some(json!(min - 1)), alias, json!(at_least(min))));
        cases.push((f, Some(json!("x")), f, json!(not_int("x"))));
        cases.push((f, Some(json!(2.5)), f, json!(not_int("2.5"))));
        cases.push((f, Some(json!([])), f, json!(not_int("[]"))));
    }
    for f in ["signal_sources", "SIGNAL_SOURCES"] {
        cases.push((
            f,
            Some(json!([])),
            f,
            json!("Please provide at least 1 item."),
        ));
        cases.push((
            f,
            Some(json!("otel")),
            f,
            json!("Could not interpret the value as a list."),
        ));
        cases.push((
            f,
            Some(json!({"otel": 1})),
            f,
            json!("Could not interpret the value as a list."),
        ));
        cases.push((
            f,
            Some(json!(["otel", 1.5])),
            f,
            json!({"1": not_string("1.5")}),
        ));
    }
    for f in ["debug", "DEBUG"] {
        for v in [json!("maybe"), json!(2), json!([true]), json!(1.0)] {
            cases.push((f, Some(v), f, json!("Must be either true or false.")));
        }
    }
    for rogue in [
        "foo",
        "Time_Start",
        "_ID",
        "Trace_Id",
        "attribute",
        "app_spans",
    ] {
        cases.push((rogue, Some(json!(1)), rogue, json!("Rogue field")));
    }
    for (field, value, key, msg) in &cases {
        let body = with(&base, field, value.clone());
        let e = invalid(&srv.post(TRACING, &body).await);
        assert_eq!(e, json!({ *key: msg }), "{field} = {value:?}: {body}");
    }

    // DESCRIPTION is written as DeepFlow writes it.
    let a = srv.post(TRACING, &with(&base, "time_start", None)).await;
    assert_eq!(
        a.body["DESCRIPTION"],
        r#"{"time_start": "This field is required."}"#
    );
    let a = srv.post(TRACING, &with(&base, "foo", Some(json!(1)))).await;
    assert_eq!(a.body["DESCRIPTION"], r#"{"foo": "Rogue field"}"#);

    // Several faults at once: every one is reported.
    let e = invalid(
        &srv.post(
            TRACING,
            &json!({"TIME_START": -1, "database": "d", "foo": 1, "max_iteration": "x"}),
        )
        .await,
    );
    assert_eq!(
        e,
        json!({
            "TIME_START": at_least(0),
            "time_end": REQUIRED,
            "table": REQUIRED,
            "max_iteration": not_int("x"),
            "foo": "Rogue field",
        })
    );

    // Accepted forms: numeric strings, integral floats, aliases, the name winning over a bad
    // alias, `0` iterations, booleans as DeepFlow's validator takes them.
    let ok_cases = [
        with(&base, "time_start", Some(json!("1699999940"))),
        with(&base, "time_start", Some(json!(" 1699999940 "))),
        with(&base, "time_end", Some(json!(1_700_000_060.0))),
        with(&base, "TIME_START", Some(json!("not looked at"))),
        with(&base, "max_iteration", Some(json!(0))),
        with(&base, "max_iteration", Some(json!("3"))),
        with(&base, "network_delay_us", Some(json!(1))),
        with(&base, "_id", Some(json!(""))),
        with(&base, "_id", Some(Value::Null)),
        with(&base, "trace_id", Some(json!(42))),
        with(&base, "database", Some(json!(""))),
        with(&base, "debug", Some(json!("false"))),
        with(&base, "debug", Some(json!(1))),
        with(&base, "signal_sources", Some(json!(["otel"]))),
        with(&base, "region", Some(json!("region-1"))),
        with(&base, "has_attributes", Some(json!("1"))),
        json!({"TIME_START": 1, "TIME_END": 2, "DATABASE": "flow_log", "TABLE": "l7_flow_log"}),
    ];
    for body in ok_cases {
        let a = srv.post(TRACING, &body).await;
        data(&a, "Flow_Log_L7_Tracing");
    }

    malformed_bodies(&srv, TRACING).await;
}

/// Bodies that are not a JSON object: 400 in the envelope, never a 500 or a dropped connection.
async fn malformed_bodies(srv: &Server, path: &str) {
    let deep = "[".repeat(100_000);
    let bodies: Vec<&str> = vec![
        "",
        "{",
        "{\"time_start\": }",
        "{'time_start': 1}",
        "{\"a\": 1,}",
        "null",
        "[]",
        "[{}]",
        "\"text\"",
        "42",
        "true",
        "\u{feff}{}",
        &deep,
        "{\"app_spans\": [1, 2,]}",
    ];
    for body in bodies {
        let a = srv.post_text(path, body).await;
        assert_eq!(a.status, 400, "{body:.40}: {}", a.body);
        assert_eq!(a.content_type, "application/json");
        assert_eq!(a.body["OPT_STATUS"], "INVALID_POST_DATA", "{body:.40}");
        let d = a.body["DESCRIPTION"].as_str().unwrap();
        assert!(
            d.starts_with("request body is not valid json")
                || d.starts_with("request body must be a json object"),
            "{d}"
        );
    }
    // Larger than limits.max_body_bytes (8 MiB by default): 413, still in the envelope.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(17 << 20));
    let a = srv.post_text(path, &big).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert_eq!(a.body["OPT_STATUS"], "INVALID_POST_DATA");
    // Invalid UTF-8.
    let a = srv
        .send(
            srv.client
                .post(format!("{}{path}", srv.base))
                .body(vec![b'{', 0xff, 0xfe, b'}']),
        )
        .await;
    assert_eq!(a.status, 400);
    assert_eq!(a.body["OPT_STATUS"], "INVALID_POST_DATA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_validation_matrix() {
    let (store, org) = common::sqlite_store().await;
    let srv = Server::start(store, org, Config::default()).await;
    let span = json!({"trace_id": T, "span_id": X, "parent_span_id": P, "span_kind": 2,
                      "start_time_us": T0 + 1000, "end_time_us": T0 + 19_000});
    let base = json!({ "app_spans": [span.clone()] });

    // Top level: (field, value or None, key, message)
    let mut cases: Vec<(&str, Option<Value>, &str, Value)> = vec![
        ("app_spans", None, "app_spans", json!(REQUIRED)),
        ("app_spans", Some(Value::Null), "app_spans", json!(REQUIRED)),
        (
            "app_spans",
            Some(json!([])),
            "app_spans",
            json!("Please provide at least 1 item."),
        ),
        (
            "app_spans",
            Some(json!(span.clone())),
            "app_spans",
            json!("Could not interpret the value as a list."),
        ),
        (
            "app_spans",
            Some(json!("spans")),
            "app_spans",
            json!("Could not interpret the value as a list."),
        ),
        (
            "app_spans",
            Some(json!([span.clone(), 7, [span.clone()]])),
            "app_spans",
            json!({"1": "Please use a mapping for this field.",
                   "2": "Please use a mapping for this field."}),
        ),
    ];
    for (f, alias) in [
        ("max_iteration", "MAX_ITERATION"),
        ("network_delay_us", "NETWORK_DELAY_US"),
    ] {
        for key in [f, alias] {
            cases.push((key, Some(json!(0)), key, json!(at_least(1))));
            cases.push((key, Some(json!(-1)), key, json!(at_least(1))));
            cases.push((key, Some(json!("x")), key, json!(not_int("x"))));
            cases.push((key, Some(json!(1.5)), key, json!(not_int("1.5"))));
        }
    }
    for key in ["debug", "DEBUG"] {
        cases.push((
            key,
            Some(json!("no")),
            key,
            json!("Must be either true or false."),
        ));
    }
    for key in ["signal_sources", "SIGNAL_SOURCES"] {
        cases.push((
            key,
            Some(json!([])),
            key,
            json!("Please provide at least 1 item."),
        ));
        cases.push((
            key,
            Some(json!("otel")),
            key,
            json!("Could not interpret the value as a list."),
        ));
    }
    // The L7FlowTracing-only fields are rogue here (§1.2).
    for rogue in [
        "time_start",
        "time_end",
        "_id",
        "trace_id",
        "host_clock_offset_us",
        "has_attributes",
        "database",
        "App_Spans",
        "foo",
    ] {
        cases.push((rogue, Some(json!(1)), rogue, json!("Rogue field")));
    }
    for (field, value, key, msg) in &cases {
        let body = with(&base, field, value.clone());
        let e = invalid(&srv.post(COMPLETION, &body).await);
        assert_eq!(e, json!({ *key: msg }), "{field} = {value:?}: {body}");
    }

    // AppSpan fields: (field, value or None, message)
    let mut span_cases: Vec<(&str, Option<Value>, Value)> = Vec::new();
    for f in [
        "trace_id",
        "span_id",
        "parent_span_id",
        "span_kind",
        "start_time_us",
        "end_time_us",
    ] {
        span_cases.push((f, None, json!(REQUIRED)));
        span_cases.push((f, Some(Value::Null), json!(REQUIRED)));
    }
    for f in ["trace_id", "span_id", "parent_span_id"] {
        span_cases.push((f, Some(json!(1.5)), json!(not_string("1.5"))));
        span_cases.push((f, Some(json!(true)), json!(not_string("true"))));
        span_cases.push((f, Some(json!(["a"])), json!(not_string("[\"a\"]"))));
    }
    let one_of = json!("Value must be one of [0, 1, 2, 3, 4, 5].");
    for v in [json!(6), json!(-1), json!(255), json!(256), json!("7")] {
        span_cases.push(("span_kind", Some(v), one_of.clone()));
    }
    span_cases.push(("span_kind", Some(json!("server")), json!(not_int("server"))));
    span_cases.push(("span_kind", Some(json!(2.5)), json!(not_int("2.5"))));
    for f in ["start_time_us", "end_time_us"] {
        span_cases.push((f, Some(json!(-1)), json!(at_least(0))));
        span_cases.push((f, Some(json!("soon")), json!(not_int("soon"))));
        span_cases.push((f, Some(json!(1.5)), json!(not_int("1.5"))));
    }
    for rogue in [
        "app_service",
        "_id",
        "name",
        "TRACE_ID",
        "Span_Kind",
        "tap_side",
    ] {
        span_cases.push((rogue, Some(json!("x")), json!("Rogue field")));
    }
    for (field, value, msg) in &span_cases {
        let bad = with(&span, field, value.clone());
        // The bad span second: errors are keyed by its index.
        let body = json!({"app_spans": [span.clone(), bad]});
        let e = invalid(&srv.post(COMPLETION, &body).await);
        assert_eq!(
            e,
            json!({"app_spans": {"1": { *field: msg }}}),
            "{field} = {value:?}"
        );
    }

    // Several spans and top-level fields wrong at once: all reported.
    let e = invalid(
        &srv.post(
            COMPLETION,
            &json!({
                "app_spans": [with(&span, "span_kind", Some(json!(9))), span.clone(),
                              with(&span, "app_service", Some(json!("svc")))],
                "max_iteration": 0,
                "time_start": 1,
            }),
        )
        .await,
    );
    assert_eq!(
        e,
        json!({
            "app_spans": {"0": {"span_kind": one_of}, "2": {"app_service": "Rogue field"}},
            "max_iteration": at_least(1),
            "time_start": "Rogue field",
        })
    );

    // Accepted forms: empty trace id and root parent, numeric strings, aliases, kind 0..=5.
    let mut ok_cases = vec![
        base.clone(),
        json!({"APP_SPANS": [span.clone()], "MAX_ITERATION": 1, "NETWORK_DELAY_US": 1,
               "DEBUG": true, "SIGNAL_SOURCES": ["otel"]}),
        json!({"app_spans": [with(&span, "trace_id", Some(json!("")))]}),
        json!({"app_spans": [with(&span, "parent_span_id", Some(json!("")))]}),
        json!({"app_spans": [with(&span, "start_time_us", Some(json!("1700000000001000")))]}),
        json!({"app_spans": [with(&with(&span, "start_time_us", Some(json!(0))), "end_time_us", Some(json!(0)))]}),
        json!({"app_spans": [span.clone()], "max_iteration": null, "debug": null}),
    ];
    for k in 0..=5 {
        ok_cases.push(json!({"app_spans": [with(&span, "span_kind", Some(json!(k)))]}));
    }
    for body in ok_cases {
        let a = srv.post(COMPLETION, &body).await;
        let d = data(&a, "tracing-completion-by-external-app-spans");
        assert!(!d["tracing"].as_array().unwrap().is_empty(), "{body}: {d}");
    }

    malformed_bodies(&srv, COMPLETION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_are_not_served() {
    let (store, org) = common::sqlite_store().await;
    let srv = Server::start(store, org, Config::default()).await;
    for (method, path) in [
        (reqwest::Method::GET, TRACING),
        (reqwest::Method::GET, COMPLETION),
        (reqwest::Method::POST, PARAMS),
    ] {
        let resp = srv
            .client
            .request(method.clone(), format!("{}{path}", srv.base))
            .send()
            .await
            .unwrap();
        assert!(
            resp.status().is_client_error(),
            "{method} {path}: {}",
            resp.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_values_do_not_break_the_server() {
    let (store, org) = common::sqlite_store().await;
    store.insert_rows(org, &s15a_rows()).await.unwrap();
    let rows = s15a_rows();
    let srv = Server::start(store, org, Config::default()).await;
    let max = json!(i64::MAX);
    let mut req = tracing_request(rows[0]._id);
    req["network_delay_us"] = max.clone();
    req["host_clock_offset_us"] = max.clone();
    req["ntp_delay_us"] = max.clone();
    req["max_iteration"] = max.clone();
    let a = srv.post(TRACING, &req).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut req = tracing_request(rows[0]._id);
    req["time_start"] = max.clone();
    req["time_end"] = max.clone();
    data(&srv.post(TRACING, &req).await, "Flow_Log_L7_Tracing");
    let mut req = s14_request(T);
    req["network_delay_us"] = max.clone();
    req["max_iteration"] = max.clone();
    req["app_spans"][0]["start_time_us"] = max.clone();
    req["app_spans"][0]["end_time_us"] = max.clone();
    req["app_spans"][1]["start_time_us"] = json!(0);
    data(
        &srv.post(COMPLETION, &req).await,
        "tracing-completion-by-external-app-spans",
    );
    // DeepFlow rows found (S14) next to external spans at the ends of the time range.
    let srv = {
        let (store, org) = common::sqlite_store().await;
        store.insert_rows(org, &s14_rows()).await.unwrap();
        Server::start(store, org, Config::default()).await
    };
    for (start, end) in [
        (json!(0), max.clone()),
        (max.clone(), max.clone()),
        (max.clone(), json!(1)),
        (json!(1), json!(0)),
    ] {
        let mut req = s14_request(T);
        req["network_delay_us"] = max.clone();
        req["app_spans"][1]["start_time_us"] = start;
        req["app_spans"][1]["end_time_us"] = end;
        let d = data(
            &srv.post(COMPLETION, &req).await,
            "tracing-completion-by-external-app-spans",
        );
        // The DeepFlow rows are found through span 0, whatever span 1 says.
        assert_eq!(d["tracing"].as_array().unwrap().len(), 7, "{d}");
    }
}

/// A random JSON value of the kinds a client could send in place of a field.
fn random_value(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
    use rand::Rng;
    let choices = if depth > 2 { 9 } else { 11 };
    match rng.random_range(0..choices) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random_range(-3i64..40)),
        3 => json!(rng.random::<i64>()),
        4 => json!(rng.random::<u64>()),
        5 => json!(rng.random_range(-1e19f64..1e19)),
        6 => json!(T0 + rng.random_range(-20_000i64..40_000)),
        7 => {
            json!(["", "x", "0", "-1", " 17 ", "1e3", "otel", T, P, X, Y][rng.random_range(0..11)])
        }
        8 => json!(rng.random_range(0u32..7).to_string()),
        9 => Value::Array(
            (0..rng.random_range(0..3))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            for _ in 0..rng.random_range(0..3) {
                m.insert(
                    ["a", "span_id", "trace_id"][rng.random_range(0..3)].into(),
                    random_value(rng, depth + 1),
                );
            }
            Value::Object(m)
        }
    }
}

/// Random bodies built from each request's own keys (and a few rogue ones): every answer is a
/// 200 or a 400 in the envelope, never a 5xx, a panic or a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_get_200_or_400() {
    use rand::{Rng, SeedableRng};
    let (store, org) = common::sqlite_store().await;
    store.insert_rows(org, &s14_rows()).await.unwrap();
    store.insert_rows(org, &s15a_rows()).await.unwrap();
    let srv = Server::start(store, org, Config::default()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let tracing_keys = [
        "time_start",
        "TIME_START",
        "time_end",
        "TIME_END",
        "database",
        "table",
        "_id",
        "trace_id",
        "has_attributes",
        "max_iteration",
        "network_delay_us",
        "HOST_CLOCK_OFFSET_US",
        "ntp_delay_us",
        "signal_sources",
        "region",
        "debug",
        "rogue",
    ];
    let span_keys = [
        "trace_id",
        "span_id",
        "parent_span_id",
        "span_kind",
        "start_time_us",
        "end_time_us",
        "app_service",
    ];
    let mut outcomes: HashMap<u16, usize> = HashMap::new();
    for i in 0..400 {
        let (path, mut body) = if i % 2 == 0 {
            (TRACING, tracing_request(s15a_rows()[0]._id))
        } else {
            (COMPLETION, s14_request(T))
        };
        for _ in 0..rng.random_range(1..4) {
            if path == TRACING || rng.random_bool(0.3) {
                let key = if path == TRACING {
                    tracing_keys[rng.random_range(0..tracing_keys.len())]
                } else {
                    [
                        "app_spans",
                        "max_iteration",
                        "NETWORK_DELAY_US",
                        "debug",
                        "x",
                    ][rng.random_range(0..5)]
                };
                body[key] = random_value(&mut rng, 0);
            } else {
                let k = span_keys[rng.random_range(0..span_keys.len())];
                let n = rng.random_range(0..2);
                if let Some(Value::Object(span)) =
                    body.get_mut("app_spans").and_then(|s| s.get_mut(n))
                {
                    span.insert(k.into(), random_value(&mut rng, 0));
                }
            }
        }
        let a = srv.post(path, &body).await;
        assert!(a.status == 200 || a.status == 400, "{body} → {}", a.body);
        assert_eq!(a.content_type, "application/json");
        let want = if a.status == 200 {
            "SUCCESS"
        } else {
            "INVALID_POST_DATA"
        };
        assert_eq!(a.body["OPT_STATUS"], want, "{body} → {}", a.body);
        *outcomes.entry(a.status).or_default() += 1;
    }
    // Both kinds of answer occur.
    assert!(
        outcomes.get(&200).copied().unwrap_or(0) > 20,
        "{outcomes:?}"
    );
    assert!(
        outcomes.get(&400).copied().unwrap_or(0) > 20,
        "{outcomes:?}"
    );
}
