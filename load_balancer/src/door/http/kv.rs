//! The key-value routes: `/v1/kv/KEY` (GET, PUT, DELETE), `/v1/kv` (POST of
//! several keys, one atomic write), and the seeds' shapes: `POST /key`
//! with `{"k": "v"}`, `GET /key/KEY` answering `{"KEY": "value"}`, and
//! `DELETE /key/KEY`.
//!
//! A key is the rest of the path, percent-decoded to bytes (`%FF` is the
//! byte 0xFF, `%2F` a slash). Reads take `?consistency=LEVEL` (as
//! `--read-consistency` spells it), `?after=N` (a position from an earlier
//! answer's `x-semikv-index`) and `?raw` (or `Accept:
//! application/octet-stream`) for the value's bytes as the body.

use std::collections::HashMap;
use std::str::FromStr;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use semikv_protocol::{Command, Consistency, LogIndex, Op, Read, Reply, DEFAULT_MAX_VALUE_LEN};
use serde_json::{json, Map, Value};

use super::answer::{self, bad_request, put_bytes, with_index};
use super::{Peer, Shared};
use crate::metrics::OpKind;

/// The routes, for [`super::app`].
pub fn routes() -> axum::Router<Shared> {
    axum::Router::new()
        .route("/v1/kv", post(post_v1))
        .route("/v1/kv/", post(post_v1).get(empty_key))
        .route("/v1/kv/{*key}", get(get_v1).put(put_v1).delete(delete_v1))
        .route("/key", post(post_seed))
        .route("/key/{*key}", get(get_seed).delete(delete_seed))
}

async fn empty_key() -> Response {
    bad_request("the key is empty: the path is /v1/kv/KEY")
}

/// A read's query parameters.
#[derive(Debug, Default)]
struct ReadParams {
    raw: bool,
    level: Option<Consistency>,
    after: LogIndex,
}

impl ReadParams {
    fn parse(query: &HashMap<String, String>, headers: &HeaderMap) -> Result<Self, String> {
        let mut params = ReadParams::default();
        for (name, value) in query {
            match name.as_str() {
                "raw" => params.raw = value.is_empty() || value == "true" || value == "1",
                "consistency" => {
                    params.level = Some(
                        Consistency::from_str(value)
                            .map_err(|e| format!("consistency={value}: {e}"))?,
                    )
                }
                "after" => {
                    params.after = LogIndex(value.parse().map_err(|_| {
                        format!("after={value}: expected a log position (a whole number)")
                    })?)
                }
                other => {
                    return Err(format!(
                        "unknown query parameter {other:?} (known: raw, consistency, after)"
                    ))
                }
            }
        }
        let wants_bytes = headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("application/octet-stream"));
        params.raw |= wants_bytes;
        Ok(params)
    }
}

/// The key in `uri`'s path after `prefix`.
fn key_of(uri: &Uri, prefix: &str) -> Result<Bytes, Response> {
    let rest = uri.path().strip_prefix(prefix).unwrap_or_default();
    let key = answer::percent_decode(rest).map_err(|e| bad_request(&e))?;
    if key.is_empty() {
        return Err(bad_request("the key is empty: the path is /v1/kv/KEY"));
    }
    Ok(Bytes::from(key))
}

/// What a GET found: the key its path names, the value (if any), the
/// position the answer reflects, and whether the client wants raw bytes.
struct Found {
    key: Bytes,
    value: Option<Bytes>,
    index: LogIndex,
    raw: bool,
}

/// Reads the key `uri` names after `prefix`, as `query` and `headers` ask.
async fn read(
    door: &Shared,
    peer: &Peer,
    uri: &Uri,
    prefix: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Found, Response> {
    let key = key_of(uri, prefix)?;
    let params = ReadParams::parse(query, headers).map_err(|e| bad_request(&e))?;
    let op = Op::Read(Read {
        op: Box::new(Op::Get { key: key.clone() }),
        level: params.level,
        after: params.after,
    });
    door.authorize(peer.0, headers, &op)
        .await
        .map_err(|denied| *denied)?;
    let (reply, index) = door.route(op, params.after).await;
    let (value, index) = match reply {
        Reply::Read(read) => match *read.reply {
            Reply::Value(value) => (value, index.max(read.index)),
            Reply::Error(e) => return Err(answer::error(&e)),
            other => return Err(unexpected(&other)),
        },
        Reply::Value(value) => (value, index),
        Reply::Error(e) => return Err(answer::error(&e)),
        other => return Err(unexpected(&other)),
    };
    Ok(Found {
        key,
        value,
        index,
        raw: params.raw,
    })
}

fn unexpected(reply: &Reply) -> Response {
    answer::json_error(
        StatusCode::BAD_GATEWAY,
        &format!("unexpected answer from the cluster: {reply:?}"),
        None,
    )
}

/// The 404 of a key that holds nothing.
fn no_such_key(key: &Bytes) -> Response {
    let mut extra = Map::new();
    put_bytes(&mut extra, "key", key);
    answer::json_error(
        StatusCode::NOT_FOUND,
        "no such key",
        Some(Value::Object(extra)),
    )
}

/// `GET /v1/kv/KEY`.
async fn get_v1(
    State(door): State<Shared>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let found = match read(&door, &peer, &uri, "/v1/kv/", &headers, &query).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let response = match (&found.value, found.raw) {
        (Some(value), true) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            value.clone(),
        )
            .into_response(),
        (Some(value), false) => {
            let mut body = Map::new();
            put_bytes(&mut body, "key", &found.key);
            put_bytes(&mut body, "value", value);
            axum::Json(Value::Object(body)).into_response()
        }
        (None, _) => no_such_key(&found.key),
    };
    with_index(response, found.index)
}

/// `GET /key/KEY`, as the seeds answer it: `{"KEY": "value"}`.
async fn get_seed(
    State(door): State<Shared>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let found = match read(&door, &peer, &uri, "/key/", &headers, &query).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let Some(value) = &found.value else {
        return with_index(no_such_key(&found.key), found.index);
    };
    let body = match (std::str::from_utf8(&found.key), std::str::from_utf8(value)) {
        (Ok(k), Ok(v)) => json!({ k: v }),
        _ => {
            let mut body = Map::new();
            put_bytes(&mut body, "key", &found.key);
            put_bytes(&mut body, "value", value);
            Value::Object(body)
        }
    };
    with_index(axum::Json(body).into_response(), found.index)
}

/// Reads a request body of at most `limit` bytes under the balancer's read
/// budget, within the frame timeout: 413 past the limit (told by
/// `Content-Length` before a byte is read, when the client sends one), 408
/// when it does not arrive in time.
async fn body_bytes(
    door: &Shared,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, Response> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let timeout = door.config.frame_timeout;
    if let Some(announced) = announced.filter(|n| *n > limit as u64) {
        // A body not much over the limit is read and dropped first, so that
        // a client that sends it whole (no `Expect: 100-continue`) reads
        // the 413 rather than a broken pipe; a larger one is refused before
        // a byte of it is read.
        if announced <= (limit as u64).saturating_mul(2) {
            drain(body, limit.saturating_mul(2), timeout).await;
        }
        return Err(answer::too_large(limit));
    }
    let need = announced.map_or(limit, |n| usize::try_from(n).unwrap_or(limit));
    let read = async {
        // Waits its turn when every door's connections together hold the
        // budget's bytes; given back once the body is read.
        let _grant = door.budget.grant(need).await;
        axum::body::to_bytes(body, limit).await
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(answer::json_error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the body did not arrive within {} s", timeout.as_secs()),
            None,
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if over_limit(&e) => Err(answer::too_large(limit)),
        Ok(Err(e)) => Err(bad_request(&format!("the body could not be read: {e}"))),
    }
}

/// Whether reading a body failed for its length (no `Content-Length`, and
/// more bytes than the limit).
fn over_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if err.to_string().contains("length limit exceeded") {
            return true;
        }
        cause = err.source();
    }
    false
}

/// Reads and drops up to `max` bytes of `body`, for at most `timeout`.
async fn drain(body: Body, max: usize, timeout: std::time::Duration) {
    use futures::StreamExt;
    let mut chunks = body.into_data_stream();
    let _ = tokio::time::timeout(timeout, async {
        let mut seen = 0usize;
        while let Some(Ok(chunk)) = chunks.next().await {
            seen = seen.saturating_add(chunk.len());
            if seen > max {
                break;
            }
        }
    })
    .await;
}

/// Sends a write the client may make; its answer as JSON (`ok` gives the
/// fields of the outcome), with the position header.
async fn write(door: &Shared, op: Op, ok: impl FnOnce(&Reply) -> Value) -> Response {
    let (reply, index) = door.route(op, LogIndex(0)).await;
    let response = match &reply {
        Reply::Error(e) => return answer::error(e),
        Reply::Written { .. } | Reply::Outcome(_) => axum::Json(ok(&reply)).into_response(),
        other => unexpected(other),
    };
    with_index(response, index)
}

fn index_of(reply: &Reply) -> u64 {
    match reply {
        Reply::Written { index } => index.0,
        Reply::Outcome(outcome) => outcome.index.0,
        _ => 0,
    }
}

/// `PUT /v1/kv/KEY`: the body is the value, as it is.
async fn put_v1(
    State(door): State<Shared>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let key = match key_of(&uri, "/v1/kv/") {
        Ok(key) => key,
        Err(bad) => return bad,
    };
    // The user first: no body is read for a client that may not write.
    let may = Op::Set {
        key: key.clone(),
        value: Bytes::new(),
    };
    if let Err(denied) = door.authorize(peer.0, &headers, &may).await {
        return *denied;
    }
    let value = match body_bytes(&door, &headers, body, DEFAULT_MAX_VALUE_LEN).await {
        Ok(value) => value,
        Err(response) => {
            door.refused(OpKind::Set, &invalid("body"));
            return response;
        }
    };
    let op = Op::Set {
        key: key.clone(),
        value,
    };
    write(&door, op, |reply| {
        let mut body = Map::new();
        put_bytes(&mut body, "key", &key);
        body.insert("index".into(), json!(index_of(reply)));
        Value::Object(body)
    })
    .await
}

fn invalid(what: &str) -> Reply {
    Reply::Error(semikv_protocol::ErrorReply::Invalid {
        reason: what.to_string(),
    })
}

/// `DELETE /v1/kv/KEY` and `DELETE /key/KEY`: `{"deleted": true}` when the
/// key existed.
async fn delete(door: Shared, peer: Peer, uri: Uri, headers: HeaderMap, prefix: &str) -> Response {
    let key = match key_of(&uri, prefix) {
        Ok(key) => key,
        Err(bad) => return bad,
    };
    let op = Op::Command(Command::Delete {
        keys: vec![key.clone()],
    });
    if let Err(denied) = door.authorize(peer.0, &headers, &op).await {
        return *denied;
    }
    write(&door, op, |reply| {
        let mut body = Map::new();
        put_bytes(&mut body, "key", &key);
        let deleted = matches!(reply, Reply::Outcome(o) if o.int > 0);
        body.insert("deleted".into(), json!(deleted));
        body.insert("index".into(), json!(index_of(reply)));
        Value::Object(body)
    })
    .await
}

async fn delete_v1(
    State(door): State<Shared>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    delete(door, peer, uri, headers, "/v1/kv/").await
}

async fn delete_seed(
    State(door): State<Shared>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    delete(door, peer, uri, headers, "/key/").await
}

/// `POST /v1/kv` and `POST /key`: a JSON object of keys and values (a
/// string, or `{"base64": "..."}`), written by one log entry: all of them
/// or none.
async fn post_many(door: Shared, peer: Peer, headers: HeaderMap, body: Body) -> Response {
    let may = Op::Command(Command::MSet {
        pairs: Vec::new(),
        only_if_none_exist: false,
    });
    if let Err(denied) = door.authorize(peer.0, &headers, &may).await {
        return *denied;
    }
    let limit = door.config.max_frame_len;
    let bytes = match body_bytes(&door, &headers, body, limit).await {
        Ok(bytes) => bytes,
        Err(response) => {
            door.refused(OpKind::MSet, &invalid("body"));
            return response;
        }
    };
    let object: Map<String, Value> = match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => object,
        Ok(_) => return bad_request("the body must be a JSON object of keys and values"),
        Err(e) => return bad_request(&format!("the body is not JSON: {e}")),
    };
    if object.is_empty() {
        return bad_request("the body names no key");
    }
    let mut pairs = Vec::with_capacity(object.len());
    for (key, value) in &object {
        if key.is_empty() {
            return bad_request("a key is empty");
        }
        match answer::value_bytes(key, value) {
            Ok(bytes) => pairs.push((Bytes::from(key.clone()), Bytes::from(bytes))),
            Err(e) => return bad_request(&e),
        }
    }
    let count = pairs.len();
    let op = Op::Command(Command::MSet {
        pairs,
        only_if_none_exist: false,
    });
    write(
        &door,
        op,
        |reply| json!({"written": count, "index": index_of(reply)}),
    )
    .await
}

async fn post_v1(
    State(door): State<Shared>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post_many(door, peer, headers, body).await
}

async fn post_seed(
    State(door): State<Shared>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    post_many(door, peer, headers, body).await
}
