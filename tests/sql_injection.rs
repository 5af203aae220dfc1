//! SQL injection through the real server, on both stores: a corpus of hostile strings (quotes,
//! backslashes, statement and comment breakers, ClickHouse `{name:Type}` placeholders, `?`,
//! `$1`, NUL, unicode, ClickHouse keywords, regex metacharacters, very long strings) is stored
//! in rows and then pushed through every user string that reaches a store: TraceQL string
//! literals and regexes, attribute names, legacy `tags=` values, tag-name and tag-value
//! lookups, trace IDs, DeepFlow's request fields and the organisation headers.
//!
//! Each hostile string must match exactly the row that holds it (a literal match), a hostile
//! string stored nowhere must match nothing, no answer may be a 5xx, and the table must hold
//! all its rows afterwards. `tests/store_conformance.rs` (`hostile_strings_stay_literal`)
//! covers the store layer directly; this file goes through HTTP.

#[macro_use]
mod common;

use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use deepflow_tempo::store::model::*;
use deepflow_tempo::store::{Filter, FlowQuery, SharedStore, TimeWindow};
use serde_json::{json, Value};
use std::collections::BTreeSet;

on_both_stores!(
    with super::Fixture::load;
    traceql_string_literals_match_literally,
    traceql_regexes_match_literally,
    attribute_names_match_literally,
    legacy_tag_search_matches_literally,
    tag_names_and_values_list_hostile_strings_exactly,
    trace_ids_and_organisation_headers_never_reach_the_store,
    deepflow_api_fields_match_literally,
);

/// The hostile corpus: every entry is stored in exactly one row.
fn hostile() -> Vec<String> {
    let mut v: Vec<String> = [
        "'",
        "''",
        "\"",
        "\\",
        "\\'",
        "\\\\'",
        "'; DROP TABLE l7_flow_log; --",
        "x'); DROP TABLE l7_flow_log; --",
        "\"; DROP DATABASE flow_log; --",
        "' OR '1'='1",
        "' OR 1=1 --",
        "1 OR 1=1",
        "1; SELECT 1",
        "-- comment",
        "/* comment */",
        "*/ 1 /*",
        "/*",
        "#",
        "{id:UInt64}",
        "{name:String}",
        "{x:Array(String)}",
        "?",
        "??",
        "? OR 1=1",
        "$1",
        "$1$2",
        ":name",
        "@p1",
        "%s%d",
        "%_%",
        "a\0b",
        "\0",
        "ünïcødé ✓ 日本語",
        "\u{202e}evil\u{202c}",
        "🦀 crab",
        "tab\tnew\nline\rcr",
        "FORMAT JSON",
        "SETTINGS readonly=0",
        "INTO OUTFILE '/tmp/x'",
        "UNION ALL SELECT name FROM system.tables",
        "`backtick`",
        "[brackets]",
        "(paren",
        "^.*$",
        ".*",
        "a|b",
        "\\d+",
        "x{2,}",
        "(?i)CASE",
        "\u{7f}\u{1}\u{1b}[31m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("x".repeat(10_000));
    v.push("'".repeat(1_000));
    v.push("\\".repeat(999));
    v.push(format!("{}{}", "é".repeat(2_000), "'"));
    v
}

/// Hostile strings stored nowhere.
const ABSENT: &[&str] = &[
    "' OR ''='",
    "absent'); DROP TABLE l7_flow_log; --",
    "{absent:String}",
    "\\absent",
    "nul\0absent",
];

/// Regex syntax on which RE2 (ClickHouse, Tempo) and Rust's regex crate may disagree.
const REGEX_EDGES: &[&str] = &[
    "\\C",
    "(?P<n>a)",
    "(?<n>a)",
    "\\pL+",
    "\\p{Greek}",
    "[[:alpha:]]+",
    "[[:word:]]",
    "\\Q.*\\E",
    "a{1001}",
    "x{2}{3}",
    "(?U)a+",
    "(?s).*",
    "(?m)^x$",
    "\\z",
    "\\Z",
    "\\b",
    "\\8",
    "\\1",
    "(?=a)",
    "(?!a)",
    "a**",
    "a++",
    "[a-\\d]",
    "[\\x00-\\x{10FFFF}]*",
    "\\x{110000}",
    "[[:^digit:]]+",
    "[a&&b]",
    "[a--b]",
    "[a~~b]",
    "\\e",
    "\\cA",
    "(?i)INNOCENT",
    "",
    "|",
    "()",
    "\\",
];

/// The string of the control row (stored like the hostile ones).
const CONTROL: &str = "innocent";

/// The attribute every row carries with its hostile string as the value.
const VALUE_ATTR: &str = "hostile.value";

/// The span ID of row `i` (16 hex characters, so search hits name it).
fn span_of(i: usize) -> String {
    format!("{:016x}", 0x5eed_0000 + i)
}

struct Fixture {
    base: String,
    org: OrgId,
    client: reqwest::Client,
    store: SharedStore,
    strings: Vec<String>,
    rows: usize,
    /// The time window of the rows (seconds).
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
    /// One application span per hostile string (as its trace id, service, method, target,
    /// an attribute name and an attribute value), plus an innocent control row.
    async fn load(store: SharedStore, org: OrgId) -> Fixture {
        let t0 = now_us() - 600_000_000;
        let strings = hostile();
        let mut texts: Vec<String> = strings.clone();
        texts.push(CONTROL.into());
        let rows: Vec<L7FlowLogRow> = texts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let start = t0 + i as i64 * 1_000;
                let mut r = L7FlowLogRow {
                    start_time: start,
                    end_time: start + 500,
                    signal_source: 4,
                    observation_point: "s-app".into(),
                    agent_id: 1,
                    r#type: 2,
                    l7_protocol: 20,
                    biz_protocol: "HTTP".into(),
                    request_type: h.clone(),
                    request_resource: h.clone(),
                    endpoint: format!("/row/{i}"),
                    response_code: Some(200),
                    trace_id: h.clone(),
                    span_id: span_of(i),
                    app_service: h.clone(),
                    attribute_names: vec![h.clone(), VALUE_ATTR.into()],
                    attribute_values: vec!["v".into(), h.clone()],
                    ..Default::default()
                };
                r.normalise(i as u32 + 1);
                r
            })
            .collect();
        store.insert_rows(org, &rows).await.unwrap();
        let (srv, addrs) = server::bind(
            server::app_state(&Config::default(), store.clone()),
            "127.0.0.1:0",
        )
        .unwrap();
        tokio::spawn(srv);
        Fixture {
            base: format!("http://{}", addrs[0]),
            org,
            client: common::http_client(),
            store,
            strings,
            rows: rows.len(),
            start: t0 / 1_000_000 - 60,
            end: t0 / 1_000_000 + 120,
        }
    }

    fn request(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.header("X-Org-Id", self.org.0.to_string())
            .timeout(std::time::Duration::from_secs(60))
    }

    /// Status and body of a GET; never a 5xx.
    async fn get(&self, path_and_query: &str) -> (u16, String) {
        self.get_with(path_and_query, &[]).await
    }

    async fn get_with(&self, path_and_query: &str, headers: &[(&str, &[u8])]) -> (u16, String) {
        let mut req = self.request(self.client.get(format!("{}{path_and_query}", self.base)));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("answered");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert!(status < 500, "{path_and_query}: {status} {body}");
        (status, body)
    }

    /// The span IDs a TraceQL search finds in the rows' window.
    async fn search_spans(&self, q: &str) -> BTreeSet<String> {
        let (status, body) = self
            .get(&format!(
                "/api/search?q={}&start={}&end={}&limit=1000&spss=100",
                enc(q),
                self.start,
                self.end
            ))
            .await;
        assert_eq!(status, 200, "{q}: {body}");
        span_ids(&body)
    }

    /// The span IDs of the rows (the hostile ones and the control row) whose string
    /// satisfies `keep`.
    fn spans_where(&self, keep: impl Fn(&str) -> bool) -> BTreeSet<String> {
        self.strings
            .iter()
            .map(String::as_str)
            .chain([CONTROL])
            .enumerate()
            .filter(|(_, h)| keep(h))
            .map(|(i, _)| span_of(i))
            .collect()
    }

    /// The table still holds every row.
    async fn assert_intact(&self) {
        let w = TimeWindow::new(self.start as u32, self.end as u32);
        let all = self
            .store
            .select_meta(self.org, &FlowQuery::new(Filter::True).window(w))
            .await
            .expect("the table is still readable");
        assert_eq!(all.len(), self.rows, "rows lost");
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A TraceQL string literal (JSON's escapes are a subset of TraceQL's).
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A quoted TraceQL attribute name (only `"` and `\` are escaped there).
fn quoted_name(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn span_ids(search_body: &str) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(search_body).unwrap();
    let mut out = BTreeSet::new();
    for t in v["traces"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        for set in t["spanSets"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            for s in set["spans"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                out.insert(s["spanID"].as_str().unwrap().to_string());
            }
        }
    }
    out
}

fn shown(s: &str) -> String {
    let mut t: String = s.chars().take(60).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    format!("{t:?}")
}

async fn traceql_string_literals_match_literally(f: Fixture) {
    for h in &f.strings {
        let only = f.spans_where(|x| x == h);
        for q in [
            format!("{{ span.{VALUE_ATTR} = {} }}", lit(h)),
            format!("{{ .{VALUE_ATTR} = {} }}", lit(h)),
            format!("{{ span.http.method = {} }}", lit(h)),
            format!("{{ span.http.target = {} }}", lit(h)),
            format!("{{ resource.service.name = {} }}", lit(h)),
        ] {
            assert_eq!(f.search_spans(&q).await, only, "{}", shown(&q));
        }
        let q = format!("{{ span.{VALUE_ATTR} != {} }}", lit(h));
        assert_eq!(
            f.search_spans(&q).await,
            f.spans_where(|x| x != h),
            "{}",
            shown(&q)
        );
    }
    for a in ABSENT {
        for q in [
            format!("{{ span.{VALUE_ATTR} = {} }}", lit(a)),
            format!("{{ span.http.method = {} }}", lit(a)),
            format!("{{ resource.service.name = {} }}", lit(a)),
        ] {
            assert!(f.search_spans(&q).await.is_empty(), "{}", shown(&q));
        }
    }
    f.assert_intact().await;
}

async fn traceql_regexes_match_literally(f: Fixture) {
    for h in &f.strings {
        // Escaped: matches exactly the row holding the string.
        let re = regex::escape(h);
        let only = f.spans_where(|x| x == h);
        for q in [
            format!("{{ span.{VALUE_ATTR} =~ {} }}", lit(&re)),
            format!("{{ span.http.method =~ {} }}", lit(&re)),
        ] {
            assert_eq!(f.search_spans(&q).await, only, "{}", shown(&q));
        }
    }
    // As regexes themselves (the hostile strings, and syntax where RE2 and Rust's regex
    // differ): whatever they match, anchored as Tempo anchors them, or a 400. On a column the
    // regex reaches ClickHouse's RE2 too.
    let patterns = f
        .strings
        .iter()
        .map(String::as_str)
        .chain(REGEX_EDGES.iter().copied());
    for p in patterns {
        for q in [
            format!("{{ span.{VALUE_ATTR} =~ {} }}", lit(p)),
            format!("{{ span.http.method =~ {} }}", lit(p)),
            format!("{{ span.http.method !~ {} }}", lit(p)),
        ] {
            let (status, body) = f
                .get(&format!(
                    "/api/search?q={}&start={}&end={}&limit=1000&spss=100",
                    enc(&q),
                    f.start,
                    f.end
                ))
                .await;
            let negated = q.contains("!~");
            match regex::Regex::new(&format!("^(?:{p})$")) {
                Ok(anchored) if status == 200 => assert_eq!(
                    span_ids(&body),
                    f.spans_where(|x| anchored.is_match(x) != negated),
                    "{}",
                    shown(&q)
                ),
                _ => assert_eq!(status, 400, "{}: {body}", shown(&q)),
            }
        }
    }
    f.assert_intact().await;
}

async fn attribute_names_match_literally(f: Fixture) {
    for (i, h) in f.strings.iter().enumerate() {
        let name = quoted_name(h);
        let (status, body) = f
            .get(&format!(
                "/api/search?q={}&start={}&end={}&limit=1000",
                enc(&format!("{{ span.{name} = \"v\" }}")),
                f.start,
                f.end
            ))
            .await;
        assert_eq!(status, 200, "{}: {body}", shown(h));
        assert_eq!(
            span_ids(&body),
            BTreeSet::from([span_of(i)]),
            "{}",
            shown(h)
        );
        let q = format!("{{ span.{name} != nil }}");
        assert_eq!(
            f.search_spans(&q).await,
            BTreeSet::from([span_of(i)]),
            "{}",
            shown(&q)
        );
    }
    for a in ABSENT {
        let q = format!("{{ span.{} = \"v\" }}", quoted_name(a));
        assert!(f.search_spans(&q).await.is_empty(), "{}", shown(&q));
    }
    f.assert_intact().await;
}

async fn legacy_tag_search_matches_literally(f: Fixture) {
    // logfmt: quoted values with `\"` and `\\` escapes.
    let logfmt = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    for h in &f.strings {
        let only = f.spans_where(|x| x == h);
        for tags in [
            format!("{VALUE_ATTR}={}", logfmt(h)),
            format!("service.name={}", logfmt(h)),
        ] {
            let (status, body) = f
                .get(&format!(
                    "/api/search?tags={}&start={}&end={}&limit=1000&spss=100",
                    enc(&tags),
                    f.start,
                    f.end
                ))
                .await;
            assert_eq!(status, 200, "{}: {body}", shown(&tags));
            assert_eq!(span_ids(&body), only, "{}", shown(&tags));
        }
    }
    for a in ABSENT {
        let tags = format!("{VALUE_ATTR}={}", logfmt(a));
        let (status, body) = f
            .get(&format!(
                "/api/search?tags={}&start={}&end={}",
                enc(&tags),
                f.start,
                f.end
            ))
            .await;
        assert_eq!(status, 200, "{}: {body}", shown(&tags));
        assert!(span_ids(&body).is_empty(), "{}", shown(&tags));
    }
    f.assert_intact().await;
}

fn json_strings(body: &str, key: &str) -> BTreeSet<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key}: {body}"))
        .iter()
        .map(|t| match t {
            Value::String(s) => s.clone(),
            other => other["value"].as_str().unwrap().to_string(),
        })
        .collect()
}

async fn tag_names_and_values_list_hostile_strings_exactly(f: Fixture) {
    let range = format!("start={}&end={}&limit=100000", f.start, f.end);
    let mut all: BTreeSet<String> = f.strings.iter().cloned().collect();
    all.insert(CONTROL.into());
    // Every hostile attribute name is a span tag.
    let (status, body) = f.get(&format!("/api/search/tags?scope=span&{range}")).await;
    assert_eq!(status, 200, "{body}");
    let names = json_strings(&body, "tagNames");
    for h in &all {
        assert!(names.contains(h), "tag names lack {}", shown(h));
    }
    // The values of the value attribute, of a column, and of the service: exactly the strings.
    for tag in [
        format!("span.{VALUE_ATTR}"),
        "span.http.method".into(),
        "resource.service.name".into(),
    ] {
        let (status, body) = f
            .get(&format!("/api/v2/search/tag/{}/values?{range}", enc(&tag)))
            .await;
        assert_eq!(status, 200, "{tag}: {body}");
        assert_eq!(json_strings(&body, "tagValues"), all, "{tag}");
    }
    for (i, h) in f.strings.iter().enumerate() {
        // A hostile attribute name: its one value.
        let tag = format!("span.{}", quoted_name(h));
        let (status, body) = f
            .get(&format!("/api/v2/search/tag/{}/values?{range}", enc(&tag)))
            .await;
        assert_eq!(status, 200, "{}: {body}", shown(&tag));
        assert_eq!(
            json_strings(&body, "tagValues"),
            BTreeSet::from(["v".to_string()]),
            "{}",
            shown(&tag)
        );
        // A hostile value in `q` narrows the values to its row.
        let q = format!("{{ span.http.method = {} }}", lit(h));
        let (status, body) = f
            .get(&format!(
                "/api/v2/search/tag/{}/values?q={}&{range}",
                enc(&format!("span.{VALUE_ATTR}")),
                enc(&q)
            ))
            .await;
        assert_eq!(status, 200, "{}: {body}", shown(&q));
        assert_eq!(
            json_strings(&body, "tagValues"),
            BTreeSet::from([h.clone()]),
            "{} (row {i})",
            shown(&q)
        );
        // The v1 route takes bare names.
        let (status, body) = f
            .get(&format!(
                "/api/search/tag/{}/values?q={}&{range}",
                enc(VALUE_ATTR),
                enc(&q)
            ))
            .await;
        assert_eq!(status, 200, "{}: {body}", shown(&q));
        assert_eq!(
            json_strings(&body, "tagValues"),
            BTreeSet::from([h.clone()]),
            "v1 {}",
            shown(&q)
        );
    }
    for a in ABSENT {
        let tag = format!("span.{}", quoted_name(a));
        let (status, body) = f
            .get(&format!("/api/v2/search/tag/{}/values?{range}", enc(&tag)))
            .await;
        assert_eq!(status, 200, "{}: {body}", shown(&tag));
        assert!(
            json_strings(&body, "tagValues").is_empty(),
            "{}",
            shown(&tag)
        );
    }
    f.assert_intact().await;
}

async fn trace_ids_and_organisation_headers_never_reach_the_store(f: Fixture) {
    let mut strings: Vec<&str> = f.strings.iter().map(String::as_str).collect();
    strings.extend(ABSENT);
    for h in &strings {
        // Trace IDs are hex: anything else is refused before a query is built.
        for v in ["/api/traces/", "/api/v2/traces/"] {
            let (status, body) = f.get(&format!("{v}{}", enc(h))).await;
            assert!(
                matches!(status, 400 | 404),
                "{v}{}: {status} {body}",
                shown(h)
            );
        }
        // A hostile DeepFlow organisation is a 400; a hostile Tempo tenant is not a number,
        // so it names no organisation (X-Org-Id, sent too, wins).
        let bytes = h.as_bytes();
        if reqwest::header::HeaderValue::from_bytes(bytes).is_err() {
            continue;
        }
        let q = format!(
            "/api/search?q={}&start={}&end={}",
            enc(&format!("{{ span.{VALUE_ATTR} = {} }}", lit(h))),
            f.start,
            f.end
        );
        let resp = f
            .client
            .get(format!("{}{q}", f.base))
            .header("X-Org-Id", bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert!(
            status == 400 || (status == 200 && h.trim().parse::<u16>().is_ok()),
            "X-Org-Id {}: {status}",
            shown(h)
        );
        let (status, body) = f.get_with(&q, &[("X-Scope-OrgID", bytes)]).await;
        assert_eq!(status, 200, "X-Scope-OrgID {}: {body}", shown(h));
        assert_eq!(span_ids(&body), f.spans_where(|x| x == *h), "{}", shown(h));
    }
    f.assert_intact().await;
}

async fn deepflow_api_fields_match_literally(f: Fixture) {
    const TRACING: &str = "/v1/stats/querier/L7FlowTracing";
    const COMPLETION: &str = "/v1/stats/querier/tracing-completion-by-external-app-spans";
    let post = |path: &'static str, body: Value| {
        let req = f.request(f.client.post(format!("{}{path}", f.base)).json(&body));
        async move {
            let resp = req.send().await.expect("answered");
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            assert!(status < 500, "{path}: {status} {v}");
            (status, v)
        }
    };
    let spans_of = |v: &Value| -> BTreeSet<String> {
        v["DATA"]["tracing"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|s| s["span_id"].as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut strings: Vec<&str> = f.strings.iter().map(String::as_str).collect();
    strings.extend(ABSENT);
    for h in strings {
        let expected = f.spans_where(|x| x == h && !x.trim().is_empty());
        let (status, v) = post(
            TRACING,
            json!({"time_start": f.start, "time_end": f.end, "database": h, "table": h,
                   "trace_id": h, "region": h}),
        )
        .await;
        assert_eq!(status, 200, "trace_id {}: {v}", shown(h));
        assert_eq!(spans_of(&v), expected, "trace_id {}", shown(h));
        // A hostile `_id` is not a number.
        let (status, v) = post(
            TRACING,
            json!({"time_start": f.start, "time_end": f.end, "database": "flow_log",
                   "table": "l7_flow_log", "_id": h}),
        )
        .await;
        assert!(
            status == 400 || h.trim().parse::<u64>().is_ok(),
            "_id {}: {status} {v}",
            shown(h)
        );
        // Completion: the external span's ids are hostile; DeepFlow's rows of that trace id
        // are found (and returned next to the external span), nothing else.
        let t = f.start * 1_000_000 + 60_000_000;
        let (status, v) = post(
            COMPLETION,
            json!({"app_spans": [{"trace_id": h, "span_id": h, "parent_span_id": h,
                                  "span_kind": 2, "start_time_us": t, "end_time_us": t + 100}]}),
        )
        .await;
        assert_eq!(status, 200, "completion {}: {v}", shown(h));
        let mut found = spans_of(&v);
        found.remove(h);
        assert_eq!(found, expected, "completion {}", shown(h));
    }
    f.assert_intact().await;
}
