//! `parley check --data-dir DIR`: verifies a stopped server's data directory and lists what
//! is unreadable. Nothing is written: a damaged log is repaired by the next start (log.rs),
//! a damaged database by restoring a copy.
//!
//! What it reads: the SQLite database (`PRAGMA integrity_check`, and that its schema version
//! is one this parley knows), every record of the message log (length, CRC, ids ascending),
//! the message index saved at the last clean stop against the log's messages (which lists
//! the messages a damaged record took, by conversation and sequence), and every stored
//! file against the SHA-256 it is named by.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use super::index::{place, read_saved};
use super::log::Examined;
use super::sqlite::{database_path, LATEST_SCHEMA};
use super::ConvId;

/// At most this many problems of one kind are listed one by one (the rest are counted).
const LISTED: usize = 20;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    /// What was read and found whole, a line each.
    pub checked: Vec<String>,
    /// What is unreadable or wrong, a line each. Empty: the data directory is whole.
    pub problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, line: String) {
        self.problems.push(line);
    }

    /// Lists up to [`LISTED`] of `lines`, then how many more there are.
    fn problems_of(&mut self, lines: Vec<String>) {
        let more = lines.len().saturating_sub(LISTED);
        self.problems.extend(lines.into_iter().take(LISTED));
        if more > 0 {
            self.problems.push(format!("... and {more} more like it"));
        }
    }
}

/// Checks the data directory `data_dir` (of a stopped server).
pub fn check(data_dir: &Path) -> anyhow::Result<Report> {
    anyhow::ensure!(
        data_dir.is_dir(),
        "{} is not a directory",
        data_dir.display()
    );
    let mut report = Report::default();
    let db = check_database(data_dir, &mut report);
    let log = match Examined::open(data_dir) {
        Ok(log) => Some(log),
        Err(e) => {
            report.problem(format!("message log: {e:#}"));
            None
        }
    };
    if let Some(log) = &log {
        check_log(log, &mut report);
    }
    if let (Some(db), Some(log)) = (&db, &log) {
        if let Err(e) = check_index(db, log, &mut report) {
            report.problem(format!("message index: {e:#}"));
        }
    }
    if let Err(e) = check_files(data_dir, db.as_ref(), &mut report) {
        report.problem(format!("files: {e:#}"));
    }
    Ok(report)
}

/// The database's integrity and schema version; the connection, if it could be read.
fn check_database(data_dir: &Path, report: &mut Report) -> Option<Connection> {
    let path = database_path(data_dir);
    if !path.exists() {
        report.problem(format!("database {}: missing", path.display()));
        return None;
    }
    let read = || -> anyhow::Result<(Connection, usize, Vec<String>)> {
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let mut stmt = conn.prepare("PRAGMA integrity_check")?;
        let lines = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        Ok((conn, version, lines))
    };
    match read() {
        Ok((conn, version, lines)) => {
            if lines != ["ok"] {
                report.problems_of(
                    lines
                        .into_iter()
                        .map(|l| format!("database {}: {l}", path.display()))
                        .collect(),
                );
            } else if version > LATEST_SCHEMA {
                report.problem(format!(
                    "database {}: schema version {version}, newer than this parley's \
                     ({LATEST_SCHEMA})",
                    path.display()
                ));
            } else {
                report.checked.push(format!(
                    "database {}: integrity ok, schema version {version}",
                    path.display()
                ));
            }
            Some(conn)
        }
        Err(e) => {
            report.problem(format!("database {}: {e:#}", path.display()));
            None
        }
    }
}

/// Every record of the log: damaged bytes between readable records, a tail cut short.
fn check_log(log: &Examined, report: &mut Report) {
    let path = log.path.display();
    let mut problems = Vec::new();
    for (from, to) in &log.scanned.damaged {
        let (before, after) = neighbours(log, *from);
        problems.push(format!(
            "message log {path}: bytes {from} to {to} ({} bytes) unreadable, between \
             message {before} and message {after}: the messages stored there are lost",
            to - from
        ));
    }
    if log.scanned.end < log.len {
        problems.push(format!(
            "message log {path}: the last {} bytes (from {}) are not a whole record: a write \
             cut short (the next start moves them aside) or damage",
            log.len - log.scanned.end,
            log.scanned.end
        ));
    }
    let ok = problems.is_empty();
    report.problems_of(problems);
    let last = log.spans.last().map_or(0, |s| s.last);
    report.checked.push(format!(
        "message log {path}: {} readable records, messages up to {last}, {} bytes{}",
        log.spans.len(),
        log.len,
        if ok { ", every CRC ok" } else { "" }
    ));
}

/// The ids of the messages before and after damaged bytes at `offset`.
fn neighbours(log: &Examined, offset: u64) -> (i64, i64) {
    let i = log.spans.partition_point(|s| s.offset < offset);
    let before = i.checked_sub(1).map_or(0, |i| log.spans[i].last);
    let after = log.spans.get(i).map_or(0, |s| s.first);
    (before, after)
}

/// The index saved at the last clean stop against the messages the log holds: a saved id
/// the log lacks is a message lost to damage (or a log cut after that stop).
fn check_index(db: &Connection, log: &Examined, report: &mut Report) -> anyhow::Result<()> {
    let mut saved: HashMap<ConvId, Vec<i64>, ahash::RandomState> = HashMap::default();
    let covered = read_saved(db, &mut saved).context("reading the saved index")?;
    if covered == 0 {
        report
            .checked
            .push("message index: none saved (the last stop was not clean)".into());
        return Ok(());
    }
    let mut stored: HashMap<ConvId, Vec<i64>, ahash::RandomState> = HashMap::default();
    log.each(|m| {
        if m.id <= covered {
            place(stored.entry(m.conv).or_default(), m.seq, m.id);
        }
    })?;
    let mut missing = Vec::new();
    let mut convs: Vec<_> = saved.iter().collect();
    convs.sort_unstable_by_key(|(conv, _)| **conv);
    for (conv, ids) in convs {
        let have = stored.get(conv).map_or(&[][..], |v| v.as_slice());
        for (i, &id) in ids.iter().enumerate() {
            let gap_copy = id == 0 || (i > 0 && ids[i - 1] == id);
            if !gap_copy && have.get(i) != Some(&id) {
                missing.push((*conv, i + 1, id));
            }
        }
    }
    if missing.is_empty() {
        report.checked.push(format!(
            "message index: {} conversations saved up to message {covered}, every message \
             in the log",
            saved.len()
        ));
    } else {
        let mut line = String::new();
        let lines = missing
            .iter()
            .map(|(conv, seq, id)| {
                line.clear();
                let _ = write!(
                    line,
                    "message {id} (conversation {conv}, sequence {seq}): named by the saved \
                     index, unreadable in the log"
                );
                line.clone()
            })
            .collect();
        report.problems_of(lines);
    }
    Ok(())
}

/// Every stored file against its name (its SHA-256), and every file the database lists.
fn check_files(
    data_dir: &Path,
    db: Option<&Connection>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let root = data_dir.join("files");
    let mut problems = Vec::new();
    let mut checked = 0;
    if root.is_dir() {
        for prefix in std::fs::read_dir(&root)? {
            let prefix = prefix?.path();
            if !prefix.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&prefix)? {
                let path = file?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                checked += 1;
                match sha256_hex(&path) {
                    Ok(hash) if hash == name => {}
                    Ok(hash) => problems.push(format!(
                        "file {}: its content's SHA-256 is {hash}",
                        path.display()
                    )),
                    Err(e) => problems.push(format!("file {}: {e:#}", path.display())),
                }
            }
        }
    }
    if let Some(db) = db {
        let mut stmt = db.prepare("SELECT hash FROM files")?;
        let hashes = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        for hash in hashes {
            if hash.len() < 2 || !root.join(&hash[..2]).join(&hash).is_file() {
                problems.push(format!("file {hash}: listed in the database, missing"));
            }
        }
    }
    let ok = problems.is_empty();
    report.problems_of(problems);
    if ok {
        report.checked.push(format!(
            "files: {checked} checked, each matches its SHA-256"
        ));
    }
    Ok(())
}

fn sha256_hex(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut hex = String::with_capacity(64);
    for b in hasher.finalize() {
        let _ = write!(hex, "{b:02x}");
    }
    Ok(hex)
}
