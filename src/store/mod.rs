//! The store layer: the only place that reads or writes rows, and the only place SQL exists.
//!
//! `FlowStore` is a typed, async trait with two implementations: [`clickhouse::ClickHouseStore`]
//! over DeepFlow's ClickHouse, and [`sqlite::SqliteStore`], the embedded store. Callers describe
//! reads with [`FlowQuery`] / [`Filter`]; each implementation compiles them to SQL with every
//! value bound as a parameter. Nothing outside this module builds SQL text.

pub mod clickhouse;
pub mod guard;
pub mod metered;
pub mod model;
pub mod schema;
pub mod span_sql;
pub mod sqlite;

pub use span_sql::KeyValue;

use async_trait::async_trait;
use model::{FlowMeta, FlowRecord, L7FlowLogRow, NameTables, OrgId};
use std::sync::Arc;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached (connection refused, engine down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error.
    #[error("store query failed: {0}")]
    Query(String),
    /// The query did not finish within the configured timeout.
    #[error("store query timed out after {0} s")]
    Timeout(u64),
    /// The input cannot be stored (bad value, schema missing).
    #[error("{0}")]
    Invalid(String),
    /// What the read names does not exist (an organisation without a database).
    #[error("{0}")]
    NotFound(String),
    /// No query slot became free in time (`limits.max_concurrent_queries`), or the store
    /// itself refused the query as one too many.
    #[error("store overloaded: {0}")]
    Overloaded(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which store implementation is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Embedded,
    Clickhouse,
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Clickhouse => "clickhouse",
        })
    }
}

/// An inclusive window on the `time` column (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub start_s: u32,
    pub end_s: u32,
}

impl TimeWindow {
    pub fn new(start_s: u32, end_s: u32) -> Self {
        TimeWindow { start_s, end_s }
    }

    /// The smallest window holding the `time` of every `_id` (`_id >> 32`).
    pub fn covering_ids(ids: &[u64]) -> Option<TimeWindow> {
        let min = ids.iter().map(|&id| model::id_time_s(id)).min()?;
        let max = ids.iter().map(|&id| model::id_time_s(id)).max()?;
        Some(TimeWindow::new(min, max))
    }
}

/// Columns a [`Filter`] may name. Only these identifiers ever reach SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Col {
    Id,
    Type,
    SignalSource,
    AgentId,
    Protocol,
    L7Protocol,
    ObservationPoint,
    ReqTcpSeq,
    RespTcpSeq,
    SyscallTraceIdRequest,
    SyscallTraceIdResponse,
    XRequestId0,
    XRequestId1,
    TraceId,
    TraceId2,
    SpanId,
    ParentSpanId,
    RequestId,
    FlowId,
    ResponseStatus,
    ResponseDuration,
    AppService,
    AppInstance,
    Endpoint,
    RequestResource,
    RequestType,
    RequestDomain,
    ResponseCode,
    ResponseException,
    ProcessKname0,
    ProcessKname1,
    ServerPort,
    SpanKind,
    ProcessId0,
    ProcessId1,
    GprocessId0,
    GprocessId1,
}

impl Col {
    /// The column's name in DeepFlow's schema (identical in both stores).
    pub fn name(self) -> &'static str {
        match self {
            Col::Id => "_id",
            Col::Type => "type",
            Col::SignalSource => "signal_source",
            Col::AgentId => "agent_id",
            Col::Protocol => "protocol",
            Col::L7Protocol => "l7_protocol",
            Col::ObservationPoint => "observation_point",
            Col::ReqTcpSeq => "req_tcp_seq",
            Col::RespTcpSeq => "resp_tcp_seq",
            Col::SyscallTraceIdRequest => "syscall_trace_id_request",
            Col::SyscallTraceIdResponse => "syscall_trace_id_response",
            Col::XRequestId0 => "x_request_id_0",
            Col::XRequestId1 => "x_request_id_1",
            Col::TraceId => "trace_id",
            Col::TraceId2 => "_trace_id_2",
            Col::SpanId => "span_id",
            Col::ParentSpanId => "parent_span_id",
            Col::RequestId => "request_id",
            Col::FlowId => "flow_id",
            Col::ResponseStatus => "response_status",
            Col::ResponseDuration => "response_duration",
            Col::AppService => "app_service",
            Col::AppInstance => "app_instance",
            Col::Endpoint => "endpoint",
            Col::RequestResource => "request_resource",
            Col::RequestType => "request_type",
            Col::RequestDomain => "request_domain",
            Col::ResponseCode => "response_code",
            Col::ResponseException => "response_exception",
            Col::ProcessKname0 => "process_kname_0",
            Col::ProcessKname1 => "process_kname_1",
            Col::ServerPort => "server_port",
            Col::SpanKind => "span_kind",
            Col::ProcessId0 => "process_id_0",
            Col::ProcessId1 => "process_id_1",
            Col::GprocessId0 => "gprocess_id_0",
            Col::GprocessId1 => "gprocess_id_1",
        }
    }

    /// Whether the column holds text (else an integer).
    pub fn is_text(self) -> bool {
        matches!(
            self,
            Col::ObservationPoint
                | Col::XRequestId0
                | Col::XRequestId1
                | Col::TraceId
                | Col::TraceId2
                | Col::SpanId
                | Col::ParentSpanId
                | Col::AppService
                | Col::AppInstance
                | Col::Endpoint
                | Col::RequestResource
                | Col::RequestType
                | Col::RequestDomain
                | Col::ResponseException
                | Col::ProcessKname0
                | Col::ProcessKname1
        )
    }
}

/// A comparison operator of [`Filter::IntCmp`] / [`Filter::StrCmp`] / [`Filter::Attr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl CmpOp {
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Neq => "!=",
            CmpOp::Lt => "<",
            CmpOp::Lte => "<=",
            CmpOp::Gt => ">",
            CmpOp::Gte => ">=",
        }
    }
}

/// A row predicate. Both stores compile it to SQL with bound values only.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Every row.
    True,
    /// No row.
    False,
    /// An integer column is one of the values. An empty list matches nothing.
    IntIn(Col, Vec<u64>),
    /// A text column is one of the values. An empty list matches nothing.
    StrIn(Col, Vec<String>),
    /// Either trace id column (`trace_id`, `_trace_id_2`) is one of the values.
    TraceIdIn(Vec<String>),
    /// All of the filters.
    And(Vec<Filter>),
    /// Any of the filters.
    Or(Vec<Filter>),
    /// Not the filter.
    Not(Box<Filter>),
    /// An integer column compared with a value (a NULL never matches).
    IntCmp(Col, CmpOp, i64),
    /// A text column compared with a value.
    StrCmp(Col, CmpOp, String),
    /// A text column matches (or, negated, does not match) an RE2 regular expression. The
    /// embedded store has no regex engine and matches every row here: callers that need
    /// exact answers re-check the rows.
    StrRegex(Col, String, bool),
    /// An OTel attribute (`attribute_names`/`attribute_values`) compared with a text value.
    Attr(String, CmpOp, String),
    /// The row carries the OTel attribute.
    AttrExists(String),
    /// The span's service is one of the names: `app_service` for application spans, DeepFlow's
    /// service (`auto_service` of the observed side) for eBPF and network spans.
    ServiceIn(Vec<String>),
    /// A key of the span model (`crate::span`: name, status, kind, service, a span attribute)
    /// compared with a value, computed in the store as the span model computes it (see
    /// `span_sql`). A span or OTel attribute that a row lacks matches no comparison.
    KeyCmp(GroupKey, CmpOp, KeyValue),
    /// `start_time` lies in `[from_us, to_us)`.
    StartTimeIn(i64, i64),
}

impl Filter {
    pub fn ids(ids: impl IntoIterator<Item = u64>) -> Filter {
        Filter::IntIn(Col::Id, ids.into_iter().collect())
    }

    /// `self AND other`, flattening nested conjunctions.
    pub fn and(self, other: Filter) -> Filter {
        match (self, other) {
            (Filter::True, f) | (f, Filter::True) => f,
            (Filter::And(mut a), Filter::And(b)) => {
                a.extend(b);
                Filter::And(a)
            }
            (Filter::And(mut a), f) => {
                a.push(f);
                Filter::And(a)
            }
            (f, g) => Filter::And(vec![f, g]),
        }
    }
}

/// Values shown per `IN` list before eliding the rest (in [`Filter`]'s description).
const SHOWN_VALUES: usize = 20;

fn value_list<T: std::fmt::Display>(vals: &[T], quote: bool) -> String {
    let mut parts: Vec<String> = vals
        .iter()
        .take(SHOWN_VALUES)
        .map(|v| {
            if quote {
                format!("'{}'", v.to_string().replace('\'', "\\'"))
            } else {
                v.to_string()
            }
        })
        .collect();
    if vals.len() > SHOWN_VALUES {
        parts.push(format!("... {} more", vals.len() - SHOWN_VALUES));
    }
    parts.join(",")
}

/// A readable description in DeepFlow's querier dialect (for debug output; never SQL).
impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let join = |fs: &[Filter], op: &str| {
            let parts: Vec<String> = fs.iter().map(Filter::to_string).collect();
            format!("({})", parts.join(op))
        };
        match self {
            Filter::True => f.write_str("1=1"),
            Filter::False => f.write_str("1=0"),
            Filter::IntIn(c, v) => write!(f, "{} IN ({})", c.name(), value_list(v, false)),
            Filter::StrIn(c, v) => write!(f, "{} IN ({})", c.name(), value_list(v, true)),
            Filter::TraceIdIn(v) => write!(f, "FastFilter(trace_id) IN ({})", value_list(v, true)),
            Filter::And(fs) => f.write_str(&join(fs, " AND ")),
            Filter::Or(fs) => f.write_str(&join(fs, " OR ")),
            Filter::Not(inner) => write!(f, "NOT ({inner})"),
            Filter::IntCmp(c, op, v) => write!(f, "{} {} {v}", c.name(), op.sql()),
            Filter::StrCmp(c, op, v) => write!(
                f,
                "{} {} {}",
                c.name(),
                op.sql(),
                value_list(std::slice::from_ref(v), true)
            ),
            Filter::StrRegex(c, re, negated) => {
                write!(
                    f,
                    "{}{} REGEXP {}",
                    if *negated { "NOT " } else { "" },
                    c.name(),
                    value_list(std::slice::from_ref(re), true)
                )
            }
            Filter::Attr(name, op, v) => write!(
                f,
                "attribute.{name} {} {}",
                op.sql(),
                value_list(std::slice::from_ref(v), true)
            ),
            Filter::AttrExists(name) => write!(f, "exist(attribute.{name})"),
            Filter::ServiceIn(v) => write!(f, "service IN ({})", value_list(v, true)),
            Filter::KeyCmp(k, op, v) => match v {
                KeyValue::Str(s) => write!(
                    f,
                    "{k:?} {} {}",
                    op.sql(),
                    value_list(std::slice::from_ref(s), true)
                ),
                KeyValue::Int(i) => write!(f, "{k:?} {} {i}", op.sql()),
            },
            Filter::StartTimeIn(a, b) => write!(f, "start_time IN [{a}, {b}) us"),
        }
    }
}

/// Row order of a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Whatever order the store produces.
    #[default]
    Unordered,
    /// `start_time` ascending, then `_id`.
    StartTimeAsc,
    /// Most recent first: `time` descending, then `_id` descending.
    TimeDesc,
}

/// What `distinct_values` lists (tag values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facet {
    /// A column's distinct non-empty values, as text.
    Column(Col),
    /// Service names (see [`Filter::ServiceIn`]).
    Service,
    /// Pod names of the observed side.
    Pod,
    /// K8s node names of the observed side.
    Node,
    /// Host names of the observed side.
    Host,
    /// The names of the OTel attributes rows carry.
    AttributeNames,
    /// The values of one OTel attribute.
    AttributeValues(String),
}

/// A read: a window on `time`, a filter, a row limit and an order.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowQuery {
    /// Inclusive window on `time`. `None` with an `_id` filter derives it from the ids.
    pub window: Option<TimeWindow>,
    pub filter: Filter,
    /// At most this many rows (also capped by the store's configured maximum).
    pub limit: Option<u64>,
    pub order: Order,
}

impl FlowQuery {
    pub fn new(filter: Filter) -> Self {
        FlowQuery {
            window: None,
            filter,
            limit: None,
            order: Order::Unordered,
        }
    }

    pub fn window(mut self, window: TimeWindow) -> Self {
        self.window = Some(window);
        self
    }

    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// The window to apply: the given one, or for a pure `_id` filter the ids' own times, so a
    /// lookup by `_id` never scans the whole table.
    pub fn effective_window(&self) -> Option<TimeWindow> {
        if self.window.is_some() {
            return self.window;
        }
        match &self.filter {
            Filter::IntIn(Col::Id, ids) => TimeWindow::covering_ids(ids),
            _ => None,
        }
    }
}

/// What an [`Aggregation`] groups by, besides its time bucket. Each key is read as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum GroupKey {
    /// The span's service (see [`Filter::ServiceIn`]).
    Service,
    /// A column's value as text (integers in decimal).
    Column(Col),
    /// The span name as `FlowRecord::span_name` gives it: `endpoint`, else `request_type
    /// request_resource` (space-trimmed), else `biz_protocol`, else the L7 protocol's name.
    SpanName,
    /// The span status as the span model maps `response_status`: `ok` (0), `error` (2, 3,
    /// 4), else `unset`.
    Status,
    /// The span kind as the span model maps it, in TraceQL's words (`server`, `client`, …).
    Kind,
    /// A span attribute: one the span model derives from columns (see
    /// `span_sql::DERIVED_SPAN_ATTRIBUTES`), else the row's OTel attribute of that name.
    SpanAttr(String),
}

/// The SQL of [`GroupKey::Status`] over a quoted `response_status` column.
pub(crate) fn status_sql(col: &str) -> String {
    use model::response_status as rs;
    format!(
        "CASE WHEN {col} = {} THEN 'ok' WHEN {col} IN ({}, {}, {}) THEN 'error' ELSE 'unset' END",
        rs::SUCCESS,
        rs::TIMEOUT,
        rs::SERVER_ERROR,
        rs::CLIENT_ERROR
    )
}

/// The SQL of [`GroupKey::SpanName`] from constants only. `col` quotes a column, `concat`
/// joins `request_type`, a space and `request_resource`, `trim` trims spaces, `text` renders
/// an integer column as text.
pub(crate) fn span_name_sql(
    col: fn(&str) -> String,
    concat: fn(&str, &str) -> String,
    trim: &str,
    text: fn(&str) -> String,
) -> String {
    let joined = format!(
        "{trim}({})",
        concat(
            &col("request_type"),
            &concat("' '", &col("request_resource"))
        )
    );
    format!(
        "CASE WHEN {ep} != '' THEN {ep} WHEN {joined} != '' THEN {joined} \
         WHEN {bp} != '' THEN {bp} ELSE {protocols} END",
        ep = col("endpoint"),
        bp = col("biz_protocol"),
        protocols = span_sql::l7_protocol_name_sql(&col("l7_protocol"), text),
    )
}

/// One aggregation over `l7_flow_log`: the rows matching `filter` whose `start_time` lies in
/// `[start_us, end_us)`, grouped by `by` and by the bucket `(start_time - start_us) / step_us`.
/// The `time` window scanned is `[start_us, end_us + TIME_SLACK_S]` in seconds, since `time`
/// is a row's end and never precedes its start.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregation {
    pub filter: Filter,
    pub start_us: i64,
    pub end_us: i64,
    /// Bucket width in µs (at least 1).
    pub step_us: i64,
    pub by: Vec<GroupKey>,
    /// The integer column measured (min, max, sum); `None` measures nothing (zeros).
    pub value: Option<Col>,
    /// Also group by the log2 bucket of the value: `Some(d)` puts a row in the smallest `k`
    /// with `value <= floor(2^k / d)` (with `d` = 1000 on µs durations, `k` is the power of two
    /// in nanoseconds bounding the value). Integer comparisons only, identical in both stores.
    pub log2: Option<i64>,
    /// At most this many (group, bucket) rows are returned.
    pub max_rows: u64,
    /// Also return the latest row of each (group, bucket) ([`AggregateRow::last_id`]).
    pub exemplars: bool,
}

impl Aggregation {
    /// The SQL `CASE` giving the log2 bucket of `value_sql` for divisor `d` (generated from
    /// constants only).
    pub fn log2_case(value_sql: &str, d: i64) -> String {
        let d = d.max(1) as u64;
        let mut sql = String::from("CASE");
        for k in 0..63u32 {
            sql.push_str(&format!(
                " WHEN {value_sql} <= {} THEN {k}",
                (1u64 << k) / d
            ));
        }
        sql.push_str(" ELSE 63 END");
        sql
    }

    /// Seconds after the window's end a row's `time` (its end) may lie and still have started
    /// within the window: calls lasting longer are not counted.
    pub const TIME_SLACK_S: i64 = 3600;

    /// The window on `time` (unix seconds) the aggregation scans.
    pub fn time_window(&self) -> TimeWindow {
        let clamp = |s: i64| s.clamp(0, i64::from(u32::MAX)) as u32;
        TimeWindow::new(
            clamp(self.start_us.div_euclid(1_000_000)),
            clamp(self.end_us.div_euclid(1_000_000) + Self::TIME_SLACK_S),
        )
    }
}

/// One (group, bucket) of an [`Aggregation`]'s answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateRow {
    /// The group keys' values, in the order of [`Aggregation::by`].
    pub group: Vec<String>,
    /// The bucket's index from the window's start.
    pub bucket: i64,
    /// The log2 bucket when [`Aggregation::log2`] is set, else 0.
    pub log2: i64,
    pub count: u64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    /// The largest `_id` of the group's rows in the bucket when [`Aggregation::exemplars`] is
    /// set (an exemplar), else 0.
    pub last_id: u64,
}

/// Options of `schema --apply`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchemaOptions {
    /// Drop DeepFlow's 72-hour TTL after creating the table, so rows with historical
    /// timestamps (test fixtures) are kept.
    pub without_ttl: bool,
}

/// Typed reads and writes over `l7_flow_log` and the name tables of one organisation.
#[async_trait]
pub trait FlowStore: Send + Sync {
    fn kind(&self) -> StoreKind;

    /// A trivial query: `Ok` when the store answers.
    async fn ping(&self) -> StoreResult<()>;

    /// The most rows one read returns (larger limits are capped there).
    fn max_rows(&self) -> u64 {
        u64::MAX
    }

    /// Search-phase metadata (the FLOWMETA columns) of the matching rows.
    async fn select_meta(&self, org: OrgId, query: &FlowQuery) -> StoreResult<Vec<FlowMeta>>;

    /// Full records of the matching rows, display names resolved.
    async fn select_records(&self, org: OrgId, query: &FlowQuery) -> StoreResult<Vec<FlowRecord>>;

    /// Insert rows into `l7_flow_log` (all or nothing per call).
    async fn insert_rows(&self, org: OrgId, rows: &[L7FlowLogRow]) -> StoreResult<()>;

    /// Insert name-table rows (devices, pods, subnets, processes, capture ports).
    async fn insert_names(&self, org: OrgId, names: &NameTables) -> StoreResult<()>;

    /// Create DeepFlow's tables for the organisation (idempotent).
    async fn apply_schema(&self, org: OrgId, options: SchemaOptions) -> StoreResult<()>;

    /// The DDL `apply_schema` runs, for `schema` to print.
    fn schema_ddl(&self, org: OrgId) -> Vec<String>;

    /// Distinct non-empty values of a facet among the matching rows (at most `query.limit`),
    /// sorted.
    async fn distinct_values(
        &self,
        org: OrgId,
        query: &FlowQuery,
        facet: &Facet,
    ) -> StoreResult<Vec<String>>;

    /// Count, min, max and sum per group and time bucket, computed in the store.
    async fn aggregate(&self, _org: OrgId, _agg: &Aggregation) -> StoreResult<Vec<AggregateRow>> {
        Err(StoreError::Invalid(
            "this store does not compute aggregations".to_string(),
        ))
    }
}

pub type SharedStore = Arc<dyn FlowStore>;
