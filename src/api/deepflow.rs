//! DeepFlow's own tracing API, so deepflow-tempo can stand in for deepflow-app (spec
//! `autotrace.md` §1): `POST /v1/stats/querier/L7FlowTracing`,
//! `POST /v1/stats/querier/tracing-completion-by-external-app-spans` and
//! `GET /v1/stats/querier/TracingAlgoParams`.
//!
//! Owns the request validation (strict, schematics-style: every field under its name or its
//! UPPER-CASE alias, rogue keys rejected, one message per bad field), the
//! `{OPT_STATUS, DESCRIPTION, DATA, TYPE}` envelope and the `debug` extras (`_QUERY_IDS`,
//! `_TSDB_INFO`). It must not build SQL, run any part of the tracing algorithm or shape span
//! records: it calls `TraceService` and renders its `TraceResult` with the result's own JSON
//! methods.

use super::{org_of, with_server_timing, AppState};
use crate::autotrace::{ExternalAppSpan, TraceParams};
use crate::error::ApiError;
use crate::query::trace::{TraceService, TraceTiming};
use crate::store::model::{FlowMeta, FlowRecord, L7FlowLogRow, NameTables, OrgId};
use crate::store::{FlowQuery, FlowStore, SchemaOptions, SharedStore, StoreKind, StoreResult};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

const TYPE_TRACING: &str = "Flow_Log_L7_Tracing";
const TYPE_COMPLETION: &str = "tracing-completion-by-external-app-spans";
const TYPE_PARAMS: &str = "TracingAlgoParams";

/// Tolerances above this (µs, about 116 days) are treated as this: it already covers any
/// search window, and keeps the engine's time arithmetic far from overflow.
pub(crate) const MAX_TOLERANCE_US: i64 = 10_000_000_000_000;

/// Request windows end here at the latest: the `time` column is unsigned 32-bit seconds.
pub(crate) const MAX_TIME_S: i64 = u32::MAX as i64;

/// `max_iteration` of the completion API when the request has none (hard-coded, §1.2).
const COMPLETION_MAX_ITERATION: u32 = 30;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::post(
        "/v1/stats/querier/L7FlowTracing",
        l7_flow_tracing,
    ))
    .service(super::post(
        "/v1/stats/querier/tracing-completion-by-external-app-spans",
        tracing_completion,
    ))
    .service(super::get(
        "/v1/stats/querier/TracingAlgoParams",
        tracing_algo_params,
    ));
}

// ---------------------------------------------------------------------------------------------
// Envelope and failures

/// Why a request failed: its body (400 `INVALID_POST_DATA`) or anything else.
#[derive(Debug)]
enum Failure {
    /// DESCRIPTION text: a validation error JSON, or a message for an unparsable body.
    Invalid(String),
    /// The body is larger than `limits.max_body_bytes` (the limit).
    TooLarge(usize),
    Api(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<crate::query::trace::ServiceError> for Failure {
    fn from(e: crate::query::trace::ServiceError) -> Self {
        Failure::Api(e.into())
    }
}

fn json_response(status: StatusCode, body: &Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(body.to_string())
}

impl Failure {
    /// Status, `OPT_STATUS` and `DESCRIPTION` of the failure envelope.
    fn parts(self) -> (StatusCode, &'static str, String) {
        match self {
            Failure::Invalid(d) => (StatusCode::BAD_REQUEST, "INVALID_POST_DATA", d),
            Failure::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "INVALID_POST_DATA",
                super::guard::too_large(limit).to_string(),
            ),
            Failure::Api(e) => {
                let status = e.status_code();
                let opt = match status {
                    StatusCode::BAD_REQUEST => "INVALID_POST_DATA",
                    StatusCode::FORBIDDEN => "FORBIDDEN",
                    _ => "INTERNAL_SERVER_ERROR",
                };
                if status.is_server_error() {
                    tracing::warn!(status = status.as_u16(), error = %e, "deepflow api request failed");
                }
                (status, opt, e.to_string())
            }
        }
    }

    fn response(self) -> HttpResponse {
        let (status, opt, description) = self.parts();
        json_response(
            status,
            &json!({"OPT_STATUS": opt, "DESCRIPTION": description}),
        )
    }
}

fn success(kind: &str, data: Value, debug: Option<(Value, Value)>) -> HttpResponse {
    let mut body = json!({
        "OPT_STATUS": "SUCCESS",
        "DESCRIPTION": "",
        "DATA": data,
        "TYPE": kind,
    });
    if let (Some((ids, info)), Some(obj)) = (debug, body.as_object_mut()) {
        obj.insert("_QUERY_IDS".into(), ids);
        obj.insert("_TSDB_INFO".into(), info);
    }
    json_response(StatusCode::OK, &body)
}

// ---------------------------------------------------------------------------------------------
// Validation

const REQUIRED: &str = "This field is required.";

/// A value as the messages quote it: strings bare, anything else as JSON text.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An integer: JSON integers, integral floats and numeric strings (trimmed) are accepted.
fn to_int(v: &Value) -> Result<i64, String> {
    let n = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= i64::MIN as f64 && *f < i64::MAX as f64)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    n.ok_or_else(|| format!("Value '{}' is not int.", shown(v)))
}

/// A string: JSON strings, and integers (cast to their decimal text).
fn to_string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        other => Err(format!("Couldn't interpret '{}' as string.", shown(other))),
    }
}

fn to_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if matches!(s.as_str(), "true" | "True" | "1") => Ok(true),
        Value::String(s) if matches!(s.as_str(), "false" | "False" | "0") => Ok(false),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
        _ => Err("Must be either true or false.".into()),
    }
}

/// One JSON object under validation: fields are read by name, then alias; whatever key is left
/// unread at the end is a rogue field. Errors are keyed by the key the client sent.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    known: HashSet<&'static str>,
    errors: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(obj: &'a Map<String, Value>) -> Self {
        Fields {
            obj,
            known: HashSet::new(),
            errors: Map::new(),
        }
    }

    fn fail(&mut self, key: &str, msg: impl Into<Value>) {
        self.errors.entry(key).or_insert(msg.into());
    }

    /// The value under the first key present (name, then alias); `null` counts as absent.
    /// A required field that is absent is reported under its name.
    fn get(
        &mut self,
        name: &'static str,
        alias: &'static str,
        required: bool,
    ) -> Option<(&'static str, &'a Value)> {
        self.known.insert(name);
        self.known.insert(alias);
        let found = [name, alias]
            .into_iter()
            .find_map(|k| self.obj.get(k).map(|v| (k, v)))
            .filter(|(_, v)| !v.is_null());
        if found.is_none() && required {
            self.fail(name, REQUIRED);
        }
        found
    }

    fn convert<T>(
        &mut self,
        name: &'static str,
        alias: &'static str,
        required: bool,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        let (key, v) = self.get(name, alias, required)?;
        match conv(v) {
            Ok(t) => Some(t),
            Err(msg) => {
                self.fail(key, msg);
                None
            }
        }
    }

    fn int(
        &mut self,
        name: &'static str,
        alias: &'static str,
        required: bool,
        min: Option<i64>,
    ) -> Option<i64> {
        self.convert(name, alias, required, |v| {
            let n = to_int(v)?;
            match min {
                Some(m) if n < m => {
                    Err(format!("Int value should be greater than or equal to {m}."))
                }
                _ => Ok(n),
            }
        })
    }

    fn string(
        &mut self,
        name: &'static str,
        alias: &'static str,
        required: bool,
    ) -> Option<String> {
        self.convert(name, alias, required, to_string)
    }

    fn boolean(&mut self, name: &'static str, alias: &'static str) -> Option<bool> {
        self.convert(name, alias, false, to_bool)
    }

    /// A list of strings with at least one item; item errors are keyed by index.
    fn string_list(&mut self, name: &'static str, alias: &'static str) -> Option<Vec<String>> {
        let (key, v) = self.get(name, alias, false)?;
        let Value::Array(items) = v else {
            self.fail(key, "Could not interpret the value as a list.");
            return None;
        };
        if items.is_empty() {
            self.fail(key, "Please provide at least 1 item.");
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut bad = Map::new();
        for (i, item) in items.iter().enumerate() {
            match to_string(item) {
                Ok(s) => out.push(s),
                Err(msg) => {
                    bad.insert(i.to_string(), msg.into());
                }
            }
        }
        if bad.is_empty() {
            Some(out)
        } else {
            self.fail(key, Value::Object(bad));
            None
        }
    }

    /// Report every unread key as a rogue field; the errors, if any.
    fn finish(mut self) -> Result<(), Map<String, Value>> {
        let rogue: Vec<String> = self
            .obj
            .keys()
            .filter(|k| !self.known.contains(k.as_str()))
            .cloned()
            .collect();
        for k in rogue {
            self.fail(&k, "Rogue field");
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

/// JSON text with Python's separators (`", "`, `": "`), as DeepFlow's messages are written.
struct PythonStyle;

impl serde_json::ser::Formatter for PythonStyle {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

fn python_json(v: &Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonStyle);
    match serde::Serialize::serialize(v, &mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| v.to_string()),
        Err(_) => v.to_string(),
    }
}

fn invalid(errors: Map<String, Value>) -> Failure {
    Failure::Invalid(python_json(&Value::Object(errors)))
}

/// The whole body, at most `limits.max_body_bytes`; a larger declared length fails before
/// anything is read.
async fn read_body(
    req: &HttpRequest,
    state: &AppState,
    payload: web::Payload,
) -> Result<web::Bytes, Failure> {
    let limit = state.limits.max_body_bytes;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Failure::TooLarge(limit));
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(Failure::Invalid(format!(
            "cannot read the request body: {e}"
        ))),
        Err(_) => Err(Failure::TooLarge(limit)),
    }
}

/// The body as a JSON object; anything else is a 400.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Failure> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Failure::Invalid(format!("request body is not valid json: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(Failure::Invalid(format!(
            "request body must be a json object, not {}",
            match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) => "an object",
            }
        ))),
    }
}

/// `signal_sources`: exactly `["otel"]` selects OTel-only mode; any other list does not.
fn otel_only(sources: &[String]) -> bool {
    sources.len() == 1 && sources[0] == "otel"
}

fn to_u32(n: i64) -> u32 {
    n.clamp(0, u32::MAX as i64) as u32
}

/// A validated L7FlowTracing request (§1.1).
#[derive(Debug)]
struct TracingRequest {
    time_start: i64,
    time_end: i64,
    id: Option<u64>,
    trace_id: Option<String>,
    has_attributes: bool,
    max_iteration: Option<u32>,
    network_delay_us: Option<i64>,
    host_clock_offset_us: Option<i64>,
    otel_only: Option<bool>,
    debug: bool,
}

impl TracingRequest {
    /// The configured parameters with this request's overrides.
    fn params(&self, config: &TraceParams) -> TraceParams {
        let mut p = config.clone();
        p.inference = config.inference && config.inference_on_deepflow_api;
        if let Some(v) = self.max_iteration {
            p.max_iteration = v;
        }
        if let Some(v) = self.network_delay_us {
            p.network_delay_us = v.min(MAX_TOLERANCE_US);
        }
        if let Some(v) = self.host_clock_offset_us {
            p.host_clock_offset_us = v.min(MAX_TOLERANCE_US);
        }
        if let Some(v) = self.otel_only {
            p.otel_only = v;
        }
        p
    }
}

fn validate_tracing(obj: &Map<String, Value>) -> Result<TracingRequest, Failure> {
    let mut f = Fields::new(obj);
    let time_start = f.int("time_start", "TIME_START", true, Some(0));
    let time_end = f.int("time_end", "TIME_END", true, Some(0));
    // Validated, then ignored: the table is always flow_log.l7_flow_log.
    f.string("database", "DATABASE", true);
    f.string("table", "TABLE", true);
    let id = f.convert("_id", "_id", false, |v| {
        let s = to_string(v)?;
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<u64>()
            .map(Some)
            .map_err(|_| format!("Value '{s}' is not a decimal UInt64."))
    });
    let trace_id = f.string("trace_id", "trace_id", false);
    let has_attributes = f.int("has_attributes", "has_attributes", false, None);
    let max_iteration = f.int("max_iteration", "MAX_ITERATION", false, Some(0));
    let network_delay_us = f.int("network_delay_us", "NETWORK_DELAY_US", false, Some(1));
    let host_clock_offset_us = f.int(
        "host_clock_offset_us",
        "HOST_CLOCK_OFFSET_US",
        false,
        Some(1),
    );
    // Accepted and unused (§1.1).
    f.int("ntp_delay_us", "NTP_DELAY_US", false, Some(1));
    let sources = f.string_list("signal_sources", "SIGNAL_SOURCES");
    // One region only: accepted and ignored.
    f.string("region", "REGION", false);
    let debug = f.boolean("debug", "DEBUG");
    f.finish().map_err(invalid)?;
    Ok(TracingRequest {
        time_start: time_start.unwrap_or(0).min(MAX_TIME_S),
        time_end: time_end.unwrap_or(0).min(MAX_TIME_S),
        id: id.flatten(),
        trace_id: trace_id.filter(|t| !t.trim().is_empty()),
        has_attributes: has_attributes.unwrap_or(0) != 0,
        max_iteration: max_iteration.map(to_u32),
        network_delay_us,
        host_clock_offset_us,
        otel_only: sources.as_deref().map(otel_only),
        debug: debug.unwrap_or(false),
    })
}

/// A validated tracing-completion request (§1.2).
#[derive(Debug)]
struct CompletionRequest {
    spans: Vec<ExternalAppSpan>,
    max_iteration: u32,
    network_delay_us: Option<i64>,
    otel_only: Option<bool>,
    debug: bool,
}

impl CompletionRequest {
    /// The configured parameters with this request's overrides: `max_iteration` is the
    /// request's or 30 (never the configuration's), `host_clock_offset_us` always the
    /// configuration's, `has_attributes` does not exist here (§1.2).
    fn params(&self, config: &TraceParams) -> TraceParams {
        let mut p = config.clone();
        p.inference = config.inference && config.inference_on_deepflow_api;
        p.max_iteration = self.max_iteration;
        if let Some(v) = self.network_delay_us {
            p.network_delay_us = v.min(MAX_TOLERANCE_US);
        }
        if let Some(v) = self.otel_only {
            p.otel_only = v;
        }
        p
    }
}

/// One AppSpan (strict: only its six fields).
fn validate_app_span(v: &Value) -> Result<ExternalAppSpan, Value> {
    let Value::Object(obj) = v else {
        return Err("Please use a mapping for this field.".into());
    };
    let mut f = Fields::new(obj);
    let trace_id = f.string("trace_id", "trace_id", true);
    let span_id = f.string("span_id", "span_id", true);
    let parent_span_id = f.string("parent_span_id", "parent_span_id", true);
    let span_kind = f.convert("span_kind", "span_kind", true, |v| {
        let n = to_int(v)?;
        u8::try_from(n)
            .ok()
            .filter(|k| *k <= 5)
            .ok_or_else(|| "Value must be one of [0, 1, 2, 3, 4, 5].".to_string())
    });
    let start = f.int("start_time_us", "start_time_us", true, Some(0));
    let end = f.int("end_time_us", "end_time_us", true, Some(0));
    f.finish().map_err(Value::Object)?;
    match (trace_id, span_id, parent_span_id, span_kind, start, end) {
        (
            Some(trace_id),
            Some(span_id),
            Some(parent_span_id),
            Some(span_kind),
            Some(start_time_us),
            Some(end_time_us),
        ) => Ok(ExternalAppSpan {
            trace_id,
            span_id,
            parent_span_id,
            span_kind,
            start_time_us,
            end_time_us,
            _id: None,
        }),
        // Unreachable: a missing field is an error reported by `finish`.
        _ => Err(json!(REQUIRED)),
    }
}

fn validate_completion(obj: &Map<String, Value>) -> Result<CompletionRequest, Failure> {
    let mut f = Fields::new(obj);
    let mut spans = None;
    if let Some((key, v)) = f.get("app_spans", "APP_SPANS", true) {
        match v {
            Value::Array(items) if items.is_empty() => {
                f.fail(key, "Please provide at least 1 item.")
            }
            Value::Array(items) => {
                let mut ok = Vec::with_capacity(items.len());
                let mut bad = Map::new();
                for (i, item) in items.iter().enumerate() {
                    match validate_app_span(item) {
                        Ok(s) => ok.push(s),
                        Err(e) => {
                            bad.insert(i.to_string(), e);
                        }
                    }
                }
                if bad.is_empty() {
                    spans = Some(ok);
                } else {
                    f.fail(key, Value::Object(bad));
                }
            }
            _ => f.fail(key, "Could not interpret the value as a list."),
        }
    }
    let max_iteration = f.int("max_iteration", "MAX_ITERATION", false, Some(1));
    let network_delay_us = f.int("network_delay_us", "NETWORK_DELAY_US", false, Some(1));
    let debug = f.boolean("debug", "DEBUG");
    let sources = f.string_list("signal_sources", "SIGNAL_SOURCES");
    f.finish().map_err(invalid)?;
    Ok(CompletionRequest {
        spans: spans.unwrap_or_default(),
        max_iteration: max_iteration.map_or(COMPLETION_MAX_ITERATION, to_u32),
        network_delay_us,
        otel_only: sources.as_deref().map(otel_only),
        debug: debug.unwrap_or(false),
    })
}

/// What a valid request body hands the tracing engine.
#[doc(hidden)]
#[derive(Debug)]
pub struct DryRun {
    /// The parameters it traces with.
    pub params: TraceParams,
    /// L7FlowTracing: its time window, seconds.
    pub window: Option<(i64, i64)>,
    /// Completion: its application spans.
    pub spans: Vec<ExternalAppSpan>,
}

/// What a request body becomes before the handler runs anything (over `config`), or the
/// failure envelope's status and `DESCRIPTION`. No I/O; the shared entry of the fuzz target
/// and the corpus replay (`crate::fuzzing`).
#[doc(hidden)]
pub fn dry_run(
    completion: bool,
    body: &[u8],
    config: &TraceParams,
) -> Result<DryRun, (StatusCode, String)> {
    let checked = parse_object(body).and_then(|obj| {
        if completion {
            validate_completion(&obj).map(|r| DryRun {
                params: r.params(config),
                window: None,
                spans: r.spans,
            })
        } else {
            validate_tracing(&obj).map(|r| DryRun {
                params: r.params(config),
                window: Some((r.time_start, r.time_end)),
                spans: Vec::new(),
            })
        }
    });
    checked.map_err(|f| {
        let (status, _, description) = f.parts();
        (status, description)
    })
}

// ---------------------------------------------------------------------------------------------
// Debug: the store reads of one request

/// One store read, for `_TSDB_INFO`.
struct ReadLog {
    read: &'static str,
    query: String,
    rows: Option<usize>,
    time_us: u64,
    error: Option<String>,
}

/// A store that notes every read it forwards (used for `debug` requests only).
struct Recording {
    inner: SharedStore,
    log: Mutex<Vec<ReadLog>>,
}

impl Recording {
    fn note<T>(&self, read: &'static str, q: &FlowQuery, t: Instant, r: &StoreResult<Vec<T>>) {
        let entry = ReadLog {
            read,
            query: describe(q),
            rows: r.as_ref().ok().map(Vec::len),
            time_us: t.elapsed().as_micros() as u64,
            error: r.as_ref().err().map(|e| e.to_string()),
        };
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry);
    }
}

#[async_trait]
impl FlowStore for Recording {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn select_meta(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowMeta>> {
        let t = Instant::now();
        let r = self.inner.select_meta(org, q).await;
        self.note("meta", q, t, &r);
        r
    }
    async fn select_records(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowRecord>> {
        let t = Instant::now();
        let r = self.inner.select_records(org, q).await;
        self.note("records", q, t, &r);
        r
    }
    async fn insert_rows(&self, org: OrgId, rows: &[L7FlowLogRow]) -> StoreResult<()> {
        self.inner.insert_rows(org, rows).await
    }
    async fn insert_names(&self, org: OrgId, n: &NameTables) -> StoreResult<()> {
        self.inner.insert_names(org, n).await
    }
    async fn apply_schema(&self, org: OrgId, o: SchemaOptions) -> StoreResult<()> {
        self.inner.apply_schema(org, o).await
    }
    fn schema_ddl(&self, org: OrgId) -> Vec<String> {
        self.inner.schema_ddl(org)
    }
    async fn distinct_values(
        &self,
        org: OrgId,
        q: &FlowQuery,
        facet: &crate::store::Facet,
    ) -> StoreResult<Vec<String>> {
        self.inner.distinct_values(org, q, facet).await
    }
}

/// A store read in the querier's dialect (the filter only, not the store's SQL).
fn describe(q: &FlowQuery) -> String {
    let mut s = String::new();
    if let Some(w) = q.window {
        s.push_str(&format!("time>={} AND time<={} AND ", w.start_s, w.end_s));
    }
    s.push_str(&q.filter.to_string());
    if let Some(l) = q.limit {
        s.push_str(&format!(" LIMIT {l}"));
    }
    s
}

/// A request's tracer: the configured store, wrapped to note its reads when `debug` is set.
fn tracer(
    state: &AppState,
    params: TraceParams,
    debug: bool,
) -> (TraceService, Option<Arc<Recording>>) {
    let store = state.tempo.tracer.store.clone();
    if !debug {
        return (TraceService::new(store, params), None);
    }
    let rec = Arc::new(Recording {
        inner: store,
        log: Mutex::new(Vec::new()),
    });
    (TraceService::new(rec.clone(), params), Some(rec))
}

/// `_QUERY_IDS` (the ordinal of each store read of this request) and `_TSDB_INFO` (what each
/// read asked, its row count and time, and the request's totals).
fn debug_info(
    rec: &Recording,
    kind: StoreKind,
    timing: TraceTiming,
    outcome: Option<&crate::autotrace::SearchOutcome>,
    total_us: u64,
) -> (Value, Value) {
    let log = rec.log.lock().unwrap_or_else(|p| p.into_inner());
    let ids: Vec<usize> = (1..=log.len()).collect();
    let queries: Vec<Value> = log
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "query_id": i + 1,
                "read": r.read,
                "filter": r.query,
                "rows": r.rows,
                "time_us": r.time_us,
                "error": r.error,
            })
        })
        .collect();
    let info = json!({
        "store": kind.to_string(),
        "query_count": log.len(),
        "store_time_us": log.iter().map(|r| r.time_us).sum::<u64>(),
        "assemble_time_us": timing.assemble_us,
        "total_time_us": total_us,
        "search_iterations": outcome.map(|o| o.iterations),
        "stop_reason": outcome.and_then(|o| o.stop_reason).map(|r| format!("{r:?}")),
        "hit_limit": outcome.is_some_and(|o| o.hit_limit),
        "queries": queries,
    });
    (json!(ids), info)
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn l7_flow_tracing(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Payload,
) -> HttpResponse {
    match run_tracing(&req, &state, body).await {
        Ok(r) => r,
        Err(f) => f.response(),
    }
}

async fn run_tracing(
    req: &HttpRequest,
    state: &AppState,
    body: web::Payload,
) -> Result<HttpResponse, Failure> {
    let started = Instant::now();
    let org = org_of(req)?;
    let r = validate_tracing(&parse_object(&read_body(req, state, body).await?)?)?;
    let params = r.params(&state.tempo.tracer.params);
    let (svc, rec) = tracer(state, params, r.debug);
    let found = match (r.id, &r.trace_id) {
        (Some(id), _) => Some(svc.trace_by_id(org, id, r.time_start, r.time_end).await?),
        (None, Some(t)) => Some(
            svc.trace_by_trace_id(org, t, r.time_start, r.time_end)
                .await?,
        ),
        (None, None) => None,
    };
    let mut timing = found.as_ref().map(|f| f.2).unwrap_or_default();
    let encoding = Instant::now();
    let data = match &found {
        Some((outcome, result, _)) if !outcome.is_empty() => {
            result.to_deepflow_json(r.has_attributes)
        }
        _ => json!({}),
    };
    let debug = rec.map(|rec| {
        debug_info(
            &rec,
            svc.store.kind(),
            timing,
            found.as_ref().map(|f| &f.0),
            started.elapsed().as_micros() as u64,
        )
    });
    let resp = success(TYPE_TRACING, data, debug);
    timing.encode_us = encoding.elapsed().as_micros() as u64;
    Ok(with_server_timing(resp, &timing.server_timing()))
}

async fn tracing_completion(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Payload,
) -> HttpResponse {
    match run_completion(&req, &state, body).await {
        Ok(r) => r,
        Err(f) => f.response(),
    }
}

async fn run_completion(
    req: &HttpRequest,
    state: &AppState,
    body: web::Payload,
) -> Result<HttpResponse, Failure> {
    let started = Instant::now();
    let org = org_of(req)?;
    let r = validate_completion(&parse_object(&read_body(req, state, body).await?)?)?;
    let params = r.params(&state.tempo.tracer.params);
    let (svc, rec) = tracer(state, params.clone(), r.debug);
    let (outcome, result, mut timing) = svc.complete(org, r.spans, &params).await?;
    let encoding = Instant::now();
    // An unknown trace still has the external spans: they are returned alone (REF-QUIRK T-2).
    let data = if outcome.is_empty() {
        json!({})
    } else {
        result.to_completion_json()
    };
    let debug = rec.map(|rec| {
        debug_info(
            &rec,
            svc.store.kind(),
            timing,
            Some(&outcome),
            started.elapsed().as_micros() as u64,
        )
    });
    let resp = success(TYPE_COMPLETION, data, debug);
    timing.encode_us = encoding.elapsed().as_micros() as u64;
    Ok(with_server_timing(resp, &timing.server_timing()))
}

async fn tracing_algo_params(state: web::Data<AppState>) -> HttpResponse {
    let p = &state.tempo.tracer.params;
    success(
        TYPE_PARAMS,
        json!({
            "network_delay_us": p.network_delay_us,
            "host_clock_offset_us": p.host_clock_offset_us,
            "max_iteration": p.max_iteration,
        }),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Filter;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    fn errors(f: Failure) -> Value {
        match f {
            Failure::Invalid(d) => serde_json::from_str(&d).unwrap(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    #[test]
    fn names_win_over_aliases_and_strings_coerce() {
        let r = validate_tracing(&obj(json!({
            "time_start": "10", "TIME_START": 99, "TIME_END": 20,
            "DATABASE": "flow_log", "table": "l7_flow_log", "_id": 42,
            "MAX_ITERATION": 0, "signal_sources": ["otel"], "debug": "true"
        })))
        .unwrap();
        assert_eq!((r.time_start, r.time_end, r.id), (10, 20, Some(42)));
        assert_eq!(r.max_iteration, Some(0));
        assert_eq!(r.otel_only, Some(true));
        assert!(r.debug);
    }

    #[test]
    fn every_error_is_reported_under_the_key_sent() {
        let e = errors(
            validate_tracing(&obj(json!({
                "TIME_START": -1, "database": 1.5, "foo": 1, "_id": "x", "signal_sources": []
            })))
            .unwrap_err(),
        );
        assert_eq!(
            e,
            json!({
                "TIME_START": "Int value should be greater than or equal to 0.",
                "time_end": "This field is required.",
                "database": "Couldn't interpret '1.5' as string.",
                "table": "This field is required.",
                "_id": "Value 'x' is not a decimal UInt64.",
                "signal_sources": "Please provide at least 1 item.",
                "foo": "Rogue field",
            })
        );
    }

    #[test]
    fn defaults_come_from_the_configuration_except_completion_iterations() {
        let config = TraceParams {
            max_iteration: 7,
            network_delay_us: 3_000_000,
            host_clock_offset_us: 20_000,
            ..TraceParams::default()
        };
        let base = json!({"time_start": 1, "time_end": 2, "database": "d", "table": "t"});
        let p = validate_tracing(&obj(base.clone()))
            .unwrap()
            .params(&config);
        // DeepFlow's routes answer as DeepFlow does unless they opt in to inference.
        assert_eq!(
            p,
            TraceParams {
                inference: false,
                ..config.clone()
            }
        );
        let opted = TraceParams {
            inference_on_deepflow_api: true,
            ..config.clone()
        };
        let p = validate_tracing(&obj(base.clone())).unwrap().params(&opted);
        assert_eq!(p, opted);
        let mut over = base;
        over["MAX_ITERATION"] = json!(2);
        over["network_delay_us"] = json!(5);
        over["host_clock_offset_us"] = json!(i64::MAX);
        over["signal_sources"] = json!(["otel"]);
        let p = validate_tracing(&obj(over)).unwrap().params(&config);
        assert_eq!(
            (
                p.max_iteration,
                p.network_delay_us,
                p.host_clock_offset_us,
                p.otel_only
            ),
            (2, 5, MAX_TOLERANCE_US, true)
        );

        let span = json!({"trace_id": "", "span_id": "a", "parent_span_id": "", "span_kind": 1,
                          "start_time_us": 1, "end_time_us": 2});
        let c = validate_completion(&obj(json!({"app_spans": [span.clone()]}))).unwrap();
        let p = c.params(&config);
        assert_eq!(
            (p.max_iteration, p.network_delay_us, p.host_clock_offset_us),
            (30, 3_000_000, 20_000)
        );
        let c = validate_completion(&obj(
            json!({"APP_SPANS": [span], "max_iteration": 4, "NETWORK_DELAY_US": 9}),
        ))
        .unwrap();
        let p = c.params(&config);
        assert_eq!(
            (p.max_iteration, p.network_delay_us, p.host_clock_offset_us),
            (4, 9, 20_000)
        );
    }

    #[test]
    fn descriptions_use_python_separators() {
        let v = json!({"a": "x", "b": {"0": [1, 2]}});
        assert_eq!(python_json(&v), r#"{"a": "x", "b": {"0": [1, 2]}}"#);
    }

    #[test]
    fn describes_reads_in_the_querier_dialect() {
        let q = FlowQuery::new(Filter::Or(vec![
            Filter::TraceIdIn(vec!["a'b".into()]),
            Filter::ids([1, 2]),
        ]))
        .window(crate::store::TimeWindow::new(5, 6))
        .limit(3);
        assert_eq!(
            describe(&q),
            "time>=5 AND time<=6 AND (FastFilter(trace_id) IN ('a\\'b') OR _id IN (1,2)) LIMIT 3"
        );
    }
}
