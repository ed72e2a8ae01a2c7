//! Brings a database to the current schema version, kept in SQLite's `user_version` by
//! rusqlite_migration: the versions a database lacks run in order, in one transaction, so
//! a start that stops half way leaves the database as it was.
//!
//! What each database does at start:
//! - new (no tables): every version runs;
//! - of a version this parley knows: the versions after it run;
//! - written before the schema was versioned (`user_version` 0, tables present): adopted
//!   at the version it matches (2 with the account columns, 1 without), then as above;
//! - of a newer version than this parley knows: refused, naming both versions.

use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, Transaction};
use rusqlite_migration::{HookError, Migrations, M};

use super::schema;
use crate::store::log::{self, MessageLog};
use crate::store::NewMessage;

/// The schema version this parley writes.
pub(in crate::store) const LATEST: usize = 9;

/// The migrations, in order: version `n` is the `n`-th. `data_dir` is where the message
/// log is, for the move of version 3.
fn migrations(data_dir: &Path, sync: bool) -> Migrations<'static> {
    let dir = data_dir.to_path_buf();
    Migrations::new(vec![
        M::up(schema::V1),
        M::up(schema::V2),
        M::up_with_hook(schema::V3, move |tx: &Transaction| {
            move_messages(tx, &dir, sync).map_err(|e| HookError::Hook(format!("{e:#}")))
        }),
        M::up(schema::V4),
        M::up(schema::V5),
        M::up(schema::V6),
        M::up(schema::V7),
        M::up(schema::V8),
        M::up(schema::V9),
    ])
}

/// Migrates the database of `data_dir` to [`LATEST`].
pub(super) fn migrate(conn: &mut Connection, data_dir: &Path, sync: bool) -> anyhow::Result<()> {
    adopt_unversioned(conn)?;
    let version = user_version(conn)?;
    anyhow::ensure!(
        version <= LATEST,
        "the database {} is of schema version {version}, written by a newer parley; this one \
         reads versions up to {LATEST}",
        super::database_path(data_dir).display()
    );
    migrations(data_dir, sync)
        .to_latest(conn)
        .with_context(|| format!("migrating the database from schema version {version}"))
}

fn user_version(conn: &Connection) -> anyhow::Result<usize> {
    let v: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok(usize::try_from(v).unwrap_or(usize::MAX))
}

/// Sets the version of a database written before the schema was versioned to the one it
/// matches.
fn adopt_unversioned(conn: &Connection) -> anyhow::Result<()> {
    let exists = |sql: &str| -> rusqlite::Result<bool> { conn.query_row(sql, [], |r| r.get(0)) };
    if user_version(conn)? != 0
        || !exists(
            "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'users'",
        )?
    {
        return Ok(());
    }
    let accounts =
        exists("SELECT COUNT(*) > 0 FROM pragma_table_info('users') WHERE name = 'password_hash'")?;
    let version = if accounts { 2 } else { 1 };
    conn.pragma_update(None, "user_version", version)?;
    tracing::info!(version, "database written before schema versions adopted");
    Ok(())
}

/// Version 3's move: the messages of a database of an earlier layout, a `message_blocks`
/// table (blocks of messages a row) or, older, a `messages` table of a row per message
/// (ordered by id or, in the first layout, by conversation and sequence), go into the log.
/// Ids, sequences and the saved index stay as they were. The log is made durable before
/// the tables are dropped; a move that did not finish (the migration's transaction not
/// committed) goes on from the log's last message at the next start.
fn move_messages(tx: &Transaction, data_dir: &Path, sync: bool) -> anyhow::Result<()> {
    let has_table = |name: &str| -> rusqlite::Result<bool> {
        tx.query_row(
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
    let (_, mut log) = MessageLog::open(data_dir, sync, log::saved_spans(tx))
        .context("opening the message log")?;
    let moved = log.last_id();
    if rows {
        let mut stmt = tx.prepare(
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
            tx.prepare("SELECT data FROM message_blocks WHERE last_id > ?1 ORDER BY last_id")?;
        let mut rows = stmt.query([moved])?;
        while let Some(row) = rows.next()? {
            log.append_block(row.get_ref(0)?.as_blob()?)
                .context("moving a block of messages")?;
        }
    }
    log.sync()?;
    tx.execute_batch("DROP TABLE IF EXISTS messages; DROP TABLE IF EXISTS message_blocks")?;
    tracing::info!(
        up_to = log.last_id(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "messages moved into the message log"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};

    use super::super::tests::message;
    use super::super::{database_path, SqliteStore};
    use crate::config::SyncMode;
    use crate::store::log::{self, MessageLog};
    use crate::store::{LogStore, NewMessage};

    /// A row-per-message table larger than one chunk of the move comes out whole: every
    /// message in its conversation's index and readable with its fields.
    #[test]
    fn a_large_row_per_message_table_is_moved_into_the_log_whole() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), SyncMode::Normal).unwrap());
        let db = Connection::open(database_path(dir.path())).unwrap();
        db.execute_batch(
            "PRAGMA user_version = 0; ALTER TABLE devices DROP COLUMN first_message_id;
             ALTER TABLE conversations DROP COLUMN created_by;
             ALTER TABLE conversations DROP COLUMN deleted_at;
             ALTER TABLE users DROP COLUMN disabled_at; ALTER TABLE users DROP COLUMN deleted_at;
             ALTER TABLE conversations DROP COLUMN topic;
             ALTER TABLE conversations DROP COLUMN invite_only;
             DROP TABLE room_marks; DROP TABLE blocks; DROP TABLE deletions;
             DROP INDEX memberships_conversation;
             DELETE FROM message_index; DELETE FROM message_spans; DELETE FROM counters;
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
            "PRAGMA user_version = 0; ALTER TABLE devices DROP COLUMN first_message_id;
             ALTER TABLE conversations DROP COLUMN created_by;
             ALTER TABLE conversations DROP COLUMN deleted_at;
             ALTER TABLE users DROP COLUMN disabled_at; ALTER TABLE users DROP COLUMN deleted_at;
             ALTER TABLE conversations DROP COLUMN topic;
             ALTER TABLE conversations DROP COLUMN invite_only;
             DROP TABLE room_marks; DROP TABLE blocks; DROP TABLE deletions;
             DROP INDEX memberships_conversation;
             DELETE FROM message_spans; DELETE FROM message_index;
             CREATE TABLE message_blocks (
                 last_id INTEGER PRIMARY KEY, first_id INTEGER NOT NULL, data BLOB NOT NULL)",
        )
        .unwrap();
        let mut blocks = Vec::new();
        crate::store::blocks::each_block(&messages, &mut Vec::new(), |first, last, data| {
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

    /// A database written before the schema was versioned, from before accounts (no
    /// password column), is adopted at version 1 and migrated from there: its users are
    /// kept and get the account columns.
    #[test]
    fn an_unversioned_database_without_accounts_is_adopted_and_migrated() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Connection::open(database_path(dir.path())).unwrap();
            db.execute_batch(super::super::schema::V1).unwrap();
            db.execute(
                "INSERT INTO users (name, created_at) VALUES ('alice', 1)",
                [],
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        let users = store.load_users().unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!((users[0].1.as_str(), users[0].2), ("alice", false));
        drop(store);
        let db = Connection::open(database_path(dir.path())).unwrap();
        let version: usize = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, super::LATEST);
    }

    /// A database of a version this parley does not know (a newer one wrote it) is refused
    /// with both versions named, and left as it was.
    #[test]
    fn a_database_of_a_newer_version_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(SqliteStore::open(dir.path(), SyncMode::Normal).unwrap());
        let newer = super::LATEST + 1;
        let db = Connection::open(database_path(dir.path())).unwrap();
        db.pragma_update(None, "user_version", newer).unwrap();
        let Err(e) = SqliteStore::open(dir.path(), SyncMode::Normal) else {
            panic!("a database of version {newer} was opened");
        };
        let e = format!("{e:#}");
        assert!(
            e.contains(&format!("schema version {newer}"))
                && e.contains(&format!("up to {}", super::LATEST)),
            "{e}"
        );
    }
}
