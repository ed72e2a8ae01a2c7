//! The store's queries: what the hub reads at start and while it runs, and its one write.

use std::sync::atomic::Ordering;

use rusqlite::{params, OptionalExtension};

use super::{recovery, SqliteStore};
use crate::store::Batch;
use crate::store::{
    ContactState, ConvId, DeviceId, DirectConv, LogStore, Mark, Membership, NextIds, Seq,
    StoredRoom, UserId, UserState, KIND_BROADCAST,
};

/// Every room with its members, one row per member (or one for a room without any), in room
/// order. Each room's members are found through `memberships_conversation` (schema V4).
const LOAD_ROOMS: &str = "SELECT c.id, c.name, m.user_id, c.created_by, c.topic, c.invite_only
     FROM conversations c
     LEFT JOIN memberships m ON m.conversation_id = c.id
     WHERE c.kind = 2 AND c.deleted_at IS NULL ORDER BY c.id";

impl LogStore for SqliteStore {
    fn load_users(&mut self) -> anyhow::Result<Vec<(UserId, String, bool)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, name, password_hash IS NOT NULL FROM users")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn load_user_states(&mut self) -> anyhow::Result<Vec<(UserId, UserState)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, disabled_at IS NOT NULL, deleted_at IS NOT NULL FROM users
             WHERE disabled_at IS NOT NULL OR deleted_at IS NOT NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            let state = UserState {
                disabled: r.get(1)?,
                deleted: r.get(2)?,
            };
            Ok((r.get(0)?, state))
        })?;
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

    fn last_seq(&mut self, conv: ConvId) -> anyhow::Result<Seq> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT last_seq FROM conversations WHERE id = ?1")?;
        let counted: Option<Seq> = stmt.query_row([conv], |r| r.get(0)).optional()?;
        Ok(self.last_seq_of(conv, counted.unwrap_or(0)))
    }

    fn load_rooms(&mut self) -> anyhow::Result<Vec<StoredRoom>> {
        let mut rooms: Vec<StoredRoom> = Vec::new();
        let mut stmt = self.conn.prepare_cached(LOAD_ROOMS)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let conv: ConvId = row.get(0)?;
            let member: Option<UserId> = row.get(2)?;
            if rooms.last().map(|r| r.conv) != Some(conv) {
                rooms.push(StoredRoom {
                    conv,
                    name: row.get(1)?,
                    members: Vec::new(),
                    created_by: row.get(3)?,
                    topic: row.get(4)?,
                    invite_only: row.get::<_, i64>(5)? != 0,
                    marks: Vec::new(),
                });
            }
            let room = rooms.last_mut().expect("pushed above");
            room.members.extend(member);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT conversation_id, user_id, mark FROM room_marks")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let (conv, user, mark): (ConvId, UserId, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            // Rooms are in id order.
            let at = rooms.binary_search_by_key(&conv, |r| r.conv);
            if let (Ok(at), Some(mark)) = (at, Mark::from_i64(mark)) {
                rooms[at].marks.push((user, mark));
            }
        }
        Ok(rooms)
    }

    fn load_blocks(&mut self) -> anyhow::Result<Vec<(UserId, UserId)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT user_id, blocked_id FROM blocks")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn is_deleted(&mut self, id: i64) -> anyhow::Result<bool> {
        Ok(self.deletions.is_deleted(id))
    }

    fn ensure_builtin(&mut self, anonymous: &str) -> anyhow::Result<(ConvId, UserId)> {
        let now = crate::store::now_ms();
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
        let reserve = (batch.next_message_id > self.ids_reserved)
            .then(|| batch.next_message_id + super::ID_RESERVE);
        // The rows first: none of them refers to a message of its own batch but a join
        // point (see `clamp_to_log`), so a crash or a failure between the two leaves
        // nothing that points at a message that is not stored.
        if batch.has_rows() || reserve.is_some() {
            self.write_rows(batch, reserve)?;
        }
        if let Err(e) = self.log.append(&batch.messages) {
            if !batch.joins.is_empty() {
                if let Err(undo) = recovery::clamp_to_log(&self.conn, &self.index) {
                    tracing::error!(error = %format!("{undo:#}"), "moving join points back");
                }
            }
            // A deletion stands only with its tombstone in the log.
            for d in &batch.deletions {
                let undo = self
                    .conn
                    .execute("DELETE FROM deletions WHERE message_id = ?1", [d.message]);
                if let Err(undo) = undo {
                    tracing::error!(error = %undo, "undoing a deletion");
                }
            }
            return Err(e);
        }
        // Before the index shows the tombstones, so no reader takes one for a message.
        self.deletions.record(&batch.deletions);
        self.index.append(&batch.messages);
        if self.checkpoints.restart.swap(false, Ordering::Relaxed) {
            self.restart_wal();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use crate::config::SyncMode;

    /// Loading the rooms at start finds each room's members by an index, not by a scan of
    /// every membership per room (which made a start with 90,000 rooms take 7 minutes).
    #[test]
    fn loading_the_rooms_scans_no_table_per_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), SyncMode::Normal).unwrap();
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", super::LOAD_ROOMS))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.starts_with("SCAN c")),
            "the rooms are read once: {plan:?}"
        );
        assert!(
            plan.iter()
                .any(|step| step.starts_with("SEARCH m") && step.contains("INDEX")),
            "each room's members are searched by an index: {plan:?}"
        );
    }
}
