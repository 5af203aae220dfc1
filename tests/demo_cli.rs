//! `deepflow-tempo demo` end to end: it loads the embedded store, serves it, prints trace IDs
//! of both kinds that open with application, eBPF and network spans, `{}` finds traces, and
//! every query of the provisioned dashboard finds some (traces, or series for its TraceQL
//! metrics panels).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Demo {
    child: Child,
    url: String,
    ids: Vec<(String, String)>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &std::path::Path) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deepflow-tempo"))
        .args([
            "--log",
            "warn",
            "--listen",
            "127.0.0.1:0",
            "--embedded-path",
        ])
        .arg(dir.join("demo.db"))
        .args(["demo", "--minutes", "2", "--rate", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start deepflow-tempo demo");
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    let mut ids = Vec::new();
    let mut lines = Vec::new();
    for line in out.lines() {
        let line = line.unwrap();
        lines.push(line.clone());
        if let Some(u) = line.strip_prefix("serving the Tempo API on ") {
            url = u.trim().to_string();
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if let Some(last) = words.last() {
            if last.len() == 32 && last.chars().all(|c| c.is_ascii_hexdigit()) {
                ids.push((line.clone(), last.to_string()));
            }
        }
        if ids.len() == 4 {
            break;
        }
    }
    assert!(!url.is_empty(), "no URL printed:\n{}", lines.join("\n"));
    assert!(
        lines[0].starts_with("loaded ") && lines[0].contains("requests"),
        "{}",
        lines[0]
    );
    Demo { child, url, ids }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_traces_of_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let demo = start(dir.path());
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{}{path}", demo.url);
        async move {
            let r = http.get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }
    };

    // Both kinds of printed trace ID open, with app, eBPF and network spans.
    assert!(demo.ids.iter().any(|(l, _)| l.contains("app-instrumented")));
    assert!(demo
        .ids
        .iter()
        .any(|(l, id)| l.contains("zero-code") && id.starts_with("64656570666c6f77")));
    for (line, id) in &demo.ids {
        let (status, body) = get(format!("/api/v2/traces/{id}")).await;
        assert_eq!(status, 200, "{line}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut scopes = std::collections::BTreeSet::new();
        for rs in v["trace"]["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                scopes.insert(ss["scope"]["name"].as_str().unwrap().to_string());
            }
        }
        for want in ["deepflow.app", "deepflow.ebpf", "deepflow.network"] {
            assert!(scopes.contains(want), "{line}: no {want} spans");
        }
        let (status, _) = get(format!("/api/traces/{id}")).await;
        assert_eq!(status, 200, "{line}: v1");
    }

    // `{}` finds traces; so does every dashboard query.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("grafana-provisioning/dashboards/deepflow-traces.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queries = vec!["{}".to_string()];
    let mut metrics = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        // Rows hold no queries; time series panels plot TraceQL metrics.
        for t in p["targets"].as_array().into_iter().flatten() {
            let q = t["query"].as_str().unwrap().to_string();
            if t.get("metricsQueryType").is_some() {
                metrics.push(q);
            } else {
                queries.push(q);
            }
        }
    }
    assert!(
        !metrics.is_empty(),
        "the dashboard plots no TraceQL metrics"
    );
    for q in metrics {
        let enc: String = url_encode(&q);
        let (status, body) = get(format!("/api/metrics/query_range?q={enc}&since=1h")).await;
        assert_eq!(status, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            !v["series"].as_array().unwrap().is_empty(),
            "{q} plots nothing"
        );
    }
    for q in queries {
        let enc: String = url_encode(&q);
        let (status, body) = get(format!("/api/search?q={enc}&limit=5")).await;
        assert_eq!(status, 200, "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let traces = v["traces"].as_array().unwrap();
        assert!(!traces.is_empty(), "{q} found nothing");
        // Search hits open by ID.
        let id = traces[0]["traceID"].as_str().unwrap();
        let (status, _) = get(format!("/api/v2/traces/{id}")).await;
        assert_eq!(status, 200, "{q}: hit {id} does not open");
    }
}

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
