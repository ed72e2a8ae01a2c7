//! HTTP/1.1 on the shared port (and on `listen_http`), served by hyper: the embedded web
//! app, `/healthz`, `/readyz` and `/metrics` (`monitor.rs`), files over HTTP, and the
//! WebSocket at `/ws`, which becomes a session of its own once the handshake is done.
//!
//! A connection is HTTP when its first bytes are a request line (see `sniff`, which reads
//! at most 8 bytes when the first could start a method), inside TLS or not. Every response
//! carries the security headers of `response::secure`. Files (`files.rs`) use the same
//! store and membership rule as every protocol, with a device token in `Authorization`.
//!
//! After a `101`, hyper hands the connection back whole (`upgrade.rs`) and it becomes an
//! ordinary JSON session framed by the sans-IO `parley_proto::ws` (`Style::WebSocket`: one
//! text frame per answer or push): catch-up, acks, limits and shutdown are the JSON
//! session's.

mod assets;
mod files;
mod io;
pub mod monitor;
mod response;
mod upgrade;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tracing::{debug, warn};

pub use io::HttpIo;
use response::Body;

use crate::conn::Conn;
use crate::session::Shared;

/// How long a client may take to send a request's headers, and may keep an idle
/// connection open between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line and headers) read.
const MAX_HEAD: usize = 16 * 1024;

/// Serves HTTP on one connection until the client closes it or the server shuts down
/// (requests in progress are finished first). After a WebSocket handshake, returns the
/// connection, with what the client sent past the handshake, for a session to take over.
pub async fn serve(io: HttpIo, peer: SocketAddr, shared: Arc<Shared>) -> Option<(Conn, BytesMut)> {
    let _counted = monitor::Counted::http(&shared.monitor);
    let handler = shared.clone();
    let tls = io.conn.is_tls();
    let slot = upgrade::Slot::default();
    let upgrading = slot.clone();
    let service = hyper::service::service_fn(move |request| {
        let (shared, slot) = (handler.clone(), upgrading.clone());
        async move {
            let at = Place {
                peer,
                tls,
                slot: &slot,
            };
            Ok::<_, Infallible>(handle(request, at, &shared).await)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shared.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let limit = shared.config.shutdown_timeout();
            tokio::time::timeout(limit, connection).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "HTTP connection ended");
    }
    // After a `101`, hyper hands the connection back whole, with what it read past the
    // handshake.
    let pending = slot.lock().expect("upgrade slot poisoned").take()?;
    match pending.await.map(|u| u.downcast::<TokioIo<HttpIo>>()) {
        Ok(Ok(parts)) => {
            let HttpIo { mut initial, conn } = parts.io.into_inner();
            initial.extend_from_slice(&parts.read_buf);
            Some((conn, initial))
        }
        Ok(Err(_)) => {
            warn!(%peer, "an upgraded connection of an unexpected type");
            None
        }
        Err(e) => {
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            None
        }
    }
}

/// Where a request came from.
struct Place<'a> {
    peer: SocketAddr,
    tls: bool,
    slot: &'a upgrade::Slot,
}

/// Answers one request, with the security headers.
async fn handle(request: Request<Incoming>, at: Place<'_>, shared: &Shared) -> Response<Body> {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let peer = at.peer;
    let mut response = route(request, &path, at, shared).await;
    debug!(%peer, %method, %path, status = response.status().as_u16(), "HTTP");
    response::secure(&mut response);
    response
}

async fn route(
    request: Request<Incoming>,
    path: &str,
    at: Place<'_>,
    shared: &Shared,
) -> Response<Body> {
    let peer = at.peer;
    let method = request.method();
    if path == "/ws" {
        return match *method {
            Method::GET => upgrade::handshake(request, at.tls, shared, at.slot),
            _ => not_allowed("GET", method),
        };
    }
    let read = method == Method::GET || method == Method::HEAD;
    if let Some(hash) = files::hash_of(path) {
        let hash = hash.to_string();
        return match *method {
            Method::GET | Method::HEAD => files::download(request, &hash, peer, shared).await,
            Method::PUT => files::upload(request, &hash, peer, shared).await,
            _ => not_allowed("GET, HEAD, PUT, OPTIONS", method),
        };
    }
    let metrics = shared.config.listen_admin.is_none();
    if let Some(response) = monitor::route(method, path, &shared.monitor, metrics).await {
        return response;
    }
    match assets::find(path) {
        Some((index, asset)) if read => assets::serve(index, asset, request.headers()),
        Some(_) => not_allowed("GET, HEAD, OPTIONS", method),
        None => response::text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `405`, or for `OPTIONS` a `204` that lists what the resource allows (no cross-origin
/// use is offered: the app is served from the same origin it talks to).
fn not_allowed(allow: &'static str, method: &Method) -> Response<Body> {
    let mut response = match *method {
        Method::OPTIONS => {
            let mut r = Response::new(response::empty());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        _ => response::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
