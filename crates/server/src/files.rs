//! The content-addressed file store: uploads in chunks, verified, de-duplicated,
//! resumable, and never held whole in memory.
//!
//! A complete file lives at `data_dir/files/<first 2 hex>/<sha256 hex>`. An upload in
//! progress is `data_dir/uploads/<user>-<sha256>.part`; its length is how far the upload
//! got, so an upload interrupted by a dropped connection (or a restart) resumes there. When
//! the last byte arrives the part file is hashed (streamed, 64 KiB at a time) and, if it is
//! the announced SHA-256, renamed into the store; otherwise it is deleted and refused.
//!
//! In a cluster, complete files are stored in PostgreSQL instead (store/postgres/blobs.rs),
//! so any node serves a file another node received; an upload in progress stays on the
//! disk of the node it goes to (resumable there).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use bytes::Bytes;
use parley_proto::ErrorKind;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::store::postgres::PgBlobs;
use crate::store::UserId;

/// Largest chunk read or written in one request.
pub const MAX_CHUNK: usize = 60 * 1024;

/// What the server answers to an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The store holds this content already: no upload needed.
    Have,
    /// Upload from this offset.
    Upload { offset: u64 },
}

/// Where an upload stands after a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Partial {
        received: u64,
    },
    /// Verified and stored.
    Complete,
}

#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    /// Where complete files are in a cluster.
    shared: Option<PgBlobs>,
}

/// Whether `hash` is a SHA-256 in lower-case hex.
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl FileStore {
    pub fn new(data_dir: &std::path::Path) -> Self {
        FileStore {
            root: data_dir.to_path_buf(),
            shared: None,
        }
    }

    /// A cluster node's: uploads in progress in `data_dir`, complete files in `blobs`.
    pub fn shared(data_dir: &std::path::Path, blobs: PgBlobs) -> Self {
        FileStore {
            root: data_dir.to_path_buf(),
            shared: Some(blobs),
        }
    }

    /// Whether the content is stored, wherever complete files are.
    async fn stored(&self, hash: &str) -> Result<bool, ErrorKind> {
        match &self.shared {
            None => Ok(self.has(hash)),
            Some(blobs) => {
                Ok(valid_hash(hash) && blobs.size(hash).await.map_err(shared_error)?.is_some())
            }
        }
    }

    fn content(&self, hash: &str) -> PathBuf {
        self.root.join("files").join(&hash[..2]).join(hash)
    }

    fn part(&self, user: UserId, hash: &str) -> PathBuf {
        self.root
            .join("uploads")
            .join(format!("{user}-{hash}.part"))
    }

    /// Whether the content is stored (complete and verified). In a cluster this cannot be
    /// known without a query: it says whether `hash` is a hash, and `size` says the rest.
    pub fn has(&self, hash: &str) -> bool {
        match self.shared {
            None => valid_hash(hash) && self.content(hash).is_file(),
            Some(_) => valid_hash(hash),
        }
    }

    /// Where an upload of `hash` by `user` would start.
    pub async fn offer(&self, user: UserId, hash: &str) -> Result<Offer, ErrorKind> {
        if !valid_hash(hash) {
            return Err(ErrorKind::Malformed);
        }
        if self.stored(hash).await? {
            return Ok(Offer::Have);
        }
        let offset = tokio::fs::metadata(self.part(user, hash))
            .await
            .map_or(0, |m| m.len());
        Ok(Offer::Upload { offset })
    }

    /// Appends `data` at `offset` to `user`'s upload of `hash` (of `size` bytes). The
    /// offset must be exactly what the server has; the last chunk triggers verification.
    pub async fn write_chunk(
        &self,
        user: UserId,
        hash: &str,
        size: u64,
        offset: u64,
        data: Bytes,
    ) -> Result<Progress, ErrorKind> {
        if !valid_hash(hash) || data.len() > MAX_CHUNK {
            return Err(ErrorKind::BadTransfer);
        }
        if self.stored(hash).await? {
            return Ok(Progress::Complete);
        }
        let part = self.part(user, hash);
        let content = self.content(hash);
        let shared = self.shared.is_some();
        let owned = hash.to_string();
        let written = tokio::task::spawn_blocking(move || -> Result<Progress, ErrorKind> {
            let hash = owned;
            let io = |e: std::io::Error| {
                warn!(error = %e, "file store I/O");
                ErrorKind::Internal
            };
            std::fs::create_dir_all(part.parent().expect("has a parent")).map_err(io)?;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&part)
                .map_err(io)?;
            let have = file.metadata().map_err(io)?.len();
            if offset != have || offset + data.len() as u64 > size {
                return Err(ErrorKind::BadTransfer);
            }
            file.write_all(&data).map_err(io)?;
            let received = have + data.len() as u64;
            if received < size {
                return Ok(Progress::Partial { received });
            }
            file.sync_all().map_err(io)?;
            drop(file);
            if sha256_of(&part).map_err(io)? != hash {
                let _ = std::fs::remove_file(&part);
                return Err(ErrorKind::Corrupt);
            }
            if shared {
                // Verified: the caller copies it into the shared store.
                return Ok(Progress::Complete);
            }
            std::fs::create_dir_all(content.parent().expect("has a parent")).map_err(io)?;
            std::fs::rename(&part, &content).map_err(io)?;
            Ok(Progress::Complete)
        })
        .await
        .map_err(|_| ErrorKind::Internal)??;
        if let (Progress::Complete, Some(blobs)) = (written, &self.shared) {
            let part = self.part(user, hash);
            blobs.store(hash, &part).await.map_err(shared_error)?;
            let _ = tokio::fs::remove_file(&part).await;
        }
        Ok(written)
    }

    /// The size of stored content.
    pub async fn size(&self, hash: &str) -> Result<u64, ErrorKind> {
        if let Some(blobs) = &self.shared {
            if !valid_hash(hash) {
                return Err(ErrorKind::BadTransfer);
            }
            let size = blobs.size(hash).await.map_err(shared_error)?;
            return size.ok_or(ErrorKind::BadTransfer);
        }
        if !self.has(hash) {
            return Err(ErrorKind::BadTransfer);
        }
        let meta = tokio::fs::metadata(self.content(hash)).await;
        meta.map(|m| m.len()).map_err(|_| ErrorKind::Internal)
    }

    /// Up to `len` bytes of stored content `hash` from `offset` (empty at the end).
    pub async fn read_chunk(
        &self,
        hash: &str,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, ErrorKind> {
        if let Some(blobs) = &self.shared {
            if !self.stored(hash).await? {
                return Err(ErrorKind::BadTransfer);
            }
            let len = len.min(MAX_CHUNK);
            return blobs.read(hash, offset, len).await.map_err(shared_error);
        }
        if !self.has(hash) {
            return Err(ErrorKind::BadTransfer);
        }
        let path = self.content(hash);
        let len = len.min(MAX_CHUNK);
        tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
            let mut file = std::fs::File::open(path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::with_capacity(len);
            file.take(len as u64).read_to_end(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|_| ErrorKind::Internal)?
        .map_err(|_| ErrorKind::Internal)
    }
}

/// A failure of the shared store, logged; the client gets an internal error.
fn shared_error(e: anyhow::Error) -> ErrorKind {
    warn!(error = %format!("{e:#}"), "shared file store");
    ErrorKind::Internal
}

/// The SHA-256 of a file in lower-case hex, read 64 KiB at a time.
fn sha256_of(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(data: &[u8]) -> String {
        Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[tokio::test]
    async fn chunks_resume_verify_and_deduplicate() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let hash = hex(&data);
        assert_eq!(store.offer(1, &hash).await, Ok(Offer::Upload { offset: 0 }));
        let first = Bytes::copy_from_slice(&data[..MAX_CHUNK]);
        let size = data.len() as u64;
        assert!(matches!(
            store.write_chunk(1, &hash, size, 0, first).await,
            Ok(Progress::Partial { .. })
        ));
        assert_eq!(
            store.offer(1, &hash).await,
            Ok(Offer::Upload {
                offset: MAX_CHUNK as u64
            }),
            "an interrupted upload resumes where it stopped"
        );
        let wrong = Bytes::from_static(b"x");
        assert_eq!(
            store.write_chunk(1, &hash, size, 5, wrong).await,
            Err(ErrorKind::BadTransfer)
        );
        let mut offset = MAX_CHUNK;
        let mut last = Ok(Progress::Partial { received: 0 });
        while offset < data.len() {
            let end = (offset + MAX_CHUNK).min(data.len());
            let chunk = Bytes::copy_from_slice(&data[offset..end]);
            last = store
                .write_chunk(1, &hash, size, offset as u64, chunk)
                .await;
            offset = end;
        }
        assert_eq!(last, Ok(Progress::Complete));
        assert_eq!(
            store.offer(2, &hash).await,
            Ok(Offer::Have),
            "another user uploads nothing"
        );
        let back = store.read_chunk(&hash, 100, 10).await.unwrap();
        assert_eq!(&back[..], &data[100..110]);
    }

    #[tokio::test]
    async fn a_corrupt_upload_is_refused_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        let hash = hex(b"the real content");
        let fake = Bytes::from_static(b"other  content!!");
        assert_eq!(
            store.write_chunk(1, &hash, 16, 0, fake).await,
            Err(ErrorKind::Corrupt)
        );
        assert_eq!(store.offer(1, &hash).await, Ok(Offer::Upload { offset: 0 }));
        assert!(!store.has(&hash));
    }
}
