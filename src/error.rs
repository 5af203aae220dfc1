//! The one error type of the HTTP API, mapped once to a status code and a plain-text body
//! (Tempo's style: the message is the body, no envelope). Handlers and middleware return it;
//! nothing else builds error responses.

use crate::store::StoreError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: a bad parameter, TraceQL query or JSON body.
    #[error("{0}")]
    BadRequest(String),
    /// 401: credentials missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the organisation is not on the allow-list.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such trace, route or organisation.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not for this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 413: the request body is larger than `limits.max_body_bytes`.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 422: the trace is larger than the v1 route may return.
    #[error("{0}")]
    TraceTooLarge(String),
    /// 429: no store slot became free within `limits.queue_timeout_ms`.
    #[error("{0}")]
    Overloaded(String),
    /// 501: a TraceQL construct this service does not run.
    #[error("{0}")]
    NotImplemented(String),
    /// 503: the store cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// 504: the request or a store query ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// 500: a fault of this service (never caused by user input).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            StoreError::Timeout(_) => ApiError::Timeout(e.to_string()),
            StoreError::Invalid(m) => ApiError::BadRequest(m),
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Overloaded(_) => ApiError::Overloaded(e.to_string()),
            StoreError::Query(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::query::trace::ServiceError> for ApiError {
    fn from(e: crate::query::trace::ServiceError) -> Self {
        match e {
            crate::query::trace::ServiceError::Store(s) => s.into(),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TraceTooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut resp = HttpResponse::build(status);
        if let ApiError::Unauthorized(_) = self {
            resp.insert_header(("www-authenticate", "Bearer, Basic realm=\"deepflow-tempo\""));
        }
        resp.content_type("text/plain; charset=utf-8")
            .body(format!("{self}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_status_and_a_plain_text_body() {
        let cases = [
            (ApiError::BadRequest("b".into()), 400),
            (ApiError::Unauthorized("u".into()), 401),
            (ApiError::Forbidden("f".into()), 403),
            (ApiError::NotFound("n".into()), 404),
            (ApiError::MethodNotAllowed("m".into()), 405),
            (ApiError::PayloadTooLarge("p".into()), 413),
            (ApiError::TraceTooLarge("t".into()), 422),
            (ApiError::Overloaded("o".into()), 429),
            (ApiError::NotImplemented("i".into()), 501),
            (ApiError::Unavailable("a".into()), 503),
            (ApiError::Timeout("t".into()), 504),
            (ApiError::Internal("x".into()), 500),
        ];
        for (e, code) in cases {
            let resp = e.error_response();
            assert_eq!(resp.status().as_u16(), code, "{e:?}");
            assert_eq!(
                resp.headers().get("content-type").unwrap(),
                "text/plain; charset=utf-8"
            );
        }
    }
}
