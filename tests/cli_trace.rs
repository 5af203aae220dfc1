//! The binary end to end on the embedded store: `load` JSON Lines, then `trace` as a tree and
//! as DeepFlow's L7FlowTracing `DATA` object.

use deepflow_tempo::synth;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_deepflow-tempo"))
}

#[test]
fn load_then_trace_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.db");
    let trace = synth::zero_code_trace(
        3,
        1_700_000_000_000_000,
        synth::Shape {
            calls: 5,
            fanout: 2,
            services: 3,
        },
        &mut synth::Keys::new(0),
    );
    let jsonl: String = trace
        .rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let file = dir.path().join("rows.jsonl");
    std::fs::write(&file, jsonl).unwrap();
    let out = bin()
        .args(["--log", "warn", "--embedded-path"])
        .arg(&db)
        .arg("load")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("loaded 20 rows"));

    let out = bin()
        .args(["--log", "warn", "--embedded-path"])
        .arg(&db)
        .args(["trace", "--id", &trace.entry_id.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20, "{text}");
    assert!(lines[0].starts_with("c-p "), "{text}");
    assert!(lines[1].starts_with("  c "), "{text}");
    assert!(text.contains("trace mounted due to tcp_seq"));
    assert!(text.contains("c-p sys-span mounted due to syscall_trace_id matched to s-p root"));

    let out = bin()
        .args(["--log", "warn", "--embedded-path"])
        .arg(&db)
        .args(["trace", "--json", "--id", &trace.entry_id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let data: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(data["tracing"].as_array().unwrap().len(), 20);
    assert!(data["services"].is_array());
    assert!(data["host_clock_correction"].is_object());
    // Every §7.9 field is present on every span.
    let fields = [
        "id",
        "_ids",
        "related_ids",
        "signal_source",
        "type",
        "start_time_us",
        "end_time_us",
        "duration",
        "selftime",
        "tap_side",
        "Enum(tap_side)",
        "l7_protocol",
        "Enum(l7_protocol)",
        "l7_protocol_str",
        "endpoint",
        "request_type",
        "request_resource",
        "response_status",
        "response_exception",
        "biz_response_code",
        "response_code",
        "flow_id",
        "request_id",
        "x_request_id_0",
        "x_request_id_1",
        "span_id",
        "parent_span_id",
        "req_tcp_seq",
        "resp_tcp_seq",
        "syscall_cap_seq_0",
        "syscall_cap_seq_1",
        "syscall_trace_id_request",
        "syscall_trace_id_response",
        "trace_id",
        "attribute",
        "parent_id",
        "childs",
        "process_id",
        "vtap_id",
        "service_uid",
        "service_uname",
        "app_service",
        "app_instance",
        "tap_port",
        "tap_port_name",
        "resource_from_vtap",
        "set_parent_info",
        "auto_instance",
        "auto_instance_id",
        "auto_instance_type",
        "tap_id",
        "tap",
        "_querier_region",
        "is_tls",
        "is_async",
        "subnet",
        "ip",
        "process_kname",
        "gprocess",
        "auto_service",
        "auto_service_id",
        "auto_service_type",
        "deepflow_span_id",
        "deepflow_parent_span_id",
        "render_start_time_us",
        "render_end_time_us",
    ];
    for span in data["tracing"].as_array().unwrap() {
        for f in fields {
            assert!(span.get(f).is_some(), "span lacks {f}: {span}");
        }
        assert!(span["flow_id"].is_string() && span["syscall_trace_id_request"].is_string());
    }

    let out = bin()
        .args(["--log", "warn", "--embedded-path"])
        .arg(&db)
        .args(["trace", "--json", "--id", "123"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), "{}");
}
