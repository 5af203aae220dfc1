//! The compose stack, the Dockerfile and the Grafana provisioning, checked without a container
//! engine: the files parse, services, volumes, ports and mounts are consistent, the data source
//! is a Tempo data source whose uid the dashboard uses, every dashboard query is TraceQL the
//! server accepts (time series panels: metrics queries it runs), and the Dockerfile builds the
//! binary CI builds.

use deepflow_tempo::traceql::RootExpr;
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(
        "grafana-provisioning/dashboards/deepflow-traces.json",
    ))
    .expect("the dashboard is valid JSON")
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for k in path {
        cur = cur
            .get(*k)
            .unwrap_or_else(|| panic!("missing key {k} (path {path:?})"));
    }
    cur
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn list(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(str_of).collect())
        .unwrap_or_default()
}

#[test]
fn compose_services_volumes_and_ports_are_consistent() {
    let c = yaml("docker-compose.yml");
    let services = s(&c, &["services"]).as_mapping().expect("services map");
    let names: BTreeSet<String> = services.keys().map(str_of).collect();
    for want in ["clickhouse", "loader", "deepflow-tempo", "grafana"] {
        assert!(names.contains(want), "no service {want}");
    }
    let declared: BTreeSet<String> = s(&c, &["volumes"])
        .as_mapping()
        .expect("volumes map")
        .keys()
        .map(str_of)
        .collect();
    let mut host_ports = BTreeSet::new();
    for (name, svc) in services {
        let name = str_of(name);
        // depends_on names real services (list or map form).
        if let Some(dep) = svc.get("depends_on") {
            let deps: Vec<String> = match dep {
                Value::Sequence(_) => list(dep),
                Value::Mapping(m) => m.keys().map(str_of).collect(),
                _ => panic!("{name}: bad depends_on"),
            };
            for d in deps {
                assert!(names.contains(&d), "{name} depends on unknown {d}");
            }
        }
        // Named volumes are declared; bind mounts exist in the repository.
        for v in svc.get("volumes").map(list).unwrap_or_default() {
            let src = v.split(':').next().unwrap();
            if src.starts_with("./") {
                assert!(root().join(src).exists(), "{name}: {src} does not exist");
            } else {
                assert!(
                    declared.contains(src),
                    "{name}: volume {src} is not declared"
                );
            }
        }
        // Ports are published on the loopback only, once each.
        for p in svc.get("ports").map(list).unwrap_or_default() {
            let parts: Vec<&str> = p.split(':').collect();
            assert_eq!(
                parts.len(),
                3,
                "{name}: port {p} must be HOST_IP:HOST:CONTAINER"
            );
            assert_eq!(
                parts[0], "127.0.0.1",
                "{name}: port {p} is not loopback-only"
            );
            assert!(
                host_ports.insert(parts[1].to_string()),
                "host port {p} twice"
            );
        }
    }
    // Pinned images.
    for svc in ["clickhouse", "grafana"] {
        let image = str_of(s(&c, &["services", svc, "image"]));
        let tag = image.rsplit_once(':').map(|t| t.1).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && tag.chars().next().unwrap().is_ascii_digit(),
            "{svc}: image {image} is not pinned"
        );
    }
    assert!(str_of(s(&c, &["services", "clickhouse", "image"])).starts_with("clickhouse/"));
    assert!(str_of(s(&c, &["services", "grafana", "image"])).starts_with("grafana/grafana:"));
    assert!(s(&c, &["services", "clickhouse", "healthcheck", "test"]).is_sequence());

    // ClickHouse gets DeepFlow's cluster and storage policy.
    let ch_mounts = list(s(&c, &["services", "clickhouse", "volumes"]));
    let cfg = ch_mounts
        .iter()
        .find(|m| m.contains("/etc/clickhouse-server/config.d/"))
        .expect("a ClickHouse config file is mounted");
    let xml = read(cfg.split(':').next().unwrap());
    for want in [
        "<df_cluster>",
        "<df_storage>",
        "<tcp_port>9000</tcp_port>",
        "<port>9000</port>",
    ] {
        assert!(xml.contains(want), "ClickHouse config lacks {want}");
    }

    // The loader applies the schema, then loads without serving, into that ClickHouse.
    let loader = s(&c, &["services", "loader"]);
    let cmd = list(s(loader, &["command"])).join(" ");
    let apply = cmd
        .find("schema --apply")
        .expect("loader applies the schema");
    let load = cmd
        .find("demo --load-only")
        .expect("loader runs demo --load-only");
    assert!(apply < load);
    assert_eq!(
        str_of(s(loader, &["depends_on", "clickhouse", "condition"])),
        "service_healthy"
    );
    for svc in ["loader", "deepflow-tempo"] {
        let env = s(&c, &["services", svc, "environment"]);
        assert_eq!(str_of(s(env, &["DFT_STORE"])), "clickhouse");
        let url = str_of(s(env, &["DFT_CLICKHOUSE__URL"]));
        assert!(url.starts_with("http://clickhouse:"), "{svc}: {url}");
        assert_eq!(str_of(s(&c, &["services", svc, "build"])), ".");
    }
    assert_eq!(
        str_of(s(
            &c,
            &[
                "services",
                "deepflow-tempo",
                "depends_on",
                "loader",
                "condition"
            ]
        )),
        "service_completed_successfully"
    );

    // The service listens where the data source points.
    let listen = str_of(s(
        &c,
        &["services", "deepflow-tempo", "environment", "DFT_LISTEN"],
    ));
    let port = listen.rsplit(':').next().unwrap().to_string();
    let ds = yaml("grafana-provisioning/datasources/deepflow-tempo.yaml");
    let url = str_of(s(&ds["datasources"][0], &["url"]));
    assert_eq!(url, format!("http://deepflow-tempo:{port}"));
    assert!(list(s(&c, &["services", "deepflow-tempo", "ports"]))
        .iter()
        .any(|p| p.ends_with(&format!(":{port}"))));

    // Grafana: provisioning mounted, anonymous viewers.
    let g = s(&c, &["services", "grafana"]);
    assert!(list(s(g, &["volumes"]))
        .iter()
        .any(|v| v.starts_with("./grafana-provisioning:/etc/grafana/provisioning")));
    assert_eq!(
        str_of(s(g, &["environment", "GF_AUTH_ANONYMOUS_ENABLED"])),
        "true"
    );
    assert_eq!(
        str_of(s(g, &["environment", "GF_AUTH_ANONYMOUS_ORG_ROLE"])),
        "Viewer"
    );
}

#[test]
fn the_data_source_is_tempo_with_the_uid_the_dashboard_uses() {
    let ds = yaml("grafana-provisioning/datasources/deepflow-tempo.yaml");
    assert_eq!(str_of(s(&ds, &["apiVersion"])), "1");
    let d = &ds["datasources"][0];
    assert_eq!(str_of(s(d, &["type"])), "tempo");
    let uid = str_of(s(d, &["uid"]));
    let j = s(d, &["jsonData"]);
    assert_eq!(str_of(s(j, &["streamingEnabled", "search"])), "false");
    assert_eq!(str_of(s(j, &["nodeGraph", "enabled"])), "true");
    assert_eq!(str_of(s(j, &["search", "hide"])), "false");
    assert_eq!(str_of(s(j, &["traceQuery", "timeShiftEnabled"])), "true");
    for k in ["spanStartTimeShift", "spanEndTimeShift"] {
        let v = str_of(s(j, &["traceQuery", k]));
        assert!(
            deepflow_tempo::traceql::duration::parse_duration(&v).is_some(),
            "{k}: {v}"
        );
    }

    let dash = dashboard();
    assert_eq!(dash["title"], "DeepFlow traces");
    let mut uids = BTreeSet::new();
    fn walk(v: &serde_json::Value, uids: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let (Some(t), Some(u)) = (m.get("type"), m.get("uid")) {
                    if t == "tempo" {
                        uids.insert(u.as_str().unwrap().to_string());
                    }
                }
                m.values().for_each(|x| walk(x, uids));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, uids)),
            _ => {}
        }
    }
    walk(&dash, &mut uids);
    assert_eq!(uids, BTreeSet::from([uid.clone()]));

    // The provider loads the directory the dashboard is in (as mounted in the container).
    let p = yaml("grafana-provisioning/dashboards/deepflow-tempo.yaml");
    let path = str_of(s(&p["providers"][0], &["options", "path"]));
    assert_eq!(path, "/etc/grafana/provisioning/dashboards");
    assert_eq!(str_of(s(&p["providers"][0], &["type"])), "file");
}

#[test]
fn dashboard_queries_are_valid_traceql_and_trace_ids_link_to_explore() {
    let dash = dashboard();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 3);
    let mut titles = Vec::new();
    let mut metrics_queries = Vec::new();
    for p in panels {
        let title = p["title"].as_str().unwrap().to_string();
        if p["type"] == "row" {
            assert!(p.get("targets").is_none(), "{title}: a row has no queries");
            continue;
        }
        let timeseries = p["type"] == "timeseries";
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["queryType"], "traceql", "{title}");
            let q = t["query"].as_str().unwrap();
            let parsed = deepflow_tempo::traceql::parse(q)
                .unwrap_or_else(|e| panic!("{title}: {q:?} is rejected: {e}"));
            let metrics = matches!(parsed.root, RootExpr::Metrics(_));
            // Time series plot TraceQL metrics (range queries) this service runs; tables list
            // search hits.
            assert_eq!(metrics, timeseries, "{title}: {q:?}");
            if timeseries {
                assert_eq!(t["metricsQueryType"], "range", "{title}");
                deepflow_tempo::query::metrics::check(&parsed, false)
                    .unwrap_or_else(|e| panic!("{title}: {q:?} cannot run: {e}"));
                metrics_queries.push(q.to_string());
            }
        }
        if timeseries {
            titles.push(title);
            continue;
        }
        // The trace ID column links to the Explore trace view of this data source.
        let links: Vec<&serde_json::Value> = p["fieldConfig"]["overrides"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["matcher"]["options"] == "traceID")
            .flat_map(|o| o["properties"].as_array().unwrap())
            .filter(|pr| pr["id"] == "links")
            .flat_map(|pr| pr["value"].as_array().unwrap())
            .collect();
        assert!(!links.is_empty(), "{title}: trace IDs have no link");
        for l in links {
            let url = l["url"].as_str().unwrap();
            assert!(url.starts_with("/explore?"), "{url}");
            let decoded = percent_encoding::percent_decode_str(url)
                .decode_utf8()
                .unwrap()
                .to_string();
            let panes: serde_json::Value =
                serde_json::from_str(decoded.split("panes=").nth(1).unwrap()).unwrap();
            let pane = panes.as_object().unwrap().values().next().unwrap();
            assert_eq!(pane["queries"][0]["datasource"]["uid"], "deepflow-tempo");
            assert_eq!(pane["queries"][0]["query"], "${__value.raw}");
        }
        titles.push(title);
    }
    assert!(titles
        .iter()
        .any(|t| t.contains("slow") && t.contains("failing")));
    assert!(titles.iter().filter(|t| t.starts_with("Entry:")).count() >= 2);
    for want in [
        "{} | rate() by (resource.service.name)",
        "{ status = error } | rate() by (resource.service.name)",
        "{} | quantile_over_time(duration, 0.9) by (resource.service.name)",
    ] {
        assert!(
            metrics_queries.iter().any(|q| q == want),
            "no panel plots {want}"
        );
    }
}

#[test]
fn the_dockerfile_builds_the_ci_binary_into_a_small_non_root_image() {
    let d = read("Dockerfile");
    let froms: Vec<&str> = d.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: a build and a runtime stage");
    assert!(froms[0].contains(" AS build"));
    assert!(froms[1].contains("-slim") || froms[1].contains("distroless"));
    // The binary CI builds is the crate's [[bin]] deepflow-tempo.
    let cargo = read("Cargo.toml");
    assert!(cargo.contains("[[bin]]\nname = \"deepflow-tempo\""));
    assert!(d.contains("cargo build --release --locked --bin deepflow-tempo"));
    assert!(d.contains("COPY --from=build /src/target/release/deepflow-tempo "));
    let user = d
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    assert!(d.contains("ENTRYPOINT [\"deepflow-tempo\"]"));
    // The build context leaves out build output and local data.
    let ignore = read(".dockerignore");
    for want in ["target/", ".git/", "data/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == want),
            "{want} not ignored"
        );
    }
    assert!(Path::new(&root().join("Cargo.lock")).exists());
}
