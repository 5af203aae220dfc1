//! End-to-end against the test ClickHouse (chDB behind tools/ch_front.py): a generated
//! `l7_flow_log` of ~1 million rows (zero-code traces of ~100 flows plus one of ~10,000), then
//! - Tempo trace-by-ID lookups (cache off) through `TempoService`: p50/p99 per trace size and
//!   the ratio of total time to the time spent in ClickHouse queries;
//! - a TraceQL filter search `{resource.service.name="svc-3" && duration>100ms}` over the last
//!   hour and a tag-values call (`resource.service.name`): p50/p99;
//! - trace-level searches `{}`, `{ status = error }` (one trace in ten fails) and an `&&` of two
//!   services, `limit=20`: p50/p99 and the ratio of their p50 to opening one uncached trace,
//!   on ClickHouse and, over 1,000 traces of the same shape, on the embedded store, where one
//!   read of the twenty newest traces' rows (no search) is timed too: a search's floor;
//! - TraceQL metrics `{} | rate() by (resource.service.name)` over one hour at a 60 s step
//!   through the metrics service, against the same aggregation written by hand in SQL and read
//!   with the `clickhouse` crate (runs interleaved): p50/p99 of both and the ratio of the p50s.
//!
//! Each search and the one-trace series start with one untimed run (prepared statements and
//! allocator warm, as in a serving process); the cache stays off, so every timed run reads.
//!
//! `cargo bench --bench e2e_clickhouse` runs the full size; under `cargo test` (no `--bench`
//! argument) it runs a small smoke version. Uses `CLICKHOUSE_URL` or starts its own front.
//! `cargo bench --bench e2e_clickhouse -- --embedded` runs only the embedded store's part.

/// The server binary's allocator (src/main.rs), so the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/mod.rs"]
mod common;

use deepflow_tempo::autotrace::TraceParams;
use deepflow_tempo::config::{CacheConfig, TempoConfig};
use deepflow_tempo::query::metrics::{self, MetricsRequest};
use deepflow_tempo::query::search::{self, SearchConfig, SearchRequest};
use deepflow_tempo::query::trace::{TempoService, TraceService};
use deepflow_tempo::store::model::{DeviceName, NameTables, OrgId};
use deepflow_tempo::store::{Facet, Filter, FlowQuery, FlowStore, TimeWindow};
use deepflow_tempo::synth::{self, Shape};
use deepflow_tempo::tempo::ids::TraceId;
use std::collections::BTreeMap;
use std::time::Instant;

struct Sample {
    total_us: u64,
    store_us: u64,
    search_us: u64,
    assemble_us: u64,
    encode_us: u64,
    queries: u32,
    flows: usize,
}

fn sample(t: Instant, trace: &deepflow_tempo::query::trace::TempoTrace) -> Sample {
    Sample {
        total_us: t.elapsed().as_micros() as u64,
        store_us: trace.timing.store_us,
        search_us: trace.timing.search_us,
        assemble_us: trace.timing.assemble_us,
        encode_us: trace.timing.encode_us,
        queries: trace.timing.queries,
        flows: trace.flows,
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, samples: &[Sample]) {
    let mut totals: Vec<u64> = samples.iter().map(|s| s.total_us).collect();
    totals.sort_unstable();
    let total: u64 = samples.iter().map(|s| s.total_us).sum();
    let store: u64 = samples.iter().map(|s| s.store_us).sum();
    let n = samples.len() as f64;
    let mean = |f: fn(&Sample) -> u64| samples.iter().map(f).sum::<u64>() as f64 / n / 1000.0;
    println!(
        "| {name} | {} | {} | {:.1} | {:.1} | {:.3} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        samples[0].flows,
        samples.len(),
        pct(&totals, 0.5),
        pct(&totals, 0.99),
        total as f64 / store.max(1) as f64,
        samples[0].queries,
        mean(|s| s.store_us),
        mean(|s| s.search_us),
        mean(|s| s.assemble_us),
        mean(|s| s.encode_us),
    );
}

const TRACE_QUERIES: [&str; 3] = [
    "{}",
    "{ status = error }",
    r#"{ resource.service.name = "svc-3" } && { resource.service.name = "svc-5" }"#,
];

/// p50/p99 of each trace-level search (`limit=20`, the last hour), with its hit count.
type TraceSearches = Vec<(&'static str, Vec<u64>, usize, String)>;

async fn trace_level_searches(
    tracer: &TraceService,
    org: deepflow_tempo::store::model::OrgId,
    now_s: i64,
    runs: usize,
) -> TraceSearches {
    let mut out = Vec::new();
    for text in TRACE_QUERIES {
        let query = deepflow_tempo::traceql::parse(text).unwrap();
        let req = SearchRequest {
            query,
            start_s: now_s - 3700,
            end_s: now_s,
            limit: 20,
            spss: 3,
            deadline: None,
        };
        let mut times = Vec::new();
        let mut n = 0;
        let mut phases = (0u64, 0u64, 0u64, 0u32);
        // One run untimed: a serving process has its statements prepared and its allocator
        // warm; the first request after start is not what users wait for.
        search::search(tracer, org, &req, &SearchConfig::default(), 60)
            .await
            .unwrap();
        for _ in 0..runs {
            let t = Instant::now();
            let (r, timing) = search::search_timed(tracer, org, &req, &SearchConfig::default(), 60)
                .await
                .unwrap();
            times.push(t.elapsed().as_micros() as u64);
            n = r.traces.len();
            phases.0 += timing.store_us;
            phases.1 += timing.search_us;
            phases.2 += timing.assemble_us;
            phases.3 += timing.queries;
        }
        times.sort_unstable();
        let k = runs.max(1) as f64;
        let phases = format!(
            "store {:.0} ms, search {:.0} ms, assembly {:.0} ms, {:.0} reads",
            phases.0 as f64 / k / 1000.0,
            phases.1 as f64 / k / 1000.0,
            phases.2 as f64 / k / 1000.0,
            phases.3 as f64 / k
        );
        out.push((text, times, n, phases));
    }
    out
}

fn print_trace_searches(store: &str, searches: &TraceSearches, one_p50: f64) {
    for (text, times, n, phases) in searches {
        println!(
            "| {store}: search `{}`, limit 20, last hour | {} | {:.1} | {:.1} | {n} traces; p50 = {:.2} × one uncached trace ({one_p50:.1} ms); mean {phases} |",
            text.replace('|', "\\|"),
            times.len(),
            pct(times, 0.5),
            pct(times, 0.99),
            pct(times, 0.5) / one_p50
        );
    }
}

/// The embedded store's figures: the searches, one uncached trace's p50 (ms), the rows, and
/// the times (µs, sorted) of reading the newest twenty traces' rows once.
type EmbeddedFigures = (TraceSearches, f64, usize, Vec<u64>);

/// The same comparison on the embedded store (SQLite in memory), over `traces` generated
/// traces of the same shape in the last hour: uncached trace by ID p50, the searches, and one
/// read of the newest twenty traces' rows.
async fn embedded(traces: usize, runs: usize) -> EmbeddedFigures {
    let (store, org) = common::sqlite_store().await;
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let t0 = now_us - 3_000_000_000;
    let mut keys = synth::Keys::new(0);
    let mut entries = Vec::new();
    let mut rows = Vec::new();
    // The rows of the twenty newest traces: what a `{}` search with limit 20 must read at least.
    let mut newest = Vec::new();
    for i in 0..traces {
        let tr = synth::zero_code_trace(
            i as u64,
            t0 + i as i64 * (2_900_000_000 / traces as i64),
            Shape {
                calls: 25,
                fanout: 3,
                services: 30,
            },
            &mut keys,
        );
        entries.push(tr.entry_id);
        let mut trace_rows = tr.rows;
        if i % 10 == 0 {
            if let Some(seq) = trace_rows.last().map(|r| r.req_tcp_seq) {
                for r in trace_rows.iter_mut().filter(|r| r.req_tcp_seq == seq) {
                    r.response_status = 3;
                    r.response_code = Some(500);
                }
            }
        }
        if i + 20 >= traces {
            newest.extend(trace_rows.iter().map(|r| r._id));
        }
        rows.extend(trace_rows);
    }
    let n_rows = rows.len();
    for chunk in rows.chunks(20_000) {
        store.insert_rows(org, chunk).await.unwrap();
    }
    let devices = (0..40)
        .map(|i| DeviceName {
            devicetype: 130,
            deviceid: 200 + i,
            name: format!("svc-{i}"),
            ..Default::default()
        })
        .collect();
    store
        .insert_names(
            org,
            &NameTables {
                devices,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let tracer = TraceService::new(store.clone(), TraceParams::default());
    let tempo = TempoService::new(
        TraceService::new(store.clone(), TraceParams::default()),
        TempoConfig::default(),
        CacheConfig {
            max_entries: 0,
            ..CacheConfig::default()
        },
    );
    let mut one = Vec::new();
    let step = (entries.len() / runs.max(1)).max(1);
    // One trace untimed, as for the searches (cache off: the timed traces are read anew).
    tempo
        .trace(org, TraceId::zero_code(entries[1]), None)
        .await
        .unwrap()
        .expect("trace found");
    for k in 0..runs.max(3) {
        let id = TraceId::zero_code(entries[(k * step) % entries.len()]);
        let t = Instant::now();
        tempo
            .trace(org, id, None)
            .await
            .unwrap()
            .expect("trace found");
        one.push(t.elapsed().as_micros() as u64);
    }
    one.sort_unstable();
    let searches = trace_level_searches(&tracer, org, now_us / 1_000_000, runs).await;
    // One read of those rows, whole, as a search's fetch reads them (names included).
    let now_s = (now_us / 1_000_000) as u32;
    let read = FlowQuery::new(Filter::ids(newest.iter().copied()))
        .window(TimeWindow::new(now_s - 3700, now_s));
    let mut floor = Vec::new();
    for k in 0..=runs {
        let t = Instant::now();
        let got = store.select_records(org, &read).await.unwrap();
        assert_eq!(got.len(), newest.len());
        if k > 0 {
            floor.push(t.elapsed().as_micros() as u64);
        }
    }
    floor.sort_unstable();
    (searches, pct(&one, 0.5), n_rows, floor)
}

/// The embedded store's part: 1,000 traces and 10 runs at full size.
async fn embedded_report(full: bool) {
    let (searches, one_p50, n_rows, floor) =
        embedded(if full { 1_000 } else { 20 }, if full { 10 } else { 2 }).await;
    print_trace_searches(&format!("embedded ({n_rows} rows)"), &searches, one_p50);
    println!(
        "| embedded ({n_rows} rows): one read of the twenty newest traces' rows, whole (no search) | {} | {:.1} | {:.1} | p50 = {:.2} × one uncached trace ({one_p50:.1} ms) |",
        floor.len(),
        pct(&floor, 0.5),
        pct(&floor, 0.99),
        pct(&floor, 0.5) / one_p50
    );
}

const METRICS_QUERY: &str = "{} | rate() by (resource.service.name)";
const METRICS_STEP_S: i64 = 60;

/// `resource.service.name` of a row written out in SQL: the application service (else
/// DeepFlow's auto service) for application spans, the auto service, else the process, for
/// eBPF spans, `<observation point> @ <node or host>` for network spans.
fn hand_service_sql(tag: &str) -> String {
    let (codes, names) = deepflow_tempo::span::observation_point_names();
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (codes, names) = (list(&codes), list(&names));
    format!(
        "WITH startsWith(observation_point, 'c') AS client_side, \
         if(client_side, \
            if(auto_service_type_0 IN (0, 255), \
               if(is_ipv4 = 1, IPv4NumToString(ip4_0), IPv6NumToString(ip6_0)), \
               dictGet('{tag}.device_map', 'name', (toUInt64(auto_service_type_0), toUInt64(auto_service_id_0)))), \
            if(auto_service_type_1 IN (0, 255), \
               if(is_ipv4 = 1, IPv4NumToString(ip4_1), IPv6NumToString(ip6_1)), \
               dictGet('{tag}.device_map', 'name', (toUInt64(auto_service_type_1), toUInt64(auto_service_id_1))))) AS auto_service, \
         if(client_side, dictGet('{tag}.gprocess_map', 'name', toUInt64(gprocess_id_0)), \
            dictGet('{tag}.gprocess_map', 'name', toUInt64(gprocess_id_1))) AS gprocess, \
         if(client_side, process_kname_0, process_kname_1) AS kname, \
         if(client_side, dictGet('{tag}.device_map', 'name', (toUInt64(14), toUInt64(pod_node_id_0))), \
            dictGet('{tag}.device_map', 'name', (toUInt64(14), toUInt64(pod_node_id_1)))) AS node, \
         if(client_side, dictGet('{tag}.device_map', 'name', (toUInt64(6), toUInt64(host_id_0))), \
            dictGet('{tag}.device_map', 'name', (toUInt64(6), toUInt64(host_id_1)))) AS host, \
         dictGetOrDefault('{tag}.vtap_port_map', 'pod_node_name', (toUInt64(agent_id), toUInt64(capture_nic)), '') AS port_node, \
         dictGetOrDefault('{tag}.vtap_port_map', 'host_name', (toUInt64(agent_id), toUInt64(capture_nic)), '') AS port_host, \
         dictGetOrDefault('{tag}.vtap_port_map', 'device_name', (toUInt64(agent_id), toUInt64(capture_nic)), '') AS port_device, \
         if(observation_point = '', 'network', \
            transform(toString(observation_point), [{codes}], [{names}], toString(observation_point))) AS point \
         SELECT toString(multiIf( \
           signal_source = 4, multiIf(toString(app_service) != '', toString(app_service), auto_service != '', auto_service, 'unknown app service'), \
           signal_source = 3, multiIf(auto_service != '', auto_service, gprocess != '', gprocess, kname != '', kname, 'unknown process'), \
           concat(point, ' @ ', multiIf(node != '', node, port_node != '', port_node, host != '', host, \
                                        port_host != '', port_host, port_device != '', port_device, \
                                        concat('agent ', toString(agent_id)))))) AS service"
    )
}

/// One (service, step) count of the hand-written aggregation.
#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct HandCount {
    service: String,
    step: i64,
    spans: u64,
}

/// `METRICS_QUERY` over `[start_s, end_s)` as SQL written by hand: spans (sessions and
/// request halves, `type IN (0, 2)`) counted per service and 60 s step of `start_time`, over
/// the `time` window the metrics service scans (to one hour past the end).
fn hand_metrics_sql(org: OrgId, start_s: i64, end_s: i64) -> String {
    let flow = org.database("flow_log");
    let tag = org.database("flow_tag");
    let step_us = METRICS_STEP_S * 1_000_000;
    format!(
        "{select}, toInt64(intDiv(toUnixTimestamp64Micro(start_time) - {start_us}, {step_us})) AS step, \
         count() AS spans \
         FROM `{flow}`.`l7_flow_log` \
         WHERE time >= toDateTime({start_s}) AND time <= toDateTime({slack_s}) AND type IN (0, 2) \
           AND start_time >= fromUnixTimestamp64Micro(toInt64({start_us})) \
           AND start_time < fromUnixTimestamp64Micro(toInt64({end_us})) \
         GROUP BY service, step",
        select = hand_service_sql(&tag),
        start_us = start_s * 1_000_000,
        end_us = end_s * 1_000_000,
        slack_s = end_s + 3600,
    )
}

/// Times of the metrics service and of the hand-written SQL (µs, sorted), and the number of
/// series; checks both count the same spans per service.
async fn metrics_vs_hand(
    store: &dyn FlowStore,
    url: &str,
    org: OrgId,
    now_s: i64,
    runs: usize,
) -> (Vec<u64>, Vec<u64>, usize) {
    let end_s = (now_s / METRICS_STEP_S + 1) * METRICS_STEP_S;
    let start_s = end_s - 3600;
    let req = MetricsRequest {
        query: deepflow_tempo::traceql::parse(METRICS_QUERY).unwrap(),
        start_ns: start_s * 1_000_000_000,
        end_ns: end_s * 1_000_000_000,
        step_ns: METRICS_STEP_S * 1_000_000_000,
        max_series: metrics::DEFAULT_MAX_SERIES,
        // The aggregation alone, as the hand-written SQL computes it (exemplars cost one more
        // read of at most `exemplars` rows by ID).
        exemplars: 0,
    };
    let client = clickhouse::Client::default().with_url(url);
    let sql = hand_metrics_sql(org, start_s, end_s);
    let (mut service, mut hand) = (Vec::new(), Vec::new());
    let (mut by_service, mut by_hand) = (BTreeMap::new(), BTreeMap::new());
    let mut series = 0;
    for k in 0..runs {
        // Alternate which goes first, so neither always finds the other's warm caches.
        for service_turn in [k % 2 == 0, k % 2 != 0] {
            let t = Instant::now();
            if service_turn {
                let out = metrics::query_range(store, None, org, &req)
                    .await
                    .unwrap()
                    .series;
                service.push(t.elapsed().as_micros() as u64);
                series = out.len();
                by_service = out
                    .iter()
                    .map(|s| {
                        let spans: f64 = s.samples.iter().map(|(_, v)| v).sum();
                        let name = match &s.labels[0].1 {
                            metrics::LabelValue::Str(n) => n.clone(),
                            other => format!("{other:?}"),
                        };
                        (name, (spans * METRICS_STEP_S as f64).round() as u64)
                    })
                    .collect();
            } else {
                let rows = client.query(&sql).fetch_all::<HandCount>().await.unwrap();
                hand.push(t.elapsed().as_micros() as u64);
                by_hand.clear();
                for r in rows {
                    assert!(
                        (0..60).contains(&r.step),
                        "step {} outside the hour",
                        r.step
                    );
                    *by_hand.entry(r.service).or_insert(0u64) += r.spans;
                }
            }
        }
    }
    assert_eq!(
        by_service, by_hand,
        "the service and the SQL count different spans"
    );
    service.sort_unstable();
    hand.sort_unstable();
    (service, hand, series)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (small_traces, big_calls, runs_small, runs_big) = if full {
        (9_900, 2_500, 60, 8)
    } else {
        (20, 50, 3, 1)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        if std::env::args().any(|a| a == "--embedded") {
            embedded_report(full).await;
            return;
        }
        let Some((store, org)) = common::clickhouse_store().await else {
            eprintln!("no ClickHouse: skipped");
            return;
        };
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let t0 = now_us - 3_600_000_000;
        let mut keys = synth::Keys::new(0);
        let mut entries = Vec::new();
        let mut batch = Vec::with_capacity(60_000);
        let mut rows = 0usize;
        let t = Instant::now();
        for i in 0..small_traces {
            let tr = synth::zero_code_trace(
                i as u64,
                t0 + i as i64 * 300_000,
                Shape {
                    calls: 25,
                    fanout: 3,
                    services: 30,
                },
                &mut keys,
            );
            entries.push(tr.entry_id);
            rows += tr.rows.len();
            let mut trace_rows = tr.rows;
            // One trace in ten fails: its last call answers a server error at every point.
            if i % 10 == 0 {
                if let Some(seq) = trace_rows.last().map(|r| r.req_tcp_seq) {
                    for r in trace_rows.iter_mut().filter(|r| r.req_tcp_seq == seq) {
                        r.response_status = 3;
                        r.response_code = Some(500);
                    }
                }
            }
            batch.extend(trace_rows);
            if batch.len() >= 50_000 {
                store.insert_rows(org, &batch).await.unwrap();
                batch.clear();
            }
        }
        let big = synth::zero_code_trace(
            7,
            t0 + 1_800_000_000,
            Shape {
                calls: big_calls,
                fanout: 4,
                services: 40,
            },
            &mut keys,
        );
        rows += big.rows.len();
        batch.extend(big.rows);
        store.insert_rows(org, &batch).await.unwrap();
        let devices = (0..40)
            .map(|i| DeviceName { devicetype: 130, deviceid: 200 + i, name: format!("svc-{i}"), ..Default::default() })
            .collect();
        store.insert_names(org, &NameTables { devices, ..Default::default() }).await.unwrap();
        eprintln!("loaded {rows} rows in {:.1} s", t.elapsed().as_secs_f64());
        let search_store = store.clone();
        let search_tracer = TraceService::new(store.clone(), TraceParams::default());

        let params = TraceParams {
            l7_tracing_limit: 20_000,
            ..TraceParams::default()
        };
        let tempo = TempoService::new(
            TraceService::new(store, params),
            TempoConfig {
                max_flows: 20_000,
                ..TempoConfig::default()
            },
            CacheConfig {
                max_entries: 0,
                ..CacheConfig::default()
            },
        );
        let mut small = Vec::new();
        let step = (entries.len() / runs_small).max(1);
        // One trace untimed (cache off: the timed traces are read anew).
        tempo
            .trace(org, TraceId::zero_code(entries[1]), None)
            .await
            .unwrap()
            .expect("trace found");
        for k in 0..runs_small {
            let id = TraceId::zero_code(entries[(k * step) % entries.len()]);
            let t = Instant::now();
            let trace = tempo
                .trace(org, id, None)
                .await
                .unwrap()
                .expect("trace found");
            small.push(sample(t, &trace));
        }
        let mut large = Vec::new();
        for _ in 0..runs_big {
            let id = TraceId::zero_code(big.entry_id);
            let t = Instant::now();
            let trace = tempo
                .trace(org, id, None)
                .await
                .unwrap()
                .expect("trace found");
            large.push(sample(t, &trace));
        }
        // Search and tag values over the last hour (the whole table).
        let now_s = now_us / 1_000_000;
        let query = deepflow_tempo::traceql::parse(r#"{resource.service.name="svc-3" && duration>100ms}"#).unwrap();
        let req = SearchRequest { query, start_s: now_s - 3700, end_s: now_s, limit: 20, spss: 3, deadline: None };
        let mut searches = Vec::new();
        let mut found = 0;
        for _ in 0..if full { 10 } else { 2 } {
            let t = Instant::now();
            let r = search::search(&search_tracer, org, &req, &SearchConfig::default(), 60).await.unwrap();
            searches.push(t.elapsed().as_micros() as u64);
            found = r.traces.len();
        }
        // Trace-level search: `limit` traces found, each assembled; against opening one trace.
        let trace_searches = trace_level_searches(&search_tracer, org, now_s, if full { 10 } else { 2 }).await;
        let mut tag_values = Vec::new();
        let mut services = 0;
        let q = FlowQuery::new(Filter::True).window(TimeWindow::new((now_s - 3700) as u32, now_s as u32)).limit(1000);
        for _ in 0..if full { 10 } else { 2 } {
            let t = Instant::now();
            services = search_store.distinct_values(org, &q, &Facet::Service).await.unwrap().len();
            tag_values.push(t.elapsed().as_micros() as u64);
        }
        let url = common::clickhouse_url().expect("the store's ClickHouse");
        let metrics_runs = if full { 20 } else { 2 };
        let (metrics_service, metrics_hand, series) =
            metrics_vs_hand(search_store.as_ref(), &url, org, now_s, metrics_runs).await;
        searches.sort_unstable();
        tag_values.sort_unstable();

        println!("\n{rows} rows in l7_flow_log\n");
        println!("| trace | flows | requests | p50 ms | p99 ms | total / ClickHouse time | queries | mean store ms | mean search ms | mean assembly ms | mean encode ms |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        report("zero-code, ~100 flows", &small);
        report("zero-code, ~10,000 flows", &large);
        println!("\n| query | requests | p50 ms | p99 ms | result |");
        println!("|---|---|---|---|---|");
        println!(
            "| search `{{resource.service.name=\"svc-3\" && duration>100ms}}`, last hour | {} | {:.1} | {:.1} | {found} traces |",
            searches.len(),
            pct(&searches, 0.5),
            pct(&searches, 0.99)
        );
        let mut one: Vec<u64> = small.iter().map(|s| s.total_us).collect();
        one.sort_unstable();
        print_trace_searches("ClickHouse", &trace_searches, pct(&one, 0.5));
        println!(
            "| tag values `resource.service.name`, last hour | {} | {:.1} | {:.1} | {services} values |",
            tag_values.len(),
            pct(&tag_values, 0.5),
            pct(&tag_values, 0.99)
        );
        embedded_report(full).await;
        println!("\n| TraceQL metrics, last hour, step 60 s | runs | service p50 ms | service p99 ms | hand-written SQL p50 ms | hand-written SQL p99 ms | p50 service / hand | series |");
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| `{}` | {} | {:.1} | {:.1} | {:.1} | {:.1} | **{:.2}** | {series} |",
            METRICS_QUERY.replace('|', "\\|"),
            metrics_service.len(),
            pct(&metrics_service, 0.5),
            pct(&metrics_service, 0.99),
            pct(&metrics_hand, 0.5),
            pct(&metrics_hand, 0.99),
            pct(&metrics_service, 0.5) / pct(&metrics_hand, 0.5)
        );
    });
}
