//! `parley backup` and `parley restore`: a consistent copy of a data directory, taken while
//! the server runs, and a data directory made from one.
//!
//! **Consistency.** A batch's rows are committed before its messages are appended to the
//! log (`LogStore::write`), and a message is acknowledged only after its append. A backup
//! notes where the log's last complete record ends first, then copies the database with
//! SQLite's online backup API in one step (one read transaction, so one snapshot, taken
//! after that point; the server's writer and its passive checkpoints go on meanwhile), then
//! the log up to the noted end. So every message acknowledged before the backup began is in
//! it, and every message in it has its rows (its conversation, its sender) in the copied
//! database. The database may hold rows of a few later batches: a cursor or join point
//! past the copied log is moved back to it at the restored server's start (recovery.rs), and
//! the message-id counter, reserved ahead, keeps new ids above every copied one. Stored
//! files are copied last: a file is complete before a row names it.
//!
//! **Layout.** `DIR/parley.db`, `DIR/messages.log`, `DIR/files/..` as in a data directory,
//! and `DIR/manifest.json`, written last (its presence marks a complete backup): the
//! counts (users, rooms, messages, the last message id) and every file's size and SHA-256.
//! A restore checks each file against the manifest as it copies it into an empty data
//! directory, then runs `parley check` on the result.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::log::{Examined, FILE_NAME as LOG_FILE};
use super::sqlite::database_path;
use super::{now_ms, ANONYMOUS, KIND_ROOM};

/// The manifest's file name in a backup.
pub const MANIFEST: &str = "manifest.json";
/// The manifest layout this parley writes and reads.
const FORMAT: u32 = 1;
const DATABASE_FILE: &str = "parley.db";
const FILES_DIR: &str = "files";

/// What a backup holds, as `manifest.json` says it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The parley version that wrote it.
    pub parley: String,
    /// When the backup began (Unix ms).
    pub created_at: i64,
    /// The database's schema version.
    pub schema_version: i64,
    pub users: i64,
    pub rooms: i64,
    pub conversations: i64,
    /// Messages in the copied log, and the highest id among them.
    pub messages: u64,
    pub last_message_id: i64,
    /// Every file of the backup but the manifest, database and log first.
    pub files: Vec<FileEntry>,
}

/// One file of a backup, by its path relative to the backup's directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Copies `data_dir` into the new directory `out`. `log_end` is where the log's last
/// complete record ends, noted by a running server before the call; `None` for a stopped
/// server's data directory (the whole log is copied: a start cuts a torn tail).
pub fn backup(data_dir: &Path, out: &Path, log_end: Option<u64>) -> anyhow::Result<Manifest> {
    let created_at = now_ms();
    anyhow::ensure!(
        out.is_absolute(),
        "the backup directory {} must be an absolute path",
        out.display()
    );
    empty_dir(out)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let log_end = match log_end {
        Some(end) => end,
        // A crash may have left a torn record at the tail: up to the last whole one.
        None => Examined::open(data_dir)?.scanned.end,
    };
    // The database after the log's end was noted (see the module doc).
    copy_database(data_dir, out)?;
    let mut files = vec![hash_file(out, DATABASE_FILE)?];
    let log = copy_file(&data_dir.join(LOG_FILE), &out.join(LOG_FILE), Some(log_end))
        .context("copying the message log")?;
    files.push(FileEntry {
        path: LOG_FILE.into(),
        ..log
    });
    files.extend(copy_stored_files(data_dir, out)?);

    let (messages, last_message_id) = count_messages(out)?;
    let db = Connection::open(out.join(DATABASE_FILE))?;
    let count = |sql: &str| -> anyhow::Result<i64> { Ok(db.query_row(sql, [], |r| r.get(0))?) };
    let manifest = Manifest {
        format: FORMAT,
        parley: env!("CARGO_PKG_VERSION").into(),
        created_at,
        schema_version: db.pragma_query_value(None, "user_version", |r| r.get(0))?,
        users: count(&format!(
            "SELECT COUNT(*) FROM users WHERE deleted_at IS NULL AND name <> '{ANONYMOUS}'"
        ))?,
        rooms: count(&format!(
            "SELECT COUNT(*) FROM conversations WHERE kind = {KIND_ROOM} AND deleted_at IS NULL"
        ))?,
        conversations: count("SELECT COUNT(*) FROM conversations")?,
        messages,
        last_message_id,
        files,
    };
    drop(db);
    let text = serde_json::to_string_pretty(&manifest)?;
    write_durably(&out.join(MANIFEST), text.as_bytes())?;
    sync_dir(out)?;
    Ok(manifest)
}

/// Makes `data_dir` (absent or empty) from the backup in `from`: every file is checked
/// against the manifest while it is copied (a mismatch is an error), then the result is
/// checked as `parley check` does. Returns the manifest and what the check found.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<(Manifest, super::CheckReport)> {
    let path = from.join(MANIFEST);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (a backup is complete only once it has its manifest)",
            path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text).context("reading the manifest")?;
    anyhow::ensure!(
        manifest.format == FORMAT,
        "backup format {} is not one this parley reads ({FORMAT})",
        manifest.format
    );
    for needed in [DATABASE_FILE, LOG_FILE] {
        anyhow::ensure!(
            manifest.files.iter().any(|f| f.path == needed),
            "the manifest lists no {needed}"
        );
    }
    empty_dir(data_dir)?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    for entry in &manifest.files {
        let relative = safe_relative(&entry.path)?;
        let target = data_dir.join(relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let copied = copy_file(&from.join(relative), &target, None)?;
        anyhow::ensure!(
            (copied.bytes, &copied.sha256) == (entry.bytes, &entry.sha256),
            "{} does not match the manifest ({} bytes, SHA-256 {}; the manifest says {} \
             bytes, {})",
            entry.path,
            copied.bytes,
            copied.sha256,
            entry.bytes,
            entry.sha256
        );
    }
    sync_dir(data_dir)?;
    let report = super::check(data_dir)?;
    Ok((manifest, report))
}

/// Refuses a directory that exists and holds anything.
fn empty_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            anyhow::ensure!(entries.next().is_none(), "{} is not empty", dir.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    }
    Ok(())
}

/// A manifest's path, only if it stays inside the directory it is relative to.
fn safe_relative(path: &str) -> anyhow::Result<&Path> {
    let p = Path::new(path);
    let normal = p.components().all(|c| matches!(c, Component::Normal(_)));
    anyhow::ensure!(
        normal && !path.is_empty(),
        "a bad path in the manifest: {path:?}"
    );
    Ok(p)
}

/// Copies the database with the online backup API, all pages in one step: one read
/// transaction, so one consistent snapshot, while the server's writer goes on.
fn copy_database(data_dir: &Path, out: &Path) -> anyhow::Result<()> {
    let source = Connection::open(database_path(data_dir)).context("opening the database")?;
    source.busy_timeout(Duration::from_secs(5))?;
    let mut target = Connection::open(out.join(DATABASE_FILE))?;
    {
        let backup = Backup::new(&source, &mut target)?;
        // A step that finds the database locked is tried again, for at most 10 s.
        let mut attempts = 0;
        loop {
            match backup.step(-1).context("copying the database")? {
                StepResult::Done => break,
                StepResult::More | StepResult::Busy | StepResult::Locked if attempts < 1000 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => anyhow::bail!("copying the database: still {other:?} after 10 s"),
            }
        }
    }
    // A plain file beside its manifest: no WAL to carry along.
    target.pragma_update(None, "journal_mode", "DELETE")?;
    target
        .close()
        .map_err(|(_, e)| e)
        .context("closing the copy")?;
    Ok(())
}

/// Copies every complete stored file (`files/xx/sha256`; uploads in progress are not).
fn copy_stored_files(data_dir: &Path, out: &Path) -> anyhow::Result<Vec<FileEntry>> {
    let root = data_dir.join(FILES_DIR);
    let mut copied = Vec::new();
    let shards = match std::fs::read_dir(&root) {
        Ok(shards) => shards,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(copied),
        Err(e) => return Err(e).with_context(|| format!("reading {}", root.display())),
    };
    let mut names = Vec::new();
    for shard in shards {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(shard.path())? {
            let file = file?;
            if file.file_type()?.is_file() {
                let relative = Path::new(FILES_DIR)
                    .join(shard.file_name())
                    .join(file.file_name());
                names.push(relative);
            }
        }
    }
    names.sort();
    for relative in names {
        let target = out.join(&relative);
        std::fs::create_dir_all(target.parent().expect("files/xx"))?;
        let entry = copy_file(&data_dir.join(&relative), &target, None)?;
        copied.push(FileEntry {
            path: relative.to_string_lossy().into_owned(),
            ..entry
        });
    }
    Ok(copied)
}

/// Copies `from` (its first `limit` bytes, if given) to the new file `to`, durably; returns
/// the copy's size and SHA-256 (with `path` left empty).
fn copy_file(from: &Path, to: &Path, limit: Option<u64>) -> anyhow::Result<FileEntry> {
    let source = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut source: Box<dyn Read> = match limit {
        Some(limit) => Box::new(source.take(limit)),
        None => Box::new(source),
    };
    let mut target = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 256 * 1024];
    let mut bytes = 0;
    loop {
        let n = source
            .read(&mut buf)
            .with_context(|| format!("reading {}", from.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        target
            .write_all(&buf[..n])
            .with_context(|| format!("writing {}", to.display()))?;
        bytes += n as u64;
    }
    if let Some(limit) = limit {
        anyhow::ensure!(
            bytes == limit,
            "{} is shorter than {limit} bytes",
            from.display()
        );
    }
    target.sync_all()?;
    Ok(FileEntry {
        path: String::new(),
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// The size and SHA-256 of `out/name`.
fn hash_file(out: &Path, name: &str) -> anyhow::Result<FileEntry> {
    let path = out.join(name);
    let mut file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes = std::io::copy(&mut file, &mut hasher)?;
    Ok(FileEntry {
        path: name.into(),
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// How many messages the copied log holds, and the highest id.
fn count_messages(dir: &Path) -> anyhow::Result<(u64, i64)> {
    let log = Examined::open(dir)?;
    anyhow::ensure!(
        log.scanned.end == log.len,
        "the copied message log ends inside a record"
    );
    let (mut count, mut last) = (0, 0);
    log.each(|r| {
        count += 1;
        last = last.max(r.id);
    })?;
    Ok((count, last))
}

fn write_durably(path: &PathBuf, data: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary)?;
    file.write_all(data)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
