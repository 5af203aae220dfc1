//! Credentials: when `auth.token` and/or `auth.user` are set, every request must carry
//! `Authorization: Bearer <token>` or `Authorization: Basic <user:password>` (either, when both
//! are configured); otherwise it is answered 401. `/ready` and `/metrics` stay open while
//! `auth.open_ready` / `auth.open_metrics` say so. Secrets are compared in constant time.
//!
//! Owns only the yes/no decision; it must not look at organisations (that is `org_of`'s
//! allow-list) and never logs a credential.

use super::AppState;
use crate::config::AuthConfig;
use crate::error::ApiError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};
use base64::Engine;
use subtle::ConstantTimeEq;

/// Why a request is refused (the 401 body).
fn refused(auth: &AuthConfig, what: &str) -> ApiError {
    let expected = match (!auth.token.is_empty(), !auth.user.is_empty()) {
        (true, true) => "Authorization: Bearer <token> or Basic <user:password>",
        (true, false) => "Authorization: Bearer <token>",
        _ => "Authorization: Basic <user:password>",
    };
    ApiError::Unauthorized(format!("{what}: this server requires {expected}"))
}

fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// Whether a request for `path` with this `Authorization` header value may proceed.
pub fn check(auth: &AuthConfig, path: &str, authorization: Option<&[u8]>) -> Result<(), ApiError> {
    if !auth.enabled()
        || (path == "/ready" && auth.open_ready)
        || (path == "/metrics" && auth.open_metrics)
    {
        return Ok(());
    }
    let Some(value) = authorization else {
        return Err(refused(auth, "missing credentials"));
    };
    let value = value.trim_ascii();
    let (scheme, credentials) = match value.iter().position(|&b| b == b' ') {
        Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
        None => (value, &b""[..]),
    };
    let ok = if scheme.eq_ignore_ascii_case(b"bearer") && !auth.token.is_empty() {
        same(credentials, auth.token.as_bytes())
    } else if scheme.eq_ignore_ascii_case(b"basic") && !auth.user.is_empty() {
        match base64::engine::general_purpose::STANDARD.decode(credentials) {
            Ok(decoded) => {
                let (user, password) = match decoded.iter().position(|&b| b == b':') {
                    Some(i) => (&decoded[..i], &decoded[i + 1..]),
                    None => (&decoded[..], &b""[..]),
                };
                // Both compared whatever the first says: no early exit on the user.
                let user_ok = user.ct_eq(auth.user.as_bytes());
                let password_ok = password.ct_eq(auth.password.as_bytes());
                bool::from(user_ok & password_ok)
            }
            Err(_) => false,
        }
    } else {
        return Err(refused(auth, "unsupported authorization scheme"));
    };
    if ok {
        Ok(())
    } else {
        Err(refused(auth, "invalid credentials"))
    }
}

/// The middleware: 401 before the handler when [`check`] says no.
pub async fn require_credentials(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let verdict = match req.app_data::<web::Data<AppState>>() {
        Some(state) => check(
            &state.auth,
            req.path(),
            req.headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        ),
        None => Ok(()),
    };
    match verdict {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(e) => {
            tracing::debug!(reason = %e, "request refused");
            Ok(req.into_response(e.error_response()).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: &str, user: &str, password: &str) -> AuthConfig {
        AuthConfig {
            token: token.into(),
            user: user.into(),
            password: password.into(),
            open_ready: true,
            open_metrics: true,
        }
    }

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    fn ok(c: &AuthConfig, path: &str, h: Option<&str>) -> bool {
        check(c, path, h.map(str::as_bytes)).is_ok()
    }

    #[test]
    fn off_when_nothing_is_configured() {
        assert!(ok(&cfg("", "", ""), "/api/search", None));
        assert!(ok(&cfg("", "", ""), "/api/search", Some("Bearer x")));
    }

    #[test]
    fn bearer_token() {
        let c = cfg("s3cret", "", "");
        assert!(ok(&c, "/api/search", Some("Bearer s3cret")));
        assert!(ok(&c, "/api/search", Some("bearer  s3cret ")));
        assert!(!ok(&c, "/api/search", Some("Bearer s3cre")));
        assert!(!ok(&c, "/api/search", Some("Bearer s3cret2")));
        assert!(!ok(&c, "/api/search", Some("Bearer")));
        assert!(!ok(&c, "/api/search", None));
        // Basic is not configured: refused even with the token as password.
        assert!(!ok(&c, "/api/search", Some(&basic("x:s3cret"))));
    }

    #[test]
    fn basic_credentials() {
        let c = cfg("", "grafana", "pa:ss");
        assert!(ok(&c, "/api/echo", Some(&basic("grafana:pa:ss"))));
        assert!(!ok(&c, "/api/echo", Some(&basic("grafana:pa"))));
        assert!(!ok(&c, "/api/echo", Some(&basic("other:pa:ss"))));
        assert!(!ok(&c, "/api/echo", Some(&basic("grafana"))));
        assert!(!ok(&c, "/api/echo", Some("Basic !!not-base64!!")));
        assert!(!ok(&c, "/api/echo", Some("Bearer pa:ss")));
    }

    #[test]
    fn either_when_both_are_configured() {
        let c = cfg("tok", "u", "p");
        assert!(ok(&c, "/api/search", Some("Bearer tok")));
        assert!(ok(&c, "/api/search", Some(&basic("u:p"))));
        assert!(!ok(&c, "/api/search", Some("Bearer p")));
        assert!(!ok(&c, "/api/search", Some(&basic("u:tok"))));
    }

    #[test]
    fn open_paths_follow_their_switches() {
        let mut c = cfg("tok", "", "");
        assert!(ok(&c, "/ready", None));
        assert!(ok(&c, "/metrics", None));
        assert!(!ok(&c, "/api/echo", None));
        assert!(!ok(&c, "/ready/", None));
        c.open_ready = false;
        c.open_metrics = false;
        assert!(!ok(&c, "/ready", None));
        assert!(!ok(&c, "/metrics", None));
        assert!(ok(&c, "/metrics", Some("Bearer tok")));
    }

    #[test]
    fn refusals_are_401_with_a_challenge() {
        let e = check(&cfg("tok", "", ""), "/api/search", None).unwrap_err();
        let resp = e.error_response();
        assert_eq!(resp.status().as_u16(), 401);
        assert!(resp.headers().contains_key("www-authenticate"));
        assert!(e.to_string().contains("missing credentials"), "{e}");
    }
}
