//! Tempo's JSON: protobuf messages rendered with jsonpb's conventions, which Grafana's decoders
//! depend on — lowerCamelCase names, 64-bit integers as strings, bytes as padded standard
//! base64, enums by value name, zero values and empty lists omitted, an empty message as `{}`.
//! v1 trace responses rename the top-level `resourceSpans` to `batches`.

use super::pb;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use serde_json::{json, Map, Value};

/// A JSON object that skips zero values as jsonpb does.
#[derive(Default)]
struct Obj(Map<String, Value>);

impl Obj {
    fn str(mut self, k: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), Value::String(v.into()));
        }
        self
    }
    fn u64s(mut self, k: &str, v: u64) -> Self {
        if v != 0 {
            self.0.insert(k.into(), Value::String(v.to_string()));
        }
        self
    }
    fn u32n(mut self, k: &str, v: u32) -> Self {
        if v != 0 {
            self.0.insert(k.into(), json!(v));
        }
        self
    }
    fn bytes(mut self, k: &str, v: &[u8]) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), Value::String(B64.encode(v)));
        }
        self
    }
    fn list(mut self, k: &str, v: Vec<Value>) -> Self {
        if !v.is_empty() {
            self.0.insert(k.into(), Value::Array(v));
        }
        self
    }
    fn msg(mut self, k: &str, v: Option<Value>) -> Self {
        if let Some(v) = v {
            self.0.insert(k.into(), v);
        }
        self
    }
    fn raw(mut self, k: &str, v: Value) -> Self {
        self.0.insert(k.into(), v);
        self
    }
    fn done(self) -> Value {
        Value::Object(self.0)
    }
}

pub fn any_value(v: &AnyValue) -> Value {
    match &v.value {
        None => json!({}),
        Some(any_value::Value::StringValue(s)) => json!({ "stringValue": s }),
        Some(any_value::Value::BoolValue(b)) => json!({ "boolValue": b }),
        Some(any_value::Value::IntValue(i)) => json!({ "intValue": i.to_string() }),
        Some(any_value::Value::DoubleValue(d)) => {
            if d.is_finite() {
                json!({ "doubleValue": d })
            } else if d.is_nan() {
                json!({ "doubleValue": "NaN" })
            } else if *d > 0.0 {
                json!({ "doubleValue": "Infinity" })
            } else {
                json!({ "doubleValue": "-Infinity" })
            }
        }
        Some(any_value::Value::ArrayValue(a)) => {
            json!({ "arrayValue": Obj::default().list("values", a.values.iter().map(any_value).collect()).done() })
        }
        Some(any_value::Value::KvlistValue(l)) => {
            json!({ "kvlistValue": Obj::default().list("values", l.values.iter().map(key_value).collect()).done() })
        }
        Some(any_value::Value::BytesValue(b)) => json!({ "bytesValue": B64.encode(b) }),
        #[allow(unreachable_patterns)]
        Some(_) => json!({}),
    }
}

pub fn key_value(kv: &KeyValue) -> Value {
    Obj::default()
        .str("key", &kv.key)
        .msg("value", kv.value.as_ref().map(any_value))
        .done()
}

fn key_values(v: &[KeyValue]) -> Vec<Value> {
    v.iter().map(key_value).collect()
}

fn resource(r: &Resource) -> Value {
    Obj::default()
        .list("attributes", key_values(&r.attributes))
        .u32n("droppedAttributesCount", r.dropped_attributes_count)
        .done()
}

fn scope(s: &InstrumentationScope) -> Value {
    Obj::default()
        .str("name", &s.name)
        .str("version", &s.version)
        .list("attributes", key_values(&s.attributes))
        .done()
}

fn span_kind_name(k: i32) -> Option<&'static str> {
    Some(match span::SpanKind::try_from(k).ok()? {
        span::SpanKind::Unspecified => return None,
        span::SpanKind::Internal => "SPAN_KIND_INTERNAL",
        span::SpanKind::Server => "SPAN_KIND_SERVER",
        span::SpanKind::Client => "SPAN_KIND_CLIENT",
        span::SpanKind::Producer => "SPAN_KIND_PRODUCER",
        span::SpanKind::Consumer => "SPAN_KIND_CONSUMER",
    })
}

fn status(s: &Status) -> Value {
    let code = match status::StatusCode::try_from(s.code).ok() {
        Some(status::StatusCode::Ok) => Some("STATUS_CODE_OK"),
        Some(status::StatusCode::Error) => Some("STATUS_CODE_ERROR"),
        _ => None,
    };
    let o = Obj::default().str("message", &s.message);
    match code {
        Some(c) => o.raw("code", Value::String(c.into())).done(),
        None => o.done(),
    }
}

pub fn span(s: &Span) -> Value {
    let mut o = Obj::default()
        .bytes("traceId", &s.trace_id)
        .bytes("spanId", &s.span_id)
        .str("traceState", &s.trace_state)
        .bytes("parentSpanId", &s.parent_span_id)
        .str("name", &s.name);
    if let Some(k) = span_kind_name(s.kind) {
        o = o.raw("kind", Value::String(k.into()));
    }
    o.u64s("startTimeUnixNano", s.start_time_unix_nano)
        .u64s("endTimeUnixNano", s.end_time_unix_nano)
        .list("attributes", key_values(&s.attributes))
        .u32n("droppedAttributesCount", s.dropped_attributes_count)
        .list(
            "events",
            s.events
                .iter()
                .map(|e| {
                    Obj::default()
                        .u64s("timeUnixNano", e.time_unix_nano)
                        .str("name", &e.name)
                        .list("attributes", key_values(&e.attributes))
                        .done()
                })
                .collect(),
        )
        .u32n("droppedEventsCount", s.dropped_events_count)
        .list(
            "links",
            s.links
                .iter()
                .map(|l| {
                    Obj::default()
                        .bytes("traceId", &l.trace_id)
                        .bytes("spanId", &l.span_id)
                        .str("traceState", &l.trace_state)
                        .list("attributes", key_values(&l.attributes))
                        .done()
                })
                .collect(),
        )
        .msg("status", s.status.as_ref().map(status))
        .u32n("flags", s.flags)
        .done()
}

fn scope_spans(s: &ScopeSpans) -> Value {
    Obj::default()
        .msg("scope", s.scope.as_ref().map(scope))
        .list("spans", s.spans.iter().map(span).collect())
        .str("schemaUrl", &s.schema_url)
        .done()
}

pub fn resource_spans(rs: &ResourceSpans) -> Value {
    Obj::default()
        .msg("resource", rs.resource.as_ref().map(resource))
        .list(
            "scopeSpans",
            rs.scope_spans.iter().map(scope_spans).collect(),
        )
        .str("schemaUrl", &rs.schema_url)
        .done()
}

/// `tempopb.Trace` as Tempo's v1 route renders it: `{"batches":[…]}`.
pub fn trace_v1(t: &pb::Trace) -> Value {
    Obj::default()
        .list(
            "batches",
            t.resource_spans.iter().map(resource_spans).collect(),
        )
        .done()
}

/// `tempopb.Trace` in plain jsonpb (`resourceSpans`).
pub fn trace(t: &pb::Trace) -> Value {
    Obj::default()
        .list(
            "resourceSpans",
            t.resource_spans.iter().map(resource_spans).collect(),
        )
        .done()
}

/// `tempopb.TraceByIDResponse` (v2).
pub fn trace_by_id_response(r: &pb::TraceByIdResponse) -> Value {
    let mut o = Obj::default()
        .msg("trace", r.trace.as_ref().map(trace))
        .msg(
            "metrics",
            r.metrics.as_ref().map(|m| {
                Obj::default()
                    .u64s("inspectedBytes", m.inspected_bytes)
                    .done()
            }),
        );
    if r.status == pb::PartialStatus::Partial as i32 {
        o = o.raw("status", Value::String("PARTIAL".into()));
    }
    o.str("message", &r.message).done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;

    #[test]
    fn jsonpb_conventions() {
        let s = Span {
            trace_id: vec![
                0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f,
                0xc7, 0x00,
            ],
            span_id: vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x00],
            name: "GET /".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: 1_689_969_302_000_000_000,
            end_time_unix_nano: 1_689_969_302_000_000_100,
            attributes: vec![
                KeyValue {
                    key: "a".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(200)),
                    }),
                    ..Default::default()
                },
                KeyValue {
                    key: "b".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::ArrayValue(ArrayValue {
                            values: vec![AnyValue {
                                value: Some(any_value::Value::BoolValue(false)),
                            }],
                        })),
                    }),
                    ..Default::default()
                },
            ],
            status: Some(Status::default()),
            ..Default::default()
        };
        let v = span(&s);
        assert_eq!(v["traceId"], "W47/95gDgQPSabYzgT/HAA==");
        assert_eq!(v["spanId"], "7uGbfsPBsQA=");
        assert_eq!(v["kind"], "SPAN_KIND_SERVER");
        assert_eq!(v["startTimeUnixNano"], "1689969302000000000");
        assert_eq!(v["attributes"][0]["value"]["intValue"], "200");
        assert_eq!(
            v["attributes"][1]["value"]["arrayValue"]["values"][0]["boolValue"],
            false
        );
        assert_eq!(v["status"], json!({}));
        assert!(
            v.get("parentSpanId").is_none()
                && v.get("events").is_none()
                && v.get("flags").is_none()
        );
        let err = Status {
            code: status::StatusCode::Error as i32,
            message: "boom".into(),
        };
        assert_eq!(
            status(&err),
            json!({"message": "boom", "code": "STATUS_CODE_ERROR"})
        );
        let empty = pb::Trace::default();
        assert_eq!(trace_v1(&empty), json!({}));
        let v2 = pb::TraceByIdResponse {
            trace: Some(empty),
            ..Default::default()
        };
        assert_eq!(trace_by_id_response(&v2), json!({"trace": {}}));
    }
}
