//! Profiling aid: assemble and encode one generated 10,000-flow trace 20 times (no store) and
//! print the mean of each phase. `cargo build --release --example profile_encode`, then run it
//! under `perf record -g` or `valgrind --tool=callgrind`. An argument sets the number of runs.
use deepflow_tempo::store::model::FlowRecord;
use deepflow_tempo::synth;
use deepflow_tempo::tempo::ids::TraceId;
use std::time::Instant;

fn main() {
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
    let records: Vec<FlowRecord> = trace
        .rows
        .iter()
        .map(|r| FlowRecord {
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
            endpoint: r.endpoint.clone(),
            request_type: r.request_type.clone(),
            request_domain: r.request_domain.clone(),
            request_resource: r.request_resource.clone(),
            response_code: r.response_code,
            server_port: r.server_port,
            ip_0: "10.0.0.1".into(),
            ip_1: "10.0.0.2".into(),
            ..FlowRecord::default()
        })
        .collect();
    let id = TraceId::zero_code(trace.entry_id);
    let runs: u128 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let (mut ta, mut te) = (0u128, 0u128);
    for _ in 0..runs {
        // The service moves fetched records into the engine: copy them outside the timing.
        let input = records.clone();
        let t = Instant::now();
        // As the Tempo service assembles: the tree without DeepFlow's display fields.
        let result = deepflow_tempo::autotrace::assemble_with(
            input,
            vec![],
            Some(trace.entry_id),
            &Default::default(),
            deepflow_tempo::autotrace::Detail::Tree,
        );
        ta += t.elapsed().as_micros();
        let t = Instant::now();
        let (enc, _size) = deepflow_tempo::tempo::encode::encode_owned(result, &id);
        te += t.elapsed().as_micros();
        // The request keeps the encoding (cached); dropping it is outside its time.
        drop(enc);
    }
    eprintln!(
        "assemble {:.1} ms, encode (consuming the assembled trace) {:.1} ms (mean of {runs})",
        ta as f64 / runs as f64 / 1000.0,
        te as f64 / runs as f64 / 1000.0,
    );
}
