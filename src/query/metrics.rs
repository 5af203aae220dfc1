//! TraceQL metrics (`/api/metrics/query_range`, `/api/metrics/query`): compiles each metrics
//! query into ONE store [`Aggregation`] (count, min, max, sum per group and step bucket) and
//! turns its rows into series, then applies `topk`/`bottomk`, sample comparisons and the
//! arithmetic between queries in the process. `compare()` is one aggregation per attribute and
//! side. Never reads spans row by row; exemplars read at most `exemplars` rows by ID. Owns no
//! HTTP and no SQL.
//!
//! Exactness: only span filters whose every condition maps exactly onto a store predicate are
//! run. The span model's keys (`name`, `status`, `kind`, `resource.service.name`, every span
//! attribute DeepFlow's columns give and every OTel attribute) are computed in the store as
//! `crate::span` computes them (`store::span_sql`), so `=`, `!=`, `<`, `>`, `= nil`, `!= nil`,
//! `&&` and `||` on them are exact; `duration` compared with a whole number of microseconds
//! too. Anything else (regular expressions, arithmetic in filters, structural intrinsics,
//! resource attributes other than the service) answers [`MetricsError::NotSupported`] naming
//! the construct.
//!
//! Span model for counting: one row is one span, but DeepFlow splits a call it could not pair
//! into a request row (`type` 0) and a response row (`type` 1); a paired call is one session
//! row (`type` 2). Metrics count sessions and requests, never responses, so each call counts
//! once. A request-only row has no response, so its duration is 0.

use super::search::{views, walk_traces, SearchConfig, Walk};
use super::trace::{TraceService, TraceTiming};
use crate::store::model::OrgId;
use crate::store::span_sql::{DERIVED_SPAN_ATTRIBUTES, UNMAPPED_SPAN_ATTRIBUTES};
use crate::store::{
    AggregateRow, Aggregation, CmpOp, Col, Filter, FlowQuery, FlowStore, GroupKey, KeyValue,
    StoreError,
};
use crate::traceql::eval::{Evaluator, SpanAttrs};
use crate::traceql::plan;
use crate::traceql::{
    Attribute, BinaryOp, FieldExpr, Intrinsic, MetricsExpr, MetricsFunction, MetricsQuery,
    MetricsStage, Query, RootExpr, Scope, SecondStageKind, SpansetExpr, Stage, Static,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Most series one query may produce unless the request asks for fewer.
pub const DEFAULT_MAX_SERIES: usize = 1000;
/// Most samples per series (buckets in the window).
pub const MAX_BUCKETS: i64 = 11_000;
/// Exemplars per query when the request does not say (Tempo's default).
pub const DEFAULT_EXEMPLARS: usize = 100;
/// Most exemplars a request may ask for.
pub const MAX_EXEMPLARS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A construct this service cannot answer exactly (501).
    #[error("not supported in metrics queries: {0}")]
    NotSupported(String),
    /// The query or its parameters are wrong (400).
    #[error("{0}")]
    BadQuery(String),
    /// More series than allowed (422).
    #[error("response exceeds maximum series limit of {0}; narrow the query or group by fewer attributes")]
    TooManySeries(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A metrics request: a parsed query over `[start_ns, end_ns)` in steps of `step_ns`.
#[derive(Debug, Clone)]
pub struct MetricsRequest {
    pub query: Query,
    pub start_ns: i64,
    pub end_ns: i64,
    pub step_ns: i64,
    pub max_series: usize,
    /// Most exemplars in the answer (0: none).
    pub exemplars: usize,
}

/// A label value: text, an integer for integer attributes, a number, or nil (the `*_total`
/// series of `compare()`).
#[derive(Debug, Clone, PartialEq)]
pub enum LabelValue {
    Str(String),
    Int(i64),
    /// `p` of a quantile, `__bucket` of a histogram.
    Float(f64),
    Nil,
}

/// A span that stands for a sample: its trace opens from Grafana's exemplar dot.
#[derive(Debug, Clone, PartialEq)]
pub struct Exemplar {
    /// The trace ID search and trace by ID use (application trace id, else the zero-code ID
    /// of the row, which opens the same assembled trace), lowercase hex without leading zeros.
    pub trace_id: String,
    pub timestamp_ms: i64,
    /// The measured value (seconds for durations), NaN for counts.
    pub value: f64,
}

/// One result series: labels, samples (`timestamp_ms`, value) on the step grid, exemplars.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(String, LabelValue)>,
    pub samples: Vec<(i64, f64)>,
    pub exemplars: Vec<Exemplar>,
}

/// Tempo's default step for a range: about 240 samples, rounded down to 5 s, or for short
/// ranges to 50 ms, and never below 50 ms.
pub fn default_step_ns(start_ns: i64, end_ns: i64) -> i64 {
    const FIVE_S: i64 = 5_000_000_000;
    const FIFTY_MS: i64 = 50_000_000;
    let baseline = (end_ns - start_ns).max(0) / 240;
    let interval = baseline / FIVE_S * FIVE_S;
    if interval >= FIVE_S {
        return interval;
    }
    (baseline / FIFTY_MS * FIFTY_MS).max(FIFTY_MS)
}

/// `buckets` steps of `step_us` from `start_us`.
#[derive(Debug, Clone, Copy)]
struct Grid {
    start_us: i64,
    step_us: i64,
    buckets: i64,
}

impl Grid {
    fn ts_ms(&self, b: i64) -> i64 {
        (self.start_us + b * self.step_us).div_euclid(1000)
    }
}

struct Plan<'a> {
    metrics: &'a MetricsQuery,
    filter: Filter,
    by: Vec<(String, GroupKey, bool)>,
    value: Option<(Col, f64)>,
}

fn not_supported(what: impl std::fmt::Display) -> MetricsError {
    MetricsError::NotSupported(what.to_string())
}

/// The metrics queries of a query: one, or the operands of its arithmetic.
fn leaves(query: &Query) -> Result<Vec<&MetricsQuery>, MetricsError> {
    match &query.root {
        RootExpr::Metrics(m) => Ok(vec![m]),
        RootExpr::MetricsMath(m) => Ok(m.expr.queries()),
        _ => Err(MetricsError::BadQuery(
            "invalid TraceQL query: not a metrics query (expected `{…} | rate()` or another metrics function)"
                .into(),
        )),
    }
}

/// The exact store predicate of a spanset pipeline made of span filters (`{a} | {b}` keeps the
/// spans that match both).
fn pipeline_filter(m: &MetricsQuery) -> Result<Filter, MetricsError> {
    let mut filter = Filter::True;
    for stage in &m.pipeline.stages {
        match stage {
            Stage::Spanset(SpansetExpr::Filter(f)) => filter = filter.and(exact(&f.expr)?),
            Stage::Spanset(e @ SpansetExpr::Op { .. }) => return Err(not_supported(e)),
            other => return Err(not_supported(format!("pipeline stage {other}"))),
        }
    }
    // The span model for counting: sessions and requests, never responses.
    Ok(Filter::IntIn(Col::Type, vec![0, 2]).and(filter))
}

fn plan_query(m: &MetricsQuery) -> Result<Plan<'_>, MetricsError> {
    let filter = pipeline_filter(m)?;
    let mut by = Vec::new();
    for a in &m.first_stage.by {
        let (key, int) = group_key(a).ok_or_else(|| not_supported(format!("by({a})")))?;
        by.push((a.to_string(), key, int));
    }
    let value = match &m.first_stage.func {
        MetricsFunction::Rate | MetricsFunction::CountOverTime => None,
        MetricsFunction::MinOverTime(a)
        | MetricsFunction::MaxOverTime(a)
        | MetricsFunction::AvgOverTime(a)
        | MetricsFunction::SumOverTime(a)
        | MetricsFunction::QuantileOverTime(a, _)
        | MetricsFunction::HistogramOverTime(a) => Some(value_column(a)?),
        MetricsFunction::Compare { selection, .. } => {
            exact(&selection.expr)?;
            if !by.is_empty() {
                return Err(MetricsError::BadQuery(
                    "compare() does not take by(); it compares every attribute".into(),
                ));
            }
            None
        }
    };
    Ok(Plan {
        metrics: m,
        filter,
        by,
        value,
    })
}

/// The search planner's integer column for an attribute name where the mapping holds for
/// every row (`server.port` is `server_port` on every row; DeepFlow's own columns).
fn int_column(name: &str) -> Option<Col> {
    (name.starts_with("deepflow.") || name == "server.port")
        .then(|| plan::int_column(name))
        .flatten()
}

/// The measured column and the factor to the reported unit (durations in seconds).
fn value_column(a: &Attribute) -> Result<(Col, f64), MetricsError> {
    match a {
        Attribute::Intrinsic(Intrinsic::Duration) => Ok((Col::ResponseDuration, 1e-6)),
        Attribute::Scoped {
            scope: Scope::Span | Scope::None,
            parent: false,
            name,
        } => int_column(name)
            .map(|c| (c, 1.0))
            .ok_or_else(|| not_supported(format!("measuring {a}"))),
        _ => Err(not_supported(format!("measuring {a}"))),
    }
}

/// Resource attributes the span model gives (`crate::span::Resource`) come from DeepFlow's
/// name tables; only the service is expressed in the store's SQL.
const RESOURCE_KEYS: &[&str] = crate::span::RESOURCE_ATTRIBUTES;

/// The span-model key of an attribute, and whether its values are integers; `None` where the
/// store cannot compute it exactly.
fn group_key(a: &Attribute) -> Option<(GroupKey, bool)> {
    let derived = |name: &str| {
        DERIVED_SPAN_ATTRIBUTES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, int)| *int)
    };
    match a {
        Attribute::Intrinsic(Intrinsic::Name) => Some((GroupKey::SpanName, false)),
        Attribute::Intrinsic(Intrinsic::Status) => Some((GroupKey::Status, false)),
        Attribute::Intrinsic(Intrinsic::Kind) => Some((GroupKey::Kind, false)),
        Attribute::Scoped {
            scope,
            parent: false,
            name,
        } => {
            if name == "service.name" && matches!(scope, Scope::Resource | Scope::None) {
                return Some((GroupKey::Service, false));
            }
            if UNMAPPED_SPAN_ATTRIBUTES.contains(&name.as_str()) {
                return None;
            }
            match scope {
                // A resource attribute the resource does not have is the row's OTel attribute.
                Scope::Resource => (derived(name).is_none()
                    && !RESOURCE_KEYS.contains(&name.as_str()))
                .then(|| (GroupKey::SpanAttr(name.clone()), false)),
                Scope::Span => Some((
                    GroupKey::SpanAttr(name.clone()),
                    derived(name).unwrap_or(false),
                )),
                // Unscoped: span, then the OTel attribute, then the resource.
                Scope::None => (!RESOURCE_KEYS.contains(&name.as_str())).then(|| {
                    (
                        GroupKey::SpanAttr(name.clone()),
                        derived(name).unwrap_or(false),
                    )
                }),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The exact store predicate of a span filter expression, or the construct that has none.
fn exact(e: &FieldExpr) -> Result<Filter, MetricsError> {
    match e {
        FieldExpr::Static(Static::Bool(true)) => Ok(Filter::True),
        FieldExpr::Static(Static::Bool(false)) => Ok(Filter::False),
        FieldExpr::Binary {
            op: BinaryOp::And,
            lhs,
            rhs,
            ..
        } => Ok(exact(lhs)?.and(exact(rhs)?)),
        FieldExpr::Binary {
            op: BinaryOp::Or,
            lhs,
            rhs,
            ..
        } => Ok(Filter::Or(vec![exact(lhs)?, exact(rhs)?])),
        FieldExpr::Unary {
            op: crate::traceql::UnaryOp::Exists,
            expr,
            ..
        } => match &**expr {
            FieldExpr::Attribute(a) => {
                condition(a, CmpOp::Neq, &Static::Nil).ok_or_else(|| not_supported(e))
            }
            _ => Err(not_supported(e)),
        },
        FieldExpr::Binary { op, lhs, rhs, .. } => {
            let found = match (&**lhs, &**rhs) {
                (FieldExpr::Attribute(a), FieldExpr::Static(s)) => {
                    plan::cmp(*op).and_then(|c| condition(a, c, s))
                }
                (FieldExpr::Static(s), FieldExpr::Attribute(a)) => plan::flip(*op)
                    .and_then(plan::cmp)
                    .and_then(|c| condition(a, c, s)),
                _ => None,
            };
            found.ok_or_else(|| not_supported(e))
        }
        _ => Err(not_supported(e)),
    }
}

fn condition(a: &Attribute, c: CmpOp, s: &Static) -> Option<Filter> {
    match (a, s) {
        (Attribute::Intrinsic(Intrinsic::Status), Static::Status(st)) => {
            let is = Filter::KeyCmp(
                GroupKey::Status,
                CmpOp::Eq,
                KeyValue::Str(st.as_str().to_string()),
            );
            match c {
                CmpOp::Eq => Some(is),
                CmpOp::Neq => Some(Filter::Not(Box::new(is))),
                _ => None,
            }
        }
        (Attribute::Intrinsic(Intrinsic::Kind), Static::Kind(k)) => {
            matches!(c, CmpOp::Eq | CmpOp::Neq)
                .then(|| Filter::KeyCmp(GroupKey::Kind, c, KeyValue::Str(k.as_str().to_string())))
        }
        (Attribute::Intrinsic(Intrinsic::Duration), Static::Duration(ns)) if ns % 1000 == 0 => {
            Some(Filter::IntCmp(Col::ResponseDuration, c, ns / 1000))
        }
        (a, Static::Nil) => {
            let (key, _) = group_key(a)?;
            let present = match key {
                GroupKey::SpanAttr(_) => {
                    Filter::KeyCmp(key, CmpOp::Neq, KeyValue::Str(String::new()))
                }
                // The intrinsics and the service name are always there.
                _ => Filter::True,
            };
            match c {
                CmpOp::Neq => Some(present),
                CmpOp::Eq => Some(Filter::Not(Box::new(present))),
                _ => None,
            }
        }
        (a, Static::String(v)) => {
            let (key, int) = group_key(a)?;
            (!int).then(|| Filter::KeyCmp(key, c, KeyValue::Str(v.clone())))
        }
        (a, Static::Int(v)) => {
            let (key, int) = group_key(a)?;
            int.then_some(Filter::KeyCmp(key, c, KeyValue::Int(*v)))
        }
        _ => None,
    }
}

/// What a metrics query may use to assemble traces, for the queries whose filters need the
/// trace (structural intrinsics such as `nestedSetParent`, trace intrinsics, structural
/// operators, spanset pipelines) or that the store cannot compute exactly: the traces of the
/// range are assembled as search assembles them and the query is evaluated on each, the
/// matching spans counted in the process. Bounded by the search budget and the deadline; an
/// answer that could not see every trace says so ([`Answer::partial`]).
pub struct Tracing<'a> {
    pub tracer: &'a TraceService,
    pub search: &'a SearchConfig,
    pub seed_window_s: i64,
    pub deadline: Option<std::time::Instant>,
}

/// A metrics answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer<T> {
    pub series: Vec<T>,
    /// Why the figures may be incomplete (the trace walk ran out of budget).
    pub partial: Option<String>,
}

/// How one metrics query is computed.
enum Route<'a> {
    /// One aggregation in the store.
    Store(Plan<'a>),
    /// Over assembled traces.
    Traced(&'a MetricsQuery),
}

fn route(m: &MetricsQuery, traced: bool) -> Result<Route<'_>, MetricsError> {
    match plan_query(m) {
        Ok(p) => Ok(Route::Store(p)),
        Err(MetricsError::NotSupported(why)) if traced => {
            Evaluator::new(&m.pipeline.spanset_filters())
                .map_err(MetricsError::BadQuery)
                .map(|_| Route::Traced(m))
                .map_err(|_| MetricsError::NotSupported(why))
        }
        Err(e) => Err(e),
    }
}

/// Checks the query can be answered, without running it (`traced`: whether queries that need
/// assembled traces may run).
pub fn check(query: &Query, traced: bool) -> Result<(), MetricsError> {
    for m in leaves(query)? {
        route(m, traced)?;
    }
    Ok(())
}

/// Runs a range query: one sample per step from the window's start aligned down to the step.
pub async fn query_range(
    store: &dyn FlowStore,
    tracing: Option<&Tracing<'_>>,
    org: OrgId,
    req: &MetricsRequest,
) -> Result<Answer<Series>, MetricsError> {
    check(&req.query, tracing.is_some())?;
    if req.step_ns <= 0 || req.end_ns <= req.start_ns {
        return Err(MetricsError::BadQuery(
            "invalid range: end must be after start and step positive".into(),
        ));
    }
    let step_us = (req.step_ns / 1000).max(1);
    let start_us = req.start_ns.div_euclid(1000);
    let start_us = start_us - start_us.rem_euclid(step_us);
    let end_us = req.end_ns.div_euclid(1000);
    let buckets = (end_us - start_us + step_us - 1) / step_us;
    if buckets > MAX_BUCKETS {
        return Err(MetricsError::BadQuery(format!(
            "step too small: the range holds {buckets} steps, at most {MAX_BUCKETS} are allowed"
        )));
    }
    let grid = Grid {
        start_us,
        step_us,
        buckets,
    };
    evaluate(store, tracing, org, req, grid).await
}

/// An instant query: the range `[start, end)` as one step; one value per series.
pub async fn query_instant(
    store: &dyn FlowStore,
    tracing: Option<&Tracing<'_>>,
    org: OrgId,
    req: &MetricsRequest,
) -> Result<Answer<(Vec<(String, LabelValue)>, f64)>, MetricsError> {
    check(&req.query, tracing.is_some())?;
    let start_us = req.start_ns.div_euclid(1000);
    let span_us = req.end_ns.div_euclid(1000) - start_us;
    if span_us <= 0 {
        return Err(MetricsError::BadQuery(
            "invalid range: end must be after start".into(),
        ));
    }
    let grid = Grid {
        start_us,
        step_us: span_us,
        buckets: 1,
    };
    let answer = evaluate(store, tracing, org, req, grid).await?;
    Ok(Answer {
        series: answer
            .series
            .into_iter()
            .filter_map(|s| s.samples.first().map(|&(_, v)| (s.labels, v)))
            .collect(),
        partial: answer.partial,
    })
}

/// Every metrics query of the request (run together), then the arithmetic between them.
async fn evaluate(
    store: &dyn FlowStore,
    tracing: Option<&Tracing<'_>>,
    org: OrgId,
    req: &MetricsRequest,
    grid: Grid,
) -> Result<Answer<Series>, MetricsError> {
    let queries = leaves(&req.query)?;
    // Exemplars are shared out between the operands.
    let exemplars = req.exemplars / queries.len().max(1);
    let results = futures::future::try_join_all(queries.iter().map(|m| async move {
        match route(m, tracing.is_some())? {
            Route::Store(plan) => match &m.first_stage.func {
                MetricsFunction::Compare { .. } => {
                    Ok((compare(store, org, &plan, grid).await?, None))
                }
                _ => Ok((
                    run(store, org, &plan, grid, req.max_series, exemplars).await?,
                    None,
                )),
            },
            Route::Traced(m) => match tracing {
                Some(t) => match &m.first_stage.func {
                    MetricsFunction::Compare { .. } => compare_traced(t, org, m, grid).await,
                    _ => run_traced(t, org, m, grid, req.max_series, exemplars).await,
                },
                None => Err(not_supported(m)),
            },
        }
    }))
    .await?;
    let partial = results.iter().find_map(|(_, p)| p.clone());
    let results = results.into_iter().map(|(s, _)| s);
    let series = match &req.query.root {
        RootExpr::MetricsMath(math) => {
            let mut results = results;
            let mut series = match arithmetic(&math.expr, &mut results) {
                Operand::Series(s) => s,
                Operand::Scalar(_) => Vec::new(),
            };
            if let Some(f) = &math.filter {
                for s in &mut series {
                    s.samples.retain(|(_, v)| f.keeps(*v));
                }
            }
            second_stages(&math.stages, series)
        }
        _ => results.into_iter().next().unwrap_or_default(),
    };
    if series.len() > req.max_series {
        return Err(MetricsError::TooManySeries(req.max_series));
    }
    Ok(Answer { series, partial })
}

/// The smallest `k` with `v <= floor(2^k / d)`: the store's log2 bucket (see
/// `Aggregation::log2`), for values measured in the process.
fn log2_bucket(v: f64, d: i64) -> i64 {
    let d = d.max(1) as u64;
    (0..63)
        .find(|&k| v <= ((1u64 << k) / d) as f64)
        .map_or(63, |k| k as i64)
}

/// A metrics query over the assembled traces of the range: every span a trace's pipeline
/// matches (requests and sessions, as the store counts) whose start lies in the grid.
async fn run_traced(
    t: &Tracing<'_>,
    org: OrgId,
    m: &MetricsQuery,
    grid: Grid,
    max_series: usize,
    exemplars: usize,
) -> Result<(Vec<Series>, Option<String>), MetricsError> {
    let filters = m.pipeline.spanset_filters();
    let ev = Evaluator::new(&filters).map_err(MetricsError::BadQuery)?;
    let walk = traced_walk(t, &filters, grid);
    let func = &m.first_stage.func;
    let measured = func.attribute();
    // Durations are counted in µs like the store's, bucketed in powers of two of ns.
    let duration =
        measured.is_some_and(|a| a.static_type() == crate::traceql::StaticType::Duration);
    let (scale, bucket_unit, divisor) = if duration {
        (1e-6, 1e-9, 1000)
    } else {
        (1.0, 1.0, 1)
    };
    let log2 = is_log2(func);
    let mut rows: HashMap<(Vec<String>, i64, i64), AggregateRow> = HashMap::new();
    let mut labels_of: HashMap<Vec<String>, Vec<(String, LabelValue)>> = HashMap::new();
    let mut exemplar_of: HashMap<u64, Exemplar> = HashMap::new();
    let mut timing = TraceTiming::default();
    let stats = walk_traces(t.tracer, org, &walk, t.search, &mut timing, |found| {
        let (spans, parents) = views(&found.result.spans, &found.ctx);
        let counted = counted_spans(m, &ev, &spans, &parents, grid)?;
        for &i in &counted {
            let view = &spans[i];
            let r = view.facts.record;
            let value = match measured {
                None => 0.0,
                Some(a) => match view.attr(a) {
                    Some(Static::Duration(ns)) if duration => ns as f64 / 1000.0,
                    Some(Static::Int(v)) if !duration => v as f64,
                    Some(Static::Float(v)) if !duration => v,
                    _ => continue,
                },
            };
            let mut group = Vec::with_capacity(m.first_stage.by.len());
            let mut labels = Vec::with_capacity(m.first_stage.by.len());
            for a in &m.first_stage.by {
                let (text, label) = match view.attr(a) {
                    None | Some(Static::Nil) => ("\u{0}nil".to_string(), LabelValue::Nil),
                    Some(Static::Int(v)) => (v.to_string(), LabelValue::Int(v)),
                    Some(Static::Float(v)) => (v.to_string(), LabelValue::Float(v)),
                    Some(Static::String(v)) => (v.clone(), LabelValue::Str(v)),
                    Some(other) => {
                        let v = other.to_string();
                        (v.clone(), LabelValue::Str(v))
                    }
                };
                group.push(text);
                labels.push((a.to_string(), label));
            }
            labels_of.entry(group.clone()).or_insert(labels);
            let bucket = (r.start_time_us - grid.start_us) / grid.step_us;
            let k = if log2 { log2_bucket(value, divisor) } else { 0 };
            let id = r._id;
            let row = rows
                .entry((group.clone(), bucket, k))
                .or_insert_with(|| AggregateRow {
                    group,
                    bucket,
                    log2: k,
                    count: 0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                    sum: 0.0,
                    last_id: 0,
                });
            row.count += 1;
            row.min = row.min.min(value);
            row.max = row.max.max(value);
            row.sum += value;
            if exemplars > 0 && id > row.last_id {
                row.last_id = id;
                exemplar_of.insert(
                    id,
                    Exemplar {
                        trace_id: found.id.to_trimmed_hex(),
                        timestamp_ms: r.start_time_us.div_euclid(1000),
                        value: if measured.is_some()
                            && !matches!(func, MetricsFunction::HistogramOverTime(_))
                        {
                            value * scale
                        } else {
                            f64::NAN
                        },
                    },
                );
            }
        }
        Ok(!counted.is_empty())
    })
    .await
    .map_err(search_error)?;
    let shape = Shape {
        query: m,
        scale,
        bucket_unit,
    };
    let (mut series, last_ids) = build(
        &shape,
        rows.into_values().collect(),
        grid,
        max_series,
        |g| labels_of.get(g).cloned().unwrap_or_default(),
    )?;
    for (i, id) in pick_exemplars(&last_ids, exemplars) {
        if let Some(e) = exemplar_of.get(&id) {
            series[i].exemplars.push(e.clone());
        }
    }
    let partial = partial_of(stats);
    Ok((second_stages(&m.second_stages, series), partial))
}

/// The spans of an assembled trace that a traced metrics query counts: those its pipeline
/// matches that are requests or sessions (as the store counts) starting in the grid.
fn counted_spans(
    m: &MetricsQuery,
    ev: &Evaluator,
    spans: &[super::pipeline::SpanView<'_>],
    parents: &[Option<usize>],
    grid: Grid,
) -> Result<BTreeSet<usize>, super::pipeline::NotSupported> {
    let end_us = grid.start_us + grid.buckets * grid.step_us;
    let (sets, _) = super::pipeline::run_pipeline(&m.pipeline.stages, ev, spans, parents)?;
    Ok(sets
        .iter()
        .flat_map(|s| s.rows.iter().copied())
        .filter(|&i| {
            let r = spans[i].facts.record;
            r.r#type != 1 && r.start_time_us >= grid.start_us && r.start_time_us < end_us
        })
        .collect())
}

/// Up to `max` of the exemplar candidates, spread evenly over the series and their buckets:
/// (series position, row `_id`).
fn pick_exemplars(last_ids: &[Vec<u64>], max: usize) -> Vec<(usize, u64)> {
    let total: usize = last_ids.iter().map(Vec::len).sum();
    if total == 0 || max == 0 {
        return vec![];
    }
    let stride = total.div_ceil(max).max(1);
    let mut wanted = Vec::new();
    let mut n = 0usize;
    for (i, ids) in last_ids.iter().enumerate() {
        for &id in ids {
            if n.is_multiple_of(stride) && wanted.len() < max {
                wanted.push((i, id));
            }
            n += 1;
        }
    }
    wanted
}

/// A value of metrics arithmetic.
enum Operand {
    Series(Vec<Series>),
    Scalar(f64),
}

/// Combines the operands' results as the expression says, taking query results in order. Series
/// pair when their labels are equal; a side with one unlabelled series pairs with every series
/// of the other; unpaired series are dropped. Samples pair by timestamp (a missing or NaN
/// value counts as 0); division by zero gives NaN.
fn arithmetic(e: &MetricsExpr, results: &mut impl Iterator<Item = Vec<Series>>) -> Operand {
    match e {
        MetricsExpr::Query(_) => Operand::Series(results.next().unwrap_or_default()),
        MetricsExpr::Scalar(s) => Operand::Scalar(s.as_f64().unwrap_or(f64::NAN)),
        MetricsExpr::Op { op, lhs, rhs, .. } => {
            let (l, r) = (arithmetic(lhs, results), arithmetic(rhs, results));
            let apply = |a: f64, b: f64| {
                let (a, b) = (
                    if a.is_nan() { 0.0 } else { a },
                    if b.is_nan() { 0.0 } else { b },
                );
                match op {
                    BinaryOp::Add => a + b,
                    BinaryOp::Sub => a - b,
                    BinaryOp::Mul => a * b,
                    BinaryOp::Div if b == 0.0 => f64::NAN,
                    BinaryOp::Div => a / b,
                    _ => f64::NAN,
                }
            };
            let scale = |mut s: Vec<Series>, f: &dyn Fn(f64) -> f64| {
                for x in &mut s {
                    for (_, v) in &mut x.samples {
                        *v = f(*v);
                    }
                }
                s
            };
            match (l, r) {
                (Operand::Scalar(a), Operand::Scalar(b)) => Operand::Scalar(apply(a, b)),
                (Operand::Series(s), Operand::Scalar(b)) => {
                    Operand::Series(scale(s, &|v| apply(v, b)))
                }
                (Operand::Scalar(a), Operand::Series(s)) => {
                    Operand::Series(scale(s, &|v| apply(a, v)))
                }
                (Operand::Series(ls), Operand::Series(rs)) => {
                    let lone = |s: &[Series]| s.len() == 1 && s[0].labels.is_empty();
                    let mut out = Vec::new();
                    for l in &ls {
                        for r in &rs {
                            if l.labels != r.labels && !lone(&ls) && !lone(&rs) {
                                continue;
                            }
                            let labels = if l.labels.is_empty() {
                                r.labels.clone()
                            } else {
                                l.labels.clone()
                            };
                            let lv: BTreeMap<i64, f64> = l.samples.iter().copied().collect();
                            let rv: BTreeMap<i64, f64> = r.samples.iter().copied().collect();
                            let stamps: std::collections::BTreeSet<i64> =
                                lv.keys().chain(rv.keys()).copied().collect();
                            let samples = stamps
                                .into_iter()
                                .map(|t| {
                                    let a = lv.get(&t).copied().unwrap_or(0.0);
                                    let b = rv.get(&t).copied().unwrap_or(0.0);
                                    (t, apply(a, b))
                                })
                                .collect();
                            let mut exemplars = l.exemplars.clone();
                            exemplars.extend(r.exemplars.iter().cloned());
                            out.push(Series {
                                labels,
                                samples,
                                exemplars,
                            });
                        }
                    }
                    Operand::Series(out)
                }
            }
        }
    }
}

/// One aggregation over the grid, then the second stages and the exemplars.
async fn run(
    store: &dyn FlowStore,
    org: OrgId,
    plan: &Plan<'_>,
    grid: Grid,
    max_series: usize,
    exemplars: usize,
) -> Result<Vec<Series>, MetricsError> {
    let func = &plan.metrics.first_stage.func;
    let log2 = is_log2(func);
    // Durations are µs in the store and log2 buckets are powers of two in ns (reported in
    // seconds); other columns are bucketed on their own values.
    let divisor = match plan.value {
        Some((Col::ResponseDuration, _)) => 1000,
        _ => 1,
    };
    let Grid {
        start_us,
        step_us,
        buckets,
    } = grid;
    let agg = Aggregation {
        filter: plan.filter.clone(),
        start_us,
        end_us: start_us + buckets * step_us,
        step_us,
        by: plan.by.iter().map(|(_, k, _)| k.clone()).collect(),
        value: plan.value.map(|(c, _)| c),
        log2: log2.then_some(divisor),
        max_rows: (max_series as u64 + 1)
            .saturating_mul(buckets as u64)
            .saturating_mul(if log2 { 64 } else { 1 }),
        exemplars: exemplars > 0,
    };
    tracing::debug!(filter = %agg.filter, buckets, step_us, "metrics aggregation");
    let rows = store.aggregate(org, &agg).await?;
    let shape = Shape {
        query: plan.metrics,
        scale: plan.value.map_or(1.0, |(_, f)| f),
        bucket_unit: if divisor == 1000 { 1e-9 } else { 1.0 },
    };
    let (mut series, last_ids) = build(&shape, rows, grid, max_series, |group| {
        plan.by
            .iter()
            .zip(group)
            .map(|((name, _, int), v)| (name.clone(), label_value(v.clone(), *int)))
            .collect()
    })?;
    if exemplars > 0 {
        attach_exemplars(store, org, plan, &agg, &mut series, &last_ids, exemplars).await?;
    }
    Ok(second_stages(&plan.metrics.second_stages, series))
}

fn is_log2(func: &MetricsFunction) -> bool {
    matches!(
        func,
        MetricsFunction::QuantileOverTime(..) | MetricsFunction::HistogramOverTime(_)
    )
}

/// How a query's aggregate rows become series.
struct Shape<'a> {
    query: &'a MetricsQuery,
    /// Store unit → reported unit of the measured value.
    scale: f64,
    /// Unit of the log2 buckets' bounds (1 ns for durations, reported in seconds).
    bucket_unit: f64,
}

/// Series from aggregate rows (groups in label order), and per series the latest row of each
/// bucket (exemplar candidates).
#[allow(clippy::type_complexity)]
fn build(
    shape: &Shape<'_>,
    rows: Vec<AggregateRow>,
    grid: Grid,
    max_series: usize,
    labels_of: impl Fn(&[String]) -> Vec<(String, LabelValue)>,
) -> Result<(Vec<Series>, Vec<Vec<u64>>), MetricsError> {
    let func = &shape.query.first_stage.func;
    let buckets = grid.buckets;
    let mut groups: BTreeMap<Vec<String>, Vec<AggregateRow>> = BTreeMap::new();
    for r in rows {
        groups.entry(r.group.clone()).or_default().push(r);
    }
    let step_s = grid.step_us as f64 / 1e6;
    let scale = shape.scale;
    let ts_ms = |b: i64| grid.ts_ms(b);
    let mut series: Vec<Series> = Vec::new();
    let mut last_ids: Vec<Vec<u64>> = Vec::new();
    for (group, rows) in groups {
        let labels = labels_of(&group);
        let mut by_bucket_last: BTreeMap<i64, u64> = BTreeMap::new();
        for r in &rows {
            let e = by_bucket_last.entry(r.bucket).or_default();
            *e = (*e).max(r.last_id);
        }
        let candidates: Vec<u64> = by_bucket_last.into_values().filter(|&i| i != 0).collect();
        let mut push = |labels, samples| {
            series.push(Series {
                labels,
                samples,
                exemplars: vec![],
            });
            last_ids.push(candidates.clone());
        };
        match func {
            MetricsFunction::HistogramOverTime(_) => {
                let mut by_k: BTreeMap<i64, BTreeMap<i64, u64>> = BTreeMap::new();
                for r in &rows {
                    *by_k.entry(r.log2).or_default().entry(r.bucket).or_default() += r.count;
                }
                for (k, counts) in by_k {
                    let mut l = labels.clone();
                    let upper = 2f64.powi(k as i32) * shape.bucket_unit;
                    l.push(("__bucket".to_string(), LabelValue::Float(upper)));
                    let samples = (0..buckets)
                        .map(|b| (ts_ms(b), counts.get(&b).copied().unwrap_or(0) as f64))
                        .collect();
                    push(l, samples);
                }
            }
            MetricsFunction::QuantileOverTime(_, qs) => {
                let mut by_b: BTreeMap<i64, Vec<&AggregateRow>> = BTreeMap::new();
                for r in &rows {
                    by_b.entry(r.bucket).or_default().push(r);
                }
                for &q in qs {
                    let mut l = labels.clone();
                    l.push(("p".to_string(), LabelValue::Float(q)));
                    let samples = by_b
                        .iter()
                        .map(|(b, rs)| (ts_ms(*b), log2_quantile(rs, q) * scale))
                        .collect();
                    push(l, samples);
                }
            }
            _ => {
                let zero_filled =
                    matches!(func, MetricsFunction::Rate | MetricsFunction::CountOverTime);
                let mut by_bucket: BTreeMap<i64, AggregateRow> = BTreeMap::new();
                for r in rows {
                    match by_bucket.get_mut(&r.bucket) {
                        // One row per bucket from the store; the traced path may give several.
                        Some(a) => {
                            a.count += r.count;
                            a.min = a.min.min(r.min);
                            a.max = a.max.max(r.max);
                            a.sum += r.sum;
                        }
                        None => {
                            by_bucket.insert(r.bucket, r);
                        }
                    }
                }
                let samples = (0..buckets)
                    .filter_map(|b| {
                        let Some(r) = by_bucket.get(&b) else {
                            return zero_filled.then_some((ts_ms(b), 0.0));
                        };
                        let v = match func {
                            MetricsFunction::Rate => r.count as f64 / step_s,
                            MetricsFunction::CountOverTime => r.count as f64,
                            MetricsFunction::MinOverTime(_) => r.min * scale,
                            MetricsFunction::MaxOverTime(_) => r.max * scale,
                            MetricsFunction::SumOverTime(_) => r.sum * scale,
                            MetricsFunction::AvgOverTime(_) => r.sum * scale / r.count as f64,
                            _ => f64::NAN,
                        };
                        Some((ts_ms(b), v))
                    })
                    .collect();
                push(labels, samples);
            }
        }
        if series.len() > max_series {
            return Err(MetricsError::TooManySeries(max_series));
        }
    }
    Ok((series, last_ids))
}

/// `> 10`, `topk(5)` and friends, in order; series left without samples are dropped.
fn second_stages(stages: &[MetricsStage], mut series: Vec<Series>) -> Vec<Series> {
    for stage in stages {
        match stage {
            MetricsStage::Filter(f) => {
                for s in &mut series {
                    s.samples.retain(|(_, v)| f.keeps(*v));
                }
            }
            MetricsStage::Limit(l) => limit(&mut series, l.kind, l.limit.max(0) as usize),
        }
    }
    series.retain(|s| !s.samples.is_empty());
    series
}

fn label_value(v: String, int: bool) -> LabelValue {
    match int.then(|| v.parse::<i64>().ok()).flatten() {
        Some(i) => LabelValue::Int(i),
        None => LabelValue::Str(v),
    }
}

/// Up to `max` exemplars spread evenly over the series and their buckets: the latest span of
/// the bucket, read by ID (one read), with its trace ID and measured value.
async fn attach_exemplars(
    store: &dyn FlowStore,
    org: OrgId,
    plan: &Plan<'_>,
    agg: &Aggregation,
    series: &mut [Series],
    last_ids: &[Vec<u64>],
    max: usize,
) -> Result<(), MetricsError> {
    let wanted = pick_exemplars(last_ids, max);
    if wanted.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<u64> = wanted.iter().map(|&(_, id)| id).collect();
    ids.sort_unstable();
    ids.dedup();
    let q = FlowQuery::new(Filter::ids(ids.iter().copied()))
        .window(agg.time_window())
        .limit(ids.len() as u64);
    let records = store.select_records(org, &q).await?;
    let by_id: std::collections::HashMap<u64, &crate::store::model::FlowRecord> =
        records.iter().map(|r| (r._id, r)).collect();
    let measured = matches!(
        plan.metrics.first_stage.func,
        MetricsFunction::QuantileOverTime(..)
            | MetricsFunction::MinOverTime(_)
            | MetricsFunction::MaxOverTime(_)
            | MetricsFunction::AvgOverTime(_)
            | MetricsFunction::SumOverTime(_)
    ) && matches!(plan.value, Some((Col::ResponseDuration, _)));
    for (i, id) in wanted {
        let Some(r) = by_id.get(&id) else { continue };
        let trace = [&r.trace_id, &r._trace_id_2]
            .into_iter()
            .find_map(|t| crate::tempo::ids::TraceId::from_app_trace_id(t))
            .unwrap_or_else(|| crate::tempo::ids::TraceId::zero_code(r._id));
        series[i].exemplars.push(Exemplar {
            trace_id: trace.to_trimmed_hex(),
            timestamp_ms: r.start_time_us.div_euclid(1000),
            value: if measured {
                r.response_duration as f64 * 1e-6
            } else {
                f64::NAN
            },
        });
    }
    Ok(())
}

/// The attributes `compare()` breaks down, with their label names: the span model's keys a
/// Grafana user groups by (the intrinsics, the service, DeepFlow's protocol facts and the
/// semantic conventions derived from them).
const COMPARED: &[&str] = &[
    "resource.service.name",
    "name",
    "status",
    "kind",
    "span.deepflow.l7_protocol",
    "span.deepflow.signal_source",
    "span.deepflow.observation_point",
    "span.deepflow.endpoint",
    "span.deepflow.response_code",
    "span.deepflow.process_kname",
    "span.http.method",
    "span.http.status_code",
    "span.db.system",
    "span.db.operation",
    "span.rpc.method",
    "span.server.port",
];

/// `compare({selection}, topN, start, end)`: for each attribute of [`COMPARED`], the span
/// counts per step of its `topN` most frequent values among the selected spans
/// (`__meta_type="selection"`) and the other spans (`"baseline"`), and per side the count of
/// spans that have the attribute (`"selection_total"`, `"baseline_total"`, the attribute nil).
/// Two aggregations per attribute, run together.
async fn compare(
    store: &dyn FlowStore,
    org: OrgId,
    plan: &Plan<'_>,
    grid: Grid,
) -> Result<Vec<Series>, MetricsError> {
    let MetricsFunction::Compare {
        selection,
        top_n,
        start,
        end,
    } = &plan.metrics.first_stage.func
    else {
        return Ok(vec![]);
    };
    let mut selected = exact(&selection.expr)?;
    if *start > 0 && *end > *start {
        selected = selected.and(Filter::StartTimeIn(start / 1000, end / 1000));
    }
    let top_n = (*top_n).max(1) as usize;
    let mut jobs = Vec::new();
    for name in COMPARED {
        let attr = crate::traceql::parse_identifier(name)
            .map_err(|e| MetricsError::BadQuery(e.to_string()))?;
        let (key, int) = group_key(&attr).ok_or_else(|| not_supported(name))?;
        for (side, filter) in [
            ("selection", selected.clone()),
            ("baseline", Filter::Not(Box::new(selected.clone()))),
        ] {
            let agg = Aggregation {
                filter: plan.filter.clone().and(filter),
                start_us: grid.start_us,
                end_us: grid.start_us + grid.buckets * grid.step_us,
                step_us: grid.step_us,
                by: vec![key.clone()],
                value: None,
                log2: None,
                max_rows: 1_000_000,
                exemplars: false,
            };
            jobs.push(async move {
                let rows = store.aggregate(org, &agg).await?;
                Ok::<_, MetricsError>((*name, int, side, rows))
            });
        }
    }
    let results = futures::future::try_join_all(jobs).await?;
    let mut out = Vec::new();
    for (name, int, side, rows) in results {
        let mut counts = CompareCounts::default();
        for r in rows {
            let v = r.group.into_iter().next().unwrap_or_default();
            counts.add(v, r.bucket, r.count);
        }
        out.extend(counts.series(name, int, side, grid, top_n));
    }
    Ok(out)
}

/// One attribute's span counts on one side of `compare()`: per value and bucket, and per
/// bucket for every span that has the attribute.
#[derive(Default)]
struct CompareCounts {
    by_value: BTreeMap<String, BTreeMap<i64, u64>>,
    totals: BTreeMap<i64, u64>,
}

impl CompareCounts {
    fn add(&mut self, value: String, bucket: i64, n: u64) {
        if value.is_empty() {
            return;
        }
        *self
            .by_value
            .entry(value)
            .or_default()
            .entry(bucket)
            .or_default() += n;
        *self.totals.entry(bucket).or_default() += n;
    }

    /// The `top_n` most frequent values' series and the total's.
    fn series(&self, name: &str, int: bool, side: &str, grid: Grid, top_n: usize) -> Vec<Series> {
        if self.totals.is_empty() {
            return vec![];
        }
        let samples = |counts: &BTreeMap<i64, u64>| -> Vec<(i64, f64)> {
            (0..grid.buckets)
                .map(|b| (grid.ts_ms(b), counts.get(&b).copied().unwrap_or(0) as f64))
                .collect()
        };
        let mut ranked: Vec<(&String, u64)> = self
            .by_value
            .iter()
            .map(|(v, c)| (v, c.values().sum()))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let mut out: Vec<Series> = ranked
            .into_iter()
            .take(top_n)
            .map(|(v, _)| Series {
                labels: vec![
                    ("__meta_type".into(), LabelValue::Str(side.into())),
                    (name.to_string(), label_value(v.clone(), int)),
                ],
                samples: samples(&self.by_value[v]),
                exemplars: vec![],
            })
            .collect();
        out.push(Series {
            labels: vec![
                (
                    "__meta_type".into(),
                    LabelValue::Str(format!("{side}_total")),
                ),
                (name.to_string(), LabelValue::Nil),
            ],
            samples: samples(&self.totals),
            exemplars: vec![],
        });
        out
    }
}

/// `compare()` over assembled traces (its spans filter needs the trace): the selection is
/// evaluated on each matched span, the attributes of [`COMPARED`] read through the span model.
async fn compare_traced(
    t: &Tracing<'_>,
    org: OrgId,
    m: &MetricsQuery,
    grid: Grid,
) -> Result<(Vec<Series>, Option<String>), MetricsError> {
    let MetricsFunction::Compare {
        selection,
        top_n,
        start,
        end,
    } = &m.first_stage.func
    else {
        return Ok((vec![], None));
    };
    let mut filters = m.pipeline.spanset_filters();
    filters.push(selection);
    let ev = Evaluator::new(&filters).map_err(MetricsError::BadQuery)?;
    let attrs: Vec<(&str, Attribute, bool)> = COMPARED
        .iter()
        .filter_map(|name| {
            let a = crate::traceql::parse_identifier(name).ok()?;
            let (_, int) = group_key(&a)?;
            Some((*name, a, int))
        })
        .collect();
    // [side][attribute]; side 0 selection, 1 baseline.
    let mut counts: Vec<Vec<CompareCounts>> = (0..2)
        .map(|_| attrs.iter().map(|_| CompareCounts::default()).collect())
        .collect();
    let walk = traced_walk(t, &m.pipeline.spanset_filters(), grid);
    let stats = walk_traces(
        t.tracer,
        org,
        &walk,
        t.search,
        &mut TraceTiming::default(),
        |found| {
            let (spans, parents) = views(&found.result.spans, &found.ctx);
            let counted = counted_spans(m, &ev, &spans, &parents, grid)?;
            for &i in &counted {
                let view = &spans[i];
                let r = view.facts.record;
                let in_window = *start <= 0
                    || *end <= *start
                    || (r.start_time_us * 1000 >= *start && r.start_time_us * 1000 < *end);
                let selected =
                    in_window && ev.eval(&selection.expr, view) == Some(Static::Bool(true));
                let bucket = (r.start_time_us - grid.start_us) / grid.step_us;
                for (k, (_, a, _)) in attrs.iter().enumerate() {
                    let v = match view.attr(a) {
                        None | Some(Static::Nil) => continue,
                        Some(Static::String(s)) => s,
                        Some(other) => other.to_string(),
                    };
                    counts[usize::from(!selected)][k].add(v, bucket, 1);
                }
            }
            Ok(!counted.is_empty())
        },
    )
    .await
    .map_err(search_error)?;
    let top_n = (*top_n).max(1) as usize;
    let mut out = Vec::new();
    for (side, per_attr) in ["selection", "baseline"].iter().zip(&counts) {
        for ((name, _, int), c) in attrs.iter().zip(per_attr) {
            out.extend(c.series(name, *int, side, grid, top_n));
        }
    }
    Ok((out, partial_of(stats)))
}

fn search_error(e: super::search::SearchError) -> MetricsError {
    match e {
        super::search::SearchError::NotSupported(n) => MetricsError::NotSupported(n.0),
        super::search::SearchError::BadQuery(b) => MetricsError::BadQuery(b),
        super::search::SearchError::Service(s) => match s {
            super::trace::ServiceError::Store(e) => MetricsError::Store(e),
            other => MetricsError::BadQuery(other.to_string()),
        },
    }
}

/// The walk over every trace of the grid's range, its candidates planned from the filters.
fn traced_walk(t: &Tracing<'_>, filters: &[&crate::traceql::SpansetFilter], grid: Grid) -> Walk {
    let end_us = grid.start_us + grid.buckets * grid.step_us;
    Walk {
        filter: plan::plan_filters(filters),
        start_s: grid.start_us.div_euclid(1_000_000),
        end_s: (end_us + 999_999).div_euclid(1_000_000),
        want: None,
        first_seeds_per_trace: 4.0,
        deadline: t.deadline,
        seed_window_s: t.seed_window_s,
        required: Vec::new(),
    }
}

fn partial_of(stats: super::search::WalkStats) -> Option<String> {
    (!stats.complete).then(|| {
        format!(
            "partial result: computed over the {} traces assembled before the search budget \
             (search.max_rows, search.max_traces or the request deadline) ran out",
            stats.traces
        )
    })
}

/// The `q` quantile (in the store's unit) of one step's log2 buckets: the value at rank
/// `q * count`, interpolated linearly inside its bucket, whose bounds are narrowed to the
/// exact min and max of the values that fell in it. The error is at most the bucket's width.
pub fn log2_quantile(rows: &[&AggregateRow], q: f64) -> f64 {
    let mut rows: Vec<&&AggregateRow> = rows.iter().filter(|r| r.count > 0).collect();
    rows.sort_by_key(|r| r.log2);
    let total: u64 = rows.iter().map(|r| r.count).sum();
    if total == 0 {
        return f64::NAN;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0.0;
    for r in &rows {
        let c = r.count as f64;
        if below + c >= rank {
            let frac = ((rank - below) / c).clamp(0.0, 1.0);
            return r.min + (r.max - r.min) * frac;
        }
        below += c;
    }
    rows.last().map_or(f64::NAN, |r| r.max)
}

/// `topk`/`bottomk`: at each timestamp, keep the samples of the `k` series with the highest
/// (lowest) values there; ties go to the series listed first.
fn limit(series: &mut [Series], kind: SecondStageKind, k: usize) {
    let mut stamps: BTreeMap<i64, Vec<(usize, f64)>> = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        for &(t, v) in &s.samples {
            stamps.entry(t).or_default().push((i, v));
        }
    }
    let mut keep: std::collections::HashSet<(usize, i64)> = Default::default();
    for (t, mut vals) in stamps {
        vals.sort_by(|a, b| {
            let o = a.1.total_cmp(&b.1);
            match kind {
                SecondStageKind::TopK => o.reverse(),
                SecondStageKind::BottomK => o,
            }
            .then(a.0.cmp(&b.0))
        });
        keep.extend(vals.into_iter().take(k).map(|(i, _)| (i, t)));
    }
    for (i, s) in series.iter_mut().enumerate() {
        s.samples.retain(|(t, _)| keep.contains(&(i, *t)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(q: &str) -> Result<Filter, MetricsError> {
        let query = crate::traceql::parse(q).unwrap();
        let m = leaves(&query)?[0];
        plan_query(m).map(|p| p.filter)
    }

    fn key(k: GroupKey, op: CmpOp, v: &str) -> Filter {
        Filter::KeyCmp(k, op, KeyValue::Str(v.into()))
    }

    #[test]
    fn exact_filters_are_planned_with_the_span_model() {
        let counted = Filter::IntIn(Col::Type, vec![0, 2]);
        assert_eq!(planned("{} | rate()").unwrap(), counted);
        assert_eq!(planned("{ true } | rate()").unwrap(), counted);
        assert_eq!(
            planned(r#"{ resource.service.name = "a" && duration > 2ms } | rate()"#).unwrap(),
            counted
                .clone()
                .and(key(GroupKey::Service, CmpOp::Eq, "a").and(Filter::IntCmp(
                    Col::ResponseDuration,
                    CmpOp::Gt,
                    2000
                )))
        );
        // What Traces Drilldown sends.
        assert_eq!(
            planned(r#"{ kind = server && status != error && span.http.method != nil } | rate()"#)
                .unwrap(),
            counted.clone().and(
                key(GroupKey::Kind, CmpOp::Eq, "server")
                    .and(Filter::Not(Box::new(key(
                        GroupKey::Status,
                        CmpOp::Eq,
                        "error"
                    ))))
                    .and(key(
                        GroupKey::SpanAttr("http.method".into()),
                        CmpOp::Neq,
                        ""
                    ))
            )
        );
        assert_eq!(
            planned(r#"{ span.http.status_code >= 500 || name = "GET /" } | rate()"#).unwrap(),
            counted.and(Filter::Or(vec![
                Filter::KeyCmp(
                    GroupKey::SpanAttr("http.status_code".into()),
                    CmpOp::Gte,
                    KeyValue::Int(500)
                ),
                key(GroupKey::SpanName, CmpOp::Eq, "GET /"),
            ]))
        );
    }

    #[test]
    fn inexact_constructs_are_named() {
        for (q, what) in [
            ("{ duration > 1500ns } | rate()", "duration >"),
            (r#"{ span.deepflow.endpoint =~ "x" } | rate()"#, "=~"),
            (
                r#"{ resource.k8s.pod.name = "a" } | rate()"#,
                "k8s.pod.name",
            ),
            (r#"{ span.deepflow.trace_id = "a" } | rate()"#, "trace_id"),
            ("{ nestedSetParent < 0 } | rate()", "nestedSetParent"),
            (
                "{ } | rate() by (resource.host.name)",
                "by(resource.host.name)",
            ),
        ] {
            match planned(q) {
                Err(MetricsError::NotSupported(m)) => assert!(m.contains(what), "{q}: {m}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> Series {
        Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), LabelValue::Str(v.to_string())))
                .collect(),
            samples: samples.to_vec(),
            exemplars: vec![],
        }
    }

    #[test]
    fn arithmetic_pairs_equal_labels_and_unlabelled_series() {
        let q = crate::traceql::parse(
            "({ status = error } | rate() by (name)) / ({ } | rate() by (name)) * 100",
        )
        .unwrap();
        let RootExpr::MetricsMath(math) = &q.root else {
            panic!("{q:?}")
        };
        let errors = vec![
            series(&[("name", "a")], &[(0, 1.0), (10, 0.0)]),
            series(&[("name", "b")], &[(0, 2.0)]),
        ];
        let all = vec![
            series(&[("name", "a")], &[(0, 4.0), (10, 0.0)]),
            series(&[("name", "c")], &[(0, 2.0)]),
        ];
        let mut it = vec![errors.clone(), all].into_iter();
        let Operand::Series(out) = arithmetic(&math.expr, &mut it) else {
            panic!()
        };
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].labels, errors[0].labels);
        assert_eq!(out[0].samples[0], (0, 25.0));
        // 0 / 0 is NaN, and NaN counts as 0 in the next operation.
        assert_eq!(out[0].samples[1], (10, 0.0));
        // An unlabelled side pairs with every series of the other.
        let total = vec![series(&[], &[(0, 4.0)])];
        let mut it = vec![errors.clone(), total].into_iter();
        let Operand::Series(out) = arithmetic(&math.expr, &mut it) else {
            panic!()
        };
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].samples, vec![(0, 50.0)]);
    }
}
