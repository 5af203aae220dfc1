//! Many searches driven in lockstep ([`BatchSearch`]): one store read per query shape per step
//! instead of one per search, for callers that trace hundreds of seed rows at once.
//!
//! Owns the merging of the searches' pending queries, the splitting of each read's rows back to
//! the searches that asked for them, the dropping of covered seeds and the grouping of the
//! finished searches into traces. It must not do IO or render SQL, and it does not change what
//! a single [`Search`] does: each search sees exactly the rows its own query would have read.
//!
//! # Lockstep
//!
//! `next()` asks every active search for its pending query and groups them by shape (entry by
//! trace id, entry by `_id`, trace ids, association; `otel_only` is part of the shape). The
//! first shape in that order wins: its queries become ONE query whose keys are the union of the
//! participants' keys, whose window is the hull of their windows and whose limit is the sum of
//! their limits. A search whose query has another shape waits for a later read. The final
//! fetch is held back until every active search wants it; then one fetch reads the ids of all.
//! A shape with a single participant is passed through unchanged.
//!
//! # Demultiplexing
//!
//! Before the read is issued, an inverted index maps every key (per key kind: trace id,
//! `_id`, TCP sequences, syscall ids, `x_request_id`, DNS request ids) to the participants
//! that asked for it. Each returned row looks up its own key values there, and goes to each
//! such participant whose window holds the row's `time` (and, for OTel-only queries, whose row
//! is an OTel span), in the order received, up to that participant's own limit. A participant
//! cut at its limit flags `hit_limit` as it does alone; a merged read that returned as many
//! rows as its merged limit flags every participant, since any of them may be missing rows.
//! Fetched records are split by `_id` the same way.
//!
//! # Covered seeds
//!
//! With `skip_covered` (the default), a [`Search::by_id`] seed whose entry row has been
//! accepted by an earlier search of the batch (lower index = higher priority) is dropped right
//! then: it would only rebuild that search's trace. It is reported as part of that trace. A
//! search is never dropped because of a later one.
//!
//! # Traces
//!
//! `finish()` groups the surviving searches whose collected ids intersect (connected
//! components) into one [`BatchTrace`] each, in the order of their first seed.

use super::search::{Search, SearchError, SearchOutcome, SearchQuery, TimeWindow};
use super::TraceParams;
use crate::store::model::{FlowMeta, FlowRecord};
use foldhash::{HashMap, HashMapExt};
use std::hash::Hash;

/// One trace of a finished batch.
#[derive(Debug, Clone, Default)]
pub struct BatchTrace {
    /// Indices (in the input order) of every search that ended in this trace, ascending,
    /// including dropped covered seeds.
    pub seeds: Vec<usize>,
    /// The union of the members' outcomes: records de-duplicated by `_id` and ordered by start
    /// time then `_id`, `entry_id` and `stop_reason` of the first seed, `hit_limit` of any,
    /// the largest `iterations`, every collected id. A trace of one search keeps that search's
    /// outcome unchanged.
    pub outcome: SearchOutcome,
}

/// The result of a finished batch.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub traces: Vec<BatchTrace>,
    /// For every input search, the index in `traces` of the trace it ended in; `None` when it
    /// found nothing.
    pub seed_trace: Vec<Option<usize>>,
    /// Every input search's own collected ids, ascending (empty for dropped seeds).
    pub seed_ids: Vec<Vec<u64>>,
    /// Whether a merged read that carried the search's query returned its merged limit: only
    /// then may the search have seen other rows than its own queries would have read (its
    /// outcome is flagged `hit_limit`).
    pub seed_cut: Vec<bool>,
    /// Store reads the batch asked for.
    pub reads: usize,
    /// How many searches were dropped as covered seeds.
    pub dropped: usize,
}

/// The shapes of queries that can share a read, in the order they are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Shape {
    EntryTrace { otel_only: bool },
    EntryId { otel_only: bool },
    TraceIds { otel_only: bool },
    Associate,
    Fetch,
}

fn shape_of(q: &SearchQuery) -> Shape {
    match q {
        SearchQuery::EntryByTraceId { otel_only, .. }
        | SearchQuery::EntryByTraceIds { otel_only, .. } => Shape::EntryTrace {
            otel_only: *otel_only,
        },
        SearchQuery::EntryById { otel_only, .. } | SearchQuery::EntryByIds { otel_only, .. } => {
            Shape::EntryId {
                otel_only: *otel_only,
            }
        }
        SearchQuery::ByTraceIds { otel_only, .. } => Shape::TraceIds {
            otel_only: *otel_only,
        },
        SearchQuery::Associate { .. } => Shape::Associate,
        SearchQuery::Fetch { .. } => Shape::Fetch,
    }
}

/// What a participant's own query allows of a row besides its keys.
#[derive(Debug, Clone, Copy)]
struct Part {
    slot: usize,
    window: Option<TimeWindow>,
    otel_only: bool,
    limit: usize,
}

fn part_of(slot: usize, q: &SearchQuery) -> Part {
    let (window, otel_only, limit) = match q {
        SearchQuery::EntryByTraceId {
            window,
            otel_only,
            limit,
            ..
        }
        | SearchQuery::EntryByTraceIds {
            window,
            otel_only,
            limit,
            ..
        }
        | SearchQuery::ByTraceIds {
            window,
            otel_only,
            limit,
            ..
        } => (Some(*window), *otel_only, *limit),
        SearchQuery::EntryById {
            otel_only, limit, ..
        }
        | SearchQuery::EntryByIds {
            otel_only, limit, ..
        } => (None, *otel_only, *limit),
        SearchQuery::Associate { window, limit, .. } => (Some(*window), false, *limit),
        SearchQuery::Fetch { window, .. } => (Some(*window), false, usize::MAX),
    };
    Part {
        slot,
        window,
        otel_only,
        limit,
    }
}

/// key → positions (in `parts`) of the participants that asked for it.
type Postings<K> = HashMap<K, Vec<u32>>;

fn post<K: Hash + Eq>(map: &mut Postings<K>, key: K, part: usize) {
    let v = map.entry(key).or_default();
    if v.last() != Some(&(part as u32)) {
        v.push(part as u32);
    }
}

/// The inverted index of one merged read.
#[derive(Debug, Default)]
struct Demux {
    ids: Postings<u64>,
    trace_ids: Postings<String>,
    req: Postings<u32>,
    resp: Postings<u32>,
    sys: Postings<u64>,
    xreq: Postings<String>,
    dns: Postings<u64>,
}

impl Demux {
    fn add(&mut self, part: usize, q: &SearchQuery) {
        match q {
            SearchQuery::EntryByTraceId { trace_id, .. } => {
                post(&mut self.trace_ids, trace_id.clone(), part)
            }
            SearchQuery::EntryByTraceIds { trace_ids, .. }
            | SearchQuery::ByTraceIds { trace_ids, .. } => {
                for t in trace_ids {
                    post(&mut self.trace_ids, t.clone(), part);
                }
            }
            SearchQuery::EntryById { id, .. } => post(&mut self.ids, *id, part),
            SearchQuery::EntryByIds { ids, .. } | SearchQuery::Fetch { ids, .. } => {
                for &id in ids {
                    post(&mut self.ids, id, part);
                }
            }
            SearchQuery::Associate {
                req_tcp_seqs,
                resp_tcp_seqs,
                syscall_ids,
                x_request_ids,
                dns_request_ids,
                ..
            } => {
                for &k in req_tcp_seqs {
                    post(&mut self.req, k, part);
                }
                for &k in resp_tcp_seqs {
                    post(&mut self.resp, k, part);
                }
                for &k in syscall_ids {
                    post(&mut self.sys, k, part);
                }
                for k in x_request_ids {
                    post(&mut self.xreq, k.clone(), part);
                }
                for &k in dns_request_ids {
                    post(&mut self.dns, k, part);
                }
            }
        }
    }

    /// Push the participants whose keys the row carries (possibly repeated).
    fn meta_hits(&self, shape: Shape, r: &FlowMeta, out: &mut Vec<u32>) {
        fn hit<K: Hash + Eq>(map: &Postings<K>, key: &K, out: &mut Vec<u32>) {
            if let Some(v) = map.get(key) {
                out.extend_from_slice(v);
            }
        }
        match shape {
            Shape::EntryTrace { .. } | Shape::TraceIds { .. } => {
                for t in [&r.trace_id, &r._trace_id_2] {
                    if !t.is_empty() {
                        hit(&self.trace_ids, t, out);
                    }
                }
            }
            Shape::EntryId { .. } | Shape::Fetch => hit(&self.ids, &r._id, out),
            Shape::Associate => {
                hit(&self.req, &r.req_tcp_seq, out);
                hit(&self.resp, &r.resp_tcp_seq, out);
                hit(&self.sys, &r.syscall_trace_id_request, out);
                hit(&self.sys, &r.syscall_trace_id_response, out);
                hit(&self.xreq, &r.x_request_id_0, out);
                hit(&self.xreq, &r.x_request_id_1, out);
                if r.l7_protocol == crate::store::model::l7_protocol::DNS {
                    if let Some(d) = r.request_id {
                        hit(&self.dns, &d, out);
                    }
                }
            }
        }
    }
}

/// Merge the participants' queries of one shape into one query.
fn merge(shape: Shape, qs: &[&SearchQuery]) -> SearchQuery {
    fn hull(a: Option<TimeWindow>, b: TimeWindow) -> Option<TimeWindow> {
        Some(match a {
            None => b,
            Some(a) => TimeWindow::new(a.start_s.min(b.start_s), a.end_s.max(b.end_s)),
        })
    }
    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort_unstable();
        v.dedup();
        v
    }
    if qs.len() == 1 {
        return qs[0].clone();
    }
    let mut window = None;
    let mut limit = 0usize;
    let (mut ids, mut traces) = (Vec::new(), Vec::new());
    let (mut req, mut resp, mut sys, mut xreq, mut dns) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for q in qs {
        match q {
            SearchQuery::EntryByTraceId {
                trace_id,
                window: w,
                limit: l,
                ..
            } => {
                traces.push(trace_id.clone());
                window = hull(window, *w);
                limit = limit.saturating_add(*l);
            }
            SearchQuery::EntryByTraceIds {
                trace_ids,
                window: w,
                limit: l,
                ..
            }
            | SearchQuery::ByTraceIds {
                trace_ids,
                window: w,
                limit: l,
                ..
            } => {
                traces.extend(trace_ids.iter().cloned());
                window = hull(window, *w);
                limit = limit.saturating_add(*l);
            }
            SearchQuery::EntryById { id, limit: l, .. } => {
                ids.push(*id);
                limit = limit.saturating_add(*l);
            }
            SearchQuery::EntryByIds {
                ids: i, limit: l, ..
            } => {
                ids.extend_from_slice(i);
                limit = limit.saturating_add(*l);
            }
            SearchQuery::Fetch { ids: i, window: w } => {
                ids.extend_from_slice(i);
                window = hull(window, *w);
            }
            SearchQuery::Associate {
                req_tcp_seqs,
                resp_tcp_seqs,
                syscall_ids,
                x_request_ids,
                dns_request_ids,
                window: w,
                limit: l,
            } => {
                req.extend_from_slice(req_tcp_seqs);
                resp.extend_from_slice(resp_tcp_seqs);
                sys.extend_from_slice(syscall_ids);
                xreq.extend(x_request_ids.iter().cloned());
                dns.extend_from_slice(dns_request_ids);
                window = hull(window, *w);
                limit = limit.saturating_add(*l);
            }
        }
    }
    let window = window.unwrap_or(TimeWindow::new(0, 0));
    match shape {
        Shape::EntryTrace { otel_only } => SearchQuery::EntryByTraceIds {
            trace_ids: sorted(traces),
            window,
            otel_only,
            limit,
        },
        Shape::EntryId { otel_only } => SearchQuery::EntryByIds {
            ids: sorted(ids),
            otel_only,
            limit,
        },
        Shape::TraceIds { otel_only } => SearchQuery::ByTraceIds {
            trace_ids: sorted(traces),
            window,
            otel_only,
            limit,
        },
        Shape::Associate => SearchQuery::Associate {
            req_tcp_seqs: sorted(req),
            resp_tcp_seqs: sorted(resp),
            syscall_ids: sorted(sys),
            x_request_ids: sorted(xreq),
            dns_request_ids: sorted(dns),
            window,
            limit,
        },
        Shape::Fetch => SearchQuery::Fetch {
            ids: sorted(ids),
            window,
        },
    }
}

/// The read in flight.
#[derive(Debug)]
struct InFlight {
    shape: Shape,
    parts: Vec<Part>,
    demux: Demux,
    /// The merged limit (for the fetch: `max_rows`).
    limit: usize,
}

#[derive(Debug)]
struct Slot {
    /// `None` once dropped as a covered seed.
    search: Option<Search>,
    pending: Option<SearchQuery>,
    done: bool,
    /// The earlier search this covered seed was merged into.
    merged_into: Option<usize>,
    /// Accepted rows already checked for covered seeds.
    cursor: usize,
    /// A merged read carrying this search's query was cut at its limit.
    cut: bool,
}

impl Slot {
    fn active(&self) -> bool {
        self.search.is_some() && !self.done
    }
}

/// Many [`Search`]es run in lockstep (see the module doc). Same protocol as a `Search`: ask
/// `next()`, answer with `feed_meta` or `feed_records`, then `finish()`.
#[derive(Debug)]
pub struct BatchSearch {
    params: TraceParams,
    slots: Vec<Slot>,
    /// Seed `_id` → the `by_id` searches starting from it (ascending).
    seeds: HashMap<u64, Vec<usize>>,
    skip_covered: bool,
    max_rows: usize,
    inflight: Option<InFlight>,
    reads: usize,
    dropped: usize,
}

impl BatchSearch {
    /// A batch over `searches` (earlier = higher priority for covered seeds); `params` are
    /// the parameters they were built with.
    pub fn new(searches: Vec<Search>, params: &TraceParams) -> BatchSearch {
        let mut seeds: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, s) in searches.iter().enumerate() {
            if let Some(id) = s.seed_id() {
                seeds.entry(id).or_default().push(i);
            }
        }
        BatchSearch {
            params: params.clone(),
            slots: searches
                .into_iter()
                .map(|s| Slot {
                    search: Some(s),
                    pending: None,
                    done: false,
                    merged_into: None,
                    cursor: 0,
                    cut: false,
                })
                .collect(),
            seeds,
            skip_covered: true,
            max_rows: usize::MAX,
            inflight: None,
            reads: 0,
            dropped: 0,
        }
    }

    /// Drop `by_id` seeds whose entry row an earlier search has accepted (default `true`).
    pub fn skip_covered(mut self, on: bool) -> Self {
        self.skip_covered = on;
        self
    }

    /// The most rows the store returns for one read (it silently caps larger limits): merged
    /// limits are capped there, so a capped read still flags its participants. The merged
    /// fetch is not capped: its reader splits it into reads of at most this many ids.
    /// Default: no cap.
    pub fn max_rows(mut self, rows: usize) -> Self {
        self.max_rows = rows.max(1);
        self
    }

    /// The parameters the batch was built with.
    pub fn params(&self) -> &TraceParams {
        &self.params
    }

    /// Store reads asked for so far.
    pub fn reads(&self) -> usize {
        self.reads
    }

    /// The next merged query, or `None` when every search is finished (call `finish`).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<SearchQuery>, SearchError> {
        if self.inflight.is_some() {
            return Err(SearchError::AwaitingRows);
        }
        let mut best: Option<Shape> = None;
        for slot in &mut self.slots {
            if !slot.active() {
                continue;
            }
            if slot.pending.is_none() {
                match slot
                    .search
                    .as_mut()
                    .map(|s| s.next())
                    .transpose()?
                    .flatten()
                {
                    Some(q) => slot.pending = Some(q),
                    None => {
                        slot.done = true;
                        continue;
                    }
                }
            }
            if let Some(q) = &slot.pending {
                let s = shape_of(q);
                best = Some(best.map_or(s, |b| b.min(s)));
            }
        }
        let Some(shape) = best else {
            return Ok(None);
        };
        let mut parts = Vec::new();
        let mut demux = Demux::default();
        let mut qs = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(q) = slot.pending.as_ref().filter(|q| shape_of(q) == shape) {
                demux.add(parts.len(), q);
                parts.push(part_of(i, q));
                qs.push(q);
            }
        }
        let mut query = merge(shape, &qs);
        let limit = match &mut query {
            // The fetch has no limit of its own: the service reads it in pieces of at most the
            // store's cap (`TraceService::run_batch`).
            SearchQuery::Fetch { .. } => usize::MAX,
            SearchQuery::EntryByTraceId { limit, .. }
            | SearchQuery::EntryById { limit, .. }
            | SearchQuery::EntryByIds { limit, .. }
            | SearchQuery::EntryByTraceIds { limit, .. }
            | SearchQuery::ByTraceIds { limit, .. }
            | SearchQuery::Associate { limit, .. } => {
                if parts.len() > 1 {
                    *limit = (*limit).min(self.max_rows);
                }
                *limit
            }
        };
        for p in &parts {
            self.slots[p.slot].pending = None;
        }
        tracing::debug!(
            shape = ?shape,
            participants = parts.len(),
            read = self.reads,
            "batched query"
        );
        self.reads += 1;
        self.inflight = Some(InFlight {
            shape,
            parts,
            demux,
            limit,
        });
        Ok(Some(query))
    }

    /// While the batch's fetch is in flight (`next()` returned it and no records were fed):
    /// the row ids of each trace the batch will make, grouped as `finish` groups them
    /// (searches whose ids intersect are one trace), each sorted, in the order of their first
    /// search. A caller may read the records of only the traces it wants: the others end with
    /// no records. Empty when no fetch is in flight.
    pub fn fetch_groups(&self) -> Vec<Vec<u64>> {
        let Some(fl) = self.inflight.as_ref().filter(|f| f.shape == Shape::Fetch) else {
            return Vec::new();
        };
        let sets: Vec<Vec<u64>> = fl
            .parts
            .iter()
            .filter_map(|p| self.slots[p.slot].search.as_ref())
            .map(|s| s.collected_ids_from(0).collect())
            .collect();
        let roots = id_components(sets.iter().map(|ids| Some(ids.as_slice())));
        components(&roots, |i| !sets[i].is_empty())
            .into_iter()
            .map(|members| {
                let mut g: Vec<u64> = members
                    .iter()
                    .flat_map(|&i| sets[i].iter().copied())
                    .collect();
                g.sort_unstable();
                g.dedup();
                g
            })
            .collect()
    }

    /// Split rows among the participants (see the module doc).
    fn split<T>(
        fl: &InFlight,
        rows: Vec<T>,
        time_and_source: impl Fn(&T) -> (u32, u16),
        hits: impl Fn(&Demux, &T, &mut Vec<u32>),
    ) -> Vec<Vec<T>>
    where
        T: Clone,
    {
        let mut out: Vec<Vec<T>> = fl.parts.iter().map(|_| Vec::new()).collect();
        let mut stamp: Vec<usize> = vec![usize::MAX; fl.parts.len()];
        let mut found = Vec::new();
        let mut take = Vec::new();
        for (n, row) in rows.into_iter().enumerate() {
            found.clear();
            take.clear();
            hits(&fl.demux, &row, &mut found);
            let (time, signal) = time_and_source(&row);
            for &k in &found {
                let k = k as usize;
                if stamp[k] == n {
                    continue;
                }
                stamp[k] = n;
                let p = &fl.parts[k];
                if p.window.is_some_and(|w| !w.contains(time as i64))
                    || (p.otel_only && signal != crate::store::model::signal_source::OTEL)
                    || out[k].len() >= p.limit
                {
                    continue;
                }
                take.push(k);
            }
            if let Some((&last, rest)) = take.split_last() {
                for &k in rest {
                    out[k].push(row.clone());
                }
                out[last].push(row);
            }
        }
        out
    }

    /// Feed the FLOWMETA rows of the merged entry, trace-id or association query.
    pub fn feed_meta(&mut self, rows: Vec<FlowMeta>) -> Result<(), SearchError> {
        let Some(fl) = self.inflight.take() else {
            return Err(SearchError::NotAwaiting);
        };
        if fl.shape == Shape::Fetch {
            self.inflight = Some(fl);
            return Err(SearchError::WrongRowKind("full record"));
        }
        let truncated = fl.parts.len() > 1 && rows.len() >= fl.limit;
        let per = if fl.parts.len() == 1 {
            vec![rows]
        } else {
            let shape = fl.shape;
            Self::split(
                &fl,
                rows,
                |r| (r.time, r.signal_source),
                |d, r, out| d.meta_hits(shape, r, out),
            )
        };
        for (p, rows) in fl.parts.iter().zip(per) {
            let slot = &mut self.slots[p.slot];
            let search = slot.search.as_mut().ok_or(SearchError::NotAwaiting)?;
            search.feed_meta(rows)?;
            if truncated {
                search.flag_hit_limit();
                slot.cut = true;
            }
        }
        if self.skip_covered {
            for p in &fl.parts {
                self.drop_covered_by(p.slot);
            }
        }
        Ok(())
    }

    /// Drop the active `by_id` seeds after `a` whose entry row `a` has accepted since the last
    /// check.
    fn drop_covered_by(&mut self, a: usize) {
        let Some(search) = self.slots[a].search.as_ref() else {
            return;
        };
        let from = self.slots[a].cursor;
        let mut covered = Vec::new();
        for id in search.collected_ids_from(from) {
            if let Some(bs) = self.seeds.get(&id) {
                covered.extend(bs.iter().copied().filter(|&b| b > a));
            }
        }
        self.slots[a].cursor = search.collected_len();
        for b in covered {
            let slot = &mut self.slots[b];
            if slot.active() {
                tracing::debug!(seed = b, into = a, "covered seed dropped");
                slot.search = None;
                slot.pending = None;
                slot.merged_into = Some(a);
                self.dropped += 1;
            }
        }
    }

    /// Feed the full records of the merged fetch.
    pub fn feed_records(&mut self, rows: Vec<FlowRecord>) -> Result<(), SearchError> {
        let Some(fl) = self.inflight.take() else {
            return Err(SearchError::NotAwaiting);
        };
        if fl.shape != Shape::Fetch {
            self.inflight = Some(fl);
            return Err(SearchError::WrongRowKind("flowmeta"));
        }
        let truncated = fl.parts.len() > 1 && rows.len() >= fl.limit;
        let per = if fl.parts.len() == 1 {
            vec![rows]
        } else {
            Self::split(
                &fl,
                rows,
                |r: &FlowRecord| (r.time, r.signal_source),
                |d, r, out| {
                    if let Some(v) = d.ids.get(&r._id) {
                        out.extend_from_slice(v);
                    }
                },
            )
        };
        for (p, rows) in fl.parts.iter().zip(per) {
            let slot = &mut self.slots[p.slot];
            let search = slot.search.as_mut().ok_or(SearchError::NotAwaiting)?;
            search.feed_records(rows)?;
            if truncated {
                search.flag_hit_limit();
                slot.cut = true;
            }
        }
        Ok(())
    }

    /// The traces (call after `next()` returned `None`; earlier calls give what is known).
    pub fn finish(self) -> BatchOutcome {
        let n = self.slots.len();
        let mut outcomes: Vec<Option<SearchOutcome>> = Vec::with_capacity(n);
        let mut merged_into = Vec::with_capacity(n);
        let mut seed_cut = Vec::with_capacity(n);
        for slot in self.slots {
            merged_into.push(slot.merged_into);
            seed_cut.push(slot.cut);
            outcomes.push(slot.search.map(Search::finish));
        }
        let seed_ids: Vec<Vec<u64>> = outcomes
            .iter()
            .map(|o| o.as_ref().map(|o| o.ids.clone()).unwrap_or_default())
            .collect();
        // Connected components of the surviving searches by shared ids.
        let roots = id_components(
            outcomes
                .iter()
                .map(|o| o.as_ref().map(|o| o.ids.as_slice())),
        );
        let members = components(&roots, |i| {
            outcomes[i]
                .as_ref()
                .is_some_and(|o| !o.ids.is_empty() || !o.external.is_empty())
        });
        let mut seed_trace: Vec<Option<usize>> = vec![None; n];
        for (t, m) in members.iter().enumerate() {
            for &i in m {
                seed_trace[i] = Some(t);
            }
        }
        for i in 0..n {
            let mut j = i;
            while let Some(k) = merged_into[j] {
                j = k;
            }
            if j != i {
                seed_trace[i] = seed_trace[j];
            }
        }
        let mut traces: Vec<BatchTrace> = members
            .into_iter()
            .map(|m| {
                let outs: Vec<SearchOutcome> =
                    m.iter().filter_map(|&i| outcomes[i].take()).collect();
                BatchTrace {
                    seeds: Vec::new(),
                    outcome: union(outs),
                }
            })
            .collect();
        for (i, t) in seed_trace.iter().enumerate() {
            if let Some(t) = t {
                traces[*t].seeds.push(i);
            }
        }
        BatchOutcome {
            traces,
            seed_trace,
            seed_ids,
            seed_cut,
            reads: self.reads,
            dropped: self.dropped,
        }
    }
}

/// Connected components of id sets (sets sharing an id are one component; `None` is a set
/// of its own): each set's component, named by its lowest index.
fn id_components<'a>(sets: impl Iterator<Item = Option<&'a [u64]>>) -> Vec<usize> {
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut parent: Vec<usize> = Vec::new();
    let mut owner: HashMap<u64, usize> = HashMap::new();
    for (i, ids) in sets.enumerate() {
        parent.push(i);
        for &id in ids.unwrap_or_default() {
            let first = *owner.entry(id).or_insert(i);
            let (a, b) = (root(&mut parent, first), root(&mut parent, i));
            if a != b {
                // The lower index stays the root.
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    (0..parent.len()).map(|i| root(&mut parent, i)).collect()
}

/// The members of each component (`roots` as [`id_components`] gives them) among the indices
/// `keep` accepts, in index order, components ordered by their first member.
fn components(roots: &[usize], keep: impl Fn(usize) -> bool) -> Vec<Vec<usize>> {
    let mut of_root: HashMap<usize, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, &r) in roots.iter().enumerate() {
        if !keep(i) {
            continue;
        }
        let c = *of_root.entry(r).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[c].push(i);
    }
    out
}

/// The outcome of a component, members in seed order.
fn union(mut outs: Vec<SearchOutcome>) -> SearchOutcome {
    if outs.len() == 1 {
        return outs.pop().unwrap_or_default();
    }
    let mut it = outs.into_iter();
    let mut acc = it.next().unwrap_or_default();
    let mut seen: foldhash::HashSet<u64> = acc.records.iter().map(|r| r._id).collect();
    for o in it {
        acc.records
            .extend(o.records.into_iter().filter(|r| seen.insert(r._id)));
        acc.external.extend(o.external);
        acc.ids.extend(o.ids);
        acc.hit_limit |= o.hit_limit;
        acc.iterations = acc.iterations.max(o.iterations);
        acc.fetch_window = match (acc.fetch_window, o.fetch_window) {
            (Some(a), Some(b)) => Some(TimeWindow::new(
                a.start_s.min(b.start_s),
                a.end_s.max(b.end_s),
            )),
            (a, b) => a.or(b),
        };
    }
    acc.records.sort_by_key(|r| (r.start_time_us, r._id));
    acc.ids.sort_unstable();
    acc.ids.dedup();
    acc.fetched = acc.records.len();
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(a: i64, b: i64) -> TimeWindow {
        TimeWindow::new(a, b)
    }

    fn assoc(req: &[u32], resp: &[u32], window: TimeWindow, limit: usize) -> SearchQuery {
        SearchQuery::Associate {
            req_tcp_seqs: req.to_vec(),
            resp_tcp_seqs: resp.to_vec(),
            syscall_ids: vec![],
            x_request_ids: vec![],
            dns_request_ids: vec![],
            window,
            limit,
        }
    }

    fn meta(id: u64, time: u32, req: u32, resp: u32) -> FlowMeta {
        FlowMeta {
            _id: id,
            time,
            req_tcp_seq: req,
            resp_tcp_seq: resp,
            ..FlowMeta::default()
        }
    }

    fn inflight(shape: Shape, qs: &[SearchQuery]) -> InFlight {
        let mut demux = Demux::default();
        let mut parts = Vec::new();
        for (i, q) in qs.iter().enumerate() {
            demux.add(i, q);
            parts.push(part_of(i, q));
        }
        InFlight {
            shape,
            parts,
            demux,
            limit: usize::MAX,
        }
    }

    fn split_ids(fl: &InFlight, rows: Vec<FlowMeta>) -> Vec<Vec<u64>> {
        BatchSearch::split(
            fl,
            rows,
            |r| (r.time, r.signal_source),
            |d, r, out| d.meta_hits(fl.shape, r, out),
        )
        .into_iter()
        .map(|v| v.into_iter().map(|r| r._id).collect())
        .collect()
    }

    #[test]
    fn merged_queries_union_keys_hull_windows_and_sum_limits() {
        let a = assoc(&[5, 1], &[], w(10, 20), 100);
        let b = assoc(&[1, 3], &[9], w(15, 40), 50);
        assert_eq!(merge(Shape::Associate, &[&a, &b]), {
            SearchQuery::Associate {
                req_tcp_seqs: vec![1, 3, 5],
                resp_tcp_seqs: vec![9],
                syscall_ids: vec![],
                x_request_ids: vec![],
                dns_request_ids: vec![],
                window: w(10, 40),
                limit: 150,
            }
        });
        // one participant: its own query, unchanged
        assert_eq!(merge(Shape::Associate, &[&a]), a);
        let e = |id| SearchQuery::EntryById {
            id,
            otel_only: true,
            limit: 7,
        };
        assert_eq!(
            merge(Shape::EntryId { otel_only: true }, &[&e(9), &e(2), &e(9)]),
            SearchQuery::EntryByIds {
                ids: vec![2, 9],
                otel_only: true,
                limit: 21
            }
        );
        let t = |t: &str, win| SearchQuery::EntryByTraceId {
            trace_id: t.into(),
            window: win,
            otel_only: false,
            limit: usize::MAX,
        };
        assert_eq!(
            merge(
                Shape::EntryTrace { otel_only: false },
                &[&t("b", w(5, 6)), &t("a", w(1, 2))]
            ),
            SearchQuery::EntryByTraceIds {
                trace_ids: vec!["a".into(), "b".into()],
                window: w(1, 6),
                otel_only: false,
                limit: usize::MAX,
            }
        );
        let f = |ids: &[u64], win| SearchQuery::Fetch {
            ids: ids.to_vec(),
            window: win,
        };
        assert_eq!(
            merge(Shape::Fetch, &[&f(&[4, 2], w(3, 3)), &f(&[2, 8], w(0, 1))]),
            f(&[2, 4, 8], w(0, 3))
        );
    }

    #[test]
    fn shapes_are_served_entries_first_and_the_fetch_last() {
        let mut shapes = [
            Shape::Fetch,
            Shape::Associate,
            Shape::TraceIds { otel_only: false },
            Shape::EntryId { otel_only: true },
            Shape::EntryTrace { otel_only: false },
        ];
        shapes.sort();
        assert_eq!(shapes[0], Shape::EntryTrace { otel_only: false });
        assert_eq!(shapes[4], Shape::Fetch);
    }

    #[test]
    fn rows_go_to_the_participants_whose_keys_and_window_they_match() {
        let qs = [
            assoc(&[1], &[2], w(100, 200), 10),
            assoc(&[1, 3], &[], w(150, 300), 10),
            assoc(&[4], &[], w(0, 1000), 2),
        ];
        let fl = inflight(Shape::Associate, &qs);
        let rows = vec![
            meta(1, 120, 1, 2), // both keys of 0 (once), outside 1's window
            meta(2, 160, 1, 0), // 0 and 1
            meta(3, 250, 3, 0), // 1 only
            meta(4, 160, 9, 9), // nobody
            meta(5, 10, 4, 0),  // 2
            meta(6, 20, 4, 0),  // 2
            meta(7, 30, 4, 0),  // 2, beyond its limit
            meta(8, 160, 0, 3), // 3 is a request key of 1, not a response key
        ];
        assert_eq!(
            split_ids(&fl, rows),
            vec![vec![1, 2], vec![2, 3], vec![5, 6]]
        );
    }

    #[test]
    fn trace_id_rows_are_split_by_either_column_and_otel_only() {
        let q = |t: &[&str], otel_only| SearchQuery::ByTraceIds {
            trace_ids: t.iter().map(|s| s.to_string()).collect(),
            window: w(0, 10),
            otel_only,
            limit: 10,
        };
        let fl = inflight(
            Shape::TraceIds { otel_only: false },
            &[q(&["A"], false), q(&["B"], true)],
        );
        let mut r1 = meta(1, 5, 0, 0);
        r1.trace_id = "A".into();
        r1._trace_id_2 = "B".into();
        let mut r2 = r1.clone();
        r2._id = 2;
        r2.signal_source = crate::store::model::signal_source::OTEL;
        assert_eq!(split_ids(&fl, vec![r1, r2]), vec![vec![1, 2], vec![2]]);
    }

    #[test]
    fn the_protocol_is_that_of_a_search() {
        let p = TraceParams::default();
        let s = |id| Search::by_id(id, w(0, 10), &p);
        let mut b = BatchSearch::new(vec![s(1), s(2)], &p);
        assert_eq!(b.feed_meta(vec![]), Err(SearchError::NotAwaiting));
        let q = b.next().unwrap().unwrap();
        assert_eq!(
            q,
            SearchQuery::EntryByIds {
                ids: vec![1, 2],
                otel_only: false,
                limit: 2 * p.l7_tracing_limit
            }
        );
        assert_eq!(b.next(), Err(SearchError::AwaitingRows));
        assert_eq!(
            b.feed_records(vec![]),
            Err(SearchError::WrongRowKind("flowmeta"))
        );
        // seed 2 is found alone: only it asks the fetch
        b.feed_meta(vec![meta(2, 5, 0, 0)]).unwrap();
        let q = b.next().unwrap().unwrap();
        assert_eq!(
            q,
            SearchQuery::Fetch {
                ids: vec![2],
                window: w(0, 0)
            }
        );
        assert_eq!(
            b.feed_meta(vec![]),
            Err(SearchError::WrongRowKind("full record"))
        );
        b.feed_records(vec![]).unwrap();
        assert_eq!(b.next(), Ok(None));
        let out = b.finish();
        assert_eq!(out.reads, 2);
        assert_eq!(out.seed_trace, vec![None, Some(0)]);
        assert_eq!(out.traces[0].seeds, vec![1]);
    }

    #[test]
    fn a_fetch_is_never_cut_at_the_store_cap() {
        let p = TraceParams::default();
        let s = |id| Search::by_id(id, w(0, 10), &p);
        let mut b = BatchSearch::new(vec![s(1), s(2)], &p).max_rows(3);
        b.next().unwrap();
        b.feed_meta(vec![meta(1, 0, 0, 0), meta(2, 0, 0, 0)])
            .unwrap();
        let q = b.next().unwrap().unwrap();
        assert!(matches!(q, SearchQuery::Fetch { .. }));
        let rec = |id| FlowRecord {
            _id: id,
            ..FlowRecord::default()
        };
        // The service reads the fetch in pieces of at most the cap; all of it comes back.
        b.feed_records(vec![rec(1), rec(2), rec(2)]).unwrap();
        assert_eq!(b.next(), Ok(None));
        let out = b.finish();
        assert_eq!(out.seed_cut, vec![false, false]);
        assert!(out.traces.iter().all(|t| !t.outcome.hit_limit));
        assert_eq!(out.traces.len(), 2);
    }
}
