//! Tempo's search routes: `/api/search` (TraceQL and legacy tag search), tag names
//! (`/api/search/tags`, `/api/v2/search/tags`) and tag values (`/api/search/tag/<name>/values`,
//! `/api/v2/search/tag/<name>/values`). Parse and validate parameters as Tempo does, call the
//! executor or the store, encode as jsonpb JSON or protobuf.

use super::{negotiate, org_of, with_server_timing, AppState};
use crate::error::ApiError;
use crate::query::search::{self, SearchRequest};
use crate::store::{Col, Facet, Filter, FlowQuery, TimeWindow};
use crate::tempo::pb;
use crate::traceql::{self, Attribute, Intrinsic, Scope};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::collections::HashMap;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::get("/api/search", search_route))
        .service(super::get("/api/search/tags", tags_v1))
        .service(super::get("/api/v2/search/tags", tags_v2))
        .service(super::get("/api/search/tag/{rest:.*}", tag_values_v1))
        .service(super::get("/api/v2/search/tag/{rest:.*}", tag_values_v2));
}

/// The intrinsic tags Tempo lists (scope `intrinsic`).
pub const INTRINSIC_TAGS: &[&str] = &[
    "duration",
    "name",
    "status",
    "statusMessage",
    "kind",
    "rootServiceName",
    "rootName",
    "traceDuration",
    "event:name",
    "event:timeSinceStart",
    "link:spanID",
    "link:traceID",
    "instrumentation:name",
    "instrumentation:version",
    "trace:id",
    "span:id",
    "span:parentID",
    "span:status",
    "span:statusMessage",
    "span:duration",
    "span:name",
    "span:kind",
    "trace:rootName",
    "trace:rootService",
    "trace:duration",
];

/// Resource attributes every DeepFlow span can have.
pub const RESOURCE_TAGS: &[&str] = &[
    "service.name",
    "service.instance.id",
    "k8s.pod.name",
    "k8s.node.name",
    "host.name",
    "process.pid",
    "deepflow.agent_id",
];

/// Span attributes derived from DeepFlow's columns.
pub const SPAN_TAGS: &[&str] = &[
    "http.method",
    "http.url",
    "http.target",
    "http.host",
    "http.status_code",
    "db.system",
    "db.statement",
    "db.operation",
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "client.address",
    "server.address",
    "server.port",
    "deepflow.observation_point",
    "deepflow.signal_source",
    "deepflow.l7_protocol",
    "deepflow.biz_protocol",
    "deepflow.request_type",
    "deepflow.request_domain",
    "deepflow.request_resource",
    "deepflow.endpoint",
    "deepflow.response_code",
    "deepflow.response_status",
    "deepflow.response_exception",
    "deepflow.agent_id",
    "deepflow.x_request_id_0",
    "deepflow.x_request_id_1",
    "deepflow.trace_id",
    "deepflow.req_tcp_seq",
    "deepflow.resp_tcp_seq",
    "deepflow.syscall_trace_id_request",
    "deepflow.syscall_trace_id_response",
    "deepflow.process_kname",
    "deepflow.tap",
];

type Params = web::Query<HashMap<String, String>>;

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn uint(p: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    match p.get(name).map(|s| s.trim()) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<u32>()
            .map(|v| Some(v as u64))
            .map_err(|_| ApiError::BadRequest(format!("invalid {name}: {s:?}"))),
    }
}

/// `start`/`end` (unix seconds, uint32): both 0 = the default window back from now.
fn window(p: &HashMap<String, String>, default_s: u64, max_s: u64) -> Result<(i64, i64), ApiError> {
    let start = uint(p, "start")?.unwrap_or(0) as i64;
    let end = uint(p, "end")?.unwrap_or(0) as i64;
    if start == 0 && end == 0 {
        let now = now_s();
        return Ok((now - default_s as i64, now));
    }
    let end = if end == 0 { now_s() } else { end };
    if end <= start {
        return Err(ApiError::BadRequest(format!(
            "http parameter start must be before end. received start={start} end={end}"
        )));
    }
    if (end - start) as u64 > max_s {
        return Err(ApiError::BadRequest(format!(
            "range specified by start and end exceeds {max_s} seconds. received start={start} end={end}"
        )));
    }
    Ok((start, end))
}

/// Parse logfmt `k=v k2="v 2"`.
fn logfmt(s: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        let value = if chars.next_if_eq(&'=').is_some() {
            if chars.next_if_eq(&'"').is_some() {
                let mut v = String::new();
                loop {
                    match chars.next() {
                        Some('\\') => v.extend(chars.next()),
                        Some('"') => break,
                        Some(c) => v.push(c),
                        None => {
                            return Err(ApiError::BadRequest(
                                "invalid tags: unterminated quote".into(),
                            ))
                        }
                    }
                }
                v
            } else {
                std::iter::from_fn(|| chars.next_if(|c| !c.is_whitespace())).collect()
            }
        } else {
            String::new()
        };
        if key.is_empty() {
            return Err(ApiError::BadRequest(format!("invalid tags: {s:?}")));
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(ApiError::BadRequest(format!(
                "invalid tags: duplicate key {key:?}"
            )));
        }
        out.push((key, value));
    }
    Ok(out)
}

fn quote(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into())
}

/// The TraceQL equivalent of a legacy tag search.
fn legacy_query(p: &HashMap<String, String>) -> Result<String, ApiError> {
    let mut conds = Vec::new();
    if let Some(tags) = p.get("tags") {
        for (k, v) in logfmt(tags)? {
            conds.push(match k.as_str() {
                "name" => format!("name = {}", quote(&v)),
                "status.code" | "status" => match v.as_str() {
                    "error" | "ok" | "unset" => format!("status = {v}"),
                    _ => return Err(ApiError::BadRequest(format!("invalid tags: status {v:?}"))),
                },
                "error" if v == "true" => "status = error".into(),
                "service.name" => format!("resource.service.name = {}", quote(&v)),
                _ => format!(".{} = {}", traceql_name(&k), quote(&v)),
            });
        }
    }
    let dur = |name: &str| -> Result<Option<i64>, ApiError> {
        match p.get(name).map(|s| s.trim()) {
            None | Some("") => Ok(None),
            Some(s) => traceql::duration::parse_duration(s)
                .map(Some)
                .ok_or_else(|| ApiError::BadRequest(format!("invalid {name}: {s:?}"))),
        }
    };
    let (min, max) = (dur("minDuration")?, dur("maxDuration")?);
    if let (Some(a), Some(b)) = (min, max) {
        if a > b {
            return Err(ApiError::BadRequest(
                "invalid maxDuration: must be greater than minDuration".into(),
            ));
        }
    }
    if let Some(a) = min {
        conds.push(format!(
            "duration >= {}",
            traceql::duration::format_duration(a)
        ));
    }
    if let Some(b) = max {
        conds.push(format!(
            "duration <= {}",
            traceql::duration::format_duration(b)
        ));
    }
    Ok(format!("{{{}}}", conds.join(" && ")))
}

/// An attribute name as a TraceQL identifier (quoted when it has unusual characters).
fn traceql_name(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        k.to_string()
    } else {
        quote(k)
    }
}

fn search_json(r: &pb::SearchResponse) -> Value {
    let kv =
        |kv: &opentelemetry_proto::tonic::common::v1::KeyValue| crate::tempo::json::key_value(kv);
    let span = |s: &pb::Span| {
        let mut o = json!({"spanID": s.span_id});
        if !s.name.is_empty() {
            o["name"] = json!(s.name);
        }
        o["startTimeUnixNano"] = json!(s.start_time_unix_nano.to_string());
        if s.duration_nanos != 0 {
            o["durationNanos"] = json!(s.duration_nanos.to_string());
        }
        if !s.attributes.is_empty() {
            o["attributes"] = Value::Array(s.attributes.iter().map(kv).collect());
        }
        o
    };
    let set = |s: &pb::SpanSet| {
        let mut o =
            json!({"spans": s.spans.iter().map(span).collect::<Vec<_>>(), "matched": s.matched});
        if !s.attributes.is_empty() {
            o["attributes"] = Value::Array(s.attributes.iter().map(kv).collect());
        }
        o
    };
    let traces: Vec<Value> = r
        .traces
        .iter()
        .map(|t| {
            let mut o = json!({
                "traceID": t.trace_id,
                "rootServiceName": t.root_service_name,
                "startTimeUnixNano": t.start_time_unix_nano.to_string(),
            });
            if !t.root_trace_name.is_empty() {
                o["rootTraceName"] = json!(t.root_trace_name);
            }
            if t.duration_ms != 0 {
                o["durationMs"] = json!(t.duration_ms);
            }
            if let Some(s) = &t.span_set {
                o["spanSet"] = set(s);
            }
            if !t.span_sets.is_empty() {
                o["spanSets"] = Value::Array(t.span_sets.iter().map(set).collect());
            }
            o
        })
        .collect();
    let m = r.metrics.unwrap_or_default();
    let mut metrics = json!({});
    if m.inspected_traces != 0 {
        metrics["inspectedTraces"] = json!(m.inspected_traces);
    }
    if m.inspected_spans != 0 {
        metrics["inspectedSpans"] = json!(m.inspected_spans.to_string());
    }
    if m.completed_jobs != 0 {
        metrics["completedJobs"] = json!(m.completed_jobs);
        metrics["totalJobs"] = json!(m.total_jobs);
    }
    let mut out = json!({ "metrics": metrics });
    if !traces.is_empty() {
        out["traces"] = Value::Array(traces);
    }
    out
}

async fn search_route(
    req: HttpRequest,
    state: web::Data<AppState>,
    p: Params,
) -> Result<HttpResponse, ApiError> {
    let cfg = &state.search;
    if p.contains_key("q") && p.contains_key("tags") {
        return Err(ApiError::BadRequest(
            "invalid request: can't specify tags and q in the same query".into(),
        ));
    }
    let limit = match p.get("limit").map(|s| s.trim()) {
        None | Some("") => cfg.default_limit as u64,
        Some("0") => {
            return Err(ApiError::BadRequest(
                "invalid limit: must be a positive number".into(),
            ))
        }
        Some(_) => uint(&p, "limit")?.unwrap_or(cfg.default_limit as u64),
    };
    if limit > cfg.max_limit as u64 {
        return Err(ApiError::BadRequest(format!(
            "limit {limit} exceeds max limit {}",
            cfg.max_limit
        )));
    }
    let spss = match uint(&p, "spss")? {
        None | Some(0) => cfg.default_spss as u64,
        Some(v) if v > cfg.max_spss as u64 => {
            return Err(ApiError::BadRequest(format!(
                "spss {v} exceeds max spss {}",
                cfg.max_spss
            )));
        }
        Some(v) => v,
    };
    let (start_s, end_s) = window(&p, cfg.default_window, cfg.max_window)?;
    let text = match p.get("q").map(|s| s.trim()) {
        Some(q) if !q.is_empty() => q.to_string(),
        Some(_) => "{}".to_string(),
        None => legacy_query(&p)?,
    };
    let query = traceql::parse(&text).map_err(|e| {
        if e.is_unsupported() {
            ApiError::NotImplemented(format!("{e}"))
        } else {
            ApiError::BadRequest(format!("invalid TraceQL query: {e}"))
        }
    })?;
    let org = org_of(&req)?;
    // Stop looking for more traces with a fifth of the request's time left, so what was found
    // is answered before the deadline's 504.
    let budget = std::time::Duration::from_secs(state.limits.request_timeout) * 4 / 5;
    let sreq = SearchRequest {
        query,
        start_s,
        end_s,
        limit: limit as usize,
        spss: spss as usize,
        deadline: Some(std::time::Instant::now() + budget),
    };
    let seed_window = state.tempo.cfg.zero_code_window as i64;
    let (resp, mut timing) =
        search::search_timed(&state.tempo.tracer, org, &sreq, cfg, seed_window)
            .await
            .map_err(|e| match e {
                search::SearchError::NotSupported(n) => ApiError::NotImplemented(n.to_string()),
                search::SearchError::BadQuery(m) => {
                    ApiError::BadRequest(format!("invalid TraceQL query: {m}"))
                }
                search::SearchError::Service(s) => s.into(),
            })?;
    let started = std::time::Instant::now();
    let http = negotiate(&req, &resp, || search_json(&resp).to_string());
    timing.encode_us = started.elapsed().as_micros() as u64;
    Ok(with_server_timing(http, &timing.server_timing()))
}

fn scope_param(p: &HashMap<String, String>) -> Result<String, ApiError> {
    let scope = p
        .get("scope")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match scope.as_str() {
        "" | "none" | "resource" | "span" | "intrinsic" | "event" | "link" | "instrumentation"
        | "trace" => Ok(scope),
        other => Err(ApiError::BadRequest(format!("invalid scope: {other}"))),
    }
}

/// Span tag names: the mapped ones, then the OTel attribute names seen in the window.
async fn span_tag_names(
    state: &AppState,
    req: &HttpRequest,
    p: &HashMap<String, String>,
) -> Result<Vec<String>, ApiError> {
    let (start, end) = window(p, state.search.default_window, state.search.max_window)?;
    let limit = uint(p, "limit")?.unwrap_or(5000).clamp(1, 100_000);
    let org = org_of(req)?;
    let q = FlowQuery::new(Filter::True)
        .window(TimeWindow::new(start as u32, end as u32))
        .limit(limit);
    let mut names: Vec<String> = SPAN_TAGS.iter().map(|s| s.to_string()).collect();
    for n in state
        .store
        .distinct_values(org, &q, &Facet::AttributeNames)
        .await?
    {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names.truncate(limit as usize);
    Ok(names)
}

async fn tags_v1(
    req: HttpRequest,
    state: web::Data<AppState>,
    p: Params,
) -> Result<HttpResponse, ApiError> {
    let scope = scope_param(&p)?;
    let names: Vec<String> = match scope.as_str() {
        "intrinsic" => INTRINSIC_TAGS.iter().map(|s| s.to_string()).collect(),
        "resource" => RESOURCE_TAGS.iter().map(|s| s.to_string()).collect(),
        "span" => span_tag_names(&state, &req, &p).await?,
        "" | "none" => {
            let mut v: Vec<String> = RESOURCE_TAGS.iter().map(|s| s.to_string()).collect();
            v.extend(span_tag_names(&state, &req, &p).await?);
            v.dedup();
            v
        }
        _ => vec![],
    };
    let resp = pb::SearchTagsResponse {
        tag_names: names,
        metrics: Some(Default::default()),
    };
    Ok(negotiate(&req, &resp, || {
        json!({"tagNames": resp.tag_names, "metrics": {}}).to_string()
    }))
}

async fn tags_v2(
    req: HttpRequest,
    state: web::Data<AppState>,
    p: Params,
) -> Result<HttpResponse, ApiError> {
    let scope = scope_param(&p)?;
    let mut scopes: Vec<pb::SearchTagsV2Scope> = Vec::new();
    let want = |s: &str| scope.is_empty() || scope == "none" || scope == s;
    if want("intrinsic") || scope == "intrinsic" {
        scopes.push(pb::SearchTagsV2Scope {
            name: "intrinsic".into(),
            tags: INTRINSIC_TAGS.iter().map(|s| s.to_string()).collect(),
        });
    }
    if want("resource") {
        scopes.push(pb::SearchTagsV2Scope {
            name: "resource".into(),
            tags: RESOURCE_TAGS.iter().map(|s| s.to_string()).collect(),
        });
    }
    if want("span") {
        scopes.push(pb::SearchTagsV2Scope {
            name: "span".into(),
            tags: span_tag_names(&state, &req, &p).await?,
        });
    }
    let resp = pb::SearchTagsV2Response {
        scopes,
        metrics: Some(Default::default()),
    };
    Ok(negotiate(&req, &resp, || {
        let scopes: Vec<Value> = resp
            .scopes
            .iter()
            .map(|s| json!({"name": s.name, "tags": s.tags}))
            .collect();
        json!({"scopes": scopes, "metrics": {}}).to_string()
    }))
}

/// The tag name of a tag-values path: decoded once, everything up to the last `/values`.
fn tag_name_from_path(path: &str, prefix: &str) -> Result<String, ApiError> {
    let rest = path.strip_prefix(prefix).unwrap_or("");
    let decoded = percent_encoding::percent_decode_str(rest)
        .decode_utf8_lossy()
        .to_string();
    match decoded.rfind("/values") {
        Some(i) if decoded[i..] == *"/values" && i > 0 => Ok(decoded[..i].to_string()),
        _ => Err(ApiError::NotFound(format!("no route for {path}"))),
    }
}

/// Where the values of an attribute come from, and their TraceQL type.
enum Values {
    Fixed(&'static str, Vec<&'static str>),
    Store(Facet, &'static str),
    Protocols,
}

fn values_of(a: &Attribute) -> Values {
    match a {
        Attribute::Intrinsic(i) => match i {
            Intrinsic::Status => Values::Fixed("keyword", vec!["ok", "error", "unset"]),
            Intrinsic::Kind => Values::Fixed(
                "keyword",
                vec![
                    "client",
                    "server",
                    "producer",
                    "consumer",
                    "internal",
                    "unspecified",
                ],
            ),
            Intrinsic::Name | Intrinsic::TraceRootName => {
                Values::Store(Facet::Column(Col::Endpoint), "string")
            }
            Intrinsic::TraceRootService => Values::Store(Facet::Service, "string"),
            Intrinsic::StatusMessage => {
                Values::Store(Facet::Column(Col::ResponseException), "string")
            }
            Intrinsic::InstrumentationName => Values::Fixed(
                "string",
                vec!["deepflow.app", "deepflow.ebpf", "deepflow.network"],
            ),
            _ => Values::Fixed("string", vec![]),
        },
        Attribute::Scoped { name, scope, .. } => {
            let resource = matches!(scope, Scope::Resource | Scope::None);
            match name.as_str() {
                "service.name" if resource => Values::Store(Facet::Service, "string"),
                "k8s.pod.name" if resource => Values::Store(Facet::Pod, "string"),
                "k8s.node.name" if resource => Values::Store(Facet::Node, "string"),
                "host.name" if resource => Values::Store(Facet::Host, "string"),
                "service.instance.id" if resource => {
                    Values::Store(Facet::Column(Col::AppInstance), "string")
                }
                "http.method" | "deepflow.request_type" | "db.operation" => {
                    Values::Store(Facet::Column(Col::RequestType), "string")
                }
                "http.target" | "db.statement" | "deepflow.request_resource" | "rpc.method" => {
                    Values::Store(Facet::Column(Col::RequestResource), "string")
                }
                "http.host" | "deepflow.request_domain" | "rpc.service" => {
                    Values::Store(Facet::Column(Col::RequestDomain), "string")
                }
                "http.status_code" | "deepflow.response_code" => {
                    Values::Store(Facet::Column(Col::ResponseCode), "int")
                }
                "deepflow.response_status" => {
                    Values::Store(Facet::Column(Col::ResponseStatus), "int")
                }
                "deepflow.agent_id" => Values::Store(Facet::Column(Col::AgentId), "int"),
                "server.port" => Values::Store(Facet::Column(Col::ServerPort), "int"),
                "deepflow.endpoint" => Values::Store(Facet::Column(Col::Endpoint), "string"),
                "deepflow.observation_point" => {
                    Values::Store(Facet::Column(Col::ObservationPoint), "string")
                }
                "deepflow.response_exception" => {
                    Values::Store(Facet::Column(Col::ResponseException), "string")
                }
                "deepflow.signal_source" => Values::Fixed("string", vec!["ebpf", "otel", "packet"]),
                "deepflow.l7_protocol" => Values::Protocols,
                "db.system" => Values::Fixed(
                    "string",
                    vec![
                        "memcached",
                        "mongodb",
                        "mysql",
                        "oracle",
                        "postgresql",
                        "redis",
                    ],
                ),
                "rpc.system" => Values::Fixed("string", vec!["dubbo", "grpc"]),
                other => Values::Store(Facet::AttributeValues(other.to_string()), "string"),
            }
        }
    }
}

async fn tag_values(
    req: &HttpRequest,
    state: &AppState,
    p: &HashMap<String, String>,
    attr: &Attribute,
) -> Result<(&'static str, Vec<String>), ApiError> {
    let (start, end) = window(p, state.search.default_window, state.search.max_window)?;
    let limit = uint(p, "limit")?.unwrap_or(1000).clamp(1, 100_000);
    let org = org_of(req)?;
    // `q` narrows the rows leniently: its complete conditions, as a superset predicate.
    let filter = p
        .get("q")
        .map(|q| {
            let conds = traceql::parse_lenient_filters(q);
            let parts: Vec<Filter> = conds
                .into_iter()
                .map(|c| {
                    traceql::plan::plan_expr(&traceql::FieldExpr::Binary {
                        op: c.op,
                        lhs: Box::new(traceql::FieldExpr::Attribute(c.attribute)),
                        rhs: Box::new(traceql::FieldExpr::Static(c.value)),
                        pos: Default::default(),
                    })
                })
                .collect();
            if parts.is_empty() {
                Filter::True
            } else {
                Filter::And(parts)
            }
        })
        .unwrap_or(Filter::True);
    let q = FlowQuery::new(filter)
        .window(TimeWindow::new(start as u32, end as u32))
        .limit(limit);
    Ok(match values_of(attr) {
        Values::Fixed(ty, v) => (ty, v.into_iter().map(str::to_string).collect()),
        Values::Store(facet, ty) => (ty, state.store.distinct_values(org, &q, &facet).await?),
        Values::Protocols => {
            let codes = state
                .store
                .distinct_values(org, &q, &Facet::Column(Col::L7Protocol))
                .await?;
            let mut v: Vec<String> = codes
                .iter()
                .filter_map(|c| c.parse::<u8>().ok())
                .map(|c| {
                    crate::store::model::l7_protocol::name(c)
                        .map(str::to_string)
                        .unwrap_or_else(|| c.to_string())
                })
                .collect();
            v.sort();
            v.dedup();
            ("string", v)
        }
    })
}

async fn tag_values_v1(
    req: HttpRequest,
    state: web::Data<AppState>,
    p: Params,
) -> Result<HttpResponse, ApiError> {
    let name = tag_name_from_path(req.path(), "/api/search/tag/")?;
    let values: Vec<String> = match name.as_str() {
        "status.code" => vec!["unset".into(), "ok".into(), "error".into()],
        "error" => vec!["true".into()],
        _ => {
            let attr = traceql::parse_identifier(&name)
                .or_else(|_| traceql::parse_identifier(&format!(".{}", traceql_name(&name))))
                .map_err(|e| {
                    ApiError::BadRequest(format!("please provide a valid tagName: {e}"))
                })?;
            tag_values(&req, &state, &p, &attr).await?.1
        }
    };
    let resp = pb::SearchTagValuesResponse {
        tag_values: values,
        metrics: Some(Default::default()),
    };
    Ok(negotiate(&req, &resp, || {
        json!({"tagValues": resp.tag_values, "metrics": {}}).to_string()
    }))
}

async fn tag_values_v2(
    req: HttpRequest,
    state: web::Data<AppState>,
    p: Params,
) -> Result<HttpResponse, ApiError> {
    let name = tag_name_from_path(req.path(), "/api/v2/search/tag/")?;
    let attr = traceql::parse_identifier(&name)
        .map_err(|e| ApiError::BadRequest(format!("please provide a valid tagName: {e}")))?;
    let (ty, values) = tag_values(&req, &state, &p, &attr).await?;
    let tag_values: Vec<pb::TagValue> = values
        .into_iter()
        .map(|v| pb::TagValue {
            r#type: ty.into(),
            value: v,
        })
        .collect();
    let resp = pb::SearchTagValuesV2Response {
        tag_values,
        metrics: Some(Default::default()),
    };
    Ok(negotiate(&req, &resp, || {
        let vals: Vec<Value> = resp
            .tag_values
            .iter()
            .map(|t| json!({"type": t.r#type, "value": t.value}))
            .collect();
        json!({"tagValues": vals, "metrics": {}}).to_string()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_and_legacy_queries() {
        assert_eq!(
            logfmt(r#"service.name=frontend http.url="/a b" x"#).unwrap(),
            vec![
                ("service.name".into(), "frontend".into()),
                ("http.url".into(), "/a b".into()),
                ("x".into(), "".into())
            ]
        );
        assert!(logfmt("a=1 a=2").is_err());
        let mut p = HashMap::new();
        p.insert(
            "tags".to_string(),
            "service.name=frontend http.method=GET".to_string(),
        );
        p.insert("minDuration".to_string(), "100ms".to_string());
        assert_eq!(
            legacy_query(&p).unwrap(),
            r#"{resource.service.name = "frontend" && .http.method = "GET" && duration >= 100ms}"#
        );
        traceql::parse(&legacy_query(&p).unwrap()).unwrap();
        p.insert("maxDuration".to_string(), "10ms".to_string());
        assert!(legacy_query(&p).is_err());
    }

    #[test]
    fn tag_names_from_paths() {
        assert_eq!(
            tag_name_from_path(
                "/api/v2/search/tag/resource.service.name/values",
                "/api/v2/search/tag/"
            )
            .unwrap(),
            "resource.service.name"
        );
        assert_eq!(
            tag_name_from_path(
                "/api/v2/search/tag/span.a%2Fb%20c/values",
                "/api/v2/search/tag/"
            )
            .unwrap(),
            "span.a/b c"
        );
        assert_eq!(
            tag_name_from_path("/api/search/tag/x/values/values", "/api/search/tag/").unwrap(),
            "x/values"
        );
        assert!(tag_name_from_path("/api/search/tag/x", "/api/search/tag/").is_err());
    }
}
