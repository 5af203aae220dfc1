//! Tempo search over HTTP on both stores: TraceQL filters and pipelines, hits for application
//! and zero-code traces, legacy tag search, tag names and tag values, and every 400.

#[macro_use]
mod common;

use common::{names, s4_rows, T4};
use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::SharedStore;
use deepflow_tempo::synth;
use serde_json::Value;
use std::time::Duration;

on_both_stores!(
    with super::Fixture::load;
    empty_query_finds_app_and_zero_code_traces,
    filters_select_the_right_spans,
    zero_code_hits_are_one_per_request_and_openable,
    pipelines,
    limits_spss_and_ordering,
    bad_requests,
    legacy_tag_search,
    tag_names,
    tag_values,
    structural_operators,
);

struct Fixture {
    base: String,
    org: OrgId,
    client: reqwest::Client,
    /// Zero-code trace: entry row id and its rows.
    zero: synth::SynthTrace,
    start: i64,
    end: i64,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

impl Fixture {
    async fn load(store: SharedStore, org: OrgId) -> Fixture {
        let t0 = now_us() - 600_000_000;
        let mut rows = s4_rows(t0);
        // An OTel attribute and an error on svc-b's app span; a slow c-app.
        for r in rows.iter_mut() {
            if r.observation_point == "s-app" {
                r.attribute_names = vec!["tenant".into()];
                r.attribute_values = vec!["acme".into()];
                r.response_status = 3;
                r.response_code = Some(503);
                r.response_exception = "upstream failed".into();
            }
        }
        let zero = synth::zero_code_trace(
            9,
            t0 + 20_000_000,
            synth::Shape {
                calls: 6,
                fanout: 2,
                services: 4,
            },
            &mut synth::Keys::new(50),
        );
        rows.extend(zero.rows.clone());
        store.insert_rows(org, &rows).await.unwrap();
        store.insert_names(org, &names()).await.unwrap();
        let (srv, addrs) =
            server::bind(server::app_state(&Config::default(), store), "127.0.0.1:0").unwrap();
        tokio::spawn(srv);
        let t = t0 / 1_000_000;
        Fixture {
            base: format!("http://{}", addrs[0]),
            org,
            client: reqwest::Client::new(),
            zero,
            start: t - 60,
            end: t + 120,
        }
    }

    async fn get(&self, path_and_query: &str) -> (u16, String) {
        let mut req = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .timeout(Duration::from_secs(60));
        if !self.org.is_default() {
            req = req.header("X-Org-Id", self.org.0.to_string());
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// `/api/search` with `q` over the fixture's range; asserts 200 and Tempo's shape.
    async fn search(&self, q: &str, extra: &str) -> Value {
        let url = format!(
            "/api/search?q={}&start={}&end={}{extra}",
            urlencode(q),
            self.start,
            self.end
        );
        let (s, body) = self.get(&url).await;
        assert_eq!(s, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["metrics"].is_object());
        for t in v["traces"].as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
            assert!(t["traceID"]
                .as_str()
                .unwrap()
                .chars()
                .all(|c| c.is_ascii_hexdigit()));
            assert!(t["startTimeUnixNano"].is_string());
            assert!(t["rootServiceName"].is_string());
            assert_eq!(
                t["spanSet"], t["spanSets"][0],
                "spanSet mirrors spanSets[0]"
            );
            for set in t["spanSets"].as_array().unwrap() {
                let spans = set["spans"].as_array().unwrap();
                assert!(!spans.is_empty(), "every spanset has a span");
                for sp in spans {
                    assert_eq!(sp["spanID"].as_str().unwrap().len(), 16);
                    assert!(sp["startTimeUnixNano"].is_string());
                }
                assert!(set["matched"].as_u64().unwrap() >= spans.len() as u64);
            }
        }
        v
    }
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn traces(v: &Value) -> Vec<&Value> {
    v["traces"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

async fn empty_query_finds_app_and_zero_code_traces(f: Fixture) {
    let v = f.search("{}", "").await;
    let ids: Vec<&str> = traces(&v)
        .iter()
        .map(|t| t["traceID"].as_str().unwrap())
        .collect();
    // One hit per trace: the application trace under its trace id, the zero-code trace (six
    // calls, 24 rows) once, under the ID of its root row.
    let root = deepflow_tempo::tempo::ids::TraceId::zero_code(f.zero.entry_id).to_trimmed_hex();
    assert_eq!(ids, vec![root.as_str(), T4.trim_start_matches('0')], "{v}");
    let zero = &traces(&v)[0];
    assert_eq!(
        zero["spanSets"][0]["matched"], 24,
        "every span of the trace"
    );
    let app = traces(&v)
        .into_iter()
        .find(|t| t["traceID"] == T4.trim_start_matches('0'))
        .unwrap();
    assert_eq!(app["rootServiceName"], "svc-a");
    assert_eq!(app["rootTraceName"], "/api/401");
    assert_eq!(app["durationMs"], 10);
    assert_eq!(app["spanSets"][0]["matched"], 10);
    assert_eq!(
        app["spanSets"][0]["spans"].as_array().unwrap().len(),
        3,
        "spss defaults to 3"
    );
}

async fn filters_select_the_right_spans(f: Fixture) {
    let v = f.search(r#"{resource.service.name = "svc-c"}"#, "").await;
    let t = traces(&v);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0]["traceID"], T4.trim_start_matches('0'));
    let spans = t[0]["spanSets"][0]["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "only 410 (s-p of svc-c)");
    assert_eq!(spans[0]["name"], "/api/410");
    assert_eq!(
        attr(&spans[0], "service.name").unwrap()["stringValue"],
        "svc-c"
    );

    let v = f.search("{status = error}", "").await;
    let t = traces(&v);
    assert_eq!(t.len(), 1);
    let sp = &t[0]["spanSets"][0]["spans"][0];
    assert_eq!(sp["name"], "/api/406");
    assert_eq!(attr(sp, "status").unwrap()["stringValue"], "error");

    let v = f
        .search(
            r#"{span.tenant = "acme" && span.http.status_code >= 500 && kind = server}"#,
            "",
        )
        .await;
    assert_eq!(traces(&v).len(), 1);
    let v = f.search(r#"{span.tenant = "other"}"#, "").await;
    assert!(traces(&v).is_empty());
    assert!(v.get("traces").is_none(), "no traces key when empty");

    let v = f
        .search(
            r#"{resource.service.name =~ "svc-[ab]" && span.deepflow.signal_source = "ebpf"}"#,
            "",
        )
        .await;
    let spans: Vec<String> = traces(&v)
        .iter()
        .filter(|t| t["traceID"] == T4.trim_start_matches('0'))
        .flat_map(|t| {
            t["spanSets"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(spans, vec!["/api/402", "/api/405", "/api/409"]);

    let v = f
        .search("{duration > 8ms && name =~ \"/api/4.*\"}", "")
        .await;
    let t = traces(&v);
    assert_eq!(t.len(), 1);
    assert_eq!(
        t[0]["spanSets"][0]["matched"], 5,
        "401..405 last more than 8 ms"
    );

    let v = f
        .search(r#"{rootServiceName = "svc-a" && name = "/api/410"}"#, "")
        .await;
    assert_eq!(traces(&v).len(), 1);
}

async fn zero_code_hits_are_one_per_request_and_openable(f: Fixture) {
    let v = f
        .search(
            r#"{span.deepflow.observation_point = "s-p" || span.deepflow.observation_point = "c"}"#,
            "&limit=100",
        )
        .await;
    let zero: Vec<&Value> = traces(&v)
        .into_iter()
        .filter(|t| {
            t["traceID"]
                .as_str()
                .unwrap()
                .starts_with("64656570666c6f77")
        })
        .collect();
    assert_eq!(zero.len(), 1, "the six requests of one trace are one hit");
    let t = zero[0];
    assert_eq!(
        t["spanSets"][0]["matched"], 12,
        "six server processes, six client NICs"
    );
    let id = t["traceID"].as_str().unwrap();
    let root = deepflow_tempo::tempo::ids::TraceId::zero_code(f.zero.entry_id).to_trimmed_hex();
    assert_eq!(id, root, "named after the trace's root row");
    let (s, body) = f.get(&format!("/api/traces/{id}")).await;
    assert_eq!(s, 200, "{id}: {body}");
    // Every row of the trace opens the same tree (older IDs named a fragment's entry row).
    let first_c = f
        .zero
        .rows
        .iter()
        .find(|r| r.observation_point == "c")
        .unwrap();
    let old = deepflow_tempo::tempo::ids::TraceId::zero_code(first_c._id).to_trimmed_hex();
    let (s2, body2) = f.get(&format!("/api/traces/{old}")).await;
    assert_eq!(s2, 200);
    let spans = |b: &str| {
        let v: Value = serde_json::from_str(b).unwrap();
        let mut ids: Vec<String> = v["batches"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["scopeSpans"].as_array().unwrap().iter())
            .flat_map(|s| s["spans"].as_array().unwrap().iter())
            .map(|s| s["spanId"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(spans(&body), spans(&body2));
}

async fn pipelines(f: Fixture) {
    let v = f.search("{} | count() > 9 | count() < 20", "").await;
    let t = traces(&v);
    assert_eq!(t.len(), 1, "only S4 has ten spans");
    let attrs = t[0]["spanSets"][0]["attributes"].as_array().unwrap();
    assert!(attrs
        .iter()
        .any(|a| a["key"] == "count()" && a["value"]["intValue"] == "10"));

    let v = f
        .search(
            &format!("{{trace:id = \"{T4}\"}} | by(resource.service.name)"),
            "&spss=10",
        )
        .await;
    let t = traces(&v);
    assert_eq!(t.len(), 1);
    let sets = t[0]["spanSets"].as_array().unwrap();
    let by: Vec<&str> = sets
        .iter()
        .map(|s| s["attributes"][0]["value"]["stringValue"].as_str().unwrap())
        .collect();
    // svc-a, svc-b, svc-c, and the two network observation points under the names the trace
    // view shows them with (the span model's).
    assert_eq!(sets.len(), 5, "{by:?}");
    assert_eq!(by.iter().filter(|s| s.contains(" @ ")).count(), 2, "{by:?}");
    assert!(
        by.contains(&"svc-a") && by.contains(&"svc-b") && by.contains(&"svc-c"),
        "{by:?}"
    );

    let v = f
        .search(
            r#"{resource.service.name = "svc-b"} | avg(duration) > 1ms | select(span.http.method)"#,
            "",
        )
        .await;
    let t = traces(&v);
    assert_eq!(t.len(), 1);
    let sp = &t[0]["spanSets"][0]["spans"][0];
    assert_eq!(attr(sp, "http.method").unwrap()["stringValue"], "GET");

    let v = f
        .search(r#"{resource.service.name = "svc-b"} | coalesce()"#, "")
        .await;
    assert_eq!(traces(&v)[0]["spanSets"].as_array().unwrap().len(), 1);

    let v = f
        .search(
            r#"{resource.service.name = "svc-a"} && {resource.service.name = "svc-c"}"#,
            "",
        )
        .await;
    assert_eq!(traces(&v).len(), 1);
    let v = f
        .search(
            r#"{resource.service.name = "svc-a"} && {resource.service.name = "nope"}"#,
            "",
        )
        .await;
    assert!(traces(&v).is_empty());
}

/// Names of the S4 spans a structural query returns.
async fn structural_names(f: &Fixture, q: &str) -> Vec<String> {
    let v = f.search(q, "&spss=20").await;
    let mut names: Vec<String> = traces(&v)
        .iter()
        .filter(|t| t["traceID"] == T4.trim_start_matches('0'))
        .flat_map(|t| {
            t["spanSets"][0]["spans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
        })
        .collect();
    names.sort();
    names
}

async fn structural_operators(f: Fixture) {
    // Over the assembled full-stack tree (app, eBPF and network spans).
    assert_eq!(
        structural_names(&f, r#"{name = "/api/406"} > {name = "/api/407"}"#).await,
        vec!["/api/407"]
    );
    assert!(
        structural_names(&f, r#"{name = "/api/407"} > {name = "/api/406"}"#)
            .await
            .is_empty()
    );
    assert_eq!(
        structural_names(
            &f,
            r#"{resource.service.name = "svc-a"} >> {resource.service.name = "svc-c"}"#
        )
        .await,
        vec!["/api/410"]
    );
    assert_eq!(
        structural_names(&f, r#"{name = "/api/410"} << {name = "/api/401"}"#).await,
        vec!["/api/401"]
    );
    assert_eq!(
        structural_names(&f, r#"{name = "/api/405"} < {kind = server}"#).await,
        vec!["/api/404"]
    );
    // Negated: client spans whose parent is not a client span.
    assert_eq!(
        structural_names(&f, "{kind = client} !> {kind = client}").await,
        vec!["/api/401", "/api/408"]
    );
    // Union form: both ends of the relation.
    assert_eq!(
        structural_names(&f, r#"{name = "/api/406"} &> {name = "/api/407"}"#).await,
        vec!["/api/406", "/api/407"]
    );
    // Zero-code traces: eBPF client calls made by a server process, and siblings under one s-p.
    let v = f
        .search(r#"{span.deepflow.observation_point = "s-p"} > {span.deepflow.observation_point = "c-p"}"#, "&limit=50")
        .await;
    assert!(
        traces(&v).iter().any(|t| t["traceID"]
            .as_str()
            .unwrap()
            .starts_with("64656570666c6f77")),
        "{v}"
    );
    let v = f
        .search(r#"{span.deepflow.observation_point = "c-p"} ~ {span.deepflow.observation_point = "c-p"}"#, "&limit=50")
        .await;
    assert!(
        !traces(&v).is_empty(),
        "sibling client calls of one server span"
    );
}

async fn limits_spss_and_ordering(f: Fixture) {
    let v = f.search("{}", "&limit=1").await;
    assert_eq!(traces(&v).len(), 1);
    let v = f.search("{}", "&limit=50&spss=1").await;
    let t = traces(&v);
    assert_eq!(t.len(), 2);
    assert!(t
        .iter()
        .all(|t| t["spanSets"][0]["spans"].as_array().unwrap().len() == 1));
    let starts: Vec<u64> = t
        .iter()
        .map(|t| t["startTimeUnixNano"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] >= w[1]), "most recent first");
    // Protobuf answers too.
    let mut req = f.client.get(format!(
        "{}/api/search?q=%7B%7D&start={}&end={}",
        f.base, f.start, f.end
    ));
    req = req.header("Accept", "application/protobuf");
    if !f.org.is_default() {
        req = req.header("X-Org-Id", f.org.0.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/protobuf");
    let pb: deepflow_tempo::tempo::pb::SearchResponse =
        prost::Message::decode(resp.bytes().await.unwrap()).unwrap();
    assert_eq!(pb.traces.len(), 2);
}

async fn bad_requests(f: Fixture) {
    for (q, status, needle) in [
        (
            "/api/search?q=%7Bname%20%3D%7D",
            400,
            "invalid TraceQL query",
        ),
        (
            "/api/search?q=%7B%7D&tags=a%3Db",
            400,
            "can't specify tags and q",
        ),
        ("/api/search?q=%7B%7D&limit=0", 400, "invalid limit"),
        (
            "/api/search?q=%7B%7D&limit=300000",
            400,
            "exceeds max limit",
        ),
        ("/api/search?q=%7B%7D&spss=101", 400, "exceeds max spss"),
        (
            "/api/search?q=%7B%7D&start=20&end=10",
            400,
            "start must be before end",
        ),
        ("/api/search?q=%7B%7D&start=abc", 400, "invalid start"),
        (
            "/api/search?q=%7B%7D&start=1&end=1000000000",
            400,
            "exceeds",
        ),
        ("/api/search?tags=a%3D1%20a%3D2", 400, "duplicate"),
        (
            "/api/search?minDuration=1s&maxDuration=1ms",
            400,
            "maxDuration",
        ),
        ("/api/search?minDuration=soon", 400, "minDuration"),
        ("/api/search/tags?scope=everything", 400, "invalid scope"),
        ("/api/v2/search/tags?scope=nope", 400, "invalid scope"),
        (
            "/api/v2/search/tag/%7Bnot%20an%20identifier/values",
            400,
            "please provide a valid tagName",
        ),
        ("/api/search?q=%7B%7D%20%7C%20rate()", 501, "metrics"),
    ] {
        let (s, body) = f.get(q).await;
        assert_eq!(s, status, "{q}: {body}");
        assert!(body.contains(needle), "{q}: {body}");
    }
    // The TraceQL error names the position.
    let (_, body) = f.get("/api/search?q=%7Bname%20%3D%7D").await;
    assert!(body.contains("col"), "{body}");
}

async fn legacy_tag_search(f: Fixture) {
    let (s, body) = f
        .get(&format!(
            "/api/search?tags={}&minDuration=7ms&start={}&end={}",
            urlencode("service.name=svc-b"),
            f.start,
            f.end
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let t = traces(&v);
    assert_eq!(t.len(), 1);
    // svc-b spans lasting at least 7 ms: 404 (c→s NIC seen as svc-b), 405, 406, 407 (7 ms).
    assert!(t[0]["spanSets"][0]["matched"].as_u64().unwrap() >= 3);
}

async fn tag_names(f: Fixture) {
    let (s, body) = f
        .get(&format!(
            "/api/v2/search/tags?start={}&end={}",
            f.start, f.end
        ))
        .await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let scope = |name: &str| -> Vec<String> {
        v["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| {
                s["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(scope("intrinsic").len(), 25);
    assert!(scope("intrinsic").contains(&"span:kind".to_string()));
    assert!(scope("resource").contains(&"service.name".to_string()));
    let span = scope("span");
    assert!(
        span.contains(&"http.method".to_string()) && span.contains(&"tenant".to_string()),
        "{span:?}"
    );
    let (_, body) = f.get("/api/v2/search/tags?scope=intrinsic").await;
    let v2: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v2["scopes"].as_array().unwrap().len(), 1);
    let (s, body) = f
        .get(&format!("/api/search/tags?start={}&end={}", f.start, f.end))
        .await;
    assert_eq!(s, 200);
    let v1: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v1["tagNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(names.contains(&"service.name") && names.contains(&"tenant"));
    assert!(
        !names.contains(&"span:kind"),
        "intrinsics only with scope=intrinsic"
    );
}

async fn tag_values(f: Fixture) {
    let range = format!("start={}&end={}", f.start, f.end);
    let values = |body: &str| -> Vec<(String, String)> {
        let v: Value = serde_json::from_str(body).unwrap();
        v["tagValues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["type"].as_str().unwrap().to_string(),
                    t["value"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (s, body) = f
        .get(&format!(
            "/api/v2/search/tag/resource.service.name/values?{range}"
        ))
        .await;
    assert_eq!(s, 200, "{body}");
    let v = values(&body);
    for svc in ["svc-a", "svc-b", "svc-c"] {
        assert!(v.contains(&("string".into(), svc.into())), "{v:?}");
    }
    let (_, body) = f
        .get(&format!("/api/v2/search/tag/status/values?{range}"))
        .await;
    assert_eq!(
        values(&body),
        vec![
            ("keyword".into(), "ok".into()),
            ("keyword".into(), "error".into()),
            ("keyword".into(), "unset".into())
        ]
    );
    let (_, body) = f
        .get(&format!(
            "/api/v2/search/tag/span.http.status_code/values?{range}"
        ))
        .await;
    assert_eq!(
        values(&body),
        vec![("int".into(), "200".into()), ("int".into(), "503".into())]
    );
    let (_, body) = f
        .get(&format!("/api/v2/search/tag/span.tenant/values?{range}"))
        .await;
    assert_eq!(values(&body), vec![("string".into(), "acme".into())]);
    // Grafana double-encodes the tag; the server decodes the path once.
    let (s, body) = f
        .get(&format!(
            "/api/v2/search/tag/{}/values?{range}",
            urlencode("span.tenant")
        ))
        .await;
    assert_eq!(s, 200);
    assert_eq!(values(&body), vec![("string".into(), "acme".into())]);
    // `q` narrows leniently; an incomplete query is reduced to its complete conditions.
    let q = urlencode(r#"{resource.service.name="svc-c" && span.http.method="#);
    let (_, body) = f
        .get(&format!(
            "/api/v2/search/tag/span.http.status_code/values?q={q}&{range}"
        ))
        .await;
    assert_eq!(values(&body), vec![("int".into(), "200".into())]);
    let (s, body) = f
        .get(&format!("/api/search/tag/service.name/values?{range}"))
        .await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v["tagValues"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "svc-b"));
    let (_, body) = f.get("/api/search/tag/status.code/values").await;
    assert!(body.contains("error"));
}
