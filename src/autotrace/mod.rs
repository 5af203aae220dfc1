//! DeepFlow auto-tracing as a pure, deterministic, IO-free engine (spec `autotrace.md`).
//!
//! Owns the algorithm parameters (`TraceParams`), the sans-IO search state machine (`search`)
//! and the assembly pipeline `merge → relate → sort → output` (`assemble`). It must not perform
//! IO, read clocks or use randomness; the store layer runs the queries this module describes.
//!
//! Typical use: drive a [`Search`] by answering each [`SearchQuery`], then assemble. To trace
//! many seeds at once, drive a [`BatchSearch`] the same way (one read per query shape per step).
//!
//! ```
//! use deepflow_tempo::autotrace::{Search, SearchQuery, TimeWindow, TraceParams};
//! use deepflow_tempo::store::model::{FlowMeta, FlowRecord};
//!
//! let params = TraceParams::default();
//! let mut search = Search::by_trace_id("abc", TimeWindow::new(0, 60), &params);
//! while let Some(query) = search.next().unwrap() {
//!     match query {
//!         // run the query against the store and feed the rows back
//!         SearchQuery::Fetch { .. } => search.feed_records(Vec::<FlowRecord>::new()).unwrap(),
//!         _ => search.feed_meta(Vec::<FlowMeta>::new()).unwrap(),
//!     }
//! }
//! let outcome = search.finish();
//! let partial = outcome.hit_limit;
//! let trace = outcome.assemble(&params);
//! assert!(trace.spans.is_empty() && !partial);
//! let data = trace.to_deepflow_json(false); // L7FlowTracing `DATA`
//! assert_eq!(data, serde_json::json!({}));
//! ```

pub mod batch;
pub mod clock;
pub mod flow;
pub mod infer;
pub mod merge;
pub mod output;
pub mod relate;
pub mod search;
pub mod sort;

pub use batch::{BatchOutcome, BatchSearch, BatchTrace};
pub use flow::{ExternalAppSpan, Flow, InstKey};
pub use output::{OutSpan, ServiceStat, TraceResult};
pub use search::{Search, SearchError, SearchOutcome, SearchQuery, StopReason, TimeWindow};

use crate::store::model::FlowRecord;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashSet;

/// A search dimension (`tracing_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TracingSource {
    TraceId,
    Syscall,
    TcpSeq,
    XRequestId,
    Dns,
}

/// The default search dimensions (DNS is opt-in).
pub const DEFAULT_TRACING_SOURCES: [TracingSource; 4] = [
    TracingSource::TraceId,
    TracingSource::Syscall,
    TracingSource::TcpSeq,
    TracingSource::XRequestId,
];

/// Opt-in weak connections (§6.9 scenarios 7 and 8). Deserialises from DeepFlow's list form
/// (`["net_span_c_to_s_via_trace_id"]`) or from a table of booleans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpanSetConnectionStrategies {
    pub net_span_c_to_s_via_trace_id: bool,
    pub sys_span_s_to_c_via_trace_id: bool,
}

impl<'de> Deserialize<'de> for SpanSetConnectionStrategies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Flags {
            #[serde(default)]
            net_span_c_to_s_via_trace_id: bool,
            #[serde(default)]
            sys_span_s_to_c_via_trace_id: bool,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            List(Vec<String>),
            Flags(Flags),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::List(v) => {
                for s in &v {
                    if s != "net_span_c_to_s_via_trace_id" && s != "sys_span_s_to_c_via_trace_id" {
                        return Err(serde::de::Error::custom(format!(
                            "unknown span set connection strategy {s:?}"
                        )));
                    }
                }
                SpanSetConnectionStrategies {
                    net_span_c_to_s_via_trace_id: v
                        .iter()
                        .any(|s| s == "net_span_c_to_s_via_trace_id"),
                    sys_span_s_to_c_via_trace_id: v
                        .iter()
                        .any(|s| s == "sys_span_s_to_c_via_trace_id"),
                }
            }
            Repr::Flags(f) => SpanSetConnectionStrategies {
                net_span_c_to_s_via_trace_id: f.net_span_c_to_s_via_trace_id,
                sys_span_s_to_c_via_trace_id: f.sys_span_s_to_c_via_trace_id,
            },
        })
    }
}

/// Algorithm parameters (§1.5), embeddable in the application's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TraceParams {
    /// Maximum search iterations; 0 is treated as 1.
    pub max_iteration: u32,
    /// Same-agent time tolerance (µs).
    pub network_delay_us: i64,
    /// Extra cross-agent tolerance and pruning tolerance (µs).
    pub host_clock_offset_us: i64,
    /// `LIMIT` of every search query (CFG-1: 1000).
    pub l7_tracing_limit: usize,
    /// Enabled search dimensions; empty means the default.
    pub tracing_source: Vec<TracingSource>,
    pub span_set_connection_strategies: SpanSetConnectionStrategies,
    pub allow_multiple_trace_ids_in_tracing_result: bool,
    /// Seconds added on each side of the window of trace-id queries.
    pub iteration_expand_time_range: u32,
    /// OTel-only mode (`signal_sources == ["otel"]`, §3.6).
    pub otel_only: bool,
    /// Infer what DeepFlow has no evidence for (`infer`): search on from what was found and
    /// place the spans it loses, only when exactly one parent fits. On for the Tempo API and
    /// search.
    pub inference: bool,
    /// Also infer on DeepFlow's own routes (off: they answer as DeepFlow does).
    pub inference_on_deepflow_api: bool,
}

impl Default for TraceParams {
    fn default() -> Self {
        TraceParams {
            max_iteration: 30,
            network_delay_us: 50_000,
            host_clock_offset_us: 10_000,
            l7_tracing_limit: 1000,
            tracing_source: DEFAULT_TRACING_SOURCES.to_vec(),
            span_set_connection_strategies: SpanSetConnectionStrategies::default(),
            allow_multiple_trace_ids_in_tracing_result: false,
            iteration_expand_time_range: 0,
            otel_only: false,
            inference: true,
            inference_on_deepflow_api: false,
        }
    }
}

impl TraceParams {
    /// The effective search dimensions (an empty list means the default).
    pub fn sources(&self) -> HashSet<TracingSource> {
        if self.tracing_source.is_empty() {
            DEFAULT_TRACING_SOURCES.into_iter().collect()
        } else {
            self.tracing_source.iter().copied().collect()
        }
    }

    pub fn has_source(&self, s: TracingSource) -> bool {
        if self.tracing_source.is_empty() {
            DEFAULT_TRACING_SOURCES.contains(&s)
        } else {
            self.tracing_source.contains(&s)
        }
    }

    /// A tolerance as the engine uses it: at least 1 µs and at most 10^13 µs (about 116 days,
    /// beyond any search window), so sums of tolerances and times never overflow whatever a
    /// caller passes.
    pub fn clamp_tolerance(us: i64) -> i64 {
        us.clamp(1, 10_000_000_000_000)
    }

    pub(crate) fn rel_ctx(&self) -> relate::RelCtx {
        relate::RelCtx {
            network_delay_us: Self::clamp_tolerance(self.network_delay_us),
            host_clock_offset_us: Self::clamp_tolerance(self.host_clock_offset_us),
            dns: self.has_source(TracingSource::Dns),
        }
    }
}

/// Insertion-ordered maps and sets of the engine, hashed with foldhash (their order never
/// depends on the hasher).
pub(crate) type IndexMap<K, V> = indexmap::IndexMap<K, V, foldhash::fast::RandomState>;
pub(crate) type IndexSet<T> = indexmap::IndexSet<T, foldhash::fast::RandomState>;

/// From this many flows on, the assembly spreads independent per-flow work over two threads.
pub(crate) const PARALLEL_FLOWS: usize = 2_000;

/// `f(offset, part)` over `items` whole, or over each half (the second on its own thread) when
/// `parallel`; the results are concatenated in order, so they do not depend on the split.
pub(crate) fn in_halves<T: Sync, R: Send>(
    items: &[T],
    parallel: bool,
    f: impl Fn(usize, &[T]) -> Vec<R> + Sync,
) -> Vec<R> {
    if !parallel {
        return f(0, items);
    }
    let mid = items.len() / 2;
    let (a, b) = items.split_at(mid);
    std::thread::scope(|scope| {
        let second = scope.spawn(|| f(mid, b));
        let mut out = f(0, a);
        out.extend(
            second
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        );
        out
    })
}

/// How much of §7's output `assemble` renders.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Detail {
    /// Everything, as DeepFlow's API returns it.
    #[default]
    Full,
    /// The tree and the spans' own fields, without the per-span display fields that only
    /// DeepFlow's API shows: `related_ids` and `deepflow_parent_span_id` stay empty,
    /// `service_uid` and `service_uname` unset. Everything else is as with `Full` (what
    /// encoders of span trees read; `parent_id` is set as with `Full`).
    Tree,
}

/// Assemble fetched records and external app spans into a trace: merge (§5), relate (§4),
/// sort (§6) and output (§7). `entry_id` is the pruning anchor (`None` keeps every tree).
/// Duplicate `_id`s are dropped (first occurrence wins). Pure and deterministic.
pub fn assemble(
    records: Vec<FlowRecord>,
    external: Vec<ExternalAppSpan>,
    entry_id: Option<u64>,
    params: &TraceParams,
) -> TraceResult {
    assemble_with(records, external, entry_id, params, Detail::Full)
}

/// `assemble` rendering `detail`.
pub fn assemble_with(
    records: Vec<FlowRecord>,
    external: Vec<ExternalAppSpan>,
    entry_id: Option<u64>,
    params: &TraceParams,
    detail: Detail,
) -> TraceResult {
    let mut seen: foldhash::HashSet<u64> =
        foldhash::HashSetExt::with_capacity(records.len() + external.len());
    let rows: Vec<Flow> = records
        .into_iter()
        .chain(external.iter().map(ExternalAppSpan::to_record))
        .filter(|r| seen.insert(r._id))
        .map(Flow::from_record)
        .collect();
    assemble_impl(rows, entry_id, params, false, detail)
}

/// `assemble` over already-built flows (rows, before merging).
pub fn assemble_flows(rows: Vec<Flow>, entry_id: Option<u64>, params: &TraceParams) -> TraceResult {
    assemble_impl(rows, entry_id, params, false, Detail::Full)
}

/// `assemble` with the spec's linear scans instead of the candidate indexes of the sort phase;
/// must give identical results (used by differential tests).
#[doc(hidden)]
pub fn assemble_exhaustive(
    records: Vec<FlowRecord>,
    entry_id: Option<u64>,
    params: &TraceParams,
) -> TraceResult {
    let rows = records.into_iter().map(Flow::from_record).collect();
    assemble_impl(rows, entry_id, params, true, Detail::Full)
}

fn assemble_impl(
    rows: Vec<Flow>,
    entry_id: Option<u64>,
    params: &TraceParams,
    exhaustive: bool,
    detail: Detail,
) -> TraceResult {
    if rows.is_empty() {
        return TraceResult {
            entry_id,
            ..TraceResult::default()
        };
    }
    let ctx = params.rel_ctx();
    let flows = merge::merge_rows(rows);
    let opts = sort::SortOpts {
        net_c_to_s_via_trace_id: params
            .span_set_connection_strategies
            .net_span_c_to_s_via_trace_id,
        sys_s_to_c_via_trace_id: params
            .span_set_connection_strategies
            .sys_span_s_to_c_via_trace_id,
        exhaustive,
    };
    let (rel, tree) = if flows.len() >= PARALLEL_FLOWS {
        // The sort's ProcessSpanSet stages do not read the relation map: compute it meanwhile.
        std::thread::scope(|scope| {
            let rel = scope.spawn(|| relate::relation_map_with(&flows, &ctx, false));
            let sorting = sort::begin(&flows, &ctx, opts);
            let rel = rel.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            let tree = sorting.finish(&rel);
            (rel, tree)
        })
    } else {
        let rel = relate::relation_map(&flows, &ctx);
        let tree = sort::build_tree(&flows, &rel, &ctx, opts);
        (rel, tree)
    };
    output::build_output(
        flows,
        &rel,
        tree,
        entry_id,
        ctx.host_clock_offset_us,
        detail,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_defaults_and_keys() {
        let p: TraceParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, TraceParams::default());
        assert_eq!(p.l7_tracing_limit, 1000);
        let p: TraceParams = serde_json::from_str(
            r#"{"tracing_source":["trace_id","dns"],"span_set_connection_strategies":["net_span_c_to_s_via_trace_id"],"max_iteration":3}"#,
        )
        .unwrap();
        assert!(p.has_source(TracingSource::Dns));
        assert!(!p.has_source(TracingSource::TcpSeq));
        assert!(
            p.span_set_connection_strategies
                .net_span_c_to_s_via_trace_id
        );
        let p: TraceParams = serde_json::from_str(
            r#"{"tracing_source":[],"span_set_connection_strategies":{"sys_span_s_to_c_via_trace_id":true}}"#,
        )
        .unwrap();
        assert!(p.has_source(TracingSource::TcpSeq));
        assert!(
            p.span_set_connection_strategies
                .sys_span_s_to_c_via_trace_id
        );
    }

    #[test]
    fn extreme_tolerances_never_overflow() {
        let rec = |id: u64, tap: &str, start: i64| FlowRecord {
            _id: id,
            observation_point: tap.into(),
            signal_source: if tap == "c-p" { 3 } else { 0 },
            protocol: 6,
            r#type: 2,
            req_tcp_seq: 1,
            resp_tcp_seq: 2,
            start_time_us: start,
            end_time_us: i64::MAX / 2,
            ..FlowRecord::default()
        };
        for us in [i64::MAX, i64::MIN, 0, -5] {
            let p = TraceParams {
                network_delay_us: us,
                host_clock_offset_us: us,
                ..TraceParams::default()
            };
            let r = assemble(
                vec![rec(1, "c-p", 0), rec(2, "c", 5), rec(3, "s", i64::MAX / 4)],
                vec![],
                Some(1),
                &p,
            );
            assert!(!r.spans.is_empty());
        }
    }
}
