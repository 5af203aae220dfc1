//! TraceQL metrics over HTTP on both stores: every implemented function's figures against
//! values computed here from the loaded rows, `by`, `topk`/`bottomk`, comparisons, instant vs
//! range, protobuf, and the 400/422/501 answers.

#[macro_use]
mod common;

use common::{generated_rows, names};
use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::SharedStore;
use deepflow_tempo::tempo::pb;
use prost::Message;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

on_both_stores!(
    with super::Fixture::load;
    counts_and_rates_by_service,
    duration_aggregates_with_a_filter,
    topk_bottomk_and_comparisons,
    instant_matches_the_range,
    by_span_name_and_status,
    quantiles_and_histograms,
    protobuf_matches_json,
    bad_parameters_and_unsupported_constructs,
    drilldown_filters_and_breakdowns,
    arithmetic_between_queries_and_scalars,
    compare_counts_selection_and_baseline,
    exemplars_are_rows_of_the_series,
    every_valid_metrics_query_of_the_corpus_answers,
);

const STEP_S: i64 = 10;
const BUCKETS: i64 = 10;
const ROWS: usize = 1200;

struct Fixture {
    base: String,
    org: OrgId,
    client: reqwest::Client,
    rows: Vec<L7FlowLogRow>,
    /// Window start (µs), a multiple of the step.
    start_us: i64,
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

impl Fixture {
    async fn load(store: SharedStore, org: OrgId) -> Fixture {
        let t0_s = (now_us() / 1_000_000 - 900) / 60 * 60;
        let start_us = t0_s * 1_000_000;
        // Application spans of four services spread over the window; every tenth row is a
        // response half (never counted), every tenth plus one a request half (counted).
        let mut rows = generated_rows(ROWS, 7, t0_s as u32);
        for (i, r) in rows.iter_mut().enumerate() {
            r.signal_source = 4;
            r.protocol = 0;
            r.app_service = format!("svc-{}", i % 4);
            r.start_time = start_us + (i as i64) * 83_000 + (i as i64 % 7);
            r.end_time = r.start_time + r.response_duration as i64;
            r.time = (r.end_time / 1_000_000) as u32;
            r._id = make_id(r.time, 1, i as u32);
            r.r#type = match i % 10 {
                0 => 1,
                1 => 0,
                _ => 2,
            };
            r.request_type = if i % 3 == 0 { "POST" } else { "GET" }.into();
            r.response_status = [0, 0, 0, 1, 2, 3, 4, 5][i % 8];
            // Span names from every source: endpoint, request type and resource, the
            // business protocol, the L7 protocol.
            if i % 13 == 0 {
                r.endpoint = String::new();
            }
            if i % 26 == 0 {
                r.request_type = String::new();
                r.request_resource = String::new();
            }
            if i % 52 == 0 {
                r.biz_protocol = String::new();
            }
        }
        store.insert_rows(org, &rows).await.unwrap();
        store.insert_names(org, &names()).await.unwrap();
        let (srv, addrs) =
            server::bind(server::app_state(&Config::default(), store), "127.0.0.1:0").unwrap();
        tokio::spawn(srv);
        Fixture {
            base: format!("http://{}", addrs[0]),
            org,
            client: common::http_client(),
            rows,
            start_us,
        }
    }

    async fn raw(&self, path: &str, q: &str, extra: &str, proto: bool) -> (u16, Vec<u8>) {
        let url = format!(
            "{}{path}?q={}&start={}&end={}{extra}",
            self.base,
            urlencode(q),
            self.start_us / 1_000_000,
            self.start_us / 1_000_000 + STEP_S * BUCKETS,
        );
        let mut req = self.client.get(url).timeout(Duration::from_secs(60));
        if !self.org.is_default() {
            req = req.header("X-Org-Id", self.org.0.to_string());
        }
        if proto {
            req = req.header("Accept", "application/protobuf");
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    }

    async fn status(&self, path: &str, q: &str, extra: &str) -> (u16, String) {
        let (s, b) = self.raw(path, q, extra, false).await;
        (s, String::from_utf8_lossy(&b).into_owned())
    }

    /// A range query with `step=10s`: series label text → (timestamp ms → value).
    async fn range(&self, q: &str) -> BTreeMap<String, BTreeMap<i64, f64>> {
        let (s, body) = self
            .status("/api/metrics/query_range", q, &format!("&step={STEP_S}s"))
            .await;
        assert_eq!(s, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v.get("promLabels").is_none());
        let mut out = BTreeMap::new();
        for s in v["series"].as_array().unwrap() {
            let samples = s["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| {
                    (
                        x["timestampMs"].as_str().unwrap().parse::<i64>().unwrap(),
                        x["value"].as_f64().unwrap(),
                    )
                })
                .collect();
            out.insert(label_text(&s["labels"]), samples);
        }
        out
    }

    async fn instant(&self, q: &str) -> BTreeMap<String, f64> {
        let (s, body) = self.status("/api/metrics/query", q, "").await;
        assert_eq!(s, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (label_text(&s["labels"]), s["value"].as_f64().unwrap()))
            .collect()
    }

    /// Counted rows (not response halves) passing `keep`, grouped by service and bucket.
    fn expected(
        &self,
        keep: impl Fn(&L7FlowLogRow) -> bool,
    ) -> BTreeMap<String, BTreeMap<i64, Vec<f64>>> {
        let mut out: BTreeMap<String, BTreeMap<i64, Vec<f64>>> = BTreeMap::new();
        for r in self.rows.iter().filter(|r| r.r#type != 1 && keep(r)) {
            let b = (r.start_time - self.start_us) / (STEP_S * 1_000_000);
            if !(0..BUCKETS).contains(&b) {
                continue;
            }
            let ts_ms = (self.start_us + b * STEP_S * 1_000_000) / 1000;
            out.entry(format!("resource.service.name={}", r.app_service))
                .or_default()
                .entry(ts_ms)
                .or_default()
                .push(r.response_duration as f64 / 1e6);
        }
        out
    }
}

fn label_text(labels: &Value) -> String {
    labels
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let v = &l["value"];
            let v = v["stringValue"]
                .as_str()
                .map(str::to_string)
                .or_else(|| v["intValue"].as_str().map(str::to_string))
                .or_else(|| v["doubleValue"].as_f64().map(|d| d.to_string()))
                .unwrap();
            format!("{}={v}", l["key"].as_str().unwrap())
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Every bucket of the grid: counts with zeros where no row falls.
fn counts(
    exp: &BTreeMap<String, BTreeMap<i64, Vec<f64>>>,
    start_us: i64,
) -> BTreeMap<String, BTreeMap<i64, f64>> {
    exp.iter()
        .map(|(k, m)| {
            let grid = (0..BUCKETS)
                .map(|b| {
                    let t = (start_us + b * STEP_S * 1_000_000) / 1000;
                    (t, m.get(&t).map_or(0.0, |v| v.len() as f64))
                })
                .collect();
            (k.clone(), grid)
        })
        .collect()
}

async fn counts_and_rates_by_service(f: Fixture) {
    let exp = counts(&f.expected(|_| true), f.start_us);
    assert_eq!(exp.len(), 4);
    let got = f
        .range("{} | count_over_time() by (resource.service.name)")
        .await;
    assert_eq!(got, exp);
    let rate = f.range("{ } | rate() by (resource.service.name)").await;
    for (k, m) in &exp {
        for (t, c) in m {
            assert!(close(rate[k][t], c / STEP_S as f64), "{k} {t}");
        }
    }
    // No `by`: one series without labels, the total.
    let total = f.range("{} | count_over_time()").await;
    let all: f64 = exp.values().flat_map(|m| m.values()).sum();
    assert_eq!(total.len(), 1);
    assert_eq!(total[""].values().sum::<f64>(), all);
    // A mapped text column and a service equality.
    let got = f
        .range(r#"{ span.deepflow.request_type = "POST" && resource.service.name = "svc-1" } | count_over_time() by (span.deepflow.request_type)"#)
        .await;
    let exp1 = f.expected(|r| r.request_type == "POST" && r.app_service == "svc-1");
    let n: usize = exp1.values().flat_map(|m| m.values()).map(Vec::len).sum();
    assert!(n > 0);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got["span.deepflow.request_type=POST"].values().sum::<f64>(),
        n as f64
    );
    // Status as the span model maps `response_status` (2, 3, 4 → error; 0 → ok; else unset).
    for (q, codes) in [
        ("{ status = error }", &[2u8, 3, 4][..]),
        ("{ status = ok }", &[0][..]),
        ("{ status = unset }", &[1, 5][..]),
        ("{ status != ok }", &[1, 2, 3, 4, 5][..]),
    ] {
        let got = f.instant(&format!("{q} | count_over_time()")).await;
        let exp = f.expected(|r| codes.contains(&r.response_status));
        let n: usize = exp.values().flat_map(|m| m.values()).map(Vec::len).sum();
        assert!(n > 0, "{q}");
        assert_eq!(got.get("").copied(), Some(n as f64), "{q}");
    }
}

async fn duration_aggregates_with_a_filter(f: Fixture) {
    let keep = |r: &L7FlowLogRow| r.response_duration >= 10_000;
    let exp = f.expected(keep);
    for (func, pick) in [
        ("min_over_time", 0),
        ("max_over_time", 1),
        ("avg_over_time", 2),
        ("sum_over_time", 3),
    ] {
        let got = f
            .range(&format!(
                "{{ duration >= 10ms }} | {func}(duration) by (resource.service.name)"
            ))
            .await;
        assert_eq!(got.len(), exp.len(), "{func}");
        for (k, m) in &exp {
            assert_eq!(
                got[k].len(),
                m.len(),
                "{func} {k}: buckets without rows have no sample"
            );
            for (t, vals) in m {
                let want = match pick {
                    0 => vals.iter().cloned().fold(f64::INFINITY, f64::min),
                    1 => vals.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                    2 => vals.iter().sum::<f64>() / vals.len() as f64,
                    _ => vals.iter().sum::<f64>(),
                };
                assert!(
                    close(got[k][t], want),
                    "{func} {k} {t}: {} vs {want}",
                    got[k][t]
                );
            }
        }
    }
}

async fn topk_bottomk_and_comparisons(f: Fixture) {
    let exp = counts(&f.expected(|_| true), f.start_us);
    let top = f
        .range("{} | count_over_time() by (resource.service.name) | topk(2)")
        .await;
    let bottom = f
        .range("{} | count_over_time() by (resource.service.name) | bottomk(1)")
        .await;
    let stamps: Vec<i64> = exp.values().next().unwrap().keys().copied().collect();
    for t in stamps {
        let mut vals: Vec<f64> = exp.values().map(|m| m[&t]).collect();
        vals.sort_by(f64::total_cmp);
        let at = |r: &BTreeMap<String, BTreeMap<i64, f64>>| -> Vec<f64> {
            let mut v: Vec<f64> = r.values().filter_map(|m| m.get(&t).copied()).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        assert_eq!(at(&top), vals[vals.len() - 2..].to_vec(), "topk at {t}");
        assert_eq!(at(&bottom), vals[..1].to_vec(), "bottomk at {t}");
    }
    let threshold = 28.0;
    let over = f
        .range(&format!(
            "{{}} | count_over_time() by (resource.service.name) > {threshold}"
        ))
        .await;
    for (k, m) in &exp {
        let want: BTreeMap<i64, f64> = m
            .iter()
            .filter(|(_, v)| **v > threshold)
            .map(|(t, v)| (*t, *v))
            .collect();
        assert_eq!(over.get(k).cloned().unwrap_or_default(), want, "{k}");
    }
}

async fn instant_matches_the_range(f: Fixture) {
    let exp = counts(&f.expected(|_| true), f.start_us);
    let inst = f
        .instant("{} | count_over_time() by (resource.service.name)")
        .await;
    assert_eq!(inst.len(), exp.len());
    for (k, m) in &exp {
        assert_eq!(inst[k], m.values().sum::<f64>(), "{k}");
    }
    let rate = f.instant("{} | rate() by (resource.service.name)").await;
    for (k, m) in &exp {
        let want = m.values().sum::<f64>() / (STEP_S * BUCKETS) as f64;
        assert!(close(rate[k], want), "{k}");
    }
}

async fn protobuf_matches_json(f: Fixture) {
    let q = "{} | count_over_time() by (resource.service.name)";
    let (s, body) = f.raw("/api/metrics/query_range", q, "&step=10", true).await;
    assert_eq!(s, 200);
    let resp = pb::QueryRangeResponse::decode(body.as_slice()).unwrap();
    let json = f.range(q).await;
    assert_eq!(resp.series.len(), json.len());
    for s in &resp.series {
        assert!(s.prom_labels.is_empty());
        let key = format!(
            "{}={}",
            s.labels[0].key,
            match &s.labels[0].value.as_ref().unwrap().value {
                Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)) =>
                    v.clone(),
                other => panic!("{other:?}"),
            }
        );
        let samples: BTreeMap<i64, f64> = s
            .samples
            .iter()
            .map(|x| (x.timestamp_ms, x.value))
            .collect();
        assert_eq!(samples, json[&key]);
    }
    let (s, body) = f.raw("/api/metrics/query", q, "", true).await;
    assert_eq!(s, 200);
    let inst = pb::QueryInstantResponse::decode(body.as_slice()).unwrap();
    assert_eq!(inst.series.len(), json.len());
}

async fn bad_parameters_and_unsupported_constructs(f: Fixture) {
    let ok = "{} | rate()";
    for (path, q, extra) in [
        ("/api/metrics/query_range", ok, "&step=banana"),
        ("/api/metrics/query_range", ok, "&step=0"),
        ("/api/metrics/query_range", ok, "&step=1ms"),
        ("/api/metrics/query_range", ok, "&start=yesterday"),
        ("/api/metrics/query_range", ok, "&exemplars=-1"),
        ("/api/metrics/query_range", ok, "&maxSeries=0"),
        ("/api/metrics/query_range", "{ }", ""),
        ("/api/metrics/query_range", "{ } | rate(", ""),
        ("/api/metrics/query", ok, "&end=1"),
        ("/api/metrics/query", "", ""),
    ] {
        let (s, body) = f.status(path, q, extra).await;
        assert_eq!(s, 400, "{path} {q} {extra}: {body}");
        assert!(!body.is_empty());
    }
    // Constructs the store cannot compute run over assembled traces instead.
    for q in [
        r#"{ name =~ "GET.*" } | rate()"#,
        "{ } >> { } | rate()",
        "{ } | quantile_over_time(span.foo, .9)",
        "{ } | rate() by (resource.host.name)",
        r#"{ } | compare({ name =~ "GET.*" })"#,
    ] {
        let (s, body) = f.status("/api/metrics/query_range", q, "").await;
        assert_eq!(s, 200, "{q}: {body}");
    }
    let (s, body) = f
        .status(
            "/api/metrics/query_range",
            "{} | rate() by (resource.service.name)",
            "&maxSeries=2",
        )
        .await;
    assert_eq!(s, 422, "{body}");
    // Quotes in values are bound, never SQL: they match nothing.
    for q in [
        r#"{ resource.service.name = "svc-1' OR '1'='1" } | count_over_time()"#,
        r#"{ span.deepflow.endpoint = "x\" OR 1=1 --" } | count_over_time()"#,
    ] {
        let (s, body) = f.status("/api/metrics/query_range", q, "").await;
        assert_eq!(s, 200, "{q}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["series"], serde_json::json!([]), "{q}");
    }
    assert!(body.contains("maximum series"), "{body}");
}

/// The log2 bucket of a µs duration: the smallest power of two in ns holding it.
fn log2_ns(us: u64) -> i32 {
    (0..63).find(|k| us <= (1u64 << k) / 1000).unwrap_or(63)
}

async fn quantiles_and_histograms(f: Fixture) {
    let exp = f.expected(|_| true);
    let got = f
        .range("{} | quantile_over_time(duration, .5, .9) by (resource.service.name)")
        .await;
    assert_eq!(got.len(), exp.len() * 2);
    for (k, m) in &exp {
        for q in [0.5, 0.9] {
            let series = &got[&format!("{k},p={q}")];
            assert_eq!(series.len(), m.len(), "{k} p={q}");
            for (t, vals) in m {
                let mut v = vals.clone();
                v.sort_by(f64::total_cmp);
                let exact = v[((q * v.len() as f64).ceil() as usize).max(1) - 1];
                let g = series[t];
                // Within the log2 bucket's error: at most a factor of two either way.
                assert!(
                    g >= exact / 2.0 && g <= exact * 2.0,
                    "{k} p={q} {t}: {g} vs {exact}"
                );
                assert!(
                    g >= v[0] && g <= v[v.len() - 1],
                    "{k} p={q} {t}: {g} outside the values"
                );
            }
        }
    }
    let hist = f
        .range("{} | histogram_over_time(duration) by (resource.service.name)")
        .await;
    let mut want: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for (k, m) in &exp {
        for (t, vals) in m {
            for d in vals {
                let us = (d * 1e6).round() as u64;
                let upper = 2f64.powi(log2_ns(us)) / 1e9;
                *want
                    .entry(format!("{k},__bucket={upper}"))
                    .or_default()
                    .entry(*t)
                    .or_default() += 1.0;
            }
        }
    }
    assert_eq!(hist.len(), want.len());
    for (key, m) in &want {
        let series = &hist[key];
        assert_eq!(series.len(), BUCKETS as usize, "{key}: zeros fill the grid");
        for (t, c) in m {
            assert_eq!(series[t], *c, "{key} {t}");
        }
        assert_eq!(
            series.values().sum::<f64>(),
            m.values().sum::<f64>(),
            "{key}"
        );
    }
}

/// The span name as the span model gives it (this fixture's rows are all HTTP).
fn span_name(r: &L7FlowLogRow) -> String {
    if !r.endpoint.is_empty() {
        return r.endpoint.clone();
    }
    let joined = format!("{} {}", r.request_type, r.request_resource);
    if !joined.trim().is_empty() {
        return joined.trim().to_string();
    }
    if !r.biz_protocol.is_empty() {
        return r.biz_protocol.clone();
    }
    assert_eq!(r.l7_protocol, 20);
    "HTTP".to_string()
}

async fn by_span_name_and_status(f: Fixture) {
    let got = f.instant("{} | count_over_time() by (name)").await;
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for r in f.rows.iter().filter(|r| r.r#type != 1) {
        *want.entry(format!("name={}", span_name(r))).or_default() += 1.0;
    }
    assert!(want.contains_key("name=HTTP") && want.contains_key("name=GET /api/0"));
    assert_eq!(got, want);
    let got = f.instant("{} | count_over_time() by (status)").await;
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for r in f.rows.iter().filter(|r| r.r#type != 1) {
        let st = match r.response_status {
            0 => "ok",
            2..=4 => "error",
            _ => "unset",
        };
        *want.entry(format!("status={st}")).or_default() += 1.0;
    }
    assert_eq!(want.len(), 3);
    assert_eq!(got, want);
}

/// The filters and breakdowns Traces Drilldown sends (`true`, `kind`, `status !=`, `!= nil`,
/// `by()` on span attributes and intrinsics), against counts from the loaded rows.
async fn drilldown_filters_and_breakdowns(f: Fixture) {
    let total = |m: &BTreeMap<String, BTreeMap<i64, f64>>| -> f64 {
        m.values().flat_map(|s| s.values()).sum()
    };
    let exp = |keep: &dyn Fn(&L7FlowLogRow) -> bool| -> f64 {
        f.expected(keep)
            .values()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum::<usize>() as f64
    };
    let errored = |r: &L7FlowLogRow| matches!(r.response_status, 2..=4);
    // Application spans take their kind from `span_kind`; the fixture leaves it unset, so
    // they are internal (observation point `app`) or as the observation point says.
    let all = f.range("{ true } | count_over_time()").await;
    assert_eq!(total(&all), exp(&|_| true));
    let ok = f
        .range("{ true && status != error } | count_over_time()")
        .await;
    assert_eq!(total(&ok), exp(&|r| !errored(r)));
    let by_status = f.range("{ } | count_over_time() by (status)").await;
    assert_eq!(total(&by_status), exp(&|_| true), "every span has a status");
    let by_method = f
        .range("{ span.deepflow.request_type != nil } | count_over_time() by (span.deepflow.request_type)")
        .await;
    for (k, m) in &by_method {
        let v = k.trim_start_matches("span.deepflow.request_type=");
        assert!(!v.is_empty());
        assert_eq!(
            m.values().sum::<f64>(),
            exp(&|r| r.request_type == v),
            "{k}"
        );
    }
    assert_eq!(total(&by_method), exp(&|r| !r.request_type.is_empty()));
    let kinds = f.range("{ } | count_over_time() by (kind)").await;
    assert_eq!(total(&kinds), exp(&|_| true));
    let server = f.range("{ kind = server } | count_over_time()").await;
    let client = f.range("{ kind != server } | count_over_time()").await;
    assert_eq!(total(&server) + total(&client), exp(&|_| true));
}

/// `(a) / (b)`, `* 100` and a comparison on the result: series pair by labels.
async fn arithmetic_between_queries_and_scalars(f: Fixture) {
    let errors = f
        .range("{ status = error } | count_over_time() by (resource.service.name)")
        .await;
    let all = f
        .range("{ } | count_over_time() by (resource.service.name)")
        .await;
    let ratio = f
        .range("({ status = error } | count_over_time() by (resource.service.name)) / ({ } | count_over_time() by (resource.service.name)) * 100")
        .await;
    assert_eq!(ratio.len(), errors.len());
    for (k, m) in &ratio {
        for (t, v) in m {
            let want = errors[k].get(t).copied().unwrap_or(0.0) * 100.0 / all[k][t];
            assert!(close(*v, want), "{k} {t}: {v} vs {want}");
        }
    }
    // An unlabelled total pairs with every series.
    let share = f
        .range("({ } | count_over_time() by (resource.service.name)) / ({ } | count_over_time())")
        .await;
    assert_eq!(share.len(), all.len());
    let above = f
        .range("({ } | count_over_time() by (resource.service.name)) / ({ } | count_over_time()) > 0.25")
        .await;
    for m in above.values() {
        assert!(m.values().all(|v| *v > 0.25));
    }
}

/// `compare()`: per attribute, the top values among selected and other spans and the totals.
async fn compare_counts_selection_and_baseline(f: Fixture) {
    let (s, body) = f
        .status(
            "/api/metrics/query_range",
            "{ } | compare({ status = error }, 5)",
            &format!("&step={}s", STEP_S * BUCKETS),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let errored = |r: &L7FlowLogRow| matches!(r.response_status, 2..=4);
    let count = |keep: &dyn Fn(&L7FlowLogRow) -> bool| -> f64 {
        f.expected(keep)
            .values()
            .flat_map(|m| m.values())
            .map(Vec::len)
            .sum::<usize>() as f64
    };
    let mut seen = 0;
    for series in v["series"].as_array().unwrap() {
        let labels = series["labels"].as_array().unwrap();
        let meta = labels.iter().find(|l| l["key"] == "__meta_type").unwrap()["value"]
            ["stringValue"]
            .as_str()
            .unwrap();
        let attr = labels.iter().find(|l| l["key"] != "__meta_type").unwrap();
        let sum: f64 = series["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["value"].as_f64().unwrap())
            .sum();
        if attr["key"] != "resource.service.name" {
            continue;
        }
        seen += 1;
        let selected = meta.starts_with("selection");
        let side = |r: &L7FlowLogRow| errored(r) == selected;
        let want = match attr["value"]["stringValue"].as_str() {
            None => count(&side),
            Some(svc) => count(&|r| side(r) && r.app_service == svc),
        };
        assert_eq!(sum, want, "{meta} {attr}");
    }
    // Each service on the side(s) where it has spans, and both totals.
    let services = |sel: bool| {
        f.expected(|r| errored(r) == sel)
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(seen, services(true) + services(false) + 2, "{body}");
}

/// Exemplars: at most the number asked, each the latest span of its series' bucket, with the
/// trace ID trace by ID opens.
async fn exemplars_are_rows_of_the_series(f: Fixture) {
    let q = "{ } | max_over_time(duration) by (resource.service.name)";
    let (s, body) = f
        .status(
            "/api/metrics/query_range",
            q,
            &format!("&step={STEP_S}s&exemplars=8"),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut n = 0;
    for series in v["series"].as_array().unwrap() {
        let svc = series["labels"][0]["value"]["stringValue"]
            .as_str()
            .unwrap();
        for e in series["exemplars"].as_array().into_iter().flatten() {
            n += 1;
            let id = e["labels"][0]["value"]["stringValue"].as_str().unwrap();
            let row = f
                .rows
                .iter()
                .find(|r| {
                    use deepflow_tempo::tempo::ids::TraceId;
                    TraceId::from_app_trace_id(&r.trace_id)
                        .unwrap_or_else(|| TraceId::zero_code(r._id))
                        .to_trimmed_hex()
                        == id
                })
                .unwrap_or_else(|| panic!("exemplar {id} is a loaded row's trace"));
            assert_eq!(row.app_service, svc);
            let ts: i64 = e["timestampMs"].as_str().unwrap().parse().unwrap();
            assert!(ts >= f.start_us / 1000);
        }
    }
    assert!((1..=8).contains(&n), "{n} exemplars: {body}");
    // `exemplars=0`: none.
    let (_, body) = f
        .status(
            "/api/metrics/query_range",
            q,
            &format!("&step={STEP_S}s&exemplars=0"),
        )
        .await;
    assert!(!body.contains("exemplars"), "{body}");
}

/// Every metrics query Tempo's TraceQL corpus (`tests/data/tempo_test_examples.yaml`) calls
/// valid answers 200 on `query_range`: computed in the store or over assembled traces.
async fn every_valid_metrics_query_of_the_corpus_answers(f: Fixture) {
    let doc: serde_yaml::Mapping =
        serde_yaml::from_str(include_str!("data/tempo_test_examples.yaml")).unwrap();
    let valid = doc
        .get("valid")
        .and_then(|v| v.as_sequence())
        .cloned()
        .unwrap_or_default();
    // And the newer grammar beyond the stored corpus (see traceql_conformance.rs).
    let newer = [
        "({ status = error } | rate()) / ({} | rate())",
        "({} | rate()) * 100",
        "2 - ({} | rate())",
        "({} | rate()) / ({} | rate()) | topk(10)",
        "{} | rate() > 10 | topk(3) < 100 | bottomk(2)",
        "{} | quantile_over_time(duration, 0.9) >= 100ms",
        "{ .a } | compare({ status = error })",
        "{} | compare({}, 25, 1000, 2000)",
        "{ .a } | by(name) | rate()",
        "{ .a } && { .b } | count_over_time()",
        "{} | sum_over_time(span.http.request.size) by (name, resource.service.name)",
        "{} | avg_over_time(.latency)",
        "{ span:childCount > 1 } | rate()",
    ];
    let mut n = 0;
    for q in valid
        .iter()
        .filter_map(|v| v.as_str())
        .chain(newer.iter().copied())
    {
        let Ok(parsed) = deepflow_tempo::traceql::parse(q) else {
            continue;
        };
        if !parsed.is_metrics() {
            continue;
        }
        n += 1;
        let (s, body) = f
            .status("/api/metrics/query_range", q, &format!("&step={STEP_S}s"))
            .await;
        assert_eq!(s, 200, "{q}: {body}");
    }
    assert!(n >= 5, "the corpus holds {n} valid metrics queries");
}
