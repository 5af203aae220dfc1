//! Per-request observability middleware: the request id (`X-Request-Id`, taken from the client
//! when sane, else generated, and always returned), the `tracing` span every request runs in
//! (request id, method, route pattern, organisation), one structured log line per request, and
//! the HTTP metrics. Owns no other behaviour: it must not reject, rewrite or delay a request.

use super::resolve_org;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;
use tracing::Instrument;

/// The request id header (read and written).
pub const REQUEST_ID: &str = "x-request-id";

/// Longest client request id kept; longer ones are replaced by a generated id.
const MAX_REQUEST_ID: usize = 128;

/// The request's id, in the request's extensions for handlers that want it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The route label of a request: its matched route pattern (bounded, unlike the path), or
/// `unmatched`.
pub fn route_of(req: &HttpRequest) -> String {
    req.match_pattern()
        .unwrap_or_else(|| "unmatched".to_string())
}

/// The client's request id when it is short and printable (visible ASCII, no spaces).
fn incoming_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(REQUEST_ID)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| v.to_string())
}

/// A fresh request id: 32 hex digits, unique within the process and unpredictable across
/// processes (a per-process random key over a counter).
fn new_id() -> String {
    static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = KEY.get_or_init(Default::default);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016x}{:016x}",
        key.hash_one((n, 0u8)),
        key.hash_one((n, 1u8))
    )
}

/// Outermost middleware: request id, span, log line.
///
/// Inner middleware should answer refusals with a response (as `auth` does), not an `Err`:
/// an `Err` is still logged here, but actix turns it into a response only after this layer,
/// so it carries no `X-Request-Id`.
pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = incoming_id(req.headers()).unwrap_or_else(new_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    // No clone of the request may outlive this block: routing needs it unshared.
    let span = {
        let http = req.request();
        let org = resolve_org(http)
            .map(|o| o.0.to_string())
            .unwrap_or_else(|_| "invalid".into());
        tracing::info_span!(
            "request",
            request_id = %id,
            method = %http.method(),
            route = %route_of(http),
            org = %org,
        )
    };
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1000.0;
    let status = match &result {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    span.in_scope(|| tracing::info!(status = status.as_u16(), latency_ms, "request served"));
    let mut res = result?;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), v);
    }
    Ok(res)
}

/// HTTP metrics: requests by route pattern, method and status, and their latency.
pub async fn http_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let route = route_of(req.request());
    let method = req.method().clone();
    let started = Instant::now();
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    crate::metrics::metrics().http_request(
        &route,
        method.as_str(),
        status.as_u16(),
        started.elapsed(),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_static(REQUEST_ID),
            HeaderValue::from_str(v).unwrap(),
        );
        h
    }

    #[test]
    fn client_ids_are_kept_only_when_short_and_printable() {
        assert_eq!(incoming_id(&headers("abc-123")).as_deref(), Some("abc-123"));
        assert_eq!(incoming_id(&HeaderMap::new()), None);
        assert_eq!(incoming_id(&headers("")), None);
        assert_eq!(incoming_id(&headers("has space")), None);
        assert_eq!(incoming_id(&headers(&"x".repeat(129))), None);
        assert!(incoming_id(&headers(&"x".repeat(128))).is_some());
    }

    #[test]
    fn generated_ids_differ() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
