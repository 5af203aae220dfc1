//! The real server over HTTP: health endpoints on both stores, `/ready` following a ClickHouse
//! outage and recovery without a restart, and the binary's configuration errors.

mod common;

use common::Front;
use deepflow_tempo::server;
use deepflow_tempo::store::clickhouse::ClickHouseStore;
use deepflow_tempo::store::SharedStore;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Start the server on a free loopback port; returns its base URL.
fn start(store: SharedStore) -> String {
    let state = server::app_state(&deepflow_tempo::config::Config::default(), store);
    let (srv, addrs) = server::bind(state, "127.0.0.1:0").expect("bind");
    tokio::spawn(srv);
    format!("http://{}", addrs[0])
}

async fn get(url: &str) -> (u16, String, String) {
    let resp = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

async fn check_health(base: &str) {
    let (s, ct, body) = get(&format!("{base}/api/echo")).await;
    assert_eq!((s, body.as_str()), (200, "echo\n"));
    assert!(ct.starts_with("text/plain"), "{ct}");
    let (s, _, body) = get(&format!("{base}/ready")).await;
    assert_eq!((s, body.as_str()), (200, "ready\n"));
    let (s, ct, body) = get(&format!("{base}/api/status/buildinfo")).await;
    assert_eq!(s, 200);
    assert!(ct.starts_with("application/json"), "{ct}");
    let info: serde_json::Value = serde_json::from_str(&body).unwrap();
    for key in [
        "version",
        "revision",
        "branch",
        "buildUser",
        "buildDate",
        "goVersion",
    ] {
        assert!(info[key].is_string(), "buildinfo lacks {key}: {body}");
    }
    // Grafana gates features on semver >= 2.7.0 (streaming) and v2 trace lookups.
    let v: Vec<u64> = info["version"]
        .as_str()
        .unwrap()
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(v.as_slice() >= [2, 9, 0].as_slice(), "{v:?}");
    assert!(info["revision"]
        .as_str()
        .unwrap()
        .contains("deepflow-tempo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_on_the_embedded_store() {
    let (store, _) = common::sqlite_store().await;
    check_health(&start(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_on_clickhouse() {
    let Some((store, _)) = common::clickhouse_store().await else {
        return;
    };
    check_health(&start(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_a_clickhouse_outage_without_restart() {
    if common::clickhouse_url().is_none() {
        return;
    }
    // A front of our own, so it can be stopped and started again on the same port.
    let front = Front::start(0).expect("start a ClickHouse front");
    let port = front.port;
    let mut settings = common::clickhouse_settings(&front.url);
    settings.timeout = Duration::from_secs(5);
    let store: SharedStore = Arc::new(ClickHouseStore::new(settings).unwrap());
    let base = start(store);
    assert_eq!(get(&format!("{base}/ready")).await.0, 200);

    front.stop();
    let t = Instant::now();
    let (s, ct, body) = get(&format!("{base}/ready")).await;
    assert_eq!(s, 503, "{body}");
    assert!(ct.starts_with("text/plain"));
    assert!(body.contains("clickhouse store not ready"), "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "503 must come promptly"
    );
    // Health that does not need the store stays up.
    assert_eq!(get(&format!("{base}/api/echo")).await.0, 200);

    let front = Front::start(port).expect("restart the front on the same port");
    let mut ok = false;
    for _ in 0..50 {
        if get(&format!("{base}/ready")).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    front.stop();
    assert!(ok, "/ready did not recover after ClickHouse came back");
}

#[test]
fn invalid_configuration_exits_2_naming_the_key() {
    let bin = env!("CARGO_BIN_EXE_deepflow-tempo");
    for (env, key) in [
        (("DFT_CLICKHOUSE__TIMEOUT", "soon"), "clickhouse.timeout"),
        (("DFT_LISTEN", "nowhere"), "listen"),
        (("DFT_STORE", "mysql"), "store"),
    ] {
        let out = std::process::Command::new(bin)
            .arg("serve")
            .env(env.0, env.1)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{env:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(key), "{err}");
    }
    let out = std::process::Command::new(bin)
        .args(["--clickhouse-timeout", "x", "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for (key, env, _, _) in deepflow_tempo::config::KEYS {
        assert!(
            help.contains(key) && help.contains(env),
            "--help lacks {key}"
        );
    }
}

#[test]
fn the_binary_serves_health_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sub/dft.db");
    // `--listen 127.0.0.1:0`: the fixture reads the URL the binary prints and waits for a
    // 200 from `/ready`.
    let p = common::ServeProcess::start(&[], &[("DFT_EMBEDDED__PATH", db.to_str().unwrap())]);
    assert!(p.base.starts_with("http://127.0.0.1:"), "{}", p.base);
    assert!(
        !p.base.ends_with(":0"),
        "the bound port is printed: {}",
        p.base
    );
    drop(p);
    assert!(
        db.exists(),
        "the embedded store file is created with its directory"
    );
}
