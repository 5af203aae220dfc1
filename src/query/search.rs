//! TraceQL search over DeepFlow's rows, one hit per assembled trace: Tempo's `/api/search`.
//!
//! A search reads candidate rows (a superset predicate planned from the query's span filters,
//! `traceql::plan`), most recent first, page by page. The candidates not yet covered by a trace
//! assembled earlier in the search seed auto-tracing, in batches (one lockstep search for the
//! whole batch, `autotrace::BatchSearch`); every assembled trace gets its one trace ID (see
//! [`crate::query::trace::trace_identity`]) and the whole TraceQL query — span filters, `&&` /
//! `||` between spansets, structural operators, pipelines, trace intrinsics — is evaluated on it
//! (`query::pipeline`) with application, eBPF and network spans alike. Matching traces are hits;
//! the search goes on with older candidates until `limit` traces are found, the range is
//! exhausted, or its budget (rows, traces, time) is spent. It renders no SQL and parses no HTTP.

use super::pipeline::{
    bare_name, kv, run_pipeline, stages, NotSupported, SpanView, Spanset, TraceCtx,
};
use super::trace::{trace_identity, ServiceError, TraceService, TraceTiming};
use crate::autotrace::{self, OutSpan, Search, TraceResult};
use crate::span::SpanFacts;
use crate::store::model::{FlowMeta, OrgId};
use crate::store::{Filter, FlowQuery, Order, TimeWindow};
use crate::tempo::ids::TraceId;
use crate::tempo::pb;
use crate::traceql::eval::{Evaluator, SpanAttrs};
use crate::traceql::*;
use std::collections::HashSet;
use std::time::Instant;

/// Search limits (Tempo's defaults where Tempo has them).
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
    /// `search.page_rows`: candidate rows one store read returns (most recent first).
    pub page_rows: u64,
    /// `search.max_rows`: most candidate rows one search reads in all.
    pub max_rows: u64,
    /// `search.max_traces`: most traces one search assembles.
    pub max_traces: usize,
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
            page_rows: 2_000,
            max_rows: 1_000_000,
            max_traces: 20_000,
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
    /// Stop looking for more traces at this instant and answer what was found.
    pub deadline: Option<Instant>,
}

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

/// An assembled trace with its identity and trace-level facts.
pub struct FoundTrace {
    pub id: TraceId,
    pub ctx: TraceCtx,
    pub result: TraceResult,
}

/// The trace-level facts of an assembled trace: its root is the earliest span without a parent
/// (as Grafana draws it), its start and end the earliest and latest span times shown.
pub fn trace_ctx(id: &TraceId, result: &TraceResult) -> TraceCtx {
    let root = super::trace::root_span(result);
    let start = result
        .spans
        .iter()
        .map(|s| s.render_start_time_us)
        .min()
        .unwrap_or(0);
    let end = result
        .spans
        .iter()
        .map(|s| s.render_end_time_us.max(s.render_start_time_us))
        .max()
        .unwrap_or(0);
    TraceCtx {
        trace_id: id.to_hex(),
        root_service: root
            .map(|s| SpanFacts::of_span(s).service_name().into_owned())
            .unwrap_or_default(),
        root_name: root.map(|s| s.record.span_name()).unwrap_or_default(),
        start_us: start,
        end_us: end,
    }
}

/// The spans of a trace as TraceQL sees them, and their parent positions.
pub(crate) fn views<'a>(
    spans: &'a [OutSpan],
    ctx: &'a TraceCtx,
) -> (Vec<SpanView<'a>>, Vec<Option<usize>>) {
    let pos: std::collections::HashMap<usize, usize> =
        spans.iter().enumerate().map(|(i, s)| (s.id, i)).collect();
    let parents: Vec<Option<usize>> = spans
        .iter()
        .map(|s| s.parent_id.and_then(|p| pos.get(&p).copied()))
        .collect();
    let facts: Vec<SpanFacts<'a>> = spans.iter().map(SpanFacts::of_span).collect();
    let ids: Vec<String> = facts.iter().map(SpanFacts::span_id_hex).collect();
    let mut children = vec![0usize; spans.len()];
    for p in parents.iter().flatten() {
        children[*p] += 1;
    }
    let nested = nested_sets(&parents);
    let views = facts
        .into_iter()
        .enumerate()
        .map(|(i, facts)| SpanView {
            facts,
            ctx,
            span_id: ids[i].clone(),
            parent_id: parents[i].map(|p| ids[p].clone()),
            child_count: children[i],
            nested: nested[i],
        })
        .collect();
    (views, parents)
}

/// Tempo's nested-set numbering of a tree: depth first in span order, `left` on entering a
/// span and `right` on leaving it, counting from 1; `parent` is the parent's `left`, -1 for
/// a root. Spans in a cycle (never produced by assembly) keep zeros.
fn nested_sets(parents: &[Option<usize>]) -> Vec<crate::query::pipeline::NestedSet> {
    use crate::query::pipeline::NestedSet;
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); parents.len()];
    for (i, p) in parents.iter().enumerate() {
        if let Some(p) = p {
            kids[*p].push(i);
        }
    }
    let mut out = vec![NestedSet::default(); parents.len()];
    let mut next = 1i64;
    for root in (0..parents.len()).filter(|&i| parents[i].is_none()) {
        // (span, entered)
        let mut stack = vec![(root, false)];
        while let Some((i, entered)) = stack.pop() {
            if entered {
                out[i].right = next;
                next += 1;
                continue;
            }
            out[i].left = next;
            out[i].parent = parents[i].map_or(-1, |p| out[p].left);
            next += 1;
            stack.push((i, true));
            for &k in kids[i].iter().rev() {
                stack.push((k, false));
            }
        }
    }
    out
}

/// Evaluate the query on one assembled trace: its hit, or `None` when it does not match.
fn evaluate(
    found: &FoundTrace,
    stages: &[Stage],
    ev: &Evaluator,
    interesting: &[Attribute],
    spss: usize,
) -> Result<Option<pb::TraceSearchMetadata>, NotSupported> {
    let (spans, parents) = views(&found.result.spans, &found.ctx);
    let (sets, selected) = run_pipeline(stages, ev, &spans, &parents)?;
    if sets.is_empty() {
        return Ok(None);
    }
    let shown: Vec<&Attribute> = interesting.iter().chain(selected.iter()).collect();
    let ctx = &found.ctx;
    let span_set = |set: &Spanset| {
        let mut idx = set.rows.clone();
        idx.sort_by_key(|&i| {
            let s = &found.result.spans[i];
            (s.render_start_time_us, s.ids.first().copied())
        });
        let spans = idx
            .iter()
            .take(spss)
            .map(|&i| {
                let view = &spans[i];
                let s = &found.result.spans[i];
                let mut seen = HashSet::new();
                let attributes = shown
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
                    span_id: view.span_id.clone(),
                    name: view.facts.name(),
                    start_time_unix_nano: s.render_start_time_us.max(0) as u64 * 1000,
                    duration_nanos: s.record.response_duration * 1000,
                    attributes,
                }
            })
            .collect();
        pb::SpanSet {
            spans,
            matched: set.rows.len() as u32,
            attributes: set.attrs.iter().map(|(k, v)| kv(k, v)).collect(),
        }
    };
    let span_sets: Vec<pb::SpanSet> = sets.iter().map(span_set).collect();
    Ok(Some(pb::TraceSearchMetadata {
        trace_id: found.id.to_trimmed_hex(),
        root_service_name: if ctx.root_service.is_empty() {
            "<root span not yet received>".into()
        } else {
            ctx.root_service.clone()
        },
        root_trace_name: ctx.root_name.clone(),
        start_time_unix_nano: ctx.start_us.max(0) as u64 * 1000,
        duration_ms: (ctx.end_us.saturating_sub(ctx.start_us).max(0) / 1000) as u32,
        span_set: span_sets.first().cloned(),
        span_sets,
        service_stats: Default::default(),
    }))
}

/// The attributes a hit's spans show: those the query's filters name, except the intrinsics
/// every span already reports (name, duration, IDs) and the trace-level ones.
fn interesting_attributes(filters: &[&SpansetFilter]) -> Vec<Attribute> {
    filters
        .iter()
        .flat_map(|f| f.expr.attributes())
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
        .cloned()
        .collect()
}

/// Search the store.
pub async fn search(
    tracer: &TraceService,
    org: OrgId,
    req: &SearchRequest,
    cfg: &SearchConfig,
    seed_window_s: i64,
) -> Result<pb::SearchResponse, SearchError> {
    Ok(search_timed(tracer, org, req, cfg, seed_window_s).await?.0)
}

/// [`search`], also telling how its time was spent: store reads (`store_us`, `queries`), the
/// auto-tracing between them (`search_us`), assembling traces (`assemble_us`). `encode_us` is
/// left to the caller, which serialises the response.
pub async fn search_timed(
    tracer: &TraceService,
    org: OrgId,
    req: &SearchRequest,
    cfg: &SearchConfig,
    seed_window_s: i64,
) -> Result<(pb::SearchResponse, TraceTiming), SearchError> {
    let started = Instant::now();
    let mut timing = TraceTiming::default();
    let resp = run(tracer, org, req, cfg, seed_window_s, &mut timing).await?;
    timing.search_us =
        (started.elapsed().as_micros() as u64).saturating_sub(timing.store_us + timing.assemble_us);
    Ok((resp, timing))
}

/// Most seeds one batch assembles.
const MAX_BATCH: usize = 2048;

/// Candidate rows, most recent first, a page at a time, in time slices from the end of the range
/// back to its start (each slice twice as long as the one before, so a search that finds its
/// traces in the last minutes never scans the whole range). Within a slice each page ends where
/// the previous one stopped (rows of the boundary second already read are excluded), so every
/// candidate of the range is read once.
struct Candidates {
    filter: Filter,
    start_s: u32,
    /// Upper bound (inclusive) of the next read.
    end_s: u32,
    /// Length of the current slice, seconds.
    slice_s: u32,
    /// `_id`s read so far in the second `end_s`.
    boundary: Vec<u64>,
    exhausted: bool,
}

impl Candidates {
    fn new(filter: Filter, start_s: u32, end_s: u32) -> Self {
        let range = end_s.saturating_sub(start_s).saturating_add(1);
        Candidates {
            filter,
            start_s,
            end_s,
            slice_s: (range / 16).clamp(60, 3600),
            boundary: Vec::new(),
            exhausted: end_s < start_s,
        }
    }

    fn slice_start(&self) -> u32 {
        self.end_s
            .saturating_sub(self.slice_s.saturating_sub(1))
            .max(self.start_s)
    }

    fn next_query(&self, page_rows: u64) -> FlowQuery {
        let filter = if self.boundary.is_empty() {
            self.filter.clone()
        } else {
            self.filter
                .clone()
                .and(Filter::Not(Box::new(Filter::ids(self.boundary.clone()))))
        };
        FlowQuery::new(filter)
            .window(TimeWindow::new(self.slice_start(), self.end_s))
            .order(Order::TimeDesc)
            .limit(page_rows)
    }

    fn advance(&mut self, page: &[FlowMeta], page_rows: u64) {
        if (page.len() as u64) < page_rows {
            // The slice is read: the next one ends just before it.
            let lo = self.slice_start();
            if lo <= self.start_s {
                self.exhausted = true;
                return;
            }
            self.end_s = lo - 1;
            self.boundary.clear();
            self.slice_s = self.slice_s.saturating_mul(2);
            return;
        }
        let last = page.last().map(|m| m.time).unwrap_or(self.start_s);
        if last != self.end_s {
            self.boundary.clear();
            self.end_s = last;
        }
        self.boundary
            .extend(page.iter().filter(|m| m.time == last).map(|m| m._id));
    }
}

async fn run(
    tracer: &TraceService,
    org: OrgId,
    req: &SearchRequest,
    cfg: &SearchConfig,
    seed_window_s: i64,
    timing: &mut TraceTiming,
) -> Result<pb::SearchResponse, SearchError> {
    let stages = stages(&req.query)?;
    let filters = req.query.spanset_filters();
    let ev = Evaluator::new(&filters).map_err(SearchError::BadQuery)?;
    let interesting = interesting_attributes(&filters);
    let mut hits: Vec<pb::TraceSearchMetadata> = Vec::new();
    let walk = Walk {
        filter: crate::traceql::plan::plan_filters(&filters),
        start_s: req.start_s,
        end_s: req.end_s,
        want: Some(req.limit),
        first_seeds_per_trace: first_seeds_per_trace(stages, filters.len()),
        deadline: req.deadline,
        seed_window_s,
        required: crate::traceql::plan::required_filters(stages),
    };
    let stats = walk_traces(tracer, org, &walk, cfg, timing, |f| {
        if hits.len() >= req.limit {
            return Ok(false);
        }
        Ok(match evaluate(f, stages, &ev, &interesting, req.spss)? {
            Some(hit) => {
                hits.push(hit);
                true
            }
            None => false,
        })
    })
    .await?;
    // Most recent first.
    hits.sort_by_key(|h| std::cmp::Reverse(h.start_time_unix_nano));
    Ok(pb::SearchResponse {
        metrics: Some(pb::SearchMetrics {
            inspected_traces: stats.traces as u32,
            inspected_spans: stats.spans,
            completed_jobs: stats.pages,
            total_jobs: stats.pages + u32::from(!stats.exhausted),
            ..Default::default()
        }),
        traces: hits,
    })
}

/// Seeds per wanted trace in a search's first batch. A query of one spanset filter and no
/// stage that drops spansets (`{ status = error }`, `{} | select(…)`) matches the trace of
/// nearly every candidate row (its candidates are the filter pushed down): one seed per trace,
/// and a quarter more for traces that hold two groups of candidates or a row the pushed-down
/// filter let through. A trace matches a query of several spanset filters (`{A} && {B}`) or a
/// scalar filter (`| count() > 2`) less often than it holds a candidate row: four seeds per
/// wanted trace, eight with two filters or more. Later batches size themselves from the seeds
/// an accepted trace took.
fn first_seeds_per_trace(stages: &[Stage], filters: usize) -> f64 {
    let plain = filters <= 1
        && matches!(stages.first(), Some(Stage::Spanset(SpansetExpr::Filter(_))))
        && !stages.iter().any(|s| matches!(s, Stage::ScalarFilter(_)));
    if plain {
        1.25
    } else {
        4.0 * filters.clamp(1, 2) as f64
    }
}

/// A walk over the assembled traces of a range (see [`walk_traces`]).
pub struct Walk {
    /// The candidate rows: a superset of the rows of the traces wanted.
    pub filter: Filter,
    pub start_s: i64,
    pub end_s: i64,
    /// Stop after this many traces were accepted; `None` visits every trace of the range.
    pub want: Option<usize>,
    /// Seeds per wanted trace in the first batch (later batches size themselves from the
    /// seeds an accepted trace took).
    pub first_seeds_per_trace: f64,
    /// Stop looking for more traces at this instant.
    pub deadline: Option<Instant>,
    /// Seconds around a seed row its trace is searched in.
    pub seed_window_s: i64,
    /// Predicates a wanted trace holds a row of each (`traceql::plan::required_filters`): a
    /// batch's traces without are left out before their records are read (they are
    /// inspected, never visited). Empty: every trace is visited.
    pub required: Vec<Filter>,
}

/// What a walk did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalkStats {
    /// Distinct traces assembled and visited.
    pub traces: usize,
    pub spans: u64,
    /// Candidate pages read.
    pub pages: u32,
    /// Every candidate of the range was read.
    pub exhausted: bool,
    /// Every candidate of the range was read and its trace visited: nothing was left out.
    pub complete: bool,
}

/// Assembles the traces that hold candidate rows, newest first, and hands each distinct trace
/// once to `visit`, which answers whether it accepts it (a hit). Candidates already covered by
/// an assembled trace never seed another. Stops when `want` traces were accepted, the range is
/// exhausted, or the budget (`search.max_rows`, `search.max_traces`, the deadline) is spent.
pub async fn walk_traces(
    tracer: &TraceService,
    org: OrgId,
    walk: &Walk,
    cfg: &SearchConfig,
    timing: &mut TraceTiming,
    mut visit: impl FnMut(&FoundTrace) -> Result<bool, NotSupported>,
) -> Result<WalkStats, SearchError> {
    let clamp = |v: i64| v.clamp(0, u32::MAX as i64) as u32;
    let mut candidates =
        Candidates::new(walk.filter.clone(), clamp(walk.start_s), clamp(walk.end_s));
    let page_rows = cfg.page_rows.max(1);
    let mut covered: HashSet<u64> = HashSet::new();
    let mut seen_traces: HashSet<TraceId> = HashSet::new();
    let (mut rows_read, mut inspected_spans, mut pages) = (0u64, 0u64, 0u32);
    // Traces left out before their fetch (they lack a row a match needs).
    let mut pruned_traces = 0usize;
    // Seeds used per accepted trace so far: sizes the next batch of seeds.
    let (mut consumed, mut accepted) = (0usize, 0usize);
    let out_of_budget = |rows_read: u64, traces: usize| {
        rows_read >= cfg.max_rows
            || traces >= cfg.max_traces
            || walk.deadline.is_some_and(|d| Instant::now() >= d)
    };
    // Candidates read and not yet used, most recent first.
    let mut pending: std::collections::VecDeque<FlowMeta> = Default::default();
    let mut stopped = false;
    loop {
        if walk.want.is_some_and(|w| accepted >= w)
            || out_of_budget(rows_read, seen_traces.len() + pruned_traces)
        {
            stopped = true;
            break;
        }
        pending.retain(|m| !covered.contains(&m._id));
        // Seeds for the traces still wanted: from how many seeds an accepted trace took so
        // far (one batch costs about one trace's store reads, so a batch rather too large
        // beats a second one). A walk over every trace takes the largest batches.
        let target = match walk.want {
            None => MAX_BATCH,
            Some(w) if seen_traces.is_empty() => {
                ((w - accepted) as f64 * walk.first_seeds_per_trace.max(1.0)).ceil() as usize
            }
            Some(w) => {
                let seeds_per_hit = consumed as f64 / accepted.max(1) as f64;
                ((w - accepted) as f64 * seeds_per_hit * 1.5).ceil() as usize
            }
        }
        .clamp(16, MAX_BATCH);
        if pending.len() < target && !candidates.exhausted {
            let q = candidates.next_query(page_rows);
            let t = Instant::now();
            let page = tracer.store.select_meta(org, &q).await?;
            timing.store_us += t.elapsed().as_micros() as u64;
            timing.queries += 1;
            pages += 1;
            rows_read += page.len() as u64;
            candidates.advance(&page, page_rows);
            pending.extend(page);
            continue;
        }
        if pending.is_empty() {
            break;
        }
        let batch = take_seeds(&mut pending, target);
        consumed += batch.len();
        let (found, pruned) = assemble_batch(
            tracer,
            org,
            &batch,
            walk.seed_window_s,
            &walk.required,
            timing,
        )
        .await?;
        pruned_traces += pruned.traces;
        covered.extend(pruned.ids);
        for f in found {
            covered.extend(f.result.spans.iter().flat_map(|s| s.ids.iter().copied()));
            if !seen_traces.insert(f.id) {
                continue;
            }
            inspected_spans += f.result.spans.len() as u64;
            if visit(&f)? {
                accepted += 1;
            }
        }
    }
    Ok(WalkStats {
        traces: seen_traces.len() + pruned_traces,
        spans: inspected_spans,
        pages,
        exhausted: candidates.exhausted,
        complete: !stopped && candidates.exhausted && pending.is_empty(),
    })
}

/// Take up to `n` seeds from the candidates, newest group first: one per group of candidates
/// that surely belong to one trace (rows sharing a TCP request, both sequences, a syscall
/// trace id, an X-Request-ID or an application trace id), its earliest-starting row. The other
/// rows of a group stay candidates: the trace assembled from the group's seed covers them, or
/// they seed a later batch.
fn take_seeds(pending: &mut std::collections::VecDeque<FlowMeta>, n: usize) -> Vec<FlowMeta> {
    #[derive(Hash, PartialEq, Eq)]
    enum Key<'a> {
        Tcp(u32, u32),
        Syscall(u64),
        XRequest(&'a str),
        Trace(&'a str),
    }
    fn find(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut parent: Vec<usize> = (0..pending.len()).collect();
    let mut chosen = Vec::new();
    {
        let mut first: std::collections::HashMap<Key<'_>, usize> = Default::default();
        let mut seeded_roots = HashSet::new();
        for (i, m) in pending.iter().enumerate() {
            let mut keys = Vec::with_capacity(6);
            if m.req_tcp_seq != 0 && m.resp_tcp_seq != 0 {
                keys.push(Key::Tcp(m.req_tcp_seq, m.resp_tcp_seq));
            }
            for s in [m.syscall_trace_id_request, m.syscall_trace_id_response] {
                if s != 0 {
                    keys.push(Key::Syscall(s));
                }
            }
            for x in [&m.x_request_id_0, &m.x_request_id_1] {
                if !x.is_empty() {
                    keys.push(Key::XRequest(x));
                }
            }
            for t in [&m.trace_id, &m._trace_id_2] {
                if !t.is_empty() {
                    keys.push(Key::Trace(t));
                }
            }
            for k in keys {
                let j = *first.entry(k).or_insert(i);
                let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                if a != b {
                    // The older row joins the newer one's group.
                    parent[a.max(b)] = a.min(b);
                }
            }
        }
        // A group's seed is its earliest-starting row, the likeliest to be near the trace's
        // root: a search from the root reaches every call going down, one from a leaf goes
        // up and then down the other branches (a `{}` batch of 100-flow traces took 18
        // lockstep reads from the groups' newest rows, 14 from their earliest).
        let mut earliest: std::collections::HashMap<usize, usize> = Default::default();
        for i in 0..pending.len() {
            let root = find(&mut parent, i);
            let e = earliest.entry(root).or_insert(i);
            let key = |m: &FlowMeta| (m.start_time_us, m._id);
            if key(&pending[i]) < key(&pending[*e]) {
                *e = i;
            }
        }
        for i in 0..pending.len() {
            if chosen.len() >= n {
                break;
            }
            let root = find(&mut parent, i);
            if seeded_roots.insert(root) {
                chosen.push(earliest[&root]);
            }
        }
    }
    let chosen: HashSet<usize> = chosen.into_iter().collect();
    let mut out = Vec::with_capacity(chosen.len());
    let rest = std::mem::take(pending);
    for (i, m) in rest.into_iter().enumerate() {
        if chosen.contains(&i) {
            out.push(m);
        } else {
            pending.push_back(m);
        }
    }
    out
}

/// Assemble the traces of a batch of seed rows: one search from each, run together; each trace
/// once, under its identity.
async fn assemble_batch(
    tracer: &TraceService,
    org: OrgId,
    seeds: &[FlowMeta],
    seed_window_s: i64,
    required: &[Filter],
    timing: &mut TraceTiming,
) -> Result<(Vec<FoundTrace>, super::trace::Pruned), SearchError> {
    let params = TraceService::search_params(&tracer.params);
    // The seeds are candidate rows read with the entry read's columns: their searches start
    // past it (one store read less per batch).
    let searches: Vec<Search> = seeds
        .iter()
        .map(|m| {
            let t = m.time as i64;
            Search::by_entry_row(
                m.clone(),
                autotrace::TimeWindow::new(t - seed_window_s, t + seed_window_s),
                &params,
            )
        })
        .collect();
    let batch = autotrace::BatchSearch::new(searches, &params)
        .max_rows(tracer.store.max_rows().min(usize::MAX as u64) as usize);
    let (outcome, traced, pruned) = tracer.run_batch_requiring(org, batch, required).await?;
    timing.store_us += traced.store_us;
    timing.queries += traced.queries;
    let reads_per_trace = traced.queries / (outcome.traces.len().max(1) as u32);
    let t = Instant::now();
    let mut out = Vec::with_capacity(outcome.traces.len());
    for mut o in outcome.traces.into_iter().map(|t| t.outcome) {
        let records = std::mem::take(&mut o.records);
        let mut result = autotrace::assemble_with(
            records,
            o.external.clone(),
            o.entry_id,
            &tracer.params,
            autotrace::Detail::Tree,
        );
        if tracer.params.inference {
            // The rules over the assembled trace only: probing every trace of a search for
            // the calls behind thread hops costs reads per trace.
            let mut inferred = TraceTiming::default();
            let tree = TraceService {
                detail: autotrace::Detail::Tree,
                ..tracer.clone()
            };
            result = tree
                .infer(
                    org,
                    &tracer.params,
                    &o,
                    Vec::new(),
                    result,
                    false,
                    &mut inferred,
                )
                .await?;
            timing.store_us += inferred.store_us;
            timing.queries += inferred.queries;
        }
        if result.spans.is_empty() {
            continue;
        }
        crate::metrics::metrics().assembled_trace(
            result.spans.len(),
            o.iterations,
            reads_per_trace,
        );
        let id = trace_identity(&result);
        let ctx = trace_ctx(&id, &result);
        out.push(FoundTrace { id, ctx, result });
    }
    timing.assemble_us += t.elapsed().as_micros() as u64;
    Ok((out, pruned))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, time: u32) -> FlowMeta {
        FlowMeta {
            _id: id,
            time,
            ..FlowMeta::default()
        }
    }

    #[test]
    fn a_group_of_candidates_seeds_from_its_earliest_row_newest_group_first() {
        let row = |id: u64, start_us: i64, seq: u32, syscall: u64| FlowMeta {
            _id: id,
            time: 100,
            start_time_us: start_us,
            req_tcp_seq: seq,
            resp_tcp_seq: seq + 1,
            syscall_trace_id_request: syscall,
            ..FlowMeta::default()
        };
        // Newest first: a leaf call (seq 10) joined to its parent's server row (syscall 7),
        // which shares seq 20 with the root's client row; then a lone row of another trace.
        let mut pending: std::collections::VecDeque<FlowMeta> = [
            row(1, 500, 10, 0),
            row(2, 400, 10, 7),
            row(3, 300, 20, 7),
            row(4, 100, 20, 0),
            row(5, 50, 30, 0),
        ]
        .into_iter()
        .collect();
        let seeds = take_seeds(&mut pending, 1);
        assert_eq!(seeds.iter().map(|m| m._id).collect::<Vec<_>>(), vec![4]);
        assert_eq!(
            pending.iter().map(|m| m._id).collect::<Vec<_>>(),
            vec![1, 2, 3, 5]
        );
        let seeds = take_seeds(&mut pending, 5);
        assert_eq!(seeds.iter().map(|m| m._id).collect::<Vec<_>>(), vec![3, 5]);
    }

    #[test]
    fn the_first_batch_takes_one_seed_and_a_quarter_per_trace_for_one_plain_filter() {
        let per_trace = |q: &str| {
            let q = crate::traceql::parse(q).unwrap();
            let stages = crate::query::pipeline::stages(&q).unwrap();
            first_seeds_per_trace(stages, q.spanset_filters().len())
        };
        assert_eq!(per_trace("{}"), 1.25);
        assert_eq!(per_trace("{ status = error }"), 1.25);
        assert_eq!(
            per_trace("{ status = error } | select(span.http.url)"),
            1.25
        );
        assert_eq!(per_trace("{ status = error } | count() > 2"), 4.0);
        assert_eq!(per_trace("{ .a = 1 } && { .b = 2 }"), 8.0);
        assert_eq!(per_trace("{ .a = 1 } >> { .b = 2 }"), 8.0);
    }

    /// Pages over a store of rows (time-ordered reads as the stores do them): every row of the
    /// range is read once, newest first, whatever the page size.
    #[test]
    fn candidates_read_every_row_once_newest_first() {
        let rows: Vec<FlowMeta> = (0..500u64)
            .map(|i| meta(i, 1_000 + (i as u32 * 7) % 4_000))
            .collect();
        for page_rows in [1u64, 3, 17, 1_000] {
            let mut c = Candidates::new(Filter::True, 1_000, 4_999);
            let mut seen = Vec::new();
            while !c.exhausted {
                let q = c.next_query(page_rows);
                let w = q.window.unwrap();
                let excluded: Vec<u64> = c.boundary.clone();
                let mut page: Vec<FlowMeta> = rows
                    .iter()
                    .filter(|m| w.start_s <= m.time && m.time <= w.end_s)
                    .filter(|m| !excluded.contains(&m._id))
                    .cloned()
                    .collect();
                page.sort_by_key(|m| std::cmp::Reverse((m.time, m._id)));
                page.truncate(page_rows as usize);
                seen.extend(page.iter().map(|m| (m.time, m._id)));
                c.advance(&page, page_rows);
            }
            let mut want: Vec<(u32, u64)> = rows.iter().map(|m| (m.time, m._id)).collect();
            want.sort_by_key(|k| std::cmp::Reverse(*k));
            assert_eq!(seen, want, "page_rows {page_rows}");
        }
    }
}
