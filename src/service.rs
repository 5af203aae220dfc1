//! TraceService: runs DeepFlow's auto-tracing against a `FlowStore`.
//!
//! Owns the translation of the engine's query descriptions (`autotrace::SearchQuery`) into
//! store reads (`FlowQuery`), and the loop that feeds the answers back. It knows nothing of
//! SQL (the store's) and nothing of the algorithm (the engine's).

use crate::autotrace::{
    self, ExternalAppSpan, Search, SearchOutcome, SearchQuery, TraceParams, TraceResult,
};
use crate::store::model::OrgId;
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
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceTiming {
    pub queries: u32,
    pub store_us: u64,
    pub assemble_us: u64,
}

/// Auto-tracing over a store.
#[derive(Clone)]
pub struct TraceService {
    pub store: SharedStore,
    pub params: TraceParams,
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
        SearchQuery::Fetch { ids, window: w } => (
            FlowQuery::new(Filter::ids(ids.iter().copied()))
                .window(window(*w))
                .order(Order::StartTimeAsc),
            true,
        ),
    }
}

impl TraceService {
    pub fn new(store: SharedStore, params: TraceParams) -> Self {
        TraceService { store, params }
    }

    /// Drive a search to its end: one store read per engine query.
    pub async fn run_search(
        &self,
        org: OrgId,
        mut search: Search,
    ) -> Result<(SearchOutcome, TraceTiming), ServiceError> {
        let mut timing = TraceTiming::default();
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
        Ok((search.finish(), timing))
    }

    async fn run(
        &self,
        org: OrgId,
        search: Search,
        params: &TraceParams,
    ) -> Result<(SearchOutcome, TraceResult, TraceTiming), ServiceError> {
        let (outcome, mut timing) = self.run_search(org, search).await?;
        let t = Instant::now();
        let result = outcome.clone().assemble(params);
        timing.assemble_us = t.elapsed().as_micros() as u64;
        Ok((outcome, result, timing))
    }

    /// Trace from an entry row `_id`, searching in `[start_s, end_s]`.
    pub async fn trace_by_id(
        &self,
        org: OrgId,
        id: u64,
        start_s: i64,
        end_s: i64,
    ) -> Result<(SearchOutcome, TraceResult, TraceTiming), ServiceError> {
        let search = Search::by_id(id, autotrace::TimeWindow::new(start_s, end_s), &self.params);
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
            &self.params,
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
        let search = Search::for_completion(spans, params);
        self.run(org, search, params).await
    }
}
