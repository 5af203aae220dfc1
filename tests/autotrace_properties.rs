//! Properties of `assemble` over generated traces (fixed seeds): no cycles, every parent is in
//! the output, every input row appears exactly once when nothing is pruned (`entry_id = None`
//! keeps every tree), at most once with pruning, shuffling the input changes nothing, and the
//! output never has more spans than the input has rows.
//!
//! Start times are distinct so that the flow indices (start-time order) do not depend on the
//! input order; with equal starts the spec's stable sort makes the input order significant.

mod autotrace_common;

use autotrace_common::*;
use deepflow_tempo::autotrace::{
    assemble, assemble_exhaustive, Search, SearchQuery, TimeWindow, TraceParams, TraceResult,
};
use deepflow_tempo::store::model::FlowRecord;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};

struct Gen {
    rng: StdRng,
    next_id: u64,
    used_starts: HashSet<i64>,
}

impl Gen {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn start(&mut self, lo: i64) -> i64 {
        let mut s = lo + self.rng.random_range(0..200);
        while !self.used_starts.insert(s) {
            s += 1;
        }
        s
    }

    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.rng.random_range(0..v.len())]
    }

    /// One random trace: chains of c-p / c / s / s-p hops with random keys, plus app spans.
    fn trace(&mut self) -> Vec<FlowRecord> {
        let mut rows = Vec::new();
        let traces = ["", "", "A", "B", "A,B"];
        let spans = ["", "", "s1", "s2", "s3", "s4", "aaaaaaaaaaaaaaaa"];
        let hops = self.rng.random_range(1..6);
        let mut t = self.rng.random_range(-1000..1000) * 1000;
        for _ in 0..hops {
            let req = self.rng.random_range(0..6u32) * 100;
            let resp = req + 1;
            let ag_c = self.rng.random_range(1..4u16);
            let ag_s = self.rng.random_range(1..4u16);
            let pid_c = self.rng.random_range(1..4);
            let pid_s = self.rng.random_range(1..4);
            let inst_c = self.rng.random_range(1..4u32);
            let inst_s = self.rng.random_range(1..4u32);
            let tr = self.pick(&traces).to_string();
            let sp = self.pick(&spans).to_string();
            let len = self.rng.random_range(100..20_000);
            let l7 = *[20u8, 20, 20, 41, 120, 108]
                .get(self.rng.random_range(0..6))
                .unwrap();
            let taps = [("c-p", 3u16), ("c", 0), ("s", 0), ("s-p", 3)];
            for (k, (tap, sig)) in taps.iter().enumerate() {
                if self.rng.random_bool(0.25) {
                    continue;
                }
                let s = self.start(t + k as i64 * 50);
                let e = s + len - k as i64 * 100;
                let client = tap.starts_with('c');
                let ag = if client { ag_c } else { ag_s };
                let mut r = row(self.id(), *sig, tap, ag, s, e.max(s))
                    .seq(req, resp)
                    .tr(&tr)
                    .sp(&sp)
                    .svc0(10 + inst_c, "svc-c", inst_c)
                    .svc1(10 + inst_s, "svc-s", inst_s)
                    .flow(self.rng.random_range(0..3))
                    .l7(l7, "X");
                if *sig == 3 {
                    let sq = self.rng.random_range(0..5u64);
                    let sr = self.rng.random_range(0..5u64);
                    r = r.sys(sq, sr).pid(if client { pid_c } else { pid_s });
                }
                if self.rng.random_bool(0.1) {
                    r = r.x0("X1");
                }
                if self.rng.random_bool(0.1) {
                    r = r.x1("X1");
                }
                if l7 == 41 || l7 == 120 {
                    r = r.req_id(Some(self.rng.random_range(1..3)));
                }
                if l7 == 108 && self.rng.random_bool(0.5) {
                    r = r.with(|x| x.is_async = 1);
                }
                if self.rng.random_bool(0.15) {
                    r = r.ty(self.rng.random_range(0..2));
                }
                if self.rng.random_bool(0.1) {
                    r = r.with(|x| x.server_port = 1);
                }
                rows.push(r.b());
            }
            // app spans around the hop
            if self.rng.random_bool(0.5) {
                let n = self.rng.random_range(1..4);
                for _ in 0..n {
                    let tap = self.pick(&["s-app", "c-app", "app"]);
                    let s = self.start(t);
                    let e = s + self.rng.random_range(0..len);
                    let inst = if tap == "c-app" { inst_c } else { inst_s };
                    let r = row(self.id(), 4, tap, ag_s, s, e)
                        .proto(0)
                        .tr(&tr)
                        .sp(self.pick(&spans))
                        .psp(self.pick(&spans))
                        .inst0(inst)
                        .inst1(inst)
                        .app(self.pick(&["", "svc-a", "svc-b"]))
                        .with(|x| {
                            if inst == 3 {
                                x.auto_instance_type_0 = 120;
                                x.auto_instance_type_1 = 120;
                            }
                        });
                    rows.push(r.b());
                }
            }
            t += self.rng.random_range(0..30_000);
        }
        rows
    }
}

fn check_invariants(rows: &[FlowRecord], res: &TraceResult, pruned: bool) {
    let by_index: HashMap<usize, usize> = res
        .spans
        .iter()
        .enumerate()
        .map(|(k, s)| (s.id, k))
        .collect();
    assert_eq!(by_index.len(), res.spans.len(), "flow indices are unique");
    // parents exist, no cycles, childs agree with parent ids
    for s in &res.spans {
        let mut cur = s.parent_id;
        let mut steps = 0;
        while let Some(p) = cur {
            assert!(
                by_index.contains_key(&p),
                "parent {p} of {} not in output",
                s.id
            );
            steps += 1;
            assert!(steps <= res.spans.len(), "cycle through {}", s.id);
            cur = res.spans[by_index[&p]].parent_id;
        }
        if let Some(p) = s.parent_id {
            assert!(res.spans[by_index[&p]].childs.contains(&s.id));
        }
    }
    // each row at most once; exactly once without pruning
    let mut seen = HashMap::new();
    for s in &res.spans {
        for &i in &s.ids {
            *seen.entry(i).or_insert(0) += 1;
        }
    }
    assert!(seen.values().all(|&c| c == 1), "a row appears twice");
    if !pruned {
        for r in rows {
            assert_eq!(seen.get(&r._id), Some(&1), "row {} missing", r._id);
        }
    }
    assert!(res.spans.len() <= rows.len());
    // depth-first order: every parent precedes its children
    let pos: HashMap<usize, usize> = res
        .spans
        .iter()
        .enumerate()
        .map(|(k, s)| (s.id, k))
        .collect();
    for s in &res.spans {
        if let Some(p) = s.parent_id {
            assert!(pos[&p] < pos[&s.id]);
        }
    }
    // selftime never exceeds the duration and is never negative
    for s in &res.spans {
        assert!(s.selftime >= 0 && s.selftime <= s.duration() as i64);
    }
}

fn params(k: u64) -> TraceParams {
    let mut p = TraceParams::default();
    if k.is_multiple_of(3) {
        p.span_set_connection_strategies
            .net_span_c_to_s_via_trace_id = true;
        p.span_set_connection_strategies
            .sys_span_s_to_c_via_trace_id = true;
    }
    if k.is_multiple_of(4) {
        p.tracing_source
            .push(deepflow_tempo::autotrace::TracingSource::Dns);
    }
    p
}

#[test]
fn generated_traces_keep_the_invariants() {
    let mut reasons: HashMap<String, usize> = HashMap::new();
    let (mut linked, mut total) = (0, 0);
    for seed in 0..300u64 {
        let mut g = Gen {
            rng: StdRng::seed_from_u64(seed),
            next_id: seed * 1000,
            used_starts: HashSet::new(),
        };
        let rows = g.trace();
        let p = params(seed);
        let all = assemble(rows.clone(), vec![], None, &p);
        check_invariants(&rows, &all, false);
        for s in &all.spans {
            total += 1;
            if let Some(w) = &s.set_parent_info {
                linked += 1;
                *reasons.entry(w.clone()).or_default() += 1;
            }
        }
        let entry = rows[g.rng.random_range(0..rows.len())]._id;
        let pruned = assemble(rows.clone(), vec![], Some(entry), &p);
        check_invariants(&rows, &pruned, true);
        assert!(
            pruned.spans.iter().any(|s| s.ids.contains(&entry)),
            "entry kept"
        );
    }
    // the generator must exercise the linking rules, not just produce forests of roots
    eprintln!("{linked}/{total} linked; reasons: {reasons:#?}");
    assert!(linked * 3 > total, "{linked}/{total}");
    assert!(reasons.len() >= 8, "{reasons:?}");
}

#[test]
fn shuffled_input_gives_the_same_trace() {
    for seed in 0..300u64 {
        let mut g = Gen {
            rng: StdRng::seed_from_u64(seed + 10_000),
            next_id: seed * 1000,
            used_starts: HashSet::new(),
        };
        let rows = g.trace();
        let p = params(seed);
        let entry = Some(rows[0]._id);
        let a = assemble(rows.clone(), vec![], entry, &p);
        let mut shuffled = rows.clone();
        shuffled.shuffle(&mut g.rng);
        let b = assemble(shuffled, vec![], entry, &p);
        let rel = |r: &TraceResult| -> Vec<(u64, Option<u64>, Option<String>, i64)> {
            let by: HashMap<usize, u64> = r.spans.iter().map(|s| (s.id, s.ids[0])).collect();
            let mut v: Vec<_> = r
                .spans
                .iter()
                .map(|s| {
                    (
                        s.ids[0],
                        s.parent_id.map(|p| by[&p]),
                        s.set_parent_info.clone(),
                        s.selftime,
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(rel(&a), rel(&b), "seed {seed}");
        assert_eq!(
            a.to_deepflow_json(true),
            b.to_deepflow_json(true),
            "seed {seed}"
        );
        // and the engine is deterministic run to run
        assert_eq!(a, assemble(rows.clone(), vec![], entry, &p));
        // the candidate indexes of the sort phase give exactly the spec's linear-scan result
        assert_eq!(a, assemble_exhaustive(rows, entry, &p), "seed {seed}");
    }
}

#[test]
fn tree_detail_leaves_out_only_the_display_fields() {
    use deepflow_tempo::autotrace::{assemble_with, Detail};
    use deepflow_tempo::tempo::{encode::encode, ids::TraceId};
    for seed in 0..150u64 {
        let mut g = Gen {
            rng: StdRng::seed_from_u64(seed + 20_000),
            next_id: seed * 1000,
            used_starts: HashSet::new(),
        };
        let rows = if seed % 10 == 0 {
            big_trace(seed, 2_400, seed % 20 == 0, 5_000)
        } else {
            g.trace()
        };
        let p = params(seed);
        let entry = rows[0]._id;
        let full = assemble(rows.clone(), vec![], Some(entry), &p);
        let tree = assemble_with(rows, vec![], Some(entry), &p, Detail::Tree);
        let id = TraceId::zero_code(entry);
        assert_eq!(encode(&full, &id), encode(&tree, &id), "seed {seed}");
        let mut stripped = full;
        for s in &mut stripped.spans {
            s.related_ids.clear();
            s.deepflow_parent_span_id.clear();
            s.service_uid = None;
            s.service_uname = None;
        }
        assert_eq!(stripped, tree, "seed {seed}");
    }
}

/// Many generated calls in one input. With `distinct_keys` the calls' keys (seqs, syscall
/// ids, trace/span/x-request ids) are kept apart; without, they collide heavily. `gap_us`
/// separates the calls in time.
fn big_trace(seed: u64, target: usize, distinct_keys: bool, gap_us: i64) -> Vec<FlowRecord> {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        next_id: 0,
        used_starts: HashSet::new(),
    };
    let mut rows = Vec::new();
    let mut k = 0u64;
    while rows.len() < target {
        let mut t = g.trace();
        for r in &mut t {
            if distinct_keys {
                r.req_tcp_seq += (k as u32) * 1000;
                r.resp_tcp_seq += (k as u32) * 1000;
                if r.syscall_trace_id_request != 0 {
                    r.syscall_trace_id_request += k * 10;
                }
                if r.syscall_trace_id_response != 0 {
                    r.syscall_trace_id_response += k * 10;
                }
                let sfx = |v: &mut String| {
                    if !v.is_empty() {
                        *v = format!("{v}-{k}");
                    }
                };
                if std::env::var("AUTOTRACE_BENCH_SHARED_TRACE").is_err() {
                    sfx(&mut r.trace_id);
                    sfx(&mut r._trace_id_2);
                }
                sfx(&mut r.span_id);
                sfx(&mut r.parent_span_id);
                sfx(&mut r.x_request_id_0);
                sfx(&mut r.x_request_id_1);
            }
            r.start_time_us += (k as i64) * gap_us;
            r.end_time_us += (k as i64) * gap_us;
        }
        rows.extend(t);
        k += 1;
    }
    rows
}

#[test]
fn indexes_match_the_linear_scans_on_large_inputs() {
    for (seed, distinct, gap) in [(1, false, 5_000), (2, false, 60_000), (3, true, 20_000)] {
        let rows = big_trace(seed, 1500, distinct, gap);
        let p = params(seed);
        let a = assemble(rows.clone(), vec![], None, &p);
        check_invariants(&rows, &a, false);
        let b = assemble_exhaustive(rows, None, &p);
        assert_eq!(a, b, "seed {seed}");
    }
}

/// Drive a search to its end over `ev`; the queries it asked and its outcome.
fn run_search(
    mut s: Search,
    ev: &Evaluator,
) -> (Vec<SearchQuery>, deepflow_tempo::autotrace::SearchOutcome) {
    let mut qs = Vec::new();
    while let Some(q) = s.next().unwrap() {
        match &q {
            SearchQuery::Fetch { .. } => s.feed_records(ev.fetch(&q)).unwrap(),
            _ => s.feed_meta(ev.meta(&q)).unwrap(),
        }
        qs.push(q);
    }
    (qs, s.finish())
}

#[test]
fn search_relation_index_kept_across_iterations_matches_a_rebuild() {
    let mut iterations = 0; // searches with two relation checks or more
    for seed in 0..120u64 {
        // Colliding keys (many candidates per query, zero seqs, shared trace/span/x-request
        // ids) over several hundred rows, so the search runs several iterations.
        let rows = big_trace(
            seed + 500,
            150 + (seed as usize % 4) * 100,
            seed % 3 == 0,
            3_000,
        );
        let mut p = params(seed);
        p.l7_tracing_limit = 100_000;
        p.allow_multiple_trace_ids_in_tracing_result = seed % 2 == 0;
        if seed % 5 == 0 {
            p.network_delay_us = 1;
            p.host_clock_offset_us = 1;
        }
        let ev = Evaluator { rows: rows.clone() };
        let mut rng = StdRng::seed_from_u64(seed);
        let w = TimeWindow::new(-5, 5);
        for _ in 0..3 {
            let entry = rows[rng.random_range(0..rows.len())]._id;
            let a = run_search(Search::by_id(entry, w, &p), &ev);
            let b = run_search(Search::by_id(entry, w, &p).with_full_relation_check(), &ev);
            assert_eq!(a.0, b.0, "seed {seed} entry {entry}: queries");
            assert_eq!(a.1.ids, b.1.ids, "seed {seed} entry {entry}: ids");
            assert_eq!(a.1.stop_reason, b.1.stop_reason, "seed {seed}");
            assert_eq!(a.1.iterations, b.1.iterations, "seed {seed}");
            if a.1.iterations >= 2 {
                iterations += 1;
            }
        }
        for t in ["A", "B"] {
            let a = run_search(Search::by_trace_id(t, w, &p), &ev);
            let b = run_search(
                Search::by_trace_id(t, w, &p).with_full_relation_check(),
                &ev,
            );
            assert_eq!(a.0, b.0, "seed {seed} trace {t}: queries");
            assert_eq!(a.1.ids, b.1.ids, "seed {seed} trace {t}: ids");
            assert_eq!(a.1.entry_id, b.1.entry_id, "seed {seed}");
        }
    }
    // many searches must go through several relation checks, not stop at the first
    assert!(iterations > 100, "{iterations}");
}

/// Throughput probe (prints µs per flow; no threshold — figures live in BENCHMARKS.md):
/// `cargo test --release --test autotrace_properties -- --ignored --nocapture`.
/// `AUTOTRACE_BENCH_N` sets the size; `AUTOTRACE_BENCH_SHARED_TRACE=1` makes all calls share
/// their trace ids (one giant trace instead of many independent ones).
#[test]
#[ignore]
fn assemble_10k_flows_quickly() {
    let target: usize = std::env::var("AUTOTRACE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rows = big_trace(7, target, true, 100_000_000);
    let n = rows.len();
    {
        // phase breakdown
        use deepflow_tempo::autotrace::{merge, output, relate, sort, Flow};
        let p = TraceParams::default();
        let ctx = relate::RelCtx {
            network_delay_us: p.network_delay_us,
            host_clock_offset_us: p.host_clock_offset_us,
            dns: false,
        };
        let t = std::time::Instant::now();
        let flows = merge::merge_rows(rows.iter().cloned().map(Flow::from_record).collect());
        let t_merge = t.elapsed();
        let t = std::time::Instant::now();
        let rel = relate::relation_map(&flows, &ctx);
        let t_rel = t.elapsed();
        let t = std::time::Instant::now();
        let tree = sort::build_tree(&flows, &rel, &ctx, sort::SortOpts::default());
        let t_sort = t.elapsed();
        let t = std::time::Instant::now();
        let _ = output::build_output(
            flows,
            &rel,
            tree,
            None,
            p.host_clock_offset_us,
            deepflow_tempo::autotrace::Detail::Full,
        );
        let t_out = t.elapsed();
        eprintln!("merge {t_merge:?} relate {t_rel:?} sort {t_sort:?} output {t_out:?}");
    }
    // best of three: the machine may be shared
    let mut best = std::time::Duration::MAX;
    let mut spans = 0;
    for _ in 0..3 {
        let input = rows.clone();
        let t0 = std::time::Instant::now();
        let res = assemble(input, vec![], None, &TraceParams::default());
        best = best.min(t0.elapsed());
        spans = res.spans.len();
    }
    let per = best.as_secs_f64() * 1e6 / n as f64;
    eprintln!("{n} rows → {spans} spans in {best:?} ({per:.2} µs/flow)");
}
