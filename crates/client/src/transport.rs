//! Opening a byte stream to a server: plain TCP, or TLS (rustls) around it.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::Error;

/// Where a server is and how to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `HOST:PORT`.
    pub addr: String,
    /// `Some` to speak TLS.
    pub tls: Option<TlsOptions>,
    /// How long a connection (and TLS handshake) may take.
    pub connect_timeout: Duration,
}

/// How to check the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// A PEM file of certificates to trust instead of the system's (a self-signed server).
    pub ca: Option<PathBuf>,
}

impl Endpoint {
    /// A plain-TCP endpoint with the default timeout.
    pub fn tcp(addr: impl Into<String>) -> Endpoint {
        Endpoint {
            addr: addr.into(),
            tls: None,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// The host part of the address, without brackets (for TLS's server name).
    pub fn host(&self) -> &str {
        let host = match self.addr.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => host,
            _ => &self.addr,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// A connected stream, plain or TLS.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

pub(crate) type BoxStream = Pin<Box<dyn Stream>>;

/// Connects to `endpoint`, within its timeout.
pub(crate) async fn connect(endpoint: &Endpoint) -> Result<BoxStream, Error> {
    let fail = |what: String| Error::Connect(format!("{}: {what}", endpoint.addr));
    let work = async {
        let tcp = TcpStream::connect(&endpoint.addr)
            .await
            .map_err(|e| fail(e.to_string()))?;
        tcp.set_nodelay(true).map_err(|e| fail(e.to_string()))?;
        // A server that vanished without a FIN is noticed by the link's heartbeat first;
        // keepalive covers a connection idle with nothing in flight.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let Some(tls) = &endpoint.tls else {
            return Ok(Box::pin(tcp) as BoxStream);
        };
        let config = client_config(tls).map_err(fail)?;
        let name = ServerName::try_from(endpoint.host().to_string())
            .map_err(|e| fail(format!("invalid server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {e}")))?;
        Ok(Box::pin(stream) as BoxStream)
    };
    match tokio::time::timeout(endpoint.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(fail("timed out".into())),
    }
}

/// rustls's client configuration: the `--ca` file's certificates, or the system's roots.
fn client_config(tls: &TlsOptions) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("{} holds no PEM certificate", path.display()));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system root certificates found (use --ca FILE)".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_strips_port_and_brackets() {
        assert_eq!(Endpoint::tcp("localhost:5555").host(), "localhost");
        assert_eq!(Endpoint::tcp("[::1]:5555").host(), "::1");
        assert_eq!(Endpoint::tcp("127.0.0.1:1").host(), "127.0.0.1");
    }
}
