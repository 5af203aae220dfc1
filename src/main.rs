//! The `deepflow-tempo` command line: `serve`, `demo`, `schema`, `load`, `trace`.

use clap::{Args, Parser, Subcommand};
use deepflow_tempo::autotrace::TraceResult;
use deepflow_tempo::config::{Config, FlagOverrides, KEYS};
use deepflow_tempo::query::trace::TraceService;
use deepflow_tempo::store::model::OrgId;
use deepflow_tempo::store::sqlite::Access;
use deepflow_tempo::store::{SchemaOptions, StoreKind};
use deepflow_tempo::{demo, load, server};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than the system allocator: tracing allocates many small, short-lived
/// strings and vectors on several threads at once (store rows decoded on one, freed on another).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "deepflow-tempo", version, about = "Grafana Tempo's query API over DeepFlow's auto-tracing", after_long_help = config_help())]
struct Cli {
    #[command(flatten)]
    config: ConfigFlags,
    #[command(subcommand)]
    command: Command,
}

/// Configuration flags; each overrides its key from the file and the environment.
#[derive(Args, Debug, Default)]
struct ConfigFlags {
    /// TOML configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// `listen`: address:port of the HTTP API [default: 0.0.0.0:3200].
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    listen: Option<String>,
    /// `store`: embedded | clickhouse [default: embedded].
    #[arg(long, global = true)]
    store: Option<String>,
    /// `log`: log filter [default: info].
    #[arg(long, global = true)]
    log: Option<String>,
    /// `embedded.path`: SQLite file or :memory: [default: ./data/deepflow-tempo.db].
    #[arg(long, global = true, value_name = "PATH")]
    embedded_path: Option<String>,
    /// `clickhouse.url` [default: http://127.0.0.1:8123].
    #[arg(long, global = true, value_name = "URL")]
    clickhouse_url: Option<String>,
    /// `clickhouse.user` [default: default].
    #[arg(long, global = true)]
    clickhouse_user: Option<String>,
    /// `clickhouse.password`.
    #[arg(long, global = true)]
    clickhouse_password: Option<String>,
    /// `clickhouse.database` [default: flow_log].
    #[arg(long, global = true)]
    clickhouse_database: Option<String>,
    /// `clickhouse.dictionary_database` [default: flow_tag].
    #[arg(long, global = true)]
    clickhouse_dictionary_database: Option<String>,
    /// `clickhouse.timeout`, seconds [default: 30].
    #[arg(long, global = true, value_name = "SECONDS")]
    clickhouse_timeout: Option<String>,
}

impl ConfigFlags {
    fn overrides(&self) -> FlagOverrides {
        let mut f = FlagOverrides::default();
        let mut put = |key: &str, v: &Option<String>| {
            if let Some(v) = v {
                f.set(key, serde_json::Value::from(v.clone()));
            }
        };
        put("listen", &self.listen);
        put("store", &self.store);
        put("log", &self.log);
        put("embedded.path", &self.embedded_path);
        put("clickhouse.url", &self.clickhouse_url);
        put("clickhouse.user", &self.clickhouse_user);
        put("clickhouse.password", &self.clickhouse_password);
        put("clickhouse.database", &self.clickhouse_database);
        put(
            "clickhouse.dictionary_database",
            &self.clickhouse_dictionary_database,
        );
        if let Some(t) = &self.clickhouse_timeout {
            // A number when it is one, so a bad value is reported by the key's own check.
            let v = t
                .parse::<u64>()
                .map(serde_json::Value::from)
                .unwrap_or_else(|_| t.clone().into());
            f.set("clickhouse.timeout", v);
        }
        f
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the Tempo query API (and DeepFlow's tracing API) over the configured store.
    Serve,
    /// Generate a Bookinfo-shaped DeepFlow dataset for the last minutes into the configured
    /// store, then serve it (prints where to point Grafana and trace IDs to open).
    Demo {
        /// Minutes of traffic, ending now.
        #[arg(long, default_value = "15")]
        minutes: u32,
        /// Mean requests per second.
        #[arg(long, default_value = "2")]
        rate: f64,
        /// Seed of the generator.
        #[arg(long, default_value = "1")]
        seed: u64,
        /// Write into ClickHouse (`clickhouse.*` settings) instead of the configured store.
        #[arg(long)]
        clickhouse: bool,
        /// Only load the data and exit: no schema is applied, nothing is served (the compose
        /// stack's loader runs `schema --apply` first).
        #[arg(long)]
        load_only: bool,
        /// Organisation.
        #[arg(long, default_value = "1")]
        org: OrgId,
    },
    /// Print DeepFlow's DDL for the configured store, or create it with --apply (tests, demos).
    Schema {
        /// Create the tables instead of printing them.
        #[arg(long)]
        apply: bool,
        /// Drop DeepFlow's 72-hour TTL after creating the table (for historical fixtures).
        #[arg(long)]
        without_ttl: bool,
        /// Organisation (1 = default databases; N uses NNNN_flow_log).
        #[arg(long, default_value = "1")]
        org: OrgId,
    },
    /// Import JSON Lines of l7_flow_log rows (DeepFlow column names) into the configured store.
    Load {
        /// File to read, or - for standard input.
        file: String,
        /// The file is a JSON document of name tables (devices, pods, subnets, gprocesses,
        /// vtap_ports) instead of rows.
        #[arg(long)]
        names: bool,
        /// Rows per insert batch.
        #[arg(long, default_value = "10000")]
        batch: usize,
        /// Organisation.
        #[arg(long, default_value = "1")]
        org: OrgId,
    },
    /// Run auto-tracing from a row `_id` or an application trace id and print the tree.
    Trace {
        /// Entry row `_id` (decimal).
        #[arg(
            long,
            conflicts_with = "trace_id",
            required_unless_present = "trace_id"
        )]
        id: Option<u64>,
        /// Application trace id (every row carrying it seeds the search).
        #[arg(long)]
        trace_id: Option<String>,
        /// Window start, unix seconds [default: the row's time − 60 s, or now − 24 h].
        #[arg(long)]
        from: Option<i64>,
        /// Window end, unix seconds [default: the row's time + 60 s, or now].
        #[arg(long)]
        to: Option<i64>,
        /// Print the `DATA` object of DeepFlow's L7FlowTracing API instead of the tree.
        #[arg(long)]
        json: bool,
        /// Organisation.
        #[arg(long, default_value = "1")]
        org: OrgId,
    },
}

fn config_help() -> String {
    let mut s =
        String::from("Configuration keys (defaults < --config FILE < environment < flags):\n");
    for (key, env, default, what) in KEYS {
        s.push_str(&format!(
            "  {key:<32} {env:<38} default {default}\n      {what}\n"
        ));
    }
    s
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(
        cli.config.config.as_deref(),
        std::env::vars(),
        &cli.config.overrides(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("deepflow-tempo: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cfg.log))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("deepflow-tempo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command, cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("deepflow-tempo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, cfg: Config) -> Result<(), String> {
    match command {
        Command::Serve => serve(cfg).await,
        Command::Demo {
            minutes,
            rate,
            seed,
            clickhouse,
            load_only,
            org,
        } => {
            let opts = demo::DemoOptions {
                seed,
                minutes,
                rate,
                end_us: demo::now_us(),
            };
            demo_command(cfg, opts, clickhouse, load_only, org).await
        }
        Command::Trace {
            id,
            trace_id,
            from,
            to,
            json,
            org,
        } => trace(cfg, id, trace_id, from, to, json, org).await,
        Command::Schema {
            apply,
            without_ttl,
            org,
        } => {
            let store = server::open_store(&cfg).await.map_err(|e| e.to_string())?;
            if apply {
                store
                    .apply_schema(org, SchemaOptions { without_ttl })
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!("schema applied to the {} store", store.kind());
            } else {
                for st in store.schema_ddl(org) {
                    println!("{st};\n");
                }
            }
            Ok(())
        }
        Command::Load {
            file,
            names,
            batch,
            org,
        } => {
            let store = server::open_store(&cfg).await.map_err(|e| e.to_string())?;
            let reader: Box<dyn std::io::Read> = if file == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(&file).map_err(|e| format!("cannot open {file}: {e}"))?,
                )
            };
            if names {
                let n = load::load_names(store.as_ref(), org, reader)
                    .await
                    .map_err(|e| e.to_string())?;
                eprintln!("loaded {n} name rows into the {} store", store.kind());
            } else {
                let progress = std::io::stderr().is_terminal();
                let stats = load::load_rows(
                    store.as_ref(),
                    org,
                    std::io::BufReader::new(reader),
                    batch.max(1),
                    progress,
                )
                .await
                .map_err(|e| e.to_string())?;
                eprintln!(
                    "loaded {} rows in {} batches into the {} store",
                    stats.rows,
                    stats.batches,
                    store.kind()
                );
            }
            Ok(())
        }
    }
}

async fn trace(
    cfg: Config,
    id: Option<u64>,
    trace_id: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    json: bool,
    org: OrgId,
) -> Result<(), String> {
    // Read-only: any number of `trace` processes run beside `serve` and a `load`.
    let store = server::open_store_for(&cfg, Access::ReadOnly)
        .await
        .map_err(|e| e.to_string())?;
    let service = TraceService::new(store, cfg.tracing.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (outcome, result, timing) = match (id, trace_id) {
        (Some(id), _) => {
            let t = (id >> 32) as i64;
            let (start, end) = (from.unwrap_or(t - 60), to.unwrap_or(t + 60));
            service.trace_by_id(org, id, start, end).await
        }
        (None, Some(tid)) => {
            let (start, end) = (from.unwrap_or(now - 86_400), to.unwrap_or(now));
            service.trace_by_trace_id(org, &tid, start, end).await
        }
        (None, None) => return Err("give --id or --trace-id".into()),
    }
    .map_err(|e| e.to_string())?;
    if json {
        let data = if outcome.is_empty() {
            serde_json::json!({})
        } else {
            result.to_deepflow_json(false)
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&data).map_err(|e| e.to_string())?
        );
    } else if result.spans.is_empty() {
        return Err("trace not found".into());
    } else {
        print!("{}", render_tree(&result));
        eprintln!(
            "{} spans; {} store queries in {:.1} ms, assembled in {:.1} ms; search stopped: {:?}{}",
            result.spans.len(),
            timing.queries,
            timing.store_us as f64 / 1000.0,
            timing.assemble_us as f64 / 1000.0,
            outcome.stop_reason,
            if outcome.hit_limit {
                " (a query hit its row limit: the trace may be partial)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// The tree as text: one line per span, indented by depth.
fn render_tree(result: &TraceResult) -> String {
    use std::collections::HashMap;
    let parent: HashMap<usize, Option<usize>> =
        result.spans.iter().map(|s| (s.id, s.parent_id)).collect();
    let depth = |mut i: usize| {
        let mut d = 0;
        while let Some(Some(p)) = parent.get(&i) {
            d += 1;
            i = *p;
            if d > parent.len() {
                break;
            }
        }
        d
    };
    let mut out = String::new();
    for s in &result.spans {
        let r = &s.record;
        let service = s
            .service_uname
            .clone()
            .or_else(|| s.auto_service.clone().filter(|v| !v.is_empty()))
            .or_else(|| Some(r.app_service.clone()).filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:indent$}{:<6} {} | {} | {} µs (self {} µs) | _id {}{}\n",
            "",
            s.tap_side(),
            service,
            r.span_name(),
            s.duration(),
            s.selftime,
            r._id,
            s.set_parent_info
                .as_ref()
                .map(|w| format!(" | {w}"))
                .unwrap_or_default(),
            indent = 2 * depth(s.id),
        ));
    }
    out
}

/// The URL a client on this machine reaches a bound address at.
fn base_url(a: &std::net::SocketAddr) -> String {
    if a.ip().is_unspecified() {
        format!("http://localhost:{}", a.port())
    } else {
        format!("http://{a}")
    }
}

async fn serve(cfg: Config) -> Result<(), String> {
    let store = server::open_store(&cfg).await.map_err(|e| e.to_string())?;
    let draining = server::Draining::default();
    let (srv, addrs) = server::bind_with(
        server::app_state(&cfg, store.clone()),
        &cfg.listen,
        draining.clone(),
    )
    .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    tracing::info!(store = %store.kind(), addrs = ?addrs, "deepflow-tempo serving");
    // One line on stdout says where (with `--listen host:0` the port is only known here).
    if let Some(url) = addrs.first().map(base_url) {
        println!("serving the Tempo API on {url}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
    server::serve_until_signal(
        srv,
        draining,
        std::time::Duration::from_millis(cfg.limits.shutdown_delay_ms),
    )
    .await
    .map_err(|e| e.to_string())
}

/// `demo`: generate, load, then serve (unless `--load-only`).
async fn demo_command(
    mut cfg: Config,
    opts: demo::DemoOptions,
    clickhouse: bool,
    load_only: bool,
    org: OrgId,
) -> Result<(), String> {
    if clickhouse {
        cfg.store = StoreKind::Clickhouse;
    }
    let store = server::open_store(&cfg).await.map_err(|e| e.to_string())?;
    if cfg.store == StoreKind::Clickhouse && !load_only {
        store
            .apply_schema(org, SchemaOptions::default())
            .await
            .map_err(|e| format!("cannot apply the schema: {e}"))?;
    }
    let data = demo::generate(&opts);
    demo::load(store.as_ref(), org, &data, 10_000)
        .await
        .map_err(|e| format!("cannot load the demo data: {e}"))?;
    let target = match cfg.store {
        StoreKind::Embedded => format!("the embedded store ({})", cfg.embedded.path),
        StoreKind::Clickhouse => format!("ClickHouse ({})", cfg.clickhouse.url),
    };
    println!(
        "loaded {} requests ({} rows) over the last {} minute{} into {target}",
        data.requests.len(),
        data.rows.len(),
        opts.minutes.max(1),
        if opts.minutes > 1 { "s" } else { "" }
    );
    println!("  {}", demo::DESCRIPTION);
    println!(
        "  {} failed with 5xx, {} had an error inside, {} slow",
        data.requests.iter().filter(|r| r.failed).count(),
        data.requests.iter().filter(|r| r.has_error).count(),
        data.requests.iter().filter(|r| r.slow).count()
    );
    if load_only {
        return Ok(());
    }
    let draining = server::Draining::default();
    let (srv, addrs) = server::bind_with(
        server::app_state(&cfg, store.clone()),
        &cfg.listen,
        draining.clone(),
    )
    .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let url = addrs.first().map(base_url).unwrap_or_default();
    println!();
    println!("serving the Tempo API on {url}");
    println!(
        "Grafana: add a Tempo data source with URL {url} (see README: Grafana), then Explore:"
    );
    println!("  search  {{}}   or   {{ status = error }}   or   {{ duration > 300ms }}");
    for (what, id) in demo::featured(&data) {
        println!("  {what:<44} {id}");
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
    server::serve_until_signal(
        srv,
        draining,
        std::time::Duration::from_millis(cfg.limits.shutdown_delay_ms),
    )
    .await
    .map_err(|e| e.to_string())
}
