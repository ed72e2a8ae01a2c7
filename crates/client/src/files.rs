//! Files: uploads announced by their SHA-256 (the server may already hold the content, or
//! part of it), sent in chunks; downloads into a `.part` file that a later attempt
//! continues, verified against the SHA-256 before they take their name. Both go on across
//! reconnects.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use parley_proto::binary::{code, Frame};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::requests::Target;
use crate::{Connection, Error, Link};

/// The most data one chunk or file-data frame carries.
pub const CHUNK: usize = 61_440;
/// Chunk requests in flight at once: enough to keep a link busy across its round trips.
const WINDOW: usize = 8;

/// A file as a file message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// 64 lower-case hex characters.
    pub sha256: String,
    pub size: u64,
    pub name: String,
    pub mime: String,
}

impl FileInfo {
    /// Reads the description the server puts at the start of a file message's text:
    /// `[file name="report.pdf" size=1048576 type=application/pdf sha256=…] caption`.
    /// Returns it and the caption.
    pub fn parse(text: &str) -> Option<(FileInfo, &str)> {
        let rest = text.strip_prefix("[file name=\"")?;
        let (name, rest) = rest.split_once("\" size=")?;
        let (size, rest) = rest.split_once(" type=")?;
        let (mime, rest) = rest.split_once(" sha256=")?;
        let (sha256, caption) = rest.split_once(']')?;
        let valid = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        valid.then_some(())?;
        Some((
            FileInfo {
                sha256: sha256.to_string(),
                size: size.parse().ok()?,
                name: name.to_string(),
                mime: mime.to_string(),
            },
            caption.strip_prefix(' ').unwrap_or(caption),
        ))
    }
}

/// The SHA-256 of a file, read in pieces.
pub async fn sha256_file(path: &Path) -> Result<(String, u64), Error> {
    let mut file = open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await.map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Local(format!("{}: {e}", path.display()))
}

async fn open(path: &Path) -> Result<tokio::fs::File, Error> {
    tokio::fs::File::open(path).await.map_err(|e| io(path, e))
}

/// A guess at a file's media type from its extension.
pub fn mime_for(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "txt" | "md" | "log" => "text/plain",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

impl Connection {
    /// Announces content: `(true, size)` if the server holds it, else `(false, offset)` to
    /// upload from.
    pub async fn file_offer(&self, sha256: &str, size: u64) -> Result<(bool, u64), Error> {
        let reply = self
            .request(|cid| Frame::FileOffer {
                cid,
                sha256: Bytes::copy_from_slice(sha256.as_bytes()),
                size,
            })
            .await?;
        match reply.first() {
            Some(Frame::FileStatus { have, offset, .. }) => Ok((*have == 1, *offset)),
            other => Err(Error::Protocol(format!(
                "expected FileStatus, got {other:?}"
            ))),
        }
    }

    /// One piece of the file at `offset` (at most `CHUNK` bytes). The request is queued
    /// at once, so several can be in flight.
    pub fn file_data(
        &self,
        sha256: &str,
        offset: u64,
        len: u32,
    ) -> impl std::future::Future<Output = Result<Bytes, Error>> + Send + 'static {
        let answer = self.start(|cid| Frame::Download {
            cid,
            sha256: Bytes::copy_from_slice(sha256.as_bytes()),
            offset,
            length: len,
        });
        async move {
            match answer.await?.into_iter().next() {
                Some(Frame::FileData {
                    data, offset: at, ..
                }) if at == offset => Ok(data),
                other => Err(Error::Protocol(format!("expected FileData, got {other:?}"))),
            }
        }
    }
}

impl Link {
    /// Uploads `path` (unless the server has it already), calling `progress(done, total)`
    /// as chunks are stored; a dropped connection resumes where the server's copy ends.
    /// Returns the file's description (name from the path, type from its extension).
    pub async fn upload(
        &self,
        path: &Path,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<FileInfo, Error> {
        let (sha256, size) = sha256_file(path).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let info = FileInfo {
            sha256,
            size,
            name,
            mime: mime_for(path).to_string(),
        };
        loop {
            let conn = self.connection().await?;
            match upload_once(&conn, path, &info, &mut progress).await {
                Err(e) if e.is_transient() => conn.close(),
                Err(Error::Refused(code::BAD_TRANSFER)) => {
                    // The offset moved under us (another upload of the same content): ask again.
                    let (have, _) = conn.file_offer(&info.sha256, info.size).await?;
                    if have {
                        return Ok(info);
                    }
                    return Err(Error::Refused(code::BAD_TRANSFER));
                }
                other => return other.map(|()| info),
            }
        }
    }

    /// Sends a message carrying an uploaded file, exactly once (as `send`).
    pub async fn send_file(
        &self,
        to: &Target,
        file: &FileInfo,
        caption: &str,
        time: u64,
    ) -> Result<(), Error> {
        self.exactly_once(to, time, |conn| {
            let frame = |cid| Frame::SendFile {
                cid,
                target_kind: match to {
                    Target::User(_) => 1,
                    Target::Room(_) => 2,
                },
                target: Bytes::copy_from_slice(to.name().as_bytes()),
                sha256: Bytes::copy_from_slice(file.sha256.as_bytes()),
                name: Bytes::copy_from_slice(file.name.as_bytes()),
                mime: Bytes::copy_from_slice(file.mime.as_bytes()),
                caption: Bytes::copy_from_slice(caption.as_bytes()),
                time,
            };
            async move { conn.request(frame).await.map(drop) }
        })
        .await
    }

    /// Downloads `file` to `dest`, through `dest` + `.part`: bytes already there (from an
    /// attempt that was cut) are kept and the download continues after them. The result is
    /// checked against the file's SHA-256 before it is renamed to `dest`; a mismatch
    /// deletes the part file.
    pub async fn download(
        &self,
        file: &FileInfo,
        dest: &Path,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<(), Error> {
        let part = part_path(dest);
        let mut out = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&part)
            .await
            .map_err(|e| io(&part, e))?;
        // What is there already counts towards the hash.
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        {
            let mut buf = vec![0; 256 * 1024];
            out.seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| io(&part, e))?;
            loop {
                let n = out.read(&mut buf).await.map_err(|e| io(&part, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                have += n as u64;
            }
        }
        if have > file.size {
            drop(out);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::Local(format!(
                "{} was longer than the file: removed, try again",
                part.display()
            )));
        }
        progress(have, file.size);
        while have < file.size {
            let conn = self.connection().await?;
            let (added, result) =
                download_window(&conn, file, have, &mut out, &mut hasher, &part).await;
            have += added;
            progress(have, file.size);
            match result {
                Ok(()) if added == 0 => {
                    return Err(Error::Protocol(format!(
                        "the server's copy ends at {have} of {} bytes",
                        file.size
                    )))
                }
                Ok(()) => {}
                Err(e) if e.is_transient() => conn.close(),
                Err(e) => return Err(e),
            }
        }
        out.flush().await.map_err(|e| io(&part, e))?;
        out.sync_all().await.map_err(|e| io(&part, e))?;
        drop(out);
        let got = hex(&hasher.finalize());
        if got != file.sha256 {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::Local(format!(
                "{}: SHA-256 {got} does not match {} (removed)",
                file.name, file.sha256
            )));
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| io(dest, e))
    }
}

/// Where a download in progress lives.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// Offers the file and sends what the server lacks, `WINDOW` chunks in flight.
async fn upload_once(
    conn: &Connection,
    path: &Path,
    info: &FileInfo,
    progress: &mut (impl FnMut(u64, u64) + Send),
) -> Result<(), Error> {
    let (have, mut offset) = conn.file_offer(&info.sha256, info.size).await?;
    if have {
        progress(info.size, info.size);
        return Ok(());
    }
    let mut file = open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| io(path, e))?;
    progress(offset, info.size);
    let mut in_flight = std::collections::VecDeque::new();
    while offset < info.size || !in_flight.is_empty() {
        while offset < info.size && in_flight.len() < WINDOW {
            let len = CHUNK.min((info.size - offset) as usize);
            let mut data = vec![0; len];
            file.read_exact(&mut data).await.map_err(|e| io(path, e))?;
            let (sha256, size, at) = (
                Bytes::copy_from_slice(info.sha256.as_bytes()),
                info.size,
                offset,
            );
            let frame = move |cid| Frame::FileChunk {
                cid,
                sha256,
                size,
                offset: at,
                data: Bytes::from(data),
            };
            let end = offset + len as u64;
            // Queued now, in offset order; answered in the same order.
            in_flight.push_back((conn.start(frame), end));
            offset = end;
        }
        if let Some((answer, end)) = in_flight.pop_front() {
            answer.await?;
            progress(end, info.size);
        }
    }
    Ok(())
}

/// Up to `WINDOW` chunks from `from`, appended to `out` in order. Returns the bytes added
/// and how the window ended: what arrived before a failure is kept.
async fn download_window(
    conn: &Connection,
    file: &FileInfo,
    from: u64,
    out: &mut tokio::fs::File,
    hasher: &mut Sha256,
    part: &Path,
) -> (u64, Result<(), Error>) {
    let mut requests = Vec::new();
    let mut at = from;
    while at < file.size && requests.len() < WINDOW {
        let len = CHUNK.min((file.size - at) as usize) as u32;
        requests.push((conn.file_data(&file.sha256, at, len), len as usize));
        at += u64::from(len);
    }
    let mut added = 0u64;
    let mut requests = requests.into_iter();
    let result = loop {
        let Some((request, len)) = requests.next() else {
            break Ok(());
        };
        let data = match request.await {
            Ok(data) => data,
            Err(e) => break Err(e),
        };
        if let Err(e) = out.write_all(&data).await {
            break Err(io(part, e));
        }
        hasher.update(&data);
        added += data.len() as u64;
        if data.len() != len {
            // A short piece: the ones after it start at the wrong place.
            break Ok(());
        }
    };
    (added, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_file_message() {
        let sha = "ab".repeat(32);
        let text = format!(
            "[file name=\"my report.pdf\" size=1048576 type=application/pdf sha256={sha}] see p. 3"
        );
        let (info, caption) = FileInfo::parse(&text).unwrap();
        assert_eq!(info.name, "my report.pdf");
        assert_eq!(info.size, 1_048_576);
        assert_eq!(info.mime, "application/pdf");
        assert_eq!(info.sha256, sha);
        assert_eq!(caption, "see p. 3");
        assert!(FileInfo::parse("[file name=\"x\" size=1 type=a sha256=zz]").is_none());
        assert!(FileInfo::parse("hello").is_none());
    }
}
