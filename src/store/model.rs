//! Row model of DeepFlow's `flow_log.l7_flow_log` as this program reads and writes it.
//!
//! Owns the plain data types that cross the store boundary: rows to insert (`L7FlowLogRow`),
//! the search-phase metadata (`FlowMeta`, the "FLOWMETA" column list of the tracing spec) and
//! the full record of the fetch phase (`FlowRecord`, with display names resolved through the
//! `flow_tag` dictionaries). Field names are DeepFlow's column names. No SQL lives here.

use serde::{Deserialize, Deserializer, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};

/// `signal_source` column values.
pub mod signal_source {
    pub const PACKET: u16 = 0;
    pub const XFLOW: u16 = 1;
    pub const EBPF: u16 = 3;
    pub const OTEL: u16 = 4;
}

/// `type` column values (log type).
pub mod log_type {
    pub const REQUEST: u8 = 0;
    pub const RESPONSE: u8 = 1;
    pub const SESSION: u8 = 2;
}

/// `response_status` column values.
pub mod response_status {
    pub const SUCCESS: u8 = 0;
    pub const TIMEOUT: u8 = 2;
    pub const SERVER_ERROR: u8 = 3;
    pub const CLIENT_ERROR: u8 = 4;
    pub const UNKNOWN: u8 = 5;
    pub const PARSE_FAILED: u8 = 6;
}

/// `l7_protocol` codes the program treats specially, and their display names.
pub mod l7_protocol {
    pub const HTTP1: u8 = 20;
    pub const HTTP2: u8 = 21;
    pub const DUBBO: u8 = 40;
    pub const GRPC: u8 = 41;
    pub const ISO8583: u8 = 48;
    pub const MYSQL: u8 = 60;
    pub const POSTGRESQL: u8 = 61;
    pub const REDIS: u8 = 80;
    pub const KAFKA: u8 = 100;
    pub const WEBSPHEREMQ: u8 = 108;
    pub const DNS: u8 = 120;

    /// DeepFlow's display name of an `l7_protocol` code (the `Enum(l7_protocol)` seed data).
    pub fn name(code: u8) -> Option<&'static str> {
        Some(match code {
            0 => "N/A",
            1 => "Other",
            20 => "HTTP",
            21 => "HTTP2",
            40 => "Dubbo",
            41 => "gRPC",
            43 => "SofaRPC",
            44 => "FastCGI",
            45 => "bRPC",
            46 => "Tars",
            47 => "Some/IP",
            48 => "ISO-8583",
            49 => "Triple",
            50 => "NetSign",
            60 => "MySQL",
            61 => "PostgreSQL",
            62 => "Oracle",
            63 => "Dameng",
            80 => "Redis",
            81 => "MongoDB",
            82 => "Memcached",
            100 => "Kafka",
            101 => "MQTT",
            102 => "AMQP",
            103 => "OpenWire",
            104 => "NATS",
            105 => "Pulsar",
            106 => "ZMTP",
            107 => "RocketMQ",
            108 => "WebSphereMQ",
            120 => "DNS",
            121 => "TLS",
            122 => "Ping",
            127 => "Custom",
            _ => return None,
        })
    }
}

/// Observation points (`observation_point`, the querier's `tap_side`).
pub mod observation_point {
    pub const ALL: &[&str] = &[
        "c", "c-nd", "c-hv", "c-gw-hv", "c-gw", "s-gw", "s-gw-hv", "s-hv", "s-nd", "s", "local",
        "rest", "c-p", "s-p", "c-app", "s-app", "app",
    ];

    /// DeepFlow's English display name (`Enum(tap_side)`).
    pub fn name(tap_side: &str) -> Option<&'static str> {
        Some(match tap_side {
            "c" => "Client NIC",
            "c-nd" => "Client K8s Node",
            "c-hv" => "Client VM Hypervisor",
            "c-gw-hv" => "Client-side Gateway Hypervisor",
            "c-gw" => "Client-side Gateway",
            "local" => "Local NIC",
            "rest" => "Other NIC",
            "s-gw" => "Server-side Gateway",
            "s-gw-hv" => "Server-side Gateway Hypervisor",
            "s-hv" => "Server VM Hypervisor",
            "s-nd" => "Server K8s Node",
            "s" => "Server NIC",
            "c-p" => "Client Process",
            "s-p" => "Server Process",
            "c-app" => "Client Application",
            "s-app" => "Server Application",
            "app" => "Application",
            _ => return None,
        })
    }

    /// OTel span kind (0..=5) → observation point, as DeepFlow's ingester maps it.
    pub fn from_span_kind(kind: u8) -> &'static str {
        match kind {
            2 | 5 => "s-app",
            3 | 4 => "c-app",
            _ => "app",
        }
    }
}

/// The organisation a request reads. DeepFlow keeps org 1 (and 0) in `flow_log`, org N in
/// `NNNN_flow_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrgId(pub u16);

impl OrgId {
    pub const DEFAULT: OrgId = OrgId(1);

    pub fn is_default(self) -> bool {
        self.0 <= 1
    }

    /// The database name for `base` (`flow_log`, `flow_tag`, …) in this organisation.
    pub fn database(self, base: &str) -> String {
        if self.is_default() {
            base.to_string()
        } else {
            format!("{:04}_{base}", self.0)
        }
    }
}

impl Default for OrgId {
    fn default() -> Self {
        OrgId::DEFAULT
    }
}

impl std::str::FromStr for OrgId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u16 = s
            .trim()
            .parse()
            .map_err(|_| format!("invalid organisation id {s:?}: expected an integer 0..=9999"))?;
        if n > 9999 {
            return Err(format!("invalid organisation id {n}: expected 0..=9999"));
        }
        Ok(OrgId(n))
    }
}

/// `_id >> 32` is the row's `time` (end time in seconds).
pub fn id_time_s(id: u64) -> u32 {
    (id >> 32) as u32
}

/// Build an `_id` the way DeepFlow's ingester does: end seconds, analyzer id, counter.
pub fn make_id(end_time_s: u32, analyzer: u16, counter: u32) -> u64 {
    ((end_time_s as u64) << 32)
        | (((analyzer as u64) & 0x3ff) << 22)
        | ((counter as u64) & 0x3f_ffff)
}

/// Split DeepFlow's querier `trace_id` form (`"a, b"`) into sorted, trimmed, non-empty parts.
pub fn split_trace_ids(joined: &str) -> Vec<String> {
    let mut v: Vec<String> = joined
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `split_trace_ids(&join_trace_ids(trace_id, trace_id_2))` without building the joined
/// string: the join puts a separator between the columns, so its parts are those of each.
pub fn split_trace_id_pair(trace_id: &str, trace_id_2: &str) -> Vec<String> {
    if trace_id.is_empty() && trace_id_2.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<String> = trace_id
        .split(',')
        .chain(trace_id_2.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if v.len() > 1 {
        v.sort();
        v.dedup();
    }
    v
}

/// The querier's two-column `trace_id` expression: `"a, b"` when a row carries two trace ids.
pub fn join_trace_ids(trace_id: &str, trace_id_2: &str) -> String {
    if trace_id_2.is_empty() {
        trace_id.to_string()
    } else if trace_id.is_empty() {
        trace_id_2.to_string()
    } else {
        [trace_id, ", ", trace_id_2].concat()
    }
}

/// One row of `l7_flow_log` as `load` reads it (JSON Lines, DeepFlow column names) and as the
/// stores insert it. Columns not listed keep the table default. Times: `time` in seconds,
/// `start_time`/`end_time` in microseconds (JSON may also give RFC 3339 strings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
#[serde(default)]
pub struct L7FlowLogRow {
    pub _id: u64,
    // knowledge graph
    pub region_id_0: u16,
    pub region_id_1: u16,
    pub az_id_0: u16,
    pub az_id_1: u16,
    pub host_id_0: u16,
    pub host_id_1: u16,
    pub l3_device_type_0: u8,
    pub l3_device_type_1: u8,
    pub l3_device_id_0: u32,
    pub l3_device_id_1: u32,
    pub pod_node_id_0: u32,
    pub pod_node_id_1: u32,
    pub pod_ns_id_0: u16,
    pub pod_ns_id_1: u16,
    pub pod_group_id_0: u32,
    pub pod_group_id_1: u32,
    pub pod_id_0: u32,
    pub pod_id_1: u32,
    pub pod_cluster_id_0: u16,
    pub pod_cluster_id_1: u16,
    pub l3_epc_id_0: i32,
    pub l3_epc_id_1: i32,
    pub epc_id_0: i32,
    pub epc_id_1: i32,
    pub subnet_id_0: u16,
    pub subnet_id_1: u16,
    pub service_id_0: u32,
    pub service_id_1: u32,
    pub auto_instance_id_0: u32,
    pub auto_instance_type_0: u8,
    pub auto_service_id_0: u32,
    pub auto_service_type_0: u8,
    pub auto_instance_id_1: u32,
    pub auto_instance_type_1: u8,
    pub auto_service_id_1: u32,
    pub auto_service_type_1: u8,
    // base
    pub time: u32,
    pub ip4_0: Ip4,
    pub ip4_1: Ip4,
    pub ip6_0: Ip6,
    pub ip6_1: Ip6,
    pub is_ipv4: u8,
    pub protocol: u8,
    pub client_port: u16,
    pub server_port: u16,
    pub flow_id: u64,
    pub capture_network_type_id: u8,
    pub capture_nic_type: u8,
    pub signal_source: u16,
    pub capture_nic: u32,
    pub observation_point: String,
    pub agent_id: u16,
    pub req_tcp_seq: u32,
    pub resp_tcp_seq: u32,
    #[serde(deserialize_with = "micros_de")]
    pub start_time: i64,
    #[serde(deserialize_with = "micros_de")]
    pub end_time: i64,
    pub gprocess_id_0: u32,
    pub gprocess_id_1: u32,
    pub biz_response_code: String,
    pub process_id_0: i32,
    pub process_id_1: i32,
    pub process_kname_0: String,
    pub process_kname_1: String,
    pub syscall_trace_id_request: u64,
    pub syscall_trace_id_response: u64,
    pub syscall_thread_0: u32,
    pub syscall_thread_1: u32,
    pub syscall_cap_seq_0: u32,
    pub syscall_cap_seq_1: u32,
    // l7
    pub l7_protocol: u8,
    pub biz_protocol: String,
    pub version: String,
    #[serde(rename = "type")]
    pub r#type: u8,
    pub is_tls: u8,
    pub is_async: u8,
    pub request_type: String,
    pub request_domain: String,
    pub request_resource: String,
    pub endpoint: String,
    pub request_id: Option<u64>,
    pub response_status: u8,
    pub response_code: Option<i32>,
    pub response_exception: String,
    pub response_result: String,
    pub http_proxy_client: String,
    pub x_request_id_0: String,
    pub x_request_id_1: String,
    pub trace_id: String,
    pub _trace_id_2: String,
    pub trace_id_index: u64,
    pub span_id: String,
    pub parent_span_id: String,
    pub span_kind: Option<u8>,
    pub app_service: String,
    pub app_instance: String,
    pub response_duration: u64,
    pub request_length: Option<i64>,
    pub response_length: Option<i64>,
    pub attribute_names: Vec<String>,
    pub attribute_values: Vec<String>,
    pub events: String,
    // The remaining DeepFlow columns, so a row is complete in both stores.
    pub tag_source_0: u8,
    pub tag_source_1: u8,
    pub team_id: u16,
    pub nat_source: u8,
    pub tunnel_type: u8,
    pub biz_type: u8,
    pub biz_code: String,
    pub biz_scenario: String,
    pub syscall_coroutine_0: u64,
    pub syscall_coroutine_1: u64,
    pub is_reversed: u8,
    pub sql_affected_rows: Option<u64>,
    pub direction_score: u8,
    pub captured_request_byte: u32,
    pub captured_response_byte: u32,
    pub metrics_names: Vec<String>,
    pub metrics_values: Vec<f64>,
}

impl L7FlowLogRow {
    /// Fill the columns DeepFlow derives: `time` from `end_time`, `_id` from `time` and a
    /// counter when absent, `response_duration` when absent, `is_ipv4` from the addresses.
    pub fn normalise(&mut self, counter: u32) {
        if self.time == 0 && self.end_time > 0 {
            self.time = (self.end_time / 1_000_000) as u32;
        }
        if self._id == 0 {
            self._id = make_id(self.time, 0, counter);
        }
        if self.response_duration == 0 && self.end_time > self.start_time {
            self.response_duration = (self.end_time - self.start_time) as u64;
        }
        if self.is_ipv4 == 0 && self.ip6_0.0.is_unspecified() && self.ip6_1.0.is_unspecified() {
            self.is_ipv4 = 1;
        }
    }

    /// The querier's `trace_id` (both trace id columns).
    pub fn joined_trace_id(&self) -> String {
        join_trace_ids(&self.trace_id, &self._trace_id_2)
    }
}

/// Search-phase metadata of one row: the FLOWMETA columns of the tracing spec (§3.2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clickhouse::Row)]
pub struct FlowMeta {
    pub _id: u64,
    #[serde(rename = "type")]
    pub r#type: u8,
    pub signal_source: u16,
    pub req_tcp_seq: u32,
    pub resp_tcp_seq: u32,
    pub start_time_us: i64,
    pub end_time_us: i64,
    /// `agent_id` (the querier's `vtap_id`).
    pub agent_id: u16,
    pub protocol: u8,
    pub syscall_trace_id_request: u64,
    pub syscall_trace_id_response: u64,
    pub span_id: String,
    pub parent_span_id: String,
    pub request_id: Option<u64>,
    pub l7_protocol: u8,
    pub trace_id: String,
    pub _trace_id_2: String,
    pub x_request_id_0: String,
    pub x_request_id_1: String,
    /// `observation_point` (the querier's `tap_side`).
    pub observation_point: String,
    /// The `time` column (unix seconds) that store windows apply to.
    pub time: u32,
}

impl FlowMeta {
    /// Sorted, distinct, non-empty trace ids of both trace id columns.
    pub fn trace_ids(&self) -> Vec<String> {
        split_trace_id_pair(&self.trace_id, &self._trace_id_2)
    }
}

/// The full record of one row (§3.5 of the tracing spec): raw columns plus the names DeepFlow
/// resolves through its `flow_tag` dictionaries. Derived querier fields (`ip_0`,
/// `auto_instance_0`, …) are methods.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
pub struct FlowRecord {
    pub _id: u64,
    pub time: u32,
    pub signal_source: u16,
    pub l7_protocol: u8,
    /// `biz_protocol` (the querier's `l7_protocol_str`).
    pub biz_protocol: String,
    #[serde(rename = "type")]
    pub r#type: u8,
    pub req_tcp_seq: u32,
    pub resp_tcp_seq: u32,
    pub start_time_us: i64,
    pub end_time_us: i64,
    pub agent_id: u16,
    /// `capture_nic` (`tap_port`).
    pub capture_nic: u32,
    /// `capture_nic_type` (`tap_port_type`).
    pub capture_nic_type: u8,
    /// `tap_port_name` from `vtap_port_map` (only for nic types 0, 1, 2).
    pub capture_nic_name: String,
    /// `resource_from_vtap` element 0 (device type) and 2 (device name).
    pub vtap_device_type: u64,
    pub vtap_device_name: String,
    pub vtap_host_name: String,
    pub vtap_pod_node_name: String,
    pub syscall_trace_id_request: u64,
    pub syscall_trace_id_response: u64,
    pub syscall_cap_seq_0: u32,
    pub syscall_cap_seq_1: u32,
    pub trace_id: String,
    pub _trace_id_2: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub span_kind: Option<u8>,
    pub x_request_id_0: String,
    pub x_request_id_1: String,
    pub flow_id: u64,
    pub protocol: u8,
    pub version: String,
    pub process_id_0: i32,
    pub process_id_1: i32,
    pub observation_point: String,
    /// The querier's `ip_0` / `ip_1`: the address string of each side (IPv4 or IPv6).
    pub ip_0: String,
    pub ip_1: String,
    pub client_port: u16,
    pub server_port: u16,
    pub subnet_id_0: u16,
    pub subnet_id_1: u16,
    pub subnet_0: String,
    pub subnet_1: String,
    pub auto_instance_type_0: u8,
    pub auto_instance_type_1: u8,
    pub auto_instance_id_0: u32,
    pub auto_instance_id_1: u32,
    /// `device_map` name of (auto_instance_type, auto_instance_id); empty when unknown.
    pub auto_instance_name_0: String,
    pub auto_instance_name_1: String,
    pub auto_service_type_0: u8,
    pub auto_service_type_1: u8,
    pub auto_service_id_0: u32,
    pub auto_service_id_1: u32,
    pub auto_service_name_0: String,
    pub auto_service_name_1: String,
    pub process_kname_0: String,
    pub process_kname_1: String,
    pub gprocess_id_0: u32,
    pub gprocess_id_1: u32,
    pub gprocess_0: String,
    pub gprocess_1: String,
    pub pod_id_0: u32,
    pub pod_id_1: u32,
    pub pod_0: String,
    pub pod_1: String,
    pub pod_ns_id_0: u16,
    pub pod_ns_id_1: u16,
    pub pod_node_id_0: u32,
    pub pod_node_id_1: u32,
    pub pod_node_0: String,
    pub pod_node_1: String,
    pub host_id_0: u16,
    pub host_id_1: u16,
    pub host_0: String,
    pub host_1: String,
    pub app_service: String,
    pub app_instance: String,
    /// `capture_network_type_id` (`tap_id`) and its name (`tap`).
    pub capture_network_type_id: u8,
    pub tap: String,
    pub is_tls: u8,
    pub is_async: u8,
    pub response_status: u8,
    pub response_duration: u64,
    pub biz_response_code: String,
    pub response_code: Option<i32>,
    pub response_exception: String,
    pub response_result: String,
    pub request_type: String,
    pub request_domain: String,
    pub request_resource: String,
    pub request_id: Option<u64>,
    pub http_proxy_client: String,
    pub endpoint: String,
    pub attribute_names: Vec<String>,
    pub attribute_values: Vec<String>,
    pub events: String,
}

impl FlowRecord {
    /// The querier's `trace_id`: `"a, b"` when the row has two trace ids.
    pub fn joined_trace_id(&self) -> String {
        join_trace_ids(&self.trace_id, &self._trace_id_2)
    }

    /// The side (0 client, 1 server) a row describes: side 0 for client-side observation
    /// points (`c…`), side 1 otherwise — the querier's rule for `auto_instance` and friends.
    pub fn observed_side(&self) -> u8 {
        if self.observation_point.starts_with('c') {
            0
        } else {
            1
        }
    }

    /// `ip_0` / `ip_1`.
    pub fn ip(&self, side: u8) -> &str {
        if side == 0 {
            &self.ip_0
        } else {
            &self.ip_1
        }
    }

    /// The querier's `auto_instance_id_N`: the subnet id for IP-like instances (types 0, 255).
    pub fn auto_instance_id(&self, side: u8) -> u32 {
        let (ty, id, subnet) = if side == 0 {
            (
                self.auto_instance_type_0,
                self.auto_instance_id_0,
                self.subnet_id_0,
            )
        } else {
            (
                self.auto_instance_type_1,
                self.auto_instance_id_1,
                self.subnet_id_1,
            )
        };
        if matches!(ty, 0 | 255) {
            subnet as u32
        } else {
            id
        }
    }

    /// The querier's `auto_instance_N`: the IP string for IP-like instances, else the device name.
    pub fn auto_instance(&self, side: u8) -> &str {
        let (ty, name) = if side == 0 {
            (self.auto_instance_type_0, &self.auto_instance_name_0)
        } else {
            (self.auto_instance_type_1, &self.auto_instance_name_1)
        };
        if matches!(ty, 0 | 255) {
            self.ip(side)
        } else {
            name
        }
    }

    /// The querier's `auto_service_id_N`.
    pub fn auto_service_id(&self, side: u8) -> u32 {
        let (ty, id, subnet) = if side == 0 {
            (
                self.auto_service_type_0,
                self.auto_service_id_0,
                self.subnet_id_0,
            )
        } else {
            (
                self.auto_service_type_1,
                self.auto_service_id_1,
                self.subnet_id_1,
            )
        };
        if matches!(ty, 0 | 255) {
            subnet as u32
        } else {
            id
        }
    }

    /// The querier's `auto_service_N`.
    pub fn auto_service(&self, side: u8) -> &str {
        let (ty, name) = if side == 0 {
            (self.auto_service_type_0, &self.auto_service_name_0)
        } else {
            (self.auto_service_type_1, &self.auto_service_name_1)
        };
        if matches!(ty, 0 | 255) {
            self.ip(side)
        } else {
            name
        }
    }

    /// `Enum(tap_side)`.
    pub fn observation_point_name(&self) -> &str {
        observation_point::name(&self.observation_point).unwrap_or(&self.observation_point)
    }

    /// `Enum(l7_protocol)`.
    pub fn l7_protocol_name(&self) -> String {
        l7_protocol::name(self.l7_protocol)
            .map(str::to_string)
            .unwrap_or_else(|| self.l7_protocol.to_string())
    }

    /// A span name: `endpoint`, else `request_type request_resource`, else the protocol name.
    pub fn span_name(&self) -> String {
        if !self.endpoint.is_empty() {
            return self.endpoint.clone();
        }
        let joined = format!("{} {}", self.request_type, self.request_resource);
        let joined = joined.trim();
        if !joined.is_empty() {
            return joined.to_string();
        }
        if !self.biz_protocol.is_empty() {
            return self.biz_protocol.clone();
        }
        self.l7_protocol_name()
    }

    /// The attribute map (`attribute_names` / `attribute_values`) in column order.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attribute_names
            .iter()
            .zip(self.attribute_values.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The side-`side` one of a pair of per-side values (`x_0` for side 0, `x_1` otherwise).
pub fn pick_side<'a>(side: u8, side0: &'a str, side1: &'a str) -> &'a str {
    if side == 0 {
        side0
    } else {
        side1
    }
}

/// Names the embedded store keeps and ClickHouse resolves through `flow_tag` dictionaries.
/// Each list is inserted into the table of the same name (`ch_device`, …).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NameTables {
    pub devices: Vec<DeviceName>,
    pub pods: Vec<PodName>,
    pub subnets: Vec<IdName>,
    pub gprocesses: Vec<IdName>,
    pub vtap_ports: Vec<VtapPortName>,
}

/// A row of `flow_tag.ch_device` (`device_map`): (devicetype, deviceid) → name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
#[serde(default)]
pub struct DeviceName {
    pub devicetype: u64,
    pub deviceid: u64,
    pub name: String,
    pub icon_id: i64,
    pub uid: String,
    pub hostname: String,
    pub ip: String,
    pub team_id: u64,
    pub domain_id: u64,
    pub sub_domain_id: u64,
}

/// A row of `flow_tag.ch_pod` (`pod_map`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
#[serde(default)]
pub struct PodName {
    pub id: u64,
    pub name: String,
    pub icon_id: i64,
    pub pod_cluster_id: u64,
    pub pod_ns_id: u64,
    pub pod_node_id: u64,
    pub pod_service_id: u64,
    pub pod_group_id: u64,
    pub team_id: u64,
    pub domain_id: u64,
    pub sub_domain_id: u64,
}

/// An (id → name) row: `flow_tag.ch_subnet` and `flow_tag.ch_gprocess` (extra columns default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IdName {
    pub id: u64,
    pub name: String,
}

/// A row of `flow_tag.ch_vtap_port` (`vtap_port_map`): (vtap_id, tap_port) → names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, clickhouse::Row)]
#[serde(default)]
pub struct VtapPortName {
    pub vtap_id: u64,
    pub tap_port: u64,
    pub name: String,
    pub host_id: i64,
    pub host_name: String,
    pub chost_id: i64,
    pub chost_name: String,
    pub pod_node_id: i64,
    pub pod_node_name: String,
    pub device_type: u64,
    pub device_id: u64,
    pub device_name: String,
    pub icon_id: i64,
    pub team_id: u64,
}

/// Device types of `device_map` that name resolution uses.
pub mod device_type {
    pub const CHOST: u64 = 1;
    pub const HOST: u64 = 6;
    pub const POD: u64 = 10;
    pub const POD_SERVICE: u64 = 11;
    pub const POD_NODE: u64 = 14;
    pub const PROCESS: u64 = 120;
    pub const DEPLOYMENT: u64 = 130;
}

/// An IPv4 column value (`0.0.0.0` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ip4(#[serde(with = "ipv4_serde")] pub Ipv4Addr);

impl Default for Ip4 {
    fn default() -> Self {
        Ip4(Ipv4Addr::UNSPECIFIED)
    }
}

/// An IPv6 column value (`::` by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ip6(pub Ipv6Addr);

impl Default for Ip6 {
    fn default() -> Self {
        Ip6(Ipv6Addr::UNSPECIFIED)
    }
}

mod ipv4_serde {
    //! IPv4 as ClickHouse wants it (a `u32`) and as JSON gives it (a dotted string or a number).
    use serde::{de, Deserialize, Deserializer, Serializer};
    use std::net::Ipv4Addr;

    pub fn serialize<S: Serializer>(ip: &Ipv4Addr, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(ip)
        } else {
            s.serialize_u32(u32::from(*ip))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Addr, D::Error> {
        if !d.is_human_readable() {
            return u32::deserialize(d).map(Ipv4Addr::from);
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(u32),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(n) => Ok(Ipv4Addr::from(n)),
            Repr::Text(t) => t
                .parse()
                .map_err(|_| de::Error::custom(format!("invalid IPv4 address {t:?}"))),
        }
    }
}

/// Microseconds from an integer or an RFC 3339 string.
fn micros_de<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Num(i64),
        Text(String),
    }
    match Repr::deserialize(d)? {
        Repr::Num(n) => Ok(n),
        Repr::Text(t) => {
            let ts =
                time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| D::Error::custom(format!("invalid RFC 3339 time {t:?}: {e}")))?;
            Ok((ts.unix_timestamp_nanos() / 1000) as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_databases() {
        assert_eq!(OrgId(1).database("flow_log"), "flow_log");
        assert_eq!(OrgId(0).database("flow_tag"), "flow_tag");
        assert_eq!(OrgId(2).database("flow_log"), "0002_flow_log");
        assert!("10000".parse::<OrgId>().is_err());
    }

    #[test]
    fn ids_and_trace_ids() {
        let id = make_id(1_700_000_000, 3, 7);
        assert_eq!(id_time_s(id), 1_700_000_000);
        assert_eq!(split_trace_ids("b, a,, a"), vec!["a", "b"]);
        assert_eq!(join_trace_ids("a", ""), "a");
        assert_eq!(join_trace_ids("a", "b"), "a, b");
        assert_eq!(join_trace_ids("", "b"), "b");
        let forms = ["", " ", "a", "b", "a,b", "b, a", " a ,", ",", "c,,a", "a b"];
        for x in forms {
            for y in forms {
                assert_eq!(
                    split_trace_id_pair(x, y),
                    split_trace_ids(&join_trace_ids(x, y)),
                    "{x:?} {y:?}"
                );
            }
        }
    }

    #[test]
    fn row_from_json_with_rfc3339_and_ip_strings() {
        let mut row: L7FlowLogRow = serde_json::from_str(
            r#"{"start_time":"2023-11-14T22:13:20Z","end_time":1700000000500000,"ip4_0":"10.0.0.1","type":2}"#,
        )
        .unwrap();
        row.normalise(5);
        assert_eq!(row.start_time, 1_700_000_000_000_000);
        assert_eq!(row.time, 1_700_000_000);
        assert_eq!(row._id, make_id(1_700_000_000, 0, 5));
        assert_eq!(row.ip4_0, Ip4(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(row.response_duration, 500_000);
        assert_eq!(row.r#type, 2);
    }
}
