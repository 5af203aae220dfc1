//! Trace-level search over generated data with ground truth, on both stores, through the real
//! server: the demo's Istio Bookinfo requests (each one known tree of application, eBPF and
//! network spans). One hit per request, under the ID trace by ID opens; hits describe the trace
//! trace by ID shows; `&&` across services of one request finds it; trace intrinsics select
//! whole traces; every service name a trace shows finds that trace; matches older than the
//! newest candidate page are found.

#[macro_use]
mod common;

use deepflow_tempo::config::Config;
use deepflow_tempo::demo::{self, Dataset, DemoOptions};
use deepflow_tempo::server;
use deepflow_tempo::store::model::OrgId;
use deepflow_tempo::store::SharedStore;
use deepflow_tempo::tempo::ids::TraceId;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

struct Fixture {
    base: String,
    /// The same store served with small candidate pages (`search.page_rows`).
    small_pages: String,
    client: reqwest::Client,
    org: OrgId,
    data: Dataset,
    start: i64,
    end: i64,
}

/// The ID a request's trace is searched and opened under.
fn expected_id(r: &demo::Request) -> String {
    TraceId::from_app_trace_id(&r.trace_id)
        .unwrap_or_else(|| TraceId::zero_code(r.entry_id))
        .to_trimmed_hex()
}

async fn fixture(store: SharedStore, org: OrgId) -> Fixture {
    let end_us = (demo::now_us() / 60_000_000 - 2) * 60_000_000;
    let data = demo::generate(&DemoOptions {
        seed: 11,
        minutes: 2,
        rate: 0.5,
        end_us,
    });
    store.insert_rows(org, &data.rows).await.unwrap();
    store.insert_names(org, &data.names).await.unwrap();
    let serve = |cfg: Config| {
        let (srv, addrs) =
            server::bind(server::app_state(&cfg, store.clone()), "127.0.0.1:0").unwrap();
        tokio::spawn(srv);
        format!("http://{}", addrs[0])
    };
    let base = serve(Config::default());
    let mut small = Config::default();
    small.search.page_rows = 50;
    let small_pages = serve(small);
    Fixture {
        base,
        small_pages,
        client: common::http_client(),
        org,
        start: end_us / 1_000_000 - 3 * 60,
        end: end_us / 1_000_000 + 60,
        data,
    }
}

impl Fixture {
    async fn get(&self, base: &str, path: &str) -> Value {
        let resp = self
            .client
            .get(format!("{base}{path}"))
            .header("X-Org-Id", self.org.0.to_string())
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn search_on(&self, base: &str, q: &str, limit: usize) -> Vec<Value> {
        let q: String =
            percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let v = self
            .get(
                base,
                &format!(
                    "/api/search?q={q}&start={}&end={}&limit={limit}",
                    self.start, self.end
                ),
            )
            .await;
        v["traces"].as_array().cloned().unwrap_or_default()
    }

    async fn search(&self, q: &str) -> Vec<Value> {
        self.search_on(&self.base, q, 10_000).await
    }

    fn ids(hits: &[Value]) -> BTreeSet<String> {
        hits.iter()
            .map(|t| t["traceID"].as_str().unwrap().to_string())
            .collect()
    }

    fn all_ids(&self) -> BTreeSet<String> {
        self.data.requests.iter().map(expected_id).collect()
    }
}

/// Root service, root name, start (ns) and duration (ms) of a trace as trace by ID shows it:
/// the earliest span without a parent, and the span times' extent.
fn shown(trace: &Value) -> (String, String, u64, u64) {
    let mut spans = Vec::new();
    for b in trace["trace"]["resourceSpans"].as_array().unwrap() {
        let service = b["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "service.name")
            .unwrap()["value"]["stringValue"]
            .as_str()
            .unwrap()
            .to_string();
        for s in b["scopeSpans"].as_array().unwrap() {
            for sp in s["spans"].as_array().unwrap() {
                let n = |k: &str| sp[k].as_str().unwrap().parse::<u64>().unwrap();
                spans.push((
                    service.clone(),
                    sp["name"].as_str().unwrap().to_string(),
                    n("startTimeUnixNano"),
                    n("endTimeUnixNano"),
                    sp.get("parentSpanId")
                        .and_then(Value::as_str)
                        .is_some_and(|p| !p.is_empty()),
                ));
            }
        }
    }
    let start = spans.iter().map(|s| s.2).min().unwrap();
    let end = spans.iter().map(|s| s.3).max().unwrap();
    let root = spans.iter().filter(|s| !s.4).min_by_key(|s| s.2).unwrap();
    (
        root.0.clone(),
        root.1.clone(),
        start,
        (end - start) / 1_000_000,
    )
}

async fn one_hit_per_request_and_hits_describe_the_trace(f: Fixture) {
    let hits = f.search("{}").await;
    let ids: Vec<String> = hits
        .iter()
        .map(|t| t["traceID"].as_str().unwrap().to_string())
        .collect();
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), distinct.len(), "no request twice");
    assert_eq!(distinct, f.all_ids(), "every request once, under its ID");
    // Most recent first.
    let starts: Vec<u64> = hits
        .iter()
        .map(|t| t["startTimeUnixNano"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]));
    // Each hit says what trace by ID shows (a sample, spread over the range).
    let step = (hits.len() / 8).max(1);
    for hit in hits.iter().step_by(step) {
        let id = hit["traceID"].as_str().unwrap();
        let trace = f.get(&f.base, &format!("/api/v2/traces/{id}")).await;
        let (service, name, start, duration_ms) = shown(&trace);
        assert_eq!(hit["rootServiceName"], service.as_str(), "{id}");
        assert_eq!(hit["rootTraceName"], name.as_str(), "{id}");
        assert_eq!(hit["startTimeUnixNano"], start.to_string().as_str(), "{id}");
        assert_eq!(hit["durationMs"].as_u64().unwrap_or(0), duration_ms, "{id}");
        assert_eq!(hit["rootServiceName"], "fortio-loadgen", "{id}");
    }
    // `limit` counts traces.
    assert_eq!(f.search_on(&f.base, "{}", 3).await.len(), 3);
}

async fn spansets_of_one_request_join(f: Fixture) {
    let both = f
        .search(
            r#"{ resource.service.name = "fortio-loadgen" } && { resource.service.name = "details-v1" }"#,
        )
        .await;
    assert_eq!(
        Fixture::ids(&both),
        f.all_ids(),
        "every request calls details"
    );
    let hit = &both[0];
    let services: BTreeSet<&str> = hit["spanSets"][0]["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(!services.is_empty());
    let none = f
        .search(r#"{ resource.service.name = "fortio-loadgen" } && { resource.service.name = "no-such-service" }"#)
        .await;
    assert!(none.is_empty());
    // Only some requests fail: the traces of the others are left out before their records
    // are read, and the answer is that of the one filter alone.
    let some = f
        .search(r#"{ resource.service.name = "fortio-loadgen" } && { status = error }"#)
        .await;
    let alone = f.search("{ status = error }").await;
    assert!(
        !alone.is_empty() && alone.len() < f.all_ids().len(),
        "{} of {}",
        alone.len(),
        f.all_ids().len()
    );
    assert_eq!(Fixture::ids(&some), Fixture::ids(&alone));
    let either = f
        .search(r#"{ resource.service.name = "details-v1" } || { resource.service.name = "no-such-service" }"#)
        .await;
    assert_eq!(Fixture::ids(&either), f.all_ids());
    // Structural: the gateway's server process calls productpage below it.
    let below = f
        .search(r#"{ resource.service.name = "istio-ingressgateway" } >> { resource.service.name = "ratings-v2-mysql" }"#)
        .await;
    assert!(!below.is_empty());
}

async fn trace_intrinsics_select_whole_traces(f: Fixture) {
    let rooted = f
        .search(r#"{ rootServiceName = "fortio-loadgen" && resource.service.name = "reviews" }"#)
        .await;
    assert_eq!(Fixture::ids(&rooted), f.all_ids());
    assert!(f
        .search(r#"{ rootServiceName = "reviews" }"#)
        .await
        .is_empty());
    let all = f.search("{}").await;
    let slow = Fixture::ids(&f.search("{ traceDuration > 300ms }").await);
    for hit in &all {
        let id = hit["traceID"].as_str().unwrap().to_string();
        let ms = hit["durationMs"].as_u64().unwrap_or(0);
        if ms > 300 {
            assert!(slow.contains(&id), "{id} lasts {ms} ms");
        }
        if ms < 300 {
            assert!(!slow.contains(&id), "{id} lasts {ms} ms");
        }
    }
    let expected_slow = f.data.requests.iter().filter(|r| r.slow).count();
    assert!(
        slow.len() >= expected_slow,
        "{} < {expected_slow}",
        slow.len()
    );
    // Errors anywhere in a request: its trace.
    let errors = Fixture::ids(&f.search("{ status = error }").await);
    let want: BTreeSet<String> = f
        .data
        .requests
        .iter()
        .filter(|r| r.failed || r.has_error)
        .map(expected_id)
        .collect();
    assert_eq!(errors, want);
    // trace:id selects exactly its trace.
    let one = f.data.requests.iter().map(expected_id).next().unwrap();
    let full = TraceId::parse(&one).unwrap().to_hex();
    let hits = f.search(&format!(r#"{{ trace:id = "{full}" }}"#)).await;
    assert_eq!(Fixture::ids(&hits), BTreeSet::from([one]));
}

async fn every_service_name_shown_finds_the_trace(f: Fixture) {
    let r = &f.data.requests[f.data.requests.len() / 2];
    let id = expected_id(r);
    let trace = f.get(&f.base, &format!("/api/v2/traces/{id}")).await;
    let mut names = BTreeSet::new();
    for b in trace["trace"]["resourceSpans"].as_array().unwrap() {
        for a in b["resource"]["attributes"].as_array().unwrap() {
            if a["key"] == "service.name" {
                names.insert(a["value"]["stringValue"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(names.iter().any(|n| n.contains(" @ ")), "{names:?}");
    assert!(names.len() >= 8, "{names:?}");
    let values = f
        .get(
            &f.base,
            &format!(
                "/api/v2/search/tag/resource.service.name/values?start={}&end={}",
                f.start, f.end
            ),
        )
        .await;
    let listed: BTreeSet<&str> = values["tagValues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["value"].as_str().unwrap())
        .collect();
    for name in &names {
        assert!(listed.contains(name.as_str()), "{name} is not a tag value");
        let q = format!(
            "{{ resource.service.name = {} }}",
            serde_json::to_string(name).unwrap()
        );
        let hits = f.search(&q).await;
        assert!(Fixture::ids(&hits).contains(&id), "{q} does not find {id}");
    }
}

async fn matches_older_than_the_newest_page_are_found(f: Fixture) {
    // The oldest request, found through pages of 50 candidate rows, newest first.
    let oldest = f.data.requests.iter().min_by_key(|r| r.start_us).unwrap();
    let id = expected_id(oldest);
    let full = TraceId::parse(&id).unwrap().to_hex();
    let hits = f
        .search_on(&f.small_pages, &format!(r#"{{ trace:id = "{full}" }}"#), 20)
        .await;
    assert_eq!(Fixture::ids(&hits), BTreeSet::from([id]));
    // Small pages give the same answer as large ones.
    let small = Fixture::ids(
        &f.search_on(&f.small_pages, "{ status = error }", 1000)
            .await,
    );
    let large = Fixture::ids(&f.search("{ status = error }").await);
    assert_eq!(small, large);
    let per_request: HashMap<String, usize> = f
        .search_on(&f.small_pages, "{}", 1000)
        .await
        .iter()
        .map(|t| (t["traceID"].as_str().unwrap().to_string(), 1))
        .collect();
    assert_eq!(per_request.len(), f.data.requests.len());
}

/// What Traces Drilldown asks first: root spans (`nestedSetParent < 0`). Search finds every
/// request by its root; the metrics over root spans, computed over the assembled traces, count
/// each request once under its root service; their exemplars open traces search returns; and
/// the structure tab's `select()` of the nested-set numbers reads the tree.
async fn root_spans_and_metrics_over_assembled_traces(f: Fixture) {
    let hits = f.search("{ nestedSetParent < 0 }").await;
    assert_eq!(Fixture::ids(&hits), f.all_ids(), "every request has a root");
    let mut by_root: std::collections::BTreeMap<String, f64> = Default::default();
    for h in &hits {
        *by_root
            .entry(h["rootServiceName"].as_str().unwrap().to_string())
            .or_default() += 1.0;
    }
    let q = "{ nestedSetParent < 0 } | count_over_time() by (resource.service.name)";
    let enc = |q: &str| {
        percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let v = f
        .get(
            &f.base,
            &format!(
                "/api/metrics/query?q={}&start={}&end={}",
                enc(q),
                f.start,
                f.end
            ),
        )
        .await;
    assert!(v.get("status").is_none(), "complete: {v}");
    let got: std::collections::BTreeMap<String, f64> = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["labels"][0]["value"]["stringValue"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                s["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, by_root, "root spans per root service");
    // A range query over root spans: exemplars are the traces search returns.
    let v = f
        .get(
            &f.base,
            &format!(
                "/api/metrics/query_range?q={}&start={}&end={}&step=30s&exemplars=20",
                enc("{ nestedSetParent < 0 && status != error } | rate()"),
                f.start,
                f.end
            ),
        )
        .await;
    let exemplars: Vec<String> = v["series"][0]["exemplars"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["labels"][0]["key"], "trace:id");
            e["labels"][0]["value"]["stringValue"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(!exemplars.is_empty(), "{v}");
    let all = f.all_ids();
    for id in &exemplars {
        assert!(all.contains(id), "exemplar {id} is a trace search returns");
    }
    // Exemplars of a query computed in the store open a trace too.
    let v = f
        .get(
            &f.base,
            &format!(
                "/api/metrics/query_range?q={}&start={}&end={}&step=30s&exemplars=5",
                enc("{ kind = server } | quantile_over_time(duration, 0.9)"),
                f.start,
                f.end
            ),
        )
        .await;
    let e = &v["series"][0]["exemplars"];
    assert!(!e.as_array().unwrap().is_empty(), "{v}");
    for e in e.as_array().unwrap() {
        assert!(
            e["value"].as_f64().unwrap() > 0.0,
            "a duration in seconds: {e}"
        );
        let id = e["labels"][0]["value"]["stringValue"].as_str().unwrap();
        let t = f.get(&f.base, &format!("/api/v2/traces/{id}")).await;
        assert!(t["trace"].is_object(), "exemplar {id} opens");
    }
    // The structure tab: `select()` of the nested-set numbers over the tree.
    let hits = f
        .search(
            "{ nestedSetParent < 0 } &>> { kind = server } | select(status, resource.service.name, name, nestedSetParent, nestedSetLeft, nestedSetRight)",
        )
        .await;
    assert!(!hits.is_empty());
    for h in &hits {
        for span in h["spanSets"][0]["spans"].as_array().unwrap() {
            let attr = |k: &str| {
                span["attributes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["key"] == k)
                    .and_then(|a| a["value"]["intValue"].as_str())
                    .map(|v| v.parse::<i64>().unwrap())
            };
            let (l, r, p) = (
                attr("nestedSetLeft").unwrap(),
                attr("nestedSetRight").unwrap(),
                attr("nestedSetParent").unwrap(),
            );
            assert!(l < r && (p == -1 || (p >= 1 && p < l)), "{span}");
        }
    }
}

/// The queries Grafana's Traces Drilldown sends (RED panels by span type, breakdowns,
/// comparison, the home page, span list and structure tabs) answer 200 with data on the demo.
async fn traces_drilldown_queries_answer_with_data(f: Fixture) {
    let enc = |q: &str| {
        percent_encoding::utf8_percent_encode(q, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let range = f.end - f.start;
    for signal in ["nestedSetParent<0", "true", "kind=server"] {
        for (q, step) in [
            (format!("{{{signal} && true}} | rate() with(sample=true)"), "30s"),
            (format!("{{{signal} && true && status=error}} | rate()"), "30s"),
            (
                format!("{{{signal} && true}} | quantile_over_time(duration, 0.5, 0.9, 0.99)"),
                "60s",
            ),
            (format!("{{{signal} && true}} | histogram_over_time(duration)"), "60s"),
            (
                format!("{{{signal} && true && status!=error && resource.service.name != nil}} | rate() by(resource.service.name, status)"),
                "30s",
            ),
            (
                format!("{{{signal} && true && span.http.method != nil}} | rate() by(span.http.method)"),
                "30s",
            ),
            (
                format!("{{{signal} && true}} | compare({{status = error}}, 10)"),
                "240s",
            ),
        ] {
            let v = f
                .get(
                    &f.base,
                    &format!(
                        "/api/metrics/query_range?q={}&start={}&end={}&step={step}",
                        enc(&q),
                        f.start,
                        f.end
                    ),
                )
                .await;
            let series = v["series"].as_array().unwrap();
            assert!(
                series.iter().any(|s| s["samples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["value"].as_f64().unwrap_or(0.0) > 0.0)),
                "{q}: {v}"
            );
        }
    }
    // The home page: whole-range steps.
    for q in [
        "{nestedSetParent < 0 && status = error} | count_over_time() by (resource.service.name)",
        "{nestedSetParent < 0} | quantile_over_time(duration, 0.9) by (resource.service.name)",
    ] {
        let v = f
            .get(
                &f.base,
                &format!(
                    "/api/metrics/query_range?q={}&start={}&end={}&step={range}s&exemplars=0",
                    enc(q),
                    f.start,
                    f.end
                ),
            )
            .await;
        assert!(!v["series"].as_array().unwrap().is_empty(), "{q}: {v}");
    }
    // Span list and structure tabs (search).
    for q in [
        "{nestedSetParent<0 && true && status = error}",
        "{nestedSetParent<0 && true && duration > 10ms}",
        "{nestedSetParent<0 && true} &>> { kind = server } | select(status, resource.service.name, name, nestedSetParent, nestedSetLeft, nestedSetRight)",
        "({nestedSetParent<0 && true && status = error} &>> { status = error }) || ({nestedSetParent<0 && true && status = error}) | select(status, resource.service.name, name, nestedSetParent, nestedSetLeft, nestedSetRight)",
    ] {
        assert!(!f.search(q).await.is_empty(), "{q}");
    }
}

on_both_stores!(with super::fixture;
    one_hit_per_request_and_hits_describe_the_trace,
    spansets_of_one_request_join,
    trace_intrinsics_select_whole_traces,
    every_service_name_shown_finds_the_trace,
    matches_older_than_the_newest_page_are_found,
    root_spans_and_metrics_over_assembled_traces,
    traces_drilldown_queries_answer_with_data,
);
