//! Configuration: built-in defaults < TOML file (`--config`) < environment (`DFT_…`, `__` for
//! nesting) < command-line flags. Owns key names, defaults and validation; knows nothing of
//! how the values are used.

use crate::autotrace::TraceParams;
use crate::store::StoreKind;
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

/// The whole configuration. Every key is documented in README.md ("Configuration").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `listen`: address and port the HTTP server binds.
    pub listen: String,
    /// `store`: `embedded` (SQLite file) or `clickhouse` (DeepFlow's ClickHouse).
    pub store: StoreKind,
    /// `log`: log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive).
    pub log: String,
    pub embedded: EmbeddedConfig,
    pub clickhouse: ClickHouseConfig,
    /// `tracing.*`: DeepFlow's auto-tracing parameters (`app.yaml` of deepflow-app).
    pub tracing: TraceParams,
    pub tempo: TempoConfig,
    pub cache: CacheConfig,
    /// `search.*`: limits of TraceQL search.
    pub search: crate::query::search::SearchConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub tenancy: TenancyConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `limits.request_timeout`: seconds one API request may take before it is answered 504
    /// (its store queries are cancelled).
    pub request_timeout: u64,
    /// `limits.max_body_bytes`: largest request body accepted (larger: 413).
    pub max_body_bytes: usize,
    /// `limits.max_concurrent_queries`: store queries in flight at once, over all requests.
    pub max_concurrent_queries: usize,
    /// `limits.queue_timeout_ms`: how long a query waits for a free slot before the request
    /// is answered 429.
    pub queue_timeout_ms: u64,
    /// `limits.shutdown_grace`: seconds in-flight requests may run after SIGTERM/SIGINT;
    /// past it their store queries are cancelled and the process exits.
    pub shutdown_grace: u64,
    /// `limits.shutdown_delay_ms`: after SIGTERM/SIGINT, ms the server keeps accepting with
    /// `/ready` answering 503 (so a load balancer stops routing to it) before it stops
    /// accepting and drains.
    pub shutdown_delay_ms: u64,
    /// `limits.client_request_timeout_ms`: a client must send a request's headers within
    /// this many ms of connecting (or of its previous answer), else 408 and the connection
    /// is closed.
    pub client_request_timeout_ms: u64,
    /// `limits.client_disconnect_timeout_ms`: ms a closing connection may take to shut down.
    pub client_disconnect_timeout_ms: u64,
    /// `limits.keep_alive`: seconds an idle keep-alive connection is kept open (0: closed
    /// after each answer).
    pub keep_alive: u64,
    /// `limits.max_connections`: open connections per worker thread; past it, new ones wait
    /// in the kernel's accept queue.
    pub max_connections: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            request_timeout: 30,
            max_body_bytes: 8 << 20,
            max_concurrent_queries: 32,
            queue_timeout_ms: 2_000,
            shutdown_grace: 30,
            shutdown_delay_ms: 0,
            client_request_timeout_ms: 5_000,
            client_disconnect_timeout_ms: 1_000,
            keep_alive: 5,
            max_connections: 25_000,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `auth.token`: bearer token the API requires (empty: no bearer auth).
    pub token: String,
    /// `auth.user` / `auth.password`: basic-auth credentials the API requires (empty user: no
    /// basic auth). With both a token and a user set, either is accepted.
    pub user: String,
    pub password: String,
    /// `auth.open_ready`: `/ready` answers without credentials.
    pub open_ready: bool,
    /// `auth.open_metrics`: `/metrics` answers without credentials.
    pub open_metrics: bool,
}

impl AuthConfig {
    /// Whether any credential is configured.
    pub fn enabled(&self) -> bool {
        !self.token.is_empty() || !self.user.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenancyConfig {
    /// `tenancy.allowed_orgs`: organisations a request may read (empty: every organisation).
    pub allowed_orgs: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TempoConfig {
    /// `tempo.lookback`: how far back (seconds) a trace id is looked for when the request has
    /// no time range (Grafana sends none by default).
    pub lookback: u64,
    /// `tempo.zero_code_window`: seconds searched on each side of a zero-code trace's entry row.
    pub zero_code_window: u64,
    /// `tempo.max_flows`: most flows one trace returns; larger traces are cut and flagged.
    pub max_flows: usize,
}

impl Default for TempoConfig {
    fn default() -> Self {
        TempoConfig {
            lookback: 86_400,
            zero_code_window: 60,
            max_flows: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `cache.max_entries`: assembled traces kept (0 disables the cache).
    pub max_entries: usize,
    /// `cache.max_bytes`: total encoded size of the kept traces.
    pub max_bytes: usize,
    /// `cache.ttl`: seconds a trace whose newest row is old stays cached.
    pub ttl: u64,
    /// `cache.recent_ttl`: seconds a trace whose data may still be arriving stays cached.
    pub recent_ttl: u64,
    /// `cache.recent_age`: a trace whose newest row is younger than this (seconds) is recent.
    pub recent_age: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 1_000,
            max_bytes: 256 << 20,
            ttl: 600,
            recent_ttl: 10,
            recent_age: 300,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// `embedded.path`: SQLite file (created if missing) or `:memory:`.
    pub path: String,
    /// `embedded.max_rows`: most rows one read returns.
    pub max_rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// `clickhouse.url`: ClickHouse HTTP interface.
    pub url: String,
    pub user: String,
    pub password: String,
    /// `clickhouse.database`: flow database (org N reads `NNNN_<database>`).
    pub database: String,
    /// `clickhouse.dictionary_database`: DeepFlow's name dictionaries.
    pub dictionary_database: String,
    /// `clickhouse.timeout`: query timeout in seconds.
    pub timeout: u64,
    /// `clickhouse.max_rows`: most rows one query returns (DeepFlow's querier uses 10000).
    pub max_rows: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:3200".into(),
            store: StoreKind::Embedded,
            log: "info".into(),
            embedded: EmbeddedConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            tracing: TraceParams::default(),
            tempo: TempoConfig::default(),
            cache: CacheConfig::default(),
            search: crate::query::search::SearchConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig {
                open_ready: true,
                open_metrics: true,
                ..AuthConfig::default()
            },
            tenancy: TenancyConfig::default(),
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            path: "./data/deepflow-tempo.db".into(),
            max_rows: 10_000,
        }
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            user: "default".into(),
            password: String::new(),
            database: "flow_log".into(),
            dictionary_database: "flow_tag".into(),
            timeout: 30,
            max_rows: 10_000,
        }
    }
}

/// Every key with its environment variable, default and meaning (for `--help` and README).
pub const KEYS: &[(&str, &str, &str, &str)] = &[
    (
        "listen",
        "DFT_LISTEN",
        "0.0.0.0:3200",
        "address:port of the HTTP API",
    ),
    ("store", "DFT_STORE", "embedded", "embedded | clickhouse"),
    (
        "log",
        "DFT_LOG",
        "info",
        "log filter (error, warn, info, debug, trace or a directive)",
    ),
    (
        "embedded.path",
        "DFT_EMBEDDED__PATH",
        "./data/deepflow-tempo.db",
        "SQLite file of the embedded store (created if missing) or :memory:",
    ),
    (
        "embedded.max_rows",
        "DFT_EMBEDDED__MAX_ROWS",
        "10000",
        "most rows one embedded read returns",
    ),
    (
        "clickhouse.url",
        "DFT_CLICKHOUSE__URL",
        "http://127.0.0.1:8123",
        "ClickHouse HTTP interface",
    ),
    (
        "clickhouse.user",
        "DFT_CLICKHOUSE__USER",
        "default",
        "ClickHouse user",
    ),
    (
        "clickhouse.password",
        "DFT_CLICKHOUSE__PASSWORD",
        "(empty)",
        "ClickHouse password",
    ),
    (
        "clickhouse.database",
        "DFT_CLICKHOUSE__DATABASE",
        "flow_log",
        "flow database; org N uses NNNN_<database>",
    ),
    (
        "clickhouse.dictionary_database",
        "DFT_CLICKHOUSE__DICTIONARY_DATABASE",
        "flow_tag",
        "DeepFlow's name dictionaries; org N uses NNNN_<name>",
    ),
    (
        "clickhouse.timeout",
        "DFT_CLICKHOUSE__TIMEOUT",
        "30",
        "query timeout, seconds",
    ),
    (
        "clickhouse.max_rows",
        "DFT_CLICKHOUSE__MAX_ROWS",
        "10000",
        "most rows one ClickHouse query returns",
    ),
    (
        "tracing.max_iteration",
        "DFT_TRACING__MAX_ITERATION",
        "30",
        "auto-tracing search iterations (0 counts as 1)",
    ),
    (
        "tracing.network_delay_us",
        "DFT_TRACING__NETWORK_DELAY_US",
        "50000",
        "time tolerance between flows of one agent, µs",
    ),
    (
        "tracing.host_clock_offset_us",
        "DFT_TRACING__HOST_CLOCK_OFFSET_US",
        "10000",
        "extra tolerance between agents, and the pruning tolerance, µs",
    ),
    (
        "tracing.l7_tracing_limit",
        "DFT_TRACING__L7_TRACING_LIMIT",
        "1000",
        "row limit of every search query",
    ),
    (
        "tracing.tracing_source",
        "DFT_TRACING__TRACING_SOURCE",
        "[trace_id, syscall, tcp_seq, x_request_id]",
        "search dimensions; add dns for DNS request-id tracing",
    ),
    (
        "tracing.span_set_connection_strategies",
        "DFT_TRACING__SPAN_SET_CONNECTION_STRATEGIES",
        "[]",
        "opt-in weak links: net_span_c_to_s_via_trace_id, sys_span_s_to_c_via_trace_id",
    ),
    (
        "tracing.allow_multiple_trace_ids_in_tracing_result",
        "DFT_TRACING__ALLOW_MULTIPLE_TRACE_IDS_IN_TRACING_RESULT",
        "false",
        "let flows found by eBPF/packet/X-Request-ID links bring new trace ids",
    ),
    (
        "tracing.iteration_expand_time_range",
        "DFT_TRACING__ITERATION_EXPAND_TIME_RANGE",
        "0",
        "seconds added on each side of the window of trace-id queries",
    ),
    (
        "tracing.inference",
        "DFT_TRACING__INFERENCE",
        "true",
        "place the spans DeepFlow's evidence loses when exactly one parent fits (Tempo API, search)",
    ),
    (
        "tracing.inference_on_deepflow_api",
        "DFT_TRACING__INFERENCE_ON_DEEPFLOW_API",
        "false",
        "also infer on DeepFlow's own routes (off: they answer as DeepFlow does)",
    ),
    (
        "tempo.lookback",
        "DFT_TEMPO__LOOKBACK",
        "86400",
        "seconds searched back for a trace id when the request has no range",
    ),
    (
        "tempo.zero_code_window",
        "DFT_TEMPO__ZERO_CODE_WINDOW",
        "60",
        "seconds searched around a zero-code trace's entry row",
    ),
    (
        "tempo.max_flows",
        "DFT_TEMPO__MAX_FLOWS",
        "10000",
        "most flows one trace returns (more: v2 PARTIAL, v1 422)",
    ),
    (
        "cache.max_entries",
        "DFT_CACHE__MAX_ENTRIES",
        "1000",
        "assembled traces kept in memory (0 disables)",
    ),
    (
        "cache.max_bytes",
        "DFT_CACHE__MAX_BYTES",
        "268435456",
        "total encoded bytes of cached traces",
    ),
    (
        "cache.ttl",
        "DFT_CACHE__TTL",
        "600",
        "seconds a finished trace stays cached",
    ),
    (
        "cache.recent_ttl",
        "DFT_CACHE__RECENT_TTL",
        "10",
        "seconds a trace with recent rows (data may still arrive) stays cached",
    ),
    (
        "cache.recent_age",
        "DFT_CACHE__RECENT_AGE",
        "300",
        "a trace whose newest row is younger than this many seconds is recent",
    ),
    (
        "search.default_limit",
        "DFT_SEARCH__DEFAULT_LIMIT",
        "20",
        "traces per search when the request gives no limit",
    ),
    (
        "search.max_limit",
        "DFT_SEARCH__MAX_LIMIT",
        "262144",
        "largest limit accepted",
    ),
    (
        "search.default_spss",
        "DFT_SEARCH__DEFAULT_SPSS",
        "3",
        "spans per span set when the request gives none",
    ),
    (
        "search.max_spss",
        "DFT_SEARCH__MAX_SPSS",
        "100",
        "largest spss accepted",
    ),
    (
        "search.default_window",
        "DFT_SEARCH__DEFAULT_WINDOW",
        "3600",
        "seconds searched back when the request has no range",
    ),
    (
        "search.max_window",
        "DFT_SEARCH__MAX_WINDOW",
        "604800",
        "longest search range accepted, seconds",
    ),
    (
        "search.page_rows",
        "DFT_SEARCH__PAGE_ROWS",
        "2000",
        "candidate rows one store read of a search returns (most recent first)",
    ),
    (
        "search.max_rows",
        "DFT_SEARCH__MAX_ROWS",
        "1000000",
        "most candidate rows one search reads in all (then it answers what it found)",
    ),
    (
        "search.max_traces",
        "DFT_SEARCH__MAX_TRACES",
        "20000",
        "most traces one search assembles (then it answers what it found)",
    ),
    (
        "limits.request_timeout",
        "DFT_LIMITS__REQUEST_TIMEOUT",
        "30",
        "seconds one API request may take (then 504; its store queries are cancelled)",
    ),
    (
        "limits.max_body_bytes",
        "DFT_LIMITS__MAX_BODY_BYTES",
        "8388608",
        "largest request body accepted (then 413)",
    ),
    (
        "limits.max_concurrent_queries",
        "DFT_LIMITS__MAX_CONCURRENT_QUERIES",
        "32",
        "store queries in flight at once over all requests",
    ),
    (
        "limits.queue_timeout_ms",
        "DFT_LIMITS__QUEUE_TIMEOUT_MS",
        "2000",
        "ms a query waits for a free slot before the request is answered 429",
    ),
    (
        "limits.shutdown_grace",
        "DFT_LIMITS__SHUTDOWN_GRACE",
        "30",
        "seconds in-flight requests may finish after SIGTERM/SIGINT (then cancelled, exit 0)",
    ),
    (
        "limits.shutdown_delay_ms",
        "DFT_LIMITS__SHUTDOWN_DELAY_MS",
        "0",
        "ms after SIGTERM/SIGINT the server still accepts, /ready answering 503, before draining",
    ),
    (
        "limits.client_request_timeout_ms",
        "DFT_LIMITS__CLIENT_REQUEST_TIMEOUT_MS",
        "5000",
        "ms a client has to send a request's headers (then 408, connection closed)",
    ),
    (
        "limits.client_disconnect_timeout_ms",
        "DFT_LIMITS__CLIENT_DISCONNECT_TIMEOUT_MS",
        "1000",
        "ms a closing connection may take to shut down",
    ),
    (
        "limits.keep_alive",
        "DFT_LIMITS__KEEP_ALIVE",
        "5",
        "seconds an idle keep-alive connection stays open (0: close after each answer)",
    ),
    (
        "limits.max_connections",
        "DFT_LIMITS__MAX_CONNECTIONS",
        "25000",
        "open connections per worker thread (more wait in the accept queue)",
    ),
    (
        "auth.token",
        "DFT_AUTH__TOKEN",
        "(empty)",
        "bearer token required by the API (empty: none)",
    ),
    (
        "auth.user",
        "DFT_AUTH__USER",
        "(empty)",
        "basic-auth user required by the API (empty: none)",
    ),
    (
        "auth.password",
        "DFT_AUTH__PASSWORD",
        "(empty)",
        "basic-auth password",
    ),
    (
        "auth.open_ready",
        "DFT_AUTH__OPEN_READY",
        "true",
        "/ready answers without credentials",
    ),
    (
        "auth.open_metrics",
        "DFT_AUTH__OPEN_METRICS",
        "true",
        "/metrics answers without credentials",
    ),
    (
        "tenancy.allowed_orgs",
        "DFT_TENANCY__ALLOWED_ORGS",
        "[]",
        "organisations requests may read (empty: all; others get 403)",
    ),
];

/// A configuration error: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Values given on the command line (only the ones present override).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlagOverrides(pub serde_json::Map<String, serde_json::Value>);

impl FlagOverrides {
    /// Set `key` (dotted) to `value`.
    pub fn set(&mut self, key: &str, value: serde_json::Value) {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or(key);
        let mut map = &mut self.0;
        for p in parts {
            map = map
                .entry(p.to_string())
                .or_insert_with(|| serde_json::Value::Object(Default::default()))
                .as_object_mut()
                .expect("configuration sections are objects");
        }
        map.insert(last.to_string(), value);
    }
}

impl Config {
    /// Load with the full precedence chain. `env` is the process environment (a parameter so
    /// tests can pass their own).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &FlagOverrides,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            fig = fig.merge(Toml::file(path));
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("DFT_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            let value: figment::value::Value = raw
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(raw.clone()));
            fig = fig.merge(Serialized::defaults(figment::util::nest(&key, value)));
        }
        fig = fig.merge(Serialized::defaults(&flags.0));
        let cfg: Config = fig.extract().map_err(figment_error)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Semantic checks the types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.parse::<SocketAddr>().map_err(|e| {
            ConfigError::new(
                "listen",
                format!("{:?} is not an address:port ({e})", self.listen),
            )
        })?;
        if self.embedded.path.trim().is_empty() {
            return Err(ConfigError::new("embedded.path", "must not be empty"));
        }
        if self.embedded.max_rows == 0 {
            return Err(ConfigError::new("embedded.max_rows", "must be at least 1"));
        }
        let url = &self.clickhouse.url;
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.len() <= "http://".len()
        {
            return Err(ConfigError::new(
                "clickhouse.url",
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        for (key, v) in [
            ("clickhouse.database", &self.clickhouse.database),
            (
                "clickhouse.dictionary_database",
                &self.clickhouse.dictionary_database,
            ),
        ] {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::new(
                    key,
                    format!("{v:?} must be a plain identifier (letters, digits, _)"),
                ));
            }
        }
        if self.clickhouse.timeout == 0 {
            return Err(ConfigError::new(
                "clickhouse.timeout",
                "must be at least 1 second",
            ));
        }
        if self.clickhouse.max_rows == 0 {
            return Err(ConfigError::new(
                "clickhouse.max_rows",
                "must be at least 1",
            ));
        }
        if self.limits.request_timeout == 0 {
            return Err(ConfigError::new(
                "limits.request_timeout",
                "must be at least 1 second",
            ));
        }
        if self.limits.client_request_timeout_ms == 0 {
            return Err(ConfigError::new(
                "limits.client_request_timeout_ms",
                "must be at least 1 ms",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::new(
                "limits.max_connections",
                "must be at least 1",
            ));
        }
        if self.limits.max_concurrent_queries == 0 {
            return Err(ConfigError::new(
                "limits.max_concurrent_queries",
                "must be at least 1",
            ));
        }
        if self.limits.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "limits.max_body_bytes",
                "must be at least 1",
            ));
        }
        if !self.auth.user.is_empty() && self.auth.password.is_empty() {
            return Err(ConfigError::new(
                "auth.password",
                "must be set when auth.user is set",
            ));
        }
        if let Some(bad) = self.tenancy.allowed_orgs.iter().find(|&&o| o > 9999) {
            return Err(ConfigError::new(
                "tenancy.allowed_orgs",
                format!("{bad} is not an organisation (0..=9999)"),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log).map_err(|e| {
            ConfigError::new("log", format!("{:?} is not a log filter ({e})", self.log))
        })?;
        Ok(())
    }
}

fn figment_error(e: figment::Error) -> ConfigError {
    let key = if e.path.is_empty() {
        "configuration".to_string()
    } else {
        e.path.join(".")
    };
    // Name the layer the bad value came from.
    let source = match e.metadata.as_ref().map(|m| m.name.as_ref()) {
        Some(n) if n.contains("figment::value") => " (from the environment)".to_string(),
        Some(n) if n.contains("serde_json") => " (from a command-line flag)".to_string(),
        Some(n) if n.contains("TOML") => " (from the configuration file)".to_string(),
        _ => String::new(),
    };
    ConfigError::new(key, format!("{}{source}", e.kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, env(&[]), &FlagOverrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen, "0.0.0.0:3200");
        assert_eq!(c.store, StoreKind::Embedded);
    }

    #[test]
    fn precedence_defaults_file_env_flags() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "listen = \"127.0.0.1:1\"\nstore = \"clickhouse\"\n[clickhouse]\nurl = \"http://file:1\"\ntimeout = 7\n[embedded]\npath = \"/tmp/x.db\"").unwrap();
        let e = env(&[
            ("DFT_LISTEN", "127.0.0.1:2"),
            ("DFT_CLICKHOUSE__URL", "http://env:2"),
            ("OTHER", "x"),
        ]);
        let mut flags = FlagOverrides::default();
        flags.set("listen", "127.0.0.1:3".into());
        let c = Config::load(Some(f.path()), e, &flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:3"); // flag beats env and file
        assert_eq!(c.clickhouse.url, "http://env:2"); // env beats file
        assert_eq!(c.clickhouse.timeout, 7); // file beats default
        assert_eq!(c.store, StoreKind::Clickhouse);
        assert_eq!(c.embedded.path, "/tmp/x.db");
        assert_eq!(c.clickhouse.database, "flow_log"); // default kept
    }

    #[test]
    fn tracing_parameters_from_file_and_env() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[tracing]\nmax_iteration = 5\nspan_set_connection_strategies = [\"net_span_c_to_s_via_trace_id\"]").unwrap();
        let e = env(&[
            ("DFT_TRACING__TRACING_SOURCE", "[trace_id, tcp_seq, dns]"),
            ("DFT_TRACING__NETWORK_DELAY_US", "3000000"),
        ]);
        let c = Config::load(Some(f.path()), e, &FlagOverrides::default()).unwrap();
        assert_eq!(c.tracing.max_iteration, 5);
        assert_eq!(c.tracing.network_delay_us, 3_000_000);
        assert!(c.tracing.has_source(crate::autotrace::TracingSource::Dns));
        assert!(!c
            .tracing
            .has_source(crate::autotrace::TracingSource::Syscall));
        assert!(
            c.tracing
                .span_set_connection_strategies
                .net_span_c_to_s_via_trace_id
        );
        assert_eq!(c.tracing.host_clock_offset_us, 10_000);
        assert_eq!(c.tracing.l7_tracing_limit, 1000);
    }

    #[test]
    fn every_key_is_real_and_documented() {
        let readme = include_str!("../README.md");
        for (key, env_name, default, _) in KEYS {
            assert!(
                readme.contains(&format!("| `{key}` | `{env_name}` |")),
                "README lacks {key}"
            );
            assert_eq!(
                *env_name,
                format!("DFT_{}", key.to_ascii_uppercase().replace('.', "__"))
            );
            if default.starts_with('(') {
                continue;
            }
            let c = Config::load(None, env(&[(env_name, default)]), &FlagOverrides::default());
            assert!(c.is_ok(), "{key} = {default}: {:?}", c.err());
            assert_eq!(
                c.unwrap(),
                Config::default(),
                "{key}: the documented default is the default"
            );
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load(
            None,
            env(&[("DFT_CLICKHOUSE__TIMEOUT", "soon")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.key, "clickhouse.timeout");
        let err = Config::load(
            None,
            env(&[("DFT_STORE", "mysql")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.key, "store");
        let err = Config::load(
            None,
            env(&[("DFT_LISTEN", "nowhere")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.key, "listen");
        let err = Config::load(
            None,
            env(&[("DFT_CLICKHOUSE__DATABASE", "x; DROP")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.key, "clickhouse.database");
        let err = Config::load(
            None,
            env(&[("DFT_CLICKHOUSE__URL", "ftp://x")]),
            &FlagOverrides::default(),
        )
        .unwrap_err();
        assert_eq!(err.key, "clickhouse.url");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[clickhouse]\nurll = \"http://x\"").unwrap();
        let err = Config::load(Some(f.path()), env(&[]), &FlagOverrides::default()).unwrap_err();
        assert!(err.key.starts_with("clickhouse"), "{err}");
        assert!(err.to_string().contains("urll"), "{err}");
    }
}
