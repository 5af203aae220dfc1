//! DeepFlow's DDL as each store runs it.
//!
//! ClickHouse gets DeepFlow's own statements (`ddl/l7_flow_log.sql`, `ddl/flow_tag.sql`, copied
//! verbatim from the schema DeepFlow's ingester and controller create) with the database names
//! of the configured organisation substituted. The embedded store gets an equivalent SQLite
//! schema: the same column names, one table per `flow_tag` name source, an `org_id` column.

use super::model::OrgId;

const L7_FLOW_LOG_DDL: &str = include_str!("ddl/l7_flow_log.sql");
const FLOW_TAG_DDL: &str = include_str!("ddl/flow_tag.sql");

/// One statement of a DDL file, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    /// A seed-data INSERT (not idempotent: run once per fresh database).
    pub is_seed: bool,
}

/// Split a DDL file into statements: `--` comment lines dropped, a statement ends with `;` at
/// the end of a line.
fn split_statements(ddl: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in ddl.lines() {
        if line.trim_start().starts_with("--") || (cur.is_empty() && line.trim().is_empty()) {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if line.trim_end().ends_with(';') {
            let stmt = cur.trim().trim_end_matches(';').trim().to_string();
            out.push(stmt);
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// DeepFlow's ClickHouse DDL for `org`, with `flow_db` / `tag_db` as the base database names
/// (`flow_log` / `flow_tag` by default; organisations other than 1 get the `NNNN_` prefix).
pub fn clickhouse_statements(org: OrgId, flow_db: &str, tag_db: &str) -> Vec<Statement> {
    let flow = org.database(flow_db);
    let tag = org.database(tag_db);
    let mut out = Vec::new();
    for sql in split_statements(L7_FLOW_LOG_DDL) {
        let sql = sql
            .replace("EXISTS flow_log;", &format!("EXISTS {flow};"))
            .replace(
                "DATABASE IF NOT EXISTS flow_log",
                &format!("DATABASE IF NOT EXISTS {flow}"),
            )
            .replace("flow_log.`", &format!("`{flow}`.`"))
            .replace("'flow_log'", &format!("'{flow}'"));
        out.push(Statement {
            sql,
            is_seed: false,
        });
    }
    for sql in split_statements(FLOW_TAG_DDL) {
        let is_seed = sql.starts_with("INSERT");
        let sql = sql
            .replace(
                "DATABASE IF NOT EXISTS flow_tag",
                &format!("DATABASE IF NOT EXISTS `{tag}`"),
            )
            .replace("flow_tag.", &format!("`{tag}`."))
            .replace("DB 'flow_tag'", &format!("DB '{tag}'"));
        out.push(Statement { sql, is_seed });
    }
    out
}

/// The embedded store's schema (SQLite). Idempotent.
pub fn sqlite_statements() -> Vec<Statement> {
    let mut v: Vec<Statement> = SQLITE_DDL
        .iter()
        .map(|s| Statement {
            sql: s.to_string(),
            is_seed: false,
        })
        .collect();
    v.push(Statement {
        sql: "INSERT OR IGNORE INTO ch_tap_type (org_id, value, name) VALUES (1, 3, '云网络')"
            .into(),
        is_seed: true,
    });
    v
}

/// Columns of the embedded `l7_flow_log` table, in insert order, with their SQLite types.
/// All 119 of DeepFlow's columns, same names; arrays are JSON text; IPv4 is an integer, IPv6
/// text.
pub const SQLITE_L7_COLUMNS: &[(&str, &str)] = &[
    ("_id", "INTEGER NOT NULL"),
    ("region_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("region_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("az_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("az_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("host_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("host_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("l3_device_type_0", "INTEGER NOT NULL DEFAULT 0"),
    ("l3_device_type_1", "INTEGER NOT NULL DEFAULT 0"),
    ("l3_device_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("l3_device_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_node_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_node_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_ns_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_ns_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_group_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_group_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_cluster_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("pod_cluster_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("l3_epc_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("l3_epc_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("epc_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("epc_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("subnet_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("subnet_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("service_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("service_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("auto_instance_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("auto_instance_type_0", "INTEGER NOT NULL DEFAULT 0"),
    ("auto_service_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("auto_service_type_0", "INTEGER NOT NULL DEFAULT 0"),
    ("auto_instance_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("auto_instance_type_1", "INTEGER NOT NULL DEFAULT 0"),
    ("auto_service_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("auto_service_type_1", "INTEGER NOT NULL DEFAULT 0"),
    ("time", "INTEGER NOT NULL"),
    ("ip4_0", "INTEGER NOT NULL DEFAULT 0"),
    ("ip4_1", "INTEGER NOT NULL DEFAULT 0"),
    ("ip6_0", "TEXT NOT NULL DEFAULT '::'"),
    ("ip6_1", "TEXT NOT NULL DEFAULT '::'"),
    ("is_ipv4", "INTEGER NOT NULL DEFAULT 1"),
    ("protocol", "INTEGER NOT NULL DEFAULT 0"),
    ("client_port", "INTEGER NOT NULL DEFAULT 0"),
    ("server_port", "INTEGER NOT NULL DEFAULT 0"),
    ("flow_id", "INTEGER NOT NULL DEFAULT 0"),
    ("capture_network_type_id", "INTEGER NOT NULL DEFAULT 0"),
    ("capture_nic_type", "INTEGER NOT NULL DEFAULT 0"),
    ("signal_source", "INTEGER NOT NULL DEFAULT 0"),
    ("capture_nic", "INTEGER NOT NULL DEFAULT 0"),
    ("observation_point", "TEXT NOT NULL DEFAULT ''"),
    ("agent_id", "INTEGER NOT NULL DEFAULT 0"),
    ("req_tcp_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("resp_tcp_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("start_time", "INTEGER NOT NULL DEFAULT 0"),
    ("end_time", "INTEGER NOT NULL DEFAULT 0"),
    ("gprocess_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("gprocess_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("biz_response_code", "TEXT NOT NULL DEFAULT ''"),
    ("process_id_0", "INTEGER NOT NULL DEFAULT 0"),
    ("process_id_1", "INTEGER NOT NULL DEFAULT 0"),
    ("process_kname_0", "TEXT NOT NULL DEFAULT ''"),
    ("process_kname_1", "TEXT NOT NULL DEFAULT ''"),
    ("syscall_trace_id_request", "INTEGER NOT NULL DEFAULT 0"),
    ("syscall_trace_id_response", "INTEGER NOT NULL DEFAULT 0"),
    ("syscall_thread_0", "INTEGER NOT NULL DEFAULT 0"),
    ("syscall_thread_1", "INTEGER NOT NULL DEFAULT 0"),
    ("syscall_cap_seq_0", "INTEGER NOT NULL DEFAULT 0"),
    ("syscall_cap_seq_1", "INTEGER NOT NULL DEFAULT 0"),
    ("l7_protocol", "INTEGER NOT NULL DEFAULT 0"),
    ("biz_protocol", "TEXT NOT NULL DEFAULT ''"),
    ("version", "TEXT NOT NULL DEFAULT ''"),
    ("type", "INTEGER NOT NULL DEFAULT 0"),
    ("is_tls", "INTEGER NOT NULL DEFAULT 0"),
    ("is_async", "INTEGER NOT NULL DEFAULT 0"),
    ("request_type", "TEXT NOT NULL DEFAULT ''"),
    ("request_domain", "TEXT NOT NULL DEFAULT ''"),
    ("request_resource", "TEXT NOT NULL DEFAULT ''"),
    ("endpoint", "TEXT NOT NULL DEFAULT ''"),
    ("request_id", "INTEGER"),
    ("response_status", "INTEGER NOT NULL DEFAULT 0"),
    ("response_code", "INTEGER"),
    ("response_exception", "TEXT NOT NULL DEFAULT ''"),
    ("response_result", "TEXT NOT NULL DEFAULT ''"),
    ("http_proxy_client", "TEXT NOT NULL DEFAULT ''"),
    ("x_request_id_0", "TEXT NOT NULL DEFAULT ''"),
    ("x_request_id_1", "TEXT NOT NULL DEFAULT ''"),
    ("trace_id", "TEXT NOT NULL DEFAULT ''"),
    ("_trace_id_2", "TEXT NOT NULL DEFAULT ''"),
    ("trace_id_index", "INTEGER NOT NULL DEFAULT 0"),
    ("span_id", "TEXT NOT NULL DEFAULT ''"),
    ("parent_span_id", "TEXT NOT NULL DEFAULT ''"),
    ("span_kind", "INTEGER"),
    ("app_service", "TEXT NOT NULL DEFAULT ''"),
    ("app_instance", "TEXT NOT NULL DEFAULT ''"),
    ("response_duration", "INTEGER NOT NULL DEFAULT 0"),
    ("request_length", "INTEGER"),
    ("response_length", "INTEGER"),
    ("attribute_names", "TEXT NOT NULL DEFAULT '[]'"),
    ("attribute_values", "TEXT NOT NULL DEFAULT '[]'"),
    ("events", "TEXT NOT NULL DEFAULT ''"),
    ("tag_source_0", "INTEGER NOT NULL DEFAULT 0"),
    ("tag_source_1", "INTEGER NOT NULL DEFAULT 0"),
    ("team_id", "INTEGER NOT NULL DEFAULT 0"),
    ("nat_source", "INTEGER NOT NULL DEFAULT 0"),
    ("tunnel_type", "INTEGER NOT NULL DEFAULT 0"),
    ("biz_type", "INTEGER NOT NULL DEFAULT 0"),
    ("biz_code", "TEXT NOT NULL DEFAULT ''"),
    ("biz_scenario", "TEXT NOT NULL DEFAULT ''"),
    ("syscall_coroutine_0", "INTEGER NOT NULL DEFAULT 0"),
    ("syscall_coroutine_1", "INTEGER NOT NULL DEFAULT 0"),
    ("is_reversed", "INTEGER NOT NULL DEFAULT 0"),
    ("sql_affected_rows", "INTEGER"),
    ("direction_score", "INTEGER NOT NULL DEFAULT 0"),
    ("captured_request_byte", "INTEGER NOT NULL DEFAULT 0"),
    ("captured_response_byte", "INTEGER NOT NULL DEFAULT 0"),
    ("metrics_names", "TEXT NOT NULL DEFAULT '[]'"),
    ("metrics_values", "TEXT NOT NULL DEFAULT '[]'"),
];

const SQLITE_DDL: &[&str] = &[
    // l7_flow_log is created from SQLITE_L7_COLUMNS by `sqlite_l7_table()`; the rest are here.
    // `_id` after `time`: a most-recent-first page (`ORDER BY time DESC, _id DESC LIMIT n`)
    // walks the index and stops after n rows instead of sorting its whole time window.
    "CREATE INDEX IF NOT EXISTS l7_time_id ON l7_flow_log (org_id, time, _id)",
    // Replaced by l7_time_id (files made before it had this one).
    "DROP INDEX IF EXISTS l7_time",
    "CREATE INDEX IF NOT EXISTS l7_id ON l7_flow_log (org_id, _id)",
    "CREATE INDEX IF NOT EXISTS l7_trace_id ON l7_flow_log (org_id, trace_id) WHERE trace_id <> ''",
    "CREATE INDEX IF NOT EXISTS l7_trace_id_2 ON l7_flow_log (org_id, _trace_id_2) WHERE _trace_id_2 <> ''",
    "CREATE INDEX IF NOT EXISTS l7_req_seq ON l7_flow_log (org_id, req_tcp_seq) WHERE req_tcp_seq <> 0",
    "CREATE INDEX IF NOT EXISTS l7_resp_seq ON l7_flow_log (org_id, resp_tcp_seq) WHERE resp_tcp_seq <> 0",
    "CREATE INDEX IF NOT EXISTS l7_sys_req ON l7_flow_log (org_id, syscall_trace_id_request) WHERE syscall_trace_id_request <> 0",
    "CREATE INDEX IF NOT EXISTS l7_sys_resp ON l7_flow_log (org_id, syscall_trace_id_response) WHERE syscall_trace_id_response <> 0",
    "CREATE INDEX IF NOT EXISTS l7_xreq_0 ON l7_flow_log (org_id, x_request_id_0) WHERE x_request_id_0 <> ''",
    "CREATE INDEX IF NOT EXISTS l7_xreq_1 ON l7_flow_log (org_id, x_request_id_1) WHERE x_request_id_1 <> ''",
    "CREATE TABLE IF NOT EXISTS ch_device (org_id INTEGER NOT NULL, devicetype INTEGER NOT NULL, deviceid INTEGER NOT NULL, name TEXT NOT NULL DEFAULT '', icon_id INTEGER NOT NULL DEFAULT 0, uid TEXT NOT NULL DEFAULT '', hostname TEXT NOT NULL DEFAULT '', ip TEXT NOT NULL DEFAULT '', team_id INTEGER NOT NULL DEFAULT 0, domain_id INTEGER NOT NULL DEFAULT 0, sub_domain_id INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (org_id, devicetype, deviceid))",
    "CREATE TABLE IF NOT EXISTS ch_pod (org_id INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL DEFAULT '', icon_id INTEGER NOT NULL DEFAULT 0, pod_cluster_id INTEGER NOT NULL DEFAULT 0, pod_ns_id INTEGER NOT NULL DEFAULT 0, pod_node_id INTEGER NOT NULL DEFAULT 0, pod_service_id INTEGER NOT NULL DEFAULT 0, pod_group_id INTEGER NOT NULL DEFAULT 0, team_id INTEGER NOT NULL DEFAULT 0, domain_id INTEGER NOT NULL DEFAULT 0, sub_domain_id INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (org_id, id))",
    "CREATE TABLE IF NOT EXISTS ch_subnet (org_id INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL DEFAULT '', PRIMARY KEY (org_id, id))",
    "CREATE TABLE IF NOT EXISTS ch_gprocess (org_id INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL DEFAULT '', PRIMARY KEY (org_id, id))",
    "CREATE TABLE IF NOT EXISTS ch_vtap_port (org_id INTEGER NOT NULL, vtap_id INTEGER NOT NULL, tap_port INTEGER NOT NULL, name TEXT NOT NULL DEFAULT '', host_id INTEGER NOT NULL DEFAULT 0, host_name TEXT NOT NULL DEFAULT '', chost_id INTEGER NOT NULL DEFAULT 0, chost_name TEXT NOT NULL DEFAULT '', pod_node_id INTEGER NOT NULL DEFAULT 0, pod_node_name TEXT NOT NULL DEFAULT '', device_type INTEGER NOT NULL DEFAULT 0, device_id INTEGER NOT NULL DEFAULT 0, device_name TEXT NOT NULL DEFAULT '', icon_id INTEGER NOT NULL DEFAULT 0, team_id INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (org_id, vtap_id, tap_port))",
    "CREATE TABLE IF NOT EXISTS ch_tap_type (org_id INTEGER NOT NULL, value INTEGER NOT NULL, name TEXT NOT NULL DEFAULT '', PRIMARY KEY (org_id, value))",
];

/// `CREATE TABLE l7_flow_log` of the embedded store.
pub fn sqlite_l7_table() -> String {
    let cols: Vec<String> = std::iter::once("org_id INTEGER NOT NULL DEFAULT 1".to_string())
        .chain(
            SQLITE_L7_COLUMNS
                .iter()
                .map(|(n, t)| format!("\"{n}\" {t}")),
        )
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS l7_flow_log ({})",
        cols.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_ddl_splits_and_renames() {
        let st = clickhouse_statements(OrgId(1), "flow_log", "flow_tag");
        assert!(st[0]
            .sql
            .starts_with("CREATE DATABASE IF NOT EXISTS flow_log"));
        assert!(st.iter().any(|s| s
            .sql
            .contains("ENGINE=Distributed('df_cluster', 'flow_log', 'l7_flow_log_local'")));
        assert_eq!(st.iter().filter(|s| s.is_seed).count(), 4);
        let st2 = clickhouse_statements(OrgId(7), "flow_log", "flow_tag");
        assert!(st2[0].sql.contains("0007_flow_log"));
        assert!(st2
            .iter()
            .all(|s| !s.sql.contains(" flow_log.") && !s.sql.contains("'flow_tag'")));
        assert!(st2.iter().any(|s| s.sql.contains("DB '0007_flow_tag'")));
    }

    #[test]
    fn sqlite_columns_cover_the_row() {
        assert_eq!(SQLITE_L7_COLUMNS.len(), 119);
        assert!(sqlite_l7_table().contains("\"_trace_id_2\" TEXT"));
    }
}
