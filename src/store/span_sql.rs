//! The span model (`crate::span`) in SQL, for both stores: the expressions that give a row's
//! span name, status, kind, service name and span attributes exactly as `crate::span` computes
//! them in the process, so filters, `by()` groups and metrics computed in the store agree with
//! what trace by ID and search show. Owns only SQL text built from constants; every value that
//! comes from a user (an attribute name, a compared value) is a bound parameter, written here as
//! [`MARK`] and replaced by each store with its own placeholder. It must not run queries.

use super::model::{l7_protocol, signal_source};
use super::{CmpOp, GroupKey};

/// Where a bound parameter goes in the SQL text this module builds.
pub(crate) const MARK: char = '\u{1}';

/// How one store writes the few things the expressions need.
pub(crate) struct Dialect {
    /// A column as stored, NULLs kept.
    pub col: fn(&str) -> String,
    /// A text column, `''` for NULL.
    pub text_col: fn(&str) -> String,
    /// Two text expressions joined.
    pub concat: fn(&str, &str) -> String,
    /// An integer expression as text.
    pub to_text: fn(&str) -> String,
    /// The text expression starts with the one-character literal.
    pub starts_with: fn(&str, char) -> String,
    /// The address of side 0 or 1 as text.
    pub ip: fn(u8) -> String,
    /// The row's OTel attribute of the bound name ([`MARK`]), `''` when absent.
    pub otel: &'static str,
    /// The store's service-name expression (see `Filter::ServiceIn`).
    pub service: String,
    /// The trim function.
    pub trim: &'static str,
}

/// The SQL of a span-model key: its text (`''` when absent) with the values it binds, and for
/// integer attributes the integer (NULL when absent).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeySql {
    pub text: String,
    pub binds: Vec<String>,
    pub int: Option<String>,
    /// Whether a compare needs the attribute present (span and OTel attributes; the intrinsics
    /// and the service name are always there).
    pub optional: bool,
}

/// The span attributes the span model derives from DeepFlow's columns (`crate::span::span_attr`)
/// with the type of their values. Any other `span.` name is the row's OTel attribute.
pub const DERIVED_SPAN_ATTRIBUTES: &[(&str, bool)] = &[
    ("http.method", false),
    ("http.target", false),
    ("http.url", false),
    ("http.host", false),
    ("http.status_code", true),
    ("db.system", false),
    ("db.statement", false),
    ("db.operation", false),
    ("rpc.system", false),
    ("rpc.service", false),
    ("rpc.method", false),
    ("client.address", false),
    ("server.address", false),
    ("server.port", true),
    ("deepflow.observation_point", false),
    ("deepflow.signal_source", false),
    ("deepflow.l7_protocol", false),
    ("deepflow.biz_protocol", false),
    ("deepflow.request_type", false),
    ("deepflow.request_domain", false),
    ("deepflow.request_resource", false),
    ("deepflow.endpoint", false),
    ("deepflow.response_code", true),
    ("deepflow.response_status", true),
    ("deepflow.response_exception", false),
    ("deepflow.agent_id", true),
    ("deepflow.x_request_id_0", false),
    ("deepflow.x_request_id_1", false),
    ("deepflow.req_tcp_seq", true),
    ("deepflow.resp_tcp_seq", true),
    ("deepflow.syscall_trace_id_request", false),
    ("deepflow.syscall_trace_id_response", false),
    ("deepflow.process_kname", false),
];

/// Span attributes the span model derives in a way this module does not express in SQL: a
/// filter or group on them is not exact.
pub const UNMAPPED_SPAN_ATTRIBUTES: &[&str] = &["deepflow.trace_id", "deepflow.tap"];

/// The L7 protocol's display name from `l7_protocol` (`col` quotes the column).
pub(crate) fn l7_protocol_name_sql(col: &str, to_text: fn(&str) -> String) -> String {
    let mut e = String::from("CASE");
    for code in 0..=255u8 {
        if let Some(name) = l7_protocol::name(code) {
            e.push_str(&format!(
                " WHEN {col} = {code} THEN '{}'",
                name.replace('\'', "''")
            ));
        }
    }
    e.push_str(&format!(" ELSE {} END", to_text(col)));
    e
}

fn codes(f: impl Fn(u8) -> bool) -> String {
    (0..=255u8)
        .filter(|&c| f(c))
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The span kind as `crate::span::span_kind` gives it, in TraceQL's words.
pub(crate) fn kind_sql(d: &Dialect) -> String {
    let op = (d.text_col)("observation_point");
    let sk = (d.col)("span_kind");
    format!(
        "CASE WHEN {ss} = {otel} AND {sk} = 1 THEN 'internal' \
         WHEN {ss} = {otel} AND {sk} = 2 THEN 'server' \
         WHEN {ss} = {otel} AND {sk} = 3 THEN 'client' \
         WHEN {ss} = {otel} AND {sk} = 4 THEN 'producer' \
         WHEN {ss} = {otel} AND {sk} = 5 THEN 'consumer' \
         WHEN {op} = 'c-app' THEN 'client' WHEN {op} = 's-app' THEN 'server' \
         WHEN {op} IN ('app', 'local', 'rest', '') THEN 'internal' \
         WHEN {c} THEN 'client' WHEN {s} THEN 'server' ELSE 'internal' END",
        ss = (d.col)("signal_source"),
        otel = signal_source::OTEL,
        c = (d.starts_with)(&op, 'c'),
        s = (d.starts_with)(&op, 's'),
    )
}

/// The text of a span attribute the span model derives from columns, or for integer
/// attributes the integer; `None` for names it does not derive.
fn derived(d: &Dialect, name: &str) -> Option<(String, bool)> {
    let c = |n: &str| (d.text_col)(n);
    let proto = (d.col)("l7_protocol");
    let http = format!(
        "{proto} IN ({}, {})",
        l7_protocol::HTTP1,
        l7_protocol::HTTP2
    );
    let db = format!(
        "{proto} IN ({})",
        codes(|p| crate::span::db_system(p).is_some())
    );
    let rpc = format!("{proto} IN ({}, {})", l7_protocol::GRPC, l7_protocol::DUBBO);
    let when = |cond: &str, e: String| format!("CASE WHEN {cond} THEN {e} ELSE '' END");
    let nonzero_int = |n: &str| {
        let col = (d.col)(n);
        format!("CASE WHEN {col} != 0 THEN {col} ELSE NULL END")
    };
    let nonzero_text = |n: &str| {
        let col = (d.col)(n);
        format!(
            "CASE WHEN {col} != 0 THEN {} ELSE '' END",
            (d.to_text)(&col)
        )
    };
    let client_side = (d.starts_with)(&c("observation_point"), 'c');
    Some(match name {
        "http.method" => (when(&http, c("request_type")), false),
        "http.target" => (when(&http, c("request_resource")), false),
        "http.url" => (
            when(
                &http,
                (d.concat)(&c("request_domain"), &c("request_resource")),
            ),
            false,
        ),
        "http.host" => (when(&http, c("request_domain")), false),
        "http.status_code" => (
            format!(
                "CASE WHEN {http} THEN {} ELSE NULL END",
                (d.col)("response_code")
            ),
            true,
        ),
        "db.system" => {
            let mut e = format!("CASE {proto}");
            for p in 0..=255u8 {
                if let Some(s) = crate::span::db_system(p) {
                    e.push_str(&format!(" WHEN {p} THEN '{s}'"));
                }
            }
            e.push_str(" ELSE '' END");
            (e, false)
        }
        "db.statement" => (when(&db, c("request_resource")), false),
        "db.operation" => (when(&db, c("request_type")), false),
        "rpc.system" => (
            format!(
                "CASE {proto} WHEN {} THEN 'grpc' WHEN {} THEN 'dubbo' ELSE '' END",
                l7_protocol::GRPC,
                l7_protocol::DUBBO
            ),
            false,
        ),
        "rpc.service" => (when(&rpc, c("request_domain")), false),
        "rpc.method" => (when(&rpc, c("request_resource")), false),
        "client.address" => ((d.ip)(0), false),
        "server.address" => ((d.ip)(1), false),
        "server.port" => (nonzero_int("server_port"), true),
        "deepflow.observation_point" => (c("observation_point"), false),
        "deepflow.signal_source" => (
            format!(
                "CASE {} WHEN {} THEN 'otel' WHEN {} THEN 'ebpf' ELSE 'packet' END",
                (d.col)("signal_source"),
                signal_source::OTEL,
                signal_source::EBPF
            ),
            false,
        ),
        "deepflow.l7_protocol" => (l7_protocol_name_sql(&proto, d.to_text), false),
        "deepflow.biz_protocol" => (c("biz_protocol"), false),
        "deepflow.request_type" => (c("request_type"), false),
        "deepflow.request_domain" => (c("request_domain"), false),
        "deepflow.request_resource" => (c("request_resource"), false),
        "deepflow.endpoint" => (c("endpoint"), false),
        "deepflow.response_code" => ((d.col)("response_code"), true),
        "deepflow.response_status" => ((d.col)("response_status"), true),
        "deepflow.response_exception" => (c("response_exception"), false),
        "deepflow.agent_id" => ((d.col)("agent_id"), true),
        "deepflow.x_request_id_0" => (c("x_request_id_0"), false),
        "deepflow.x_request_id_1" => (c("x_request_id_1"), false),
        "deepflow.req_tcp_seq" => (nonzero_int("req_tcp_seq"), true),
        "deepflow.resp_tcp_seq" => (nonzero_int("resp_tcp_seq"), true),
        "deepflow.syscall_trace_id_request" => (nonzero_text("syscall_trace_id_request"), false),
        "deepflow.syscall_trace_id_response" => (nonzero_text("syscall_trace_id_response"), false),
        "deepflow.process_kname" => (
            format!(
                "CASE WHEN {client_side} THEN {} ELSE {} END",
                c("process_kname_0"),
                c("process_kname_1")
            ),
            false,
        ),
        _ => return None,
    })
}

/// The SQL of a span-model key.
pub(crate) fn key_sql(d: &Dialect, key: &GroupKey) -> KeySql {
    let fixed = |text: String| KeySql {
        text,
        binds: vec![],
        int: None,
        optional: false,
    };
    match key {
        GroupKey::Service => fixed(d.service.clone()),
        GroupKey::Column(col) => {
            let c = (d.col)(col.name());
            fixed(format!("COALESCE({}, '')", (d.to_text)(&c)))
        }
        GroupKey::SpanName => fixed(super::span_name_sql(
            d.text_col, d.concat, d.trim, d.to_text,
        )),
        GroupKey::Status => fixed(super::status_sql(&(d.col)("response_status"))),
        GroupKey::Kind => fixed(kind_sql(d)),
        GroupKey::SpanAttr(name) => {
            let otel = d.otel.to_string();
            match derived(d, name) {
                Some((e, false)) => KeySql {
                    text: format!("CASE WHEN ({e}) != '' THEN ({e}) ELSE {otel} END"),
                    binds: vec![name.clone()],
                    int: None,
                    optional: true,
                },
                Some((e, true)) => KeySql {
                    text: format!(
                        "CASE WHEN ({e}) IS NOT NULL THEN {} ELSE {otel} END",
                        (d.to_text)(&format!("({e})"))
                    ),
                    binds: vec![name.clone()],
                    int: Some(e),
                    optional: true,
                },
                None => KeySql {
                    text: otel,
                    binds: vec![name.clone()],
                    int: None,
                    optional: true,
                },
            }
        }
    }
}

/// A value a key is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    Str(String),
    Int(i64),
}

/// The condition `key op value`, with [`MARK`]s for its binds (returned in order). An
/// attribute compared as text must be present (a missing attribute matches no comparison, as
/// in TraceQL); an integer comparison on a key without integer values matches nothing.
pub(crate) fn compare_sql(
    d: &Dialect,
    key: &GroupKey,
    op: CmpOp,
    value: &KeyValue,
) -> (String, Vec<KeyValue>) {
    let k = key_sql(d, key);
    match value {
        KeyValue::Int(v) => match k.int {
            Some(int) => (
                format!("({int}) {} {MARK}", op.sql()),
                vec![KeyValue::Int(*v)],
            ),
            None => ("0".into(), vec![]),
        },
        KeyValue::Str(v) => {
            let mut binds: Vec<KeyValue> = k.binds.iter().cloned().map(KeyValue::Str).collect();
            let sql = if k.optional {
                binds.extend(k.binds.iter().cloned().map(KeyValue::Str));
                format!("(({t}) != '' AND ({t}) {} {MARK})", op.sql(), t = k.text)
            } else {
                format!("({}) {} {MARK}", k.text, op.sql())
            };
            binds.push(KeyValue::Str(v.clone()));
            (sql, binds)
        }
    }
}
