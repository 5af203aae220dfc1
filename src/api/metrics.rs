//! TraceQL metrics routes: `GET /api/metrics/query_range` and `GET /api/metrics/query`.
//! Parses Tempo's parameters, calls `query::metrics`, encodes jsonpb JSON or protobuf. Owns no
//! query logic and no SQL.

use super::{negotiate, org_of, AppState};
use crate::error::ApiError;
use crate::query::metrics::{self, LabelValue, MetricsError, MetricsRequest};
use crate::tempo::pb;
use crate::traceql;
use actix_web::{web, HttpRequest, HttpResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use serde_json::{json, Value};
use std::collections::HashMap;

type Params = web::Query<HashMap<String, String>>;

/// Default `since` when neither `start` nor `since` is given (Tempo's: one hour).
const DEFAULT_SINCE_NS: i64 = 3_600_000_000_000;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::get("/api/metrics/query_range", query_range))
        .service(super::get("/api/metrics/query", query_instant));
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// A timestamp as Tempo accepts it: unix seconds (up to 10 digits), unix nanoseconds (more
/// digits), fractional seconds, or RFC3339.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let v: i64 = s.parse().ok()?;
        return if s.len() <= 10 {
            v.checked_mul(1_000_000_000)
        } else {
            Some(v)
        };
    }
    if let Ok(f) = s.parse::<f64>() {
        return (0.0..1e10).contains(&f).then(|| (f * 1e9).round() as i64);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// A step as float seconds or a Go duration.
fn parse_step(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(f) = s.parse::<f64>() {
        return (f.is_finite() && f > 0.0 && f < 1e10).then(|| (f * 1e9).round() as i64);
    }
    traceql::duration::parse_duration(s).filter(|&ns| ns > 0)
}

fn request(p: &HashMap<String, String>, with_step: bool) -> Result<MetricsRequest, ApiError> {
    let get = |k: &str| p.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let text = get("q")
        .or_else(|| get("query"))
        .ok_or_else(|| ApiError::BadRequest("invalid request: missing query parameter q".into()))?;
    let ts = |k: &str| -> Result<Option<i64>, ApiError> {
        get(k)
            .map(|s| {
                parse_timestamp(s)
                    .ok_or_else(|| ApiError::BadRequest(format!("invalid {k}: {s:?}")))
            })
            .transpose()
    };
    let end_ns = ts("end")?.unwrap_or_else(now_ns);
    let start_ns = match ts("start")? {
        Some(s) => s,
        None => {
            let since = match get("since") {
                Some(s) => traceql::duration::parse_duration(s)
                    .filter(|&ns| ns > 0)
                    .ok_or_else(|| ApiError::BadRequest(format!("invalid since: {s:?}")))?,
                None => DEFAULT_SINCE_NS,
            };
            end_ns - since
        }
    };
    if end_ns <= start_ns {
        return Err(ApiError::BadRequest(format!(
            "invalid start and end: start ({start_ns}) must be before end ({end_ns})"
        )));
    }
    let step_ns = match get("step").filter(|_| with_step) {
        Some(s) => {
            parse_step(s).ok_or_else(|| ApiError::BadRequest(format!("invalid step: {s:?}")))?
        }
        None => metrics::default_step_ns(start_ns, end_ns),
    };
    let exemplars = match get("exemplars") {
        Some(e) => e
            .parse::<u32>()
            .map_err(|_| ApiError::BadRequest(format!("invalid exemplars: {e:?}")))?
            .min(metrics::MAX_EXEMPLARS as u32) as usize,
        None => metrics::DEFAULT_EXEMPLARS,
    };
    let max_series = match get("maxSeries") {
        Some(m) => m
            .parse::<usize>()
            .ok()
            .filter(|&m| m > 0)
            .ok_or_else(|| ApiError::BadRequest(format!("invalid maxSeries: {m:?}")))?
            .min(metrics::DEFAULT_MAX_SERIES),
        None => metrics::DEFAULT_MAX_SERIES,
    };
    let query = traceql::parse(text).map_err(|e| {
        if e.is_unsupported() {
            ApiError::NotImplemented(format!("{e}"))
        } else {
            ApiError::BadRequest(format!("invalid TraceQL query: {e}"))
        }
    })?;
    Ok(MetricsRequest {
        query,
        start_ns,
        end_ns,
        step_ns,
        max_series,
        exemplars: if with_step { exemplars } else { 0 },
    })
}

fn api_error(e: MetricsError) -> ApiError {
    match e {
        MetricsError::NotSupported(_) => ApiError::NotImplemented(e.to_string()),
        MetricsError::BadQuery(m) => ApiError::BadRequest(m),
        MetricsError::TooManySeries(_) => ApiError::TraceTooLarge(e.to_string()),
        MetricsError::Store(s) => s.into(),
    }
}

fn labels(ls: &[(String, LabelValue)]) -> Vec<KeyValue> {
    ls.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(AnyValue {
                value: match v {
                    LabelValue::Str(s) => Some(any_value::Value::StringValue(s.clone())),
                    LabelValue::Int(i) => Some(any_value::Value::IntValue(*i)),
                    LabelValue::Float(f) => Some(any_value::Value::DoubleValue(*f)),
                    // nil: an empty value, as Tempo writes `compare()`'s totals.
                    LabelValue::Nil => None,
                },
            }),
            ..Default::default()
        })
        .collect()
}

fn kvs(ls: &[KeyValue]) -> Value {
    Value::Array(ls.iter().map(crate::tempo::json::key_value).collect())
}

fn number(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("NaN")
    } else if v > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

/// jsonpb of a range answer (`promLabels` is never emitted).
pub fn range_json(r: &pb::QueryRangeResponse) -> Value {
    let series: Vec<Value> = r
        .series
        .iter()
        .map(|s| {
            let samples: Vec<Value> = s
                .samples
                .iter()
                .map(|x| json!({"timestampMs": x.timestamp_ms.to_string(), "value": number(x.value)}))
                .collect();
            let mut v = json!({"labels": kvs(&s.labels), "samples": samples});
            if !s.exemplars.is_empty() {
                v["exemplars"] = s
                    .exemplars
                    .iter()
                    .map(|e| {
                        json!({
                            "labels": kvs(&e.labels),
                            "value": number(e.value),
                            "timestampMs": e.timestamp_ms.to_string(),
                        })
                    })
                    .collect();
            }
            v
        })
        .collect();
    with_status(
        json!({"series": series, "metrics": {}}),
        r.status,
        &r.message,
    )
}

/// Tempo's `status` (`PARTIAL`) and `message` when an answer is incomplete.
fn with_status(mut v: Value, status: i32, message: &str) -> Value {
    if status != 0 {
        v["status"] = json!("PARTIAL");
        v["message"] = json!(message);
    }
    v
}

/// jsonpb of an instant answer.
pub fn instant_json(r: &pb::QueryInstantResponse) -> Value {
    let series: Vec<Value> = r
        .series
        .iter()
        .map(|s| json!({"labels": kvs(&s.labels), "value": number(s.value)}))
        .collect();
    with_status(
        json!({"series": series, "metrics": {}}),
        r.status,
        &r.message,
    )
}

/// What queries over assembled traces use: the trace service, the search budget and a
/// deadline a fifth of the request's time before its 504.
fn tracing_of(state: &AppState) -> metrics::Tracing<'_> {
    let budget = std::time::Duration::from_secs(state.limits.request_timeout) * 4 / 5;
    metrics::Tracing {
        tracer: &state.tempo.tracer,
        search: &state.search,
        seed_window_s: state.tempo.cfg.zero_code_window as i64,
        deadline: Some(std::time::Instant::now() + budget),
    }
}

async fn query_range(
    req: HttpRequest,
    state: web::Data<AppState>,
    p: Params,
) -> Result<HttpResponse, ApiError> {
    let mreq = request(&p, true)?;
    let org = org_of(&req)?;
    let tracing = tracing_of(&state);
    let answer = metrics::query_range(state.store.as_ref(), Some(&tracing), org, &mreq)
        .await
        .map_err(api_error)?;
    let resp = pb::QueryRangeResponse {
        series: answer
            .series
            .iter()
            .map(|s| pb::TimeSeries {
                labels: labels(&s.labels),
                samples: s
                    .samples
                    .iter()
                    .map(|&(t, v)| pb::Sample {
                        value: v,
                        timestamp_ms: t,
                    })
                    .collect(),
                prom_labels: String::new(),
                exemplars: s
                    .exemplars
                    .iter()
                    .map(|e| pb::Exemplar {
                        labels: vec![crate::span::kv_str("trace:id", e.trace_id.clone())],
                        value: e.value,
                        timestamp_ms: e.timestamp_ms,
                    })
                    .collect(),
            })
            .collect(),
        metrics: Some(pb::SearchMetrics::default()),
        status: i32::from(answer.partial.is_some()),
        message: answer.partial.unwrap_or_default(),
    };
    Ok(negotiate(&req, &resp, || range_json(&resp).to_string()))
}

async fn query_instant(
    req: HttpRequest,
    state: web::Data<AppState>,
    p: Params,
) -> Result<HttpResponse, ApiError> {
    let mreq = request(&p, false)?;
    let org = org_of(&req)?;
    let tracing = tracing_of(&state);
    let answer = metrics::query_instant(state.store.as_ref(), Some(&tracing), org, &mreq)
        .await
        .map_err(api_error)?;
    let resp = pb::QueryInstantResponse {
        series: answer
            .series
            .iter()
            .map(|(l, v)| pb::InstantSeries {
                labels: labels(l),
                value: *v,
                prom_labels: String::new(),
            })
            .collect(),
        metrics: Some(pb::SearchMetrics::default()),
        status: i32::from(answer.partial.is_some()),
        message: answer.partial.unwrap_or_default(),
    };
    Ok(negotiate(&req, &resp, || instant_json(&resp).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_form_tempo_accepts() {
        assert_eq!(
            parse_timestamp("1700000000"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(
            parse_timestamp("1700000000123456789"),
            Some(1_700_000_000_123_456_789)
        );
        assert_eq!(
            parse_timestamp("1700000000.5"),
            Some(1_700_000_000_500_000_000)
        );
        assert_eq!(
            parse_timestamp("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000_000_000)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("-5"), None);
    }

    #[test]
    fn steps_as_seconds_or_go_durations() {
        assert_eq!(parse_step("15"), Some(15_000_000_000));
        assert_eq!(parse_step("0.5"), Some(500_000_000));
        assert_eq!(parse_step("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_step("0"), None);
        assert_eq!(parse_step("soon"), None);
    }

    #[test]
    fn default_step_gives_about_240_samples() {
        let h = 3_600_000_000_000;
        assert_eq!(metrics::default_step_ns(0, h), 15_000_000_000);
        assert_eq!(metrics::default_step_ns(0, 24 * h), 360_000_000_000);
        assert_eq!(metrics::default_step_ns(0, 60_000_000_000), 250_000_000);
        assert_eq!(metrics::default_step_ns(0, 1_000_000_000), 50_000_000);
    }
}
