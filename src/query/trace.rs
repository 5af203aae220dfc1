//! Trace by ID and DeepFlow tracing: `TraceService` runs DeepFlow's auto-tracing against a `FlowStore`.
//!
//! Owns the translation of the engine's query descriptions (`autotrace::SearchQuery`) into
//! store reads (`FlowQuery`), and the loop that feeds the answers back. It knows nothing of
//! SQL (the store's) and nothing of the algorithm (the engine's).

use crate::autotrace::{
    self, BatchOutcome, BatchSearch, ExternalAppSpan, Search, SearchOutcome, SearchQuery,
    TraceParams, TraceResult,
};
use crate::store::model::{signal_source, OrgId};
use crate::store::{Col, Filter, FlowQuery, Order, SharedStore, StoreError, TimeWindow};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tracing engine: {0}")]
    Engine(#[from] autotrace::SearchError),
}

/// Timing of one traced request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceTiming {
    /// Store reads made.
    pub queries: u32,
    /// Time spent waiting for the store (µs).
    pub store_us: u64,
    /// Time the search spent between store reads: key extraction and relation checks (µs).
    pub search_us: u64,
    /// Time spent assembling the tree (µs).
    pub assemble_us: u64,
    /// Time spent encoding for Tempo (µs).
    pub encode_us: u64,
}

impl TraceTiming {
    /// The phases as a `Server-Timing` header value (durations in ms):
    /// `store;dur=…, search;dur=…, assembly;dur=…, encode;dur=…`.
    pub fn server_timing(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        format!(
            "store;dur={:.3}, search;dur={:.3}, assembly;dur={:.3}, encode;dur={:.3}",
            ms(self.store_us),
            ms(self.search_us),
            ms(self.assemble_us),
            ms(self.encode_us)
        )
    }
}

/// Auto-tracing over a store.
#[derive(Clone)]
pub struct TraceService {
    pub store: SharedStore,
    pub params: TraceParams,
    /// What the assembly renders (`Full` unless the consumer needs the tree only).
    pub detail: autotrace::Detail,
}

fn window(w: autotrace::TimeWindow) -> TimeWindow {
    let clamp = |v: i64| v.clamp(0, u32::MAX as i64) as u32;
    TimeWindow::new(clamp(w.start_s), clamp(w.end_s))
}

fn otel(filter: Filter, otel_only: bool) -> Filter {
    if otel_only {
        filter.and(Filter::IntIn(Col::SignalSource, vec![4]))
    } else {
        filter
    }
}

/// The traces a batch left out before its fetch ([`TraceService::run_batch_requiring`]).
#[derive(Debug, Clone, Default)]
pub struct Pruned {
    /// How many traces.
    pub traces: usize,
    /// Their row ids.
    pub ids: Vec<u64>,
}

/// The store read for one engine query; `true` when it wants full records.
pub fn to_flow_query(q: &SearchQuery) -> (FlowQuery, bool) {
    match q {
        SearchQuery::EntryByTraceId {
            trace_id,
            window: w,
            otel_only,
            limit,
        } => (
            FlowQuery::new(otel(Filter::TraceIdIn(vec![trace_id.clone()]), *otel_only))
                .window(window(*w))
                .limit(*limit as u64)
                .order(Order::StartTimeAsc),
            false,
        ),
        SearchQuery::EntryById {
            id,
            otel_only,
            limit,
        } => (
            FlowQuery::new(otel(Filter::ids([*id]), *otel_only)).limit(*limit as u64),
            false,
        ),
        SearchQuery::ByTraceIds {
            trace_ids,
            window: w,
            otel_only,
            limit,
        } => (
            FlowQuery::new(otel(Filter::TraceIdIn(trace_ids.clone()), *otel_only))
                .window(window(*w))
                .limit(*limit as u64),
            false,
        ),
        SearchQuery::Associate {
            req_tcp_seqs,
            resp_tcp_seqs,
            syscall_ids,
            x_request_ids,
            dns_request_ids,
            window: w,
            limit,
        } => {
            let mut clauses = Vec::new();
            let mut tcp = Vec::new();
            if !req_tcp_seqs.is_empty() {
                tcp.push(Filter::IntIn(
                    Col::ReqTcpSeq,
                    req_tcp_seqs.iter().map(|&v| v as u64).collect(),
                ));
            }
            if !resp_tcp_seqs.is_empty() {
                tcp.push(Filter::IntIn(
                    Col::RespTcpSeq,
                    resp_tcp_seqs.iter().map(|&v| v as u64).collect(),
                ));
            }
            if !tcp.is_empty() {
                clauses.push(Filter::Or(tcp));
            }
            if !syscall_ids.is_empty() {
                clauses.push(Filter::Or(vec![
                    Filter::IntIn(Col::SyscallTraceIdRequest, syscall_ids.clone()),
                    Filter::IntIn(Col::SyscallTraceIdResponse, syscall_ids.clone()),
                ]));
            }
            if !x_request_ids.is_empty() {
                clauses.push(Filter::Or(vec![
                    Filter::StrIn(Col::XRequestId0, x_request_ids.clone()),
                    Filter::StrIn(Col::XRequestId1, x_request_ids.clone()),
                ]));
            }
            if !dns_request_ids.is_empty() {
                clauses.push(Filter::And(vec![
                    Filter::IntIn(Col::L7Protocol, vec![120]),
                    Filter::IntIn(Col::RequestId, dns_request_ids.clone()),
                ]));
            }
            (
                FlowQuery::new(Filter::Or(clauses))
                    .window(window(*w))
                    .limit(*limit as u64),
                false,
            )
        }
        SearchQuery::EntryByIds {
            ids,
            otel_only,
            limit,
        } => {
            let mut q = FlowQuery::new(otel(Filter::ids(ids.iter().copied()), *otel_only))
                .limit(*limit as u64);
            // Explicit even with the OTel filter, so the read never scans the whole table.
            if let Some(w) = TimeWindow::covering_ids(ids) {
                q = q.window(w);
            }
            (q, false)
        }
        SearchQuery::EntryByTraceIds {
            trace_ids,
            window: w,
            otel_only,
            limit,
        } => (
            FlowQuery::new(otel(Filter::TraceIdIn(trace_ids.clone()), *otel_only))
                .window(window(*w))
                .limit(*limit as u64)
                .order(Order::StartTimeAsc),
            false,
        ),
        // Unordered: the engine orders the records itself, and an ordered read would make
        // the store produce every row before the first (no decoding while it reads).
        SearchQuery::Fetch { ids, window: w } => (
            FlowQuery::new(Filter::ids(ids.iter().copied())).window(window(*w)),
            true,
        ),
    }
}

impl TraceService {
    pub fn new(store: SharedStore, params: TraceParams) -> Self {
        TraceService {
            store,
            params,
            detail: autotrace::Detail::Full,
        }
    }

    /// Drive a search to its end: one store read per engine query.
    pub async fn run_search(
        &self,
        org: OrgId,
        mut search: Search,
    ) -> Result<(SearchOutcome, TraceTiming), ServiceError> {
        let mut timing = TraceTiming::default();
        let started = Instant::now();
        while let Some(q) = search.next()? {
            let (fq, records) = to_flow_query(&q);
            let t = Instant::now();
            if records {
                let rows = self.store.select_records(org, &fq).await?;
                timing.store_us += t.elapsed().as_micros() as u64;
                search.feed_records(rows)?;
            } else {
                let rows = self.store.select_meta(org, &fq).await?;
                timing.store_us += t.elapsed().as_micros() as u64;
                search.feed_meta(rows)?;
            }
            timing.queries += 1;
            tracing::debug!(query = ?q, "store query answered");
        }
        timing.search_us = (started.elapsed().as_micros() as u64).saturating_sub(timing.store_us);
        Ok((search.finish(), timing))
    }

    /// Drive a batch of searches to its end: one store read per merged query.
    pub async fn run_batch(
        &self,
        org: OrgId,
        batch: BatchSearch,
    ) -> Result<(BatchOutcome, TraceTiming), ServiceError> {
        let (outcome, timing, _) = self.run_batch_requiring(org, batch, &[]).await?;
        Ok((outcome, timing))
    }

    /// [`run_batch`](Self::run_batch) for a caller that only wants traces holding at least
    /// one row of each of `required` (a search's `{A} && {B}`): before the fetch, one read per
    /// predicate over the ids of the batch's traces, and only the traces that hold a row of
    /// each are fetched; the others end with no records. With fewer than two predicates (one
    /// is what the seeds themselves match) nothing is read. Also answers the ids of the traces
    /// left out, and how many they were.
    pub async fn run_batch_requiring(
        &self,
        org: OrgId,
        mut batch: BatchSearch,
        required: &[Filter],
    ) -> Result<(BatchOutcome, TraceTiming, Pruned), ServiceError> {
        let mut timing = TraceTiming::default();
        let mut pruned = Pruned::default();
        let started = Instant::now();
        while let Some(mut q) = batch.next()? {
            if let SearchQuery::Fetch { ids, window } = &mut q {
                if required.len() >= 2 && ids.len() as u64 <= self.store.max_rows() {
                    let t = Instant::now();
                    let groups = batch.fetch_groups();
                    let mut holds: Vec<std::collections::HashSet<u64>> = Vec::new();
                    for f in required {
                        let fq = FlowQuery::new(Filter::ids(ids.iter().copied()).and(f.clone()))
                            .window(self::window(*window))
                            .limit(ids.len() as u64);
                        let rows = self.store.select_meta(org, &fq).await?;
                        timing.queries += 1;
                        holds.push(rows.into_iter().map(|m| m._id).collect());
                    }
                    timing.store_us += t.elapsed().as_micros() as u64;
                    let mut kept = Vec::with_capacity(ids.len());
                    for g in groups {
                        if holds.iter().all(|h| g.iter().any(|id| h.contains(id))) {
                            kept.extend(g);
                        } else {
                            pruned.traces += 1;
                            pruned.ids.extend(g);
                        }
                    }
                    kept.sort_unstable();
                    *ids = kept;
                }
            }
            let (fq, records) = to_flow_query(&q);
            let t = Instant::now();
            let rows = if records {
                let rows = match &q {
                    // A batch's fetch can hold more ids than the store returns in one read.
                    SearchQuery::Fetch { ids, window } => {
                        let piece = self.store.max_rows().clamp(1, 100_000) as usize;
                        let mut rows = Vec::with_capacity(ids.len());
                        for chunk in ids.chunks(piece) {
                            let (fq, _) = to_flow_query(&SearchQuery::Fetch {
                                ids: chunk.to_vec(),
                                window: *window,
                            });
                            rows.extend(self.store.select_records(org, &fq).await?);
                            timing.queries += 1;
                        }
                        timing.queries -= 1;
                        rows
                    }
                    _ => self.store.select_records(org, &fq).await?,
                };
                timing.store_us += t.elapsed().as_micros() as u64;
                let n = rows.len();
                batch.feed_records(rows)?;
                n
            } else {
                let rows = self.store.select_meta(org, &fq).await?;
                timing.store_us += t.elapsed().as_micros() as u64;
                let n = rows.len();
                batch.feed_meta(rows)?;
                n
            };
            timing.queries += 1;
            tracing::debug!(rows, read = timing.queries, "batched store query answered");
        }
        timing.search_us = (started.elapsed().as_micros() as u64).saturating_sub(timing.store_us);
        let outcome = batch.finish();
        tracing::debug!(
            traces = outcome.traces.len(),
            reads = outcome.reads,
            dropped = outcome.dropped,
            "batch finished"
        );
        Ok((outcome, timing, pruned))
    }

    async fn run(
        &self,
        org: OrgId,
        search: Search,
        params: &TraceParams,
    ) -> Result<(SearchOutcome, TraceResult, TraceTiming), ServiceError> {
        let (mut outcome, mut timing) = self.run_search(org, search).await?;
        let t = Instant::now();
        // The records move into the engine (no copy); the outcome keeps their count. The
        // inference stage assembles them again with what it finds: it keeps a copy.
        let records = std::mem::take(&mut outcome.records);
        let kept = params.inference.then(|| records.clone());
        let result = autotrace::assemble_with(
            records,
            outcome.external.clone(),
            outcome.entry_id,
            params,
            self.detail,
        );
        timing.assemble_us = t.elapsed().as_micros() as u64;
        let result = match kept {
            Some(records) => {
                self.infer(org, params, &outcome, records, result, true, &mut timing)
                    .await?
            }
            None => result,
        };
        crate::metrics::metrics().assembled_trace(
            result.spans.len(),
            outcome.iterations,
            timing.queries,
        );
        Ok((outcome, result, timing))
    }

    /// The search parameters of a traced request: with inference on, flows found through
    /// eBPF, packet and X-Request-ID links may bring new trace ids (a second application trace
    /// inside one request is searched, not cut off).
    pub fn search_params(params: &TraceParams) -> std::borrow::Cow<'_, TraceParams> {
        if params.inference && !params.allow_multiple_trace_ids_in_tracing_result {
            let mut p = params.clone();
            p.allow_multiple_trace_ids_in_tracing_result = true;
            std::borrow::Cow::Owned(p)
        } else {
            std::borrow::Cow::Borrowed(params)
        }
    }

    /// The inference stage (`autotrace::infer`) over a trace assembled from `records` (and
    /// the outcome's external spans): probe the processes of its server spans for the calls
    /// behind thread hops, search their subtrees as DeepFlow does, assemble again, then link
    /// what exactly one candidate fits. Rounds repeat on the server spans found. Without
    /// `probe` (search, which assembles many traces per request), only the rules over the
    /// assembled trace run: no store reads.
    #[allow(clippy::too_many_arguments)]
    pub async fn infer(
        &self,
        org: OrgId,
        params: &TraceParams,
        outcome: &SearchOutcome,
        mut records: Vec<crate::store::model::FlowRecord>,
        mut result: TraceResult,
        probe: bool,
        timing: &mut TraceTiming,
    ) -> Result<TraceResult, ServiceError> {
        use crate::autotrace::infer;
        let limit = params.l7_tracing_limit.max(1);
        let mut known: foldhash::HashSet<u64> = records.iter().map(|r| r._id).collect();
        known.extend(outcome.ids.iter().copied());
        let mut done = foldhash::HashSet::default();
        let mut adopted: Vec<(u64, u64)> = Vec::new();
        let search_params = Self::search_params(params);
        for _ in 0..if probe { INFER_ROUNDS } else { 0 } {
            let probes = infer::probes(&result, &done, INFER_MAX_PROBES);
            if probes.is_empty() {
                break;
            }
            // One read for every probe of the round; each probe then counts its own rows.
            let mut seeds = Vec::new();
            let probes: Vec<_> = probes
                .into_iter()
                .filter_map(|p| {
                    done.insert(p.server);
                    ProbeRead::of(&p).map(|r| (p, r))
                })
                .collect();
            let Some(q) = ProbeRead::query(probes.iter().map(|(_, r)| r), limit) else {
                break;
            };
            let t = Instant::now();
            let rows = self.store.select_records(org, &q).await?;
            timing.store_us += t.elapsed().as_micros() as u64;
            timing.queries += 1;
            // The read's limit grows with its probes; reaching it, any probe may miss rows.
            let all_cut = rows.len() as u64 >= q.limit.unwrap_or(u64::MAX);
            for (p, read) in &probes {
                let own: Vec<_> = rows.iter().filter(|r| read.holds(r)).cloned().collect();
                let cut = all_cut || own.len() >= limit;
                for id in infer::adopt(p, &own, &known, cut) {
                    adopted.push((id, p.server));
                    seeds.push(id);
                }
            }
            if seeds.is_empty() {
                break;
            }
            let window = outcome.fetch_window.unwrap_or_else(|| {
                let t = (seeds[0] >> 32) as i64;
                autotrace::TimeWindow::new(t - 60, t + 60)
            });
            for seed in seeds {
                if known.contains(&seed) {
                    continue;
                }
                let search = Search::by_id(seed, window, &search_params);
                let (found, t) = self.run_search(org, search).await?;
                timing.queries += t.queries;
                timing.store_us += t.store_us;
                timing.search_us += t.search_us;
                for r in found.records {
                    if known.insert(r._id) {
                        records.push(r);
                    }
                }
                known.insert(seed);
            }
            let t = Instant::now();
            result = autotrace::assemble_with(
                records.clone(),
                outcome.external.clone(),
                outcome.entry_id,
                params,
                self.detail,
            );
            timing.assemble_us += t.elapsed().as_micros() as u64;
        }
        infer::apply(
            &mut result,
            &adopted,
            self.detail == autotrace::Detail::Full,
        );
        Ok(result)
    }

    /// Trace from an entry row `_id`, searching in `[start_s, end_s]`.
    pub async fn trace_by_id(
        &self,
        org: OrgId,
        id: u64,
        start_s: i64,
        end_s: i64,
    ) -> Result<(SearchOutcome, TraceResult, TraceTiming), ServiceError> {
        let search = Search::by_id(
            id,
            autotrace::TimeWindow::new(start_s, end_s),
            &Self::search_params(&self.params),
        );
        self.run(org, search, &self.params).await
    }

    /// Trace from an application trace id: every row carrying it seeds the search.
    pub async fn trace_by_trace_id(
        &self,
        org: OrgId,
        trace_id: &str,
        start_s: i64,
        end_s: i64,
    ) -> Result<(SearchOutcome, TraceResult, TraceTiming), ServiceError> {
        let search = Search::by_trace_id(
            trace_id,
            autotrace::TimeWindow::new(start_s, end_s),
            &Self::search_params(&self.params),
        );
        self.run(org, search, &self.params).await
    }

    /// Complete external app spans with DeepFlow's spans (the Trace Completion API).
    pub async fn complete(
        &self,
        org: OrgId,
        spans: Vec<ExternalAppSpan>,
        params: &TraceParams,
    ) -> Result<(SearchOutcome, TraceResult, TraceTiming), ServiceError> {
        let search = Search::for_completion(spans, &Self::search_params(params));
        self.run(org, search, params).await
    }
}

/// Most server spans one inference round probes, and most rounds.
const INFER_MAX_PROBES: usize = 64;
const INFER_ROUNDS: usize = 3;

/// The store read of a thread-hop probe: the eBPF rows of its process on its agent that may
/// overlap its server span. Rows end after the server span starts (their `time` is their end
/// second) and start before it ends; those that started over a minute earlier are not read.
struct ProbeRead {
    agent: u16,
    process: autotrace::infer::ProcessKey,
    /// `start_time` in `[from_us, to_us)`.
    from_us: i64,
    to_us: i64,
    /// `time` in `[from_s, to_s]`.
    from_s: i64,
    to_s: i64,
}

impl ProbeRead {
    fn of(p: &autotrace::infer::Probe) -> Option<ProbeRead> {
        if let autotrace::infer::ProcessKey::Pid(pid) = p.process {
            u64::try_from(pid).ok()?;
        }
        Some(ProbeRead {
            agent: p.agent,
            process: p.process,
            from_us: p.start_us.saturating_sub(60_000_000),
            to_us: p.end_us.saturating_add(1),
            from_s: p.start_us.div_euclid(1_000_000),
            to_s: p.end_us.div_euclid(1_000_000) + 60,
        })
    }

    /// Whether `r` is a row this probe reads.
    fn holds(&self, r: &crate::store::model::FlowRecord) -> bool {
        use autotrace::infer::ProcessKey;
        let process = match self.process {
            ProcessKey::Global(g) => r.gprocess_id_0 == g || r.gprocess_id_1 == g,
            ProcessKey::Pid(pid) => r.process_id_0 == pid || r.process_id_1 == pid,
        };
        r.signal_source == signal_source::EBPF
            && r.agent_id == self.agent
            && process
            && (self.from_us..self.to_us).contains(&r.start_time_us)
            && (self.from_s..=self.to_s).contains(&(r.time as i64))
    }

    /// One read for `reads` (`None` when there are none), up to `limit` rows per probe. Its
    /// filter is a superset of the probes' — eBPF rows of their agents and processes starting
    /// in the union of their ranges — and [`ProbeRead::holds`] gives each probe its own rows:
    /// ClickHouse weighs a disjunction of one conjunction per probe against its skip indexes
    /// disjunct by disjunct (a read of 24 probes took ~220 ms on 1 M rows; the superset ~30).
    fn query<'a>(reads: impl Iterator<Item = &'a ProbeRead>, limit: usize) -> Option<FlowQuery> {
        use autotrace::infer::ProcessKey;
        let reads: Vec<&ProbeRead> = reads.collect();
        let from = reads.iter().map(|r| r.from_s).min()?;
        let to = reads.iter().map(|r| r.to_s).max()?;
        let from_us = reads.iter().map(|r| r.from_us).min()?;
        let to_us = reads.iter().map(|r| r.to_us).max()?;
        let mut agents: Vec<u64> = reads.iter().map(|r| r.agent as u64).collect();
        agents.sort_unstable();
        agents.dedup();
        // Global and per-host process ids are matched in their own columns.
        let (mut global, mut pids) = (Vec::new(), Vec::new());
        for r in &reads {
            match r.process {
                ProcessKey::Global(g) => global.push(g as u64),
                ProcessKey::Pid(pid) => pids.push(pid as u64),
            }
        }
        let mut processes = Vec::new();
        for (mut ids, c0, c1) in [
            (global, Col::GprocessId0, Col::GprocessId1),
            (pids, Col::ProcessId0, Col::ProcessId1),
        ] {
            ids.sort_unstable();
            ids.dedup();
            if !ids.is_empty() {
                processes.push(Filter::IntIn(c0, ids.clone()));
                processes.push(Filter::IntIn(c1, ids));
            }
        }
        let filter = Filter::And(vec![
            Filter::IntIn(Col::SignalSource, vec![signal_source::EBPF as u64]),
            Filter::IntIn(Col::AgentId, agents),
            Filter::Or(processes),
            Filter::StartTimeIn(from_us, to_us),
        ]);
        Some(
            FlowQuery::new(filter)
                .window(window(autotrace::TimeWindow::new(from, to)))
                .limit(limit.saturating_mul(reads.len()) as u64),
        )
    }
}

/// The root of an assembled trace as Grafana draws it: the earliest span without a parent.
pub fn root_span(result: &TraceResult) -> Option<&autotrace::OutSpan> {
    result
        .spans
        .iter()
        .filter(|s| s.parent_id.is_none())
        .min_by_key(|s| (s.render_start_time_us, s.ids.first().copied()))
}

/// The one trace ID of an assembled trace, the same whichever of its rows it was traced from:
/// the application trace id of its first span (in depth-first order) that carries one Tempo can
/// read (OpenTelemetry and other hex ids of up to 32 characters); otherwise the zero-code ID of
/// its root — `deepflow` + the first row `_id` of the earliest span without a parent. Opening
/// either runs auto-tracing again and shows the same tree.
pub fn trace_identity(result: &TraceResult) -> crate::tempo::ids::TraceId {
    use crate::tempo::ids::TraceId;
    if let Some(id) = result
        .spans
        .iter()
        .flat_map(|s| s.trace_ids.iter())
        .find_map(|t| TraceId::from_app_trace_id(t))
    {
        return id;
    }
    let root = root_span(result).or(result.spans.first());
    TraceId::zero_code(
        root.and_then(|s| s.ids.first().copied())
            .or(result.entry_id)
            .unwrap_or(0),
    )
}

/// A trace ready for Tempo's routes: encoded once, served as v1/v2, protobuf or JSON.
#[derive(Debug, Clone)]
pub struct TempoTrace {
    pub trace: crate::tempo::pb::Trace,
    /// Why the trace is partial (cut at `tempo.max_flows`, or a search query hit its limit).
    pub partial: Option<String>,
    /// Encoded protobuf size in bytes.
    pub size: usize,
    pub flows: usize,
    /// How the time of the request that built this trace was spent.
    pub timing: TraceTiming,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    org: OrgId,
    trace_id: crate::tempo::ids::TraceId,
    range: Option<(i64, i64)>,
}

struct CacheEntry {
    value: std::sync::Arc<TempoTrace>,
    expires: Instant,
}

/// LRU of assembled traces, bounded by entries and by bytes, with per-entry expiry.
pub struct TraceCache {
    inner: std::sync::Mutex<(lru::LruCache<CacheKey, CacheEntry>, usize)>,
    cfg: crate::config::CacheConfig,
}

impl TraceCache {
    pub fn new(cfg: crate::config::CacheConfig) -> Self {
        let cap = std::num::NonZeroUsize::new(cfg.max_entries.max(1)).expect("non-zero");
        TraceCache {
            inner: std::sync::Mutex::new((lru::LruCache::new(cap), 0)),
            cfg,
        }
    }

    fn get(&self, key: &CacheKey) -> Option<std::sync::Arc<TempoTrace>> {
        if self.cfg.max_entries == 0 {
            return None;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (lru, bytes) = &mut *guard;
        match lru.get(key) {
            Some(e) if e.expires > Instant::now() => Some(e.value.clone()),
            Some(_) => {
                if let Some(old) = lru.pop(key) {
                    *bytes -= old.value.size;
                }
                None
            }
            None => None,
        }
    }

    fn put(&self, key: CacheKey, value: std::sync::Arc<TempoTrace>, recent: bool) {
        if self.cfg.max_entries == 0 || value.size > self.cfg.max_bytes {
            return;
        }
        let ttl = if recent {
            self.cfg.recent_ttl
        } else {
            self.cfg.ttl
        };
        if ttl == 0 {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (lru, bytes) = &mut *guard;
        *bytes += value.size;
        let entry = CacheEntry {
            value,
            expires: Instant::now() + std::time::Duration::from_secs(ttl),
        };
        if let Some((_, old)) = lru.push(key, entry) {
            *bytes -= old.value.size;
        }
        while *bytes > self.cfg.max_bytes {
            match lru.pop_lru() {
                Some((_, old)) => *bytes -= old.value.size,
                None => break,
            }
        }
    }

    /// Entries and bytes held (for tests and metrics).
    pub fn usage(&self) -> (usize, usize) {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        (guard.0.len(), guard.1)
    }
}

/// Trace by ID for Tempo's routes: find the trace's window, run auto-tracing, cut, encode,
/// cache.
pub struct TempoService {
    pub tracer: TraceService,
    pub cfg: crate::config::TempoConfig,
    pub cache: TraceCache,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl TempoService {
    pub fn new(
        mut tracer: TraceService,
        cfg: crate::config::TempoConfig,
        cache: crate::config::CacheConfig,
    ) -> Self {
        // The encoding reads the tree and the spans' own fields, not DeepFlow's display fields.
        tracer.detail = autotrace::Detail::Tree;
        TempoService {
            tracer,
            cfg,
            cache: TraceCache::new(cache),
        }
    }

    /// The trace with this ID, or `None` when no row carries it. `range` is the request's
    /// optional `start`/`end` (unix seconds).
    pub async fn trace(
        &self,
        org: OrgId,
        trace_id: crate::tempo::ids::TraceId,
        range: Option<(i64, i64)>,
    ) -> Result<Option<std::sync::Arc<TempoTrace>>, ServiceError> {
        Ok(self
            .lookup(org, trace_id, range)
            .await?
            .map(|(trace, _)| trace))
    }

    /// [`TempoService::trace`], also telling whether the trace came from the cache.
    pub async fn lookup(
        &self,
        org: OrgId,
        trace_id: crate::tempo::ids::TraceId,
        range: Option<(i64, i64)>,
    ) -> Result<Option<(std::sync::Arc<TempoTrace>, bool)>, ServiceError> {
        let key = CacheKey {
            org,
            trace_id,
            range,
        };
        let cached = self.cache.get(&key);
        crate::metrics::metrics().cache_lookup(cached.is_some());
        if let Some(hit) = cached {
            return Ok(Some((hit, true)));
        }
        let found = match trace_id.as_zero_code() {
            Some(row_id) => {
                let t = (row_id >> 32) as i64;
                let w = self.cfg.zero_code_window as i64;
                let (start, end) = range.unwrap_or((t - w, t + w));
                let (outcome, result, timing) = self
                    .tracer
                    .trace_by_id(org, row_id, start.min(t), end.max(t))
                    .await?;
                (!outcome.ids.is_empty()).then_some((outcome, result, timing))
            }
            None => self.by_app_trace_id(org, &trace_id, range).await?,
        };
        let Some((outcome, mut result, mut timing)) = found else {
            return Ok(None);
        };
        let newest_s = result
            .spans
            .iter()
            .map(|s| s.record.end_time_us / 1_000_000)
            .max()
            .unwrap_or(0);
        let flows = result.spans.len();
        let mut partial = None;
        if flows > self.cfg.max_flows {
            // Depth-first order puts every parent before its children, so a prefix is a tree.
            result.spans.truncate(self.cfg.max_flows);
            partial = Some(format!(
                "trace has {flows} flows, more than tempo.max_flows = {}; the first {} are returned",
                self.cfg.max_flows, self.cfg.max_flows
            ));
        } else if outcome.hit_limit {
            partial = Some(format!(
                "a search query returned tracing.l7_tracing_limit = {} rows; the trace may be incomplete",
                self.tracer.params.l7_tracing_limit
            ));
        }
        let t = Instant::now();
        // The assembled trace moves into the encoding (and is dropped there).
        let (trace, size) = crate::tempo::encode::encode_owned(result, &trace_id);
        timing.encode_us = t.elapsed().as_micros() as u64;
        let value = std::sync::Arc::new(TempoTrace {
            trace,
            partial,
            size,
            flows,
            timing,
        });
        let recent = now_s() - newest_s < self.cache.cfg.recent_age as i64;
        self.cache.put(key, value.clone(), recent);
        Ok(Some((value, false)))
    }

    /// An application trace id: one cheap query finds its rows (in the range, or within the
    /// lookback), then auto-tracing runs on their time span plus the tolerances.
    async fn by_app_trace_id(
        &self,
        org: OrgId,
        trace_id: &crate::tempo::ids::TraceId,
        range: Option<(i64, i64)>,
    ) -> Result<Option<(SearchOutcome, TraceResult, TraceTiming)>, ServiceError> {
        let forms = trace_id.stored_forms();
        let (start, end) = range.unwrap_or_else(|| {
            let now = now_s();
            (now - self.cfg.lookback as i64, now + 60)
        });
        let q = FlowQuery::new(Filter::TraceIdIn(forms.clone()))
            .window(window(autotrace::TimeWindow::new(start, end)))
            .limit(self.tracer.params.l7_tracing_limit as u64);
        let t = Instant::now();
        let rows = self.tracer.store.select_meta(org, &q).await?;
        let lookup_us = t.elapsed().as_micros() as u64;
        let Some(stored) = rows
            .iter()
            .flat_map(|r| r.trace_ids())
            .find(|t| forms.iter().any(|f| f == t))
        else {
            return Ok(None);
        };
        let min = rows
            .iter()
            .map(|r| r.start_time_us.div_euclid(1_000_000))
            .min()
            .unwrap_or(start);
        let max = rows
            .iter()
            .map(|r| r.end_time_us.div_euclid(1_000_000))
            .max()
            .unwrap_or(end);
        let tolerance_s = 1
            + (self.tracer.params.network_delay_us + self.tracer.params.host_clock_offset_us)
                / 1_000_000;
        let (outcome, result, mut timing) = self
            .tracer
            .trace_by_trace_id(org, &stored, min - tolerance_s, max + tolerance_s)
            .await?;
        timing.queries += 1;
        timing.store_us += lookup_us;
        Ok((!outcome.ids.is_empty() || !result.spans.is_empty())
            .then_some((outcome, result, timing)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use crate::tempo::ids::TraceId;

    fn entry(size: usize) -> std::sync::Arc<TempoTrace> {
        std::sync::Arc::new(TempoTrace {
            trace: Default::default(),
            partial: None,
            size,
            flows: 1,
            timing: TraceTiming::default(),
        })
    }

    fn key(n: u64) -> CacheKey {
        CacheKey {
            org: OrgId::DEFAULT,
            trace_id: TraceId::zero_code(n),
            range: None,
        }
    }

    #[test]
    fn one_probe_read_covers_every_probe_and_each_keeps_its_own_rows() {
        use crate::autotrace::infer::ProcessKey;
        let a = ProbeRead {
            agent: 1,
            process: ProcessKey::Pid(10),
            from_us: 1_000,
            to_us: 2_000,
            from_s: 0,
            to_s: 60,
        };
        let b = ProbeRead {
            agent: 2,
            process: ProcessKey::Global(7),
            from_us: 5_000,
            to_us: 9_000,
            from_s: 0,
            to_s: 70,
        };
        let q = ProbeRead::query([&a, &b].into_iter(), 100).unwrap();
        assert_eq!(q.window, Some(TimeWindow::new(0, 70)));
        assert_eq!(q.limit, Some(200));
        assert_eq!(
            q.filter,
            Filter::And(vec![
                Filter::IntIn(Col::SignalSource, vec![3]),
                Filter::IntIn(Col::AgentId, vec![1, 2]),
                Filter::Or(vec![
                    Filter::IntIn(Col::GprocessId0, vec![7]),
                    Filter::IntIn(Col::GprocessId1, vec![7]),
                    Filter::IntIn(Col::ProcessId0, vec![10]),
                    Filter::IntIn(Col::ProcessId1, vec![10]),
                ]),
                Filter::StartTimeIn(1_000, 9_000),
            ])
        );
        assert!(ProbeRead::query(std::iter::empty(), 100).is_none());
        // The superset also brings rows of one probe's agent with another's process, or in
        // another's range: neither probe holds them.
        let row =
            |agent: u16, pid: i32, gprocess: u32, start_us: i64| crate::store::model::FlowRecord {
                signal_source: crate::store::model::signal_source::EBPF,
                agent_id: agent,
                process_id_1: pid,
                gprocess_id_1: gprocess,
                start_time_us: start_us,
                time: 30,
                ..Default::default()
            };
        let rows = [
            row(1, 10, 0, 1_500),
            row(2, 0, 7, 6_000),
            row(1, 0, 7, 6_000),
            row(2, 10, 0, 1_500),
            row(1, 10, 0, 6_000),
        ];
        let held = |p: &ProbeRead| -> Vec<usize> {
            (0..rows.len()).filter(|&i| p.holds(&rows[i])).collect()
        };
        assert_eq!(held(&a), vec![0]);
        assert_eq!(held(&b), vec![1]);
    }

    #[test]
    fn batched_entry_queries_become_one_read_each() {
        let ids = vec![(5u64 << 32) | 1, (9u64 << 32) | 2];
        let (q, records) = to_flow_query(&SearchQuery::EntryByIds {
            ids: ids.clone(),
            otel_only: true,
            limit: 10,
        });
        assert!(!records);
        assert_eq!(q.window, Some(TimeWindow::new(5, 9)));
        assert_eq!(q.limit, Some(10));
        assert_eq!(
            q.filter,
            Filter::And(vec![
                Filter::ids(ids),
                Filter::IntIn(Col::SignalSource, vec![4])
            ])
        );
        let (q, records) = to_flow_query(&SearchQuery::EntryByTraceIds {
            trace_ids: vec!["a".into(), "b".into()],
            window: autotrace::TimeWindow::new(-3, 7),
            otel_only: false,
            limit: 4,
        });
        assert!(!records);
        assert_eq!(q.filter, Filter::TraceIdIn(vec!["a".into(), "b".into()]));
        assert_eq!(q.window, Some(TimeWindow::new(0, 7)));
        assert_eq!((q.limit, q.order), (Some(4), Order::StartTimeAsc));
    }

    #[test]
    fn server_timing_names_every_phase_in_ms() {
        let t = TraceTiming {
            queries: 3,
            store_us: 1500,
            search_us: 20,
            assemble_us: 0,
            encode_us: 123_456,
        };
        assert_eq!(
            t.server_timing(),
            "store;dur=1.500, search;dur=0.020, assembly;dur=0.000, encode;dur=123.456"
        );
    }

    #[test]
    fn cache_is_bounded_by_entries_and_bytes() {
        let c = TraceCache::new(CacheConfig {
            max_entries: 3,
            max_bytes: 100,
            ..CacheConfig::default()
        });
        for n in 0..5 {
            c.put(key(n), entry(10), false);
        }
        assert_eq!(c.usage(), (3, 30));
        assert!(c.get(&key(0)).is_none() && c.get(&key(4)).is_some());
        c.put(key(9), entry(95), false); // pushes the byte total over 100: least recent go
        assert_eq!(c.usage(), (1, 95));
        c.put(key(10), entry(101), false); // larger than the whole cache: not kept
        assert!(c.get(&key(10)).is_none());
        let off = TraceCache::new(CacheConfig {
            max_entries: 0,
            ..CacheConfig::default()
        });
        off.put(key(1), entry(1), false);
        assert!(off.get(&key(1)).is_none());
    }

    #[test]
    fn recent_traces_expire_sooner() {
        let c = TraceCache::new(CacheConfig {
            recent_ttl: 0,
            ttl: 60,
            ..CacheConfig::default()
        });
        c.put(key(1), entry(1), true); // recent with a zero TTL: not cached
        c.put(key(2), entry(1), false);
        assert!(c.get(&key(1)).is_none());
        assert!(c.get(&key(2)).is_some());
        // Expiry: an entry past its deadline is dropped on read.
        let c = TraceCache::new(CacheConfig {
            recent_ttl: 1,
            ..CacheConfig::default()
        });
        c.put(key(3), entry(7), true);
        {
            let mut g = c.inner.lock().unwrap();
            g.0.peek_mut(&key(3)).unwrap().expires =
                Instant::now() - std::time::Duration::from_millis(1);
        }
        assert!(c.get(&key(3)).is_none());
        assert_eq!(c.usage(), (0, 0));
    }
}
