//! Profiling aid: run the search phase of trace-by-ID over one generated 10,000-flow trace 20
//! times, answering its queries from memory (a linear scan standing in for the store), and
//! print the mean time the search itself spent between answers (what the e2e bench reports as
//! "search"). `cargo build --release --example profile_search`, then run it, or run it under
//! `perf record -g` or `valgrind --tool=callgrind`. An argument sets the number of runs.
use deepflow_tempo::autotrace::{Search, SearchQuery, TimeWindow, TraceParams};
use deepflow_tempo::store::model::{FlowMeta, L7FlowLogRow};
use deepflow_tempo::synth;
use std::time::Instant;

fn meta(r: &L7FlowLogRow) -> FlowMeta {
    FlowMeta {
        _id: r._id,
        r#type: r.r#type,
        signal_source: r.signal_source,
        req_tcp_seq: r.req_tcp_seq,
        resp_tcp_seq: r.resp_tcp_seq,
        start_time_us: r.start_time,
        end_time_us: r.end_time,
        agent_id: r.agent_id,
        protocol: r.protocol,
        syscall_trace_id_request: r.syscall_trace_id_request,
        syscall_trace_id_response: r.syscall_trace_id_response,
        span_id: r.span_id.clone(),
        parent_span_id: r.parent_span_id.clone(),
        request_id: r.request_id,
        l7_protocol: r.l7_protocol,
        trace_id: r.trace_id.clone(),
        _trace_id_2: r._trace_id_2.clone(),
        x_request_id_0: r.x_request_id_0.clone(),
        x_request_id_1: r.x_request_id_1.clone(),
        observation_point: r.observation_point.clone(),
        time: r.time,
    }
}

/// The rows a FLOWMETA query returns (store order: by `_id`).
fn answer(rows: &[FlowMeta], times: &[u32], q: &SearchQuery) -> Vec<FlowMeta> {
    let inside = |w: &TimeWindow, t: u32| w.contains(t as i64);
    let pick = |keep: &dyn Fn(&FlowMeta) -> bool, w: Option<&TimeWindow>, limit: usize| {
        rows.iter()
            .zip(times)
            .filter(|(r, &t)| w.is_none_or(|w| inside(w, t)) && keep(r))
            .map(|(r, _)| r.clone())
            .take(limit)
            .collect()
    };
    match q {
        SearchQuery::EntryById { id, limit, .. } => pick(&|r| r._id == *id, None, *limit),
        SearchQuery::EntryByIds { ids, limit, .. } => pick(&|r| ids.contains(&r._id), None, *limit),
        SearchQuery::EntryByTraceIds {
            trace_ids,
            window,
            limit,
            ..
        } => pick(
            &|r| trace_ids.contains(&r.trace_id) || trace_ids.contains(&r._trace_id_2),
            Some(window),
            *limit,
        ),
        SearchQuery::EntryByTraceId {
            trace_id,
            window,
            limit,
            ..
        } => pick(
            &|r| &r.trace_id == trace_id || &r._trace_id_2 == trace_id,
            Some(window),
            *limit,
        ),
        SearchQuery::ByTraceIds {
            trace_ids,
            window,
            limit,
            ..
        } => pick(
            &|r| trace_ids.contains(&r.trace_id) || trace_ids.contains(&r._trace_id_2),
            Some(window),
            *limit,
        ),
        SearchQuery::Associate {
            req_tcp_seqs,
            resp_tcp_seqs,
            syscall_ids,
            x_request_ids,
            dns_request_ids,
            window,
            limit,
        } => {
            let req: std::collections::HashSet<u32> = req_tcp_seqs.iter().copied().collect();
            let resp: std::collections::HashSet<u32> = resp_tcp_seqs.iter().copied().collect();
            let sys: std::collections::HashSet<u64> = syscall_ids.iter().copied().collect();
            pick(
                &|r| {
                    req.contains(&r.req_tcp_seq)
                        || resp.contains(&r.resp_tcp_seq)
                        || sys.contains(&r.syscall_trace_id_request)
                        || sys.contains(&r.syscall_trace_id_response)
                        || x_request_ids.contains(&r.x_request_id_0)
                        || x_request_ids.contains(&r.x_request_id_1)
                        || (r.l7_protocol == 120
                            && r.request_id.is_some_and(|v| dns_request_ids.contains(&v)))
                },
                Some(window),
                *limit,
            )
        }
        SearchQuery::Fetch { .. } => unreachable!("answered with records"),
    }
}

fn main() {
    let runs: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let trace = synth::zero_code_trace(
        7,
        1_700_000_000_000_000,
        synth::Shape {
            calls: 2500,
            fanout: 4,
            services: 40,
        },
        &mut synth::Keys::new(0),
    );
    let rows: Vec<FlowMeta> = trace.rows.iter().map(meta).collect();
    let times: Vec<u32> = trace.rows.iter().map(|r| r.time).collect();
    let params = TraceParams {
        l7_tracing_limit: 20_000,
        ..TraceParams::default()
    };
    let t0 = (trace.entry_id >> 32) as i64;
    let mut spent = 0u128;
    let mut queries = 0;
    let mut ids = 0;
    for _ in 0..runs {
        let mut search = Search::by_id(
            trace.entry_id,
            TimeWindow::new(t0 - 3600, t0 + 3600),
            &params,
        );
        let mut t = Instant::now();
        queries = 0;
        while let Some(q) = search.next().unwrap() {
            spent += t.elapsed().as_micros();
            queries += 1;
            if let SearchQuery::Fetch { ids: fetch, .. } = &q {
                ids = fetch.len();
                t = Instant::now();
                search.feed_records(vec![]).unwrap();
            } else {
                let rows = answer(&rows, &times, &q);
                t = Instant::now();
                search.feed_meta(rows).unwrap();
            }
        }
        spent += t.elapsed().as_micros();
        let _ = search.finish();
    }
    eprintln!(
        "search {:.2} ms (mean of {runs}), {queries} queries, {ids} ids fetched",
        spent as f64 / runs as f64 / 1000.0
    );
}
