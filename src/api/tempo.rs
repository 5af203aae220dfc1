//! Tempo's trace-by-ID routes: `GET /api/traces/{id}` (v1) and `GET /api/v2/traces/{id}`.
//!
//! Parse the ID and range, ask the service, negotiate protobuf or JSON by `Accept`, map "not
//! found" to 404 and partial traces to v2 `PARTIAL` / v1 422, and say in `Server-Timing` how
//! the time went.

use super::{negotiate, org_of, with_server_timing, AppState};
use crate::error::ApiError;
use crate::query::trace::TempoTrace;
use crate::tempo::ids::TraceId;
use crate::tempo::{json, pb};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::get("/api/traces/{id}", trace_v1))
        .service(super::get("/api/v2/traces/{id}", trace_v2));
}

/// Optional unix-second bounds, as Tempo parses them.
#[derive(Debug, Deserialize)]
pub struct RangeParams {
    start: Option<String>,
    end: Option<String>,
}

fn parse_seconds(name: &str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse::<i64>().map(Some).map_err(|_| {
            ApiError::BadRequest(format!("invalid {name}: {s:?} is not unix seconds"))
        }),
    }
}

/// `start`/`end`: both optional (0 = unset); a missing `end` is the last second a row can
/// have. A range is never empty: `end` must be after `start`, whichever was given.
pub fn parse_range(p: &RangeParams) -> Result<Option<(i64, i64)>, ApiError> {
    let start = parse_seconds("start", &p.start)?.unwrap_or(0);
    let end = parse_seconds("end", &p.end)?.unwrap_or(0);
    if (start, end) == (0, 0) {
        return Ok(None);
    }
    let end = if end == 0 { i64::from(u32::MAX) } else { end };
    if end <= start {
        return Err(ApiError::BadRequest(format!(
            "http parameter start must be before end. received start={start} end={end}"
        )));
    }
    Ok(Some((start, end)))
}

/// The trace, and whether it came from the cache.
async fn lookup(
    req: &HttpRequest,
    state: &AppState,
    id: &str,
    range: &RangeParams,
) -> Result<Option<(Arc<TempoTrace>, bool)>, ApiError> {
    let trace_id = TraceId::parse(id).map_err(ApiError::BadRequest)?;
    let range = parse_range(range)?;
    let org = org_of(req)?;
    Ok(state.tempo.lookup(org, trace_id, range).await?)
}

/// Encode the answer with `encode` and add the `Server-Timing` header: the phases of the
/// request that built the trace (its encoding plus this response's), or for a cached trace
/// `cache;desc=hit` and this response's encoding.
fn timed(t: &TempoTrace, cached: bool, encode: impl FnOnce() -> HttpResponse) -> HttpResponse {
    let started = Instant::now();
    let resp = encode();
    let encode_us = started.elapsed().as_micros() as u64;
    let value = if cached {
        format!(
            "cache;desc=hit, encode;dur={:.3}",
            encode_us as f64 / 1000.0
        )
    } else {
        let mut timing = t.timing;
        timing.encode_us += encode_us;
        format!("{}, cache;desc=miss", timing.server_timing())
    };
    with_server_timing(resp, &value)
}

async fn trace_v1(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    range: web::Query<RangeParams>,
) -> Result<HttpResponse, ApiError> {
    let Some((t, cached)) = lookup(&req, &state, &id, &range).await? else {
        return Ok(HttpResponse::NotFound().finish());
    };
    if let Some(why) = &t.partial {
        return Err(ApiError::TraceTooLarge(format!(
            "trace exceeds max size: {why}"
        )));
    }
    Ok(timed(&t, cached, || {
        negotiate(&req, &t.trace, || json::trace_v1(&t.trace).to_string())
    }))
}

async fn trace_v2(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
    range: web::Query<RangeParams>,
) -> Result<HttpResponse, ApiError> {
    let Some((t, cached)) = lookup(&req, &state, &id, &range).await? else {
        return Ok(HttpResponse::NotFound().finish());
    };
    Ok(timed(&t, cached, || {
        let resp = v2_response(&t);
        negotiate(&req, &resp, || {
            json::trace_by_id_response(&resp).to_string()
        })
    }))
}

fn v2_response(t: &TempoTrace) -> pb::TraceByIdResponse {
    pb::TraceByIdResponse {
        trace: Some(t.trace.clone()),
        metrics: Some(pb::TraceByIdMetrics {
            inspected_bytes: t.size as u64,
        }),
        status: if t.partial.is_some() {
            pb::PartialStatus::Partial
        } else {
            pb::PartialStatus::Complete
        } as i32,
        message: t.partial.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(start: Option<&str>, end: Option<&str>) -> RangeParams {
        RangeParams {
            start: start.map(Into::into),
            end: end.map(Into::into),
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(&rp(None, None)).unwrap(), None);
        assert_eq!(
            parse_range(&rp(Some("10"), Some("20"))).unwrap(),
            Some((10, 20))
        );
        assert!(parse_range(&rp(Some("20"), Some("20"))).is_err());
        assert!(parse_range(&rp(Some("x"), None)).is_err());
        assert_eq!(parse_range(&rp(Some("0"), Some("0"))).unwrap(), None);
        assert_eq!(
            parse_range(&rp(Some("10"), None)).unwrap(),
            Some((10, u32::MAX as i64))
        );
        // Never an empty range: a start past the last second, or an end before 0 alone.
        assert!(parse_range(&rp(Some("16000000000"), None)).is_err());
        assert!(parse_range(&rp(None, Some("-5"))).is_err());
        assert_eq!(parse_range(&rp(None, Some("5"))).unwrap(), Some((0, 5)));
    }
}
