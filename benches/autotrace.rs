//! Auto-tracing benchmarks: assembling generated zero-code traces of 100 … 100k flows (merge,
//! relate, sort and output over fetched records), and the whole search + fetch + assembly
//! against the embedded store. Figures go to BENCHMARKS.md as µs per flow.
//!
//! Under `cargo test` (no `--bench` argument) every case runs once at the small sizes only.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use deepflow_tempo::autotrace::{assemble, TraceParams};
use deepflow_tempo::query::trace::TraceService;
use deepflow_tempo::store::model::{FlowRecord, OrgId};
use deepflow_tempo::store::sqlite::SqliteStore;
use deepflow_tempo::store::{Filter, FlowQuery, FlowStore, Order};
use deepflow_tempo::synth::{self, Shape};
use std::sync::Arc;
use std::time::Duration;

const T0: i64 = 1_700_000_000_000_000;

fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn sizes() -> Vec<usize> {
    if bench_mode() {
        vec![100, 1_000, 10_000, 100_000]
    } else {
        vec![100, 1_000]
    }
}

struct Loaded {
    store: Arc<SqliteStore>,
    records: Vec<FlowRecord>,
    entry_id: u64,
}

fn load(rt: &tokio::runtime::Runtime, flows: usize) -> Loaded {
    rt.block_on(async {
        let trace = synth::zero_code_trace(
            flows as u64,
            T0,
            Shape {
                calls: flows / 4,
                fanout: 4,
                services: 40,
            },
            &mut synth::Keys::new(0),
        );
        let store = Arc::new(SqliteStore::open(":memory:", 1_000_000).await.unwrap());
        store
            .insert_rows(OrgId::DEFAULT, &trace.rows)
            .await
            .unwrap();
        let ids: Vec<u64> = trace.rows.iter().map(|r| r._id).collect();
        let records = store
            .select_records(
                OrgId::DEFAULT,
                &FlowQuery::new(Filter::ids(ids)).order(Order::StartTimeAsc),
            )
            .await
            .unwrap();
        assert_eq!(records.len(), flows);
        Loaded {
            store,
            records,
            entry_id: trace.entry_id,
        }
    })
}

fn params() -> TraceParams {
    TraceParams {
        l7_tracing_limit: 1_000_000,
        max_iteration: 100,
        ..TraceParams::default()
    }
}

fn autotrace(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("assemble");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    let mut loaded = Vec::new();
    for n in sizes() {
        let l = load(&rt, n);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &l, |b, l| {
            b.iter(|| {
                let result = assemble(l.records.clone(), vec![], Some(l.entry_id), &params());
                assert_eq!(result.spans.len(), n);
                result
            })
        });
        loaded.push((n, l));
    }
    group.finish();

    let mut group = c.benchmark_group("search_embedded");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1));
    for (n, l) in &loaded {
        if *n > 10_000 {
            continue;
        }
        let service = TraceService::new(l.store.clone(), params());
        let t = (l.entry_id >> 32) as i64;
        group.throughput(Throughput::Elements(*n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &(), |b, _| {
            b.iter(|| {
                let (_, result, _) = rt
                    .block_on(service.trace_by_id(OrgId::DEFAULT, l.entry_id, t - 60, t + 600))
                    .unwrap();
                assert_eq!(result.spans.len(), *n);
                result
            })
        });
    }
    group.finish();
}

criterion_group!(benches, autotrace);
criterion_main!(benches);
