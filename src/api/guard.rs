//! Request guards of the HTTP API: the request deadline (`limits.request_timeout` → 504, the
//! handler and its store queries are dropped: [`deadline`]), the extractor limits and their
//! errors (`limits.max_body_bytes` → 413, a bad query string, path or JSON body → 400), and
//! the plain-text answers for what the framework rejects before any handler runs (unknown
//! route 404, wrong method 405: [`rejections`]).
//!
//! Everything it answers is an [`ApiError`], as an ordinary response (never a service error),
//! so the middlewares outside it (auth, metrics, request ids) see its 504s, 404s and 405s like
//! any other answer. It must not look into routes' parameters, touch the store, or
//! authenticate.
//!
//! Cancellation: when the deadline passes, the inner service future (extractors, handler,
//! store reads) is dropped; dropping a store read cancels it (see `store::clickhouse`). A
//! client that disconnects cancels its request the same way, because the server does not
//! allow HTTP/1 half-closed connections ([`ALLOW_HALF_CLOSED`]).

use crate::config::LimitsConfig;
use crate::error::ApiError;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PayloadError};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use std::time::Duration;

/// The server's `h1_allow_half_closed`. By default actix-web keeps running a handler whose
/// HTTP/1 client has closed its side of the connection (it reads the close as a half-close and
/// still means to answer); refusing half-closed connections makes the server drop the
/// connection, and with it the handler's future, as soon as it reads the client's EOF. No
/// client of this API half-closes to wait for an answer.
pub const ALLOW_HALF_CLOSED: bool = false;

/// The request deadline, extractor limits and error handlers, and the plain-text 404 for
/// unknown routes.
pub fn configure(cfg: &mut web::ServiceConfig, limits: &LimitsConfig) {
    let max = limits.max_body_bytes;
    cfg.app_data(RequestTimeout(Duration::from_secs(limits.request_timeout)))
        .app_data(web::PayloadConfig::new(max))
        .app_data(
            web::JsonConfig::default()
                .limit(max)
                .error_handler(move |e, _| json_error(e, max).into()),
        )
        .app_data(web::QueryConfig::default().error_handler(|e, _| {
            ApiError::BadRequest(format!("invalid query string: {e}")).into()
        }))
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| ApiError::BadRequest(format!("invalid path: {e}")).into()),
        )
        .default_service(web::to(unknown_route));
}

fn json_error(e: JsonPayloadError, max: usize) -> ApiError {
    match e {
        JsonPayloadError::OverflowKnownLength { .. }
        | JsonPayloadError::Overflow { .. }
        | JsonPayloadError::Payload(PayloadError::Overflow) => too_large(max),
        other => ApiError::BadRequest(format!("invalid json body: {other}")),
    }
}

/// The 413 of a body over `limits.max_body_bytes`.
pub fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "request body is larger than {limit} bytes (limits.max_body_bytes)"
    ))
}

/// Longest part of a request path quoted back in a 404.
const SHOWN_PATH: usize = 200;

async fn unknown_route(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = req.path();
    let mut end = path.len().min(SHOWN_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < path.len() { "…" } else { "" };
    Err(ApiError::NotFound(format!(
        "no route for {} {}{more}",
        req.method(),
        &path[..end]
    )))
}

/// The request deadline ([`configure`] sets it from `limits.request_timeout`).
#[derive(Debug, Clone, Copy)]
struct RequestTimeout(Duration);

/// Route middleware (`from_fn`): the request deadline. It wraps each route rather than the
/// app because it must answer with the request, and actix-web's router needs the request to
/// itself until routing is done; every API route gets it through `api::get` / `api::post`.
pub async fn deadline(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let timeout = req
        .app_data::<RequestTimeout>()
        .map(|t| t.0)
        .unwrap_or_else(|| Duration::from_secs(LimitsConfig::default().request_timeout));
    // Routing is done: the request may be shared now.
    let http = req.request().clone();
    match tokio::time::timeout(timeout, next.call(req)).await {
        Ok(res) => Ok(res?.map_into_boxed_body()),
        Err(_) => {
            // The handler's future is dropped here: the handler and its store reads stop.
            tracing::info!(
                method = %http.method(),
                path = http.path(),
                timeout_s = timeout.as_secs(),
                "request timed out; its store queries are cancelled"
            );
            let err = ApiError::Timeout(format!(
                "request took longer than {} s (limits.request_timeout); its store \
                 queries were cancelled",
                timeout.as_secs()
            ));
            Ok(ServiceResponse::new(http, err.error_response()))
        }
    }
}

/// App middleware (`from_fn`): what the framework answers on its own, in [`ApiError`]'s plain
/// text.
pub async fn rejections(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    Ok(plain_rejections(next.call(req).await?))
}

/// Rewrite what the framework answered on its own into [`ApiError`]'s plain text: a bodyless
/// 405 (wrong method for a route), and extractor errors that have no handler of ours.
fn plain_rejections<B: MessageBody + 'static>(res: ServiceResponse<B>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    if status == StatusCode::METHOD_NOT_ALLOWED && res.response().error().is_none() {
        let allow = res.headers().get(header::ALLOW).cloned();
        let (req, _) = res.into_parts();
        let allowed = allow
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|v| format!("; allowed: {v}"))
            .unwrap_or_default();
        let err = ApiError::MethodNotAllowed(format!(
            "method {} is not allowed on {}{allowed}",
            req.method(),
            req.path()
        ));
        let mut resp = err.error_response();
        if let Some(v) = allow {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        return ServiceResponse::new(req, resp);
    }
    let foreign = res
        .response()
        .error()
        .filter(|e| e.as_error::<ApiError>().is_none())
        .map(|e| e.to_string());
    let replacement = foreign.and_then(|msg| match status {
        StatusCode::BAD_REQUEST => Some(ApiError::BadRequest(msg)),
        StatusCode::NOT_FOUND => Some(ApiError::NotFound(msg)),
        StatusCode::PAYLOAD_TOO_LARGE => Some(ApiError::PayloadTooLarge(msg)),
        _ => None,
    });
    match replacement {
        Some(err) => {
            let (req, _) = res.into_parts();
            ServiceResponse::new(req, err.error_response())
        }
        None => res.map_into_boxed_body(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};

    fn limits(max_body_bytes: usize) -> LimitsConfig {
        LimitsConfig {
            request_timeout: 1,
            max_body_bytes,
            ..LimitsConfig::default()
        }
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        n: u32,
    }

    async fn bytes(b: web::Bytes) -> HttpResponse {
        HttpResponse::Ok().body(b)
    }

    async fn json(_: web::Json<Body>) -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    async fn slow() -> HttpResponse {
        tokio::time::sleep(Duration::from_secs(60)).await;
        HttpResponse::Ok().finish()
    }

    async fn call(req: test::TestRequest) -> (u16, String, String) {
        let l = limits(16);
        let app = test::init_service(
            App::new()
                .configure(|c| configure(c, &l))
                .wrap(actix_web::middleware::from_fn(rejections))
                .service(crate::api::post("/bytes", bytes))
                .service(crate::api::post("/json", json))
                .service(crate::api::get("/slow", slow)),
        )
        .await;
        let resp = test::call_service(&app, req.to_request()).await;
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = String::from_utf8(test::read_body(resp).await.to_vec()).unwrap();
        (status, ctype, body)
    }

    #[actix_web::test]
    async fn framework_rejections_are_plain_text_api_errors() {
        let plain = "text/plain; charset=utf-8";
        let (s, ct, body) = call(test::TestRequest::get().uri("/nowhere")).await;
        assert_eq!((s, ct.as_str()), (404, plain));
        assert!(body.contains("no route for GET /nowhere"), "{body}");

        let (s, ct, body) = call(test::TestRequest::get().uri("/json")).await;
        assert_eq!((s, ct.as_str()), (405, plain));
        assert!(
            body.contains("method GET is not allowed on /json; allowed: POST"),
            "{body}"
        );

        let big = "x".repeat(17);
        let (s, ct, body) = call(test::TestRequest::post().uri("/bytes").set_payload(big)).await;
        assert_eq!((s, ct.as_str()), (413, plain), "{body}");

        let (s, ct, body) = call(
            test::TestRequest::post()
                .uri("/json")
                .insert_header(("content-type", "application/json"))
                .set_payload(r#"{"n": 1, "pad": "xxxxxxxxxxxx"}"#),
        )
        .await;
        assert_eq!((s, ct.as_str()), (413, plain));
        assert!(body.contains("limits.max_body_bytes"), "{body}");

        let (s, ct, body) = call(
            test::TestRequest::post()
                .uri("/json")
                .insert_header(("content-type", "application/json"))
                .set_payload(r#"{"n": "x"}"#),
        )
        .await;
        assert_eq!((s, ct.as_str()), (400, plain));
        assert!(body.contains("invalid json body"), "{body}");

        let (s, _, body) = call(test::TestRequest::post().uri("/bytes").set_payload("small")).await;
        assert_eq!((s, body.as_str()), (200, "small"));
    }

    #[actix_web::test]
    async fn a_request_over_the_deadline_is_a_plain_text_504() {
        let (s, ct, body) = call(test::TestRequest::get().uri("/slow")).await;
        assert_eq!((s, ct.as_str()), (504, "text/plain; charset=utf-8"));
        assert!(body.contains("limits.request_timeout"), "{body}");
    }
}
