//! `/healthz`, `/readyz` and `/metrics`: on the shared port and `listen_http`, and alone on
//! the admin port (`listen_admin`), which answers from the server's first moment, while the
//! store is still being opened.
//!
//! With `listen_admin` set, `/metrics` is served there only: an operator who keeps the
//! numbers private gives them a private address. The probes are served everywhere.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::response::{self, Body};
use crate::monitor::{Monitor, Phase};

/// Connections the admin port serves at once; more wait in the kernel's backlog.
const ADMIN_CONNECTIONS: usize = 32;

/// An open HTTP connection, counted in `parley_connections{protocol="http"}` while it lasts.
pub struct Counted<'m>(&'m Monitor);

impl<'m> Counted<'m> {
    pub fn http(monitor: &'m Monitor) -> Self {
        monitor.metrics.http_connections.increment(1.0);
        Counted(monitor)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.metrics.http_connections.decrement(1.0);
    }
}

/// The answer to a monitoring path, or `None` for any other path. `metrics` says whether
/// this listener serves `/metrics`.
pub async fn route(
    method: &Method,
    path: &str,
    monitor: &Arc<Monitor>,
    metrics: bool,
) -> Option<Response<Body>> {
    let probe = matches!(path, "/healthz" | "/readyz") || (metrics && path == "/metrics");
    if !probe {
        return None;
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = response::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        let allow = HeaderValue::from_static("GET, HEAD");
        r.headers_mut().insert(header::ALLOW, allow);
        return Some(r);
    }
    let phase = monitor.phase();
    Some(match path {
        "/healthz" => match phase {
            Phase::Stopping => response::text(StatusCode::SERVICE_UNAVAILABLE, phase.name()),
            _ => response::text(StatusCode::OK, "ok"),
        },
        "/readyz" => match phase {
            Phase::Ready => response::text(StatusCode::OK, "ready"),
            _ => response::text(StatusCode::SERVICE_UNAVAILABLE, phase.name()),
        },
        _ => metrics_page(monitor).await,
    })
}

/// The metrics, rendered off the async threads (it reads the file system).
async fn metrics_page(monitor: &Arc<Monitor>) -> Response<Body> {
    let monitor = monitor.clone();
    let Ok(text) = tokio::task::spawn_blocking(move || monitor.metrics.render()).await else {
        return response::text(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed");
    };
    let mut r = Response::new(response::full(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// Serves the admin port until `shutdown`: the probes and `/metrics`, nothing else.
pub async fn listen(listener: TcpListener, monitor: Arc<Monitor>, shutdown: CancellationToken) {
    let places = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let place = tokio::select! {
            _ = shutdown.cancelled() => return,
            place = places.clone().acquire_owned() => place.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "admin port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let monitor = monitor.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve(stream, peer, monitor, shutdown).await;
            drop(place);
        });
    }
}

/// One admin-port connection.
async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    monitor: Arc<Monitor>,
    shutdown: CancellationToken,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let monitor = monitor.clone();
        async move {
            let path = request.uri().path();
            let mut response = match route(request.method(), path, &monitor, true).await {
                Some(response) => response,
                None => response::text(StatusCode::NOT_FOUND, "not found"),
            };
            response::secure(&mut response);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(super::HEADER_TIMEOUT)
        .max_buf_size(super::MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(Duration::from_secs(2), connection).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "admin HTTP connection ended");
    }
}
