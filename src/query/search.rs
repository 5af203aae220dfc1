//! TraceQL search over DeepFlow's rows: Tempo's `/api/search` semantics.
//!
//! Rows are read once with a superset predicate planned from the query (`traceql::plan`),
//! most recent first, then every row is checked exactly (`traceql::eval`). Matching rows are
//! grouped into hits: rows with an application trace id by that id; rows without one by the
//! request they observe (the same TCP request and response sequence, seen at several
//! observation points within the tolerances), under the zero-code trace ID of the group's
//! earliest row. Pipelines (`by`, `select`, `coalesce`, aggregates) run per hit.

use crate::query::trace::{ServiceError, TraceTiming};
use crate::store::model::{l7_protocol, pick_side as pick, signal_source, FlowRecord, OrgId};
use crate::store::{Filter, FlowQuery, Order, SharedStore, TimeWindow};
use crate::tempo::encode::{db_system, span_kind};
use crate::tempo::ids::{app_span_id, row_span_id, TraceId};
use crate::tempo::pb;
use crate::traceql::eval::{Evaluator, SpanAttrs};
use crate::traceql::*;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use std::collections::HashMap;
use std::time::Instant;

/// Search limits (Tempo's defaults).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    /// `search.default_limit`: traces per search when the request gives none.
    pub default_limit: u32,
    /// `search.max_limit`: largest `limit` accepted.
    pub max_limit: u32,
    /// `search.default_spss`: spans per span set when the request gives none.
    pub default_spss: u32,
    /// `search.max_spss`: largest `spss` accepted.
    pub max_spss: u32,
    /// `search.default_window`: seconds searched back when the request has no range.
    pub default_window: u64,
    /// `search.max_window`: longest range accepted, seconds.
    pub max_window: u64,
    /// `search.max_rows`: most rows one search reads (most recent first).
    pub max_rows: u64,
    /// `search.max_structural_traces`: most candidate traces assembled to evaluate structural
    /// operators (`>`, `>>`, `~`, …), most recent first.
    pub max_structural_traces: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            default_limit: 20,
            max_limit: 262_144,
            default_spss: 3,
            max_spss: 100,
            default_window: 3600,
            max_window: 168 * 3600,
            max_rows: 20_000,
            max_structural_traces: 50,
        }
    }
}

/// A search request after parsing.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub query: Query,
    pub start_s: i64,
    pub end_s: i64,
    pub limit: usize,
    pub spss: usize,
}

fn non_empty(s: &str) -> Option<Static> {
    (!s.is_empty()).then(|| Static::String(s.to_string()))
}

/// `resource.service.name` of a row.
pub fn row_service(r: &FlowRecord) -> String {
    let sd = r.observed_side();
    if r.signal_source == signal_source::OTEL {
        return r.app_service.clone();
    }
    let svc = r.auto_service(sd);
    if !svc.is_empty() {
        return svc.to_string();
    }
    let process = pick(sd, &r.gprocess_0, &r.gprocess_1);
    if !process.is_empty() {
        return process.to_string();
    }
    pick(sd, &r.process_kname_0, &r.process_kname_1).to_string()
}

/// The span ID a row's span gets (as in trace by ID).
pub fn row_span_hex(r: &FlowRecord) -> String {
    let id = if r.signal_source == signal_source::OTEL && !r.span_id.is_empty() {
        app_span_id(&r.span_id)
    } else {
        row_span_id(r._id)
    };
    hex::encode(id)
}

fn status_of(r: &FlowRecord) -> Status {
    match r.response_status {
        0 => Status::Ok,
        2..=4 => Status::Error,
        _ => Status::Unset,
    }
}

fn kind_of(r: &FlowRecord) -> Kind {
    match span_kind(r) {
        SpanKind::Client => Kind::Client,
        SpanKind::Server => Kind::Server,
        SpanKind::Producer => Kind::Producer,
        SpanKind::Consumer => Kind::Consumer,
        SpanKind::Internal => Kind::Internal,
        SpanKind::Unspecified => Kind::Unspecified,
    }
}

/// Trace-level facts of a hit.
#[derive(Debug, Clone, Default)]
pub struct TraceCtx {
    pub trace_id: String,
    pub root_service: String,
    pub root_name: String,
    pub start_us: i64,
    pub end_us: i64,
}

/// One row seen as a TraceQL span.
pub struct RowSpan<'a> {
    pub r: &'a FlowRecord,
    pub ctx: &'a TraceCtx,
}

/// A DeepFlow column or derived value under its TraceQL span attribute name.
fn span_attr(r: &FlowRecord, name: &str) -> Option<Static> {
    let http = r.l7_protocol == l7_protocol::HTTP1 || r.l7_protocol == l7_protocol::HTTP2;
    let code = r.response_code.map(|c| Static::Int(c as i64));
    match name {
        "http.method" if http => non_empty(&r.request_type),
        "http.target" if http => non_empty(&r.request_resource),
        "http.url" if http => non_empty(&format!("{}{}", r.request_domain, r.request_resource)),
        "http.host" if http => non_empty(&r.request_domain),
        "http.status_code" if http => code,
        "db.system" => db_system(r.l7_protocol).map(|s| Static::String(s.into())),
        "db.statement" if db_system(r.l7_protocol).is_some() => non_empty(&r.request_resource),
        "db.operation" if db_system(r.l7_protocol).is_some() => non_empty(&r.request_type),
        "rpc.system" if r.l7_protocol == l7_protocol::GRPC => Some(Static::String("grpc".into())),
        "rpc.system" if r.l7_protocol == l7_protocol::DUBBO => Some(Static::String("dubbo".into())),
        "rpc.service" if matches!(r.l7_protocol, l7_protocol::GRPC | l7_protocol::DUBBO) => {
            non_empty(&r.request_domain)
        }
        "rpc.method" if matches!(r.l7_protocol, l7_protocol::GRPC | l7_protocol::DUBBO) => {
            non_empty(&r.request_resource)
        }
        "client.address" => non_empty(&r.ip_0),
        "server.address" => non_empty(&r.ip_1),
        "server.port" => (r.server_port != 0).then_some(Static::Int(r.server_port as i64)),
        "deepflow.observation_point" => non_empty(&r.observation_point),
        "deepflow.signal_source" => Some(Static::String(
            match r.signal_source {
                signal_source::OTEL => "otel",
                signal_source::EBPF => "ebpf",
                _ => "packet",
            }
            .into(),
        )),
        "deepflow.l7_protocol" => Some(Static::String(r.l7_protocol_name())),
        "deepflow.biz_protocol" => non_empty(&r.biz_protocol),
        "deepflow.request_type" => non_empty(&r.request_type),
        "deepflow.request_domain" => non_empty(&r.request_domain),
        "deepflow.request_resource" => non_empty(&r.request_resource),
        "deepflow.endpoint" => non_empty(&r.endpoint),
        "deepflow.response_code" => code,
        "deepflow.response_status" => Some(Static::Int(r.response_status as i64)),
        "deepflow.response_exception" => non_empty(&r.response_exception),
        "deepflow.agent_id" => Some(Static::Int(r.agent_id as i64)),
        "deepflow.x_request_id_0" => non_empty(&r.x_request_id_0),
        "deepflow.x_request_id_1" => non_empty(&r.x_request_id_1),
        "deepflow.trace_id" => non_empty(&r.joined_trace_id()),
        "deepflow.req_tcp_seq" => (r.req_tcp_seq != 0).then_some(Static::Int(r.req_tcp_seq as i64)),
        "deepflow.resp_tcp_seq" => {
            (r.resp_tcp_seq != 0).then_some(Static::Int(r.resp_tcp_seq as i64))
        }
        "deepflow.syscall_trace_id_request" => (r.syscall_trace_id_request != 0)
            .then(|| Static::String(r.syscall_trace_id_request.to_string())),
        "deepflow.syscall_trace_id_response" => (r.syscall_trace_id_response != 0)
            .then(|| Static::String(r.syscall_trace_id_response.to_string())),
        "deepflow.process_kname" => non_empty(pick(
            r.observed_side(),
            &r.process_kname_0,
            &r.process_kname_1,
        )),
        "deepflow.tap" => non_empty(&r.tap),
        _ => None,
    }
}

/// A resource attribute derived from DeepFlow's columns and name tables.
fn resource_attr(r: &FlowRecord, name: &str) -> Option<Static> {
    let sd = r.observed_side();
    match name {
        "service.name" => non_empty(&row_service(r)),
        "service.instance.id" => {
            if r.signal_source == signal_source::OTEL && !r.app_instance.is_empty() {
                non_empty(&r.app_instance)
            } else {
                non_empty(r.auto_instance(sd))
            }
        }
        "k8s.pod.name" => non_empty(pick(sd, &r.pod_0, &r.pod_1)),
        "k8s.node.name" => non_empty(pick(sd, &r.pod_node_0, &r.pod_node_1))
            .or_else(|| non_empty(&r.vtap_pod_node_name)),
        "host.name" => {
            non_empty(pick(sd, &r.host_0, &r.host_1)).or_else(|| non_empty(&r.vtap_host_name))
        }
        "process.pid" => {
            let pid = if sd == 0 {
                r.process_id_0
            } else {
                r.process_id_1
            };
            (pid != 0 && r.signal_source == signal_source::EBPF).then_some(Static::Int(pid as i64))
        }
        "deepflow.agent_id" => Some(Static::Int(r.agent_id as i64)),
        _ => None,
    }
}

fn otel_attr(r: &FlowRecord, name: &str) -> Option<Static> {
    r.attributes()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| Static::String(v.to_string()))
}

impl SpanAttrs for RowSpan<'_> {
    fn attr(&self, a: &Attribute) -> Option<Static> {
        let r = self.r;
        match a {
            Attribute::Intrinsic(i) => match i {
                Intrinsic::Name => Some(Static::String(r.span_name())),
                Intrinsic::Status => Some(Static::Status(status_of(r))),
                Intrinsic::StatusMessage => non_empty(&r.response_exception),
                Intrinsic::Kind => Some(Static::Kind(kind_of(r))),
                Intrinsic::Duration => Some(Static::Duration(r.response_duration as i64 * 1000)),
                Intrinsic::TraceDuration => Some(Static::Duration(
                    (self.ctx.end_us - self.ctx.start_us).max(0) * 1000,
                )),
                Intrinsic::TraceRootName => non_empty(&self.ctx.root_name),
                Intrinsic::TraceRootService => non_empty(&self.ctx.root_service),
                Intrinsic::TraceId => non_empty(&self.ctx.trace_id),
                Intrinsic::SpanId => Some(Static::String(row_span_hex(r))),
                Intrinsic::ParentId => (r.signal_source == signal_source::OTEL
                    && !r.parent_span_id.is_empty())
                .then(|| Static::String(hex::encode(app_span_id(&r.parent_span_id)))),
                Intrinsic::InstrumentationName => Some(Static::String(
                    match r.signal_source {
                        signal_source::OTEL => crate::tempo::encode::SCOPE_APP,
                        signal_source::EBPF => crate::tempo::encode::SCOPE_EBPF,
                        _ => crate::tempo::encode::SCOPE_NETWORK,
                    }
                    .into(),
                )),
                Intrinsic::InstrumentationVersion => {
                    Some(Static::String(env!("CARGO_PKG_VERSION").into()))
                }
                _ => None,
            },
            Attribute::Scoped { parent: true, .. } => None,
            Attribute::Scoped { scope, name, .. } => match scope {
                Scope::Resource => resource_attr(r, name).or_else(|| otel_attr(r, name)),
                Scope::Span => span_attr(r, name).or_else(|| otel_attr(r, name)),
                Scope::None => span_attr(r, name)
                    .or_else(|| otel_attr(r, name))
                    .or_else(|| resource_attr(r, name)),
                _ => None,
            },
        }
    }
}

/// The key a row is grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HitKey {
    App(String),
    Request(usize),
}

/// Group rows: by application trace id, else by observed request (same non-zero TCP
/// sequences, starts within `tolerance_us`), else alone.
fn group_rows(rows: &[FlowRecord], tolerance_us: i64) -> Vec<(HitKey, Vec<usize>)> {
    let mut groups: indexmap::IndexMap<HitKey, Vec<usize>> = indexmap::IndexMap::new();
    let mut by_seq: HashMap<(u32, u32), Vec<(i64, usize)>> = HashMap::new();
    let mut next = 0usize;
    for (i, r) in rows.iter().enumerate() {
        let tid = r.trace_id.trim();
        let tid = if tid.is_empty() {
            r._trace_id_2.trim()
        } else {
            tid
        };
        if !tid.is_empty() {
            groups
                .entry(HitKey::App(tid.to_string()))
                .or_default()
                .push(i);
            continue;
        }
        let seq = (r.req_tcp_seq, r.resp_tcp_seq);
        if seq != (0, 0) {
            let bucket = by_seq.entry(seq).or_default();
            if let Some(&(_, g)) = bucket
                .iter()
                .find(|(start, _)| (start - r.start_time_us).abs() <= tolerance_us)
            {
                groups.entry(HitKey::Request(g)).or_default().push(i);
                continue;
            }
            bucket.push((r.start_time_us, next));
        }
        groups.entry(HitKey::Request(next)).or_default().push(i);
        next += 1;
    }
    groups.into_iter().collect()
}

/// The trace ID a hit is reported under.
fn hit_trace_id(key: &HitKey, rows: &[&FlowRecord]) -> TraceId {
    if let HitKey::App(t) = key {
        if let Some(id) = TraceId::from_app_trace_id(t) {
            return id;
        }
    }
    let earliest = rows
        .iter()
        .min_by_key(|r| (r.start_time_us, r._id))
        .expect("a group has rows");
    TraceId::zero_code(earliest._id)
}

/// Trace-level facts from the rows known for a hit.
fn trace_ctx(trace_id: &TraceId, rows: &[&FlowRecord]) -> TraceCtx {
    let start = rows.iter().map(|r| r.start_time_us).min().unwrap_or(0);
    let end = rows.iter().map(|r| r.end_time_us).max().unwrap_or(0);
    // The root: the earliest span whose parent is not among the rows.
    let span_ids: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.signal_source == signal_source::OTEL && !r.span_id.is_empty())
        .map(|r| r.span_id.as_str())
        .collect();
    let root = rows
        .iter()
        .filter(|r| {
            r.signal_source != signal_source::OTEL
                || r.parent_span_id.is_empty()
                || !span_ids.contains(r.parent_span_id.as_str())
        })
        .min_by_key(|r| (r.start_time_us, std::cmp::Reverse(r.end_time_us), r._id));
    TraceCtx {
        trace_id: trace_id.to_hex(),
        root_service: root.map(|r| row_service(r)).unwrap_or_default(),
        root_name: root.map(|r| r.span_name()).unwrap_or_default(),
        start_us: start,
        end_us: end,
    }
}

fn kv(key: &str, v: &Static) -> KeyValue {
    let value = match v {
        Static::Int(i) => any_value::Value::IntValue(*i),
        Static::Float(f) => any_value::Value::DoubleValue(*f),
        Static::Bool(b) => any_value::Value::BoolValue(*b),
        Static::String(s) => any_value::Value::StringValue(s.clone()),
        Static::Duration(d) => {
            any_value::Value::StringValue(crate::traceql::duration::format_duration(*d))
        }
        other => any_value::Value::StringValue(other.to_string()),
    };
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// The bare name Tempo reports an attribute under (`service.name`, `status`, …).
fn bare_name(a: &Attribute) -> String {
    match a {
        Attribute::Intrinsic(i) => i.as_str().rsplit(':').next().unwrap_or("").to_string(),
        Attribute::Scoped { name, .. } => name.clone(),
    }
}

/// A spanset during pipeline evaluation: row indices and the attributes pipelines added.
#[derive(Debug, Clone, Default)]
struct Spanset {
    rows: Vec<usize>,
    attrs: Vec<(String, Static)>,
}

/// Why a query cannot run (yet): answered 501 naming the construct.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not supported by this server yet")]
pub struct NotSupported(pub String);

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    NotSupported(#[from] NotSupported),
    #[error("{0}")]
    BadQuery(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<crate::store::StoreError> for SearchError {
    fn from(e: crate::store::StoreError) -> Self {
        SearchError::Service(ServiceError::Store(e))
    }
}

/// The stages of a query this executor runs.
fn stages(q: &Query) -> Result<&[Stage], NotSupported> {
    match &q.root {
        RootExpr::Pipeline(p) => Ok(&p.stages),
        RootExpr::Metrics(_) | RootExpr::MetricsMath(_) => Err(NotSupported(
            "a metrics query on the search endpoint".into(),
        )),
        RootExpr::PipelineExpr(_) => {
            Err(NotSupported("arithmetic or logic between pipelines".into()))
        }
        RootExpr::ScalarPipelineFilter(_) => {
            Err(NotSupported("a scalar filter between pipelines".into()))
        }
    }
}

/// Parent links of a hit's rows (position → parent position), known once its trace is
/// assembled; structural operators need them.
type Parents<'a> = Option<&'a [Option<usize>]>;

/// Whether the query uses a structural operator (and so needs assembled traces).
pub fn has_structural(q: &Query) -> bool {
    fn walk(e: &SpansetExpr) -> bool {
        match e {
            SpansetExpr::Filter(_) => false,
            SpansetExpr::Op { op, lhs, rhs } => op.is_structural() || walk(lhs) || walk(rhs),
        }
    }
    match &q.root {
        RootExpr::Pipeline(p) => p
            .stages
            .iter()
            .any(|s| matches!(s, Stage::Spanset(e) if walk(e))),
        _ => false,
    }
}

fn ancestors(i: usize, parents: &[Option<usize>]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut cur = parents[i];
    while let Some(p) = cur {
        if out.len() > parents.len() {
            break; // a cycle: never loop
        }
        out.push(p);
        cur = parents[p];
    }
    out
}

/// Evaluate a spanset expression over the candidate rows of one hit; returns row positions.
fn eval_spanset(
    e: &SpansetExpr,
    ev: &Evaluator,
    rows: &[&FlowRecord],
    candidates: &[usize],
    ctx: &TraceCtx,
    parents: Parents<'_>,
) -> Result<Vec<usize>, NotSupported> {
    use std::collections::HashSet;
    match e {
        SpansetExpr::Filter(f) => Ok(candidates
            .iter()
            .copied()
            .filter(|&i| ev.matches(f, &RowSpan { r: rows[i], ctx }))
            .collect()),
        SpansetExpr::Op { op, lhs, rhs } => {
            let l = eval_spanset(lhs, ev, rows, candidates, ctx, parents)?;
            let r = eval_spanset(rhs, ev, rows, candidates, ctx, parents)?;
            match op {
                SpansetOp::And => {
                    return Ok(if l.is_empty() || r.is_empty() {
                        vec![]
                    } else {
                        union(l, r)
                    });
                }
                SpansetOp::Union => return Ok(union(l, r)),
                _ => {}
            }
            let Some(parents) = parents else {
                return Err(NotSupported(format!(
                    "the structural operator `{}` without an assembled trace",
                    op.as_str()
                )));
            };
            let left: HashSet<usize> = l.iter().copied().collect();
            // For each right-hand span: the left-hand spans it stands in the relation with.
            let related = |x: usize| -> Vec<usize> {
                match op {
                    SpansetOp::Child | SpansetOp::NotChild | SpansetOp::UnionChild => parents[x]
                        .filter(|p| left.contains(p))
                        .into_iter()
                        .collect(),
                    SpansetOp::Parent | SpansetOp::NotParent | SpansetOp::UnionParent => l
                        .iter()
                        .copied()
                        .filter(|&c| parents[c] == Some(x))
                        .collect(),
                    SpansetOp::Descendant
                    | SpansetOp::NotDescendant
                    | SpansetOp::UnionDescendant => ancestors(x, parents)
                        .into_iter()
                        .filter(|a| left.contains(a))
                        .collect(),
                    SpansetOp::Ancestor | SpansetOp::NotAncestor | SpansetOp::UnionAncestor => l
                        .iter()
                        .copied()
                        .filter(|&d| ancestors(d, parents).contains(&x))
                        .collect(),
                    SpansetOp::Sibling | SpansetOp::NotSibling | SpansetOp::UnionSibling => l
                        .iter()
                        .copied()
                        .filter(|&o| o != x && parents[o].is_some() && parents[o] == parents[x])
                        .collect(),
                    SpansetOp::And | SpansetOp::Union => vec![],
                }
            };
            let negated = matches!(
                op,
                SpansetOp::NotChild
                    | SpansetOp::NotParent
                    | SpansetOp::NotDescendant
                    | SpansetOp::NotAncestor
                    | SpansetOp::NotSibling
            );
            let union_form = matches!(
                op,
                SpansetOp::UnionChild
                    | SpansetOp::UnionParent
                    | SpansetOp::UnionDescendant
                    | SpansetOp::UnionAncestor
                    | SpansetOp::UnionSibling
            );
            let mut out = Vec::new();
            for &x in &r {
                let rel = related(x);
                if negated {
                    if rel.is_empty() {
                        out.push(x);
                    }
                } else if !rel.is_empty() {
                    out.push(x);
                    if union_form {
                        out.extend(rel);
                    }
                }
            }
            Ok(union(out, vec![]))
        }
    }
}

fn union(mut a: Vec<usize>, b: Vec<usize>) -> Vec<usize> {
    a.extend(b);
    a.sort_unstable();
    a.dedup();
    a
}

fn aggregate(
    a: &Aggregate,
    ev: &Evaluator,
    set: &Spanset,
    rows: &[&FlowRecord],
    ctx: &TraceCtx,
) -> Option<Static> {
    let values: Vec<Static> = match &a.arg {
        None => vec![],
        Some(e) => set
            .rows
            .iter()
            .filter_map(|&i| ev.eval(e, &RowSpan { r: rows[i], ctx }))
            .collect(),
    };
    let nums: Vec<f64> = values.iter().filter_map(Static::as_f64).collect();
    let dur = values.iter().any(|v| matches!(v, Static::Duration(_)));
    let wrap = |x: f64| {
        if dur {
            Static::Duration(x as i64)
        } else {
            Static::Float(x)
        }
    };
    match a.kind {
        AggregateKind::Count => Some(Static::Int(set.rows.len() as i64)),
        _ if nums.is_empty() => None,
        AggregateKind::Sum => Some(wrap(nums.iter().sum())),
        AggregateKind::Avg => Some(wrap(nums.iter().sum::<f64>() / nums.len() as f64)),
        AggregateKind::Min => Some(wrap(nums.iter().cloned().fold(f64::INFINITY, f64::min))),
        AggregateKind::Max => Some(wrap(nums.iter().cloned().fold(f64::NEG_INFINITY, f64::max))),
    }
}

fn scalar(
    e: &ScalarExpr,
    ev: &Evaluator,
    set: &Spanset,
    rows: &[&FlowRecord],
    ctx: &TraceCtx,
    out: &mut Vec<(String, Static)>,
) -> Result<Option<Static>, NotSupported> {
    match e {
        ScalarExpr::Static(s) => Ok(Some(s.clone())),
        ScalarExpr::Aggregate(a) => {
            let v = aggregate(a, ev, set, rows, ctx);
            if let Some(v) = &v {
                out.push((a.to_string(), v.clone()));
            }
            Ok(v)
        }
        ScalarExpr::Op { .. } => Err(NotSupported("arithmetic between aggregates".into())),
    }
}

fn compare_statics(op: BinaryOp, l: &Static, r: &Static) -> bool {
    let (Some(a), Some(b)) = (l.as_f64(), r.as_f64()) else {
        return false;
    };
    match op {
        BinaryOp::Eq => a == b,
        BinaryOp::Neq => a != b,
        BinaryOp::Lt => a < b,
        BinaryOp::Lte => a <= b,
        BinaryOp::Gt => a > b,
        BinaryOp::Gte => a >= b,
        _ => false,
    }
}

/// Run a pipeline on one hit: its span sets, with `select()` attributes per span.
fn run_pipeline(
    stages: &[Stage],
    ev: &Evaluator,
    rows: &[&FlowRecord],
    ctx: &TraceCtx,
    parents: Parents<'_>,
) -> Result<(Vec<Spanset>, Vec<Attribute>), NotSupported> {
    let mut sets: Vec<Spanset> = vec![Spanset {
        rows: (0..rows.len()).collect(),
        attrs: vec![],
    }];
    let mut selected = Vec::new();
    for stage in stages {
        match stage {
            Stage::Spanset(expr) => {
                let mut out = Vec::new();
                for set in &sets {
                    let hits = eval_spanset(expr, ev, rows, &set.rows, ctx, parents)?;
                    if !hits.is_empty() {
                        out.push(Spanset {
                            rows: hits,
                            attrs: set.attrs.clone(),
                        });
                    }
                }
                sets = out;
            }
            Stage::ScalarFilter(f) => {
                let mut out = Vec::new();
                for mut set in sets {
                    let mut added = Vec::new();
                    let l = scalar(&f.lhs, ev, &set, rows, ctx, &mut added)?;
                    let r = scalar(&f.rhs, ev, &set, rows, ctx, &mut added)?;
                    if let (Some(l), Some(r)) = (l, r) {
                        if compare_statics(f.op, &l, &r) {
                            set.attrs.extend(added);
                            out.push(set);
                        }
                    }
                }
                sets = out;
            }
            Stage::GroupBy { expr, .. } => {
                let mut out = Vec::new();
                for set in sets {
                    let mut groups: indexmap::IndexMap<String, (Static, Vec<usize>)> =
                        indexmap::IndexMap::new();
                    for &i in &set.rows {
                        if let Some(v) = ev.eval(expr, &RowSpan { r: rows[i], ctx }) {
                            groups
                                .entry(v.to_string())
                                .or_insert_with(|| (v.clone(), vec![]))
                                .1
                                .push(i);
                        }
                    }
                    for (_, (v, idx)) in groups {
                        let mut attrs = set.attrs.clone();
                        attrs.push((format!("by({expr})"), v));
                        out.push(Spanset { rows: idx, attrs });
                    }
                }
                sets = out;
            }
            Stage::Coalesce => {
                let mut all = Spanset::default();
                for set in sets {
                    all.rows = union(all.rows, set.rows);
                }
                sets = if all.rows.is_empty() {
                    vec![]
                } else {
                    vec![all]
                };
            }
            Stage::Select(attrs) => selected.extend(attrs.iter().cloned()),
        }
    }
    Ok((sets, selected))
}

/// Search the store (through the tracer, which also assembles traces for structural queries).
pub async fn search(
    tracer: &crate::query::trace::TraceService,
    org: OrgId,
    req: &SearchRequest,
    cfg: &SearchConfig,
    tolerance_us: i64,
) -> Result<pb::SearchResponse, SearchError> {
    Ok(search_timed(tracer, org, req, cfg, tolerance_us).await?.0)
}

/// [`search`], also telling how its time was spent: store reads (`store_us`, `queries`),
/// assembly of the traces structural operators need (`assemble_us`), and everything else
/// (`search_us`: grouping, evaluation, building the response). `encode_us` is left to the
/// caller, which serialises the response.
pub async fn search_timed(
    tracer: &crate::query::trace::TraceService,
    org: OrgId,
    req: &SearchRequest,
    cfg: &SearchConfig,
    tolerance_us: i64,
) -> Result<(pb::SearchResponse, TraceTiming), SearchError> {
    let started = Instant::now();
    let mut timing = TraceTiming::default();
    let resp = run_search(tracer, org, req, cfg, tolerance_us, &mut timing).await?;
    timing.search_us =
        (started.elapsed().as_micros() as u64).saturating_sub(timing.store_us + timing.assemble_us);
    Ok((resp, timing))
}

async fn run_search(
    tracer: &crate::query::trace::TraceService,
    org: OrgId,
    req: &SearchRequest,
    cfg: &SearchConfig,
    tolerance_us: i64,
    timing: &mut TraceTiming,
) -> Result<pb::SearchResponse, SearchError> {
    let store: &SharedStore = &tracer.store;
    let stages = stages(&req.query)?;
    let structural = has_structural(&req.query);
    let mut assembled = 0usize;
    let filters = req.query.spanset_filters();
    let ev = Evaluator::new(&filters).map_err(SearchError::BadQuery)?;
    let window = TimeWindow::new(
        req.start_s.max(0) as u32,
        req.end_s.clamp(0, u32::MAX as i64) as u32,
    );
    let prefilter = crate::traceql::plan::plan_filters(&filters);
    let t = Instant::now();
    let rows = store
        .select_records(
            org,
            &FlowQuery::new(prefilter)
                .window(window)
                .order(Order::TimeDesc)
                .limit(cfg.max_rows),
        )
        .await?;
    timing.store_us += t.elapsed().as_micros() as u64;
    timing.queries += 1;
    let inspected = rows.len();
    let groups = group_rows(&rows, tolerance_us);
    // Trace-level facts of application traces come from all their rows.
    let app_ids: Vec<String> = groups
        .iter()
        .filter_map(|(k, _)| match k {
            HitKey::App(t) => Some(t.clone()),
            _ => None,
        })
        .take(cfg.max_rows as usize)
        .collect();
    let mut by_trace: HashMap<String, Vec<FlowRecord>> = HashMap::new();
    if !app_ids.is_empty() {
        let t = Instant::now();
        let all = store
            .select_records(
                org,
                &FlowQuery::new(Filter::TraceIdIn(app_ids))
                    .window(window)
                    .limit(cfg.max_rows),
            )
            .await?;
        timing.store_us += t.elapsed().as_micros() as u64;
        timing.queries += 1;
        for r in all {
            for t in [&r.trace_id, &r._trace_id_2] {
                if !t.is_empty() {
                    by_trace
                        .entry(t.trim().to_string())
                        .or_default()
                        .push(r.clone());
                }
            }
        }
    }
    let mut hits: Vec<(i64, pb::TraceSearchMetadata)> = Vec::new();
    for (key, idx) in &groups {
        let matched_rows: Vec<&FlowRecord> = idx.iter().map(|&i| &rows[i]).collect();
        let trace_id = hit_trace_id(key, &matched_rows);
        // Structural operators need the trace's real parent links: assemble it (bounded).
        let mut owned: Vec<FlowRecord> = Vec::new();
        let mut parents: Option<Vec<Option<usize>>> = None;
        if structural {
            if assembled >= cfg.max_structural_traces {
                break;
            }
            assembled += 1;
            let start = matched_rows
                .iter()
                .map(|r| r.start_time_us)
                .min()
                .unwrap_or(0)
                / 1_000_000;
            let end = matched_rows
                .iter()
                .map(|r| r.end_time_us)
                .max()
                .unwrap_or(0)
                / 1_000_000;
            let (_, result, traced) = match key {
                HitKey::App(t) => tracer.trace_by_trace_id(org, t, start - 5, end + 5).await?,
                HitKey::Request(_) => {
                    let entry = matched_rows
                        .iter()
                        .min_by_key(|r| (r.start_time_us, r._id))
                        .expect("a group has rows");
                    tracer
                        .trace_by_id(org, entry._id, start - 5, end + 5)
                        .await?
                }
            };
            timing.store_us += traced.store_us;
            timing.assemble_us += traced.assemble_us;
            timing.queries += traced.queries;
            let pos: HashMap<usize, usize> = result
                .spans
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id, i))
                .collect();
            parents = Some(
                result
                    .spans
                    .iter()
                    .map(|s| s.parent_id.and_then(|p| pos.get(&p).copied()))
                    .collect(),
            );
            owned = result.spans.into_iter().map(|s| *s.record).collect();
        }
        let group_rows: Vec<&FlowRecord> = if structural {
            owned.iter().collect()
        } else {
            matched_rows.clone()
        };
        let ctx_rows: Vec<&FlowRecord> = match key {
            _ if structural => group_rows.clone(),
            HitKey::App(t) => by_trace
                .get(t)
                .map(|v| v.iter().collect())
                .unwrap_or_else(|| group_rows.clone()),
            HitKey::Request(_) => group_rows.clone(),
        };
        let ctx = trace_ctx(&trace_id, &ctx_rows);
        let (sets, selected) = run_pipeline(stages, &ev, &group_rows, &ctx, parents.as_deref())?;
        if sets.is_empty() {
            continue;
        }
        let attrs_of_interest: Vec<&Attribute> = filters
            .iter()
            .flat_map(|f| f.expr.attributes())
            .chain(selected.iter())
            .filter(|a| {
                !matches!(
                    a,
                    Attribute::Intrinsic(
                        Intrinsic::Name
                            | Intrinsic::Duration
                            | Intrinsic::TraceDuration
                            | Intrinsic::TraceRootName
                            | Intrinsic::TraceRootService
                            | Intrinsic::TraceId
                            | Intrinsic::SpanId
                    )
                )
            })
            .collect();
        let spansets: Vec<pb::SpanSet> = sets
            .iter()
            .map(|set| {
                let mut idx = set.rows.clone();
                idx.sort_by_key(|&i| (group_rows[i].start_time_us, group_rows[i]._id));
                let spans = idx
                    .iter()
                    .take(req.spss)
                    .map(|&i| {
                        let r = group_rows[i];
                        let view = RowSpan { r, ctx: &ctx };
                        let mut seen = std::collections::HashSet::new();
                        let attributes = attrs_of_interest
                            .iter()
                            .filter_map(|a| {
                                let name = bare_name(a);
                                if !seen.insert(name.clone()) {
                                    return None;
                                }
                                view.attr(a).map(|v| kv(&name, &v))
                            })
                            .collect();
                        pb::Span {
                            span_id: row_span_hex(r),
                            name: r.span_name(),
                            start_time_unix_nano: r.start_time_us.max(0) as u64 * 1000,
                            duration_nanos: r.response_duration * 1000,
                            attributes,
                        }
                    })
                    .collect();
                pb::SpanSet {
                    spans,
                    matched: set.rows.len() as u32,
                    attributes: set.attrs.iter().map(|(k, v)| kv(k, v)).collect(),
                }
            })
            .collect();
        let duration_ms = ((ctx.end_us - ctx.start_us).max(0) / 1000) as u32;
        hits.push((
            ctx.start_us,
            pb::TraceSearchMetadata {
                trace_id: trace_id.to_trimmed_hex(),
                root_service_name: if ctx.root_service.is_empty() {
                    "<root span not yet received>".into()
                } else {
                    ctx.root_service.clone()
                },
                root_trace_name: ctx.root_name.clone(),
                start_time_unix_nano: ctx.start_us.max(0) as u64 * 1000,
                duration_ms,
                span_set: spansets.first().cloned(),
                span_sets: spansets,
                service_stats: Default::default(),
            },
        ));
    }
    // Most recent first; the same trace reported once.
    hits.sort_by_key(|h| std::cmp::Reverse(h.0));
    let mut seen = std::collections::HashSet::new();
    let traces: Vec<pb::TraceSearchMetadata> = hits
        .into_iter()
        .map(|h| h.1)
        .filter(|t| seen.insert(t.trace_id.clone()))
        .take(req.limit)
        .collect();
    Ok(pb::SearchResponse {
        metrics: Some(pb::SearchMetrics {
            inspected_traces: groups.len() as u32,
            inspected_spans: inspected as u64,
            completed_jobs: 1,
            total_jobs: 1,
            ..Default::default()
        }),
        traces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, tap: &str, seq: (u32, u32), start: i64, trace: &str) -> FlowRecord {
        FlowRecord {
            _id: id,
            observation_point: tap.into(),
            req_tcp_seq: seq.0,
            resp_tcp_seq: seq.1,
            start_time_us: start,
            end_time_us: start + 1000,
            trace_id: trace.into(),
            ..Default::default()
        }
    }

    #[test]
    fn rows_group_by_trace_or_observed_request() {
        let rows = vec![
            rec(1, "c-p", (10, 20), 0, ""),
            rec(2, "c", (10, 20), 30, ""),
            rec(3, "s", (10, 20), 5_000_000, ""), // same sequences, much later: another request
            rec(4, "s-app", (0, 0), 40, "abc"),
            rec(5, "c-app", (0, 0), 50, "abc"),
            rec(6, "c-p", (0, 0), 60, ""),
        ];
        let g = group_rows(&rows, 60_000);
        let sets: Vec<Vec<usize>> = g.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(sets, vec![vec![0, 1], vec![2], vec![3, 4], vec![5]]);
        let zero = hit_trace_id(&g[0].0, &[&rows[1], &rows[0]]);
        assert_eq!(zero.as_zero_code(), Some(1));
    }
}
