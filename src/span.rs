//! The span model: ONE projection of a DeepFlow row, or of a span the assembly built from
//! rows, into a Tempo span — its signal, name, kind, status, resource (service name and the
//! other resource attributes) and the attributes TraceQL sees.
//!
//! Trace encoding (`tempo::encode`), search evaluation (`query::search`), tag values and
//! metrics all read spans through this module, so a name Grafana shows in a trace is the name
//! search matches and the name tag values list. The stores mirror `service.name` in SQL (see
//! `store`), pinned to this module by the store conformance tests. Pure: no IO, no SQL.

use crate::autotrace::OutSpan;
use crate::store::model::{
    l7_protocol, observation_point, pick_side as pick, response_status, signal_source, FlowRecord,
};
use crate::tempo::ids::{app_span_id, row_span_id};
use crate::traceql::{Kind as TqKind, Static, Status as TqStatus};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{span, status, Status};
use std::borrow::Cow;

/// What the model reads of a span: its record, plus what the assembly unified over the span's
/// process or network span set (absent for a lone row).
#[derive(Debug, Clone, Copy)]
pub struct SpanFacts<'a> {
    pub record: &'a FlowRecord,
    /// DeepFlow's service as the assembly unified it (`auto_service`).
    pub auto_service: Option<&'a str>,
    /// The process id the assembly unified (eBPF spans).
    pub process_id: Option<i32>,
    /// The `_id` the span's ID derives from (the first of its merged rows).
    pub first_id: u64,
}

impl<'a> SpanFacts<'a> {
    /// A lone row as a span.
    pub fn of_row(record: &'a FlowRecord) -> Self {
        SpanFacts {
            record,
            auto_service: None,
            process_id: None,
            first_id: record._id,
        }
    }

    /// A span of an assembled trace.
    pub fn of_span(s: &'a OutSpan) -> Self {
        SpanFacts {
            record: &s.record,
            auto_service: s.auto_service.as_deref().filter(|v| !v.is_empty()),
            process_id: s.process_id,
            first_id: s.ids.first().copied().unwrap_or(s.record._id),
        }
    }

    pub fn signal(&self) -> Signal {
        Signal::of(self.record)
    }

    /// `resource.service.name`.
    pub fn service_name(&self) -> Cow<'a, str> {
        service_name_of(self)
    }

    /// The span name: the endpoint, else `request_type request_resource`, else the protocol.
    pub fn name(&self) -> String {
        self.record.span_name()
    }

    pub fn kind(&self) -> span::SpanKind {
        span_kind(self.record)
    }

    pub fn status(&self) -> Status {
        span_status(self.record)
    }

    pub fn resource(&self) -> Resource<'a> {
        Resource::of(self)
    }

    /// The span ID as encoded (before the encoder resolves a collision within one trace):
    /// application spans keep theirs, others derive one from their first row `_id`.
    pub fn span_id_hex(&self) -> String {
        let r = self.record;
        let id = if r.signal_source == signal_source::OTEL && !r.span_id.is_empty() {
            app_span_id(&r.span_id)
        } else {
            row_span_id(self.first_id)
        };
        hex::encode(id)
    }

    /// TraceQL's `status`.
    pub fn traceql_status(&self) -> TqStatus {
        match self.record.response_status {
            response_status::SUCCESS => TqStatus::Ok,
            response_status::TIMEOUT
            | response_status::SERVER_ERROR
            | response_status::CLIENT_ERROR => TqStatus::Error,
            _ => TqStatus::Unset,
        }
    }

    /// TraceQL's `kind`.
    pub fn traceql_kind(&self) -> TqKind {
        use span::SpanKind as K;
        match self.kind() {
            K::Client => TqKind::Client,
            K::Server => TqKind::Server,
            K::Producer => TqKind::Producer,
            K::Consumer => TqKind::Consumer,
            K::Internal => TqKind::Internal,
            K::Unspecified => TqKind::Unspecified,
        }
    }

    /// A span attribute as TraceQL sees it (`span.x`): DeepFlow's columns and the semantic
    /// conventions derived from them, else the row's own OTel attribute.
    pub fn span_attr(&self, name: &str) -> Option<Static> {
        span_attr(self.record, name).or_else(|| self.otel_attr(name))
    }

    /// A resource attribute as TraceQL sees it (`resource.x`): the span's resource, else the
    /// row's own OTel attribute.
    pub fn resource_attr(&self, name: &str) -> Option<Static> {
        self.resource().get(name).or_else(|| self.otel_attr(name))
    }

    /// An unscoped attribute (`.x`): span, then resource.
    pub fn any_attr(&self, name: &str) -> Option<Static> {
        span_attr(self.record, name)
            .or_else(|| self.otel_attr(name))
            .or_else(|| self.resource().get(name))
    }

    fn otel_attr(&self, name: &str) -> Option<Static> {
        self.record
            .attributes()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| Static::String(v.to_string()))
    }
}

/// The observation points that have a display name, and those names (what network spans'
/// service names start with), for the stores' SQL form of `service.name`. Constants only.
pub fn observation_point_names() -> (Vec<&'static str>, Vec<&'static str>) {
    observation_point::ALL
        .iter()
        .filter_map(|c| observation_point::name(c).map(|n| (*c, n)))
        .unzip()
}

fn non_empty(s: &str) -> Option<Static> {
    (!s.is_empty()).then(|| Static::String(s.to_string()))
}

/// Scope names of the three signals.
pub const SCOPE_APP: &str = "deepflow.app";
pub const SCOPE_EBPF: &str = "deepflow.ebpf";
pub const SCOPE_NETWORK: &str = "deepflow.network";

pub fn kv_str(key: &str, v: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

pub fn kv_int(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

/// Which signal a span comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    App,
    Ebpf,
    Network,
}

impl Signal {
    pub fn of(r: &FlowRecord) -> Signal {
        match r.signal_source {
            signal_source::OTEL => Signal::App,
            signal_source::EBPF => Signal::Ebpf,
            _ => Signal::Network,
        }
    }
    pub fn scope(self) -> &'static str {
        match self {
            Signal::App => SCOPE_APP,
            Signal::Ebpf => SCOPE_EBPF,
            Signal::Network => SCOPE_NETWORK,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Signal::App => "otel",
            Signal::Ebpf => "ebpf",
            Signal::Network => "packet",
        }
    }
}

fn first_nonempty<'a>(v: &[&'a str]) -> &'a str {
    v.iter().copied().find(|s| !s.is_empty()).unwrap_or("")
}

/// The node or host a span was captured on (network spans), or runs on.
fn capture_host(r: &FlowRecord, sd: u8) -> std::borrow::Cow<'_, str> {
    let name = first_nonempty(&[
        pick(sd, &r.pod_node_0, &r.pod_node_1),
        &r.vtap_pod_node_name,
        pick(sd, &r.host_0, &r.host_1),
        &r.vtap_host_name,
        &r.vtap_device_name,
    ]);
    if name.is_empty() {
        format!("agent {}", r.agent_id).into()
    } else {
        name.into()
    }
}

/// `service.name` of an assembled span.
pub fn service_name(s: &OutSpan) -> String {
    SpanFacts::of_span(s).service_name().into_owned()
}

/// `service.name`, borrowed from the span unless it has to be composed.
fn service_name_of<'a>(s: &SpanFacts<'a>) -> Cow<'a, str> {
    let r = s.record;
    let sd = r.observed_side();
    fn or<'a>(name: &'a str, fallback: &'static str) -> Cow<'a, str> {
        Cow::Borrowed(if name.is_empty() { fallback } else { name })
    }
    match Signal::of(r) {
        Signal::App => or(
            first_nonempty(&[
                &r.app_service,
                s.auto_service.unwrap_or(""),
                r.auto_service(sd),
            ]),
            "unknown app service",
        ),
        Signal::Ebpf => or(
            first_nonempty(&[
                s.auto_service.unwrap_or(""),
                r.auto_service(sd),
                pick(sd, &r.gprocess_0, &r.gprocess_1),
                pick(sd, &r.process_kname_0, &r.process_kname_1),
            ]),
            "unknown process",
        ),
        Signal::Network => {
            let point =
                observation_point::name(&r.observation_point).unwrap_or(&r.observation_point);
            let point = if point.is_empty() { "network" } else { point };
            let host = capture_host(r, sd);
            let mut name = String::with_capacity(point.len() + 3 + host.len());
            name.push_str(point);
            name.push_str(" @ ");
            name.push_str(&host);
            Cow::Owned(name)
        }
    }
}

/// A span's resource: spans with equal resources share one `ResourceSpans`.
/// Borrowed from the span, so grouping allocates only the service name; `into_owned` keeps
/// one per resource once the spans are gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Resource<'a> {
    pub signal: Signal,
    pub service: Cow<'a, str>,
    pub instance: Cow<'a, str>,
    pub pod: Cow<'a, str>,
    pub node: Cow<'a, str>,
    pub host: Cow<'a, str>,
    pub pid: i32,
    pub exe: Cow<'a, str>,
    pub agent: u16,
}

impl<'a> Resource<'a> {
    pub fn of(s: &SpanFacts<'a>) -> Resource<'a> {
        let r = s.record;
        let sd = r.observed_side();
        let signal = Signal::of(r);
        let net = signal == Signal::Network;
        let instance = match signal {
            Signal::App => first_nonempty(&[&r.app_instance, r.auto_instance(sd)]),
            Signal::Ebpf => r.auto_instance(sd),
            Signal::Network => "",
        };
        let ebpf = signal == Signal::Ebpf;
        Resource {
            signal,
            service: service_name_of(s),
            instance: instance.into(),
            pod: if net {
                ""
            } else {
                pick(sd, &r.pod_0, &r.pod_1)
            }
            .into(),
            node: first_nonempty(&[
                pick(sd, &r.pod_node_0, &r.pod_node_1),
                &r.vtap_pod_node_name,
            ])
            .into(),
            host: first_nonempty(&[pick(sd, &r.host_0, &r.host_1), &r.vtap_host_name]).into(),
            pid: if ebpf {
                s.process_id.unwrap_or(if sd == 0 {
                    r.process_id_0
                } else {
                    r.process_id_1
                })
            } else {
                0
            },
            exe: if ebpf {
                pick(sd, &r.process_kname_0, &r.process_kname_1)
            } else {
                ""
            }
            .into(),
            agent: r.agent_id,
        }
    }

    pub fn into_owned(self) -> Resource<'static> {
        Resource {
            signal: self.signal,
            service: Cow::Owned(self.service.into_owned()),
            instance: Cow::Owned(self.instance.into_owned()),
            pod: Cow::Owned(self.pod.into_owned()),
            node: Cow::Owned(self.node.into_owned()),
            host: Cow::Owned(self.host.into_owned()),
            pid: self.pid,
            exe: Cow::Owned(self.exe.into_owned()),
            agent: self.agent,
        }
    }

    /// The resource attributes (always including `service.name`).
    pub fn attributes(&self) -> Vec<KeyValue> {
        let mut v = vec![kv_str("service.name", self.service.as_ref())];
        for (k, val) in [
            ("service.instance.id", &self.instance),
            ("k8s.pod.name", &self.pod),
            ("k8s.node.name", &self.node),
            ("host.name", &self.host),
        ] {
            if !val.is_empty() {
                v.push(kv_str(k, val.as_ref()));
            }
        }
        if self.pid != 0 {
            v.push(kv_int("process.pid", self.pid as i64));
        }
        if !self.exe.is_empty() {
            v.push(kv_str("process.executable.name", self.exe.as_ref()));
        }
        if self.agent != 0 {
            v.push(kv_int("deepflow.agent_id", self.agent as i64));
        }
        v
    }
}

pub fn span_kind(r: &FlowRecord) -> span::SpanKind {
    use span::SpanKind as K;
    if r.signal_source == signal_source::OTEL {
        match r.span_kind {
            Some(1) => return K::Internal,
            Some(2) => return K::Server,
            Some(3) => return K::Client,
            Some(4) => return K::Producer,
            Some(5) => return K::Consumer,
            _ => {}
        }
    }
    match r.observation_point.as_str() {
        "c-app" => K::Client,
        "s-app" => K::Server,
        "app" | "local" | "rest" | "" => K::Internal,
        t if t.starts_with('c') => K::Client,
        t if t.starts_with('s') => K::Server,
        _ => K::Internal,
    }
}

pub fn span_status(r: &FlowRecord) -> Status {
    let code = match r.response_status {
        response_status::SUCCESS => status::StatusCode::Ok,
        response_status::TIMEOUT
        | response_status::SERVER_ERROR
        | response_status::CLIENT_ERROR => status::StatusCode::Error,
        _ => status::StatusCode::Unset,
    };
    let message = if code == status::StatusCode::Error {
        let what = match r.response_status {
            response_status::TIMEOUT => "timeout",
            response_status::SERVER_ERROR => "server error",
            _ => "client error",
        };
        match (r.response_exception.is_empty(), r.response_code) {
            (false, _) => r.response_exception.clone(),
            (true, Some(c)) => format!("{what}: response code {c}"),
            (true, None) => what.to_string(),
        }
    } else {
        String::new()
    };
    Status {
        message,
        code: code as i32,
    }
}

pub fn db_system(proto: u8) -> Option<&'static str> {
    Some(match proto {
        60 => "mysql",
        61 => "postgresql",
        62 => "oracle",
        80 => "redis",
        81 => "mongodb",
        82 => "memcached",
        _ => return None,
    })
}

/// The resource attributes the span model gives ([`Resource::get`]).
pub const RESOURCE_ATTRIBUTES: &[&str] = &[
    "service.name",
    "service.instance.id",
    "k8s.pod.name",
    "k8s.node.name",
    "host.name",
    "process.pid",
    "process.executable.name",
    "deepflow.agent_id",
];

impl Resource<'_> {
    /// One resource attribute by name, as `attributes` would give it.
    pub fn get(&self, name: &str) -> Option<Static> {
        let text = |v: &str| non_empty(v);
        match name {
            "service.name" => text(&self.service),
            "service.instance.id" => text(&self.instance),
            "k8s.pod.name" => text(&self.pod),
            "k8s.node.name" => text(&self.node),
            "host.name" => text(&self.host),
            "process.pid" => (self.pid != 0).then_some(Static::Int(self.pid as i64)),
            "process.executable.name" => text(&self.exe),
            "deepflow.agent_id" => (self.agent != 0).then_some(Static::Int(self.agent as i64)),
            _ => None,
        }
    }
}

/// A DeepFlow column or derived value under its TraceQL span attribute name.
pub fn span_attr(r: &FlowRecord, name: &str) -> Option<Static> {
    let http = r.l7_protocol == l7_protocol::HTTP1 || r.l7_protocol == l7_protocol::HTTP2;
    let code = r.response_code.map(|c| Static::Int(c as i64));
    match name {
        "http.method" if http => non_empty(&r.request_type),
        "http.target" if http => non_empty(&r.request_resource),
        "http.url" if http => non_empty(&format!("{}{}", r.request_domain, r.request_resource)),
        "http.host" if http => non_empty(&r.request_domain),
        "http.status_code" if http => code,
        "db.system" => db_system(r.l7_protocol).map(|s| Static::String(s.into())),
        "db.statement" if db_system(r.l7_protocol).is_some() => non_empty(&r.request_resource),
        "db.operation" if db_system(r.l7_protocol).is_some() => non_empty(&r.request_type),
        "rpc.system" if r.l7_protocol == l7_protocol::GRPC => Some(Static::String("grpc".into())),
        "rpc.system" if r.l7_protocol == l7_protocol::DUBBO => Some(Static::String("dubbo".into())),
        "rpc.service" if matches!(r.l7_protocol, l7_protocol::GRPC | l7_protocol::DUBBO) => {
            non_empty(&r.request_domain)
        }
        "rpc.method" if matches!(r.l7_protocol, l7_protocol::GRPC | l7_protocol::DUBBO) => {
            non_empty(&r.request_resource)
        }
        "client.address" => non_empty(&r.ip_0),
        "server.address" => non_empty(&r.ip_1),
        "server.port" => (r.server_port != 0).then_some(Static::Int(r.server_port as i64)),
        "deepflow.observation_point" => non_empty(&r.observation_point),
        "deepflow.signal_source" => Some(Static::String(
            match r.signal_source {
                signal_source::OTEL => "otel",
                signal_source::EBPF => "ebpf",
                _ => "packet",
            }
            .into(),
        )),
        "deepflow.l7_protocol" => Some(Static::String(r.l7_protocol_name())),
        "deepflow.biz_protocol" => non_empty(&r.biz_protocol),
        "deepflow.request_type" => non_empty(&r.request_type),
        "deepflow.request_domain" => non_empty(&r.request_domain),
        "deepflow.request_resource" => non_empty(&r.request_resource),
        "deepflow.endpoint" => non_empty(&r.endpoint),
        "deepflow.response_code" => code,
        "deepflow.response_status" => Some(Static::Int(r.response_status as i64)),
        "deepflow.response_exception" => non_empty(&r.response_exception),
        "deepflow.agent_id" => Some(Static::Int(r.agent_id as i64)),
        "deepflow.x_request_id_0" => non_empty(&r.x_request_id_0),
        "deepflow.x_request_id_1" => non_empty(&r.x_request_id_1),
        "deepflow.trace_id" => non_empty(&r.joined_trace_id()),
        "deepflow.req_tcp_seq" => (r.req_tcp_seq != 0).then_some(Static::Int(r.req_tcp_seq as i64)),
        "deepflow.resp_tcp_seq" => {
            (r.resp_tcp_seq != 0).then_some(Static::Int(r.resp_tcp_seq as i64))
        }
        "deepflow.syscall_trace_id_request" => (r.syscall_trace_id_request != 0)
            .then(|| Static::String(r.syscall_trace_id_request.to_string())),
        "deepflow.syscall_trace_id_response" => (r.syscall_trace_id_response != 0)
            .then(|| Static::String(r.syscall_trace_id_response.to_string())),
        "deepflow.process_kname" => non_empty(pick(
            r.observed_side(),
            &r.process_kname_0,
            &r.process_kname_1,
        )),
        "deepflow.tap" => non_empty(&r.tap),
        _ => None,
    }
}
