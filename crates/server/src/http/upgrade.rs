//! The WebSocket handshake at `/ws` (RFC 6455, section 4.2): checks the request and its
//! `Origin`, answers `101`, and leaves the connection to be taken over by a session once
//! hyper lets go of it.

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use sha1::{Digest, Sha1};
use tracing::warn;

use super::response::{self, Body};
use crate::session::Shared;

/// Where the handler leaves an accepted upgrade for the connection's task.
pub type Slot = Arc<Mutex<Option<OnUpgrade>>>;

/// The `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(sha.finalize())
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Whether a page of `origin` may open the socket: the server's own origin (the scheme
/// of this connection and the `Host` the browser asked for), or one of `web_origins`
/// (`*`: any). A request without `Origin` is not from a browser page, and is let in: the
/// origin check protects browsers' users from other sites, not the server from clients.
fn origin_allowed(headers: &HeaderMap, tls: bool, shared: &Shared) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let allowed = &shared.config.web_origins;
    if allowed
        .iter()
        .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let scheme = if tls { "https" } else { "http" };
    host.is_some_and(|host| origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")))
}

/// Answers a request for `/ws`: `101` and the upgrade left in `slot`, or why not.
pub fn handshake(
    mut request: Request<hyper::body::Incoming>,
    tls: bool,
    shared: &Shared,
    slot: &Slot,
) -> Response<Body> {
    let headers = request.headers();
    let upgrade = has_token(headers, header::UPGRADE, "websocket")
        && has_token(headers, header::CONNECTION, "upgrade");
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| BASE64.decode(k).is_ok_and(|k| k.len() == 16));
    let (true, Some(key)) = (upgrade, key) else {
        return response::text(
            StatusCode::BAD_REQUEST,
            "a WebSocket handshake is expected here",
        );
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = response::text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only");
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    if !origin_allowed(headers, tls, shared) {
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        warn!(origin, "WebSocket from an origin that is not allowed");
        return response::text(StatusCode::FORBIDDEN, "origin not allowed");
    }
    let accept = HeaderValue::from_str(&accept_key(key)).expect("base64 is ASCII");
    *slot.lock().expect("upgrade slot poisoned") = Some(hyper::upgrade::on(&mut request));
    let mut response = Response::new(response::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

#[cfg(test)]
mod tests {
    /// RFC 6455 1.3's example.
    #[test]
    fn the_accept_key_is_the_rfcs() {
        assert_eq!(
            super::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
