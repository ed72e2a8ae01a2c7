//! Recovery at start: the rows that may point past the end of the message log.
//!
//! A clean stop saves the message index and the log's spans and sets `clean_stop`; every
//! start clears it. Every start, clean or not, checks the cursors and join points against
//! the log: a crash, a power loss or a log cut while the server was stopped can each leave
//! them past it.

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{ConvId, MessageIndex, Seq};

/// Records whether the server stopped cleanly (the index and spans were saved) and returns
/// what the last stop was: set at a clean stop, cleared at every start.
pub(super) fn take_clean_stop(conn: &Connection) -> anyhow::Result<bool> {
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

pub(super) fn set_clean_stop(conn: &Connection, clean: bool) -> anyhow::Result<()> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES ('clean_stop', ?1)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        [i64::from(clean)],
    )?;
    Ok(())
}

/// Moves cursors and join points that lie past the end of their conversation in the log
/// back to it. A batch's rows commit before its messages are appended, so a crash between
/// the two can leave a room joined after messages that were never stored; a power loss
/// (with `sync = "normal"`) can take messages from the log that SQLite's cursors already
/// count; so can a log whose tail was cut after a clean stop. Left there, the next messages
/// would get sequences their members are taken to have seen, and would never be delivered.
/// Reads the two tables once (a few hundred milliseconds per million rows).
pub(super) fn clamp_to_log(conn: &Connection, index: &MessageIndex) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::tests::{batch, crash, message};
    use super::super::{database_path, SqliteStore};
    use crate::config::SyncMode;
    use crate::store::LogStore;

    /// After a crash, a cursor or a join point past the end of its conversation in the log
    /// (the rows of a batch committed, its messages not) is moved back to the end; after a
    /// clean stop too (the log may have been cut while the server was stopped).
    #[test]
    fn cursors_and_join_points_past_the_log_are_moved_back_at_every_start() {
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
        // After a clean stop (the last open's) as well.
        db.execute_batch("UPDATE cursors SET seq = 9 WHERE device_id = 1")
            .unwrap();
        drop(SqliteStore::open(dir.path(), SyncMode::Normal).unwrap());
        assert_eq!(read(), (vec![3, 1], 3));
    }
}
