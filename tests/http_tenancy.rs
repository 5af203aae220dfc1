//! Tenancy over HTTP: two organisations hold rows of the same trace id in one store, and a
//! request selecting one (`X-Org-Id`, or a numeric `X-Scope-OrgID`) never sees the other's
//! rows, through trace by ID (application and zero-code IDs), search, tag values and DeepFlow's
//! L7FlowTracing, on both stores. Then `tenancy.allowed_orgs`: listed organisations are served,
//! others get 403 on every route that reads rows, Grafana's non-numeric tenant counts as
//! organisation 1, and malformed organisation headers stay 400.

#[macro_use]
mod common;

use common::{ids, spec_row};
use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::{SchemaOptions, SharedStore, StoreKind};
use deepflow_tempo::tempo::ids::TraceId;
use serde_json::{json, Value};
use std::time::Duration;

on_both_stores!(organisations_do_not_see_each_others_rows);

/// The trace id both organisations use.
const SHARED: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// Trace ids only one organisation has.
const MINE_ONLY: &str = "6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c";
const THEIRS_ONLY: &str = "7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b";
const RANGE: &str = "start=1699999900&end=1700000100";
const TRACING: &str = "/v1/stats/querier/L7FlowTracing";

/// One OTel server span of `service` in trace `trace`, row number `n`.
fn app_row(n: u32, trace: &str, service: &str) -> L7FlowLogRow {
    let mut r = ids(
        spec_row(n, 4, "s-app", 1, n as i64 * 1000, n as i64 * 1000 + 500),
        trace,
        &format!("{n:016x}"),
        "",
    );
    r.app_service = service.into();
    r
}

/// How a request names its organisation.
#[derive(Clone, Copy)]
enum Header {
    OrgId,
    ScopeOrgId,
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn start(store: SharedStore, cfg: Config) -> Client {
        let (srv, addrs) = server::bind(server::app_state(&cfg, store), "127.0.0.1:0").unwrap();
        tokio::spawn(srv);
        Client {
            base: format!("http://{}", addrs[0]),
            http: common::http_client(),
        }
    }

    fn with(
        &self,
        req: reqwest::RequestBuilder,
        org: Option<(Header, &str)>,
    ) -> reqwest::RequestBuilder {
        let req = req.timeout(Duration::from_secs(60));
        match org {
            Some((Header::OrgId, v)) => req.header("X-Org-Id", v),
            Some((Header::ScopeOrgId, v)) => req.header("X-Scope-OrgID", v),
            None => req,
        }
    }

    async fn get(&self, path: &str, org: Option<(Header, &str)>) -> (u16, String) {
        let resp = self
            .with(self.http.get(format!("{}{path}", self.base)), org)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn post(&self, path: &str, body: &Value, org: Option<(Header, &str)>) -> (u16, Value) {
        let resp = self
            .with(self.http.post(format!("{}{path}", self.base)), org)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text}: {e}")),
        )
    }
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The service names of a Tempo v2 trace-by-ID answer (JSON).
fn trace_services(body: &str) -> Vec<String> {
    let j = json_of(body);
    let mut out: Vec<String> = j["trace"]["resourceSpans"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .flat_map(|rs| {
            rs["resource"]["attributes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|a| a["key"] == "service.name")
        .map(|a| a["value"]["stringValue"].as_str().unwrap_or("").to_string())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One organisation's view: its header, its service, its rows and the trace only it has.
struct View<'a> {
    service: &'a str,
    rows: &'a [L7FlowLogRow],
    own_trace: &'a str,
}

/// What one organisation (`me`) sees of its rows and the other's (`them`) through every route
/// that reads rows.
async fn sees(c: &Client, org: (Header, &str), me: &View<'_>, them: &View<'_>) {
    let who = org.1;
    let (mine, theirs) = (me.service, them.service);
    // Trace by ID, application trace id: only this organisation's span.
    let (s, body) = c
        .get(&format!("/api/v2/traces/{SHARED}?{RANGE}"), Some(org))
        .await;
    assert_eq!(s, 200, "{who}: {body}");
    assert_eq!(
        trace_services(&body),
        vec![mine.to_string()],
        "{who}: {body}"
    );
    let (s, body) = c
        .get(&format!("/api/traces/{SHARED}?{RANGE}"), Some(org))
        .await;
    assert_eq!(s, 200, "{who}: {body}");
    assert!(
        body.contains(mine) && !body.contains(theirs),
        "{who}: {body}"
    );
    // The other organisation's own trace and rows do not exist here.
    let (s, body) = c
        .get(
            &format!("/api/v2/traces/{}?{RANGE}", them.own_trace),
            Some(org),
        )
        .await;
    assert_eq!(s, 404, "{who}: {body}");
    let (s, body) = c
        .get(
            &format!("/api/v2/traces/{}?{RANGE}", me.own_trace),
            Some(org),
        )
        .await;
    assert_eq!(s, 200, "{who}: {body}");
    let zero_code = TraceId::zero_code(them.rows[0]._id).to_trimmed_hex();
    let (s, body) = c
        .get(&format!("/api/v2/traces/{zero_code}"), Some(org))
        .await;
    assert_eq!(
        s, 404,
        "{who}: a zero-code ID of another organisation's row: {body}"
    );
    let zero_code = TraceId::zero_code(me.rows[0]._id).to_trimmed_hex();
    let (s, body) = c
        .get(&format!("/api/v2/traces/{zero_code}"), Some(org))
        .await;
    assert_eq!(s, 200, "{who}: {body}");
    assert_eq!(
        trace_services(&body),
        vec![mine.to_string()],
        "{who}: {body}"
    );

    // Search: only this organisation's traces and services.
    let (s, body) = c
        .get(
            &format!("/api/search?q=%7B%7D&{RANGE}&limit=100"),
            Some(org),
        )
        .await;
    assert_eq!(s, 200, "{who}: {body}");
    let j = json_of(&body);
    let roots: Vec<&str> = j["traces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rootServiceName"].as_str().unwrap())
        .collect();
    assert!(!roots.is_empty(), "{who}: {body}");
    assert!(roots.iter().all(|r| *r == mine), "{who}: {roots:?}");
    let (s, body) = c
        .get(
            &format!("/api/search?q=%7Bresource.service.name%3D%22{theirs}%22%7D&{RANGE}"),
            Some(org),
        )
        .await;
    assert_eq!(s, 200, "{who}: {body}");
    // jsonpb leaves an empty list out.
    let traces = &json_of(&body)["traces"];
    assert!(traces.is_null() || traces == &json!([]), "{who}: {body}");

    // Tag values: only this organisation's services.
    for path in [
        "/api/search/tag/service.name/values",
        "/api/v2/search/tag/resource.service.name/values",
    ] {
        let (s, body) = c.get(&format!("{path}?{RANGE}"), Some(org)).await;
        assert_eq!(s, 200, "{who} {path}: {body}");
        assert!(
            body.contains(mine) && !body.contains(theirs),
            "{who} {path}: {body}"
        );
    }

    // DeepFlow's API: by trace id and by the other organisation's `_id`.
    let req = json!({
        "time_start": 1_699_999_900,
        "time_end": 1_700_000_100,
        "database": "flow_log",
        "table": "l7_flow_log",
        "trace_id": SHARED,
    });
    let (s, body) = c.post(TRACING, &req, Some(org)).await;
    assert_eq!(s, 200, "{who}: {body}");
    let spans = body["DATA"]["tracing"].as_array().expect("spans").clone();
    assert!(!spans.is_empty(), "{who}: {body}");
    assert!(
        spans.iter().all(|s| s["app_service"] == mine),
        "{who}: {body}"
    );
    let mut by_id = req.clone();
    by_id.as_object_mut().unwrap().remove("trace_id");
    by_id["_id"] = json!(them.rows[0]._id.to_string());
    let (s, body) = c.post(TRACING, &by_id, Some(org)).await;
    assert_eq!(s, 200, "{who}: {body}");
    assert_eq!(body["DATA"], json!({}), "{who}: {body}");
}

async fn organisations_do_not_see_each_others_rows(store: SharedStore, org: OrgId) {
    // The embedded store keeps every organisation in one file; ClickHouse in NNNN_ databases.
    let other = if store.kind() == StoreKind::Embedded {
        OrgId(org.0 + 1)
    } else {
        let other = common::fresh_org();
        store
            .apply_schema(other, SchemaOptions { without_ttl: true })
            .await
            .unwrap();
        other
    };
    let mine = [
        app_row(1, SHARED, "svc-mine"),
        app_row(2, MINE_ONLY, "svc-mine"),
    ];
    let theirs = [
        app_row(11, SHARED, "svc-theirs"),
        app_row(12, THEIRS_ONLY, "svc-theirs"),
    ];
    store.insert_rows(org, &mine).await.unwrap();
    store.insert_rows(other, &theirs).await.unwrap();
    let c = Client::start(store, Config::default()).await;
    let a = View {
        service: "svc-mine",
        rows: &mine,
        own_trace: MINE_ONLY,
    };
    let b = View {
        service: "svc-theirs",
        rows: &theirs,
        own_trace: THEIRS_ONLY,
    };
    let (org_a, org_b) = (org.0.to_string(), other.0.to_string());
    sees(&c, (Header::OrgId, &org_a), &a, &b).await;
    sees(&c, (Header::OrgId, &org_b), &b, &a).await;
    // A numeric Tempo tenant selects the organisation the same way.
    sees(&c, (Header::ScopeOrgId, &org_a), &a, &b).await;
    sees(&c, (Header::ScopeOrgId, &org_b), &b, &a).await;
}

/// Every route that reads rows, as (method, path).
const READING_ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/traces/5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"),
    ("GET", "/api/v2/traces/5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"),
    ("GET", "/api/search?q=%7B%7D"),
    ("GET", "/api/search/tags"),
    ("GET", "/api/v2/search/tags"),
    ("GET", "/api/search/tag/service.name/values"),
    ("GET", "/api/v2/search/tag/resource.service.name/values"),
    ("POST", TRACING),
    (
        "POST",
        "/v1/stats/querier/tracing-completion-by-external-app-spans",
    ),
];

/// The status of every reading route for this organisation header.
async fn statuses(c: &Client, org: Option<(Header, &str)>) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for (method, path) in READING_ROUTES {
        if *method == "GET" {
            out.push(c.get(path, org).await);
        } else {
            // A valid body: the refusal must not depend on it.
            let body = if path.contains("completion") {
                json!({"app_spans": []})
            } else {
                json!({
                    "time_start": 1_699_999_900,
                    "time_end": 1_700_000_100,
                    "database": "flow_log",
                    "table": "l7_flow_log",
                    "_id": "1",
                })
            };
            let (s, v) = c.post(path, &body, org).await;
            out.push((s, v.to_string()));
        }
    }
    out
}

async fn allow_listed(allowed: &[u16]) -> Client {
    let (store, org) = common::sqlite_store().await;
    store
        .insert_rows(org, &[app_row(1, SHARED, "svc-mine")])
        .await
        .unwrap();
    let mut cfg = Config::default();
    cfg.tenancy.allowed_orgs = allowed.to_vec();
    Client::start(store, cfg).await
}

fn assert_all(got: &[(u16, String)], status: u16, what: &str) {
    for ((s, body), (method, path)) in got.iter().zip(READING_ROUTES) {
        assert_eq!(*s, status, "{what}: {method} {path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_organisations_are_served_and_others_refused() {
    let c = allow_listed(&[1, 7]).await;
    let ok = |v: &[(u16, String)]| v.iter().all(|(s, _)| *s != 403 && *s < 500);
    assert!(ok(&statuses(&c, Some((Header::OrgId, "1"))).await));
    assert!(ok(&statuses(&c, Some((Header::OrgId, "7"))).await));
    assert!(ok(&statuses(&c, Some((Header::ScopeOrgId, "7"))).await));
    // No header at all is organisation 1.
    assert!(ok(&statuses(&c, None).await));

    let refused = statuses(&c, Some((Header::OrgId, "2"))).await;
    assert_all(&refused, 403, "X-Org-Id 2");
    assert!(
        refused[0].1.contains("organisation 2") && refused[0].1.contains("tenancy.allowed_orgs"),
        "{}",
        refused[0].1
    );
    // DeepFlow's routes keep their envelope.
    let deepflow = json_of(&refused[7].1);
    assert_eq!(deepflow["OPT_STATUS"], "FORBIDDEN", "{deepflow}");
    assert_all(
        &statuses(&c, Some((Header::ScopeOrgId, "3"))).await,
        403,
        "X-Scope-OrgID 3",
    );
    // X-Org-Id wins over X-Scope-OrgID, as org_of's rules say.
    let (s, body) = c
        .with(
            c.http.get(format!("{}/api/search?q=%7B%7D", c.base)),
            Some((Header::ScopeOrgId, "7")),
        )
        .header("X-Org-Id", "2")
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(s, 403, "{:?}", body.text().await);
    // Routes that read no rows are not subject to the allow-list.
    for path in ["/api/echo", "/api/status/buildinfo", "/ready", "/metrics"] {
        let (s, body) = c.get(path, Some((Header::OrgId, "2"))).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_tenant_names_resolve_to_organisation_one() {
    // "single-tenant" (Grafana's default) and any other name read organisation 1.
    let c = allow_listed(&[1]).await;
    for tenant in ["single-tenant", "team-a"] {
        let got = statuses(&c, Some((Header::ScopeOrgId, tenant))).await;
        assert!(got.iter().all(|(s, _)| *s != 403), "{tenant}: {got:?}");
        let (s, body) = c
            .get(
                &format!("/api/v2/traces/{SHARED}?{RANGE}"),
                Some((Header::ScopeOrgId, tenant)),
            )
            .await;
        assert_eq!(s, 200, "{tenant}: {body}");
        assert_eq!(trace_services(&body), vec!["svc-mine".to_string()]);
    }
    // With organisation 1 off the list, the same tenant is refused.
    let c = allow_listed(&[2]).await;
    assert_all(
        &statuses(&c, Some((Header::ScopeOrgId, "single-tenant"))).await,
        403,
        "single-tenant without org 1",
    );
    assert_all(&statuses(&c, None).await, 403, "no header without org 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_organisations_are_400_not_403() {
    let c = allow_listed(&[1]).await;
    for bad in ["abc", "10000", "-1"] {
        let (s, body) = c
            .get("/api/search?q=%7B%7D", Some((Header::OrgId, bad)))
            .await;
        assert_eq!(s, 400, "X-Org-Id {bad:?}: {body}");
        assert!(body.contains("X-Org-Id"), "{body}");
    }
    // A numeric tenant beyond DeepFlow's organisations is a 400 too.
    let (s, body) = c
        .get("/api/search?q=%7B%7D", Some((Header::ScopeOrgId, "123456")))
        .await;
    assert_eq!(s, 400, "{body}");
}
