//! How the HTTP door speaks: replies and errors as status codes and JSON
//! bodies, bytes that are not UTF-8 as base64, keys as percent-encoded path
//! segments, and HTTP Basic credentials.
//!
//! Errors keep the other doors' meaning: a write whose outcome is unknown
//! (`Indeterminate`, `NotEnoughReplicas`) is a 503 whose body says it may or
//! may not have happened; `Unavailable` is a 503 with `Retry-After`; a bad
//! request is a 400 with the reason.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use semikv_protocol::{ErrorReply, LogIndex};
use serde_json::{json, Map, Value};

/// The header every answer that carries a log position has: what a later
/// request passes back (`?after=N`) to read at least that much.
pub const INDEX_HEADER: &str = "x-semikv-index";

/// Adds the field `name` (UTF-8 bytes as a string) or `name_base64` (any
/// other bytes, standard base64 with padding) to `object`.
pub fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object.insert(name.to_string(), Value::String(text.to_string())),
        Err(_) => object.insert(
            format!("{name}_base64"),
            Value::String(BASE64.encode(bytes)),
        ),
    };
}

/// A JSON value given for a key's value: a string (its UTF-8 bytes) or
/// `{"base64": "..."}`.
///
/// # Errors
/// What is wrong with it, for a 400.
pub fn value_bytes(key: &str, value: &Value) -> Result<Vec<u8>, String> {
    match value {
        Value::String(text) => Ok(text.as_bytes().to_vec()),
        Value::Object(fields) if fields.len() == 1 => match fields.get("base64") {
            Some(Value::String(encoded)) => BASE64
                .decode(encoded)
                .map_err(|e| format!("the value of {key:?} is not valid base64: {e}")),
            _ => Err(format!(
                "the value of {key:?} must be a string or {{\"base64\": \"...\"}}"
            )),
        },
        _ => Err(format!(
            "the value of {key:?} must be a string or {{\"base64\": \"...\"}}, not {value}"
        )),
    }
}

/// A path segment's bytes, `%XX` decoded (any byte, not only UTF-8).
///
/// # Errors
/// A `%` not followed by two hex digits.
pub fn percent_decode(segment: &str) -> Result<Vec<u8>, String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding at byte {i} of the path"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// A JSON error answer: `{"error": message}` and `extra`'s fields.
pub fn json_error(status: StatusCode, message: &str, extra: Option<Value>) -> Response {
    let mut body = Map::new();
    body.insert("error".into(), Value::String(message.to_string()));
    if let Some(Value::Object(fields)) = extra {
        body.extend(fields);
    }
    (status, axum::Json(Value::Object(body))).into_response()
}

/// A 400 saying why.
pub fn bad_request(reason: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, reason, None)
}

/// A 413: a body over `limit` bytes.
pub fn too_large(limit: usize) -> Response {
    json_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than {limit} bytes"),
        Some(json!({"limit": limit})),
    )
}

/// A 401 with the Basic challenge.
pub fn unauthorized(reason: &str) -> Response {
    let mut response = json_error(StatusCode::UNAUTHORIZED, reason, None);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"semikv\", charset=\"UTF-8\""),
    );
    response
}

/// A 429: too many failed logins from this address lately.
pub fn held_back(secs: u64) -> Response {
    let mut response = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("too many failed logins from this address; try again in {secs} s"),
        None,
    );
    if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The answer to a request the cluster refused with `error`.
pub fn error(error: &ErrorReply) -> Response {
    let message = error.to_string();
    match error {
        ErrorReply::Invalid { .. } | ErrorReply::NotAnInteger | ErrorReply::Overflow => {
            json_error(StatusCode::BAD_REQUEST, &message, None)
        }
        ErrorReply::NoPermission { .. } => json_error(StatusCode::FORBIDDEN, &message, None),
        ErrorReply::Indeterminate { .. } | ErrorReply::NotEnoughReplicas { .. } => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &message,
            Some(json!({
                "outcome": "unknown",
                "detail": "the write may or may not have happened: read the key to find out",
            })),
        ),
        ErrorReply::Unavailable { retry_after_ms, .. } => {
            let mut response = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &message,
                Some(json!({"outcome": "not applied", "retry_after_ms": retry_after_ms})),
            );
            // Whole seconds, rounded up: HTTP has no finer unit.
            let secs = retry_after_ms.div_ceil(1000).max(1);
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        ErrorReply::NotLeader { .. } | ErrorReply::Behind { .. } => {
            let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, &message, None);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        ErrorReply::DiskFull { .. } | ErrorReply::OutOfMemory { .. } => json_error(
            StatusCode::INSUFFICIENT_STORAGE,
            &message,
            Some(json!({"outcome": "not applied"})),
        ),
        _ => json_error(StatusCode::INTERNAL_SERVER_ERROR, &message, None),
    }
}

/// `response` with the position header.
pub fn with_index(mut response: Response, index: LogIndex) -> Response {
    if index.0 > 0 {
        if let Ok(value) = HeaderValue::from_str(&index.0.to_string()) {
            response.headers_mut().insert(INDEX_HEADER, value);
        }
    }
    response
}

/// The user name and password of an `Authorization: Basic` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keys_decode_to_any_bytes() {
        assert_eq!(percent_decode("a%2Fb%ff").unwrap(), b"a/b\xff");
        assert_eq!(percent_decode("plain").unwrap(), b"plain");
        assert!(percent_decode("bad%2").is_err());
        assert!(percent_decode("bad%zz").is_err());
    }

    #[test]
    fn bytes_that_are_not_utf8_go_as_base64_and_come_back() {
        let mut object = Map::new();
        put_bytes(&mut object, "value", b"\xff\x00");
        put_bytes(&mut object, "key", b"k");
        assert_eq!(object["key"], "k");
        let encoded = object["value_base64"].clone();
        let back = value_bytes("k", &json!({"base64": encoded})).unwrap();
        assert_eq!(back, b"\xff\x00");
        assert!(value_bytes("k", &json!(5)).is_err());
        assert!(value_bytes("k", &json!({"base64": "***"})).is_err());
    }

    #[test]
    fn each_error_has_its_status_and_unknown_outcomes_say_so() {
        let status = |e: ErrorReply| error(&e).status().as_u16();
        let unavailable = ErrorReply::Unavailable {
            retry_after_ms: 1500,
            reason: "no leader".into(),
        };
        let response = error(&unavailable);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(status(ErrorReply::Invalid { reason: "x".into() }), 400);
        assert_eq!(status(ErrorReply::NotAnInteger), 400);
        assert_eq!(status(ErrorReply::NoPermission { reason: "x".into() }), 403);
        assert_eq!(status(ErrorReply::DiskFull { reason: "x".into() }), 507);
        assert_eq!(status(ErrorReply::OutOfMemory { used: 1, limit: 1 }), 507);
        assert_eq!(status(ErrorReply::Storage { reason: "x".into() }), 500);
        for unknown in [
            ErrorReply::Indeterminate {
                reason: "broke".into(),
            },
            ErrorReply::NotEnoughReplicas {
                acked: 0,
                required: 1,
            },
        ] {
            let response = error(&unknown);
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            let body = futures_body(response);
            assert_eq!(body["outcome"], "unknown", "{body}");
            assert!(body["detail"].as_str().unwrap().contains("may or may not"));
        }
    }

    /// A response's JSON body.
    fn futures_body(response: Response) -> Value {
        let bytes =
            futures::executor::block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn basic_credentials_parse() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cHc6eA=="),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("alice".into(), "pw:x".into()))
        );
    }
}
