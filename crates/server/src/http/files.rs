//! Files over HTTP, for browsers: the same content-addressed store and the same rule as the
//! socket protocols' transfers (`crate::files`), with HTTP's own means for progress and
//! resume.
//!
//! - `PUT /files/<sha256>` with `Content-Range: bytes START-END/TOTAL` appends a piece at
//!   START, which must be what the server has (an interrupted upload resumes there);
//!   `Content-Range: bytes */TOTAL` with no body asks where that is. The answer is JSON:
//!   `{"complete":false,"received":N}`, or `{"complete":true}` once the bytes hash to the
//!   announced SHA-256 (a mismatch is `422`, and the upload starts over).
//! - `GET /files/<sha256>` (and `HEAD`) downloads, with single range requests, for members
//!   of a conversation the file was sent to; others get `403` whether it exists or not.
//!
//! Both authenticate with a device token: `Authorization: Bearer <token>`. No cookie is
//! involved, so another site cannot make a browser act with the user's rights.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use parley_proto::ErrorKind;
use serde_json::json;
use tracing::{debug, warn};

use super::response::{self, Body, FILE_CSP};
use crate::auth;
use crate::files::{valid_hash, Offer, Progress, MAX_CHUNK};
use crate::session::Shared;
use crate::store::{now_ms, UserId};

/// The user a request's device token belongs to, or the answer that refuses it.
pub async fn authenticate(
    headers: &HeaderMap,
    peer: SocketAddr,
    shared: &Shared,
) -> Result<UserId, Response<Body>> {
    let unauthorized = || {
        let mut r = response::text(StatusCode::UNAUTHORIZED, "a device token is needed");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    // The login throttle's rule for tokens (`throttle.rs`): a valid token is never refused;
    // a wrong one counts against its address, and its answer may wait for a turn.
    let row = shared.reader.token(auth::token_hash(token)).await;
    let row = row.map_err(|_| internal())?;
    match row.filter(|r| !r.revoked && r.expires_at > now_ms()) {
        Some(row) => Ok(row.user),
        None => {
            crate::log_limit::limited!(shared.logs, warn, "HTTP: invalid, expired or revoked token", %peer);
            tokio::time::sleep(shared.throttle.token_failed(peer.ip())).await;
            Err(unauthorized())
        }
    }
}

fn internal() -> Response<Body> {
    response::text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// The hash in a `/files/<sha256>` path, if it is one.
pub fn hash_of(path: &str) -> Option<&str> {
    path.strip_prefix("/files/").filter(|h| valid_hash(h))
}

/// `Content-Range: bytes START-END/TOTAL` (a piece) or `bytes */TOTAL` (a question).
fn content_range(headers: &HeaderMap) -> Option<(Option<(u64, u64)>, u64)> {
    let value = headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let total = total.trim().parse().ok()?;
    if range.trim() == "*" {
        return Some((None, total));
    }
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start <= end && end < total).then_some((Some((start, end)), total))
}

/// `PUT /files/<sha256>`: one piece of an upload.
pub async fn upload(
    request: Request<Incoming>,
    hash: &str,
    peer: SocketAddr,
    shared: &Shared,
) -> Response<Body> {
    let user = match authenticate(request.headers(), peer, shared).await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    let length: Option<u64> = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // Without Content-Range the body is the whole file.
    let (piece, total) = match (content_range(request.headers()), length) {
        (Some(range), _) => range,
        (None, Some(0)) | (None, None) if request.headers().contains_key(header::CONTENT_RANGE) => {
            return response::text(StatusCode::BAD_REQUEST, "bad Content-Range");
        }
        (None, Some(length)) => (length.checked_sub(1).map(|end| (0, end)), length),
        (None, None) => {
            return response::text(StatusCode::LENGTH_REQUIRED, "Content-Length needed")
        }
    };
    if total > shared.config.max_file_bytes {
        return response::text(StatusCode::PAYLOAD_TOO_LARGE, "file too large");
    }
    let received = match shared.files.offer(user, hash).await {
        Ok(Offer::Have) => return response::json(StatusCode::OK, &json!({"complete": true})),
        Ok(Offer::Upload { offset }) => offset,
        Err(_) => return response::text(StatusCode::BAD_REQUEST, "bad hash"),
    };
    let Some((start, end)) = piece else {
        if total == 0 {
            // An empty file has no piece to send: the question completes it.
            return match write(shared, user, hash, 0, 0, Bytes::new()).await {
                Ok(_) => response::json(StatusCode::OK, &json!({"complete": true})),
                Err(refused) => refused,
            };
        }
        return response::json(
            StatusCode::OK,
            &json!({"complete": false, "received": received}),
        );
    };
    if start != received {
        let answer = json!({"complete": false, "received": received});
        return response::json(StatusCode::CONFLICT, &answer);
    }
    if length.is_some_and(|l| l != end - start + 1) {
        return response::text(StatusCode::BAD_REQUEST, "Content-Length is not the range's");
    }
    // Streamed to the store in pieces of at most MAX_CHUNK: never more than that in memory.
    let mut body = request.into_body();
    let mut offset = start;
    let mut pending = BytesMut::new();
    let limit = end + 1;
    // A body that stops arriving ends the request (what arrived is kept): the connection
    // is not held for a client that went quiet, however slowly a live one sends.
    let quiet = match shared.config.request_timeout_ms {
        0 => None,
        ms => Some(std::time::Duration::from_millis(ms)),
    };
    let mut stalled = false;
    loop {
        let next = match quiet {
            Some(limit) => tokio::time::timeout(limit, body.frame()).await,
            None => Ok(body.frame().await),
        };
        let frame = match next {
            Ok(Some(Ok(frame))) => frame,
            Ok(Some(Err(e))) => {
                warn!(%peer, error = %e, "HTTP upload cut");
                break;
            }
            Ok(None) => break,
            Err(_) => {
                debug!(%peer, "HTTP upload stalled");
                stalled = true;
                break;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if offset + (pending.len() + data.len()) as u64 > limit {
            return response::text(StatusCode::BAD_REQUEST, "more bytes than the range");
        }
        pending.extend_from_slice(&data);
        while pending.len() >= MAX_CHUNK {
            let chunk = pending.split_to(MAX_CHUNK).freeze();
            match write(shared, user, hash, total, offset, chunk).await {
                Ok(next) => offset = next,
                Err(refused) => return refused,
            }
        }
    }
    // What arrived before a cut is kept: the upload resumes after it.
    if !pending.is_empty() {
        let chunk = pending.split().freeze();
        match write(shared, user, hash, total, offset, chunk).await {
            Ok(next) => offset = next,
            Err(refused) => return refused,
        }
    }
    if offset == total {
        return response::json(StatusCode::OK, &json!({"complete": true}));
    }
    let status = match stalled {
        true => StatusCode::REQUEST_TIMEOUT,
        false => StatusCode::OK,
    };
    response::json(status, &json!({"complete": false, "received": offset}))
}

/// Writes one chunk; the offset after it, or the answer that refuses it.
async fn write(
    shared: &Shared,
    user: UserId,
    hash: &str,
    total: u64,
    offset: u64,
    chunk: Bytes,
) -> Result<u64, Response<Body>> {
    let len = chunk.len() as u64;
    match shared
        .files
        .write_chunk(user, hash, total, offset, chunk)
        .await
    {
        Ok(Progress::Partial { received }) => Ok(received),
        Ok(Progress::Complete) => {
            shared.hub.file_stored(hash.to_string(), total);
            Ok(offset + len)
        }
        Err(ErrorKind::Corrupt) => Err(response::text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the bytes do not have the announced SHA-256; the upload starts over",
        )),
        Err(ErrorKind::BadTransfer) => Err(response::text(StatusCode::CONFLICT, "wrong offset")),
        Err(_) => Err(internal()),
    }
}

/// One range of `size` bytes that a `Range` header asks for: `None` for the whole file
/// (no header, or one this server does not serve in part, such as several ranges), `Err`
/// when nothing of the file is in it.
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (start, end) = match (start.parse::<u64>(), end.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => (start, end.min(size.saturating_sub(1))),
        (Ok(start), Err(_)) if end.is_empty() => (start, size.saturating_sub(1)),
        (Err(_), Ok(suffix)) if start.is_empty() && suffix > 0 => {
            (size.saturating_sub(suffix), size.saturating_sub(1))
        }
        _ => return Ok(None),
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// The query's `name` and `type`: what the message carrying the file says it is.
fn query(uri: &hyper::Uri) -> (String, String) {
    let (mut name, mut kind) = (String::new(), String::new());
    for pair in uri.query().unwrap_or("").split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "name" => name = percent_decode(value),
            "type" => kind = percent_decode(value),
            _ => {}
        }
    }
    (name, kind)
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex(*hi).zip(hex(*lo)).map(|(hi, lo)| hi << 4 | lo),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The media types a download is labelled with as they are; anything else (HTML, SVG,
/// scripts: whatever a browser might run) is `application/octet-stream`.
fn safe_type(kind: &str) -> &'static str {
    const SAFE: [&str; 10] = [
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "text/plain",
        "application/pdf",
        "audio/mpeg",
        "audio/ogg",
        "video/mp4",
    ];
    SAFE.iter()
        .find(|t| t.eq_ignore_ascii_case(kind))
        .copied()
        .unwrap_or("application/octet-stream")
}

/// `attachment`, with the name as ASCII and as UTF-8 (RFC 6266).
fn disposition(name: &str) -> HeaderValue {
    let name = if name.is_empty() { "file" } else { name };
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let value = format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}");
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("attachment"))
}

/// `GET /files/<sha256>` (or `HEAD`).
pub async fn download(
    request: Request<Incoming>,
    hash: &str,
    peer: SocketAddr,
    shared: &Shared,
) -> Response<Body> {
    let user = match authenticate(request.headers(), peer, shared).await {
        Ok(user) => user,
        Err(refused) => return refused,
    };
    match shared.reader.may_download(user, hash.to_string()).await {
        Ok(true) => {}
        Ok(false) => {
            return response::text(StatusCode::FORBIDDEN, "not sent to a conversation of yours")
        }
        Err(_) => return internal(),
    }
    let size = match shared.files.size(hash).await {
        Ok(size) => size,
        Err(_) => return response::text(StatusCode::NOT_FOUND, "no such file"),
    };
    let (name, kind) = query(request.uri());
    let (status, start, end) = match range(request.headers(), size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        Err(()) => {
            let mut r = response::text(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            let all = HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii");
            r.headers_mut().insert(header::CONTENT_RANGE, all);
            return r;
        }
    };
    let body = if request.method() == hyper::Method::HEAD {
        response::empty()
    } else {
        stream(shared.files.clone(), hash.to_string(), start, end)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let value = |s: String| HeaderValue::from_str(&s).expect("ascii");
    headers.insert(header::CONTENT_LENGTH, value((end - start).to_string()));
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{size}", end - 1);
        headers.insert(header::CONTENT_RANGE, value(range));
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(safe_type(&kind)),
    );
    headers.insert(header::CONTENT_DISPOSITION, disposition(&name));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(FILE_CSP),
    );
    // Content-addressed: the bytes behind a hash never change.
    headers.insert(header::ETAG, value(format!("\"{hash}\"")));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    response
}

/// Bytes `start..end` of stored content, read a chunk at a time as the client takes them
/// (two chunks ahead at most).
fn stream(files: crate::files::FileStore, hash: String, start: u64, end: u64) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::spawn(async move {
        let mut offset = start;
        while offset < end {
            let len = (end - offset).min(MAX_CHUNK as u64) as usize;
            let chunk = match files.read_chunk(&hash, offset, len).await {
                Ok(chunk) if !chunk.is_empty() => chunk,
                Ok(_) | Err(_) => {
                    let _ = tx
                        .send(Err(std::io::Error::other("file read failed")))
                        .await;
                    return;
                }
            };
            offset += chunk.len() as u64;
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    http_body_util::StreamBody::new(stream).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let r = |v: &str| range(&headers(header::RANGE, v), 100);
        assert_eq!(r("bytes=0-9"), Ok(Some((0, 9))));
        assert_eq!(r("bytes=90-"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=-10"), Ok(Some((90, 99))));
        assert_eq!(r("bytes=95-500"), Ok(Some((95, 99))));
        assert_eq!(r("bytes=100-"), Err(()));
        assert_eq!(r("bytes=0-1,5-6"), Ok(None));
        assert_eq!(r("bytes=9-0"), Ok(None));
        assert_eq!(range(&HeaderMap::new(), 100), Ok(None));
    }

    #[test]
    fn content_ranges_and_names() {
        let c = |v: &str| content_range(&headers(header::CONTENT_RANGE, v));
        assert_eq!(c("bytes 0-99/1000"), Some((Some((0, 99)), 1000)));
        assert_eq!(c("bytes */1000"), Some((None, 1000)));
        assert_eq!(c("bytes 0-1000/1000"), None);
        assert_eq!(c("bytes 5-4/1000"), None);
        assert_eq!(percent_decode("a%20b+c%2"), "a b c%2");
        assert_eq!(safe_type("text/html"), "application/octet-stream");
        assert_eq!(safe_type("IMAGE/PNG"), "image/png");
        let d = disposition("rapport \"final\" é.pdf");
        assert_eq!(
            d.to_str().unwrap(),
            "attachment; filename=\"rapport _final_ _.pdf\"; filename*=UTF-8''rapport%20%22final%22%20%C3%A9.pdf"
        );
    }
}
