//! The binary end to end on the embedded store: `load` JSON Lines, then `trace` as a tree and
//! as DeepFlow's L7FlowTracing `DATA` object.

mod common;

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
    for span in data["tracing"].as_array().unwrap() {
        for f in common::SPAN_FIELDS {
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
