//! TLS with rustls: the server's certificate, reloadable without dropping connections, and
//! a self-signed development certificate for `parley cert`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The certificate in use, and where it came from (to load it again on SIGHUP).
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let acceptor = acceptor(cert, key)?;
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            acceptor: RwLock::new(acceptor),
        })
    }

    /// Reads the certificate and key files again. New connections use them; connections
    /// already open keep theirs. On error the old certificate stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = acceptor(&self.cert, &self.key)?;
        *self.acceptor.write().expect("tls lock poisoned") = fresh;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().expect("tls lock poisoned").clone()
    }
}

fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not fit together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Writes a self-signed certificate for `localhost`, 127.0.0.1 and ::1 to `dir/cert.pem`
/// and its key to `dir/key.pem` (for development and tests, never for production).
pub fn write_self_signed(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified =
        rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    std::fs::write(&key, certified.key_pair.serialize_pem())
        .with_context(|| format!("writing {}", key.display()))?;
    Ok((cert, key))
}
