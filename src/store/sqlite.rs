//! The embedded store: DeepFlow's `l7_flow_log` and name tables in one SQLite file (sqlx).
//!
//! Same column names as ClickHouse; one database for every organisation (an `org_id` column).
//! Unsigned 64-bit values are stored as their two's-complement `i64` bit pattern, so equality
//! and `IN` on them behave as in ClickHouse. List filters bind one JSON array each
//! (`col IN (SELECT value FROM json_each(?))`), so any number of keys is one parameter.

use super::model::{FlowMeta, FlowRecord, L7FlowLogRow, NameTables, OrgId};
use super::schema::{self, SQLITE_L7_COLUMNS};
use super::{
    Col, Facet, Filter, FlowQuery, FlowStore, Order, SchemaOptions, StoreError, StoreKind,
    StoreResult,
};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

/// The embedded store.
pub struct SqliteStore {
    pool: SqlitePool,
    max_rows: u64,
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                StoreError::Unavailable(e.to_string())
            }
            // SQLITE_BUSY / SQLITE_LOCKED past the busy timeout: another process held the lock
            // too long. Transient, so 503, not a fault of this service.
            sqlx::Error::Database(ref d)
                if d.code().is_some_and(|c| {
                    let primary = c.parse::<i32>().unwrap_or(0) & 0xff;
                    primary == 5 || primary == 6
                }) =>
            {
                StoreError::Unavailable(format!("embedded store busy: {e}"))
            }
            other => StoreError::Query(other.to_string()),
        }
    }
}

/// How a process opens the embedded file.
///
/// Any number of processes may hold it at once (WAL journal: readers never wait for the
/// writer); writes from several processes are serialised by SQLite's write lock, waited for
/// up to [`BUSY_TIMEOUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create the file and the schema when missing; may write (`serve`, `load`, `demo`).
    ReadWrite,
    /// Only read an existing file (`trace`): no schema work, no write lock ever taken.
    ReadOnly,
}

/// How long a statement waits for another process's lock (the writer's batch, a checkpoint)
/// before it fails with "database is locked".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bumped when the embedded schema changes; stored as SQLite's `user_version`, so a process
/// that finds it current opens without taking the write lock. 2: the time index holds `_id`.
const SCHEMA_VERSION: i64 = 2;

impl SqliteStore {
    /// Open (creating if missing) the database at `path` (`:memory:` for a private in-memory
    /// database) and create the schema.
    pub async fn open(path: &str, max_rows: u64) -> StoreResult<SqliteStore> {
        Self::open_with(path, max_rows, Access::ReadWrite).await
    }

    /// Open the database at `path` for `access`. Safe when several processes open the same
    /// file at the same moment: the switch to WAL is retried while another process holds the
    /// lock, and the schema is created under `BEGIN IMMEDIATE` only when its version is stale.
    pub async fn open_with(path: &str, max_rows: u64, access: Access) -> StoreResult<SqliteStore> {
        let memory = path == ":memory:";
        let opts = if memory {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            if access == Access::ReadOnly && !std::path::Path::new(path).exists() {
                return Err(StoreError::Unavailable(format!(
                    "embedded store {path} does not exist (create it with `load` or `demo`)"
                )));
            }
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() && access == Access::ReadWrite {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        StoreError::Invalid(format!(
                            "cannot create directory {}: {e}",
                            parent.display()
                        ))
                    })?;
                }
            }
            // No journal_mode here: switching to WAL needs an exclusive lock the busy timeout
            // does not wait for, so `ensure_wal` does it once, with retries.
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(access == Access::ReadWrite)
                .read_only(access == Access::ReadOnly)
                .synchronous(SqliteSynchronous::Normal)
        }
        .busy_timeout(BUSY_TIMEOUT)
        // Rows cross from the connection's thread through a bounded channel: a deep one lets
        // SQLite run ahead of the decoding instead of both waking each other for every row.
        .row_buffer_size(ROW_BUFFER);
        // An in-memory database lives as long as its one connection.
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(3600))
            })
            .connect_with(opts)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot open embedded store {path}: {e}"))
            })?;
        let store = SqliteStore { pool, max_rows };
        if access == Access::ReadWrite {
            if !memory {
                store.ensure_wal(path).await?;
            }
            store.ensure_schema().await?;
        }
        Ok(store)
    }

    /// Put the file in WAL mode (a persistent property of the file) unless it already is.
    async fn ensure_wal(&self, path: &str) -> StoreResult<()> {
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&self.pool)
                .await?;
            if mode.eq_ignore_ascii_case("wal") {
                return Ok(());
            }
            match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
                .fetch_one(&self.pool)
                .await
            {
                Ok(m) if m.eq_ignore_ascii_case("wal") => return Ok(()),
                Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                    tracing::debug!(path, "embedded store busy; retrying the switch to WAL");
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Ok(m) => {
                    return Err(StoreError::Unavailable(format!(
                        "embedded store {path} stays in journal mode {m}, not wal"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Create the schema unless `user_version` says it is current. The check is a plain read;
    /// only a stale file takes the write lock, and `BEGIN IMMEDIATE` takes it up front, so two
    /// processes creating the schema together wait for each other instead of failing.
    async fn ensure_schema(&self) -> StoreResult<()> {
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&self.pool)
            .await?;
        if version >= SCHEMA_VERSION {
            return Ok(());
        }
        self.create_schema().await
    }

    async fn create_schema(&self) -> StoreResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(&schema::sqlite_l7_table())
            .execute(&mut *tx)
            .await?;
        for st in schema::sqlite_statements() {
            sqlx::query(&st.sql).execute(&mut *tx).await?;
        }
        sqlx::query(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fill the names of `records` from the name tables (the embedded twin of ClickHouse's
    /// `dictGet`s): one read of all the tables for the distinct keys of all records, not one
    /// lookup per row and name. Unknown keys give empty names (device type 0).
    async fn resolve_names(&self, org: OrgId, records: &mut [FlowRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        type Key = (i64, i64);
        let keys = |keys: &mut dyn Iterator<Item = Key>| {
            let set: HashSet<Key> = keys.collect();
            let keys: Vec<[i64; 2]> = set.into_iter().map(|(a, b)| [a, b]).collect();
            serde_json::to_string(&keys).unwrap_or_default()
        };
        let devices_of = |r: &FlowRecord| {
            [
                (r.auto_instance_type_0 as i64, r.auto_instance_id_0 as i64),
                (r.auto_instance_type_1 as i64, r.auto_instance_id_1 as i64),
                (r.auto_service_type_0 as i64, r.auto_service_id_0 as i64),
                (r.auto_service_type_1 as i64, r.auto_service_id_1 as i64),
                (14, r.pod_node_id_0 as i64),
                (14, r.pod_node_id_1 as i64),
                (6, r.host_id_0 as i64),
                (6, r.host_id_1 as i64),
            ]
        };
        let single = |f: fn(&FlowRecord) -> [i64; 2]| {
            keys(&mut records.iter().flat_map(|r| f(r).map(|v| (v, 0))))
        };
        // One read: every table's rows for the distinct keys, tagged by table (0 capture
        // ports, 1 devices, 2 subnets, 3 processes, 4 pods, 5 capture network types).
        const SQL: &str = "\
            SELECT 0, vtap_id, tap_port, name, device_type, device_name, host_name, pod_node_name \
              FROM ch_vtap_port WHERE org_id = ?1 \
              AND (vtap_id, tap_port) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?2)) \
            UNION ALL SELECT 1, devicetype, deviceid, name, 0, '', '', '' FROM ch_device \
              WHERE org_id = ?1 \
              AND (devicetype, deviceid) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?3)) \
            UNION ALL SELECT 2, id, 0, name, 0, '', '', '' FROM ch_subnet \
              WHERE org_id = ?1 AND id IN (SELECT value ->> 0 FROM json_each(?4)) \
            UNION ALL SELECT 3, id, 0, name, 0, '', '', '' FROM ch_gprocess \
              WHERE org_id = ?1 AND id IN (SELECT value ->> 0 FROM json_each(?5)) \
            UNION ALL SELECT 4, id, 0, name, 0, '', '', '' FROM ch_pod \
              WHERE org_id = ?1 AND id IN (SELECT value ->> 0 FROM json_each(?6)) \
            UNION ALL SELECT 5, value, 0, name, 0, '', '', '' FROM ch_tap_type \
              WHERE org_id = ?1 AND value IN (SELECT value ->> 0 FROM json_each(?7))";
        let rows = sqlx::query(SQL)
            .bind(org.0 as i64)
            .bind(keys(
                &mut records
                    .iter()
                    .map(|r| (r.agent_id as i64, r.capture_nic as i64)),
            ))
            .bind(keys(&mut records.iter().flat_map(devices_of)))
            .bind(single(|r| [r.subnet_id_0 as i64, r.subnet_id_1 as i64]))
            .bind(single(|r| [r.gprocess_id_0 as i64, r.gprocess_id_1 as i64]))
            .bind(single(|r| [r.pod_id_0 as i64, r.pod_id_1 as i64]))
            .bind(single(|r| [r.capture_network_type_id as i64; 2]))
            .fetch_all(&self.pool)
            .await?;
        /// A capture port's names: name, device type, device, host, pod node.
        type Port = (String, u64, String, String, String);
        let mut ports: HashMap<Key, Port> = HashMap::new();
        let mut names: [HashMap<Key, String>; 6] = Default::default();
        for r in rows {
            let table: i64 = r.try_get(0)?;
            let key = (r.try_get::<i64, _>(1)?, r.try_get::<i64, _>(2)?);
            let name: String = r.try_get(3)?;
            if table == 0 {
                let port = (
                    name,
                    r.try_get::<i64, _>(4)? as u64,
                    r.try_get(5)?,
                    r.try_get(6)?,
                    r.try_get(7)?,
                );
                ports.insert(key, port);
            } else if let Some(m) = names.get_mut(table as usize) {
                m.insert(key, name);
            }
        }
        let [_, devices, subnets, gprocesses, pods, taps] = names;
        let get = |m: &HashMap<Key, String>, k: i64| m.get(&(k, 0)).cloned().unwrap_or_default();
        let device = |t: i64, id: i64| devices.get(&(t, id)).cloned().unwrap_or_default();
        for r in records.iter_mut() {
            if let Some(p) = ports.get(&(r.agent_id as i64, r.capture_nic as i64)) {
                if matches!(r.capture_nic_type, 0..=2) {
                    r.capture_nic_name = p.0.clone();
                }
                r.vtap_device_type = p.1;
                r.vtap_device_name = p.2.clone();
                r.vtap_host_name = p.3.clone();
                r.vtap_pod_node_name = p.4.clone();
            }
            r.subnet_0 = get(&subnets, r.subnet_id_0 as i64);
            r.subnet_1 = get(&subnets, r.subnet_id_1 as i64);
            r.auto_instance_name_0 =
                device(r.auto_instance_type_0 as i64, r.auto_instance_id_0 as i64);
            r.auto_instance_name_1 =
                device(r.auto_instance_type_1 as i64, r.auto_instance_id_1 as i64);
            r.auto_service_name_0 =
                device(r.auto_service_type_0 as i64, r.auto_service_id_0 as i64);
            r.auto_service_name_1 =
                device(r.auto_service_type_1 as i64, r.auto_service_id_1 as i64);
            r.gprocess_0 = get(&gprocesses, r.gprocess_id_0 as i64);
            r.gprocess_1 = get(&gprocesses, r.gprocess_id_1 as i64);
            r.pod_0 = get(&pods, r.pod_id_0 as i64);
            r.pod_1 = get(&pods, r.pod_id_1 as i64);
            r.pod_node_0 = device(14, r.pod_node_id_0 as i64);
            r.pod_node_1 = device(14, r.pod_node_id_1 as i64);
            r.host_0 = device(6, r.host_id_0 as i64);
            r.host_1 = device(6, r.host_id_1 as i64);
            r.tap = get(&taps, r.capture_network_type_id as i64);
        }
        Ok(())
    }

    fn effective_limit(&self, q: &FlowQuery) -> u64 {
        q.limit.unwrap_or(self.max_rows).min(self.max_rows)
    }

    /// `FROM l7_flow_log f WHERE org AND window AND filter`
    fn push_from_where(&self, b: &mut QueryBuilder<'_, Sqlite>, org: OrgId, q: &FlowQuery) {
        // A keyed read seeks its rows through the key indexes (`push_keyed`); left to itself,
        // the planner would scan the time window instead.
        b.push(if is_keyed(&q.filter) {
            " FROM l7_flow_log f NOT INDEXED WHERE f.org_id = "
        } else {
            " FROM l7_flow_log f WHERE f.org_id = "
        });
        self.push_rest(b, org, q);
    }

    /// The rest of a WHERE clause after `f.org_id = `: the org, the window and the filter.
    fn push_rest(&self, b: &mut QueryBuilder<'_, Sqlite>, org: OrgId, q: &FlowQuery) {
        b.push_bind(org.0 as i64);
        if let Some(w) = q.effective_window() {
            b.push(" AND f.time >= ");
            b.push_bind(w.start_s as i64);
            b.push(" AND f.time <= ");
            b.push_bind(w.end_s as i64);
        }
        b.push(" AND ");
        push_filter(b, org, &q.filter);
    }

    /// `FROM … WHERE … ORDER … LIMIT …`
    fn push_tail(&self, b: &mut QueryBuilder<'_, Sqlite>, org: OrgId, q: &FlowQuery) {
        self.push_from_where(b, org, q);
        match q.order {
            Order::Unordered => {}
            Order::StartTimeAsc => {
                b.push(" ORDER BY f.start_time ASC, f._id ASC");
            }
            Order::TimeDesc => {
                b.push(" ORDER BY f.time DESC, f._id DESC");
            }
        }
        b.push(" LIMIT ");
        b.push_bind(self.effective_limit(q) as i64);
    }
}

/// The querier's `ip_N` as SQLite text.
fn ip_expr(side: u8) -> String {
    format!(
        "(CASE WHEN f.is_ipv4 = 1 THEN ((f.ip4_{side} >> 24) & 255) || '.' || ((f.ip4_{side} >> 16) & 255) || '.' || ((f.ip4_{side} >> 8) & 255) || '.' || (f.ip4_{side} & 255) ELSE f.ip6_{side} END)"
    )
}

/// The querier's `auto_service_N` name (IP string for IP-like services).
fn auto_service_expr(side: u8) -> String {
    format!(
        "(CASE WHEN f.auto_service_type_{side} IN (0, 255) THEN {} ELSE COALESCE((SELECT name FROM ch_device d WHERE d.org_id = f.org_id AND d.devicetype = f.auto_service_type_{side} AND d.deviceid = f.auto_service_id_{side}), '') END)",
        ip_expr(side)
    )
}

/// `resource.service.name` of a row's span, the span model's (`crate::span`) in SQL (see
/// `Filter::ServiceIn`): the application service (else DeepFlow's) for application spans;
/// DeepFlow's service, else the process, for eBPF spans; `<observation point> @ <node or host>`
/// for network spans.
fn service_expr() -> String {
    let side = |a: String, b: String| {
        format!("(CASE WHEN f.observation_point LIKE 'c%' THEN {a} ELSE {b} END)")
    };
    let dev = |ty: u32, col: &str| {
        format!("COALESCE((SELECT name FROM ch_device d WHERE d.org_id = f.org_id AND d.devicetype = {ty} AND d.deviceid = f.{col}), '')")
    };
    let gprocess = |col: &str| {
        format!("COALESCE((SELECT name FROM ch_gprocess g WHERE g.org_id = f.org_id AND g.id = f.{col}), '')")
    };
    let port = |col: &str| {
        format!("COALESCE((SELECT {col} FROM ch_vtap_port v WHERE v.org_id = f.org_id AND v.vtap_id = f.agent_id AND v.tap_port = f.capture_nic), '')")
    };
    let first = |parts: &[String], fallback: &str| {
        let mut e = String::from("(CASE");
        for p in parts {
            e.push_str(&format!(" WHEN ({p}) != '' THEN ({p})"));
        }
        e.push_str(&format!(" ELSE {fallback} END)"));
        e
    };
    let auto = side(auto_service_expr(0), auto_service_expr(1));
    let app = first(
        &["f.app_service".to_string(), auto.clone()],
        "'unknown app service'",
    );
    let process = first(
        &[
            auto,
            side(gprocess("gprocess_id_0"), gprocess("gprocess_id_1")),
            side("f.process_kname_0".into(), "f.process_kname_1".into()),
        ],
        "'unknown process'",
    );
    let (codes, names) = crate::span::observation_point_names();
    let mut point = String::from("(CASE f.observation_point WHEN '' THEN 'network'");
    for (c, n) in codes.iter().zip(&names) {
        point.push_str(&format!(" WHEN '{c}' THEN '{n}'"));
    }
    point.push_str(" ELSE f.observation_point END)");
    let host = first(
        &[
            side(dev(14, "pod_node_id_0"), dev(14, "pod_node_id_1")),
            port("pod_node_name"),
            side(dev(6, "host_id_0"), dev(6, "host_id_1")),
            port("host_name"),
            port("device_name"),
        ],
        "'agent ' || f.agent_id",
    );
    format!(
        "(CASE WHEN f.signal_source = 4 THEN {app} WHEN f.signal_source = 3 THEN {process} ELSE {point} || ' @ ' || {host} END)"
    )
}

/// The span model's SQL (`span_sql`) in SQLite's words.
fn dialect() -> crate::store::span_sql::Dialect {
    crate::store::span_sql::Dialect {
        col: |c| format!("f.\"{c}\""),
        text_col: |c| format!("COALESCE(f.\"{c}\", '')"),
        concat: |a, b| format!("({a} || {b})"),
        to_text: |e| format!("CAST({e} AS TEXT)"),
        starts_with: |e, c| format!("substr({e}, 1, 1) = '{c}'"),
        ip: ip_expr,
        otel: "COALESCE((SELECT v.value FROM json_each(f.attribute_names) n, json_each(f.attribute_values) v \
               WHERE n.key = v.key AND n.value = \u{1}), '')",
        service: service_expr(),
        trim: "trim",
    }
}

/// SQL with `span_sql::MARK`s pushed as bound values.
fn push_marked(b: &mut QueryBuilder<'_, Sqlite>, text: &str, values: Vec<crate::store::KeyValue>) {
    let mut values = values.into_iter();
    for (i, piece) in text.split(crate::store::span_sql::MARK).enumerate() {
        if i > 0 {
            match values.next() {
                Some(crate::store::KeyValue::Str(s)) => b.push_bind(s),
                Some(crate::store::KeyValue::Int(v)) => b.push_bind(v),
                None => b.push("NULL"),
            };
        }
        b.push(piece);
    }
}

fn side_name_expr(facet: &Facet) -> String {
    let pick = |a: String, b: String| {
        format!("(CASE WHEN f.observation_point LIKE 'c%' THEN {a} ELSE {b} END)")
    };
    let dev = |ty: u32, col: &str| {
        format!("COALESCE((SELECT name FROM ch_device d WHERE d.org_id = f.org_id AND d.devicetype = {ty} AND d.deviceid = f.{col}), '')")
    };
    let pod = |col: &str| {
        format!("COALESCE((SELECT name FROM ch_pod p WHERE p.org_id = f.org_id AND p.id = f.{col}), '')")
    };
    match facet {
        Facet::Pod => pick(pod("pod_id_0"), pod("pod_id_1")),
        Facet::Node => pick(dev(14, "pod_node_id_0"), dev(14, "pod_node_id_1")),
        Facet::Host => pick(dev(6, "host_id_0"), dev(6, "host_id_1")),
        _ => "''".into(),
    }
}

fn push_filter(b: &mut QueryBuilder<'_, Sqlite>, org: OrgId, f: &Filter) {
    if let Some(terms) = key_terms(f) {
        push_keyed(b, org, terms);
        return;
    }
    match f {
        Filter::Not(inner) => {
            b.push("NOT (");
            push_filter(b, org, inner);
            b.push(")");
        }
        Filter::IntCmp(col, op, v) => {
            b.push(format!("f.\"{}\" {} ", col.name(), op.sql()));
            b.push_bind(*v);
        }
        Filter::StrCmp(col, op, v) => {
            b.push(format!("CAST(f.\"{}\" AS TEXT) {} ", col.name(), op.sql()));
            b.push_bind(v.clone());
        }
        // No regex engine in SQLite: every row passes, callers re-check exactly.
        Filter::StrRegex(..) => {
            b.push("1");
        }
        Filter::Attr(name, op, v) => {
            b.push("EXISTS (SELECT 1 FROM json_each(f.attribute_names) n, json_each(f.attribute_values) v WHERE n.key = v.key AND n.value = ");
            b.push_bind(name.clone());
            b.push(format!(" AND v.value {} ", op.sql()));
            b.push_bind(v.clone());
            b.push(")");
        }
        Filter::AttrExists(name) => {
            b.push("EXISTS (SELECT 1 FROM json_each(f.attribute_names) n WHERE n.value = ");
            b.push_bind(name.clone());
            b.push(")");
        }
        Filter::StartTimeIn(from, to) => {
            b.push("(f.start_time >= ");
            b.push_bind(*from);
            b.push(" AND f.start_time < ");
            b.push_bind(*to);
            b.push(")");
        }
        Filter::KeyCmp(key, op, value) => {
            let (text, values) = crate::store::span_sql::compare_sql(&dialect(), key, *op, value);
            push_marked(b, &text, values);
        }
        Filter::ServiceIn(names) => {
            if names.is_empty() {
                b.push("0");
            } else {
                let json = serde_json::to_string(names).unwrap_or_default();
                b.push("(");
                if push_service_superset(b, org, names, &json) {
                    b.push(" AND ");
                }
                b.push(format!(
                    "{} IN (SELECT value FROM json_each(",
                    service_expr()
                ));
                b.push_bind(json);
                b.push(")))");
            }
        }
        Filter::True => {
            b.push("1");
        }
        Filter::False => {
            b.push("0");
        }
        Filter::IntIn(col, vals) => {
            if vals.is_empty() {
                b.push("0");
            } else {
                let json: Vec<i64> = vals.iter().map(|&v| v as i64).collect();
                b.push(format!(
                    "f.\"{}\" IN (SELECT value FROM json_each(",
                    col.name()
                ));
                b.push_bind(serde_json::to_string(&json).unwrap_or_default());
                b.push("))");
            }
        }
        Filter::StrIn(col, vals) => push_str_in(b, *col, vals),
        Filter::TraceIdIn(vals) => {
            b.push("(");
            push_str_in(b, Col::TraceId, vals);
            b.push(" OR ");
            push_str_in(b, Col::TraceId2, vals);
            b.push(")");
        }
        Filter::And(parts) | Filter::Or(parts) => {
            let (joiner, empty) = if matches!(f, Filter::And(_)) {
                (" AND ", "1")
            } else {
                (" OR ", "0")
            };
            if parts.is_empty() {
                b.push(empty);
                return;
            }
            b.push("(");
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    b.push(joiner);
                }
                push_filter(b, org, p);
            }
            b.push(")");
        }
    }
}

/// A cheap superset of the rows whose service (`service_expr`) is one of `names`, pushed
/// before the exact expression so that SQLite computes the service, with its correlated name
/// lookups, only for rows that can match: the names are resolved to the ids they stand for
/// once per read (devices, processes), and the rows are compared by id. Pushes nothing and
/// answers `false` when no cheap superset exists (a name the fallbacks produce).
fn push_service_superset(
    b: &mut QueryBuilder<'_, Sqlite>,
    org: OrgId,
    names: &[String],
    json: &str,
) -> bool {
    if names
        .iter()
        .any(|n| n == "unknown app service" || n == "unknown process")
    {
        return false;
    }
    let in_names = |b: &mut QueryBuilder<'_, Sqlite>, expr: &str| {
        b.push(format!("{expr} IN (SELECT value FROM json_each("));
        b.push_bind(json.to_string());
        b.push("))");
    };
    b.push("(");
    in_names(b, "f.app_service");
    for side in 0..2 {
        b.push(" OR ");
        in_names(b, &format!("f.process_kname_{side}"));
        b.push(format!(
            " OR (f.auto_service_type_{side}, f.auto_service_id_{side}) IN \
             (SELECT devicetype, deviceid FROM ch_device WHERE org_id = "
        ));
        b.push_bind(org.0 as i64);
        b.push(" AND ");
        in_names(b, "name");
        b.push(format!(
            ") OR f.gprocess_id_{side} IN (SELECT id FROM ch_gprocess WHERE org_id = "
        ));
        b.push_bind(org.0 as i64);
        b.push(" AND ");
        in_names(b, "name");
        b.push(")");
    }
    // An IP-like service is named by its address.
    if names
        .iter()
        .any(|n| n.parse::<Ipv4Addr>().is_ok() || n.contains(':'))
    {
        b.push(" OR f.auto_service_type_0 IN (0, 255) OR f.auto_service_type_1 IN (0, 255)");
    }
    // A network span is named `<observation point> @ <node or host>`.
    if names.iter().any(|n| n.contains(" @ ")) {
        b.push(" OR f.signal_source NOT IN (3, 4)");
    }
    b.push(")");
    true
}

/// Key columns with an index `(org_id, column)` (partial: the column is not 0 or '').
fn indexed(col: Col) -> bool {
    matches!(
        col,
        Col::Id
            | Col::ReqTcpSeq
            | Col::RespTcpSeq
            | Col::SyscallTraceIdRequest
            | Col::SyscallTraceIdResponse
            | Col::XRequestId0
            | Col::XRequestId1
            | Col::TraceId
            | Col::TraceId2
    )
}

/// One key lookup of a keyed filter: `column IN (values)` with the values as JSON, and the
/// column's empty value (its partial index leaves those rows out).
struct KeyTerm {
    col: Col,
    json: String,
    empty: &'static str,
}

/// The key lookups a filter is the union of, when it is one: an indexed key column `IN` a
/// list holding no empty value, or a disjunction of such.
fn key_terms(f: &Filter) -> Option<Vec<KeyTerm>> {
    let int = |col: &Col, vals: &[u64]| {
        (indexed(*col) && !vals.is_empty() && !vals.contains(&0)).then(|| KeyTerm {
            col: *col,
            json: serde_json::to_string(&vals.iter().map(|&v| v as i64).collect::<Vec<_>>())
                .unwrap_or_default(),
            empty: "0",
        })
    };
    let text = |col: Col, vals: &[String]| {
        (indexed(col) && !vals.is_empty() && !vals.iter().any(|v| v.is_empty())).then(|| KeyTerm {
            col,
            json: serde_json::to_string(vals).unwrap_or_default(),
            empty: "''",
        })
    };
    match f {
        Filter::IntIn(col, vals) => Some(vec![int(col, vals)?]),
        Filter::StrIn(col, vals) => Some(vec![text(*col, vals)?]),
        Filter::TraceIdIn(vals) => {
            Some(vec![text(Col::TraceId, vals)?, text(Col::TraceId2, vals)?])
        }
        Filter::Or(parts) if !parts.is_empty() => {
            let mut out = Vec::new();
            for p in parts {
                out.extend(key_terms(p)?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// Whether a filter selects its rows by keys (itself, or one part of a conjunction): then the
/// rows are read through the key indexes, not by scanning the time window.
fn is_keyed(f: &Filter) -> bool {
    match f {
        Filter::And(parts) => parts.iter().any(is_keyed),
        f => key_terms(f).is_some(),
    }
}

/// A keyed filter as the set of rowids its key indexes give: one index seek per key, the
/// lookups of a disjunction united.
fn push_keyed(b: &mut QueryBuilder<'_, Sqlite>, org: OrgId, terms: Vec<KeyTerm>) {
    b.push("f.rowid IN (");
    for (i, t) in terms.into_iter().enumerate() {
        if i > 0 {
            b.push(" UNION ");
        }
        let col = t.col.name();
        b.push("SELECT k.rowid FROM l7_flow_log k WHERE k.org_id = ");
        b.push_bind(org.0 as i64);
        b.push(format!(
            " AND k.\"{col}\" <> {} AND k.\"{col}\" IN (SELECT value FROM json_each(",
            t.empty
        ));
        b.push_bind(t.json);
        b.push("))");
    }
    b.push(")");
}

fn push_str_in(b: &mut QueryBuilder<'_, Sqlite>, col: Col, vals: &[String]) {
    if vals.is_empty() {
        b.push("0");
        return;
    }
    let col = col.name();
    b.push(format!("f.\"{col}\" IN (SELECT value FROM json_each("));
    b.push_bind(serde_json::to_string(vals).unwrap_or_default());
    b.push("))");
}

/// Rows one read may buffer between SQLite's thread and the decoding.
const ROW_BUFFER: usize = 1024;

/// A value of a JSON row in the range of its field's type; `col` names the field for the
/// error (a raw identifier's `r#` is dropped there, not on every call).
fn fit<T: TryFrom<i64>>(v: i64, col: &'static str) -> StoreResult<T> {
    T::try_from(v).map_err(|_| {
        let col = col.trim_start_matches("r#");
        StoreError::Query(format!("column {col}: value {v} out of range"))
    })
}

/// `fit!(row.column)`: [`fit`] naming the column after the field.
macro_rules! fit {
    ($row:ident . $col:ident) => {
        fit($row.$col, stringify!($col))?
    };
}

/// Declares how a read's rows cross from SQLite: each row is one value, the JSON array of its
/// columns in field order (`json_array(f.a, f.b, …)`), decoded by serde into the struct. One
/// value per row instead of one per column is what makes wide reads cheap: the driver copies
/// and hands over every value it returns one by one.
macro_rules! json_row {
    ($(#[$m:meta])* struct $name:ident { $($col:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(serde::Deserialize)]
        struct $name {
            $($col: $ty,)*
        }

        impl $name {
            /// The SELECT list: `json_array(f."a", f."b", …)`.
            fn select() -> &'static str {
                static SELECT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                    let cols = [$(stringify!($col).trim_start_matches("r#")),*];
                    let cols: Vec<String> = cols.iter().map(|c| format!("f.\"{c}\"")).collect();
                    format!("json_array({})", cols.join(", "))
                });
                &SELECT
            }

            fn decode(row: &SqliteRow) -> StoreResult<$name> {
                let text: &str = row.try_get(0)?;
                serde_json::from_str(text)
                    .map_err(|e| StoreError::Query(format!("embedded row: {e}")))
            }
        }
    };
}

json_row! {
    /// The search-phase columns of a row ([`FlowMeta`]).
    struct MetaRow {
        _id: i64,
        r#type: i64,
        signal_source: i64,
        req_tcp_seq: i64,
        resp_tcp_seq: i64,
        start_time: i64,
        end_time: i64,
        agent_id: i64,
        protocol: i64,
        syscall_trace_id_request: i64,
        syscall_trace_id_response: i64,
        span_id: String,
        parent_span_id: String,
        request_id: Option<i64>,
        l7_protocol: i64,
        trace_id: String,
        _trace_id_2: String,
        x_request_id_0: String,
        x_request_id_1: String,
        observation_point: String,
        time: i64,
    }
}

impl MetaRow {
    fn into_meta(self) -> StoreResult<FlowMeta> {
        Ok(FlowMeta {
            _id: self._id as u64,
            r#type: fit!(self.r#type),
            signal_source: fit!(self.signal_source),
            req_tcp_seq: fit!(self.req_tcp_seq),
            resp_tcp_seq: fit!(self.resp_tcp_seq),
            start_time_us: self.start_time,
            end_time_us: self.end_time,
            agent_id: fit!(self.agent_id),
            protocol: fit!(self.protocol),
            syscall_trace_id_request: self.syscall_trace_id_request as u64,
            syscall_trace_id_response: self.syscall_trace_id_response as u64,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            request_id: self.request_id.map(|v| v as u64),
            l7_protocol: fit!(self.l7_protocol),
            trace_id: self.trace_id,
            _trace_id_2: self._trace_id_2,
            x_request_id_0: self.x_request_id_0,
            x_request_id_1: self.x_request_id_1,
            observation_point: self.observation_point,
            time: fit!(self.time),
        })
    }
}

/// An address as DeepFlow's querier renders it, from the stored IPv4 integer or IPv6 text.
fn ip_string(is_ipv4: i64, v4: i64, v6: String) -> String {
    if is_ipv4 == 1 {
        Ipv4Addr::from(v4 as u32).to_string()
    } else {
        v6.parse::<Ipv6Addr>().map(|a| a.to_string()).unwrap_or(v6)
    }
}

fn json_list(text: &str, col: &str) -> StoreResult<Vec<String>> {
    serde_json::from_str(text).map_err(|e| StoreError::Query(format!("column {col}: {e}")))
}

json_row! {
    /// A record's own columns; its names are resolved after the read
    /// ([`SqliteStore::resolve_names`]).
    struct RecordRow {
        _id: i64,
        time: i64,
        signal_source: i64,
        l7_protocol: i64,
        biz_protocol: String,
        r#type: i64,
        req_tcp_seq: i64,
        resp_tcp_seq: i64,
        agent_id: i64,
        capture_nic: i64,
        capture_nic_type: i64,
        syscall_trace_id_request: i64,
        syscall_trace_id_response: i64,
        syscall_cap_seq_0: i64,
        syscall_cap_seq_1: i64,
        trace_id: String,
        _trace_id_2: String,
        span_id: String,
        parent_span_id: String,
        x_request_id_0: String,
        x_request_id_1: String,
        flow_id: i64,
        protocol: i64,
        version: String,
        process_id_0: i64,
        process_id_1: i64,
        observation_point: String,
        client_port: i64,
        server_port: i64,
        subnet_id_0: i64,
        subnet_id_1: i64,
        auto_instance_type_0: i64,
        auto_instance_type_1: i64,
        auto_instance_id_0: i64,
        auto_instance_id_1: i64,
        auto_service_type_0: i64,
        auto_service_type_1: i64,
        auto_service_id_0: i64,
        auto_service_id_1: i64,
        process_kname_0: String,
        process_kname_1: String,
        gprocess_id_0: i64,
        gprocess_id_1: i64,
        pod_id_0: i64,
        pod_id_1: i64,
        pod_ns_id_0: i64,
        pod_ns_id_1: i64,
        pod_node_id_0: i64,
        pod_node_id_1: i64,
        host_id_0: i64,
        host_id_1: i64,
        app_service: String,
        app_instance: String,
        capture_network_type_id: i64,
        is_tls: i64,
        is_async: i64,
        response_status: i64,
        response_duration: i64,
        biz_response_code: String,
        response_exception: String,
        response_result: String,
        request_type: String,
        request_domain: String,
        request_resource: String,
        request_id: Option<i64>,
        http_proxy_client: String,
        endpoint: String,
        attribute_names: String,
        attribute_values: String,
        events: String,
        start_time: i64,
        end_time: i64,
        response_code: Option<i64>,
        span_kind: Option<i64>,
        is_ipv4: i64,
        ip4_0: i64,
        ip4_1: i64,
        ip6_0: String,
        ip6_1: String,
    }
}

impl RecordRow {
    fn into_record(self) -> StoreResult<FlowRecord> {
        let r = self;
        Ok(FlowRecord {
            _id: r._id as u64,
            time: fit!(r.time),
            signal_source: fit!(r.signal_source),
            l7_protocol: fit!(r.l7_protocol),
            biz_protocol: r.biz_protocol,
            r#type: fit!(r.r#type),
            req_tcp_seq: fit!(r.req_tcp_seq),
            resp_tcp_seq: fit!(r.resp_tcp_seq),
            start_time_us: r.start_time,
            end_time_us: r.end_time,
            agent_id: fit!(r.agent_id),
            capture_nic: fit!(r.capture_nic),
            capture_nic_type: fit!(r.capture_nic_type),
            capture_nic_name: String::new(),
            vtap_device_type: 0,
            vtap_device_name: String::new(),
            vtap_host_name: String::new(),
            vtap_pod_node_name: String::new(),
            syscall_trace_id_request: r.syscall_trace_id_request as u64,
            syscall_trace_id_response: r.syscall_trace_id_response as u64,
            syscall_cap_seq_0: fit!(r.syscall_cap_seq_0),
            syscall_cap_seq_1: fit!(r.syscall_cap_seq_1),
            trace_id: r.trace_id,
            _trace_id_2: r._trace_id_2,
            span_id: r.span_id,
            parent_span_id: r.parent_span_id,
            span_kind: r.span_kind.map(|v| v as u8),
            x_request_id_0: r.x_request_id_0,
            x_request_id_1: r.x_request_id_1,
            flow_id: r.flow_id as u64,
            protocol: fit!(r.protocol),
            version: r.version,
            process_id_0: fit!(r.process_id_0),
            process_id_1: fit!(r.process_id_1),
            observation_point: r.observation_point,
            ip_0: ip_string(r.is_ipv4, r.ip4_0, r.ip6_0),
            ip_1: ip_string(r.is_ipv4, r.ip4_1, r.ip6_1),
            client_port: fit!(r.client_port),
            server_port: fit!(r.server_port),
            subnet_id_0: fit!(r.subnet_id_0),
            subnet_id_1: fit!(r.subnet_id_1),
            subnet_0: String::new(),
            subnet_1: String::new(),
            auto_instance_type_0: fit!(r.auto_instance_type_0),
            auto_instance_type_1: fit!(r.auto_instance_type_1),
            auto_instance_id_0: fit!(r.auto_instance_id_0),
            auto_instance_id_1: fit!(r.auto_instance_id_1),
            auto_instance_name_0: String::new(),
            auto_instance_name_1: String::new(),
            auto_service_type_0: fit!(r.auto_service_type_0),
            auto_service_type_1: fit!(r.auto_service_type_1),
            auto_service_id_0: fit!(r.auto_service_id_0),
            auto_service_id_1: fit!(r.auto_service_id_1),
            auto_service_name_0: String::new(),
            auto_service_name_1: String::new(),
            process_kname_0: r.process_kname_0,
            process_kname_1: r.process_kname_1,
            gprocess_id_0: fit!(r.gprocess_id_0),
            gprocess_id_1: fit!(r.gprocess_id_1),
            gprocess_0: String::new(),
            gprocess_1: String::new(),
            pod_id_0: fit!(r.pod_id_0),
            pod_id_1: fit!(r.pod_id_1),
            pod_0: String::new(),
            pod_1: String::new(),
            pod_ns_id_0: fit!(r.pod_ns_id_0),
            pod_ns_id_1: fit!(r.pod_ns_id_1),
            pod_node_id_0: fit!(r.pod_node_id_0),
            pod_node_id_1: fit!(r.pod_node_id_1),
            pod_node_0: String::new(),
            pod_node_1: String::new(),
            host_id_0: fit!(r.host_id_0),
            host_id_1: fit!(r.host_id_1),
            host_0: String::new(),
            host_1: String::new(),
            app_service: r.app_service,
            app_instance: r.app_instance,
            capture_network_type_id: fit!(r.capture_network_type_id),
            tap: String::new(),
            is_tls: fit!(r.is_tls),
            is_async: fit!(r.is_async),
            response_status: fit!(r.response_status),
            response_duration: r.response_duration as u64,
            biz_response_code: r.biz_response_code,
            response_code: r.response_code.map(|v| v as i32),
            response_exception: r.response_exception,
            response_result: r.response_result,
            request_type: r.request_type,
            request_domain: r.request_domain,
            request_resource: r.request_resource,
            request_id: r.request_id.map(|v| v as u64),
            http_proxy_client: r.http_proxy_client,
            endpoint: r.endpoint,
            attribute_names: json_list(&r.attribute_names, "attribute_names")?,
            attribute_values: json_list(&r.attribute_values, "attribute_values")?,
            events: r.events,
        })
    }
}

/// Bind one `L7FlowLogRow` in `SQLITE_L7_COLUMNS` order.
fn bind_row(
    mut s: sqlx::query_builder::Separated<'_, '_, Sqlite, &'static str>,
    org: OrgId,
    r: &L7FlowLogRow,
) {
    s.push_bind(org.0 as i64);
    s.push_bind(r._id as i64);
    for v in [
        r.region_id_0 as i64,
        r.region_id_1 as i64,
        r.az_id_0 as i64,
        r.az_id_1 as i64,
        r.host_id_0 as i64,
        r.host_id_1 as i64,
        r.l3_device_type_0 as i64,
        r.l3_device_type_1 as i64,
        r.l3_device_id_0 as i64,
        r.l3_device_id_1 as i64,
        r.pod_node_id_0 as i64,
        r.pod_node_id_1 as i64,
        r.pod_ns_id_0 as i64,
        r.pod_ns_id_1 as i64,
        r.pod_group_id_0 as i64,
        r.pod_group_id_1 as i64,
        r.pod_id_0 as i64,
        r.pod_id_1 as i64,
        r.pod_cluster_id_0 as i64,
        r.pod_cluster_id_1 as i64,
        r.l3_epc_id_0 as i64,
        r.l3_epc_id_1 as i64,
        r.epc_id_0 as i64,
        r.epc_id_1 as i64,
        r.subnet_id_0 as i64,
        r.subnet_id_1 as i64,
        r.service_id_0 as i64,
        r.service_id_1 as i64,
        r.auto_instance_id_0 as i64,
        r.auto_instance_type_0 as i64,
        r.auto_service_id_0 as i64,
        r.auto_service_type_0 as i64,
        r.auto_instance_id_1 as i64,
        r.auto_instance_type_1 as i64,
        r.auto_service_id_1 as i64,
        r.auto_service_type_1 as i64,
        r.time as i64,
        u32::from(r.ip4_0.0) as i64,
        u32::from(r.ip4_1.0) as i64,
    ] {
        s.push_bind(v);
    }
    s.push_bind(r.ip6_0.0.to_string());
    s.push_bind(r.ip6_1.0.to_string());
    for v in [
        r.is_ipv4 as i64,
        r.protocol as i64,
        r.client_port as i64,
        r.server_port as i64,
        r.flow_id as i64,
        r.capture_network_type_id as i64,
        r.capture_nic_type as i64,
        r.signal_source as i64,
        r.capture_nic as i64,
    ] {
        s.push_bind(v);
    }
    s.push_bind(r.observation_point.clone());
    for v in [
        r.agent_id as i64,
        r.req_tcp_seq as i64,
        r.resp_tcp_seq as i64,
        r.start_time,
        r.end_time,
        r.gprocess_id_0 as i64,
        r.gprocess_id_1 as i64,
    ] {
        s.push_bind(v);
    }
    s.push_bind(r.biz_response_code.clone());
    s.push_bind(r.process_id_0 as i64);
    s.push_bind(r.process_id_1 as i64);
    s.push_bind(r.process_kname_0.clone());
    s.push_bind(r.process_kname_1.clone());
    for v in [
        r.syscall_trace_id_request as i64,
        r.syscall_trace_id_response as i64,
        r.syscall_thread_0 as i64,
        r.syscall_thread_1 as i64,
        r.syscall_cap_seq_0 as i64,
        r.syscall_cap_seq_1 as i64,
        r.l7_protocol as i64,
    ] {
        s.push_bind(v);
    }
    s.push_bind(r.biz_protocol.clone());
    s.push_bind(r.version.clone());
    s.push_bind(r.r#type as i64);
    s.push_bind(r.is_tls as i64);
    s.push_bind(r.is_async as i64);
    for v in [
        &r.request_type,
        &r.request_domain,
        &r.request_resource,
        &r.endpoint,
    ] {
        s.push_bind(v.clone());
    }
    s.push_bind(r.request_id.map(|v| v as i64));
    s.push_bind(r.response_status as i64);
    s.push_bind(r.response_code.map(|v| v as i64));
    for v in [
        &r.response_exception,
        &r.response_result,
        &r.http_proxy_client,
        &r.x_request_id_0,
        &r.x_request_id_1,
        &r.trace_id,
        &r._trace_id_2,
    ] {
        s.push_bind(v.clone());
    }
    s.push_bind(r.trace_id_index as i64);
    s.push_bind(r.span_id.clone());
    s.push_bind(r.parent_span_id.clone());
    s.push_bind(r.span_kind.map(|v| v as i64));
    s.push_bind(r.app_service.clone());
    s.push_bind(r.app_instance.clone());
    s.push_bind(r.response_duration as i64);
    s.push_bind(r.request_length);
    s.push_bind(r.response_length);
    s.push_bind(serde_json::to_string(&r.attribute_names).unwrap_or_else(|_| "[]".into()));
    s.push_bind(serde_json::to_string(&r.attribute_values).unwrap_or_else(|_| "[]".into()));
    s.push_bind(r.events.clone());
    for v in [
        r.tag_source_0 as i64,
        r.tag_source_1 as i64,
        r.team_id as i64,
        r.nat_source as i64,
        r.tunnel_type as i64,
        r.biz_type as i64,
    ] {
        s.push_bind(v);
    }
    s.push_bind(r.biz_code.clone());
    s.push_bind(r.biz_scenario.clone());
    s.push_bind(r.syscall_coroutine_0 as i64);
    s.push_bind(r.syscall_coroutine_1 as i64);
    s.push_bind(r.is_reversed as i64);
    s.push_bind(r.sql_affected_rows.map(|v| v as i64));
    s.push_bind(r.direction_score as i64);
    s.push_bind(r.captured_request_byte as i64);
    s.push_bind(r.captured_response_byte as i64);
    s.push_bind(serde_json::to_string(&r.metrics_names).unwrap_or_else(|_| "[]".into()));
    s.push_bind(serde_json::to_string(&r.metrics_values).unwrap_or_else(|_| "[]".into()));
}

/// SQLite allows 32766 bound values per statement; one row binds 120.
const ROWS_PER_INSERT: usize = 250;

#[async_trait]
impl FlowStore for SqliteStore {
    fn max_rows(&self) -> u64 {
        self.max_rows
    }

    fn kind(&self) -> StoreKind {
        StoreKind::Embedded
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn select_meta(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowMeta>> {
        let mut b = QueryBuilder::<Sqlite>::new(format!("SELECT {}", MetaRow::select()));
        self.push_tail(&mut b, org, q);
        let mut rows = b.build().fetch(&self.pool);
        let mut out = Vec::new();
        // Each row is decoded as it arrives, while SQLite's thread produces the next.
        while let Some(row) = rows.try_next().await? {
            out.push(MetaRow::decode(&row)?.into_meta()?);
        }
        Ok(out)
    }

    async fn select_records(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowRecord>> {
        let mut b = QueryBuilder::<Sqlite>::new(format!("SELECT {}", RecordRow::select()));
        self.push_tail(&mut b, org, q);
        let mut rows = b.build().fetch(&self.pool);
        let mut records = Vec::new();
        while let Some(row) = rows.try_next().await? {
            records.push(RecordRow::decode(&row)?.into_record()?);
        }
        drop(rows);
        self.resolve_names(org, &mut records).await?;
        Ok(records)
    }

    async fn insert_rows(&self, org: OrgId, rows: &[L7FlowLogRow]) -> StoreResult<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let cols: Vec<String> = std::iter::once("org_id".to_string())
            .chain(SQLITE_L7_COLUMNS.iter().map(|(n, _)| format!("\"{n}\"")))
            .collect();
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let mut b = QueryBuilder::<Sqlite>::new(format!(
                "INSERT INTO l7_flow_log ({}) ",
                cols.join(", ")
            ));
            b.push_values(chunk, |s, r| bind_row(s, org, r));
            b.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_names(&self, org: OrgId, n: &NameTables) -> StoreResult<()> {
        let o = org.0 as i64;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for d in &n.devices {
            sqlx::query("INSERT OR REPLACE INTO ch_device (org_id, devicetype, deviceid, name, icon_id, uid, hostname, ip, team_id, domain_id, sub_domain_id) VALUES (?,?,?,?,?,?,?,?,?,?,?)")
                .bind(o).bind(d.devicetype as i64).bind(d.deviceid as i64).bind(&d.name).bind(d.icon_id)
                .bind(&d.uid).bind(&d.hostname).bind(&d.ip).bind(d.team_id as i64).bind(d.domain_id as i64).bind(d.sub_domain_id as i64)
                .execute(&mut *tx).await?;
        }
        for p in &n.pods {
            sqlx::query("INSERT OR REPLACE INTO ch_pod (org_id, id, name, icon_id, pod_cluster_id, pod_ns_id, pod_node_id, pod_service_id, pod_group_id, team_id, domain_id, sub_domain_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")
                .bind(o).bind(p.id as i64).bind(&p.name).bind(p.icon_id).bind(p.pod_cluster_id as i64).bind(p.pod_ns_id as i64)
                .bind(p.pod_node_id as i64).bind(p.pod_service_id as i64).bind(p.pod_group_id as i64).bind(p.team_id as i64)
                .bind(p.domain_id as i64).bind(p.sub_domain_id as i64)
                .execute(&mut *tx).await?;
        }
        for (table, list) in [("ch_subnet", &n.subnets), ("ch_gprocess", &n.gprocesses)] {
            for r in list {
                sqlx::query(&format!(
                    "INSERT OR REPLACE INTO {table} (org_id, id, name) VALUES (?,?,?)"
                ))
                .bind(o)
                .bind(r.id as i64)
                .bind(&r.name)
                .execute(&mut *tx)
                .await?;
            }
        }
        for v in &n.vtap_ports {
            sqlx::query("INSERT OR REPLACE INTO ch_vtap_port (org_id, vtap_id, tap_port, name, host_id, host_name, chost_id, chost_name, pod_node_id, pod_node_name, device_type, device_id, device_name, icon_id, team_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
                .bind(o).bind(v.vtap_id as i64).bind(v.tap_port as i64).bind(&v.name).bind(v.host_id).bind(&v.host_name)
                .bind(v.chost_id).bind(&v.chost_name).bind(v.pod_node_id).bind(&v.pod_node_name).bind(v.device_type as i64)
                .bind(v.device_id as i64).bind(&v.device_name).bind(v.icon_id).bind(v.team_id as i64)
                .execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn apply_schema(&self, _org: OrgId, _options: SchemaOptions) -> StoreResult<()> {
        // One schema serves every organisation; the embedded store keeps no TTL.
        self.create_schema().await
    }

    async fn distinct_values(
        &self,
        org: OrgId,
        q: &FlowQuery,
        facet: &Facet,
    ) -> StoreResult<Vec<String>> {
        let mut b = QueryBuilder::<Sqlite>::new("SELECT v FROM (SELECT DISTINCT ");
        match facet {
            Facet::Column(col) => {
                b.push(format!(
                    "COALESCE(CAST(f.\"{}\" AS TEXT), '') AS v",
                    col.name()
                ));
            }
            Facet::Service => {
                b.push(format!("{} AS v", service_expr()));
            }
            Facet::Pod | Facet::Node | Facet::Host => {
                b.push(format!("{} AS v", side_name_expr(facet)));
            }
            Facet::AttributeNames => {
                b.push("n.value AS v");
            }
            Facet::AttributeValues(_) => {
                b.push("v.value AS v");
            }
        }
        match facet {
            Facet::AttributeNames => {
                b.push(" FROM l7_flow_log f, json_each(f.attribute_names) n WHERE f.org_id = ");
                self.push_rest(&mut b, org, q);
            }
            Facet::AttributeValues(name) => {
                b.push(" FROM l7_flow_log f, json_each(f.attribute_names) n, json_each(f.attribute_values) v WHERE n.key = v.key AND n.value = ");
                b.push_bind(name.clone());
                b.push(" AND f.org_id = ");
                self.push_rest(&mut b, org, q);
            }
            _ => self.push_from_where(&mut b, org, q),
        }
        b.push(") WHERE v != '' ORDER BY v LIMIT ");
        b.push_bind(self.effective_limit(q) as i64);
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("v").map_err(StoreError::from))
            .collect()
    }

    async fn aggregate(
        &self,
        org: OrgId,
        agg: &crate::store::Aggregation,
    ) -> StoreResult<Vec<crate::store::AggregateRow>> {
        let mut b = QueryBuilder::<Sqlite>::new("SELECT ");
        let d = dialect();
        for (i, key) in agg.by.iter().enumerate() {
            let k = crate::store::span_sql::key_sql(&d, key);
            b.push("COALESCE(");
            push_marked(
                &mut b,
                &k.text,
                k.binds
                    .into_iter()
                    .map(crate::store::KeyValue::Str)
                    .collect(),
            );
            b.push(format!(", '') AS g{i}, "));
        }
        let value = match agg.value {
            Some(col) => format!("CAST(f.\"{}\" AS REAL)", col.name()),
            None => "0.0".to_string(),
        };
        match (agg.log2, agg.value) {
            (Some(d), Some(col)) => b.push(format!(
                "{} AS l, ",
                crate::store::Aggregation::log2_case(&format!("f.\"{}\"", col.name()), d)
            )),
            _ => b.push("0 AS l, "),
        };
        b.push("(f.start_time - ");
        b.push_bind(agg.start_us);
        b.push(") / ");
        b.push_bind(agg.step_us.max(1));
        b.push(format!(
            " AS b, COUNT(*) AS c, COALESCE(MIN({value}), 0.0) AS mn, COALESCE(MAX({value}), 0.0) AS mx, \
             COALESCE(SUM({value}), 0.0) AS s, {} AS x",
            if agg.exemplars { "MAX(f._id)" } else { "0" }
        ));
        let q = FlowQuery::new(agg.filter.clone()).window(agg.time_window());
        self.push_from_where(&mut b, org, &q);
        b.push(" AND f.start_time >= ");
        b.push_bind(agg.start_us);
        b.push(" AND f.start_time < ");
        b.push_bind(agg.end_us);
        b.push(" GROUP BY ");
        for i in 0..agg.by.len() {
            b.push(format!("g{i}, "));
        }
        b.push("l, b LIMIT ");
        b.push_bind(agg.max_rows.min(i64::MAX as u64) as i64);
        let rows = b.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(crate::store::AggregateRow {
                    group: (0..agg.by.len())
                        .map(|i| r.try_get::<String, _>(format!("g{i}").as_str()))
                        .collect::<Result<_, _>>()?,
                    bucket: r.try_get("b")?,
                    log2: r.try_get("l")?,
                    count: r.try_get::<i64, _>("c")? as u64,
                    min: r.try_get("mn")?,
                    max: r.try_get("mx")?,
                    sum: r.try_get("s")?,
                    last_id: r.try_get::<i64, _>("x")? as u64,
                })
            })
            .collect()
    }

    fn schema_ddl(&self, _org: OrgId) -> Vec<String> {
        std::iter::once(schema::sqlite_l7_table())
            .chain(schema::sqlite_statements().into_iter().map(|s| s.sql))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TimeWindow;

    /// SQLite's plan for `SELECT _id` of `q`.
    async fn plan(store: &SqliteStore, q: &FlowQuery) -> Vec<String> {
        let mut b = QueryBuilder::<Sqlite>::new("EXPLAIN QUERY PLAN SELECT f._id");
        store.push_tail(&mut b, OrgId(1), q);
        b.build()
            .fetch_all(&store.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String, _>(3).unwrap())
            .collect()
    }

    /// Keyed reads (the tracing search's) seek their rows through the key indexes and by rowid;
    /// the time index serves only reads without keys.
    #[tokio::test]
    async fn keyed_reads_seek_by_key_not_by_time() {
        let store = SqliteStore::open(":memory:", 10_000).await.unwrap();
        let w = TimeWindow::new(1_700_000_000, 1_700_000_600);
        let keyed = Filter::Or(vec![
            Filter::IntIn(Col::ReqTcpSeq, vec![1, 2]),
            Filter::IntIn(Col::RespTcpSeq, vec![3]),
            Filter::IntIn(Col::SyscallTraceIdRequest, vec![4]),
            Filter::StrIn(Col::XRequestId0, vec!["r".into()]),
            Filter::TraceIdIn(vec!["t".into()]),
        ]);
        for f in [keyed, Filter::ids([7, 8])] {
            let p = plan(&store, &FlowQuery::new(f.clone()).window(w)).await;
            assert!(
                p.iter()
                    .any(|l| l.contains("SEARCH f USING INTEGER PRIMARY KEY")),
                "{f:?}: {p:?}"
            );
            assert!(!p.iter().any(|l| l.contains("l7_time")), "{f:?}: {p:?}");
        }
        let p = plan(
            &store,
            &FlowQuery::new(Filter::IntIn(Col::L7Protocol, vec![120])).window(w),
        )
        .await;
        assert!(p.iter().any(|l| l.contains("l7_time")), "{p:?}");
    }

    /// A most-recent-first page (search candidates) walks the time index in its order and
    /// stops at its limit: no sort of the whole window.
    #[tokio::test]
    async fn recent_first_pages_read_the_time_index_in_order() {
        let store = SqliteStore::open(":memory:", 10_000).await.unwrap();
        let w = TimeWindow::new(1_700_000_000, 1_700_000_600);
        for f in [
            Filter::True,
            Filter::ServiceIn(vec!["svc".into()]),
            Filter::IntIn(Col::ResponseStatus, vec![3]),
        ] {
            let q = FlowQuery::new(f.clone())
                .window(w)
                .order(Order::TimeDesc)
                .limit(2_000);
            let p = plan(&store, &q).await;
            assert!(p.iter().any(|l| l.contains("l7_time_id")), "{f:?}: {p:?}");
            assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{f:?}: {p:?}");
        }
    }

    /// A file of an older schema (version 1: the time index without `_id`) is brought up to
    /// date when opened: the new index replaces the old one.
    #[tokio::test]
    async fn an_older_file_gets_the_current_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let path = path.to_str().unwrap();
        {
            let store = SqliteStore::open(path, 10_000).await.unwrap();
            for sql in [
                "DROP INDEX l7_time_id",
                "CREATE INDEX l7_time ON l7_flow_log (org_id, time)",
                "PRAGMA user_version = 1",
            ] {
                sqlx::query(sql).execute(&store.pool).await.unwrap();
            }
            store.pool.close().await;
        }
        let store = SqliteStore::open(path, 10_000).await.unwrap();
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'l7_flow_log'",
        )
        .fetch_all(&store.pool)
        .await
        .unwrap();
        assert!(indexes.iter().any(|i| i == "l7_time_id"), "{indexes:?}");
        assert!(!indexes.iter().any(|i| i == "l7_time"), "{indexes:?}");
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
