//! Credentials over HTTP: bearer token, basic auth, both, neither; every Grafana route and
//! DeepFlow's API behind them; `/ready` and `/metrics` open or closed by their switches; 401s
//! with a challenge and a plain-text reason, never a 404 that would reveal the routes.

mod common;

use base64::Engine;
use deepflow_tempo::config::{AuthConfig, Config};
use deepflow_tempo::server;
use std::time::Duration;

/// Routes Grafana calls (each must need credentials when auth is on).
const GRAFANA_ROUTES: &[&str] = &[
    "/api/echo",
    "/api/status/buildinfo",
    "/api/search?q=%7B%7D",
    "/api/search/tags",
    "/api/v2/search/tags",
    "/api/v2/search/tag/resource.service.name/values",
    "/api/traces/0af7651916cd43dd8448eb211c80319c",
    "/api/v2/traces/0af7651916cd43dd8448eb211c80319c",
];

struct Srv {
    base: String,
    http: reqwest::Client,
}

async fn start(auth: AuthConfig) -> Srv {
    let (store, _) = common::sqlite_store().await;
    let cfg = Config {
        auth,
        ..Config::default()
    };
    let (srv, addrs) = server::bind(server::app_state(&cfg, store), "127.0.0.1:0").unwrap();
    tokio::spawn(srv);
    Srv {
        base: format!("http://{}", addrs[0]),
        http: common::http_client(),
    }
}

fn auth(token: &str, user: &str, password: &str) -> AuthConfig {
    AuthConfig {
        token: token.into(),
        user: user.into(),
        password: password.into(),
        ..Config::default().auth
    }
}

fn basic(user_password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    content_type: String,
    body: String,
}

impl Srv {
    async fn get(&self, path: &str, authorization: Option<&str>) -> Answer {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30));
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let challenge = header("www-authenticate");
        let content_type = header("content-type").unwrap_or_default();
        Answer {
            status: resp.status().as_u16(),
            challenge,
            content_type,
            body: resp.text().await.unwrap(),
        }
    }

    async fn post_tracing(&self, authorization: Option<&str>) -> u16 {
        let mut req = self
            .http
            .post(format!("{}/v1/stats/querier/L7FlowTracing", self.base))
            .json(&serde_json::json!({
                "time_start": 1_699_999_900,
                "time_end": 1_700_000_100,
                "database": "flow_log",
                "table": "l7_flow_log",
                "_id": "1",
            }));
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        req.send().await.unwrap().status().as_u16()
    }

    /// Every Grafana route and DeepFlow's API answer (not 401) with these credentials.
    async fn all_served(&self, authorization: Option<&str>) {
        for path in GRAFANA_ROUTES {
            let a = self.get(path, authorization).await;
            assert!(
                a.status != 401 && a.status < 500,
                "{path} with {authorization:?}: {} {}",
                a.status,
                a.body
            );
        }
        assert_eq!(self.post_tracing(authorization).await, 200);
    }

    /// Every Grafana route and DeepFlow's API answer 401 with these credentials.
    async fn all_refused(&self, authorization: Option<&str>) {
        for path in GRAFANA_ROUTES {
            let a = self.get(path, authorization).await;
            assert_eq!(a.status, 401, "{path} with {authorization:?}: {}", a.body);
            assert!(
                a.challenge.is_some(),
                "{path}: 401 without WWW-Authenticate"
            );
            assert!(
                a.content_type.starts_with("text/plain"),
                "{}",
                a.content_type
            );
        }
        assert_eq!(self.post_tracing(authorization).await, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_configured_everything_is_open() {
    let s = start(Config::default().auth).await;
    s.all_served(None).await;
    // A stray Authorization header changes nothing.
    s.all_served(Some("Bearer whatever")).await;
    assert_eq!(s.get("/metrics", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_right_wrong_and_missing() {
    let s = start(auth("t0ken-1", "", "")).await;
    s.all_served(Some("Bearer t0ken-1")).await;
    s.all_served(Some("bearer t0ken-1")).await;
    s.all_refused(None).await;
    s.all_refused(Some("Bearer t0ken-2")).await;
    s.all_refused(Some("Bearer t0ken-")).await;
    s.all_refused(Some("Bearer")).await;
    s.all_refused(Some("t0ken-1")).await;
    // Basic auth is not configured: a basic header is refused even with the token in it.
    s.all_refused(Some(&basic("t0ken-1:t0ken-1"))).await;
    let a = s.get("/api/echo", None).await;
    assert!(a.body.contains("missing credentials"), "{}", a.body);
    assert!(a.body.contains("Bearer"), "{}", a.body);
    let a = s.get("/api/echo", Some("Bearer nope")).await;
    assert!(a.body.contains("invalid credentials"), "{}", a.body);
    assert!(
        !a.body.contains("t0ken-1"),
        "the secret never appears: {}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_right_and_wrong() {
    let s = start(auth("", "grafana", "s3cret:pass")).await;
    s.all_served(Some(&basic("grafana:s3cret:pass"))).await;
    s.all_refused(None).await;
    s.all_refused(Some(&basic("grafana:s3cret"))).await;
    s.all_refused(Some(&basic("grafana2:s3cret:pass"))).await;
    s.all_refused(Some(&basic("grafana"))).await;
    s.all_refused(Some("Basic %%%")).await;
    s.all_refused(Some("Bearer s3cret:pass")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_both_configured_either_is_accepted() {
    let s = start(auth("tok", "u", "p")).await;
    s.all_served(Some("Bearer tok")).await;
    s.all_served(Some(&basic("u:p"))).await;
    s.all_refused(None).await;
    s.all_refused(Some("Bearer p")).await;
    s.all_refused(Some(&basic("u:tok"))).await;
    let a = s.get("/api/echo", None).await;
    assert!(
        a.body.contains("Bearer") && a.body.contains("Basic"),
        "{}",
        a.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_metrics_are_open_by_default_and_can_be_closed() {
    let s = start(auth("tok", "", "")).await;
    assert_eq!(s.get("/ready", None).await.status, 200);
    assert_eq!(s.get("/metrics", None).await.status, 200);
    // Only the exact paths are open.
    assert_eq!(s.get("/ready/", None).await.status, 401);

    let closed = AuthConfig {
        open_ready: false,
        open_metrics: false,
        ..auth("tok", "", "")
    };
    let s = start(closed).await;
    for path in ["/ready", "/metrics"] {
        assert_eq!(s.get(path, None).await.status, 401, "{path}");
        assert_eq!(s.get(path, Some("Bearer bad")).await.status, 401, "{path}");
        assert_eq!(s.get(path, Some("Bearer tok")).await.status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_are_401_before_404() {
    let s = start(auth("tok", "", "")).await;
    assert_eq!(s.get("/no/such/route", None).await.status, 401);
    assert_eq!(
        s.get("/no/such/route", Some("Bearer tok")).await.status,
        404
    );
}
