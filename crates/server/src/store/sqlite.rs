//! The embedded SQLite backend: WAL mode, one writer connection, prepared statements; the
//! messages themselves in the message log beside it (log.rs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use rusqlite::{params, Connection, OptionalExtension};

use super::index::MessageIndex;
use super::log::{self, LogWriter, MessageLog};
use super::NewMessage;
use super::{
    Batch, ContactState, ConvId, DeviceId, DirectConv, LogStore, Membership, NextIds, Revoke, Seq,
    StoredRoom, UserId, KIND_BROADCAST, KIND_ROOM,
};
use crate::config::SyncMode;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER
);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER,
    UNIQUE (user_id, name)
);
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    name TEXT,
    user_a INTEGER,
    user_b INTEGER,
    -- No longer kept current: the last stored message's sequence is (see index.rs);
    -- databases written while it was still count it as a floor.
    last_seq INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_direct
    ON conversations (user_a, user_b) WHERE kind = 1;
CREATE UNIQUE INDEX IF NOT EXISTS conversations_named
    ON conversations (kind, name) WHERE kind <> 1;
CREATE TABLE IF NOT EXISTS memberships (
    user_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    joined_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    device_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_user ON tokens (user_id, device_id);
CREATE TABLE IF NOT EXISTS contacts (
    user_id INTEGER NOT NULL,
    contact_id INTEGER NOT NULL,
    state INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, contact_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attachments (
    hash TEXT NOT NULL,
    conversation_id INTEGER NOT NULL,
    PRIMARY KEY (hash, conversation_id)
) WITHOUT ROWID;
-- The message index as saved at the last clean stop (see index.rs).
CREATE TABLE IF NOT EXISTS message_index (
    conversation_id INTEGER PRIMARY KEY,
    ids BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The database file inside the data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("parley.db")
}

/// Waits for a lock another connection holds, in steps of 250 µs for up to 5 s. (SQLite's
/// own handler sleeps 1, 2, 5, 10, ... 100 ms: a writer held back 20 ms by a checkpoint
/// could sleep 50.)
fn wait_for_lock(attempt: i32) -> bool {
    const STEP: std::time::Duration = std::time::Duration::from_micros(250);
    if attempt >= 20_000 {
        return false;
    }
    std::thread::sleep(STEP);
    true
}

/// The writer connection's page cache (KiB); readers keep the 32 MB of `open`.
const WRITER_CACHE_KIB: i64 = 4096;

/// Opens a connection with the pragmas every parley connection uses.
pub(super) fn open(path: &Path, sync: SyncMode) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.busy_handler(Some(wait_for_lock))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match sync {
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -32_000)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    // A batch uses about twenty statements; the default cache (16) would re-parse some of
    // them on every commit.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Columns added after the first schema; added in place to databases created before.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("users", "password_hash", "TEXT"),
    ("users", "display_name", "TEXT"),
    ("users", "avatar", "BLOB"),
];

fn migrate(conn: &Connection) -> anyhow::Result<()> {
    for (table, column, kind) in ADDED_COLUMNS {
        let exists: bool = conn.query_row(
            &format!("SELECT COUNT(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"),
            [column],
            |r| r.get(0),
        )?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// Moves the messages of a database written before the message log into it: a
/// `message_blocks` table (blocks of messages a row) or, older, a `messages` table of a row
/// per message (ordered by id or, in the first layout, by conversation and sequence). Ids,
/// sequences and the saved index stay as they were. The log is made durable before the
/// table is dropped; a move that did not finish (the table still there) goes on from the
/// log's last message, and so does one after a return to an older version (which wrote
/// its messages to the table again, with ids past the log's).
fn migrate_messages(conn: &Connection, log: &mut LogWriter) -> anyhow::Result<()> {
    let has_table = |name: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get(0),
        )
    };
    let (blocks, rows) = (has_table("message_blocks")?, has_table("messages")?);
    if !blocks && !rows {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let moved = log.last_id();
    if rows {
        let mut stmt = conn.prepare(
            "SELECT id, conversation_id, seq, sender_id, sender_device, body, sent_at,
                    received_at
             FROM messages WHERE id > ?1 ORDER BY id",
        )?;
        let mut rows = stmt.query([moved])?;
        // Read and written a few thousand at a time, so memory stays flat however many.
        const CHUNK: usize = 4096;
        let mut chunk = Vec::with_capacity(CHUNK);
        while let Some(r) = rows.next()? {
            chunk.push(NewMessage {
                id: r.get(0)?,
                conv: r.get(1)?,
                seq: r.get(2)?,
                sender: r.get(3)?,
                sender_device: r.get(4)?,
                body: bytes::Bytes::from(r.get::<_, Vec<u8>>(5)?),
                sent_at: r.get::<_, i64>(6)? as u64,
                received_at: r.get(7)?,
            });
            if chunk.len() == CHUNK {
                log.append(&chunk)?;
                chunk.clear();
            }
        }
        log.append(&chunk)?;
    }
    if blocks {
        let mut stmt =
            conn.prepare("SELECT data FROM message_blocks WHERE last_id > ?1 ORDER BY last_id")?;
        let mut rows = stmt.query([moved])?;
        while let Some(row) = rows.next()? {
            log.append_block(row.get_ref(0)?.as_blob()?)
                .context("moving a block of messages")?;
        }
    }
    log.sync()?;
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch("DROP TABLE IF EXISTS messages; DROP TABLE IF EXISTS message_blocks")?;
    tx.commit().context("moving the messages into the log")?;
    tracing::info!(
        up_to = log.last_id(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "messages moved into the message log"
    );
    Ok(())
}

/// Records whether the server stopped cleanly (the index and spans were saved) and returns
/// what the last stop was: set at a clean stop, cleared at every start.
fn take_clean_stop(conn: &Connection) -> anyhow::Result<bool> {
    let clean: Option<i64> = conn
        .query_row(
            "SELECT value FROM counters WHERE name = 'clean_stop'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    set_clean_stop(conn, false)?;
    Ok(clean == Some(1))
}

fn set_clean_stop(conn: &Connection, clean: bool) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('clean_stop', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [i64::from(clean)],
    )?;
    Ok(())
}

/// After a stop that was not clean: moves cursors and join points that lie past the end of
/// their conversation in the log back to it. A batch's rows commit before its messages are
/// appended, so a crash between the two can leave a room joined after messages that were
/// never stored; a power loss (with `sync = "normal"`) can take messages from the log that
/// SQLite's cursors already count. Left there, the next messages would get sequences their
/// members are taken to have seen. Reads the two tables once (a few hundred milliseconds
/// per million rows).
fn clamp_to_log(conn: &Connection, index: &MessageIndex) -> anyhow::Result<()> {
    let mut moved = 0;
    for (table, column) in [("cursors", "seq"), ("memberships", "joined_seq")] {
        let mut past = Vec::new();
        {
            let mut stmt = conn.prepare(&format!(
                "SELECT t.conversation_id, MAX(t.{column}), c.last_seq FROM {table} t
                 LEFT JOIN conversations c ON c.id = t.conversation_id
                 GROUP BY t.conversation_id"
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (conv, highest): (ConvId, Seq) = (r.get(0)?, r.get(1)?);
                let end = index
                    .last_seq(conv)
                    .max(r.get::<_, Option<Seq>>(2)?.unwrap_or(0));
                if highest > end {
                    past.push((conv, end));
                }
            }
        }
        let mut update = conn.prepare(&format!(
            "UPDATE {table} SET {column} = ?2 WHERE conversation_id = ?1 AND {column} > ?2"
        ))?;
        for (conv, end) in past {
            moved += update.execute(params![conv, end])?;
        }
    }
    if moved > 0 {
        tracing::warn!(
            rows = moved,
            "cursors and join points past the end of the message log moved back to it"
        );
    }
    Ok(())
}

/// Past this many frames (4 KiB pages, 256 MiB) in the WAL, the writer has it start over
/// (1 MiB in unit tests, so that a test can see it happen).
const WAL_RESTART_FRAMES: i64 = if cfg!(test) { 256 } else { 65_536 };
/// What the WAL file is cut back to after a restart (64 MiB; 1 MiB in unit tests).
const WAL_SIZE_LIMIT: i64 = if cfg!(test) { 1 << 20 } else { 64 << 20 };

/// What the store and its checkpoint thread tell each other.
#[derive(Default)]
struct Checkpoints {
    /// The store is dropped: checkpoint once more and end.
    stop: AtomicBool,
    /// The WAL is past `WAL_RESTART_FRAMES`: the writer should restart it.
    restart: AtomicBool,
}

/// Checkpoints the WAL every 200 ms until the store is dropped, then once more. It holds no
/// lock the hub needs.
///
/// A passive checkpoint never blocks the writer, but SQLite starts the WAL over only at a
/// commit that finds everything checkpointed, and with commits every few milliseconds one
/// always lands while the checkpoint runs: the WAL grew for as long as traffic lasted
/// (325 MB after a million messages; at a steady 6,700 messages per second, 44 MB a
/// second). So once it is past `WAL_RESTART_FRAMES` this thread asks the writer to finish
/// the job between two commits (`SqliteStore::restart_wal`); a `RESTART` checkpoint from
/// here would wait for a pause between commits that a busy writer never leaves.
fn spawn_checkpointer(
    path: PathBuf,
    sync: SyncMode,
    shared: Arc<Checkpoints>,
) -> anyhow::Result<()> {
    let conn = open(&path, sync)?;
    std::thread::Builder::new()
        .name("parley-checkpoint".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let stopping = shared.stop.load(Ordering::Relaxed);
            // (busy, frames in the WAL, frames checkpointed)
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
                Ok(frames) if frames > WAL_RESTART_FRAMES => {
                    shared.restart.store(true, Ordering::Relaxed)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            }
            if stopping {
                return;
            }
        })?;
    Ok(())
}

/// Message ids are reserved this many at a time: the counter row is written when a batch
/// goes past the reserved mark instead of with every batch (one page less per commit). A
/// restart continues from the mark, so ids may skip ahead but are never handed out twice.
const ID_RESERVE: i64 = 100_000;

/// The writer side of the SQLite store.
pub struct SqliteStore {
    conn: Connection,
    /// Shared with the readers; extended after every commit.
    index: Arc<MessageIndex>,
    /// Where the messages go.
    log: LogWriter,
    /// Message ids below this are covered by the stored counter.
    ids_reserved: i64,
    checkpoints: Arc<Checkpoints>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        let started = std::time::Instant::now();
        // The log first: what the saved copies describe must be on disk before they are.
        let saved = self.log.sync().and_then(|()| {
            let tx = self.conn.unchecked_transaction()?;
            self.index.save(&tx)?;
            log::save_spans(&tx, &self.log.log().spans())?;
            set_clean_stop(&tx, true)?;
            tx.commit()?;
            Ok(())
        });
        match saved {
            Ok(()) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "message index saved"
            ),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "saving the message index"),
        }
        self.checkpoints.stop.store(true, Ordering::Relaxed);
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database and the message log in `data_dir`.
    pub fn open(data_dir: &Path, sync: SyncMode) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let conn = open(&database_path(data_dir), sync)?;
        // The writer appends: what it reads again is the tables' upper pages and the
        // latest leaves. A page cache of its size is allocated page by page (each a
        // malloc and first-touch faults) until it is full, and only then reused: at
        // 32 MB that took the first half million messages or so (a third of the hub
        // thread's time in a 300,000-message run); at 4 MB it is reused after 60,000.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        conn.execute_batch(SCHEMA).context("creating the schema")?;
        conn.execute_batch(log::TABLE)
            .context("creating the schema")?;
        migrate(&conn).context("migrating the schema")?;
        let started = std::time::Instant::now();
        let full = sync == SyncMode::Full;
        let (messages, mut log) = MessageLog::open(data_dir, full, log::saved_spans(&conn))
            .context("opening the message log")?;
        migrate_messages(&conn, &mut log).context("moving the messages into the log")?;
        let index =
            Arc::new(MessageIndex::load(&conn, &messages).context("indexing the messages")?);
        if !take_clean_stop(&conn)? {
            clamp_to_log(&conn, &index).context("checking cursors against the log")?;
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            up_to = messages.last_id(),
            "messages indexed"
        );
        // Checkpoints move the WAL into the database file. SQLite runs them inside the
        // commit that crosses the threshold, on the hub thread; a thread of their own keeps
        // them off the path of every message.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let checkpoints = Arc::new(Checkpoints::default());
        spawn_checkpointer(database_path(data_dir), sync, checkpoints.clone())?;
        let mut store = SqliteStore {
            conn,
            index,
            log,
            checkpoints,
            ids_reserved: 0,
        };
        store.ids_reserved = store.next_ids()?.message;
        Ok(store)
    }

    /// The log the messages are in, for the readers.
    pub fn log(&self) -> Arc<MessageLog> {
        self.log.log()
    }

    /// The index of the stored messages, for the readers.
    pub fn index(&self) -> Arc<MessageIndex> {
        self.index.clone()
    }

    /// `conv`'s last sequence: its last stored message's, or what a database written
    /// before counted in `conversations.last_seq`, if more.
    fn last_seq_of(&self, conv: ConvId, counted: Seq) -> Seq {
        counted.max(self.index.last_seq(conv))
    }
}

impl LogStore for SqliteStore {
    fn load_users(&mut self) -> anyhow::Result<Vec<(UserId, String, bool)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, name, password_hash IS NOT NULL FROM users")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn next_ids(&mut self) -> anyhow::Result<NextIds> {
        let max = |sql: &str| -> anyhow::Result<i64> {
            let v: Option<i64> = self.conn.query_row(sql, [], |r| r.get(0))?;
            Ok(v.unwrap_or(0) + 1)
        };
        let user = max("SELECT MAX(id) FROM users")?;
        let device = max("SELECT MAX(id) FROM devices")?;
        let conv = max("SELECT MAX(id) FROM conversations")?;
        let message: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'next_message_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(NextIds {
            user,
            device,
            conv,
            // The counter is written ahead of the ids handed out; the log's end is a floor
            // all the same.
            message: message.unwrap_or(1).max(self.log.last_id() + 1),
        })
    }

    fn find_device(&mut self, user: UserId, name: &str) -> anyhow::Result<Option<DeviceId>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM devices WHERE user_id = ?1 AND name = ?2")?;
        Ok(stmt
            .query_row(params![user, name], |r| r.get(0))
            .optional()?)
    }

    fn find_direct(&mut self, a: UserId, b: UserId) -> anyhow::Result<Option<DirectConv>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, last_seq FROM conversations WHERE kind = 1 AND user_a = ?1 AND user_b = ?2",
        )?;
        let found: Option<(ConvId, Seq)> = stmt
            .query_row(params![a, b], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(found.map(|(id, counted)| DirectConv {
            id,
            last_seq: self.last_seq_of(id, counted),
        }))
    }

    fn memberships(&mut self, user: UserId) -> anyhow::Result<Vec<Membership>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT conversation_id, joined_seq FROM memberships WHERE user_id = ?1",
        )?;
        let rows = stmt.query_map([user], |r| {
            Ok(Membership {
                conv: r.get(0)?,
                joined_seq: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn last_seq(&mut self, conv: super::ConvId) -> anyhow::Result<Seq> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT last_seq FROM conversations WHERE id = ?1")?;
        let counted: Option<Seq> = stmt.query_row([conv], |r| r.get(0)).optional()?;
        Ok(self.last_seq_of(conv, counted.unwrap_or(0)))
    }

    fn load_rooms(&mut self) -> anyhow::Result<Vec<StoredRoom>> {
        let mut rooms: Vec<StoredRoom> = Vec::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.id, c.name, m.user_id FROM conversations c
             LEFT JOIN memberships m ON m.conversation_id = c.id
             WHERE c.kind = 2 ORDER BY c.id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let conv: ConvId = row.get(0)?;
            let member: Option<UserId> = row.get(2)?;
            if rooms.last().map(|r| r.conv) != Some(conv) {
                rooms.push(StoredRoom {
                    conv,
                    name: row.get(1)?,
                    members: Vec::new(),
                });
            }
            let room = rooms.last_mut().expect("pushed above");
            room.members.extend(member);
        }
        Ok(rooms)
    }

    fn ensure_builtin(&mut self, anonymous: &str) -> anyhow::Result<(ConvId, UserId)> {
        let now = super::now_ms();
        self.conn.execute(
            "INSERT OR IGNORE INTO conversations (kind, name, created_at) VALUES (?1, '*', ?2)",
            params![KIND_BROADCAST, now],
        )?;
        let conv = self.conn.query_row(
            "SELECT id FROM conversations WHERE kind = ?1 AND name = '*'",
            [KIND_BROADCAST],
            |r| r.get(0),
        )?;
        self.conn.execute(
            "INSERT OR IGNORE INTO users (name, created_at) VALUES (?1, ?2)",
            params![anonymous, now],
        )?;
        let user =
            self.conn
                .query_row("SELECT id FROM users WHERE name = ?1", [anonymous], |r| {
                    r.get(0)
                })?;
        Ok((conv, user))
    }

    fn contacts(&mut self, user: UserId) -> anyhow::Result<Vec<(UserId, ContactState)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT contact_id, state FROM contacts WHERE user_id = ?1")?;
        let rows = stmt.query_map([user], |r| Ok((r.get(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (other, state) = row?;
            if let Some(state) = ContactState::from_i64(state) {
                out.push((other, state));
            }
        }
        Ok(out)
    }

    fn write(&mut self, batch: &Batch) -> anyhow::Result<()> {
        let reserve =
            (batch.next_message_id > self.ids_reserved).then(|| batch.next_message_id + ID_RESERVE);
        // The rows first: none of them refers to a message of its own batch but a join
        // point (see `clamp_to_log`), so a crash or a failure between the two leaves
        // nothing that points at a message that is not stored.
        if batch.has_rows() || reserve.is_some() {
            self.write_rows(batch, reserve)?;
        }
        if let Err(e) = self.log.append(&batch.messages) {
            if !batch.joins.is_empty() {
                if let Err(undo) = clamp_to_log(&self.conn, &self.index) {
                    tracing::error!(error = %format!("{undo:#}"), "moving join points back");
                }
            }
            return Err(e);
        }
        self.index.append(&batch.messages);
        if self.checkpoints.restart.swap(false, Ordering::Relaxed) {
            self.restart_wal();
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Writes the batch's rows (all but its messages) in one transaction; `reserve` is the
    /// new reserved mark of message ids, when the batch goes past the old one.
    fn write_rows(&mut self, batch: &Batch, reserve: Option<i64>) -> anyhow::Result<()> {
        // BEGIN and COMMIT as cached statements: `Connection::transaction` parses both
        // again for every batch.
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let written = write_batch(&self.conn, batch, reserve).and_then(|()| {
            self.conn
                .prepare_cached("COMMIT")?
                .execute([])
                .context("committing a batch")?;
            Ok(())
        });
        if let Err(e) = written {
            if !self.conn.is_autocommit() {
                if let Err(undo) = self.conn.execute_batch("ROLLBACK") {
                    tracing::error!(error = %undo, "rolling back a failed batch");
                }
            }
            return Err(e);
        }
        if let Some(mark) = reserve {
            self.ids_reserved = mark;
        }
        Ok(())
    }

    /// Checkpoints what the checkpoint thread's last pass left, between two commits, so
    /// that the next commit finds everything copied and starts the WAL over (and
    /// `journal_size_limit` cuts the file back). Passive: a reader in the way is not waited
    /// for (the next pass asks again). This batch's answers wait for it: 100-300 ms at full
    /// load on this machine's disk, nearly all of it the two fsyncs of a checkpoint.
    fn restart_wal(&self) {
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(0));
        match busy {
            Ok(0) => {}
            Ok(_) => tracing::debug!("WAL checkpoint before a restart was blocked; retrying later"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint before a restart failed"),
        }
    }
}

/// The rows of one batch, inside the transaction `write_rows` opened.
fn write_batch(tx: &Connection, batch: &Batch, reserve: Option<i64>) -> anyhow::Result<()> {
    let now = super::now_ms();
    let mut users = tx.prepare_cached(
        "INSERT INTO users (id, name, created_at, last_seen_at) VALUES (?1, ?2, ?3, ?3)",
    )?;
    for (id, name) in &batch.users {
        users.execute(params![id, name, now])?;
    }
    let mut devices = tx.prepare_cached(
        "INSERT INTO devices (id, user_id, name, created_at, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    for (id, user, name) in &batch.devices {
        devices.execute(params![id, user, name, now])?;
    }
    let mut convs = tx.prepare_cached(
        "INSERT INTO conversations (id, kind, user_a, user_b, created_at)
                 VALUES (?1, 1, ?2, ?3, ?4)",
    )?;
    let mut members = tx.prepare_cached(
        "INSERT OR IGNORE INTO memberships (user_id, conversation_id, joined_seq)
                 VALUES (?1, ?2, 0)",
    )?;
    for (id, a, b) in &batch.directs {
        convs.execute(params![id, a, b, now])?;
        members.execute(params![a, id])?;
        members.execute(params![b, id])?;
    }
    let mut rooms = tx.prepare_cached(
        "INSERT INTO conversations (id, kind, name, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (id, name) in &batch.rooms {
        rooms.execute(params![id, KIND_ROOM, name, now])?;
    }
    let mut joins = tx.prepare_cached(
                "INSERT INTO memberships (user_id, conversation_id, joined_seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (user_id, conversation_id) DO UPDATE SET joined_seq = excluded.joined_seq",
            )?;
    let mut leaves =
        tx.prepare_cached("DELETE FROM memberships WHERE user_id = ?1 AND conversation_id = ?2")?;
    // `Batch::join` and `Batch::leave` keep at most one change per (user, room), so
    // the order of the two loops does not matter.
    for (user, conv) in &batch.leaves {
        leaves.execute(params![user, conv])?;
    }
    for (user, conv, seq) in &batch.joins {
        joins.execute(params![user, conv, seq])?;
    }
    let mut cursors = tx.prepare_cached(
        "INSERT INTO cursors (device_id, conversation_id, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device_id, conversation_id)
                 DO UPDATE SET seq = MAX(seq, excluded.seq)",
    )?;
    for ((device, conv), seq) in &batch.cursors {
        cursors.execute(params![device, conv, seq])?;
    }
    let mut user_seen = tx.prepare_cached("UPDATE users SET last_seen_at = ?2 WHERE id = ?1")?;
    let mut device_seen =
        tx.prepare_cached("UPDATE devices SET last_seen_at = ?2 WHERE id = ?1")?;
    for (user, device, at) in &batch.seen {
        user_seen.execute(params![user, at])?;
        device_seen.execute(params![device, at])?;
    }
    let mut passwords = tx.prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")?;
    for (user, hash) in &batch.passwords {
        passwords.execute(params![user, hash])?;
    }
    let mut tokens = tx.prepare_cached(
        "INSERT INTO tokens (hash, user_id, device_id, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for t in &batch.tokens {
        tokens.execute(params![t.hash, t.user, t.device, now, t.expires_at])?;
    }
    let mut revoke_device = tx.prepare_cached(
        "UPDATE tokens SET revoked_at = ?3
                 WHERE user_id = ?1 AND device_id = ?2 AND revoked_at IS NULL",
    )?;
    let mut revoke_others = tx.prepare_cached(
        "UPDATE tokens SET revoked_at = ?3
                 WHERE user_id = ?1 AND device_id <> ?2 AND revoked_at IS NULL",
    )?;
    for r in &batch.revocations {
        match r {
            Revoke::Device(user, device) => revoke_device.execute(params![user, device, now])?,
            Revoke::AllBut(user, device) => revoke_others.execute(params![user, device, now])?,
        };
    }
    let mut profiles = tx.prepare_cached(
        "UPDATE users SET display_name = COALESCE(?2, display_name),
                                  avatar = COALESCE(?3, avatar) WHERE id = ?1",
    )?;
    for p in &batch.profiles {
        profiles.execute(params![p.user, p.display_name, p.avatar.as_deref()])?;
    }
    let mut set_contact = tx.prepare_cached(
        "INSERT INTO contacts (user_id, contact_id, state, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, contact_id) DO UPDATE SET state = excluded.state",
    )?;
    let mut drop_contact =
        tx.prepare_cached("DELETE FROM contacts WHERE user_id = ?1 AND contact_id = ?2")?;
    for (user, other, state) in &batch.contacts {
        match state {
            Some(state) => set_contact.execute(params![user, other, *state as i64, now])?,
            None => drop_contact.execute(params![user, other])?,
        };
    }
    let mut files = tx.prepare_cached(
        "INSERT OR IGNORE INTO files (hash, size, created_at) VALUES (?1, ?2, ?3)",
    )?;
    for (hash, size) in &batch.files {
        files.execute(params![hash, *size as i64, now])?;
    }
    let mut attach = tx.prepare_cached(
        "INSERT OR IGNORE INTO attachments (hash, conversation_id) VALUES (?1, ?2)",
    )?;
    for (hash, conv) in &batch.attachments {
        attach.execute(params![hash, conv])?;
    }
    if let Some(mark) = reserve {
        tx.prepare_cached(
            "INSERT INTO counters (name, value) VALUES ('next_message_id', ?1)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )?
        .execute([mark])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64, conv: ConvId, seq: Seq) -> NewMessage {
        NewMessage {
            id,
            conv,
            seq,
            sender: 1,
            sender_device: 1,
            body: bytes::Bytes::from_static(&[7; 100]),
            sent_at: 0,
            received_at: 0,
        }
    }

    fn batch(messages: impl IntoIterator<Item = NewMessage>) -> Batch {
        let messages: Vec<NewMessage> = messages.into_iter().collect();
        Batch {
            next_message_id: messages.last().map_or(1, |m| m.id + 1),
            messages,
            ..Batch::default()
        }
    }

    /// Stops the store as a crash would: nothing saved.
    fn crash(store: SqliteStore) {
        std::mem::forget(store);
    }

    /// The index saved at a clean stop is read back at the next start, and messages stored
    /// after it (as after a crash, with no second save) come from the log; a damaged copy
    /// is ignored for a full read.
    #[test]
    fn the_saved_index_and_what_came_after_it_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        // Message i goes to conversation 1 + i % 2, as its sequence (i + 1) / 2.
        let rows = |from: i64, to: i64| (from..=to).map(|i| message(i, 1 + i % 2, (i + 1) / 2));
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        for (from, to) in [(1, 1), (2, 2), (3, 10)] {
            store.write(&batch(rows(from, to))).unwrap();
        }
        drop(store);
        let db = Connection::open(database_path(dir.path())).unwrap();
        let saved: i64 = db
            .query_row(
                "SELECT value FROM counters WHERE name = 'message_index_up_to'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(saved, 10);
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        store.write(&batch(rows(11, 14))).unwrap();
        crash(store);
        // The saved copy of conversation 1 rewritten without its first message: the index
        // read back lacks it too, which shows that the copy is what was read.
        let mut blob = Vec::new();
        super::super::varint::put(&mut blob, 4);
        for id in [4, 2, 2, 2] {
            super::super::varint::put(&mut blob, id);
        }
        db.execute(
            "UPDATE message_index SET ids = ?1 WHERE conversation_id = 1",
            [&blob],
        )
        .unwrap();
        let odd: Vec<i64> = (1..=13).step_by(2).collect();
        let even: Vec<i64> = (2..=14).step_by(2).collect();
        let index = SqliteStore::open(dir.path(), SyncMode::Normal)
            .unwrap()
            .index();
        assert_eq!((index.last_seq(1), index.last_seq(2)), (7, 7));
        assert_eq!(index.from(2, 0, 99), odd);
        assert_eq!(index.from(1, 0, 99), even[1..], "from the saved copy");

        db.execute("UPDATE message_index SET ids = x'ff'", [])
            .unwrap();
        let index = SqliteStore::open(dir.path(), SyncMode::Normal)
            .unwrap()
            .index();
        assert_eq!(index.from(2, 0, 99), odd);
        assert_eq!(index.from(1, 0, 99), even, "a full read");
    }

    /// A row-per-message table larger than one chunk of the move comes out whole: every
    /// message in its conversation's index and readable with its fields.
    #[test]
    fn a_large_row_per_message_table_is_moved_into_the_log_whole() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), SyncMode::Normal).unwrap());
        let db = Connection::open(database_path(dir.path())).unwrap();
        db.execute_batch(
            "DELETE FROM message_index; DELETE FROM message_spans; DELETE FROM counters;
             CREATE TABLE messages (
                 id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL,
                 seq INTEGER NOT NULL, sender_id INTEGER NOT NULL,
                 sender_device INTEGER NOT NULL, body BLOB NOT NULL,
                 sent_at INTEGER NOT NULL, received_at INTEGER NOT NULL)",
        )
        .unwrap();
        let n = 10_000i64;
        let mut insert = db
            .prepare("INSERT INTO messages VALUES (?1, ?2, ?3, 1, 7, ?4, ?1, ?5)")
            .unwrap();
        for i in 1..=n {
            let body = vec![(i % 256) as u8; (i % 50) as usize];
            insert
                .execute(params![i, 1 + i % 3, (i + 2) / 3, body, 1_000 + i])
                .unwrap();
        }
        drop(insert);
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        let index = store.index();
        for conv in 1..=3 {
            let ids: Vec<i64> = (1..=n).filter(|i| 1 + i % 3 == conv).collect();
            assert_eq!(index.from(conv, 0, usize::MAX), ids, "conversation {conv}");
        }
        let tables: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
        let log = store.log();
        let mut lookup = log::Lookup::new(&log);
        for i in [1, 4_096, 4_097, 8_193, n] {
            let m = lookup.find(i).unwrap().expect("moved");
            assert_eq!(
                (m.conv, m.seq, m.sender_device, m.sent_at, m.received_at),
                (1 + i % 3, (i + 2) / 3, 7, i as u64, 1_000 + i)
            );
            assert_eq!(m.body, vec![(i % 256) as u8; (i % 50) as usize]);
        }
        assert_eq!(store.next_ids().unwrap().message, n + 1);
    }

    /// The previous layout, blocks of messages in a `message_blocks` table, is moved into
    /// the log as it is; a move that stopped half way (the table still there, its first
    /// blocks in the log) goes on from where it stopped.
    #[test]
    fn a_table_of_blocks_is_moved_into_the_log_and_a_move_cut_short_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let messages: Vec<NewMessage> = (1..=500)
            .map(|i| message(i, 1 + i % 4, (i + 3) / 4))
            .collect();
        drop(SqliteStore::open(dir.path(), SyncMode::Normal).unwrap());
        let db = Connection::open(database_path(dir.path())).unwrap();
        db.execute_batch(
            "DELETE FROM message_spans; DELETE FROM message_index;
             CREATE TABLE message_blocks (
                 last_id INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, data BLOB NOT NULL)",
        )
        .unwrap();
        let mut blocks = Vec::new();
        super::super::blocks::each_block(&messages, &mut Vec::new(), |first, last, data| {
            db.execute(
                "INSERT INTO message_blocks (last_id, first_id, data) VALUES (?1, ?2, ?3)",
                params![last, first, data],
            )?;
            blocks.push(data.to_vec());
            Ok(())
        })
        .unwrap();
        assert!(blocks.len() > 3, "{} blocks", blocks.len());
        // What a move cut short left in the log: its first two blocks.
        let (_, mut cut_short) = MessageLog::open(dir.path(), false, Vec::new()).unwrap();
        for data in &blocks[..2] {
            cut_short.append_block(data).unwrap();
        }
        drop(cut_short);
        let store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        let log = store.log();
        let mut all = Vec::new();
        log.each_after(0, |r| all.push(r.id)).unwrap();
        assert_eq!(all, (1..=500).collect::<Vec<_>>());
        assert_eq!(store.index().from(2, 0, 3), [1, 5, 9]);
        let tables: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'message_blocks'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0);
    }

    /// After a crash, a cursor or a join point past the end of its conversation in the log
    /// (the rows of a batch committed, its messages not) is moved back to the end; after a
    /// clean stop nothing is read or moved.
    #[test]
    fn cursors_and_join_points_past_the_log_are_moved_back_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        let mut first = batch((1..=3).map(|i| message(i, 7, i)));
        first.cursors.insert((1, 7), 2);
        first.joins.push((5, 7, 3));
        store.write(&first).unwrap();
        crash(store);
        let db = Connection::open(database_path(dir.path())).unwrap();
        db.execute_batch(
            "UPDATE cursors SET seq = 9; UPDATE memberships SET joined_seq = 8;
             INSERT INTO cursors (device_id, conversation_id, seq) VALUES (2, 7, 1)",
        )
        .unwrap();
        let read = || -> (Vec<i64>, i64) {
            let cursors = db
                .prepare("SELECT seq FROM cursors ORDER BY device_id")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let joined = db
                .query_row("SELECT joined_seq FROM memberships", [], |r| r.get(0))
                .unwrap();
            (cursors, joined)
        };
        drop(SqliteStore::open(dir.path(), SyncMode::Normal).unwrap());
        assert_eq!(read(), (vec![3, 1], 3));
        // A clean stop: the next start trusts the tables (and does not read them).
        db.execute_batch("UPDATE cursors SET seq = 9 WHERE device_id = 1")
            .unwrap();
        drop(SqliteStore::open(dir.path(), SyncMode::Normal).unwrap());
        assert_eq!(read(), (vec![9, 1], 3));
    }

    /// Commits keep coming while the checkpoints run, yet the WAL starts over (and is cut
    /// back) again and again. Without the restart it only ever grows: 173 MB over these
    /// 6,000 commits on the machine this was written on.
    #[test]
    fn the_wal_starts_over_under_steady_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        let wal = dir.path().join("parley.db-wal");
        let started = std::time::Instant::now();
        let (mut size, mut largest, mut cut_back, mut commits) = (0, 0, 0, 0i64);
        // At least 6,000 commits and 1.5 s (several checkpoint ticks), at most 100,000.
        while commits < 100_000
            && (commits < 6_000 || started.elapsed() < std::time::Duration::from_millis(1500))
        {
            commits += 1;
            let mut batch = batch((0..4).map(|c| message(commits * 4 + c, c, commits)));
            // Rows: the messages themselves go to the log.
            batch.cursors.extend((0..4).map(|c| ((c, c), commits)));
            store.write(&batch).unwrap();
            let now = std::fs::metadata(&wal).unwrap().len();
            if now < size {
                cut_back += 1;
            }
            (size, largest) = (now, largest.max(now));
        }
        assert!(
            cut_back >= 2,
            "the WAL was cut back {cut_back} times in {commits} commits, reaching {largest} bytes"
        );
    }
}
