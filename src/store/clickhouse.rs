//! `FlowStore` over DeepFlow's ClickHouse, through the official `clickhouse` crate (HTTP).
//!
//! Reads go to `<org db>.l7_flow_log` (DeepFlow's global table) and resolve names with the
//! `flow_tag` dictionaries exactly as DeepFlow's querier does (`dictGet` on `device_map`,
//! `subnet_map`, `gprocess_map`, `pod_map`, `vtap_port_map`, `tap_type_map`). Writes (only for
//! `schema --apply` and `load`) go to `l7_flow_log_local`, as DeepFlow's ingester writes.
//! Every user value is bound with the crate's escaping `bind`; identifiers come only from
//! [`Col`] and from validated configuration.

use super::model::{FlowMeta, FlowRecord, L7FlowLogRow, NameTables, OrgId};
use super::schema;
use super::{
    Col, Facet, Filter, FlowQuery, FlowStore, Order, SchemaOptions, StoreError, StoreKind,
    StoreResult,
};
use async_trait::async_trait;
use std::time::Duration;

/// Connection settings (from the `[clickhouse]` configuration section).
#[derive(Debug, Clone)]
pub struct ClickHouseSettings {
    pub url: String,
    pub user: String,
    pub password: String,
    /// Base name of the flow database (`flow_log`); org N reads `NNNN_<database>`.
    pub database: String,
    /// Base name of the dictionary database (`flow_tag`).
    pub dictionary_database: String,
    pub timeout: Duration,
    pub max_rows: u64,
}

/// The ClickHouse store.
pub struct ClickHouseStore {
    client: clickhouse::Client,
    settings: ClickHouseSettings,
    /// The runtime the store was created on. Reads run there, not on the caller's: the HTTP
    /// client's pooled connections are driven by tasks of the runtime that opened them, and
    /// an actix worker's runtime ends at shutdown while other workers' requests still use
    /// those connections.
    runtime: Option<tokio::runtime::Handle>,
}

/// Aborts the spawned read when the request that awaits it is dropped (deadline, client
/// gone, shutdown past its grace), so the ClickHouse connection closes and the server-side
/// query is cancelled.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A value bound to one `?` of a query.
enum BindValue {
    U32(u32),
    I64(i64),
    Str(String),
    U64s(Vec<u64>),
    Strs(Vec<String>),
}

impl From<clickhouse::error::Error> for StoreError {
    fn from(e: clickhouse::error::Error) -> Self {
        use clickhouse::error::Error as E;
        match e {
            E::Network(_) => StoreError::Unavailable(e.to_string()),
            E::TimedOut => StoreError::Unavailable("timeout expired".into()),
            // What came back is not a ClickHouse answer (a proxy's page, a cut-off body):
            // a fault of the store's side, transient as far as this service can tell.
            E::Decompression(_)
            | E::DataFormat(_)
            | E::NotEnoughData
            | E::InvalidUtf8Encoding(_)
            | E::InvalidTagEncoding(_)
            | E::VariantDiscriminatorIsOutOfBound(_)
            | E::InvalidColumnsHeader(_)
            | E::Custom(_) => {
                StoreError::Unavailable(format!("clickhouse answered an unreadable body: {e}"))
            }
            E::SchemaMismatch(_) => StoreError::Unavailable(format!(
                "clickhouse's schema does not match DeepFlow's: {e}"
            )),
            E::BadResponse(ref msg) if exception_code(msg).is_none() => {
                StoreError::Unavailable(format!("clickhouse answered an error: {msg}"))
            }
            other => StoreError::Query(other.to_string()),
        }
    }
}

/// ClickHouse exception codes given their own meaning (see `ErrorCodes.cpp`).
const THERE_IS_NO_COLUMN: u32 = 8;
const NOT_FOUND_COLUMN_IN_BLOCK: u32 = 10;
const NO_SUCH_COLUMN_IN_TABLE: u32 = 16;
const BAD_ARGUMENTS: u32 = 36;
const UNKNOWN_IDENTIFIER: u32 = 47;
const UNKNOWN_TABLE: u32 = 60;
const UNKNOWN_DATABASE: u32 = 81;
const TIMEOUT_EXCEEDED: u32 = 159;
const TOO_MANY_SIMULTANEOUS_QUERIES: u32 = 202;

/// The exception code of an error answer (`Code: 81. DB::Exception: …`, or `Code: 81` when
/// ClickHouse sent only the `X-ClickHouse-Exception-Code` header).
fn exception_code(msg: &str) -> Option<u32> {
    let rest = &msg[msg.find("Code: ")? + "Code: ".len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// The first line of an error answer, without ClickHouse's stack trace.
fn first_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or(msg).trim()
}

/// The settings every read carries (see [`ClickHouseStore::build`]).
fn read_settings(query: clickhouse::query::Query) -> clickhouse::query::Query {
    query
        .with_setting("readonly", "2")
        .with_setting("cancel_http_readonly_queries_on_client_close", "1")
        // Batched auto-tracing sends long key lists (bound values are inlined in the text).
        .with_setting("max_query_size", "67108864")
}

const META_SELECT: &str = "SELECT _id, type, signal_source, req_tcp_seq, resp_tcp_seq, \
    toUnixTimestamp64Micro(start_time) AS start_time_us, toUnixTimestamp64Micro(end_time) AS end_time_us, \
    agent_id, protocol, syscall_trace_id_request, syscall_trace_id_response, span_id, parent_span_id, \
    request_id, l7_protocol, trace_id, _trace_id_2, x_request_id_0, x_request_id_1, observation_point, toUInt32(time) AS time";

impl ClickHouseStore {
    pub fn new(settings: ClickHouseSettings) -> StoreResult<Self> {
        for (key, v) in [
            ("clickhouse.database", &settings.database),
            (
                "clickhouse.dictionary_database",
                &settings.dictionary_database,
            ),
        ] {
            if !is_identifier(v) {
                return Err(StoreError::Invalid(format!(
                    "{key}: {v:?} is not a plain identifier"
                )));
            }
        }
        let mut client = clickhouse::Client::default()
            .with_url(settings.url.clone())
            .with_setting(
                "max_execution_time",
                settings.timeout.as_secs().max(1).to_string(),
            );
        if !settings.user.is_empty() {
            client = client.with_user(settings.user.clone());
        }
        if !settings.password.is_empty() {
            client = client.with_password(settings.password.clone());
        }
        Ok(ClickHouseStore {
            client,
            settings,
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    fn flow_db(&self, org: OrgId) -> String {
        org.database(&self.settings.database)
    }

    fn tag_db(&self, org: OrgId) -> String {
        org.database(&self.settings.dictionary_database)
    }

    async fn timed<T>(
        &self,
        fut: impl std::future::Future<Output = clickhouse::error::Result<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(self.settings.timeout, fut).await {
            Ok(r) => r.map_err(|e| self.classify(e, None)),
            Err(_) => Err(StoreError::Timeout(self.settings.timeout.as_secs())),
        }
    }

    /// Run a read on the store's runtime (see [`ClickHouseStore::runtime`]); dropping the
    /// returned future aborts it.
    async fn on_store_runtime<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = clickhouse::error::Result<T>> + Send + 'static,
    ) -> clickhouse::error::Result<T> {
        let Some(rt) = &self.runtime else {
            return fut.await;
        };
        let mut task = AbortOnDrop(rt.spawn(fut));
        match (&mut task.0).await {
            Ok(r) => r,
            Err(e) => Err(clickhouse::error::Error::Network(Box::new(e))),
        }
    }

    /// [`Self::timed`] for a read of one organisation's tables: a missing database or table
    /// means the organisation has no data here (404), not a fault.
    async fn read<T: Send + 'static>(
        &self,
        org: OrgId,
        fut: impl std::future::Future<Output = clickhouse::error::Result<T>> + Send + 'static,
    ) -> StoreResult<T> {
        let fut = self.on_store_runtime(fut);
        match tokio::time::timeout(self.settings.timeout, fut).await {
            Ok(r) => r.map_err(|e| self.classify(e, Some(org))),
            Err(_) => Err(StoreError::Timeout(self.settings.timeout.as_secs())),
        }
    }

    /// Map ClickHouse's exception codes that are not faults of the query to their own errors.
    fn classify(&self, e: clickhouse::error::Error, org: Option<OrgId>) -> StoreError {
        let code = match &e {
            clickhouse::error::Error::BadResponse(msg) => exception_code(msg),
            _ => None,
        };
        let msg = match &e {
            clickhouse::error::Error::BadResponse(msg) => msg.as_str(),
            _ => "",
        };
        let about_dictionary = msg.contains("Dictionary (") || msg.contains("dictionary");
        match (code, org) {
            // DeepFlow's name dictionaries are missing: names cannot be resolved, so no span
            // can be answered right. The deployment's fault, not the request's: 503.
            (Some(BAD_ARGUMENTS | UNKNOWN_TABLE | UNKNOWN_DATABASE), _) if about_dictionary => {
                StoreError::Unavailable(format!(
                    "clickhouse lacks DeepFlow's flow_tag dictionaries (create them with `schema --apply`): {}",
                    first_line(msg)
                ))
            }
            (
                Some(
                    UNKNOWN_IDENTIFIER
                    | NO_SUCH_COLUMN_IN_TABLE
                    | THERE_IS_NO_COLUMN
                    | NOT_FOUND_COLUMN_IN_BLOCK,
                ),
                _,
            ) => StoreError::Unavailable(format!(
                "clickhouse's l7_flow_log does not have DeepFlow's columns: {}",
                first_line(msg)
            )),
            (Some(UNKNOWN_DATABASE), Some(org)) => StoreError::NotFound(format!(
                "organisation {} has no flow data: clickhouse has no database `{}`",
                org.0,
                self.flow_db(org)
            )),
            (Some(UNKNOWN_TABLE), Some(org)) => StoreError::NotFound(format!(
                "organisation {} has no flow data: clickhouse has no table `{}`.`l7_flow_log`",
                org.0,
                self.flow_db(org)
            )),
            (Some(TIMEOUT_EXCEEDED), _) => StoreError::Timeout(self.settings.timeout.as_secs()),
            (Some(TOO_MANY_SIMULTANEOUS_QUERIES), _) => {
                StoreError::Overloaded(format!("clickhouse refused the query: {e}"))
            }
            _ => e.into(),
        }
    }

    /// `FROM <db>.l7_flow_log WHERE …` with its bound values.
    fn where_clause(&self, org: OrgId, q: &FlowQuery) -> (String, Vec<BindValue>) {
        let mut sql = format!(" FROM `{}`.`l7_flow_log` WHERE ", self.flow_db(org));
        let mut binds = Vec::new();
        if let Some(w) = q.effective_window() {
            sql.push_str("time >= toDateTime(?) AND time <= toDateTime(?) AND ");
            binds.push(BindValue::U32(w.start_s));
            binds.push(BindValue::U32(w.end_s));
        }
        compile_filter(&q.filter, &self.tag_db(org), &mut sql, &mut binds);
        (sql, binds)
    }

    fn limit(&self, q: &FlowQuery) -> u64 {
        q.limit
            .unwrap_or(self.settings.max_rows)
            .min(self.settings.max_rows)
    }

    /// `FROM … WHERE … ORDER … LIMIT n` with its bound values.
    fn tail(&self, org: OrgId, q: &FlowQuery) -> (String, Vec<BindValue>) {
        let (mut sql, binds) = self.where_clause(org, q);
        match q.order {
            Order::Unordered => {}
            Order::StartTimeAsc => sql.push_str(" ORDER BY start_time ASC, _id ASC"),
            Order::TimeDesc => sql.push_str(" ORDER BY time DESC, _id DESC"),
        }
        sql.push_str(&format!(" LIMIT {}", self.limit(q)));
        (sql, binds)
    }

    /// A read with its bound values. Reads run as `readonly=2` (no writes, settings allowed),
    /// which is also what makes ClickHouse honour `cancel_http_readonly_queries_on_client_close`:
    /// when this process drops a read (request timeout, client gone), the crate closes the HTTP
    /// connection and ClickHouse stops the query instead of finishing it for nobody.
    fn build(&self, sql: &str, binds: Vec<BindValue>) -> clickhouse::query::Query {
        let mut query = read_settings(self.client.query(sql));
        for b in binds {
            query = match b {
                BindValue::U32(v) => query.bind(v),
                BindValue::I64(v) => query.bind(v),
                BindValue::Str(v) => query.bind(v),
                BindValue::U64s(v) => query.bind(v),
                BindValue::Strs(v) => query.bind(v),
            };
        }
        query
    }

    fn record_select(&self, org: OrgId) -> String {
        let t = self.tag_db(org);
        let port_key = "(toUInt64(agent_id), toUInt64(capture_nic))";
        let dev = |ty: &str, id: &str| {
            format!("dictGet('{t}.device_map', 'name', (toUInt64({ty}), toUInt64({id})))")
        };
        format!(
            "SELECT _id, time, signal_source, l7_protocol, biz_protocol, type, req_tcp_seq, resp_tcp_seq, \
             toUnixTimestamp64Micro(start_time) AS start_time_us, toUnixTimestamp64Micro(end_time) AS end_time_us, \
             agent_id, capture_nic, capture_nic_type, \
             if(capture_nic_type IN (0, 1, 2), dictGet('{t}.vtap_port_map', 'name', {port_key}), '') AS capture_nic_name, \
             dictGetOrDefault('{t}.vtap_port_map', 'device_type', {port_key}, toUInt64(0)) AS vtap_device_type, \
             dictGetOrDefault('{t}.vtap_port_map', 'device_name', {port_key}, '') AS vtap_device_name, \
             dictGetOrDefault('{t}.vtap_port_map', 'host_name', {port_key}, '') AS vtap_host_name, \
             dictGetOrDefault('{t}.vtap_port_map', 'pod_node_name', {port_key}, '') AS vtap_pod_node_name, \
             syscall_trace_id_request, syscall_trace_id_response, syscall_cap_seq_0, syscall_cap_seq_1, \
             trace_id, _trace_id_2, span_id, parent_span_id, span_kind, x_request_id_0, x_request_id_1, \
             flow_id, protocol, version, process_id_0, process_id_1, observation_point, \
             if(is_ipv4 = 1, IPv4NumToString(ip4_0), IPv6NumToString(ip6_0)) AS ip_0, \
             if(is_ipv4 = 1, IPv4NumToString(ip4_1), IPv6NumToString(ip6_1)) AS ip_1, \
             client_port, server_port, subnet_id_0, subnet_id_1, \
             dictGet('{t}.subnet_map', 'name', toUInt64(subnet_id_0)) AS subnet_0, \
             dictGet('{t}.subnet_map', 'name', toUInt64(subnet_id_1)) AS subnet_1, \
             auto_instance_type_0, auto_instance_type_1, auto_instance_id_0, auto_instance_id_1, \
             {ai0} AS auto_instance_name_0, {ai1} AS auto_instance_name_1, \
             auto_service_type_0, auto_service_type_1, auto_service_id_0, auto_service_id_1, \
             {as0} AS auto_service_name_0, {as1} AS auto_service_name_1, \
             process_kname_0, process_kname_1, gprocess_id_0, gprocess_id_1, \
             dictGet('{t}.gprocess_map', 'name', toUInt64(gprocess_id_0)) AS gprocess_0, \
             dictGet('{t}.gprocess_map', 'name', toUInt64(gprocess_id_1)) AS gprocess_1, \
             pod_id_0, pod_id_1, \
             dictGet('{t}.pod_map', 'name', toUInt64(pod_id_0)) AS pod_0, \
             dictGet('{t}.pod_map', 'name', toUInt64(pod_id_1)) AS pod_1, \
             pod_ns_id_0, pod_ns_id_1, pod_node_id_0, pod_node_id_1, \
             {pn0} AS pod_node_0, {pn1} AS pod_node_1, \
             host_id_0, host_id_1, {h0} AS host_0, {h1} AS host_1, \
             app_service, app_instance, capture_network_type_id, \
             dictGet('{t}.tap_type_map', 'name', toUInt64(capture_network_type_id)) AS tap, \
             is_tls, is_async, response_status, response_duration, biz_response_code, response_code, \
             response_exception, response_result, request_type, request_domain, request_resource, \
             request_id, http_proxy_client, endpoint, \
             attribute_names, attribute_values, events",
            ai0 = dev("auto_instance_type_0", "auto_instance_id_0"),
            ai1 = dev("auto_instance_type_1", "auto_instance_id_1"),
            as0 = dev("auto_service_type_0", "auto_service_id_0"),
            as1 = dev("auto_service_type_1", "auto_service_id_1"),
            pn0 = dev("14", "pod_node_id_0"),
            pn1 = dev("14", "pod_node_id_1"),
            h0 = dev("6", "host_id_0"),
            h1 = dev("6", "host_id_1"),
        )
    }

    /// Run one DDL/DML statement.
    pub async fn execute(&self, sql: &str) -> StoreResult<()> {
        self.timed(self.client.query(sql).execute()).await
    }

    async fn insert_all<T>(&self, db: &str, table: &str, rows: &[T]) -> StoreResult<()>
    where
        T: clickhouse::Row
            + serde::Serialize
            + Send
            + Sync
            + for<'a> clickhouse::RowWrite<Value<'a> = T>,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut insert = self
            .client
            .insert_unescaped::<T>(&format!("`{db}`.`{table}`"))
            .await?;
        for r in rows {
            insert.write(r).await?;
        }
        self.timed(insert.end()).await
    }
}

/// A row of `flow_tag.ch_subnet` (every column, as the crate's insert requires).
/// One (group, bucket) row of an aggregation.
#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct ChAggregate {
    g: Vec<String>,
    l: i64,
    b: i64,
    c: u64,
    mn: f64,
    mx: f64,
    s: f64,
    x: u64,
}

#[derive(Debug, Default, serde::Serialize, clickhouse::Row)]
struct ChSubnet {
    id: u64,
    name: String,
    icon_id: i64,
    team_id: u64,
    domain_id: u64,
    sub_domain_id: u64,
    l3_epc_id: u64,
}

/// A row of `flow_tag.ch_gprocess`.
#[derive(Debug, Default, serde::Serialize, clickhouse::Row)]
struct ChGprocess {
    id: u64,
    name: String,
    icon_id: i64,
    chost_id: i64,
    l3_epc_id: i64,
    biz_type: u64,
    team_id: u64,
    domain_id: u64,
    sub_domain_id: u64,
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The querier's `auto_service_N` name expression (IP string for IP-like services).
fn auto_service_expr(tag_db: &str, side: u8) -> String {
    format!(
        "if(auto_service_type_{side} IN (0, 255), if(is_ipv4 = 1, IPv4NumToString(ip4_{side}), IPv6NumToString(ip6_{side})), \
         dictGet('{tag_db}.device_map', 'name', (toUInt64(auto_service_type_{side}), toUInt64(auto_service_id_{side}))))"
    )
}

/// `resource.service.name` of a row's span, the span model's (`crate::span`) in SQL: the
/// application service (else DeepFlow's) for application spans; DeepFlow's service, else the
/// process, for eBPF spans; `<observation point> @ <node or host>` for network spans.
pub(crate) fn service_expr(tag_db: &str) -> String {
    let side = |a: String, b: String| format!("if(startsWith(observation_point, 'c'), {a}, {b})");
    let dev = |ty: &str, id: &str| {
        format!("dictGet('{tag_db}.device_map', 'name', (toUInt64({ty}), toUInt64({id})))")
    };
    let port = |attr: &str| {
        format!(
            "dictGetOrDefault('{tag_db}.vtap_port_map', '{attr}', (toUInt64(agent_id), toUInt64(capture_nic)), '')"
        )
    };
    let first = |parts: &[String], fallback: &str| {
        let mut e = String::from("multiIf(");
        for p in parts {
            e.push_str(&format!("({p}) != '', ({p}), "));
        }
        e.push_str(fallback);
        e.push(')');
        e
    };
    let auto = side(auto_service_expr(tag_db, 0), auto_service_expr(tag_db, 1));
    let app = first(
        &["toString(app_service)".to_string(), auto.clone()],
        "'unknown app service'",
    );
    let process = first(
        &[
            auto,
            side(
                format!("dictGet('{tag_db}.gprocess_map', 'name', toUInt64(gprocess_id_0))"),
                format!("dictGet('{tag_db}.gprocess_map', 'name', toUInt64(gprocess_id_1))"),
            ),
            side("process_kname_0".into(), "process_kname_1".into()),
        ],
        "'unknown process'",
    );
    let (codes, names) = crate::span::observation_point_names();
    let quote = |v: &[&str]| {
        v.iter()
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let point = format!(
        "if(observation_point = '', 'network', transform(toString(observation_point), [{}], [{}], toString(observation_point)))",
        quote(&codes),
        quote(&names)
    );
    let host = first(
        &[
            side(dev("14", "pod_node_id_0"), dev("14", "pod_node_id_1")),
            port("pod_node_name"),
            side(dev("6", "host_id_0"), dev("6", "host_id_1")),
            port("host_name"),
            port("device_name"),
        ],
        "concat('agent ', toString(agent_id))",
    );
    format!(
        "multiIf(signal_source = 4, {app}, signal_source = 3, {process}, concat({point}, ' @ ', {host}))"
    )
}

/// The span model's SQL (`span_sql`) in ClickHouse's words.
fn dialect(tag_db: &str) -> crate::store::span_sql::Dialect {
    crate::store::span_sql::Dialect {
        col: |c| format!("`{c}`"),
        text_col: |c| format!("`{c}`"),
        concat: |a, b| format!("concat({a}, {b})"),
        to_text: |e| format!("toString({e})"),
        starts_with: |e, c| format!("startsWith({e}, '{c}')"),
        ip: |side| {
            format!("if(is_ipv4 = 1, IPv4NumToString(ip4_{side}), IPv6NumToString(ip6_{side}))")
        },
        otel: "attribute_values[indexOf(attribute_names, \u{1})]",
        service: format!("toString({})", service_expr(tag_db)),
        trim: "trimBoth",
    }
}

/// SQL with `span_sql::MARK`s made `?`, their values appended to `binds`.
fn push_marked(
    text: &str,
    values: Vec<crate::store::KeyValue>,
    sql: &mut String,
    binds: &mut Vec<BindValue>,
) {
    sql.push_str(&text.replace(crate::store::span_sql::MARK, "?"));
    binds.extend(values.into_iter().map(|v| match v {
        crate::store::KeyValue::Str(s) => BindValue::Str(s),
        crate::store::KeyValue::Int(i) => BindValue::I64(i),
    }));
}

fn side_name_expr(tag_db: &str, facet: &Facet) -> String {
    let pick = |a: String, b: String| format!("if(startsWith(observation_point, 'c'), {a}, {b})");
    let dev = |ty: &str, col: &str| {
        format!("dictGet('{tag_db}.device_map', 'name', (toUInt64({ty}), toUInt64({col})))")
    };
    match facet {
        Facet::Pod => pick(
            format!("dictGet('{tag_db}.pod_map', 'name', toUInt64(pod_id_0))"),
            format!("dictGet('{tag_db}.pod_map', 'name', toUInt64(pod_id_1))"),
        ),
        Facet::Node => pick(dev("14", "pod_node_id_0"), dev("14", "pod_node_id_1")),
        Facet::Host => pick(dev("6", "host_id_0"), dev("6", "host_id_1")),
        _ => "''".into(),
    }
}

fn compile_filter(f: &Filter, tag_db: &str, sql: &mut String, binds: &mut Vec<BindValue>) {
    match f {
        Filter::True => sql.push('1'),
        Filter::False => sql.push('0'),
        Filter::IntIn(col, vals) => {
            if vals.is_empty() {
                sql.push('0');
            } else {
                sql.push_str(&format!("`{}` IN ?", col.name()));
                binds.push(BindValue::U64s(vals.clone()));
            }
        }
        Filter::StrIn(col, vals) => compile_str_in(col.name(), vals, sql, binds),
        Filter::TraceIdIn(vals) => {
            sql.push('(');
            compile_str_in(Col::TraceId.name(), vals, sql, binds);
            sql.push_str(" OR ");
            compile_str_in(Col::TraceId2.name(), vals, sql, binds);
            sql.push(')');
        }
        Filter::And(parts) | Filter::Or(parts) => {
            let (joiner, empty) = if matches!(f, Filter::And(_)) {
                (" AND ", '1')
            } else {
                (" OR ", '0')
            };
            if parts.is_empty() {
                sql.push(empty);
                return;
            }
            sql.push('(');
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push_str(joiner);
                }
                compile_filter(p, tag_db, sql, binds);
            }
            sql.push(')');
        }
        Filter::Not(inner) => {
            sql.push_str("NOT (");
            compile_filter(inner, tag_db, sql, binds);
            sql.push(')');
        }
        Filter::IntCmp(col, op, v) => {
            sql.push_str(&format!("`{}` {} ?", col.name(), op.sql()));
            binds.push(BindValue::I64(*v));
        }
        Filter::StrCmp(col, op, v) => {
            sql.push_str(&format!("toString(`{}`) {} ?", col.name(), op.sql()));
            binds.push(BindValue::Str(v.clone()));
        }
        Filter::StrRegex(col, re, negated) => {
            sql.push_str(&format!(
                "{}match(toString(`{}`), ?)",
                if *negated { "NOT " } else { "" },
                col.name()
            ));
            binds.push(BindValue::Str(re.clone()));
        }
        Filter::Attr(name, op, v) => {
            sql.push_str(&format!(
                "(has(attribute_names, ?) AND attribute_values[indexOf(attribute_names, ?)] {} ?)",
                op.sql()
            ));
            binds.push(BindValue::Str(name.clone()));
            binds.push(BindValue::Str(name.clone()));
            binds.push(BindValue::Str(v.clone()));
        }
        Filter::AttrExists(name) => {
            sql.push_str("has(attribute_names, ?)");
            binds.push(BindValue::Str(name.clone()));
        }
        Filter::ServiceIn(names) => {
            if names.is_empty() {
                sql.push('0');
            } else {
                sql.push_str(&format!("{} IN ?", service_expr(tag_db)));
                binds.push(BindValue::Strs(names.clone()));
            }
        }
        Filter::StartTimeIn(from, to) => {
            sql.push_str(
                "(toUnixTimestamp64Micro(start_time) >= ? AND toUnixTimestamp64Micro(start_time) < ?)",
            );
            binds.push(BindValue::I64(*from));
            binds.push(BindValue::I64(*to));
        }
        Filter::KeyCmp(key, op, value) => {
            let (text, values) =
                crate::store::span_sql::compare_sql(&dialect(tag_db), key, *op, value);
            push_marked(&text, values, sql, binds);
        }
    }
}

fn compile_str_in(col: &str, vals: &[String], sql: &mut String, binds: &mut Vec<BindValue>) {
    if vals.is_empty() {
        sql.push('0');
    } else {
        sql.push_str(&format!("`{col}` IN ?"));
        binds.push(BindValue::Strs(vals.to_vec()));
    }
}

#[async_trait]
impl FlowStore for ClickHouseStore {
    fn max_rows(&self) -> u64 {
        self.settings.max_rows
    }

    fn kind(&self) -> StoreKind {
        StoreKind::Clickhouse
    }

    async fn ping(&self) -> StoreResult<()> {
        let ping = read_settings(self.client.query("SELECT toUInt8(1)")).fetch_one::<u8>();
        let one: u8 = self.timed(self.on_store_runtime(ping)).await?;
        if one == 1 {
            Ok(())
        } else {
            Err(StoreError::Query("unexpected answer to SELECT 1".into()))
        }
    }

    async fn select_meta(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowMeta>> {
        let (tail, binds) = self.tail(org, q);
        let sql = format!("{META_SELECT}{tail}");
        self.read(org, self.build(&sql, binds).fetch_all::<FlowMeta>())
            .await
    }

    async fn select_records(&self, org: OrgId, q: &FlowQuery) -> StoreResult<Vec<FlowRecord>> {
        let (tail, binds) = self.tail(org, q);
        let sql = format!("{}{tail}", self.record_select(org));
        self.read(org, self.build(&sql, binds).fetch_all::<FlowRecord>())
            .await
    }

    async fn insert_rows(&self, org: OrgId, rows: &[L7FlowLogRow]) -> StoreResult<()> {
        self.insert_all(&self.flow_db(org), "l7_flow_log_local", rows)
            .await
    }

    async fn insert_names(&self, org: OrgId, n: &NameTables) -> StoreResult<()> {
        let tag = self.tag_db(org);
        self.insert_all(&tag, "ch_device", &n.devices).await?;
        self.insert_all(&tag, "ch_pod", &n.pods).await?;
        let subnets: Vec<ChSubnet> = n
            .subnets
            .iter()
            .map(|r| ChSubnet {
                id: r.id,
                name: r.name.clone(),
                ..Default::default()
            })
            .collect();
        self.insert_all(&tag, "ch_subnet", &subnets).await?;
        let gprocesses: Vec<ChGprocess> = n
            .gprocesses
            .iter()
            .map(|r| ChGprocess {
                id: r.id,
                name: r.name.clone(),
                ..Default::default()
            })
            .collect();
        self.insert_all(&tag, "ch_gprocess", &gprocesses).await?;
        self.insert_all(&tag, "ch_vtap_port", &n.vtap_ports).await?;
        self.execute("SYSTEM RELOAD DICTIONARIES").await
    }

    async fn apply_schema(&self, org: OrgId, options: SchemaOptions) -> StoreResult<()> {
        let tag = self.tag_db(org);
        for st in schema::clickhouse_statements(
            org,
            &self.settings.database,
            &self.settings.dictionary_database,
        ) {
            if st.is_seed {
                continue;
            }
            self.execute(&st.sql).await?;
        }
        let seeded: u64 = self
            .timed(
                self.client
                    .query(&format!("SELECT count() FROM `{tag}`.`ch_string_enum`"))
                    .fetch_one::<u64>(),
            )
            .await?;
        if seeded == 0 {
            for st in schema::clickhouse_statements(
                org,
                &self.settings.database,
                &self.settings.dictionary_database,
            ) {
                if st.is_seed {
                    self.execute(&st.sql).await?;
                }
            }
            self.execute("SYSTEM RELOAD DICTIONARIES").await?;
        }
        if options.without_ttl {
            let removed = self
                .execute(&format!(
                    "ALTER TABLE `{}`.`l7_flow_log_local` REMOVE TTL",
                    self.flow_db(org)
                ))
                .await;
            match removed {
                // Applying the schema again: the TTL is already gone.
                Err(StoreError::Query(m)) if m.contains("doesn't have any table TTL") => {}
                other => other?,
            }
        }
        Ok(())
    }

    async fn distinct_values(
        &self,
        org: OrgId,
        q: &FlowQuery,
        facet: &Facet,
    ) -> StoreResult<Vec<String>> {
        let tag = self.tag_db(org);
        let (from_where, mut binds) = self.where_clause(org, q);
        let (expr, mut pre) = match facet {
            Facet::Column(col) => (format!("ifNull(toString(`{}`), '')", col.name()), vec![]),
            Facet::Service => (service_expr(&tag), vec![]),
            Facet::Pod | Facet::Node | Facet::Host => (side_name_expr(&tag, facet), vec![]),
            Facet::AttributeNames => ("toString(arrayJoin(attribute_names))".to_string(), vec![]),
            Facet::AttributeValues(name) => (
                "attribute_values[indexOf(attribute_names, ?)]".to_string(),
                vec![BindValue::Str(name.clone())],
            ),
        };
        pre.append(&mut binds);
        let sql = format!(
            "SELECT v FROM (SELECT DISTINCT {expr} AS v{from_where}) WHERE v != '' ORDER BY v LIMIT {}",
            self.limit(q)
        );
        self.read(org, self.build(&sql, pre).fetch_all::<String>())
            .await
    }

    async fn aggregate(
        &self,
        org: OrgId,
        agg: &crate::store::Aggregation,
    ) -> StoreResult<Vec<crate::store::AggregateRow>> {
        let tag = self.tag_db(org);
        let d = dialect(&tag);
        let mut group = String::from("[");
        let mut all = Vec::new();
        for (i, key) in agg.by.iter().enumerate() {
            let k = crate::store::span_sql::key_sql(&d, key);
            if i > 0 {
                group.push_str(", ");
            }
            group.push_str("ifNull(toString(");
            let values = k
                .binds
                .into_iter()
                .map(crate::store::KeyValue::Str)
                .collect();
            push_marked(&k.text, values, &mut group, &mut all);
            group.push_str("), '')");
        }
        group.push(']');
        if agg.by.is_empty() {
            group = "CAST([], 'Array(String)')".to_string();
        }
        let value = match agg.value {
            Some(col) => format!("toFloat64(`{}`)", col.name()),
            None => "toFloat64(0)".to_string(),
        };
        let log2 = match (agg.log2, agg.value) {
            (Some(d), Some(col)) => format!(
                "toInt64({})",
                crate::store::Aggregation::log2_case(&format!("`{}`", col.name()), d)
            ),
            _ => "toInt64(0)".to_string(),
        };
        let last = if agg.exemplars {
            "max(_id)"
        } else {
            "toUInt64(0)"
        };
        let q = FlowQuery::new(agg.filter.clone()).window(agg.time_window());
        let (from_where, binds) = self.where_clause(org, &q);
        all.push(BindValue::I64(agg.start_us));
        all.push(BindValue::I64(agg.step_us.max(1)));
        all.extend(binds);
        all.push(BindValue::I64(agg.start_us));
        all.push(BindValue::I64(agg.end_us));
        let sql = format!(
            "SELECT {group} AS g, {log2} AS l, toInt64(intDiv(toUnixTimestamp64Micro(start_time) - ?, ?)) AS b, \
             count() AS c, toFloat64(min({value})) AS mn, toFloat64(max({value})) AS mx, \
             toFloat64(sum({value})) AS s, {last} AS x{from_where} \
             AND toUnixTimestamp64Micro(start_time) >= ? AND toUnixTimestamp64Micro(start_time) < ? \
             GROUP BY g, l, b LIMIT {}",
            agg.max_rows
        );
        let rows = self
            .read(org, self.build(&sql, all).fetch_all::<ChAggregate>())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| crate::store::AggregateRow {
                group: r.g,
                bucket: r.b,
                log2: r.l,
                count: r.c,
                min: r.mn,
                max: r.mx,
                sum: r.s,
                last_id: r.x,
            })
            .collect())
    }

    fn schema_ddl(&self, org: OrgId) -> Vec<String> {
        schema::clickhouse_statements(
            org,
            &self.settings.database,
            &self.settings.dictionary_database,
        )
        .into_iter()
        .map(|s| s.sql)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> ClickHouseStore {
        ClickHouseStore::new(ClickHouseSettings {
            url: "http://127.0.0.1:1".into(),
            user: String::new(),
            password: String::new(),
            database: "flow_log".into(),
            dictionary_database: "flow_tag".into(),
            timeout: Duration::from_secs(3),
            max_rows: 10,
        })
        .unwrap()
    }

    #[test]
    fn faults_of_the_store_are_never_query_errors() {
        use clickhouse::error::Error as E;
        let s = store();
        let org = Some(OrgId(2));
        let bad = |m: &str| E::BadResponse(m.to_string());
        let unavailable = |e: StoreError| matches!(e, StoreError::Unavailable(_));
        assert!(unavailable(s.classify(E::NotEnoughData, org)));
        assert!(unavailable(s.classify(E::SchemaMismatch("x".into()), org)));
        assert!(unavailable(s.classify(bad("<h1>oops</h1>"), org)));
        assert!(unavailable(s.classify(
            bad("Code: 47. DB::Exception: Unknown expression identifier `x`. (UNKNOWN_IDENTIFIER)"),
            org
        )));
        let dict = s.classify(
            bad("Code: 36. DB::Exception: Dictionary (`0002_flow_tag.device_map`) not found. (BAD_ARGUMENTS)"),
            org,
        );
        assert!(dict.to_string().contains("flow_tag dictionaries"), "{dict}");
        assert!(matches!(
            s.classify(bad("Code: 81. DB::Exception: Database 0002_flow_log does not exist. (UNKNOWN_DATABASE)"), org),
            StoreError::NotFound(_)
        ));
        assert!(matches!(
            s.classify(bad("Code: 159. DB::Exception: Timeout exceeded"), org),
            StoreError::Timeout(3)
        ));
        // A query this service got wrong stays a query error (500).
        assert!(matches!(
            s.classify(
                bad("Code: 62. DB::Exception: Syntax error. (SYNTAX_ERROR)"),
                org
            ),
            StoreError::Query(_)
        ));
    }

    #[test]
    fn exception_codes_are_read_from_either_form_of_an_error_answer() {
        assert_eq!(
            exception_code(
                "bad response: Code: 81. DB::Exception: Database x does not exist. (UNKNOWN_DATABASE)"
            ),
            Some(81)
        );
        assert_eq!(exception_code("Code: 159"), Some(159));
        assert_eq!(exception_code("500 Internal Server Error"), None);
        assert_eq!(exception_code("Code: x"), None);
    }
}
