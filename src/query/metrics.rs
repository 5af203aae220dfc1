//! TraceQL metrics (`/api/metrics/query_range`, `/api/metrics/query`): compiles a metrics
//! query into ONE store [`Aggregation`] (count, min, max, sum per group and step bucket) and
//! turns its rows into series, then applies `topk`/`bottomk` and sample comparisons in the
//! process. Never reads spans row by row. Owns no HTTP and no SQL.
//!
//! Exactness: only span filters whose every condition maps exactly onto a store predicate are
//! run (`{}`, `&&` of: `resource.service.name = "…"`, `status` `=`/`!=`, `duration` compared with a whole number
//! of microseconds, mapped text columns `=`/`!=`, mapped integer columns compared with an
//! integer). Anything else answers [`MetricsError::NotSupported`] naming the construct.
//!
//! Span model for counting: one row is one span, but DeepFlow splits a call it could not pair
//! into a request row (`type` 0) and a response row (`type` 1); a paired call is one session
//! row (`type` 2). Metrics count sessions and requests, never responses, so each call counts
//! once. A request-only row has no response, so its duration is 0.

use crate::store::model::OrgId;
use crate::store::{AggregateRow, Aggregation, Col, Filter, FlowStore, GroupKey, StoreError};
use crate::traceql::plan;
use crate::traceql::{
    Attribute, BinaryOp, FieldExpr, Intrinsic, MetricsFunction, MetricsQuery, MetricsStage, Query,
    RootExpr, Scope, SecondStageKind, SpansetExpr, Stage, Static,
};
use std::collections::BTreeMap;

/// Most series one query may produce unless the request asks for fewer.
pub const DEFAULT_MAX_SERIES: usize = 1000;
/// Most samples per series (buckets in the window).
pub const MAX_BUCKETS: i64 = 11_000;

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
}

/// A label value: text, an integer for integer columns, or a number.
#[derive(Debug, Clone, PartialEq)]
pub enum LabelValue {
    Str(String),
    Int(i64),
    /// `p` of a quantile, `__bucket` of a histogram.
    Float(f64),
}

/// One result series: labels and samples (`timestamp_ms`, value) on the step grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Vec<(String, LabelValue)>,
    pub samples: Vec<(i64, f64)>,
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

struct Plan<'a> {
    metrics: &'a MetricsQuery,
    filter: Filter,
    by: Vec<(String, GroupKey, bool)>,
    value: Option<(Col, f64)>,
}

fn not_supported(what: impl std::fmt::Display) -> MetricsError {
    MetricsError::NotSupported(what.to_string())
}

fn plan_query(query: &Query) -> Result<Plan<'_>, MetricsError> {
    let m = match &query.root {
        RootExpr::Metrics(m) => m,
        RootExpr::MetricsMath(_) => {
            return Err(not_supported("arithmetic between metrics queries"))
        }
        _ => {
            return Err(MetricsError::BadQuery(
                "invalid TraceQL query: not a metrics query (expected `{…} | rate()` or another metrics function)"
                    .into(),
            ))
        }
    };
    let mut filter = Filter::True;
    match m.pipeline.stages.as_slice() {
        [] => {}
        [Stage::Spanset(SpansetExpr::Filter(f))] => filter = exact(&f.expr)?,
        [Stage::Spanset(e @ SpansetExpr::Op { .. })] => return Err(not_supported(e)),
        stages => {
            let names: Vec<String> = stages.iter().map(|s| s.to_string()).collect();
            return Err(not_supported(format!("pipeline {}", names.join(" | "))));
        }
    }
    let filter = Filter::IntIn(Col::Type, vec![0, 2]).and(filter);
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
        other => return Err(not_supported(format!("{}()", other.name()))),
    };
    Ok(Plan {
        metrics: m,
        filter,
        by,
        value,
    })
}

/// The search planner's text column for an attribute name, only where the mapping holds for
/// every row: DeepFlow's own columns (`deepflow.*`). OTel-convention names (`http.method`,
/// `db.operation`…) map to a column only for some protocols, so they are not exact here.
fn text_column(name: &str) -> Option<Col> {
    name.starts_with("deepflow.")
        .then(|| plan::text_column(name))
        .flatten()
}

/// As [`text_column`], for integer columns (`server.port` is `server_port` on every row).
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

/// The store key of a `by()` attribute, and whether its values are integers.
fn group_key(a: &Attribute) -> Option<(GroupKey, bool)> {
    match a {
        Attribute::Intrinsic(Intrinsic::Name) => Some((GroupKey::SpanName, false)),
        Attribute::Intrinsic(Intrinsic::Status) => Some((GroupKey::Status, false)),
        Attribute::Scoped {
            scope,
            parent: false,
            name,
        } => {
            if name == "service.name" && matches!(scope, Scope::Resource | Scope::None) {
                return Some((GroupKey::Service, false));
            }
            if !matches!(scope, Scope::Span | Scope::None) {
                return None;
            }
            text_column(name)
                .map(|c| (GroupKey::Column(c), false))
                .or_else(|| int_column(name).map(|c| (GroupKey::Column(c), true)))
        }
        _ => None,
    }
}

fn cmp(op: BinaryOp) -> Option<crate::store::CmpOp> {
    use crate::store::CmpOp as C;
    Some(match op {
        BinaryOp::Eq => C::Eq,
        BinaryOp::Neq => C::Neq,
        BinaryOp::Lt => C::Lt,
        BinaryOp::Lte => C::Lte,
        BinaryOp::Gt => C::Gt,
        BinaryOp::Gte => C::Gte,
        _ => return None,
    })
}

/// The exact store predicate of a span filter expression, or the construct that has none.
fn exact(e: &FieldExpr) -> Result<Filter, MetricsError> {
    match e {
        FieldExpr::Static(Static::Bool(true)) => Ok(Filter::True),
        FieldExpr::Binary {
            op: BinaryOp::And,
            lhs,
            rhs,
            ..
        } => Ok(exact(lhs)?.and(exact(rhs)?)),
        FieldExpr::Binary { op, lhs, rhs, .. } => {
            let (FieldExpr::Attribute(a), FieldExpr::Static(s), Some(c)) =
                (&**lhs, &**rhs, cmp(*op))
            else {
                return Err(not_supported(e));
            };
            condition(a, c, s).ok_or_else(|| not_supported(e))
        }
        _ => Err(not_supported(e)),
    }
}

fn condition(a: &Attribute, c: crate::store::CmpOp, s: &Static) -> Option<Filter> {
    use crate::store::CmpOp;
    match (a, s) {
        (Attribute::Intrinsic(Intrinsic::Status), Static::Status(st)) => {
            // The span model's status (src/span.rs `span_status`) from `response_status`.
            use crate::store::model::response_status as rs;
            let error = || {
                Filter::IntIn(
                    Col::ResponseStatus,
                    vec![
                        rs::TIMEOUT.into(),
                        rs::SERVER_ERROR.into(),
                        rs::CLIENT_ERROR.into(),
                    ],
                )
            };
            let ok = || Filter::IntIn(Col::ResponseStatus, vec![rs::SUCCESS.into()]);
            let is = match st {
                crate::traceql::Status::Error => error(),
                crate::traceql::Status::Ok => ok(),
                crate::traceql::Status::Unset => {
                    Filter::Not(Box::new(Filter::Or(vec![ok(), error()])))
                }
            };
            match c {
                CmpOp::Eq => Some(is),
                CmpOp::Neq => Some(Filter::Not(Box::new(is))),
                _ => None,
            }
        }
        (Attribute::Intrinsic(Intrinsic::Duration), Static::Duration(ns)) if ns % 1000 == 0 => {
            Some(Filter::IntCmp(Col::ResponseDuration, c, ns / 1000))
        }
        (
            Attribute::Scoped {
                scope,
                parent: false,
                name,
            },
            Static::String(v),
        ) => {
            if name == "service.name" && matches!(scope, Scope::Resource | Scope::None) {
                return (c == CmpOp::Eq).then(|| Filter::ServiceIn(vec![v.clone()]));
            }
            if !matches!(scope, Scope::Span | Scope::None) {
                return None;
            }
            let col = text_column(name)?;
            matches!(c, CmpOp::Eq | CmpOp::Neq).then(|| Filter::StrCmp(col, c, v.clone()))
        }
        (
            Attribute::Scoped {
                scope: Scope::Span | Scope::None,
                parent: false,
                name,
            },
            Static::Int(v),
        ) => int_column(name).map(|col| Filter::IntCmp(col, c, *v)),
        _ => None,
    }
}

/// Checks the query can be answered, without running it.
pub fn check(query: &Query) -> Result<(), MetricsError> {
    plan_query(query).map(|_| ())
}

/// Runs a range query: one sample per step from the window's start aligned down to the step.
pub async fn query_range(
    store: &dyn FlowStore,
    org: OrgId,
    req: &MetricsRequest,
) -> Result<Vec<Series>, MetricsError> {
    let plan = plan_query(&req.query)?;
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
    run(
        store,
        org,
        &plan,
        start_us,
        step_us,
        buckets,
        req.max_series,
    )
    .await
}

/// An instant query: the range `[start, end)` as one step; one value per series.
pub async fn query_instant(
    store: &dyn FlowStore,
    org: OrgId,
    req: &MetricsRequest,
) -> Result<Vec<(Vec<(String, LabelValue)>, f64)>, MetricsError> {
    let plan = plan_query(&req.query)?;
    let start_us = req.start_ns.div_euclid(1000);
    let span_us = req.end_ns.div_euclid(1000) - start_us;
    if span_us <= 0 {
        return Err(MetricsError::BadQuery(
            "invalid range: end must be after start".into(),
        ));
    }
    let series = run(store, org, &plan, start_us, span_us, 1, req.max_series).await?;
    Ok(series
        .into_iter()
        .filter_map(|s| s.samples.first().map(|&(_, v)| (s.labels, v)))
        .collect())
}

/// One aggregation over `buckets` steps of `step_us` from `start_us`, then the second stages.
async fn run(
    store: &dyn FlowStore,
    org: OrgId,
    plan: &Plan<'_>,
    start_us: i64,
    step_us: i64,
    buckets: i64,
    max_series: usize,
) -> Result<Vec<Series>, MetricsError> {
    let func = &plan.metrics.first_stage.func;
    let log2 = matches!(
        func,
        MetricsFunction::QuantileOverTime(..) | MetricsFunction::HistogramOverTime(_)
    );
    // Durations are µs in the store and log2 buckets are powers of two in ns (reported in
    // seconds); other columns are bucketed on their own values.
    let (divisor, bucket_unit) = match plan.value {
        Some((Col::ResponseDuration, _)) => (1000, 1e-9),
        _ => (1, 1.0),
    };
    let agg = Aggregation {
        filter: plan.filter.clone(),
        start_us,
        end_us: start_us + buckets * step_us,
        step_us,
        by: plan.by.iter().map(|(_, k, _)| *k).collect(),
        value: plan.value.map(|(c, _)| c),
        log2: log2.then_some(divisor),
        max_rows: (max_series as u64 + 1)
            .saturating_mul(buckets as u64)
            .saturating_mul(if log2 { 64 } else { 1 }),
    };
    tracing::debug!(filter = %agg.filter, buckets, step_us, "metrics aggregation");
    let rows = store.aggregate(org, &agg).await?;
    let mut groups: BTreeMap<Vec<String>, Vec<AggregateRow>> = BTreeMap::new();
    for r in rows {
        groups.entry(r.group.clone()).or_default().push(r);
    }
    let step_s = step_us as f64 / 1e6;
    let scale = plan.value.map_or(1.0, |(_, f)| f);
    let ts_ms = |b: i64| (start_us + b * step_us).div_euclid(1000);
    let mut series: Vec<Series> = Vec::new();
    for (group, rows) in groups {
        let labels: Vec<(String, LabelValue)> = plan
            .by
            .iter()
            .zip(group)
            .map(|((name, _, int), v)| {
                let v = match int.then(|| v.parse::<i64>().ok()).flatten() {
                    Some(i) => LabelValue::Int(i),
                    None => LabelValue::Str(v),
                };
                (name.clone(), v)
            })
            .collect();
        match func {
            MetricsFunction::HistogramOverTime(_) => {
                let mut by_k: BTreeMap<i64, BTreeMap<i64, u64>> = BTreeMap::new();
                for r in &rows {
                    *by_k.entry(r.log2).or_default().entry(r.bucket).or_default() += r.count;
                }
                for (k, counts) in by_k {
                    let mut l = labels.clone();
                    let upper = 2f64.powi(k as i32) * bucket_unit;
                    l.push(("__bucket".to_string(), LabelValue::Float(upper)));
                    let samples = (0..buckets)
                        .map(|b| (ts_ms(b), counts.get(&b).copied().unwrap_or(0) as f64))
                        .collect();
                    series.push(Series { labels: l, samples });
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
                    series.push(Series { labels: l, samples });
                }
            }
            _ => {
                let zero_filled =
                    matches!(func, MetricsFunction::Rate | MetricsFunction::CountOverTime);
                let by_bucket: BTreeMap<i64, &AggregateRow> =
                    rows.iter().map(|r| (r.bucket, r)).collect();
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
                series.push(Series { labels, samples });
            }
        }
        if series.len() > max_series {
            return Err(MetricsError::TooManySeries(max_series));
        }
    }
    for stage in &plan.metrics.second_stages {
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
    Ok(series)
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
        plan_query(&query).map(|p| p.filter)
    }

    #[test]
    fn exact_filters_are_planned_with_the_span_model() {
        let counted = Filter::IntIn(Col::Type, vec![0, 2]);
        assert_eq!(planned("{} | rate()").unwrap(), counted);
        assert_eq!(
            planned(r#"{ resource.service.name = "a" && duration > 2ms } | rate()"#).unwrap(),
            Filter::And(vec![
                counted,
                Filter::And(vec![
                    Filter::ServiceIn(vec!["a".into()]),
                    Filter::IntCmp(Col::ResponseDuration, crate::store::CmpOp::Gt, 2000),
                ])
            ])
        );
    }

    #[test]
    fn inexact_constructs_are_named() {
        for (q, what) in [
            ("{ duration > 1500ns } | rate()", "duration >"),
            (r#"{ name = "x" } | rate()"#, "name"),
            (r#"{ span.deepflow.endpoint =~ "x" } | rate()"#, "=~"),
            (
                r#"{ resource.service.name != "a" } | rate()"#,
                "service.name",
            ),
            ("{ } | rate() by (kind)", "by(kind)"),
        ] {
            match planned(q) {
                Err(MetricsError::NotSupported(m)) => assert!(m.contains(what), "{q}: {m}"),
                other => panic!("{q}: {other:?}"),
            }
        }
    }
}
