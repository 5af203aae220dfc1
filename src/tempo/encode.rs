//! An assembled DeepFlow trace as OTLP: one `ResourceSpans` per (service, instance, pod,
//! node, host, process, agent, signal), one `ScopeSpans` naming the signal (app / eBPF /
//! network), every span with a status, Tempo-readable IDs and DeepFlow's facts as attributes.
//!
//! IDs: application spans keep their span id; eBPF and network spans get an 8-byte id derived
//! from their first row `_id` (stable across requests and replicas). Parent ids follow the
//! assembled tree. Every span carries the requested trace ID; a differing original trace id is
//! kept as `deepflow.trace_id`. Pure: no IO.

use super::ids::{app_span_id, row_span_id, SpanId, TraceId};
use super::pb;
use crate::autotrace::output::push_decimal;
use crate::autotrace::{OutSpan, TraceResult};
use crate::span::SpanFacts;
pub use crate::span::{
    db_system, kv_int, kv_str, service_name, span_kind, span_status, Resource, Signal, SCOPE_APP,
    SCOPE_EBPF, SCOPE_NETWORK,
};
use crate::store::model::{l7_protocol, signal_source, FlowRecord};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use indexmap::IndexSet;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as OtlpResource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};

fn kv_bool(key: &str, v: bool) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(v)),
        }),
        ..Default::default()
    }
}

/// Semantic-convention and DeepFlow attributes of a span, then the row's own OTel attributes
/// (which win on a name clash). Column values are moved out of the span where this is their
/// last use (the span name, kind and status must be taken before). Built in `scratch` (kept
/// by the caller across spans), then copied into a vector of exactly their number.
fn span_attributes(
    s: &mut OutSpan,
    trace_id: &TraceId,
    scratch: &mut Vec<KeyValue>,
) -> Vec<KeyValue> {
    let take = std::mem::take::<String>;
    let r = &mut s.record;
    let v = scratch;
    v.clear();
    v.push(kv_str(
        "deepflow.observation_point",
        take(&mut r.observation_point),
    ));
    v.push(kv_str("deepflow.signal_source", Signal::of(r).name()));
    v.push(kv_str("deepflow.l7_protocol", r.l7_protocol_name()));
    if !r.biz_protocol.is_empty() {
        v.push(kv_str("deepflow.biz_protocol", take(&mut r.biz_protocol)));
    }
    // The request columns are read again by the semantic conventions below.
    for (k, val) in [
        ("deepflow.request_type", &r.request_type),
        ("deepflow.request_domain", &r.request_domain),
        ("deepflow.request_resource", &r.request_resource),
    ] {
        if !val.is_empty() {
            v.push(kv_str(k, val.as_str()));
        }
    }
    for (k, val) in [
        ("deepflow.endpoint", &mut r.endpoint),
        ("deepflow.response_exception", &mut r.response_exception),
        ("deepflow.response_result", &mut r.response_result),
        ("deepflow.x_request_id_0", &mut r.x_request_id_0),
        ("deepflow.x_request_id_1", &mut r.x_request_id_1),
        ("deepflow.http_proxy_client", &mut r.http_proxy_client),
    ] {
        if !val.is_empty() {
            v.push(kv_str(k, take(val)));
        }
    }
    if let Some(code) = r.response_code {
        v.push(kv_int("deepflow.response_code", code as i64));
    }
    v.push(kv_int("deepflow.response_status", r.response_status as i64));
    for (k, val) in [
        ("deepflow.req_tcp_seq", r.req_tcp_seq as u64),
        ("deepflow.resp_tcp_seq", r.resp_tcp_seq as u64),
        (
            "deepflow.syscall_trace_id_request",
            r.syscall_trace_id_request,
        ),
        (
            "deepflow.syscall_trace_id_response",
            r.syscall_trace_id_response,
        ),
    ] {
        if val != 0 {
            // 64-bit unsigned ids do not fit OTLP's int64: keep them as text.
            v.push(kv_str(k, decimal(val)));
        }
    }
    if let Some(id) = r.request_id {
        v.push(kv_str("deepflow.request_id", decimal(id)));
    }
    v.push(kv_int("deepflow.agent_id", r.agent_id as i64));
    v.push(kv_int("deepflow.selftime_us", s.selftime));
    if let Some(why) = s.set_parent_info.take() {
        v.push(kv_str("deepflow.parent_reason", why));
    }
    if s.inferred {
        v.push(kv_bool("deepflow.inferred", true));
    }
    v.push(kv_str("deepflow.span_id", take(&mut s.deepflow_span_id)));
    let mut row_ids = String::with_capacity(20 * s.ids.len());
    for (k, id) in s.ids.iter().enumerate() {
        if k > 0 {
            row_ids.push(',');
        }
        push_decimal(&mut row_ids, *id);
    }
    v.push(kv_str("deepflow.row_ids", row_ids));
    let own = r.joined_trace_id();
    if !own.is_empty() && TraceId::from_app_trace_id(&own).is_none_or(|t| t != *trace_id) {
        v.push(kv_str("deepflow.trace_id", own));
    }
    // OpenTelemetry semantic conventions from the protocol columns.
    let proto = r.l7_protocol;
    if proto == l7_protocol::HTTP1 || proto == l7_protocol::HTTP2 {
        if !r.request_type.is_empty() {
            v.push(kv_str("http.method", take(&mut r.request_type)));
        }
        if !r.request_resource.is_empty() {
            let url = [r.request_domain.as_str(), r.request_resource.as_str()].concat();
            v.push(kv_str("http.target", take(&mut r.request_resource)));
            v.push(kv_str("http.url", url));
        }
        if !r.request_domain.is_empty() {
            v.push(kv_str("http.host", take(&mut r.request_domain)));
        }
        if let Some(code) = r.response_code {
            v.push(kv_int("http.status_code", code as i64));
        }
    } else if let Some(system) = db_system(proto) {
        v.push(kv_str("db.system", system));
        if !r.request_resource.is_empty() {
            v.push(kv_str("db.statement", take(&mut r.request_resource)));
        }
        if !r.request_type.is_empty() {
            v.push(kv_str("db.operation", take(&mut r.request_type)));
        }
    } else if proto == l7_protocol::GRPC || proto == l7_protocol::DUBBO {
        v.push(kv_str(
            "rpc.system",
            if proto == l7_protocol::GRPC {
                "grpc"
            } else {
                "dubbo"
            },
        ));
        if !r.request_domain.is_empty() {
            v.push(kv_str("rpc.service", take(&mut r.request_domain)));
        }
        if !r.request_resource.is_empty() {
            v.push(kv_str("rpc.method", take(&mut r.request_resource)));
        }
    }
    if !r.ip_0.is_empty() {
        v.push(kv_str("client.address", take(&mut r.ip_0)));
    }
    if !r.ip_1.is_empty() {
        v.push(kv_str("server.address", take(&mut r.ip_1)));
    }
    if r.server_port != 0 {
        v.push(kv_int("server.port", r.server_port as i64));
    }
    // The row's own attributes, under their own keys.
    if !r.attribute_names.is_empty() {
        let own: HashSet<&str> = r.attribute_names.iter().map(String::as_str).collect();
        v.retain(|kv| !own.contains(kv.key.as_str()));
        let names = std::mem::take(&mut r.attribute_names);
        let values = std::mem::take(&mut r.attribute_values);
        v.extend(names.into_iter().zip(values).map(|(k, val)| KeyValue {
            key: k,
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(val)),
            }),
            ..Default::default()
        }));
    }
    // Moved out by append (not mem::take) so the scratch keeps its capacity for the next span.
    let mut attributes = Vec::with_capacity(v.len());
    attributes.append(v);
    attributes
}

/// The encoded size of a length-delimited field of `len` bytes with a one-byte key (field
/// numbers below 16).
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// What an attribute adds to its span (`Span.attributes`, field 9): what
/// `prost::encoding::message::encoded_len(9, kv)` computes, without walking the generic path
/// for the two kinds of values the encoder writes.
fn attribute_len(kv: &KeyValue) -> usize {
    let key = if kv.key.is_empty() {
        0
    } else {
        field_len(kv.key.len())
    };
    // AnyValue (KeyValue.value, field 2) holds a oneof: string (field 1) or int64 (field 3).
    let value = match &kv.value {
        None => 0,
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(v)),
        }) => field_len(field_len(v.len())),
        Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }) => field_len(1 + prost::encoding::encoded_len_varint(*v as u64)),
        Some(_) => return prost::encoding::message::encoded_len(9, kv),
    };
    field_len(key + value)
}

fn decimal(v: u64) -> String {
    let mut out = String::with_capacity(20);
    push_decimal(&mut out, v);
    out
}

/// OTel events of the `events` column: a JSON list of `{name, time_unix_nano|timestamp,
/// attributes}`; anything else yields no events.
fn span_events(r: &FlowRecord) -> Vec<span::Event> {
    if r.events.trim().is_empty() {
        return vec![];
    }
    let Ok(serde_json::Value::Array(list)) = serde_json::from_str::<serde_json::Value>(&r.events)
    else {
        return vec![];
    };
    list.iter()
        .filter_map(|e| {
            let name = e.get("name")?.as_str()?.to_string();
            let t = ["time_unix_nano", "timeUnixNano", "timestamp"]
                .iter()
                .find_map(|k| {
                    e.get(*k)
                        .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
                })
                .unwrap_or(0);
            let attributes = e
                .get("attributes")
                .and_then(|a| a.as_object())
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            kv_str(
                                k,
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some(span::Event {
                time_unix_nano: t,
                name,
                attributes,
                dropped_attributes_count: 0,
            })
        })
        .collect()
}

/// From this many spans on, encoding uses two threads.
const PARALLEL_SPANS: usize = 2_000;

/// Encode an assembled trace under `trace_id`.
pub fn encode(result: &TraceResult, trace_id: &TraceId) -> pb::Trace {
    encode_owned(result.clone(), trace_id).0
}

/// `encode`, consuming the trace: its column values move into the encoding instead of being
/// copied (what a request does, as it drops the assembled trace once encoded). Also returns
/// the encoding's protobuf size (`prost::Message::encoded_len`), summed from the spans' sizes
/// as they are built.
pub fn encode_owned(result: TraceResult, trace_id: &TraceId) -> (pb::Trace, usize) {
    let parallel = result.spans.len() >= PARALLEL_SPANS;
    encode_with(result, trace_id, parallel)
}

/// `f` over `items`, or over each half of them on its own thread when `parallel` (the store is
/// idle meanwhile); results in order.
fn on_halves<T: Send, R: Send>(
    mut items: Vec<T>,
    parallel: bool,
    f: impl Fn(Vec<T>) -> R + Sync,
) -> Vec<R> {
    if !parallel {
        return vec![f(items)];
    }
    let second_half = items.split_off(items.len() / 2);
    std::thread::scope(|scope| {
        let second = scope.spawn(|| f(second_half));
        let first = f(items);
        vec![
            first,
            second
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e)),
        ]
    })
}

/// Spans of one run of the trace: the resources they use in order of first appearance, each
/// span's resource (an index into them), and the spans.
struct Part {
    resources: Vec<Resource<'static>>,
    resource_of: Vec<usize>,
    /// The spans and the size each adds to its `ScopeSpans` (field 2, length-delimited).
    spans: Vec<(Span, usize)>,
}

fn encode_with(mut result: TraceResult, trace_id: &TraceId, parallel: bool) -> (pb::Trace, usize) {
    // Span IDs first, so parents can be looked up by flow index.
    let mut used: HashSet<SpanId> = HashSet::with_capacity(result.spans.len());
    let mut ids: HashMap<usize, SpanId> = HashMap::with_capacity(result.spans.len());
    for s in &result.spans {
        let r = &s.record;
        let mut id = if r.signal_source == signal_source::OTEL && !r.span_id.is_empty() {
            app_span_id(&r.span_id)
        } else {
            row_span_id(s.ids[0])
        };
        if !used.insert(id) {
            id = row_span_id(s.ids[0] ^ 0x5eed);
            used.insert(id);
        }
        ids.insert(s.id, id);
    }
    // A span and the size it adds to its `ScopeSpans`.
    let build = |mut s: OutSpan, scratch: &mut Vec<KeyValue>| -> (Span, usize) {
        let r = &s.record;
        let parent = s
            .parent_id
            .and_then(|p| ids.get(&p))
            .map(|p| p.to_vec())
            .unwrap_or_default();
        let start = s.render_start_time_us.max(0) as u64 * 1000;
        let end = (s.render_end_time_us.max(s.render_start_time_us)).max(0) as u64 * 1000;
        // What reads the columns comes before the attributes, which move them out.
        let name = r.span_name();
        let kind = span_kind(r) as i32;
        let status = span_status(r);
        let events = span_events(r);
        let mut span = Span {
            trace_id: trace_id.0.to_vec(),
            span_id: ids[&s.id].to_vec(),
            parent_span_id: parent,
            name,
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            events,
            status: Some(status),
            ..Default::default()
        };
        // The span's size without attributes (an empty repeated field encodes to nothing),
        // then each attribute's.
        let mut len = prost::Message::encoded_len(&span);
        span.attributes = span_attributes(&mut s, trace_id, scratch);
        len += span.attributes.iter().map(attribute_len).sum::<usize>();
        (span, field_len(len))
    };
    // Each half groups its spans by resource, then builds them (dropping each assembled span
    // on the thread that encoded it).
    let parts = on_halves(std::mem::take(&mut result.spans), parallel, |spans| {
        let mut keys: IndexSet<Resource<'_>, foldhash::fast::RandomState> = IndexSet::default();
        let resource_of = spans
            .iter()
            .map(|s| keys.insert_full(Resource::of(&SpanFacts::of_span(s))).0)
            .collect();
        let resources = keys.into_iter().map(Resource::into_owned).collect();
        let mut scratch = Vec::with_capacity(64);
        let spans = spans.into_iter().map(|s| build(s, &mut scratch)).collect();
        Part {
            resources,
            resource_of,
            spans,
        }
    });
    // The halves' resources in order of first appearance in the whole trace.
    let mut resources: IndexSet<Resource<'static>, foldhash::fast::RandomState> =
        IndexSet::default();
    let parts: Vec<(Vec<usize>, Part)> = parts
        .into_iter()
        .map(|mut part| {
            let global = std::mem::take(&mut part.resources)
                .into_iter()
                .map(|k| resources.insert_full(k).0)
                .collect();
            (global, part)
        })
        .collect();
    // Each resource's spans, in a vector of their number.
    let mut counts = vec![0usize; resources.len()];
    for (global, part) in &parts {
        for &g in &part.resource_of {
            counts[global[g]] += 1;
        }
    }
    let mut grouped: Vec<(Vec<Span>, usize)> = counts
        .into_iter()
        .map(|n| (Vec::with_capacity(n), 0))
        .collect();
    for (global, part) in parts {
        for (g, (span, size)) in part.resource_of.into_iter().zip(part.spans) {
            let (spans, sizes) = &mut grouped[global[g]];
            spans.push(span);
            *sizes += size;
        }
    }
    let mut size = 0;
    let resource_spans = resources
        .into_iter()
        .zip(grouped)
        .map(|(key, (spans, spans_size))| {
            let mut scope = ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: key.signal.scope().into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: Vec::new(),
                schema_url: String::new(),
            };
            // Sizes of the messages without their spans, plus what the spans add.
            let scope_size = prost::Message::encoded_len(&scope) + spans_size;
            scope.spans = spans;
            let mut rs = ResourceSpans {
                resource: Some(OtlpResource {
                    attributes: key.attributes(),
                    ..Default::default()
                }),
                scope_spans: Vec::new(),
                schema_url: String::new(),
            };
            let rs_size = prost::Message::encoded_len(&rs)
                + prost::encoding::key_len(2)
                + prost::encoding::encoded_len_varint(scope_size as u64)
                + scope_size;
            rs.scope_spans.push(scope);
            size += prost::encoding::key_len(1)
                + prost::encoding::encoded_len_varint(rs_size as u64)
                + rs_size;
            rs
        })
        .collect();
    (pb::Trace { resource_spans }, size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::FlowRecord;

    #[test]
    fn two_threads_encode_exactly_like_one() {
        let trace = crate::synth::zero_code_trace(
            3,
            1_700_000_000_000_000,
            crate::synth::Shape {
                calls: 600,
                fanout: 3,
                services: 12,
            },
            &mut crate::synth::Keys::new(0),
        );
        let records: Vec<FlowRecord> = trace
            .rows
            .iter()
            .map(|r| FlowRecord {
                _id: r._id,
                time: r.time,
                signal_source: r.signal_source,
                observation_point: r.observation_point.clone(),
                agent_id: r.agent_id,
                protocol: r.protocol,
                l7_protocol: r.l7_protocol,
                r#type: r.r#type,
                req_tcp_seq: r.req_tcp_seq,
                resp_tcp_seq: r.resp_tcp_seq,
                start_time_us: r.start_time,
                end_time_us: r.end_time,
                response_duration: r.response_duration,
                syscall_trace_id_request: r.syscall_trace_id_request,
                syscall_trace_id_response: r.syscall_trace_id_response,
                process_id_0: r.process_id_0,
                process_id_1: r.process_id_1,
                auto_instance_type_0: r.auto_instance_type_0,
                auto_instance_type_1: r.auto_instance_type_1,
                auto_instance_id_0: r.auto_instance_id_0,
                auto_instance_id_1: r.auto_instance_id_1,
                endpoint: r.endpoint.clone(),
                ..FlowRecord::default()
            })
            .collect();
        let result =
            crate::autotrace::assemble(records, vec![], Some(trace.entry_id), &Default::default());
        assert!(result.spans.len() >= PARALLEL_SPANS);
        let id = TraceId::zero_code(trace.entry_id);
        let (two, size) = encode_with(result.clone(), &id, true);
        assert_eq!(size, prost::Message::encoded_len(&two));
        assert_eq!((two, size), encode_with(result, &id, false));
    }

    #[test]
    fn summed_size_equals_the_encoded_length() {
        let trace = crate::synth::zero_code_trace(
            5,
            1_700_000_000_000_000,
            crate::synth::Shape {
                calls: 40,
                fanout: 3,
                services: 5,
            },
            &mut crate::synth::Keys::new(0),
        );
        let records: Vec<FlowRecord> = trace
            .rows
            .iter()
            .enumerate()
            .map(|(k, r)| FlowRecord {
                _id: r._id,
                signal_source: r.signal_source,
                observation_point: r.observation_point.clone(),
                agent_id: r.agent_id,
                protocol: r.protocol,
                l7_protocol: [20, 60, 41, 120, 21][k % 5],
                r#type: r.r#type,
                req_tcp_seq: r.req_tcp_seq,
                resp_tcp_seq: r.resp_tcp_seq,
                start_time_us: r.start_time,
                end_time_us: r.end_time,
                response_duration: r.response_duration,
                syscall_trace_id_request: r.syscall_trace_id_request,
                syscall_trace_id_response: r.syscall_trace_id_response,
                request_resource: "/r".repeat(k % 90),
                response_code: [None, Some(-1), Some(200), Some(i32::MIN)][k % 4],
                request_id: [None, Some(u64::MAX), Some(0)][k % 3],
                attribute_names: vec!["".into(), "a".repeat(k % 200), "http.method".into()],
                attribute_values: vec!["x".into(), "".into(), "PUT".into()],
                events: r#"[{"name":"e","time_unix_nano":7,"attributes":{"k":"v","n":1}}]"#.into(),
                ..FlowRecord::default()
            })
            .collect();
        let result = crate::autotrace::assemble(records, vec![], None, &Default::default());
        for id in [
            TraceId::zero_code(trace.entry_id),
            TraceId::from_app_trace_id("0af7651916cd43dd8448eb211c80319c").unwrap(),
        ] {
            for parallel in [false, true] {
                let (enc, size) = encode_with(result.clone(), &id, parallel);
                assert_eq!(size, prost::Message::encoded_len(&enc));
            }
        }
    }
}
