//! SEARCH (spec §3) as a sans-IO state machine: the caller asks `next()` for the next query,
//! runs it against the database and feeds the rows back with `feed_meta` (entry, trace-id and
//! association queries) or `feed_records` (the final fetch). `finish()` returns the fetched
//! records, the external app spans and the pruning anchor, ready for `assemble`.
//!
//! Owns the iteration state of §3.3 (allowed/visited/new trace ids, used and pending keys,
//! windows, stop conditions). It must not do IO, and it renders no SQL: `SearchQuery` describes
//! each query and the store layer translates it.

use super::flow::{meta_trace_ids, ExternalAppSpan, MetaFlow};
use super::relate::{relate_subject, Index};
use super::{TraceParams, TraceResult, TracingSource};
use crate::store::model::{id_time_s, FlowMeta, FlowRecord};
use foldhash::{HashSet, HashSetExt};
use std::collections::BTreeSet;
use thiserror::Error;

/// An inclusive window on the `time` column (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TimeWindow {
    pub start_s: i64,
    pub end_s: i64,
}

impl TimeWindow {
    pub fn new(start_s: i64, end_s: i64) -> Self {
        TimeWindow { start_s, end_s }
    }
    pub fn contains(&self, time_s: i64) -> bool {
        self.start_s <= time_s && time_s <= self.end_s
    }
}

/// One query the caller must run. Key lists are sorted and distinct. All but `Fetch` return
/// FLOWMETA rows (`Vec<FlowMeta>`); `Fetch` returns full records (`Vec<FlowRecord>`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum SearchQuery {
    /// Q0: rows whose `trace_id` or `_trace_id_2` equals `trace_id`, in `window`
    /// (`AND signal_source = 4` when `otel_only`), at most `limit` rows.
    EntryByTraceId {
        trace_id: String,
        window: TimeWindow,
        otel_only: bool,
        limit: usize,
    },
    /// Q1: the row `_id = id` (its time is `id >> 32`).
    EntryById {
        id: u64,
        otel_only: bool,
        limit: usize,
    },
    /// Q2: rows carrying any of `trace_ids` (either trace id column) in `window`.
    ByTraceIds {
        trace_ids: Vec<String>,
        window: TimeWindow,
        otel_only: bool,
        limit: usize,
    },
    /// Q3: rows in `window` matching the OR of the non-empty clauses:
    /// `req_tcp_seq IN req_tcp_seqs OR resp_tcp_seq IN resp_tcp_seqs`,
    /// `syscall_trace_id_request IN syscall_ids OR syscall_trace_id_response IN syscall_ids`,
    /// `x_request_id_0 IN x_request_ids OR x_request_id_1 IN x_request_ids`,
    /// `l7_protocol = 120 AND request_id IN dns_request_ids`.
    Associate {
        req_tcp_seqs: Vec<u32>,
        resp_tcp_seqs: Vec<u32>,
        syscall_ids: Vec<u64>,
        x_request_ids: Vec<String>,
        dns_request_ids: Vec<u64>,
        window: TimeWindow,
        limit: usize,
    },
    /// Q4: full records of `ids` in `window`, in any order: the search orders them by start
    /// time, ties by `_id` (the order of the reference's `ORDER BY start_time`, which this
    /// store schema resolves by `_id`), so a store need not sort, and can stream, them.
    Fetch { ids: Vec<u64>, window: TimeWindow },
    /// Batched Q1 ([`super::BatchSearch`] only): the rows whose `_id` is one of `ids`
    /// (`AND signal_source = 4` when `otel_only`), at most `limit` rows.
    EntryByIds {
        ids: Vec<u64>,
        otel_only: bool,
        limit: usize,
    },
    /// Batched Q0 ([`super::BatchSearch`] only): rows whose `trace_id` or `_trace_id_2` is one
    /// of `trace_ids`, in `window` (`AND signal_source = 4` when `otel_only`), ordered by start
    /// time as `EntryByTraceId`, at most `limit` rows.
    EntryByTraceIds {
        trace_ids: Vec<String>,
        window: TimeWindow,
        otel_only: bool,
        limit: usize,
    },
}

/// Why the search loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StopReason {
    /// No entry row was found.
    EntryNotFound,
    /// No new association keys and no pending trace ids.
    NoNewKeys,
    /// An association query returned no rows at all.
    AssociationEmpty,
    /// An association query yielded nothing acceptable and no trace id was pending.
    NothingAccepted,
    /// `max_iteration` was reached.
    MaxIteration,
    /// OTel-only mode stops after the first trace-id step.
    OtelOnly,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SearchError {
    #[error("the previous query has not been answered yet")]
    AwaitingRows,
    #[error("no query is waiting for rows")]
    NotAwaiting,
    #[error("the pending query expects {0} rows")]
    WrongRowKind(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ById,
    ByTraceId,
    Completion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    AwaitEntryTrace,
    AwaitEntryId,
    LoopTop,
    AfterTraceStep,
    AwaitTraceIds,
    AwaitAssociate,
    Fetch,
    AwaitFetch,
    Done,
}

/// The result of a finished search.
#[derive(Debug, Clone, Default)]
pub struct SearchOutcome {
    /// Fetched records (de-duplicated by `_id`). Callers may take them (e.g. to assemble
    /// without copying); `fetched` keeps their count.
    pub records: Vec<FlowRecord>,
    /// How many records the fetch returned.
    pub fetched: usize,
    /// External app spans to merge into the trace (completion API).
    pub external: Vec<ExternalAppSpan>,
    /// Pruning anchor.
    pub entry_id: Option<u64>,
    /// Every `_id` the search collected, ascending.
    pub ids: Vec<u64>,
    pub stop_reason: Option<StopReason>,
    /// Some query returned `limit` rows or more: the trace may be partial.
    pub hit_limit: bool,
    /// Completed iterations of the §3.3 loop.
    pub iterations: u32,
    pub fetch_window: Option<TimeWindow>,
}

impl SearchOutcome {
    /// Nothing was found and there are no external spans (`DATA: {}`).
    pub fn is_empty(&self) -> bool {
        self.fetched == 0 && self.external.is_empty()
    }

    /// Run `assemble` over the outcome.
    pub fn assemble(self, params: &TraceParams) -> TraceResult {
        super::assemble(self.records, self.external, self.entry_id, params)
    }
}

/// The search state machine of §3.3.
#[derive(Debug)]
pub struct Search {
    params: TraceParams,
    mode: Mode,
    entry_id_req: u64,
    entry_trace_id: String,
    window: TimeWindow,
    min_s: i64,
    max_s: i64,
    /// Accepted rows, in acceptance order.
    rows: Vec<MetaFlow>,
    /// Relation index over `rows`, kept across iterations and caught up before each relation
    /// check (rows are only ever appended).
    index: Index,
    /// Reference mode: rebuild the relation index over every row for each check.
    full_relation_check: bool,
    ids: HashSet<u64>,
    used_req: HashSet<u32>,
    used_resp: HashSet<u32>,
    used_sys: HashSet<u64>,
    used_xreq: HashSet<String>,
    used_dns: HashSet<u64>,
    pending_req: Vec<u32>,
    pending_resp: Vec<u32>,
    pending_sys: Vec<u64>,
    pending_xreq: Vec<String>,
    pending_dns: Vec<u64>,
    allowed: HashSet<String>,
    visited: HashSet<String>,
    new_trace: BTreeSet<String>,
    max_iter: u32,
    iter: u32,
    state: State,
    external: Vec<ExternalAppSpan>,
    entry_id: Option<u64>,
    hit_limit: bool,
    stop: Option<StopReason>,
    records: Vec<FlowRecord>,
    fetch_window: Option<TimeWindow>,
}

impl Search {
    fn new(params: &TraceParams, mode: Mode, window: TimeWindow) -> Self {
        let mut max_iter = params.max_iteration.max(1);
        if params.otel_only {
            max_iter = 1;
        }
        Search {
            params: params.clone(),
            mode,
            entry_id_req: 0,
            entry_trace_id: String::new(),
            window,
            min_s: window.start_s,
            max_s: window.end_s,
            rows: Vec::new(),
            index: Index::default(),
            full_relation_check: false,
            ids: HashSet::new(),
            used_req: HashSet::new(),
            used_resp: HashSet::new(),
            used_sys: HashSet::new(),
            used_xreq: HashSet::new(),
            used_dns: HashSet::new(),
            pending_req: Vec::new(),
            pending_resp: Vec::new(),
            pending_sys: Vec::new(),
            pending_xreq: Vec::new(),
            pending_dns: Vec::new(),
            allowed: HashSet::new(),
            visited: HashSet::new(),
            new_trace: BTreeSet::new(),
            max_iter,
            iter: 0,
            state: State::Start,
            external: Vec::new(),
            entry_id: None,
            hit_limit: false,
            stop: None,
            records: Vec::new(),
            fetch_window: None,
        }
    }

    /// L7FlowTracing with an entry `_id` (§1.1).
    pub fn by_id(id: u64, window: TimeWindow, params: &TraceParams) -> Self {
        let mut s = Search::new(params, Mode::ById, window);
        s.entry_id_req = id;
        s.entry_id = Some(id);
        s
    }

    /// [`Search::by_id`] for a caller that already holds the entry row, read with the columns
    /// Q1 reads (a search candidate): Q1 is answered with it, so the search starts at its
    /// first association step and reads one query less. With `otel_only`, a row that is not
    /// an OTel span answers Q1 with nothing, as the store would.
    pub fn by_entry_row(row: FlowMeta, window: TimeWindow, params: &TraceParams) -> Self {
        let mut s = Search::by_id(row._id, window, params);
        let asked = s.next();
        debug_assert!(
            matches!(asked, Ok(Some(SearchQuery::EntryById { .. }))),
            "{asked:?}"
        );
        let rows = if params.otel_only && row.signal_source != 4 {
            Vec::new()
        } else {
            vec![row]
        };
        // Cannot fail: the search awaits exactly this answer.
        let _ = s.feed_meta(rows);
        s
    }

    /// The Tempo path: every row carrying `trace_id` seeds the search; the first becomes the
    /// pruning anchor, and `trace_id` is the initial allowed trace id.
    pub fn by_trace_id(trace_id: &str, window: TimeWindow, params: &TraceParams) -> Self {
        let mut s = Search::new(params, Mode::ByTraceId, window);
        s.entry_trace_id = trace_id.trim().to_string();
        s
    }

    /// The tracing-completion API (§8.1): the window is derived from the spans (±3 s), the
    /// entry is the first row of the first span's trace id, the anchor is that span's `_id`.
    pub fn for_completion(spans: Vec<ExternalAppSpan>, params: &TraceParams) -> Self {
        let secs = |v: i64| v.div_euclid(1_000_000);
        let starts = spans.iter().map(|s| s.start_time_us).filter(|&v| v != 0);
        let ends = spans.iter().map(|s| s.end_time_us).filter(|&v| v != 0);
        let start = starts.min().map(secs).unwrap_or(0) - 3;
        let end = ends.max().map(secs).unwrap_or(0) + 3;
        let mut s = Search::new(params, Mode::Completion, TimeWindow::new(start, end));
        let first = spans.iter().find(|s| !s.trace_id.is_empty());
        s.entry_trace_id = first.map(|f| f.trace_id.clone()).unwrap_or_default();
        s.entry_id = first.or(spans.first()).map(|f| f.effective_id());
        if params.allow_multiple_trace_ids_in_tracing_result {
            for sp in &spans {
                if !sp.trace_id.is_empty() {
                    s.allowed.insert(sp.trace_id.clone());
                }
            }
        }
        s.external = spans;
        s
    }

    /// Relation checks that rebuild the index over all rows each time instead of keeping it
    /// across iterations; must give identical results (used by differential tests).
    #[doc(hidden)]
    pub fn with_full_relation_check(mut self) -> Self {
        self.full_relation_check = true;
        self
    }

    fn limit(&self) -> usize {
        self.params.l7_tracing_limit
    }

    fn trace_window(&self) -> TimeWindow {
        let e = self.params.iteration_expand_time_range as i64;
        TimeWindow::new(self.window.start_s - e, self.window.end_s + e)
    }

    /// The next query to run, or `None` when the search is finished (call `finish`).
    /// Not an `Iterator`: every query must be answered before the next one is asked for.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<SearchQuery>, SearchError> {
        loop {
            match self.state {
                State::AwaitEntryTrace
                | State::AwaitEntryId
                | State::AwaitTraceIds
                | State::AwaitAssociate
                | State::AwaitFetch => return Err(SearchError::AwaitingRows),
                State::Done => return Ok(None),
                State::Start => match self.mode {
                    Mode::ById => {
                        self.state = State::AwaitEntryId;
                        return Ok(Some(SearchQuery::EntryById {
                            id: self.entry_id_req,
                            otel_only: self.params.otel_only,
                            limit: self.limit(),
                        }));
                    }
                    Mode::ByTraceId | Mode::Completion => {
                        if self.entry_trace_id.is_empty() {
                            self.stop = Some(StopReason::EntryNotFound);
                            self.state = State::Fetch;
                            continue;
                        }
                        let (window, limit) = if self.mode == Mode::ByTraceId {
                            (self.trace_window(), self.limit())
                        } else {
                            (self.window, 1)
                        };
                        self.state = State::AwaitEntryTrace;
                        return Ok(Some(SearchQuery::EntryByTraceId {
                            trace_id: self.entry_trace_id.clone(),
                            window,
                            otel_only: self.params.otel_only && self.mode == Mode::ByTraceId,
                            limit,
                        }));
                    }
                },
                State::LoopTop => {
                    if self.iter >= self.max_iter {
                        self.stop = Some(StopReason::MaxIteration);
                        self.state = State::Fetch;
                        continue;
                    }
                    if !self.new_trace.is_empty() && self.params.has_source(TracingSource::TraceId)
                    {
                        self.state = State::AwaitTraceIds;
                        return Ok(Some(SearchQuery::ByTraceIds {
                            trace_ids: self.new_trace.iter().cloned().collect(),
                            window: self.trace_window(),
                            otel_only: self.params.otel_only,
                            limit: self.limit(),
                        }));
                    }
                    self.state = State::AfterTraceStep;
                }
                State::AfterTraceStep => {
                    if self.params.otel_only {
                        self.stop = Some(StopReason::OtelOnly);
                        self.state = State::Fetch;
                        continue;
                    }
                    match self.association_query() {
                        Some(q) => {
                            self.state = State::AwaitAssociate;
                            return Ok(Some(q));
                        }
                        None if self.new_trace.is_empty() => {
                            self.stop = Some(StopReason::NoNewKeys);
                            self.state = State::Fetch;
                        }
                        None => {
                            self.iter += 1;
                            self.state = State::LoopTop;
                        }
                    }
                }
                State::Fetch => {
                    if self.ids.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    let mut ids: Vec<u64> = self.ids.iter().copied().collect();
                    ids.sort_unstable();
                    let secs = ids.iter().map(|&i| id_time_s(i) as i64);
                    let window =
                        TimeWindow::new(secs.clone().min().unwrap_or(0), secs.max().unwrap_or(0));
                    self.fetch_window = Some(window);
                    self.state = State::AwaitFetch;
                    return Ok(Some(SearchQuery::Fetch { ids, window }));
                }
            }
        }
    }

    fn association_query(&mut self) -> Option<SearchQuery> {
        fn fresh<T: Clone + Eq + std::hash::Hash + Ord>(
            pending: &[T],
            used: &mut HashSet<T>,
            truthy: impl Fn(&T) -> bool,
        ) -> Vec<T> {
            let mut out: Vec<T> = pending
                .iter()
                .filter(|k| truthy(k) && !used.contains(*k))
                .cloned()
                .collect();
            out.sort();
            out.dedup();
            used.extend(out.iter().cloned());
            out
        }
        let p = &self.params;
        let (mut req, mut resp, mut sys, mut xreq, mut dns) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if p.has_source(TracingSource::TcpSeq) {
            req = fresh(&self.pending_req, &mut self.used_req, |k| *k != 0);
            resp = fresh(&self.pending_resp, &mut self.used_resp, |k| *k != 0);
        }
        if p.has_source(TracingSource::Syscall) {
            sys = fresh(&self.pending_sys, &mut self.used_sys, |k| *k != 0);
        }
        if p.has_source(TracingSource::XRequestId) {
            xreq = fresh(&self.pending_xreq, &mut self.used_xreq, |k: &String| {
                !k.is_empty()
            });
        }
        if p.has_source(TracingSource::Dns) {
            dns = fresh(&self.pending_dns, &mut self.used_dns, |k| *k != 0);
        }
        if req.is_empty() && resp.is_empty() && sys.is_empty() && xreq.is_empty() && dns.is_empty()
        {
            return None;
        }
        Some(SearchQuery::Associate {
            req_tcp_seqs: req,
            resp_tcp_seqs: resp,
            syscall_ids: sys,
            x_request_ids: xreq,
            dns_request_ids: dns,
            window: TimeWindow::new(self.min_s, self.max_s),
            limit: self.limit(),
        })
    }

    /// The keys of `rows[from..]` become the pending keys (are added to them when `append`).
    fn extract(&mut self, from: usize, append: bool) {
        if !append {
            self.pending_req.clear();
            self.pending_resp.clear();
            self.pending_sys.clear();
            self.pending_xreq.clear();
            self.pending_dns.clear();
        }
        for f in &self.rows[from..] {
            let r = &f.meta;
            self.pending_req.push(r.req_tcp_seq);
            self.pending_resp.push(r.resp_tcp_seq);
            self.pending_xreq.push(r.x_request_id_0.clone());
            self.pending_xreq.push(r.x_request_id_1.clone());
            self.pending_sys.push(r.syscall_trace_id_request);
            self.pending_sys.push(r.syscall_trace_id_response);
            if r.l7_protocol == crate::store::model::l7_protocol::DNS {
                if let Some(id) = r.request_id {
                    self.pending_dns.push(id);
                }
            }
        }
    }

    /// Accept rows: record their ids and append them (their keys become pending with
    /// `extract`).
    fn accept(&mut self, flows: impl IntoIterator<Item = MetaFlow>) {
        for f in flows {
            self.ids.insert(f.meta._id);
            self.rows.push(f);
        }
    }

    /// The trace-id filtering of step (A) (also used for the Tempo entry rows).
    fn trace_step(&mut self, rows: Vec<FlowMeta>) {
        let fresh: Vec<String> = std::mem::take(&mut self.new_trace).into_iter().collect();
        self.visited.extend(fresh);
        let mut kept = Vec::new();
        let mut batch = HashSet::new();
        for r in rows {
            if self.ids.contains(&r._id) || !batch.insert(r._id) {
                continue;
            }
            let t = meta_trace_ids(&r);
            if t.len() > 1 {
                for x in &t {
                    if !self.visited.contains(x) {
                        self.allowed.insert(x.clone());
                        self.new_trace.insert(x.clone());
                    }
                }
            } else if !(t.len() == 1 && self.allowed.contains(&t[0])) {
                continue;
            }
            kept.push(MetaFlow {
                meta: r,
                trace_ids: t,
            });
        }
        if self.params.iteration_expand_time_range != 0 && !kept.is_empty() {
            let lo = kept.iter().map(|f| f.meta.start_time_us).min().unwrap_or(0);
            let hi = kept.iter().map(|f| f.meta.end_time_us).max().unwrap_or(0);
            self.min_s = self.min_s.min(lo.div_euclid(1_000_000));
            self.max_s = self.max_s.max(hi.div_euclid(1_000_000));
        }
        let base = self.rows.len();
        self.accept(kept);
        self.extract(base, true);
    }

    /// Feed the FLOWMETA rows of the pending entry, trace-id or association query.
    pub fn feed_meta(&mut self, rows: Vec<FlowMeta>) -> Result<(), SearchError> {
        match self.state {
            State::AwaitEntryTrace => {
                if rows.len()
                    >= if self.mode == Mode::ByTraceId {
                        self.limit()
                    } else {
                        usize::MAX
                    }
                {
                    self.hit_limit = true;
                }
                if self.mode == Mode::Completion {
                    // Q0 only resolves the entry `_id`; Q1 follows.
                    match rows.first() {
                        Some(r) => {
                            self.entry_id_req = r._id;
                            self.mode = Mode::ById;
                            self.state = State::Start;
                        }
                        None => {
                            self.stop = Some(StopReason::EntryNotFound);
                            self.state = State::Fetch;
                        }
                    }
                    return Ok(());
                }
                let t = self.entry_trace_id.clone();
                self.allowed.insert(t.clone());
                self.new_trace.insert(t);
                self.trace_step(rows);
                if self.rows.is_empty() {
                    self.stop = Some(StopReason::EntryNotFound);
                    self.state = State::Fetch;
                    return Ok(());
                }
                self.entry_id = Some(self.rows[0].meta._id);
                // Q0 is the trace-id step (A) of the first iteration.
                self.state = State::AfterTraceStep;
                Ok(())
            }
            State::AwaitEntryId => {
                if rows.len() >= self.limit() {
                    self.hit_limit = true;
                }
                let mut batch = HashSet::new();
                let rows: Vec<FlowMeta> =
                    rows.into_iter().filter(|r| batch.insert(r._id)).collect();
                let Some(first) = rows.first() else {
                    self.stop = Some(StopReason::EntryNotFound);
                    self.state = State::Fetch;
                    return Ok(());
                };
                for t in meta_trace_ids(first) {
                    self.allowed.insert(t);
                }
                self.new_trace = self.allowed.iter().cloned().collect();
                let base = self.rows.len();
                self.accept(rows.into_iter().map(MetaFlow::new));
                self.extract(base, true);
                self.state = State::LoopTop;
                Ok(())
            }
            State::AwaitTraceIds => {
                if rows.len() >= self.limit() {
                    self.hit_limit = true;
                }
                self.trace_step(rows);
                self.state = State::AfterTraceStep;
                Ok(())
            }
            State::AwaitAssociate => {
                if rows.len() >= self.limit() {
                    self.hit_limit = true;
                }
                self.association_step(rows);
                Ok(())
            }
            State::AwaitFetch => Err(SearchError::WrongRowKind("full record")),
            _ => Err(SearchError::NotAwaiting),
        }
    }

    fn association_step(&mut self, rows: Vec<FlowMeta>) {
        if rows.is_empty() {
            self.stop = Some(StopReason::AssociationEmpty);
            self.state = State::Fetch;
            return;
        }
        let allow_multi = self.params.allow_multiple_trace_ids_in_tracing_result;
        let mut cand = Vec::new();
        let mut batch = HashSet::new();
        'rows: for r in rows {
            if self.ids.contains(&r._id) || !batch.insert(r._id) {
                continue;
            }
            let t = meta_trace_ids(&r);
            for x in &t {
                if !self.allowed.contains(x) {
                    if self.allowed.is_empty() || allow_multi {
                        self.allowed.insert(x.clone());
                        self.new_trace.insert(x.clone());
                    } else {
                        continue 'rows;
                    }
                }
            }
            cand.push(MetaFlow {
                meta: r,
                trace_ids: t,
            });
        }
        // relation check: strong + fast, universe = rows ∪ candidates
        let keep = if self.full_relation_check {
            self.relate_full(&cand)
        } else {
            self.relate_incremental(&cand)
        };
        let base = self.rows.len();
        self.accept(
            cand.into_iter()
                .zip(keep)
                .filter_map(|(f, k)| k.then_some(f)),
        );
        self.iter += 1;
        if self.rows.len() > base {
            self.extract(base, false);
            self.state = State::LoopTop;
        } else if !self.new_trace.is_empty() {
            self.state = State::LoopTop;
        } else {
            self.stop = Some(StopReason::NothingAccepted);
            self.state = State::Fetch;
        }
    }

    /// Which candidates relate to any other flow of rows ∪ candidates: each is looked up in the
    /// index of the rows (caught up with the rows accepted since the last check) and in an index
    /// of the candidates alone, so every row is indexed once per search.
    fn relate_incremental(&mut self, cand: &[MetaFlow]) -> Vec<bool> {
        let ctx = self.params.rel_ctx();
        self.index.extend(&self.rows, &ctx);
        let own = Index::build(cand, &ctx);
        let mut scratch = Vec::new();
        cand.iter()
            .enumerate()
            .map(|(k, a)| {
                scratch.clear();
                relate_subject(
                    a,
                    None,
                    &self.rows,
                    &self.index,
                    true,
                    true,
                    &ctx,
                    &mut scratch,
                ) || relate_subject(a, Some(k), cand, &own, true, true, &ctx, &mut scratch)
            })
            .collect()
    }

    /// `relate_incremental` the direct way: one index over a copy of rows ∪ candidates.
    fn relate_full(&self, cand: &[MetaFlow]) -> Vec<bool> {
        let ctx = self.params.rel_ctx();
        let base = self.rows.len();
        let universe: Vec<MetaFlow> = self.rows.iter().chain(cand).cloned().collect();
        let ix = Index::build(&universe, &ctx);
        let mut scratch = Vec::new();
        (base..universe.len())
            .map(|a| {
                scratch.clear();
                relate_subject(
                    &universe[a],
                    Some(a),
                    &universe,
                    &ix,
                    true,
                    true,
                    &ctx,
                    &mut scratch,
                )
            })
            .collect()
    }

    /// Feed the full records of the fetch query.
    pub fn feed_records(&mut self, rows: Vec<FlowRecord>) -> Result<(), SearchError> {
        match self.state {
            State::AwaitFetch => {
                let mut seen = HashSet::new();
                self.records = rows.into_iter().filter(|r| seen.insert(r._id)).collect();
                self.records
                    .sort_unstable_by_key(|r| (r.start_time_us, r._id));
                self.state = State::Done;
                Ok(())
            }
            State::AwaitEntryTrace
            | State::AwaitEntryId
            | State::AwaitTraceIds
            | State::AwaitAssociate => Err(SearchError::WrongRowKind("flowmeta")),
            _ => Err(SearchError::NotAwaiting),
        }
    }

    /// Add external app spans found on the side, e.g. by an external APM for the trace ids of
    /// a `ByTraceIds` query (§8.3, `call_apm_api_to_supplement_trace`). They are merged into
    /// the trace but never used as search keys.
    pub fn add_external_spans(&mut self, spans: impl IntoIterator<Item = ExternalAppSpan>) {
        self.external.extend(spans);
    }

    /// The `_id` a [`Search::by_id`] search starts from (`None` for trace-id and completion
    /// searches until they resolve an entry row).
    pub fn seed_id(&self) -> Option<u64> {
        (self.mode == Mode::ById).then_some(self.entry_id_req)
    }

    /// Whether the row `id` has been accepted.
    pub fn has_collected(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    /// How many rows have been accepted so far.
    pub fn collected_len(&self) -> usize {
        self.rows.len()
    }

    /// The `_id`s of the rows accepted after the first `from`, in acceptance order.
    pub fn collected_ids_from(&self, from: usize) -> impl Iterator<Item = u64> + '_ {
        self.rows[from.min(self.rows.len())..]
            .iter()
            .map(|f| f.meta._id)
    }

    /// Mark the outcome as possibly partial: a batched read that carried this search's query
    /// returned as many rows as it was allowed to.
    pub fn flag_hit_limit(&mut self) {
        self.hit_limit = true;
    }

    /// True when `next()` has returned `None`.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The outcome (call after `next()` returned `None`; earlier calls give what is known).
    pub fn finish(self) -> SearchOutcome {
        let mut ids: Vec<u64> = self.ids.into_iter().collect();
        ids.sort_unstable();
        SearchOutcome {
            fetched: self.records.len(),
            records: self.records,
            external: self.external,
            entry_id: self.entry_id,
            ids,
            stop_reason: self.stop,
            hit_limit: self.hit_limit,
            iterations: self.iter,
            fetch_window: self.fetch_window,
        }
    }
}
