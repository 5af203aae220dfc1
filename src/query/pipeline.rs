//! TraceQL evaluation over ONE assembled trace: its spans as TraceQL sees them (through the
//! span model, `crate::span`), the trace-level intrinsics, spanset filters, `&&`/`||` between
//! spansets, the structural operators over the assembled tree, and the pipeline stages (`by`,
//! `select`, `coalesce`, aggregates compared with values). Pure: no store, no HTTP; the search
//! service (`query::search`) decides which traces to evaluate.

use crate::span::SpanFacts;
use crate::traceql::eval::{Evaluator, SpanAttrs};
use crate::traceql::*;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

/// Trace-level facts: what `trace:id`, `rootServiceName`, `rootName` and `traceDuration` read,
/// and what a search hit reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceCtx {
    /// 32 hex characters.
    pub trace_id: String,
    pub root_service: String,
    pub root_name: String,
    /// Earliest span start and latest span end as the trace shows them (µs).
    pub start_us: i64,
    pub end_us: i64,
}

/// One span of an assembled trace as TraceQL sees it.
pub struct SpanView<'a> {
    pub facts: SpanFacts<'a>,
    pub ctx: &'a TraceCtx,
    /// The span's ID and its parent's (hex), as the trace's encoding gives them.
    pub span_id: String,
    pub parent_id: Option<String>,
    /// Number of children in the assembled tree.
    pub child_count: usize,
    /// The span's place in the assembled tree (`nestedSetLeft`, `…Right`, `…Parent`).
    pub nested: NestedSet,
}

/// Tempo's nested-set numbers of a span: `left` and `right` bound its subtree, `parent` is its
/// parent's `left` (-1 for a root).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NestedSet {
    pub left: i64,
    pub right: i64,
    pub parent: i64,
}

impl SpanAttrs for SpanView<'_> {
    fn attr(&self, a: &Attribute) -> Option<Static> {
        let f = &self.facts;
        let r = f.record;
        match a {
            Attribute::Intrinsic(i) => match i {
                Intrinsic::Name => Some(Static::String(f.name())),
                Intrinsic::Status => Some(Static::Status(f.traceql_status())),
                Intrinsic::StatusMessage => {
                    let m = f.status().message;
                    (!m.is_empty()).then_some(Static::String(m))
                }
                Intrinsic::Kind => Some(Static::Kind(f.traceql_kind())),
                Intrinsic::Duration => Some(Static::Duration(r.response_duration as i64 * 1000)),
                Intrinsic::TraceDuration => Some(Static::Duration(
                    self.ctx.end_us.saturating_sub(self.ctx.start_us).max(0) * 1000,
                )),
                Intrinsic::TraceRootName => non_empty(&self.ctx.root_name),
                Intrinsic::TraceRootService => non_empty(&self.ctx.root_service),
                Intrinsic::TraceId => non_empty(&self.ctx.trace_id),
                Intrinsic::SpanId => Some(Static::String(self.span_id.clone())),
                Intrinsic::ParentId => self.parent_id.clone().map(Static::String),
                Intrinsic::InstrumentationName => {
                    Some(Static::String(f.signal().scope().to_string()))
                }
                Intrinsic::InstrumentationVersion => {
                    Some(Static::String(env!("CARGO_PKG_VERSION").into()))
                }
                Intrinsic::ChildCount => Some(Static::Int(self.child_count as i64)),
                Intrinsic::NestedSetLeft => Some(Static::Int(self.nested.left)),
                Intrinsic::NestedSetRight => Some(Static::Int(self.nested.right)),
                Intrinsic::NestedSetParent => Some(Static::Int(self.nested.parent)),
                _ => None,
            },
            Attribute::Scoped { parent: true, .. } => None,
            Attribute::Scoped { scope, name, .. } => match scope {
                Scope::Resource => f.resource_attr(name),
                Scope::Span => f.span_attr(name),
                Scope::None => f.any_attr(name),
                _ => None,
            },
        }
    }
}

fn non_empty(s: &str) -> Option<Static> {
    (!s.is_empty()).then(|| Static::String(s.to_string()))
}

pub fn kv(key: &str, v: &Static) -> KeyValue {
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
pub fn bare_name(a: &Attribute) -> String {
    match a {
        Attribute::Intrinsic(i) => i.as_str().rsplit(':').next().unwrap_or("").to_string(),
        Attribute::Scoped { name, .. } => name.clone(),
    }
}

/// A spanset during pipeline evaluation: span positions and the attributes pipelines added.
#[derive(Debug, Clone, Default)]
pub struct Spanset {
    pub rows: Vec<usize>,
    pub attrs: Vec<(String, Static)>,
}

/// Why a query cannot run (yet): answered 501 naming the construct.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not supported by this server yet")]
pub struct NotSupported(pub String);

/// The stages of a query this executor runs.
pub fn stages(q: &Query) -> Result<&[Stage], NotSupported> {
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

/// Parent links of a trace's spans (position → parent position).
type Parents<'a> = &'a [Option<usize>];

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
    spans: &[SpanView<'_>],
    candidates: &[usize],
    parents: Parents<'_>,
) -> Result<Vec<usize>, NotSupported> {
    use std::collections::HashSet;
    match e {
        SpansetExpr::Filter(f) => Ok(candidates
            .iter()
            .copied()
            .filter(|&i| ev.matches(f, &spans[i]))
            .collect()),
        SpansetExpr::Op { op, lhs, rhs } => {
            let l = eval_spanset(lhs, ev, spans, candidates, parents)?;
            let r = eval_spanset(rhs, ev, spans, candidates, parents)?;
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
    spans: &[SpanView<'_>],
) -> Option<Static> {
    let values: Vec<Static> = match &a.arg {
        None => vec![],
        Some(e) => set
            .rows
            .iter()
            .filter_map(|&i| ev.eval(e, &spans[i]))
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
    spans: &[SpanView<'_>],
    out: &mut Vec<(String, Static)>,
) -> Result<Option<Static>, NotSupported> {
    match e {
        ScalarExpr::Static(s) => Ok(Some(s.clone())),
        ScalarExpr::Aggregate(a) => {
            let v = aggregate(a, ev, set, spans);
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

/// Run a pipeline on one trace: its span sets, with `select()` attributes per span.
pub fn run_pipeline(
    stages: &[Stage],
    ev: &Evaluator,
    spans: &[SpanView<'_>],
    parents: Parents<'_>,
) -> Result<(Vec<Spanset>, Vec<Attribute>), NotSupported> {
    let mut sets: Vec<Spanset> = vec![Spanset {
        rows: (0..spans.len()).collect(),
        attrs: vec![],
    }];
    let mut selected = Vec::new();
    for stage in stages {
        match stage {
            Stage::Spanset(expr) => {
                let mut out = Vec::new();
                for set in &sets {
                    let hits = eval_spanset(expr, ev, spans, &set.rows, parents)?;
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
                    let l = scalar(&f.lhs, ev, &set, spans, &mut added)?;
                    let r = scalar(&f.rhs, ev, &set, spans, &mut added)?;
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
                        if let Some(v) = ev.eval(expr, &spans[i]) {
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
