//! File contents in PostgreSQL, for a cluster: any node serves a file another stored.
//!
//! A verified file (files.rs checks its SHA-256 as on one node) is copied into `blobs` in
//! chunks of [`CHUNK`] bytes, then its row in `files` says it is complete; a download reads
//! the part of a chunk (or two) it needs with `substring`. Nothing else has to be shared or
//! mounted on every node, at the cost of PostgreSQL's size and I/O (a file is written to
//! the WAL and the table, and read through the buffer cache); a directory mounted on every
//! node, or NATS JetStream's object store, would keep large files out of the database
//! (docs/ARCHITECTURE.md). The copy is idempotent: chunks first, the `files` row last, so a
//! node that dies half way leaves only chunks that the next upload writes again.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;

use super::PgReader;

/// Bytes per stored chunk.
pub const CHUNK: usize = 256 * 1024;

/// File contents on the cluster's PostgreSQL (sharing the node's read connections).
#[derive(Clone)]
pub struct PgBlobs {
    reader: PgReader,
}

impl std::fmt::Debug for PgBlobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgBlobs")
    }
}

impl PgBlobs {
    pub fn new(reader: PgReader) -> PgBlobs {
        PgBlobs { reader }
    }

    /// The size of the complete file `hash`, if stored.
    pub async fn size(&self, hash: &str) -> anyhow::Result<Option<u64>> {
        let rows = self
            .reader
            .query("SELECT size FROM files WHERE hash = $1", &[&hash])
            .await?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0) as u64))
    }

    /// Copies the verified file at `path` in as `hash`.
    pub async fn store(&self, hash: &str, path: &Path) -> anyhow::Result<u64> {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut size = 0u64;
        let mut chunk: i32 = 0;
        loop {
            let mut data = Vec::with_capacity(CHUNK);
            (&mut file).take(CHUNK as u64).read_to_end(&mut data)?;
            if data.is_empty() && chunk > 0 {
                break;
            }
            size += data.len() as u64;
            self.reader
                .query(
                    "INSERT INTO blobs (hash, chunk, data) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&hash, &chunk, &data],
                )
                .await?;
            chunk += 1;
            if data.len() < CHUNK {
                break;
            }
        }
        let now = crate::store::now_ms();
        let stored = size as i64;
        self.reader
            .query(
                "INSERT INTO files (hash, size, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&hash, &stored, &now],
            )
            .await?;
        Ok(size)
    }

    /// Up to `len` bytes of `hash` from `offset` (empty at the end).
    pub async fn read(&self, hash: &str, offset: u64, len: usize) -> anyhow::Result<Bytes> {
        let mut out = Vec::with_capacity(len);
        let mut at = offset;
        let end = offset + len as u64;
        while at < end {
            let chunk = (at / CHUNK as u64) as i32;
            let within = at % CHUNK as u64;
            let want = (end - at).min(CHUNK as u64 - within);
            // substring counts from 1.
            let (from, count) = (within as i32 + 1, want as i32);
            let rows = self
                .reader
                .query(
                    "SELECT substring(data FROM $3 FOR $4) FROM blobs
                     WHERE hash = $1 AND chunk = $2",
                    &[&hash, &chunk, &from, &count],
                )
                .await?;
            let Some(row) = rows.first() else { break };
            let part: &[u8] = row.get(0);
            out.extend_from_slice(part);
            if (part.len() as u64) < want {
                break;
            }
            at += want;
        }
        Ok(Bytes::from(out))
    }
}
