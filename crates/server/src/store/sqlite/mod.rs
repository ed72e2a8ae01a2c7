//! The embedded SQLite backend: WAL mode, one writer connection, prepared statements; the
//! messages themselves in the message log beside it (log.rs).
//!
//! By job: the schema's versions (schema.rs) and the migrations between them
//! (migrations.rs), what a start does after a crash (recovery.rs), the WAL's checkpoints
//! (checkpoint.rs), the hub's queries (queries.rs) and a group commit's rows (batch.rs).

mod batch;
mod checkpoint;
mod migrations;
mod queries;
mod recovery;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use rusqlite::Connection;

use self::checkpoint::{Checkpoints, WAL_SIZE_LIMIT};
pub(in crate::store) use self::migrations::LATEST as LATEST_SCHEMA;
use super::deletions::Deletions;
use super::index::MessageIndex;
use super::log::{self, LogWriter, MessageLog};
use super::{ConvId, LogStore, Seq};
use crate::config::SyncMode;

/// The database file inside the data directory.
pub(in crate::store) fn database_path(data_dir: &Path) -> PathBuf {
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
pub(in crate::store) fn open(path: &Path, sync: SyncMode) -> anyhow::Result<Connection> {
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
    /// Which messages are deleted and which are tombstones; shared with the readers.
    deletions: Arc<Deletions>,
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
            recovery::set_clean_stop(&tx, true)?;
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
        let mut conn = open(&database_path(data_dir), sync)?;
        // The writer appends: what it reads again is the tables' upper pages and the
        // latest leaves. A page cache of its size is allocated page by page (each a
        // malloc and first-touch faults) until it is full, and only then reused: at
        // 32 MB that took the first half million messages or so (a third of the hub
        // thread's time in a 300,000-message run); at 4 MB it is reused after 60,000.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        let full = sync == SyncMode::Full;
        migrations::migrate(&mut conn, data_dir, full)?;
        let started = std::time::Instant::now();
        let (messages, log) = MessageLog::open(data_dir, full, log::saved_spans(&conn))
            .context("opening the message log")?;
        let index =
            Arc::new(MessageIndex::load(&conn, &messages).context("indexing the messages")?);
        let deletions =
            Arc::new(Deletions::load(&conn, messages.last_id()).context("reading the deletions")?);
        if !recovery::take_clean_stop(&conn)? {
            tracing::info!("the last stop was not clean");
        }
        // At every start: a log cut or damaged while the server was stopped lacks messages
        // that the cursors of a clean stop count.
        recovery::clamp_to_log(&conn, &index).context("checking cursors against the log")?;
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
        checkpoint::spawn_checkpointer(database_path(data_dir), sync, checkpoints.clone())?;
        let mut store = SqliteStore {
            conn,
            index,
            log,
            deletions,
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

    /// Which messages are deleted, for the readers.
    pub fn deletions(&self) -> Arc<Deletions> {
        self.deletions.clone()
    }

    /// `conv`'s last sequence: its last stored message's, or what a database written
    /// before counted in `conversations.last_seq`, if more.
    fn last_seq_of(&self, conv: ConvId, counted: Seq) -> Seq {
        counted.max(self.index.last_seq(conv))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::{Batch, LogStore, NewMessage};

    pub(super) fn message(id: i64, conv: ConvId, seq: Seq) -> NewMessage {
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

    pub(super) fn batch(messages: impl IntoIterator<Item = NewMessage>) -> Batch {
        let messages: Vec<NewMessage> = messages.into_iter().collect();
        Batch {
            next_message_id: messages.last().map_or(1, |m| m.id + 1),
            messages,
            ..Batch::default()
        }
    }

    /// Stops the store as a crash would: nothing saved.
    pub(super) fn crash(store: SqliteStore) {
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
        crate::store::varint::put(&mut blob, 4);
        for id in [4, 2, 2, 2] {
            crate::store::varint::put(&mut blob, id);
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
}
