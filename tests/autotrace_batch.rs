//! `BatchSearch` against one `Search` per seed: over generated zero-code traces (some sharing
//! their keys an hour apart, some overlapping in time, some carrying app trace ids) and over
//! rows with colliding keys of every kind, each seed sees exactly the rows its own queries
//! would have read; the traces are the connected components of the seeds' id sets; covered
//! seeds collapse into their trace and the number of reads does not grow with the seeds;
//! limits, empty batches, missing seeds, and a run on the embedded store.

mod autotrace_common;

use autotrace_common::*;
use deepflow_tempo::autotrace::{
    BatchOutcome, BatchSearch, Search, SearchError, SearchOutcome, SearchQuery, TimeWindow,
    TraceParams, TracingSource,
};
use deepflow_tempo::query::trace::TraceService;
use deepflow_tempo::store::model::{make_id, FlowRecord, L7FlowLogRow, OrgId};
use deepflow_tempo::store::sqlite::SqliteStore;
use deepflow_tempo::store::FlowStore;
use deepflow_tempo::synth;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

const T0_S: i64 = 1_700_000_000;

fn record_of(r: &L7FlowLogRow) -> FlowRecord {
    FlowRecord {
        _id: r._id,
        time: r.time,
        signal_source: r.signal_source,
        observation_point: r.observation_point.clone(),
        agent_id: r.agent_id,
        protocol: r.protocol,
        l7_protocol: r.l7_protocol,
        biz_protocol: r.biz_protocol.clone(),
        r#type: r.r#type,
        req_tcp_seq: r.req_tcp_seq,
        resp_tcp_seq: r.resp_tcp_seq,
        start_time_us: r.start_time,
        end_time_us: r.end_time,
        response_duration: r.response_duration,
        syscall_trace_id_request: r.syscall_trace_id_request,
        syscall_trace_id_response: r.syscall_trace_id_response,
        process_id_0: r.process_id_0,
        process_id_1: r.process_id_1,
        auto_instance_type_0: r.auto_instance_type_0,
        auto_instance_type_1: r.auto_instance_type_1,
        auto_instance_id_0: r.auto_instance_id_0,
        auto_instance_id_1: r.auto_instance_id_1,
        auto_service_type_0: r.auto_service_type_0,
        auto_service_type_1: r.auto_service_type_1,
        auto_service_id_0: r.auto_service_id_0,
        auto_service_id_1: r.auto_service_id_1,
        trace_id: r.trace_id.clone(),
        _trace_id_2: r._trace_id_2.clone(),
        span_id: r.span_id.clone(),
        parent_span_id: r.parent_span_id.clone(),
        endpoint: r.endpoint.clone(),
        request_type: r.request_type.clone(),
        request_resource: r.request_resource.clone(),
        response_code: r.response_code,
        server_port: r.server_port,
        ..FlowRecord::default()
    }
}

/// Generated traces: `groups` hours apart; in each hour one trace whose keys repeat every hour
/// (only the windows tell them apart) and one, overlapping it in time, with keys of its own.
/// With `app_ids`, some rows of each trace carry an app trace id (`app-<n>`), and one row of
/// every trace carries the trace id `shared`. Returns the rows and each trace's row ids.
fn generated(groups: usize, calls: usize, app_ids: bool) -> (Vec<L7FlowLogRow>, Vec<Vec<u64>>) {
    let shape = synth::Shape {
        calls,
        fanout: 3,
        services: 5,
    };
    let mut own = synth::Keys::new(100_000);
    let mut rows = Vec::new();
    let mut traces = Vec::new();
    for g in 0..groups {
        let start = (T0_S + g as i64 * 3600) * 1_000_000;
        let mut repeating = synth::Keys::new(0);
        let a = synth::zero_code_trace(g as u64 + 1, start, shape, &mut repeating);
        let b = synth::zero_code_trace(g as u64 + 50, start + 20_000, shape, &mut own);
        for (k, mut t) in [a, b].into_iter().enumerate() {
            let n = traces.len();
            if app_ids {
                for (i, r) in t.rows.iter_mut().enumerate() {
                    if i % 9 == 3 {
                        r.trace_id = format!("app-{n}");
                    }
                    if i == 5 {
                        r.trace_id = "shared".into();
                        if k == 1 {
                            r._trace_id_2 = format!("app-{n}");
                        }
                    }
                }
            }
            traces.push(t.rows.iter().map(|r| r._id).collect());
            rows.extend(t.rows);
        }
    }
    (rows, traces)
}

/// Rows with colliding keys of every kind over a few seconds (ids carry their `time`).
fn colliding(seed: u64, n: usize) -> Vec<FlowRecord> {
    let mut rng = synth::Rng::new(seed);
    let taps = [("c-p", 3u16), ("c", 0), ("s", 0), ("s-p", 3), ("s-app", 4)];
    let traces = ["", "", "", "A", "B", "A,B", "C"];
    let xs = ["", "", "", "x1", "x2"];
    (0..n)
        .map(|i| {
            let t = T0_S + rng.below(6) as i64;
            let start = t * 1_000_000 + rng.below(900_000) as i64;
            let end = start + 1_000 + rng.below(50_000) as i64;
            let (tap, sig) = taps[rng.below(taps.len() as u64) as usize];
            let id = make_id((end / 1_000_000) as u32, 1, i as u32 + 1);
            let req = rng.below(8) as u32 * 10;
            let sys = rng.below(6) * 7;
            let mut r = row(id, sig, tap, 1 + rng.below(3) as u16, start, end)
                .seq(req, if req == 0 { 0 } else { req + 1 })
                .sys(sys, if sys == 0 { 0 } else { sys + 1 })
                .tr(traces[rng.below(traces.len() as u64) as usize])
                .x0(xs[rng.below(xs.len() as u64) as usize])
                .x1(xs[rng.below(xs.len() as u64) as usize])
                .pid(1 + rng.below(3) as i32);
            if rng.below(6) == 0 {
                r = r.l7(120, "DNS").req_id(Some(rng.below(3)));
            }
            r.b()
        })
        .collect()
}

fn drive(mut s: Search, ev: &Evaluator) -> (usize, SearchOutcome) {
    let mut reads = 0;
    while let Some(q) = s.next().unwrap() {
        reads += 1;
        match &q {
            SearchQuery::Fetch { .. } => s.feed_records(ev.fetch(&q)).unwrap(),
            _ => s.feed_meta(ev.meta(&q)).unwrap(),
        }
    }
    (reads, s.finish())
}

fn drive_batch(mut b: BatchSearch, ev: &Evaluator) -> BatchOutcome {
    let mut reads = 0;
    while let Some(q) = b.next().unwrap() {
        reads += 1;
        assert_eq!(b.next(), Err(SearchError::AwaitingRows));
        match &q {
            SearchQuery::Fetch { .. } => b.feed_records(ev.fetch(&q)).unwrap(),
            _ => b.feed_meta(ev.meta(&q)).unwrap(),
        }
    }
    let out = b.finish();
    assert_eq!(out.reads, reads);
    out
}

/// A seed: an entry `_id` or an app trace id, with its window.
#[derive(Clone, Debug)]
enum Seed {
    Id(u64, TimeWindow),
    Trace(String, TimeWindow),
}

impl Seed {
    fn by_id(id: u64) -> Seed {
        let t = (id >> 32) as i64;
        Seed::Id(id, TimeWindow::new(t - 30, t + 30))
    }
    fn search(&self, p: &TraceParams) -> Search {
        match self {
            Seed::Id(id, w) => Search::by_id(*id, *w, p),
            Seed::Trace(t, w) => Search::by_trace_id(t, *w, p),
        }
    }
}

/// Connected components of the non-empty id sets: (seeds, union of ids), by first seed.
fn components(sets: &[Vec<u64>]) -> Vec<(Vec<usize>, Vec<u64>)> {
    let mut comps: Vec<(Vec<usize>, BTreeSet<u64>)> = Vec::new();
    for (i, s) in sets.iter().enumerate() {
        if s.is_empty() {
            continue;
        }
        let mut merged = (vec![i], s.iter().copied().collect::<BTreeSet<u64>>());
        let mut keep = Vec::new();
        for c in comps.drain(..) {
            if c.1.iter().any(|id| merged.1.contains(id)) {
                merged.0.extend(c.0);
                merged.1.extend(c.1);
            } else {
                keep.push(c);
            }
        }
        keep.push(merged);
        comps = keep;
    }
    let mut out: Vec<(Vec<usize>, Vec<u64>)> = comps
        .into_iter()
        .map(|(mut s, ids)| {
            s.sort();
            (s, ids.into_iter().collect())
        })
        .collect();
    out.sort();
    out
}

fn param_variants() -> Vec<TraceParams> {
    let d = TraceParams::default;
    vec![
        d(),
        TraceParams {
            max_iteration: 2,
            ..d()
        },
        TraceParams {
            network_delay_us: 1,
            host_clock_offset_us: 1,
            iteration_expand_time_range: 3,
            ..d()
        },
        TraceParams {
            tracing_source: vec![TracingSource::TcpSeq, TracingSource::TraceId],
            allow_multiple_trace_ids_in_tracing_result: true,
            ..d()
        },
        TraceParams {
            tracing_source: vec![
                TracingSource::Syscall,
                TracingSource::XRequestId,
                TracingSource::Dns,
                TracingSource::TraceId,
            ],
            network_delay_us: 500_000,
            ..d()
        },
    ]
}

/// Without skipping, the batch must reproduce every seed's own search (unless a merged read
/// carrying its query was cut at the merged limit, which flags it partial) and group the seeds
/// into the connected components of their id sets. Returns (reads, seeds cut, seeds at their
/// own limit and not cut).
fn check_equivalence(
    ev: &Evaluator,
    seeds: &[Seed],
    p: &TraceParams,
    what: &str,
) -> (usize, usize, usize) {
    let single: Vec<(usize, SearchOutcome)> =
        seeds.iter().map(|s| drive(s.search(p), ev)).collect();
    let batch =
        BatchSearch::new(seeds.iter().map(|s| s.search(p)).collect(), p).skip_covered(false);
    let out = drive_batch(batch, ev);
    assert_eq!(out.dropped, 0);
    let (mut cut, mut own_limit) = (0, 0);
    for (i, (_, o)) in single.iter().enumerate() {
        if out.seed_cut[i] {
            cut += 1;
            let t = out.seed_trace[i].expect("a cut seed read rows");
            assert!(out.traces[t].outcome.hit_limit, "{what}: cut seed {i}");
            continue;
        }
        own_limit += o.hit_limit as usize;
        assert_eq!(out.seed_ids[i], o.ids, "{what}: seed {i} {:?}", seeds[i]);
    }
    let want = components(&out.seed_ids);
    let mut got: Vec<(Vec<usize>, Vec<u64>)> = out
        .traces
        .iter()
        .map(|t| (t.seeds.clone(), t.outcome.ids.clone()))
        .collect();
    got.sort();
    assert_eq!(got, want, "{what}: components");
    for (i, (_, o)) in single.iter().enumerate() {
        if out.seed_cut[i] {
            continue;
        }
        let Some(t) = out.seed_trace[i] else {
            assert!(
                o.ids.is_empty(),
                "{what}: seed {i} found rows but has no trace"
            );
            continue;
        };
        let trace = &out.traces[t];
        assert!(trace.seeds.contains(&i));
        // every fetched record is in the trace, once, in start-time order
        let rec: Vec<u64> = trace.outcome.records.iter().map(|r| r._id).collect();
        assert_eq!(rec.len(), trace.outcome.fetched);
        let mut sorted = rec.clone();
        sorted.sort();
        assert_eq!(sorted, trace.outcome.ids, "{what}: records of trace {t}");
        if trace.seeds == [i] && !trace.seeds.iter().any(|&s| out.seed_cut[s]) {
            // a trace of one search is that search's outcome, and assembles the same
            assert_eq!(trace.outcome.hit_limit, o.hit_limit, "{what}: seed {i}");
            assert_eq!(trace.outcome.entry_id, o.entry_id);
            assert_eq!(trace.outcome.stop_reason, o.stop_reason);
            assert_eq!(trace.outcome.iterations, o.iterations);
            assert_eq!(
                trace.outcome.clone().assemble(p),
                o.clone().assemble(p),
                "{what}: assembled trace of seed {i}"
            );
        } else {
            assert_eq!(trace.outcome.entry_id, single[trace.seeds[0]].1.entry_id);
            assert!(!trace.outcome.clone().assemble(p).spans.is_empty());
        }
    }
    (out.reads, cut, own_limit)
}

#[test]
fn batched_equals_one_by_one_over_generated_traces() {
    let (rows, traces) = generated(3, 12, true);
    let ev = Evaluator {
        rows: rows.iter().map(record_of).collect(),
    };
    let mut seeds: Vec<Seed> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 == 0)
        .map(|(_, r)| Seed::by_id(r._id))
        .collect();
    let hour = |g: i64| TimeWindow::new(T0_S + g * 3600 - 5, T0_S + g * 3600 + 5);
    seeds.push(Seed::Trace("app-0".into(), hour(0)));
    seeds.insert(3, Seed::Trace("shared".into(), hour(1)));
    seeds.push(Seed::Trace("app-3".into(), hour(1)));
    seeds.push(Seed::Trace("nowhere".into(), hour(2)));
    seeds.push(Seed::by_id(make_id(T0_S as u32, 1, 999_999)));
    assert!(seeds.len() > 40 && traces.len() == 6);
    for (k, p) in param_variants().iter().enumerate() {
        check_equivalence(&ev, &seeds, p, &format!("params {k}"));
    }
}

/// A search given its entry row (a search candidate) skips the entry read and otherwise reads,
/// finds and assembles what the search by `_id` does: alone, and in a batch.
#[test]
fn a_search_given_its_entry_row_equals_the_search_by_id() {
    let (rows, _) = generated(3, 12, true);
    let ev = Evaluator {
        rows: rows.iter().map(record_of).collect(),
    };
    let ids: Vec<u64> = rows.iter().step_by(4).map(|r| r._id).collect();
    let entry = |id: u64| {
        let q = SearchQuery::EntryById {
            id,
            otel_only: false,
            limit: 1,
        };
        ev.meta(&q).pop().expect("the row exists")
    };
    let window = |id: u64| {
        let t = (id >> 32) as i64;
        TimeWindow::new(t - 30, t + 30)
    };
    let mut variants = param_variants();
    variants.push(TraceParams {
        otel_only: true,
        ..TraceParams::default()
    });
    for (k, p) in variants.iter().enumerate() {
        for &id in &ids {
            let (reads_by_id, by_id) = drive(Search::by_id(id, window(id), p), &ev);
            let (reads_by_row, by_row) = drive(Search::by_entry_row(entry(id), window(id), p), &ev);
            assert_eq!(reads_by_row + 1, reads_by_id, "params {k}, seed {id}");
            assert_eq!(by_row.ids, by_id.ids, "params {k}, seed {id}");
            assert_eq!(by_row.entry_id, by_id.entry_id);
            assert_eq!(by_row.stop_reason, by_id.stop_reason);
            assert_eq!(by_row.hit_limit, by_id.hit_limit);
            assert_eq!(by_row.iterations, by_id.iterations);
            assert_eq!(
                by_row.assemble(p),
                by_id.assemble(p),
                "params {k}, seed {id}"
            );
        }
        let batch = |given: bool| {
            let searches = ids
                .iter()
                .map(|&id| {
                    if given {
                        Search::by_entry_row(entry(id), window(id), p)
                    } else {
                        Search::by_id(id, window(id), p)
                    }
                })
                .collect();
            drive_batch(BatchSearch::new(searches, p), &ev)
        };
        let (by_row, by_id) = (batch(true), batch(false));
        assert_eq!(by_row.reads + 1, by_id.reads, "params {k}");
        assert_eq!(by_row.seed_trace, by_id.seed_trace, "params {k}");
        assert_eq!(by_row.seed_ids, by_id.seed_ids, "params {k}");
        assert_eq!(by_row.dropped, by_id.dropped, "params {k}");
        let traces = |o: &BatchOutcome| {
            o.traces
                .iter()
                .map(|t| (t.seeds.clone(), t.outcome.ids.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(traces(&by_row), traces(&by_id), "params {k}");
    }
}

/// While the fetch is in flight, `fetch_groups` names the traces the batch will make; a
/// caller that reads the records of only some of them gets exactly those traces assembled.
#[test]
fn fetch_groups_are_the_traces_and_a_partial_fetch_keeps_only_them() {
    let (rows, _) = generated(3, 12, true);
    let ev = Evaluator {
        rows: rows.iter().map(record_of).collect(),
    };
    let p = TraceParams::default();
    let seeds: Vec<Seed> = rows.iter().step_by(7).map(|r| Seed::by_id(r._id)).collect();
    for keep_every in [1usize, 2, 3] {
        let mut b = BatchSearch::new(seeds.iter().map(|s| s.search(&p)).collect(), &p);
        let mut groups = Vec::new();
        while let Some(q) = b.next().unwrap() {
            match &q {
                SearchQuery::Fetch { ids, window } => {
                    groups = b.fetch_groups();
                    let mut all: Vec<u64> = groups.iter().flatten().copied().collect();
                    all.sort_unstable();
                    assert_eq!(&all, ids, "the groups hold the fetch's ids");
                    let kept: Vec<u64> = groups
                        .iter()
                        .step_by(keep_every)
                        .flatten()
                        .copied()
                        .collect();
                    let part = SearchQuery::Fetch {
                        ids: kept,
                        window: *window,
                    };
                    b.feed_records(ev.fetch(&part)).unwrap();
                }
                _ => b.feed_meta(ev.meta(&q)).unwrap(),
            }
        }
        assert!(groups.len() > 1, "{} groups", groups.len());
        let out = b.finish();
        let mut traces: Vec<Vec<u64>> = out.traces.iter().map(|t| t.outcome.ids.clone()).collect();
        traces.sort();
        let mut want = groups.clone();
        want.sort();
        assert_eq!(traces, want, "fetch groups are the traces");
        for t in &out.traces {
            let wanted = groups
                .iter()
                .step_by(keep_every)
                .any(|g| *g == t.outcome.ids);
            let fetched: Vec<u64> = t.outcome.records.iter().map(|r| r._id).collect();
            assert_eq!(!fetched.is_empty(), wanted, "keep every {keep_every}");
        }
    }
}

#[test]
fn batched_equals_one_by_one_over_colliding_keys() {
    let (mut cut, mut own_limit) = (0, 0);
    for seed in 0..6u64 {
        let rows = colliding(seed + 1, 60 + seed as usize * 12);
        let ev = Evaluator { rows: rows.clone() };
        let mut seeds: Vec<Seed> = rows.iter().step_by(4).map(|r| Seed::by_id(r._id)).collect();
        for t in ["A", "B", "C"] {
            seeds.push(Seed::Trace(
                t.into(),
                TimeWindow::new(T0_S + seed as i64 % 3, T0_S + 4),
            ));
        }
        let mut params = param_variants();
        params[0].l7_tracing_limit = 7 + seed as usize; // some queries reach their limit
        for (k, p) in params.iter().enumerate() {
            let (_, c, o) = check_equivalence(&ev, &seeds, p, &format!("rows {seed} params {k}"));
            cut += c;
            own_limit += o;
        }
    }
    // both kinds of limit happened: seeds at their own limit, and merged reads cut
    assert!(
        cut > 0 && own_limit > 0,
        "{cut} cut, {own_limit} at their own limit"
    );
}

#[test]
fn covered_seeds_collapse_into_their_trace_and_reads_do_not_grow() {
    let (rows, traces) = generated(2, 15, false);
    let ev = Evaluator {
        rows: rows.iter().map(record_of).collect(),
    };
    let p = TraceParams::default();
    let trace_of: HashMap<u64, usize> = traces
        .iter()
        .enumerate()
        .flat_map(|(t, ids)| ids.iter().map(move |&id| (id, t)))
        .collect();
    // one seed per trace, then every row as a seed (the roots first, then the rest)
    let few: Vec<Seed> = traces.iter().map(|t| Seed::by_id(t[0])).collect();
    let mut all = few.clone();
    all.extend(
        rows.iter()
            .filter(|r| traces.iter().all(|t| t[0] != r._id))
            .map(|r| Seed::by_id(r._id)),
    );
    let singles: Vec<(usize, SearchOutcome)> =
        all.iter().map(|s| drive(s.search(&p), &ev)).collect();
    let most = singles.iter().map(|s| s.0).max().unwrap();
    let run = |seeds: &[Seed]| {
        drive_batch(
            BatchSearch::new(seeds.iter().map(|s| s.search(&p)).collect(), &p),
            &ev,
        )
    };
    let small = run(&few);
    let big = run(&all);
    assert!(
        big.reads <= most + 1,
        "{} reads, single most {most}",
        big.reads
    );
    assert!(
        big.reads <= small.reads + 1,
        "{} vs {}",
        big.reads,
        small.reads
    );
    assert!(big.dropped > all.len() / 2, "{} dropped", big.dropped);
    assert_eq!(big.traces.len(), traces.len());
    for (i, seed) in all.iter().enumerate() {
        let Seed::Id(id, _) = seed else {
            unreachable!()
        };
        let t = big.seed_trace[i].expect("every seed row exists");
        let trace = &big.traces[t].outcome;
        assert!(
            trace.ids.binary_search(id).is_ok(),
            "seed {i} not in its trace"
        );
        // seeds of one generated request share one trace: that of the request's root
        assert_eq!(Some(t), big.seed_trace[trace_of[id]], "seed {i}");
        assert!(big.traces[t].seeds.contains(&i));
    }
    for (k, want) in traces.iter().enumerate() {
        let trace = &big.traces[big.seed_trace[k].unwrap()].outcome;
        assert_eq!(trace.ids, singles[k].1.ids, "trace {k}: one-by-one result");
        let mut want = want.clone();
        want.sort();
        assert_eq!(trace.ids, want, "trace {k}: every generated row");
        assert_eq!(trace.entry_id, Some(traces[k][0]));
        assert_eq!(trace.fetched, want.len());
        assert_eq!(trace.clone().assemble(&p).spans.len(), want.len());
    }
    // a search is never dropped because of a later one: a root seeded last survives
    let mut late = all.clone();
    late.rotate_left(1);
    let out = run(&late);
    assert!(
        !out.seed_ids[0].is_empty(),
        "the first seed always runs to its end"
    );
    for (i, ids) in out.seed_ids.iter().enumerate() {
        let t = &out.traces[out.seed_trace[i].unwrap()];
        if ids.is_empty() {
            // dropped: its trace has an earlier seed that ran
            assert!(t.seeds[0] < i && !out.seed_ids[t.seeds[0]].is_empty());
        }
    }
    assert_eq!(out.traces.len(), traces.len());
}

/// Rows for the limit tests: search A's entry shares its TCP sequences with 4 rows, B's with 1.
fn limit_rows() -> Vec<FlowRecord> {
    let id = |t: i64, n: u32| make_id(t as u32, 1, n);
    let us = T0_S * 1_000_000;
    let taps = ["c", "c-nd", "s-nd", "s", "c-hv"];
    let mut rows: Vec<FlowRecord> = taps
        .iter()
        .enumerate()
        .map(|(k, tap)| {
            row(
                id(T0_S, k as u32 + 1),
                0,
                tap,
                1,
                us + k as i64 * 10,
                us + 9_000 - k as i64 * 10,
            )
            .seq(100, 101)
            .with(|r| r.time = T0_S as u32)
            .b()
        })
        .collect();
    for (k, tap) in ["c", "s"].iter().enumerate() {
        rows.push(
            row(
                id(T0_S, 20 + k as u32),
                0,
                tap,
                1,
                us + k as i64 * 10,
                us + 9_000,
            )
            .seq(200, 201)
            .with(|r| r.time = T0_S as u32)
            .b(),
        );
    }
    rows
}

#[test]
fn a_participant_at_its_own_limit_and_a_merged_read_at_the_merged_limit() {
    let rows = limit_rows();
    let ev = Evaluator { rows: rows.clone() };
    let (a, b) = (Seed::by_id(rows[0]._id), Seed::by_id(rows[5]._id));
    // limit 4: A's association reads 5 rows (its own query is cut at 4), B's 2; the merged
    // association (limit 8) reads 7: only A is partial, exactly as alone.
    let p = TraceParams {
        l7_tracing_limit: 4,
        ..TraceParams::default()
    };
    let (_, cut, own_limit) = check_equivalence(&ev, &[a.clone(), b.clone()], &p, "own limit");
    assert_eq!((cut, own_limit), (0, 1));
    let single_b = drive(b.search(&p), &ev).1;
    assert!(!single_b.hit_limit && drive(a.search(&p), &ev).1.hit_limit);
    // limit 3: the merged association (limit 6) reads 6 rows, so B may be missing rows: every
    // participant is flagged, though B alone would not be.
    let p = TraceParams {
        l7_tracing_limit: 3,
        ..TraceParams::default()
    };
    let single_b = drive(b.search(&p), &ev).1;
    assert!(!single_b.hit_limit);
    let out = drive_batch(
        BatchSearch::new(vec![a.search(&p), b.search(&p)], &p).skip_covered(false),
        &ev,
    );
    assert_eq!(out.seed_cut, vec![true, true]);
    assert!(out.traces[out.seed_trace[1].unwrap()].outcome.hit_limit);
    assert!(out.traces[out.seed_trace[0].unwrap()].outcome.hit_limit);
    // a store cap below the merged limit flags the participants too
    let p = TraceParams::default();
    let out = drive_batch(
        BatchSearch::new(vec![a.search(&p), b.search(&p)], &p).max_rows(2),
        &ev,
    );
    assert!(out.traces.iter().all(|t| t.outcome.hit_limit));
    // a cap above every read changes nothing
    let out = drive_batch(
        BatchSearch::new(vec![a.search(&p), b.search(&p)], &p).max_rows(8),
        &ev,
    );
    assert_eq!(out.seed_cut, vec![false, false]);
    let alone = drive_batch(BatchSearch::new(vec![b.search(&p)], &p), &ev);
    assert!(!alone.traces[0].outcome.hit_limit);
}

#[test]
fn no_seeds_and_missing_seeds() {
    let ev = Evaluator { rows: limit_rows() };
    let p = TraceParams::default();
    let mut empty = BatchSearch::new(vec![], &p);
    assert_eq!(empty.next(), Ok(None));
    assert_eq!(empty.feed_meta(vec![]), Err(SearchError::NotAwaiting));
    let out = empty.finish();
    assert!(out.traces.is_empty() && out.seed_trace.is_empty() && out.reads == 0);

    let missing = Seed::by_id(make_id(T0_S as u32, 1, 77));
    let out = drive_batch(BatchSearch::new(vec![missing.search(&p)], &p), &ev);
    assert_eq!((out.traces.len(), out.seed_trace.clone()), (0, vec![None]));
    assert_eq!(out.reads, 1, "the entry read only: nothing to fetch");

    let found = Seed::by_id(ev.rows[0]._id);
    let seeds = [missing.clone(), found, missing];
    let out = drive_batch(
        BatchSearch::new(seeds.iter().map(|s| s.search(&p)).collect(), &p),
        &ev,
    );
    assert_eq!(out.seed_trace, vec![None, Some(0), None]);
    assert!(out.seed_ids[0].is_empty() && out.seed_ids[2].is_empty());
    assert_eq!(out.traces[0].seeds, vec![1]);
}

#[test]
fn a_trace_id_seed_covers_the_id_seeds_after_it() {
    let (rows, traces) = generated(1, 10, true);
    let ev = Evaluator {
        rows: rows.iter().map(record_of).collect(),
    };
    let p = TraceParams::default();
    let w = TimeWindow::new(T0_S - 5, T0_S + 5);
    let mut seeds = vec![Seed::Trace("app-0".into(), w)];
    seeds.extend(traces[0].iter().map(|&id| Seed::by_id(id)));
    seeds.push(Seed::Trace("app-1".into(), w));
    let alone = drive(seeds[0].search(&p), &ev).1;
    let out = drive_batch(
        BatchSearch::new(seeds.iter().map(|s| s.search(&p)).collect(), &p),
        &ev,
    );
    // the trace-id search accepts rows of trace 0 in its first read: those seeds never run
    assert!(out.dropped > 0);
    let t0 = out.seed_trace[0].unwrap();
    assert_eq!(out.traces[t0].outcome.entry_id, alone.entry_id);
    assert!(out.traces[t0].outcome.ids.len() >= alone.ids.len());
    for i in 1..=traces[0].len() {
        assert_eq!(out.seed_trace[i], Some(t0), "seed {i}");
    }
    // app-1 reaches trace 0 only through the `shared` trace id, as it does alone
    let last = seeds.len() - 1;
    let app1 = drive(seeds[last].search(&p), &ev).1;
    let t = out.seed_trace[last].unwrap();
    assert!(app1
        .ids
        .iter()
        .all(|id| out.traces[t].outcome.ids.contains(id)));
    assert_eq!(t == t0, app1.ids.iter().any(|id| traces[0].contains(id)));
    // and without skipping, the same seeds reproduce their own searches
    check_equivalence(&ev, &seeds, &p, "mixed seeds");
}

#[test]
fn feeding_the_wrong_kind_of_rows_is_an_error() {
    let ev = Evaluator { rows: limit_rows() };
    let p = TraceParams::default();
    let mut b = BatchSearch::new(vec![Seed::by_id(ev.rows[0]._id).search(&p)], &p);
    assert_eq!(b.feed_records(vec![]), Err(SearchError::NotAwaiting));
    let q = b.next().unwrap().unwrap();
    assert!(matches!(q, SearchQuery::EntryById { .. }));
    assert_eq!(
        b.feed_records(vec![]),
        Err(SearchError::WrongRowKind("flowmeta"))
    );
    b.feed_meta(ev.meta(&q)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_batch_on_the_embedded_store_matches_run_search() {
    let (rows, traces) = generated(2, 10, true);
    let store = SqliteStore::open(":memory:", 100_000).await.unwrap();
    let org = OrgId::DEFAULT;
    store.insert_rows(org, &rows).await.unwrap();
    let p = TraceParams::default();
    let svc = TraceService::new(Arc::new(store), p.clone());
    let mut seeds: Vec<Seed> = traces.iter().map(|t| Seed::by_id(t[3])).collect();
    seeds.push(Seed::Trace(
        "app-2".into(),
        TimeWindow::new(T0_S + 3595, T0_S + 3605),
    ));
    seeds.push(Seed::by_id(make_id(T0_S as u32, 1, 999_999)));
    let mut singles = Vec::new();
    let mut most = 0;
    for s in &seeds {
        let (o, timing) = svc.run_search(org, s.search(&p)).await.unwrap();
        most = most.max(timing.queries);
        singles.push(o);
    }
    let batch =
        BatchSearch::new(seeds.iter().map(|s| s.search(&p)).collect(), &p).skip_covered(false);
    let (out, timing) = svc.run_batch(org, batch).await.unwrap();
    assert_eq!(timing.queries as usize, out.reads);
    assert!(
        timing.queries <= most + 2,
        "{} reads vs {most}",
        timing.queries
    );
    for (i, o) in singles.iter().enumerate() {
        assert_eq!(out.seed_ids[i], o.ids, "seed {i}");
        match out.seed_trace[i] {
            None => assert!(o.ids.is_empty()),
            Some(t) if out.traces[t].seeds == [i] => {
                let got = out.traces[t].outcome.clone();
                assert_eq!(got.fetched, o.fetched);
                assert_eq!(got.assemble(&p), o.clone().assemble(&p), "seed {i}");
            }
            Some(t) => assert!(out.traces[t].seeds.contains(&i)),
        }
    }
    // with covered seeds skipped, every row of a trace as a seed still gives that trace
    let seeds: Vec<Seed> = traces[1].iter().map(|&id| Seed::by_id(id)).collect();
    let batch = BatchSearch::new(seeds.iter().map(|s| s.search(&p)).collect(), &p);
    let (out, _) = svc.run_batch(org, batch).await.unwrap();
    let one = svc.run_search(org, seeds[0].search(&p)).await.unwrap().0;
    let t = out.seed_trace[0].unwrap();
    assert!(out.seed_trace.iter().all(|&s| s == Some(t)));
    assert_eq!(out.traces[t].outcome.ids, one.ids);
    assert_eq!(out.traces[t].outcome.clone().assemble(&p), one.assemble(&p));
}
