//! HTTP robustness: the real server over the embedded store (with a trace in it) answers
//! thousands of generated malformed requests (a deterministic seeded generator, loopback only)
//! on every route: bad and huge paths and trace IDs, percent garbage, bad query parameters,
//! broken TraceQL, wrong methods, bad, oversized and deeply nested bodies, odd headers, and
//! requests no HTTP client would send (written on a raw TCP socket).
//!
//! The properties: no 5xx other than 501 (unsupported TraceQL), no panic anywhere in the
//! process, every 4xx carries a message (plain text, or DeepFlow's JSON envelope on its
//! routes), and the server still answers afterwards. Any 4xx is acceptable: the error model
//! may refine statuses (401, 413, 422, 429…) without touching this test. Two answers may have
//! no body: Tempo's documented empty 404 for a trace that is not there, and the HTTP layer's
//! own refusal of bytes that are not HTTP/1.1 (those never reach a handler).

mod common;

use common::{names, s4_rows, T4};
use deepflow_tempo::config::Config;
use deepflow_tempo::server;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many generated requests one run sends.
const REQUESTS: usize = 10_000;
/// Requests in flight at once.
const CONCURRENCY: usize = 8;
/// A request without an answer after this long counts as a hang (a guard, not a measure).
const HANG_GUARD: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Generator

/// splitmix64: small and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }
}

/// One generated request. `raw`: send it on a bare socket exactly as built; `garbage`: not
/// valid HTTP/1.1, so the HTTP layer (not our handlers) may answer or just close.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    raw: bool,
    garbage: Option<Vec<u8>>,
}

impl Req {
    fn new(method: &str, target: impl Into<Vec<u8>>) -> Req {
        Req {
            method: method.into(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
            raw: false,
            garbage: None,
        }
    }
    /// Valid HTTP/1.1 that reaches the application: no garbage, a request target the HTTP
    /// layer's URI parser accepts, and not CONNECT (whose target must be a host, not a path).
    /// The HTTP layer refuses the rest itself, with a bare status.
    fn well_formed(&self) -> bool {
        self.garbage.is_none()
            && self.method != "CONNECT"
            && actix_web::http::Uri::try_from(self.target.as_slice()).is_ok()
    }

    fn shown(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).to_string();
        match &self.garbage {
            Some(g) => format!(
                "raw bytes {:?}",
                String::from_utf8_lossy(&g[..g.len().min(300)])
            ),
            None => format!(
                "{} {} headers={:?} body({} bytes)={body:?}",
                self.method,
                String::from_utf8_lossy(&self.target[..self.target.len().min(300)]),
                self.headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>(),
                self.body.len()
            ),
        }
    }
}

const PERCENT_GARBAGE: &[&str] = &[
    "%",
    "%%",
    "%zz",
    "%0",
    "%00",
    "%ff",
    "%FF%FE",
    "%c3%28",
    "%e2%82",
    "%2F",
    "%2e%2e",
    "%25",
    "%20",
    "%0d%0a",
    "%5c",
    "%7b%7d",
    "%uD800",
    "%ED%A0%80",
    "%F4%90%80%80",
    "%C0%AF",
];

const UNICODE: &[&str] = &[
    "ü", "✓", "𝔘", "\u{202e}", "\u{feff}", "\u{0}", "ﬀ", "١٢٣", "日本", "\u{fffd}", "é",
];

const TRACE_IDS: &[&str] = &[
    T4,
    "0af7651916cd43dd8448eb211c80319c",
    "64656570666c6f77000000650000002a",
    "64656570666c6f77ffffffffffffffff",
    "64656570666c6f770000000000000000",
    "b7ad6b7169203331",
    "0",
    "00000000000000000000000000000000",
    "ffffffffffffffffffffffffffffffff",
    "f",
    "",
    "0af7651916cd43dd8448eb211c80319c0",
    "0AF7651916CD43DD8448EB211C80319C",
    "xyz",
    "0x1f",
    "-1",
    "..",
    ".",
    "12 34",
    "abc/def",
];

const NUMBERS: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "20",
    "1700000000",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "9223372036854775808",
    "99999999999999999999999",
    "1e9",
    "1.5",
    " 5 ",
    "0x10",
    "NaN",
    "inf",
    "+3",
    "00000000000001",
    "١٢",
    "abc",
];

const DURATIONS: &[&str] = &[
    "",
    "0",
    "1ms",
    "100ms",
    "1s",
    "1.5s",
    "2h30m",
    "-5s",
    "9999999999h",
    "1e3s",
    "abc",
    "5",
    "1µs",
    "1us",
    "1ns",
    "9223372036854775807ns",
    "1y",
    "ms",
    ".s",
    "1d",
];

const QUERIES: &[&str] = &[
    "{}",
    "{ true }",
    "{ .a }",
    "{resource.service.name=\"svc-a\"}",
    "{ span.http.url = \"/api/401\" }",
    "{ .http.method =~ \"G.*\" }",
    "{ name !~ \"(\" }",
    "{ status = error && duration > 1ms }",
    "{ kind = server } >> { kind = client }",
    "{ .a } && { .b } | count() > 1",
    "{} | by(resource.service.name) | count() > 1",
    "{} | select(span.http.url)",
    "{} | rate()",
    "{} | quantile_over_time(duration, .5)",
    "{ .a = 1 } | avg(duration) > 1s",
    "{ duration > 1ms } ~ { true }",
    "{ span:name = \"x\" } | coalesce()",
    "{ trace:id = \"abc\" }",
    "{ nestedSetParent < 0 }",
    "{ .x = nil }",
    "{ .\"a b\" = `c` }",
    "{ 1 + 1 = 2 && -.a < 3 }",
    "{ event:name = \"e\" }",
    "{ childCount > 2 }",
    "{ .a =~ \"[\" }",
    "{ .a =~ \"\\\\\" }",
    "{ .a =~ \"(?i)x\" }",
    "{ .a =~ \"a{1000000}\" }",
    "{ resource.service.name = \"' OR 1=1 --\" }",
    "{ .x = \"{id:UInt64}\" }",
];

const TAG_NAMES: &[&str] = &[
    "resource.service.name",
    "service.name",
    "span.http.url",
    "http.method",
    "name",
    "status",
    "kind",
    "status.code",
    "error",
    "deepflow.l7_protocol",
    ".a",
    "span.\"a b\"",
    "tenant",
    "span:name",
    "trace:id",
    "event:name",
    "duration",
    "",
    "/",
    "values",
    ".",
    "..",
    "span.",
    "a'b",
    "a\"b",
    "{x}",
    "a/values",
];

const OPT_QUERY_KEYS: &[&str] = &[
    "start",
    "end",
    "limit",
    "spss",
    "q",
    "tags",
    "minDuration",
    "maxDuration",
    "scope",
    "",
    "q[]",
    "LIMIT",
    "x",
];

const SCOPES: &[&str] = &[
    "",
    "none",
    "resource",
    "span",
    "intrinsic",
    "event",
    "link",
    "instrumentation",
    "trace",
    "all",
    "RESOURCE",
    "span ",
    "x",
];

/// Percent-encode everything but unreserved characters.
fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A string mutated a little: characters dropped, repeated, swapped or replaced.
fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    const ALPHABET: &[char] = &[
        '{', '}', '(', ')', '"', '`', '\\', '|', '&', '!', '=', '~', '<', '>', '.', ':', ' ', '0',
        '9', 'a', 'z', '%', '+', '-', '\'', '\n', '\t', 'µ', '\u{0}',
    ];
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(4) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => chars.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
            2 if at < chars.len() => {
                let j = rng.below(chars.len());
                chars.swap(at, j);
            }
            _ => {
                let c = if chars.is_empty() {
                    'x'
                } else {
                    chars[rng.below(chars.len())]
                };
                chars.insert(at, c);
            }
        }
    }
    chars.into_iter().collect()
}

/// A value for a query parameter or path segment: real, mutated, garbage, unicode or huge.
fn value(rng: &mut Rng, real: &[&str]) -> String {
    match rng.below(20) {
        0..=13 => rng.pick(real).to_string(),
        14 | 15 => {
            let seed = rng.pick(real);
            mutate(rng, seed)
        }
        16 => rng.pick(NUMBERS).to_string(),
        17 => rng.pick(UNICODE).repeat(1 + rng.below(3)),
        18 => rng.pick(real).repeat(1 + rng.below(300)),
        _ => "x".repeat(rng.below(20_000)),
    }
}

/// Unix seconds around the fixture's data (and a few edge values), as request parameters.
fn times() -> &'static [&'static str] {
    static TIMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    TIMES.get_or_init(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut v: Vec<&'static str> = [now - 3600, now - 900, now - 300, now, now + 60]
            .iter()
            .map(|t| &*Box::leak(t.to_string().into_boxed_str()))
            .collect();
        v.extend(["", "0", "4294967295"]);
        v
    })
}

const LIMITS: &[&str] = &["", "1", "2", "5", "20", "100", "262144", "262145", "0"];
const SPSS: &[&str] = &["", "0", "1", "3", "10", "100", "101"];

/// A query-string component: usually encoded, sometimes raw percent garbage.
fn component(rng: &mut Rng, v: &str) -> (String, bool) {
    match rng.below(16) {
        0 => (format!("{v}{}", rng.pick(PERCENT_GARBAGE)), true),
        1 => (v.to_string(), true),
        _ => (enc(v), false),
    }
}

/// A query string for a route (`keys`: the parameters it reads, with their value pools).
fn query_string(rng: &mut Rng, keys: &[(&str, &[&str])]) -> (String, bool) {
    let mut parts = Vec::new();
    let mut raw = false;
    for (k, pool) in keys {
        if rng.chance(55) {
            let v = value(rng, pool);
            let (v, r) = component(rng, &v);
            raw |= r;
            parts.push(format!("{k}={v}"));
            if rng.chance(3) {
                let again = value(rng, pool);
                parts.push(format!("{k}={}", enc(&again)));
            }
        }
    }
    if rng.chance(10) {
        let k = rng.pick(OPT_QUERY_KEYS);
        parts.push(format!("{k}={}", enc(&value(rng, NUMBERS))));
    }
    if rng.chance(5) {
        parts.push(
            rng.pick(&["&", "=", "==", "&&&", "a", "=b", "%", "?"])
                .to_string(),
        );
    }
    (parts.join("&"), raw)
}

/// The fixture's rows as the generator aims at them: first start time (µs) and row ids.
struct Aim {
    t0_us: i64,
    ids: Vec<u64>,
}

static AIM: std::sync::OnceLock<Aim> = std::sync::OnceLock::new();

/// A valid DeepFlow request aimed at the fixture's trace, with extreme numbers mixed in: the
/// tracing engine runs on it (validation alone would not reach the engine's arithmetic).
fn engine_body(rng: &mut Rng, completion: bool) -> Vec<u8> {
    use serde_json::json;
    let aim = AIM.get().expect("fixture loaded");
    let t0 = aim.t0_us;
    let time_us = |rng: &mut Rng| -> i64 {
        match rng.below(10) {
            0 => 0,
            1 => i64::MAX,
            2 => i64::MAX - rng.below(100_000) as i64,
            3 => i64::MAX / 2,
            4 => t0 + (rng.next() % (1 << 40)) as i64,
            _ => t0 + rng.below(20_000) as i64 - 2_000,
        }
    };
    let tolerance = |rng: &mut Rng| match rng.below(5) {
        0 => json!(1),
        1 => json!(i64::MAX),
        2 => json!(10_000_000_000_000i64),
        _ => json!(50_000 + rng.below(1_000_000)),
    };
    let span_ids = [
        "aaaa000000000001",
        "bbbb000000000001",
        "bbbb000000000002",
        "bbbb000000000003",
        "cccc000000000001",
        "",
    ];
    if completion {
        let spans: Vec<serde_json::Value> = (0..1 + rng.below(6))
            .map(|_| {
                let (a, b) = (time_us(rng), time_us(rng));
                json!({
                    "trace_id": if rng.chance(80) { T4 } else { "ffff" },
                    "span_id": span_ids[rng.below(span_ids.len())],
                    "parent_span_id": span_ids[rng.below(span_ids.len())],
                    "span_kind": rng.below(6),
                    "start_time_us": a.min(b),
                    "end_time_us": if rng.chance(90) { a.max(b) } else { a.min(b) },
                })
            })
            .collect();
        let mut v = json!({"app_spans": spans, "max_iteration": 1 + rng.below(40)});
        if rng.chance(50) {
            v["network_delay_us"] = tolerance(rng);
        }
        if rng.chance(30) {
            v["signal_sources"] = json!(["otel"]);
        }
        if rng.chance(30) {
            v["debug"] = json!(true);
        }
        v.to_string().into_bytes()
    } else {
        let t0_s = t0 / 1_000_000;
        let window = |rng: &mut Rng| match rng.below(6) {
            0 => 0,
            1 => i64::MAX,
            2 => 4_294_967_295,
            _ => t0_s + rng.below(1200) as i64 - 600,
        };
        let (a, b) = (window(rng), window(rng));
        let mut v = json!({
            "time_start": a.min(b), "time_end": a.max(b),
            "database": "flow_log", "table": "l7_flow_log",
            "max_iteration": rng.below(40),
            "has_attributes": rng.below(2),
        });
        if rng.chance(80) {
            v["_id"] = json!(aim.ids[rng.below(aim.ids.len())].to_string());
        } else {
            v["trace_id"] = json!(T4);
        }
        if rng.chance(50) {
            v["network_delay_us"] = tolerance(rng);
        }
        if rng.chance(50) {
            v["host_clock_offset_us"] = tolerance(rng);
        }
        if rng.chance(30) {
            v["debug"] = json!(true);
        }
        v.to_string().into_bytes()
    }
}

/// A JSON body of the DeepFlow routes: a real request, mutated, deep, huge or not JSON.
fn deepflow_body(rng: &mut Rng, completion: bool) -> Vec<u8> {
    use serde_json::{json, Value};
    let span = json!({"trace_id": T4, "span_id": "1111111111111111", "parent_span_id": "",
                      "span_kind": 2, "start_time_us": 1_700_000_000_000_000i64,
                      "end_time_us": 1_700_000_000_020_000i64});
    let base = if completion {
        json!({"app_spans": [span], "max_iteration": 3, "network_delay_us": 50000,
               "signal_sources": ["otel"], "debug": true})
    } else {
        json!({"time_start": 1_700_000_000i64, "time_end": 1_700_000_600i64,
               "database": "flow_log", "table": "l7_flow_log", "_id": "7305834583944527873",
               "trace_id": T4, "has_attributes": 1, "max_iteration": 2, "debug": true,
               "network_delay_us": 1, "host_clock_offset_us": 1})
    };
    let odd_values: Vec<Value> = vec![
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1e300),
        json!(-0.0),
        json!(1.5),
        json!(""),
        json!("x"),
        json!("' OR 1=1 --"),
        json!("18446744073709551616"),
        json!("-9223372036854775808"),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"a": 1}),
        json!("ü✓\u{0}"),
    ];
    match rng.below(12) {
        0..=4 => {
            let mut v = base;
            let obj = v.as_object_mut().unwrap();
            let keys: Vec<String> = obj.keys().cloned().collect();
            for _ in 0..1 + rng.below(3) {
                let k = &keys[rng.below(keys.len())];
                match rng.below(4) {
                    0 => {
                        obj.remove(k);
                    }
                    1 => {
                        obj.insert(
                            k.to_uppercase(),
                            odd_values[rng.below(odd_values.len())].clone(),
                        );
                    }
                    2 => {
                        obj.insert(format!("{k}_rogue"), json!(1));
                    }
                    _ => {
                        obj.insert(k.clone(), odd_values[rng.below(odd_values.len())].clone());
                    }
                }
            }
            if completion && rng.chance(30) {
                let spans = obj.get_mut("app_spans").and_then(Value::as_array_mut);
                if let Some(spans) = spans {
                    if let Some(Value::Object(s)) = spans.first_mut() {
                        let ks: Vec<String> = s.keys().cloned().collect();
                        let k = &ks[rng.below(ks.len())];
                        s.insert(k.clone(), odd_values[rng.below(odd_values.len())].clone());
                    }
                    if let Some(first) = spans.first().cloned() {
                        for _ in 0..rng.below(3) * 50 {
                            spans.push(first.clone());
                        }
                    }
                }
            }
            v.to_string().into_bytes()
        }
        5 => mutate(rng, &base.to_string()).into_bytes(),
        6 => {
            let depth = [10, 127, 128, 129, 1000, 100_000][rng.below(6)];
            let (open, close) = if rng.chance(50) {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
        }
        7 => {
            let mut v = base;
            v["filler"] = json!("y".repeat(rng.below(1 << 20)));
            v.to_string().into_bytes()
        }
        8 => (0..rng.below(400)).map(|_| rng.next() as u8).collect(),
        9 => rng
            .pick(&[
                "",
                "null",
                "[]",
                "1",
                "\"s\"",
                "{",
                "{}",
                "{\"time_start\":}",
                "\u{feff}{}",
                "{\"a\":1,\"a\":2}",
                "{\"time_start\": 1e999}",
                "{\"app_spans\": [{}]}",
                "{\"app_spans\": null}",
            ])
            .as_bytes()
            .to_vec(),
        10 => {
            let mut v = base;
            v["debug"] = json!(true);
            v["max_iteration"] = json!(rng.pick(&["0", "1", "30", "1000", "4294967296"]));
            v.to_string().into_bytes()
        }
        _ => b"time_start=1&time_end=2".to_vec(),
    }
}

const TRACING: &str = "/v1/stats/querier/L7FlowTracing";
const COMPLETION: &str = "/v1/stats/querier/tracing-completion-by-external-app-spans";
const PARAMS: &str = "/v1/stats/querier/TracingAlgoParams";

/// The route part of one request (method, path and query, body).
fn route(rng: &mut Rng) -> Req {
    let range: &[(&str, &[&str])] = &[("start", times()), ("end", times())];
    match rng.below(16) {
        0 => {
            let p = rng.pick(&["/api/echo", "/ready", "/api/status/buildinfo", PARAMS]);
            let (q, raw) = query_string(rng, range);
            let mut r = Req::new("GET", format!("{p}?{q}"));
            r.raw = raw;
            r
        }
        1..=3 => {
            let v = rng.pick(&["/api/traces/", "/api/v2/traces/"]);
            let id = value(rng, TRACE_IDS);
            let (id, raw_id) = match rng.below(6) {
                0 => (format!("{id}{}", rng.pick(PERCENT_GARBAGE)), true),
                1 => (id.clone(), true),
                2 => (format!("{id}/extra"), false),
                _ => (enc(&id), false),
            };
            let (q, raw_q) = query_string(rng, range);
            let mut r = Req::new("GET", format!("{v}{id}?{q}"));
            r.raw = raw_id || raw_q;
            r
        }
        4..=7 => {
            let keys: &[(&str, &[&str])] = &[
                ("q", QUERIES),
                (
                    "tags",
                    &[
                        "service.name=svc-a",
                        "name=\"a b\"",
                        "status=error",
                        "error=true",
                        "a=1 a=2",
                        "x=\"unterminated",
                        "=v",
                        "k",
                        "status.code=bad",
                        "http.url=\"/api/401\" service.name=svc-b",
                        "\"=\"",
                        "a\\=b",
                    ],
                ),
                ("start", times()),
                ("end", times()),
                ("limit", LIMITS),
                ("spss", SPSS),
                ("minDuration", DURATIONS),
                ("maxDuration", DURATIONS),
            ];
            let (q, raw) = query_string(rng, keys);
            let mut r = Req::new("GET", format!("/api/search?{q}"));
            r.raw = raw;
            r
        }
        8 | 9 => {
            let p = rng.pick(&["/api/search/tags", "/api/v2/search/tags"]);
            let keys: &[(&str, &[&str])] = &[
                ("scope", SCOPES),
                ("start", times()),
                ("end", times()),
                ("limit", LIMITS),
                ("q", QUERIES),
            ];
            let (q, raw) = query_string(rng, keys);
            let mut r = Req::new("GET", format!("{p}?{q}"));
            r.raw = raw;
            r
        }
        10..=12 => {
            let p = rng.pick(&["/api/search/tag/", "/api/v2/search/tag/"]);
            let name = value(rng, TAG_NAMES);
            let (name, raw_name) = component(rng, &name);
            let tail = rng.pick(&[
                "/values",
                "/values",
                "/values",
                "",
                "/value",
                "/values/",
                "/values/values",
            ]);
            let keys: &[(&str, &[&str])] = &[
                ("q", QUERIES),
                ("start", times()),
                ("end", times()),
                ("limit", LIMITS),
            ];
            let (q, raw_q) = query_string(rng, keys);
            let mut r = Req::new("GET", format!("{p}{name}{tail}?{q}"));
            r.raw = raw_name || raw_q;
            r
        }
        13 | 14 => {
            let completion = rng.chance(50);
            let mut r = Req::new("POST", if completion { COMPLETION } else { TRACING });
            r.body = if rng.chance(40) {
                engine_body(rng, completion)
            } else {
                deepflow_body(rng, completion)
            };
            r.headers
                .push(("content-type".into(), b"application/json".to_vec()));
            r
        }
        _ => {
            // Paths nobody routes: traversal, doubled slashes, unicode, huge.
            let p = match rng.below(6) {
                0 => "/api/../api/echo".to_string(),
                1 => format!("//api//search?q={}", enc("{}")),
                2 => format!("/{}", rng.pick(UNICODE)),
                3 => format!("/api/{}", "a/".repeat(rng.below(3000))),
                4 => format!("/v1/stats/querier/{}", rng.pick(PERCENT_GARBAGE)),
                _ => format!("/{}", mutate(rng, "api/search/tags")),
            };
            let mut r = Req::new("GET", p);
            r.raw = true;
            r
        }
    }
}

/// Odd methods, headers and bodies on top of a route.
fn decorate(rng: &mut Rng, mut r: Req) -> Req {
    if rng.chance(12) {
        r.method = rng
            .pick(&[
                "GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "get",
                "CONNECT",
            ])
            .to_string();
        if matches!(r.method.as_str(), "FOO" | "get" | "CONNECT" | "TRACE") {
            r.raw = true;
        }
    }
    if rng.chance(25) {
        let orgs = [
            "1",
            "0",
            "2",
            "9999",
            "10000",
            "65536",
            "-1",
            "",
            " 3 ",
            "abc",
            "1.0",
            "single-tenant",
            "١",
            "99999999999999999999",
        ];
        let name = if rng.chance(50) {
            "X-Scope-OrgID"
        } else {
            "X-Org-Id"
        };
        r.headers
            .push((name.into(), orgs[rng.below(orgs.len())].as_bytes().to_vec()));
        if rng.chance(10) {
            r.headers.push((name.into(), b"2".to_vec()));
        }
    }
    if rng.chance(15) {
        let v = rng.pick(&[
            "application/protobuf",
            "application/json",
            "*/*",
            "text/html",
            "application/protobuf;q=0",
            "garbage/",
            ",,,;",
        ]);
        r.headers.push(("Accept".into(), v.as_bytes().to_vec()));
    }
    if rng.chance(10) {
        let v = rng.pick(&[
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin1",
            "garbage",
            "",
        ]);
        r.headers.retain(|(k, _)| k != "content-type");
        r.headers
            .push(("content-type".into(), v.as_bytes().to_vec()));
    }
    if rng.chance(5) {
        // Header values no client would send: obs-text bytes.
        r.headers.push(("X-Org-Id".into(), vec![0xff, b'1', 0x80]));
        r.raw = true;
    }
    if rng.chance(5) && r.body.is_empty() {
        let completion = rng.chance(50);
        r.body = deepflow_body(rng, completion);
    }
    if rng.chance(3) {
        r.headers
            .push(("Accept-Encoding".into(), b"gzip, br, x".to_vec()));
    }
    r
}

/// Bytes that are not valid HTTP/1.1 (only a raw socket sends them).
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let line = |m: &str, t: &str, v: &str| format!("{m} {t} {v}\r\nHost: x\r\n\r\n").into_bytes();
    match rng.below(14) {
        0 => line("GET", "/api/echo", "HTTP/9.9"),
        1 => b"GARBAGE\r\n\r\n".to_vec(),
        2 => b"GET /api/echo HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
        3 => b"GET /api/echo HTTP/1.1\nHost: x\n\n".to_vec(),
        4 => format!(
            "GET /api/echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(1 << 17)
        )
        .into_bytes(),
        5 => {
            let mut s = "GET /api/echo HTTP/1.1\r\nHost: x\r\n".to_string();
            for i in 0..200 {
                s.push_str(&format!("X-H{i}: v\r\n"));
            }
            s.push_str("\r\n");
            s.into_bytes()
        }
        6 => format!("POST {TRACING} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{{}}")
            .into_bytes(),
        7 => format!(
            "POST {TRACING} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{{}}\r\n0\r\n\r\n"
        )
        .into_bytes(),
        8 => format!(
            "POST {TRACING} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        )
        .into_bytes(),
        9 => format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(1 << 17)).into_bytes(),
        10 => b"GET /api/echo HTTP/1.1\r\nHost: x\r\nX\x00Y: 1\r\n\r\n".to_vec(),
        11 => (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        12 => b"GET api/echo HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        _ => format!(
            "POST {COMPLETION} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{}}"
        )
        .into_bytes(),
    }
}

fn generate(rng: &mut Rng) -> Req {
    if rng.chance(4) {
        let mut r = Req::new("GET", "/");
        r.garbage = Some(garbage(rng));
        r.raw = true;
        return r;
    }
    let r = route(rng);
    decorate(rng, r)
}

// ---------------------------------------------------------------------------------------------
// Transport

#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    /// `Content-Encoding` (the body is then compressed).
    encoding: String,
    body: Vec<u8>,
}

/// A header block's value (case-insensitive name).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || eol + 2 + size > b.len() {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

/// Send bytes on a fresh connection and read the answer until the server closes it;
/// `half_close`: end the sending side once written (for bytes that may leave the server
/// waiting for more). `None`: no HTTP answer at all.
async fn raw_exchange(addr: &str, bytes: Vec<u8>, half_close: bool) -> Option<Answer> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    // Write concurrently: the server may answer (and stop reading) before the body is sent.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&bytes).await;
        let _ = wr.flush().await;
        if half_close {
            let _ = wr.shutdown().await;
        }
        wr
    });
    let mut buf = Vec::new();
    let _ = rd.read_to_end(&mut buf).await;
    drop(writer.await);
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut body = buf[head_end + 4..].to_vec();
    if header(&head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    } else if let Some(n) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.truncate(n);
    }
    Some(Answer {
        status,
        content_type: header(&head, "content-type").unwrap_or("").to_string(),
        encoding: header(&head, "content-encoding").unwrap_or("").to_string(),
        body,
    })
}

fn raw_bytes(r: &Req) -> Vec<u8> {
    if let Some(g) = &r.garbage {
        return g.clone();
    }
    let mut out = Vec::new();
    out.extend_from_slice(r.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(&r.target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in &r.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", r.body.len()).as_bytes());
    out.extend_from_slice(&r.body);
    out
}

async fn client_exchange(client: &reqwest::Client, base: &str, r: &Req) -> Option<Answer> {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
    let url = format!("{base}{}", String::from_utf8_lossy(&r.target));
    let mut req = client.request(method, url);
    for (k, v) in &r.headers {
        req = req.header(k.as_str(), v.as_slice());
    }
    if !r.body.is_empty() {
        req = req.body(r.body.clone());
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (content_type, encoding) = (header("content-type"), header("content-encoding"));
    let body = resp.bytes().await.ok()?.to_vec();
    Some(Answer {
        status,
        content_type,
        encoding,
        body,
    })
}

// ---------------------------------------------------------------------------------------------
// The run

/// Panics anywhere in this process (handlers run on the server's worker threads).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
}

/// What is wrong with an answer, if anything.
fn judge(r: &Req, a: &Option<Answer>) -> Option<String> {
    let Some(a) = a else {
        // Only bytes that are not HTTP, or a body the server refused mid-upload, may go
        // unanswered; a well-formed request always gets an answer.
        return (r.garbage.is_none() && r.body.len() < (16 << 20)).then(|| "no answer".into());
    };
    if a.status >= 500 && a.status != 501 {
        return Some(format!("status {}", a.status));
    }
    if !(400..500).contains(&a.status) || r.method == "HEAD" || !r.well_formed() {
        return None;
    }
    // Tempo's answer for a trace that is not there: 404 with an empty body (documented).
    let trace_route =
        r.target.starts_with(b"/api/traces/") || r.target.starts_with(b"/api/v2/traces/");
    if a.status == 404 && r.method == "GET" && trace_route {
        return None;
    }
    if a.body.iter().all(u8::is_ascii_whitespace) {
        return Some(format!("status {} with an empty body", a.status));
    }
    let compressed = !a.encoding.is_empty() && a.encoding != "identity";
    let deepflow_envelope = a.content_type.starts_with("application/json")
        && (compressed
            || serde_json::from_slice::<serde_json::Value>(&a.body)
                .is_ok_and(|v| v["OPT_STATUS"].is_string() && v["OPT_STATUS"] != "SUCCESS"));
    if !a.content_type.starts_with("text/plain") && !deepflow_envelope {
        return Some(format!(
            "status {} with content type {:?}",
            a.status, a.content_type
        ));
    }
    None
}

/// The server over the embedded store holding S4 (with hostile attribute names and values)
/// from ten minutes ago; its address. Also aims the generator at the rows.
async fn start_server() -> String {
    let (store, org) = common::sqlite_store().await;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        - 600_000_000;
    let mut rows = s4_rows(t0);
    for r in rows.iter_mut().filter(|r| r.observation_point == "s-app") {
        r.attribute_names = vec!["tenant".into(), "' OR 1=1 --".into()];
        r.attribute_values = vec!["acme".into(), "{id:UInt64}".into()];
    }
    store.insert_rows(org, &rows).await.unwrap();
    store.insert_names(org, &names()).await.unwrap();
    let _ = AIM.set(Aim {
        t0_us: t0,
        ids: rows.iter().map(|r| r._id).collect(),
    });
    let (srv, addrs) =
        server::bind(server::app_state(&Config::default(), store), "127.0.0.1:0").unwrap();
    tokio::spawn(srv);
    addrs[0].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_requests_get_client_errors() {
    count_panics();
    // Fixed by default; HTTP_FUZZ_SEED and HTTP_FUZZ_REQUESTS explore further by hand.
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("HTTP_FUZZ_SEED").unwrap_or(0x5eed_f022);
    let count = env("HTTP_FUZZ_REQUESTS").map_or(REQUESTS, |n| n as usize);
    let addr = start_server().await;
    let base = format!("http://{addr}");
    let client = reqwest::Client::builder()
        .timeout(HANG_GUARD)
        .build()
        .unwrap();

    let mut rng = Rng(seed);
    let mut requests: Vec<Req> = (0..count).map(|_| generate(&mut rng)).collect();
    // Bodies over the DeepFlow routes' limit, through a client and on a raw socket.
    for (i, path) in [TRACING, COMPLETION, "/api/search"].into_iter().enumerate() {
        let mut r = Req::new("POST", path);
        r.body = format!("{{\"filler\": \"{}\"}}", "z".repeat(17 << 20)).into_bytes();
        r.raw = i == 1;
        requests.push(r);
    }
    let count = requests.len();
    let raw_count = requests.iter().filter(|r| r.raw).count();
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let statuses = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        (bool, u16),
        usize,
    >::new()));
    let slowest = Arc::new(std::sync::Mutex::new(Vec::new()));
    futures::stream::iter(requests)
        .for_each_concurrent(CONCURRENCY, |r| {
            let (client, base, addr) = (client.clone(), base.clone(), addr.clone());
            let (failures, statuses) = (failures.clone(), statuses.clone());
            let slowest = slowest.clone();
            async move {
                let exchange = async {
                    if r.raw {
                        raw_exchange(&addr, raw_bytes(&r), r.garbage.is_some()).await
                    } else {
                        client_exchange(&client, &base, &r).await
                    }
                };
                let t = std::time::Instant::now();
                let answer = tokio::time::timeout(HANG_GUARD, exchange)
                    .await
                    .unwrap_or(None);
                slowest.lock().unwrap().push((t.elapsed(), r.shown()));
                if let Some(a) = &answer {
                    let key = (r.well_formed(), a.status);
                    *statuses.lock().unwrap().entry(key).or_default() += 1;
                }
                if let Some(why) = judge(&r, &answer) {
                    let body = answer
                        .as_ref()
                        .map(|a| {
                            String::from_utf8_lossy(&a.body[..a.body.len().min(300)]).to_string()
                        })
                        .unwrap_or_default();
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{why}: {} -> {body:?}", r.shown()));
                }
            }
        })
        .await;
    eprintln!(
        "{count} requests from seed {seed} ({raw_count} on raw sockets); (well formed, status): count {:?}",
        statuses.lock().unwrap()
    );
    let mut slow = slowest.lock().unwrap().clone();
    slow.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (d, r) in slow.iter().take(10) {
        eprintln!("{d:?} {}", &r[..r.len().min(400)]);
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {count} requests from seed {seed} failed; the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked");

    // Still serving, and still right.
    let echo = client.get(format!("{base}/api/echo")).send().await.unwrap();
    assert_eq!(echo.status(), 200);
    assert_eq!(echo.text().await.unwrap(), "echo\n");
    let t = client
        .get(format!("{base}/api/v2/traces/{T4}"))
        .send()
        .await
        .unwrap();
    assert_eq!(t.status(), 200);
}

/// Requests this generator once found crashing a handler (a panic, so no answer), kept with
/// their fixes: each now gets its normal answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_findings_answer_normally() {
    count_panics();
    let base = format!("http://{}", start_server().await);
    let t0 = AIM.get().unwrap().t0_us;
    let client = reqwest::Client::new();
    // traceql/plan.rs: a duration bound near i64::MAX overflowed when rounded up to µs.
    for q in [
        "minDuration=9223372036854775807ns".to_string(),
        format!(
            "maxDuration=9223372036854775807ns&start={}",
            t0 / 1_000_000 - 60
        ),
        format!("q={}", enc("{ duration < 9223372036854775807ns }")),
    ] {
        let r = client
            .get(format!("{base}/api/search?{q}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{q}: no answer: {e}"));
        assert_eq!(r.status(), 200, "{q}");
    }
    // autotrace/output.rs: a second span tree ending at i64::MAX overflowed the check of
    // whether it overlaps the first one.
    let body = serde_json::json!({"app_spans": [
        {"trace_id": T4, "span_id": "aaaa000000000001", "parent_span_id": "", "span_kind": 2,
         "start_time_us": t0, "end_time_us": t0 + 10_000},
        {"trace_id": T4, "span_id": "cccc000000000001", "parent_span_id": "", "span_kind": 2,
         "start_time_us": t0, "end_time_us": i64::MAX},
    ]});
    let r = client
        .post(format!("{base}{COMPLETION}"))
        .json(&body)
        .send()
        .await
        .expect("completion answered");
    assert_eq!(r.status(), 200);
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a handler panicked");
}
