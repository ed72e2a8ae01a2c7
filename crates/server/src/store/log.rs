//! The message log: every stored message, in id order, appended to one file.
//!
//! Messages were rows of a SQLite table (a row per message, then a block of them per row).
//! Every page of that table went through the WAL (two `pwrite` calls a page) and was copied
//! into the database file again by the checkpoint: half of the hub thread's time and most
//! of the checkpoint thread's at full load. Messages are never changed or removed, so they
//! need none of what SQLite adds: a group commit now appends its blocks (blocks.rs) to this
//! file with one `pwrite`, and SQLite keeps the rest (users, rooms, cursors, ...).
//!
//! Layout: an 8-byte header (`PARLEYL1`), then records, one block each:
//! `u32 LE payload length | u32 LE CRC-32 of the payload | payload`. Nothing is rewritten.
//!
//! Damage costs only the damaged records. A crash can only cut the tail: a start reads the
//! records after the spans saved at the last clean stop, and where one fails its length or
//! CRC check it looks for the next record that passes (`resync`). If one follows, the bytes
//! between are damage in the middle: they stay where they are, skipped and reported, and
//! everything after them is kept. If none follows, the log was cut short: the bytes from
//! the failed record on are moved to a side file (`messages.log.cut-<offset>`) and the log
//! is cut back; those messages were never acknowledged, since an OK follows the write. A
//! record that fails its check when read later (damaged after it was written) is reported
//! once and read as missing: a catch-up goes on past it. `parley check` reads every record
//! (check.rs). This is what PostgreSQL does with a page that fails its checksum (an error
//! naming it, the rest of the table readable) and NATS with a damaged message block (the
//! damaged messages skipped and reported, the rest of the stream kept).
//!
//! Readers find a message by its id through the spans: per record its first and last id
//! and where it lies, in memory (32 bytes a record, under half a byte per small message),
//! saved at a clean stop beside the message index so that a start reads only what came
//! after them.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use rusqlite::Connection;

use super::blocks::{self, Record, Records};
use super::{varint, NewMessage};

/// The log's file inside the data directory.
pub(super) const FILE_NAME: &str = "messages.log";
const MAGIC: &[u8; 8] = b"PARLEYL1";
/// Where the first record starts.
const START: u64 = MAGIC.len() as u64;
/// A record's length and CRC.
const RECORD_HEADER: u64 = 8;
/// Saved spans per row of `message_spans`.
const SPANS_PER_ROW: usize = 65_536;

/// Where one record lies, and the ids of its first and last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub first: i64,
    pub last: i64,
    /// Of the record's header.
    pub offset: u64,
    /// Of the payload.
    pub len: u32,
}

impl Span {
    fn end(&self) -> u64 {
        self.offset + RECORD_HEADER + u64::from(self.len)
    }
}

/// The log, shared by the writer (the hub thread) and the readers.
pub struct MessageLog {
    file: File,
    path: PathBuf,
    /// Every readable record's span, in id order (and file order); damaged bytes lie
    /// between two spans.
    spans: RwLock<Vec<Span>>,
    /// Offsets of the records found damaged when read, each reported once.
    damaged: Mutex<BTreeSet<u64>>,
    /// Damaged stretches found so far: at start, and when read later (`/metrics`).
    damaged_found: AtomicU64,
}

/// What a read of one record found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Block {
    Whole,
    /// The record fails its CRC or length check: its messages are lost (reported).
    Damaged,
}

/// The appending side, owned by the store's writer.
pub(super) struct LogWriter {
    log: Arc<MessageLog>,
    /// Where the next record goes.
    end: u64,
    /// Every append is made durable before it returns (`sync = "full"`).
    sync: bool,
    /// One append's records, and scratch space for a block, kept between appends.
    buf: Vec<u8>,
    block: Vec<u8>,
    pending: Vec<Span>,
    /// Set when a failed append could not be cut back: nothing more is appended (the next
    /// start cuts the log where its checks fail).
    broken: bool,
}

impl MessageLog {
    /// Opens the log in `data_dir`, creating it if needed. `saved` are the spans saved at
    /// the last clean stop, used if they still describe the file; every record after them
    /// is read and checked, and the first that fails ends the log (see the module doc).
    pub(super) fn open(
        data_dir: &Path,
        sync: bool,
        saved: Vec<Span>,
    ) -> anyhow::Result<(Arc<MessageLog>, LogWriter)> {
        let path = data_dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        if len == 0 {
            file.write_all_at(MAGIC, 0)?;
            file.sync_all()?;
        } else {
            let mut magic = [0; MAGIC.len()];
            let read = file.read_exact_at(&mut magic, 0);
            anyhow::ensure!(
                read.is_ok() && &magic == MAGIC,
                "{} is not a parley message log",
                path.display()
            );
        }
        let len = file.metadata()?.len();
        let mut spans = match spans_fit(&saved, len) {
            true => saved,
            false => {
                if !saved.is_empty() {
                    tracing::warn!("saved spans of the message log do not fit it; reading it all");
                }
                Vec::new()
            }
        };
        let from = spans.last().map_or(START, Span::end);
        let scanned = scan(&file, from, len, &mut spans)?;
        for (at, to) in &scanned.damaged {
            tracing::error!(
                offset = at,
                bytes = to - at,
                file = %path.display(),
                "damaged records in the message log: their messages are lost, every other \
                 one is kept (parley check lists them)"
            );
        }
        if scanned.end < len {
            cut(&file, &path, scanned.end, len)?;
        }
        let end = scanned.end;
        let log = Arc::new(MessageLog {
            file,
            path,
            spans: RwLock::new(spans),
            damaged: Mutex::new(BTreeSet::new()),
            damaged_found: AtomicU64::new(scanned.damaged.len() as u64),
        });
        let writer = LogWriter {
            log: log.clone(),
            end,
            sync,
            buf: Vec::new(),
            block: Vec::new(),
            pending: Vec::new(),
            broken: false,
        };
        Ok((log, writer))
    }

    /// The id of the last stored message (0 for none).
    pub(super) fn last_id(&self) -> i64 {
        self.spans().last().map_or(0, |s| s.last)
    }

    /// Calls `f` with every stored message whose id is above `after`, in id order.
    pub(super) fn each_after(
        &self,
        after: i64,
        mut f: impl FnMut(&Record<'_>),
    ) -> anyhow::Result<()> {
        let spans: Vec<Span> = {
            let spans = self.spans();
            let from = spans.partition_point(|s| s.last <= after);
            spans[from..].to_vec()
        };
        let mut data = Vec::new();
        for span in &spans {
            if self.read(span, &mut data)? == Block::Damaged {
                continue;
            }
            let mut records = Records::new(&data)?;
            while let Some(r) = records.next()? {
                if r.id > after {
                    f(&r);
                }
            }
        }
        Ok(())
    }

    /// How many damaged stretches of the log have been found since it was opened: each
    /// run of damaged bytes the start skipped, and each record that failed its check when
    /// read later (each counted once). Their messages are lost; `parley check` lists them.
    pub fn damaged_found(&self) -> u64 {
        self.damaged_found.load(Ordering::Relaxed)
    }

    /// Where the last complete record ends: everything before it is acknowledged or
    /// about to be (a backup copies the log up to here).
    pub fn end(&self) -> u64 {
        self.spans().last().map_or(START, Span::end)
    }

    /// Makes everything appended so far durable.
    pub(super) fn sync(&self) -> anyhow::Result<()> {
        self.file
            .sync_data()
            .with_context(|| format!("syncing {}", self.path.display()))
    }

    /// The spans, to save at a clean stop.
    pub(super) fn spans(&self) -> std::sync::RwLockReadGuard<'_, Vec<Span>> {
        self.spans.read().expect("message log spans poisoned")
    }

    /// The span of the first record whose last id is not below `id`.
    pub(super) fn span_of(&self, id: i64) -> Option<Span> {
        let spans = self.spans();
        spans.get(spans.partition_point(|s| s.last < id)).copied()
    }

    /// Reads the payload of the record at `span` into `data`, checking it (one `pread` for
    /// the header and the payload). A record that fails its check is reported (once) and
    /// read as [`Block::Damaged`]; only a failed read is an error.
    pub(super) fn read(&self, span: &Span, data: &mut Vec<u8>) -> anyhow::Result<Block> {
        let header = RECORD_HEADER as usize;
        data.resize(header + span.len as usize, 0);
        self.file
            .read_exact_at(data, span.offset)
            .with_context(|| {
                format!(
                    "reading the block of messages {} to {}",
                    span.first, span.last
                )
            })?;
        let (len, crc) = parse_header(data[..header].try_into().expect("a header's bytes"));
        if len != span.len || crc != crc32fast::hash(&data[header..]) {
            let new = self
                .damaged
                .lock()
                .expect("damaged records poisoned")
                .insert(span.offset);
            if new {
                self.damaged_found.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    first = span.first,
                    last = span.last,
                    offset = span.offset,
                    file = %self.path.display(),
                    "a block of the message log is damaged: its messages are lost, every \
                     other one is kept (parley check lists them)"
                );
            }
            data.clear();
            return Ok(Block::Damaged);
        }
        data.drain(..header);
        Ok(Block::Whole)
    }
}

impl LogWriter {
    /// The log this writer appends to.
    pub(super) fn log(&self) -> Arc<MessageLog> {
        self.log.clone()
    }

    /// The id of the last stored message (0 for none).
    pub(super) fn last_id(&self) -> i64 {
        self.log.last_id()
    }

    /// Makes everything appended so far durable.
    pub(super) fn sync(&self) -> anyhow::Result<()> {
        self.log.sync()
    }

    /// Appends `messages` (ids ascending, above every stored one) with one write; they are
    /// readable once this returns. On an error nothing of them is kept.
    pub(super) fn append(&mut self, messages: &[NewMessage]) -> anyhow::Result<()> {
        let Some(first) = messages.first() else {
            return Ok(());
        };
        anyhow::ensure!(!self.broken, "the message log stopped after a failed write");
        let below = self.log.last_id();
        anyhow::ensure!(
            first.id > below,
            "message {} stored after message {below}: ids must ascend",
            first.id
        );
        self.buf.clear();
        self.pending.clear();
        let (buf, pending) = (&mut self.buf, &mut self.pending);
        let mut at = self.end;
        blocks::each_block(messages, &mut self.block, |first, last, data| {
            at = put_record(buf, pending, at, (first, last), data)?;
            Ok(())
        })?;
        self.write(at)
    }

    /// Appends a block as it was stored before the log (the move of an older database),
    /// after checking it.
    pub(super) fn append_block(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let mut records = Records::new(data)?;
        let (mut first, mut last) = (None, 0);
        while let Some(r) = records.next()? {
            first.get_or_insert(r.id);
            last = r.id;
        }
        let Some(first) = first else { return Ok(()) };
        let below = self.log.last_id();
        anyhow::ensure!(
            first > below,
            "message {first} stored after message {below}: ids must ascend"
        );
        self.buf.clear();
        self.pending.clear();
        let end = put_record(
            &mut self.buf,
            &mut self.pending,
            self.end,
            (first, last),
            data,
        )?;
        self.write(end)
    }

    /// Writes `buf` at the end, then makes `pending` visible; `end` is the new end.
    fn write(&mut self, end: u64) -> anyhow::Result<()> {
        let file = &self.log.file;
        let mut written = file.write_all_at(&self.buf, self.end);
        if written.is_ok() && self.sync {
            written = file.sync_data();
        }
        if let Err(e) = written {
            // Part of it may be in the file: what is not acknowledged must not be found
            // after a restart either.
            if let Err(cut) = file.set_len(self.end) {
                self.broken = true;
                tracing::error!(error = %cut, "cutting back a failed append to the message log");
            }
            return Err(e).context("appending to the message log");
        }
        self.end = end;
        let mut spans = self.log.spans.write().expect("spans poisoned");
        spans.extend_from_slice(&self.pending);
        Ok(())
    }
}

/// The log of `data_dir` read as it is, for `parley check`: nothing is cut or written.
pub(super) struct Examined {
    pub path: PathBuf,
    pub len: u64,
    /// Every readable record.
    pub spans: Vec<Span>,
    pub scanned: Scanned,
    file: File,
}

impl Examined {
    /// Opens the log read-only and reads every record's header and CRC.
    pub fn open(data_dir: &Path) -> anyhow::Result<Examined> {
        let path = data_dir.join(FILE_NAME);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        let mut magic = [0; MAGIC.len()];
        anyhow::ensure!(
            file.read_exact_at(&mut magic, 0).is_ok() && &magic == MAGIC,
            "{} is not a parley message log",
            path.display()
        );
        let mut spans = Vec::new();
        let scanned = scan(&file, START, len, &mut spans)?;
        Ok(Examined {
            path,
            len,
            spans,
            scanned,
            file,
        })
    }

    /// Calls `f` with every message of the readable records, in id order.
    pub fn each(&self, mut f: impl FnMut(&Record<'_>)) -> anyhow::Result<()> {
        let mut data = Vec::new();
        for span in &self.spans {
            data.resize(span.len as usize, 0);
            self.file
                .read_exact_at(&mut data, span.offset + RECORD_HEADER)?;
            let mut records = Records::new(&data)?;
            while let Some(r) = records.next()? {
                f(&r);
            }
        }
        Ok(())
    }
}

/// Finds messages by id, keeping the last block it read: ids asked for in ascending order
/// read each block once. The readers go through the shared cache of blocks
/// (`block_cache.rs`); the tests read the log through this, without a cache.
#[cfg(test)]
pub(super) struct Lookup<'l> {
    log: &'l MessageLog,
    /// The block read last, and the ids it spans (none read yet: an empty span).
    data: Vec<u8>,
    span: (i64, i64),
    /// Where the scan stopped in `data`, and the id of the record before that point.
    at: usize,
    previous: i64,
    /// The block read last is damaged: its ids are lost.
    damaged: bool,
}

#[cfg(test)]
impl<'l> Lookup<'l> {
    pub fn new(log: &'l MessageLog) -> Self {
        Lookup {
            log,
            data: Vec::new(),
            span: (1, 0),
            at: 0,
            previous: 0,
            damaged: false,
        }
    }

    /// Whether the id asked for last lies in a damaged block (and so was not found).
    pub fn lost(&self, id: i64) -> bool {
        self.damaged && (self.span.0..=self.span.1).contains(&id)
    }

    /// Message `id`, if stored.
    pub fn find(&mut self, id: i64) -> anyhow::Result<Option<Record<'_>>> {
        if !(self.span.0..=self.span.1).contains(&id) {
            let Some(span) = self.log.span_of(id) else {
                return Ok(None);
            };
            self.damaged = self.log.read(&span, &mut self.data)? == Block::Damaged;
            self.span = (span.first, span.last);
            (self.at, self.previous) = (0, 0);
            if id < span.first {
                return Ok(None);
            }
        }
        if self.damaged {
            return Ok(None);
        }
        let mut records = if self.at == 0 || id <= self.previous {
            Records::new(&self.data)?
        } else {
            Records {
                rest: &self.data[self.at..],
                previous: self.previous,
            }
        };
        let found = loop {
            match records.next()? {
                Some(r) if r.id < id => continue,
                Some(r) if r.id == id => break Some(r),
                Some(_) => break None,
                None if records.previous < self.span.1 => {
                    anyhow::bail!("the block of messages up to {} ends early", self.span.1)
                }
                None => break None,
            }
        };
        (self.at, self.previous) = (self.data.len() - records.rest.len(), records.previous);
        Ok(found)
    }
}

/// Frames `data` (the block of messages `ids.0` to `ids.1`) as a record at `at` in `buf`,
/// its span in `spans`; returns where the record ends.
fn put_record(
    buf: &mut Vec<u8>,
    spans: &mut Vec<Span>,
    at: u64,
    ids: (i64, i64),
    data: &[u8],
) -> anyhow::Result<u64> {
    let len = u32::try_from(data.len()).context("a block over 4 GiB")?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    buf.extend_from_slice(data);
    let span = Span {
        first: ids.0,
        last: ids.1,
        offset: at,
        len,
    };
    spans.push(span);
    Ok(span.end())
}

fn parse_header(header: &[u8; RECORD_HEADER as usize]) -> (u32, u32) {
    let (len, crc) = header.split_at(4);
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("four bytes"));
    (word(len), word(crc))
}

/// Whether `spans` (saved at a clean stop) lie one after the other from the first record on
/// (with damaged bytes between two, at most), with ids ascending, within a file of `len`
/// bytes.
fn spans_fit(spans: &[Span], len: u64) -> bool {
    let mut at = START;
    let mut below = 0;
    for s in spans {
        if s.offset < at || s.first <= below || s.last < s.first {
            return false;
        }
        (at, below) = (s.end(), s.last);
    }
    at <= len
}

/// What a scan of the log found.
#[derive(Debug, Default)]
pub(super) struct Scanned {
    /// Where the last readable record ends: past it is a tail that was cut short.
    pub end: u64,
    /// Damaged bytes with a readable record after them: (from, to) offsets.
    pub damaged: Vec<(u64, u64)>,
}

/// Reads the records from `from` on, appending their spans. A record that fails its checks
/// is damage in the middle if a readable record follows it (`resync`), else where the log
/// ends.
pub(super) fn scan(
    file: &File,
    from: u64,
    len: u64,
    spans: &mut Vec<Span>,
) -> anyhow::Result<Scanned> {
    let mut scanned = Scanned::default();
    let mut at = from;
    loop {
        let below = spans.last().map_or(0, |s| s.last);
        at = scan_run(file, at, len, spans)?;
        match resync(file, at, len, below)? {
            Some(next) => {
                scanned.damaged.push((at, next));
                at = next;
            }
            None => {
                scanned.end = at;
                return Ok(scanned);
            }
        }
    }
}

/// Reads readable records from `from` on, appending their spans; returns where the last
/// one ends.
fn scan_run(file: &File, from: u64, len: u64, spans: &mut Vec<Span>) -> anyhow::Result<u64> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(from))?;
    let mut at = from;
    let mut below = spans.last().map_or(0, |s| s.last);
    let mut data = Vec::new();
    loop {
        let mut header = [0; RECORD_HEADER as usize];
        if len - at < RECORD_HEADER || reader.read_exact(&mut header).is_err() {
            return Ok(at);
        }
        let (size, crc) = parse_header(&header);
        if size == 0 || u64::from(size) > len - at - RECORD_HEADER {
            return Ok(at);
        }
        data.resize(size as usize, 0);
        if reader.read_exact(&mut data).is_err() || crc32fast::hash(&data) != crc {
            return Ok(at);
        }
        let Some((first, last)) = ids_of(&data, below) else {
            return Ok(at);
        };
        let span = Span {
            first,
            last,
            offset: at,
            len: size,
        };
        (at, below) = (span.end(), last);
        spans.push(span);
    }
}

/// The largest record `resync` takes for one: no block is near it (a block is about a page,
/// or one message), and a bound keeps a search through damaged bytes from checking CRCs
/// over most of the file.
const RESYNC_MAX_RECORD: u64 = 64 << 20;

/// The offset of the first readable record after a record at `bad` that failed its checks
/// (its ids above `below`), if there is one: the damaged record's own length is tried
/// first, then every offset. A candidate must have a plausible length, a block's version
/// byte and a first id above `below` before its CRC is computed.
pub(super) fn resync(file: &File, bad: u64, len: u64, below: i64) -> anyhow::Result<Option<u64>> {
    let readable = |at: u64| -> anyhow::Result<bool> {
        if len.saturating_sub(at) <= RECORD_HEADER {
            return Ok(false);
        }
        let mut header = [0; RECORD_HEADER as usize];
        file.read_exact_at(&mut header, at)?;
        let (size, crc) = parse_header(&header);
        let size = u64::from(size);
        if size == 0 || size > RESYNC_MAX_RECORD || size > len - at - RECORD_HEADER {
            return Ok(false);
        }
        let mut data = vec![0; size as usize];
        file.read_exact_at(&mut data, at + RECORD_HEADER)?;
        Ok(crc32fast::hash(&data) == crc && ids_of(&data, below).is_some())
    };
    // A flipped byte in the payload leaves the length whole: the next record is where it
    // says.
    let mut header = [0; RECORD_HEADER as usize];
    if len.saturating_sub(bad) > RECORD_HEADER && file.read_exact_at(&mut header, bad).is_ok() {
        let next = bad + RECORD_HEADER + u64::from(parse_header(&header).0);
        if next > bad + RECORD_HEADER && readable(next)? {
            return Ok(Some(next));
        }
    }
    // Else every offset, through a window of the file: most fail on their first bytes.
    const WINDOW: usize = 1 << 20;
    const PEEK: usize = RECORD_HEADER as usize + 1 + varint::MAX_LEN;
    let mut window = vec![0; WINDOW + PEEK];
    let mut base = bad + 1;
    while base < len {
        let n = (len - base).min((WINDOW + PEEK) as u64) as usize;
        file.read_exact_at(&mut window[..n], base)?;
        let last = n.min(WINDOW);
        for i in 0..last {
            let at = base + i as u64;
            let rest = &window[i..n];
            if rest.len() <= RECORD_HEADER as usize + 1 {
                return Ok(None);
            }
            let (size, _) = parse_header(rest[..8].try_into().expect("eight bytes"));
            let size = u64::from(size);
            if size == 0 || size > RESYNC_MAX_RECORD || size > len - at - RECORD_HEADER {
                continue;
            }
            if rest[8] != blocks::VERSION {
                continue;
            }
            let mut first = &rest[9..];
            match varint::take(&mut first) {
                Ok(id) if (id as i64) > below => {}
                _ => continue,
            }
            if readable(at)? {
                return Ok(Some(at));
            }
        }
        base += last as u64;
    }
    Ok(None)
}

/// The first and last id of a block whose ids all lie above `below`; `None` if it is not
/// such a block.
fn ids_of(data: &[u8], below: i64) -> Option<(i64, i64)> {
    let mut records = Records::new(data).ok()?;
    let mut first = None;
    let mut last = below;
    while let Some(r) = records.next().ok()? {
        if r.id <= last {
            return None;
        }
        first.get_or_insert(r.id);
        last = r.id;
    }
    first.map(|first| (first, last))
}

/// Moves the bytes from `end` on to a side file and cuts the log back to `end`.
fn cut(file: &File, path: &Path, end: u64, len: u64) -> anyhow::Result<()> {
    let side = PathBuf::from(format!("{}.cut-{end}", path.display()));
    let mut tail = Vec::new();
    let mut reader = file;
    reader.seek(SeekFrom::Start(end))?;
    reader.take(len - end).read_to_end(&mut tail)?;
    std::fs::write(&side, &tail).with_context(|| format!("writing {}", side.display()))?;
    file.set_len(end)?;
    file.sync_all()?;
    tracing::warn!(
        bytes = len - end,
        kept_in = %side.display(),
        "the message log ended in a record that was cut short or damaged; cut it off"
    );
    Ok(())
}

/// Saves `spans` (at a clean stop, inside the caller's transaction).
pub(super) fn save_spans(tx: &Connection, spans: &[Span]) -> anyhow::Result<()> {
    tx.execute("DELETE FROM message_spans", [])?;
    let mut insert = tx.prepare("INSERT INTO message_spans (chunk, data) VALUES (?1, ?2)")?;
    let (mut below, mut at) = (0, START);
    let mut blob = Vec::new();
    for (chunk, part) in spans.chunks(SPANS_PER_ROW).enumerate() {
        blob.clear();
        varint::put(&mut blob, part.len() as u64);
        for s in part {
            varint::put(&mut blob, (s.first - below) as u64);
            varint::put(&mut blob, (s.last - s.first) as u64);
            varint::put(&mut blob, u64::from(s.len));
            // Damaged bytes before the record (nearly always none: records lie end to end).
            varint::put(&mut blob, s.offset - at);
            (below, at) = (s.last, s.end());
        }
        insert.execute(rusqlite::params![chunk as i64, blob])?;
    }
    Ok(())
}

/// The spans saved at the last clean stop (none if there are none, or they are unreadable).
pub(super) fn saved_spans(conn: &Connection) -> Vec<Span> {
    let read = || -> anyhow::Result<Vec<Span>> {
        let mut stmt = conn.prepare("SELECT data FROM message_spans ORDER BY chunk")?;
        let mut rows = stmt.query([])?;
        let (mut spans, mut below, mut at) = (Vec::new(), 0i64, START);
        while let Some(row) = rows.next()? {
            let mut blob = row.get_ref(0)?.as_blob()?;
            let n = varint::take(&mut blob)?;
            for _ in 0..n {
                let first = below
                    .checked_add(varint::take(&mut blob)? as i64)
                    .context("id out of range")?;
                let last = first
                    .checked_add(varint::take(&mut blob)? as i64)
                    .context("id out of range")?;
                let len = u32::try_from(varint::take(&mut blob)?)?;
                let gap = varint::take(&mut blob)?;
                let span = Span {
                    first,
                    last,
                    offset: at.checked_add(gap).context("offset out of range")?,
                    len,
                };
                (at, below) = (span.end(), last);
                spans.push(span);
            }
            anyhow::ensure!(blob.is_empty(), "{} bytes left over", blob.len());
        }
        Ok(spans)
    };
    read().unwrap_or_else(|e| {
        tracing::warn!(error = %format!("{e:#}"), "saved spans of the message log unusable");
        Vec::new()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::blocks::tests::{message, record};

    fn open(dir: &Path, saved: Vec<Span>) -> (Arc<MessageLog>, LogWriter) {
        MessageLog::open(dir, false, saved).unwrap()
    }

    fn ids(log: &MessageLog, after: i64) -> Vec<i64> {
        let mut ids = Vec::new();
        log.each_after(after, |r| ids.push(r.id)).unwrap();
        ids
    }

    #[test]
    fn every_message_reads_back_bit_for_bit_in_any_order_of_asking() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut writer) = open(dir.path(), Vec::new());
        // Ids with gaps, bodies from empty to larger than a block, over several appends.
        let messages: Vec<NewMessage> = (1..400)
            .filter(|id| id % 7 != 0)
            .map(|id| message(id, [0, 1, 32, 300, 9_000][id as usize % 5]))
            .collect();
        for part in messages.chunks(50) {
            writer.append(part).unwrap();
        }
        let mut lookup = Lookup::new(&log);
        for m in messages.iter().chain(messages.iter().rev()) {
            assert_eq!(lookup.find(m.id).unwrap(), Some(record(m)));
        }
        for missing in [0, 7, 14, 399, 1_000] {
            assert_eq!(lookup.find(missing).unwrap(), None, "message {missing}");
        }
        let expected: Vec<i64> = messages
            .iter()
            .map(|m| m.id)
            .filter(|&id| id > 200)
            .collect();
        assert_eq!(ids(&log, 200), expected);
        assert_eq!(log.last_id(), 398);
    }

    /// With `sync = "full"` every append is made durable before it returns (here: the same
    /// records, read back after a reopen).
    #[test]
    fn a_durable_log_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let messages: Vec<NewMessage> = (1..=300).map(|id| message(id, 40)).collect();
        {
            let (_, mut writer) = MessageLog::open(dir.path(), true, Vec::new()).unwrap();
            for part in messages.chunks(100) {
                writer.append(part).unwrap();
            }
        }
        let (log, _) = MessageLog::open(dir.path(), true, Vec::new()).unwrap();
        let mut lookup = Lookup::new(&log);
        for m in &messages {
            assert_eq!(lookup.find(m.id).unwrap(), Some(record(m)));
        }
    }

    #[test]
    fn an_append_is_one_write_of_its_records_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut writer) = open(dir.path(), Vec::new());
        let messages: Vec<NewMessage> = (1..=1_000).map(|id| message(id, 32)).collect();
        writer.append(&messages).unwrap();
        let spans = log.spans().clone();
        assert!(spans.len() > 10, "{} records", spans.len());
        assert!(spans_fit(&spans, writer.end));
        let len = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert_eq!(len, writer.end);
        // About 4 KiB a record for small messages.
        assert!(len / spans.len() as u64 > 3_800, "{len} bytes");
    }

    #[test]
    fn ids_that_do_not_ascend_across_appends_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut writer) = open(dir.path(), Vec::new());
        writer.append(&[message(5, 1)]).unwrap();
        let err = writer.append(&[message(5, 1)]).unwrap_err();
        assert!(format!("{err:#}").contains("ids must ascend"), "{err:#}");
        assert_eq!(ids(&log, 0), [5]);
    }

    #[test]
    fn a_reopened_log_reads_back_with_or_without_saved_spans() {
        let dir = tempfile::tempdir().unwrap();
        let messages: Vec<NewMessage> = (1..=500).map(|id| message(id, 40)).collect();
        let saved = {
            let (log, mut writer) = open(dir.path(), Vec::new());
            writer.append(&messages[..300]).unwrap();
            let saved = log.spans().clone();
            writer.append(&messages[300..]).unwrap();
            saved
        };
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE message_spans (chunk INTEGER PRIMARY KEY, data BLOB)")
            .unwrap();
        save_spans(&db, &saved).unwrap();
        assert_eq!(saved_spans(&db), saved);
        let path = dir.path().join(FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        for spans in [saved, Vec::new()] {
            std::fs::write(&path, &bytes).unwrap();
            let (log, mut writer) = open(dir.path(), spans);
            assert_eq!(ids(&log, 0), (1..=500).collect::<Vec<_>>());
            writer.append(&[message(501, 1)]).unwrap();
            assert_eq!(ids(&log, 499), [500, 501]);
        }
    }

    #[test]
    fn saved_spans_that_do_not_fit_the_file_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut writer) = open(dir.path(), Vec::new());
        writer
            .append(&(1..=200).map(|id| message(id, 40)).collect::<Vec<_>>())
            .unwrap();
        let mut spans = log.spans().clone();
        drop((log, writer));
        spans[1].len += 1;
        let (log, _) = open(dir.path(), spans);
        assert_eq!(ids(&log, 0), (1..=200).collect::<Vec<_>>());
    }

    /// A crash in the middle of an append leaves a record cut short, or bytes that are not
    /// one: wherever the cut, the log ends at the last whole record, the rest is kept aside,
    /// and appends go on from there.
    #[test]
    fn a_last_record_cut_short_or_damaged_ends_the_log_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let (_, mut writer) = open(dir.path(), Vec::new());
        writer.append(&[message(1, 10), message(2, 10)]).unwrap();
        let whole = writer.end;
        writer.append(&[message(3, 100)]).unwrap();
        let full = std::fs::read(&path).unwrap();
        drop(writer);
        let mut damaged = full.clone();
        damaged[whole as usize + 20] ^= 1;
        let mut cases: Vec<Vec<u8>> = (whole as usize..full.len())
            .map(|cut| full[..cut].to_vec())
            .collect();
        cases.push(damaged);
        for bytes in cases {
            std::fs::write(&path, &bytes).unwrap();
            let (log, mut writer) = open(dir.path(), Vec::new());
            assert_eq!(ids(&log, 0), [1, 2], "{} bytes", bytes.len());
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
            if bytes.len() as u64 > whole {
                let side = dir.path().join(format!("{FILE_NAME}.cut-{whole}"));
                assert_eq!(std::fs::read(&side).unwrap(), bytes[whole as usize..]);
            }
            writer.append(&[message(3, 100)]).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), full);
        }
    }

    #[test]
    fn a_file_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"SQLite format 3\0").unwrap();
        let err = MessageLog::open(dir.path(), false, Vec::new())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("not a parley message log"),
            "{err:#}"
        );
    }

    /// Records 1-2, 3, 4-5 and 6 in the log, and where the second starts and ends.
    fn four_records(dir: &Path) -> (Vec<u8>, usize, usize) {
        let (_, mut writer) = open(dir, Vec::new());
        writer.append(&[message(1, 10), message(2, 10)]).unwrap();
        let second = writer.end as usize;
        writer.append(&[message(3, 100)]).unwrap();
        let third = writer.end as usize;
        writer.append(&[message(4, 10), message(5, 10)]).unwrap();
        writer.append(&[message(6, 10)]).unwrap();
        drop(writer);
        (std::fs::read(dir.join(FILE_NAME)).unwrap(), second, third)
    }

    /// A flipped byte in a record that others follow (in its payload, its CRC or its
    /// length) costs that record alone, at a start without saved spans (after a crash) as
    /// well as with them: the rest is kept in place, nothing is cut, and appends go on.
    #[test]
    fn damage_in_the_middle_costs_only_the_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let (whole, second, third) = four_records(dir.path());
        let path = dir.path().join(FILE_NAME);
        for (what, at) in [
            ("payload", second + 50),
            ("crc", second + 5),
            ("length", second),
        ] {
            let mut bytes = whole.clone();
            bytes[at] ^= 0x20;
            std::fs::write(&path, &bytes).unwrap();
            let (log, mut writer) = open(dir.path(), Vec::new());
            assert_eq!(
                ids(&log, 0),
                [1, 2, 4, 5, 6],
                "a flipped byte in the {what}"
            );
            assert_eq!(log.damaged_found(), 1, "{what}: counted");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{what}: nothing cut");
            writer.append(&[message(7, 10)]).unwrap();
            let saved = log.spans().clone();
            drop((log, writer));
            let (log, _) = open(dir.path(), saved);
            assert_eq!(ids(&log, 0), [1, 2, 4, 5, 6, 7], "{what}, saved spans");
            let mut lookup = Lookup::new(&log);
            assert_eq!(lookup.find(3).unwrap(), None);
            assert_eq!(lookup.find(4).unwrap().map(|r| r.id), Some(4));
        }
        // The first record damaged: the rest is kept.
        let mut bytes = whole.clone();
        bytes[START as usize + 12] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (log, _) = open(dir.path(), Vec::new());
        assert_eq!(ids(&log, 0), [3, 4, 5, 6]);
        assert!(third < whole.len());
    }

    /// Saved spans with damaged bytes between two read back as saved.
    #[test]
    fn saved_spans_keep_the_damaged_bytes_between_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, second, _) = four_records(dir.path());
        bytes[second + 50] ^= 0x20;
        std::fs::write(dir.path().join(FILE_NAME), &bytes).unwrap();
        let (log, _) = open(dir.path(), Vec::new());
        let spans = log.spans().clone();
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch("CREATE TABLE message_spans (chunk INTEGER PRIMARY KEY, data BLOB)")
            .unwrap();
        save_spans(&db, &spans).unwrap();
        assert_eq!(saved_spans(&db), spans);
        assert!(spans_fit(&spans, bytes.len() as u64));
    }

    /// A block damaged after the start read it (so not seen then) reads as missing, and as
    /// lost, never as an error or a wrong message; the other blocks read on.
    #[test]
    fn a_block_damaged_after_the_start_reads_as_lost_not_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut writer) = open(dir.path(), Vec::new());
        writer.append(&[message(1, 40)]).unwrap();
        writer.append(&[message(2, 40)]).unwrap();
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[START as usize + 20] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(log.damaged_found(), 0, "not read yet");
        let mut lookup = Lookup::new(&log);
        assert_eq!(lookup.find(1).unwrap(), None);
        assert!(lookup.lost(1));
        assert_eq!(lookup.find(2).unwrap().map(|r| r.id), Some(2));
        assert!(!lookup.lost(2));
        assert_eq!(ids(&log, 0), [2]);
        assert_eq!(log.damaged_found(), 1, "counted once, however often read");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Whatever the values, the body sizes and how the messages are split into
        /// appends, every message reads back as written, asked for in any order, after a
        /// restart too, and nothing else is found.
        #[test]
        fn any_messages_in_any_appends_read_back_as_written(
            steps in proptest::collection::vec(
                (1..4i64, proptest::prelude::any::<i64>(), proptest::prelude::any::<u64>(),
                 0..6_000usize, proptest::bool::weighted(0.1)),
                1..120,
            ),
            probes in proptest::collection::vec(0..130usize, 0..40),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (_, mut writer) = open(dir.path(), Vec::new());
            let (mut messages, mut id, mut batch) = (Vec::new(), 0, Vec::new());
            for (step, value, sent_at, len, commit) in steps {
                id += step;
                let m = NewMessage {
                    id,
                    conv: value,
                    seq: value.wrapping_mul(3),
                    sender: value.rotate_left(7),
                    sender_device: !value,
                    body: bytes::Bytes::from(vec![(id % 251) as u8; len]),
                    sent_at,
                    received_at: value.wrapping_add(id),
                };
                batch.push(m.clone());
                messages.push(m);
                if commit {
                    writer.append(&batch).unwrap();
                    batch.clear();
                }
            }
            writer.append(&batch).unwrap();
            drop(writer);
            let (log, _) = open(dir.path(), Vec::new());
            let mut lookup = Lookup::new(&log);
            for m in &messages {
                proptest::prop_assert_eq!(lookup.find(m.id).unwrap(), Some(record(m)));
            }
            for &p in &probes {
                let Some(m) = messages.get(p) else { continue };
                proptest::prop_assert_eq!(lookup.find(m.id).unwrap(), Some(record(m)));
                let absent = m.id + 1;
                if messages.iter().all(|o| o.id != absent) {
                    proptest::prop_assert_eq!(lookup.find(absent).unwrap(), None);
                }
            }
            proptest::prop_assert_eq!(ids(&log, 0), messages.iter().map(|m| m.id).collect::<Vec<_>>());
        }
    }
}
