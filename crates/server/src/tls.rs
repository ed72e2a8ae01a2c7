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
/// and its key to `dir/key.pem` (for development and tests, never for production). The key
/// is readable by its owner only (mode 0600), as `ssh` and `openssl` expect of a private
/// key; a key file already there gets that mode too before it is overwritten.
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
    write_private(&key, certified.key_pair.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    Ok((cert, key))
}

/// Writes `bytes` to `path`, readable and writable by the owner only. The mode is set on
/// creation and, for a file that already existed, before anything is written to it, so the
/// key is never readable by others, not even for a moment.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// The file's permission bits, in octal.
    fn mode(path: &Path) -> String {
        let mode = std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode();
        format!("{:o}", mode & 0o777)
    }

    #[test]
    fn the_development_key_is_readable_by_its_owner_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = write_self_signed(dir.path()).expect("write");
        assert_eq!(mode(&key), "600", "key.pem");
        Tls::load(&cert, &key).expect("the pair loads");
    }

    #[test]
    fn a_key_file_already_there_loses_its_wider_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let old = dir.path().join("key.pem");
        std::fs::write(&old, "an old key").expect("old key");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (cert, key) = write_self_signed(dir.path()).expect("write");
        assert_eq!(key, old);
        assert_eq!(mode(&key), "600");
        Tls::load(&cert, &key).expect("the new pair loads");
    }
}
