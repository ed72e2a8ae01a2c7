//! Writing a group commit's rows: everything of a [`Batch`] but its messages, in one
//! transaction.

use anyhow::Context;
use rusqlite::{params, Connection};

use super::SqliteStore;
use crate::store::{Batch, Revoke, RoomSetting, KIND_ROOM};

impl SqliteStore {
    /// Writes the batch's rows (all but its messages) in one transaction; `reserve` is the
    /// new reserved mark of message ids, when the batch goes past the old one.
    pub(super) fn write_rows(&mut self, batch: &Batch, reserve: Option<i64>) -> anyhow::Result<()> {
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
}

/// The rows of one batch, inside the transaction `write_rows` opened.
fn write_batch(tx: &Connection, batch: &Batch, reserve: Option<i64>) -> anyhow::Result<()> {
    let now = crate::store::now_ms();
    // Last seen is when a session of the user last ended: none yet ("never").
    let mut users = tx.prepare_cached(
        "INSERT INTO users (id, name, created_at, last_seen_at) VALUES (?1, ?2, ?3, NULL)",
    )?;
    for (id, name) in &batch.users {
        users.execute(params![id, name, now])?;
    }
    let mut devices = tx.prepare_cached(
        "INSERT INTO devices (id, user_id, name, created_at, last_seen_at, first_message_id)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
    )?;
    // Messages of this batch may have been handed out before the device's login: the
    // batch's first id (a device may get a few more, never fewer).
    let first_message = batch
        .messages
        .first()
        .map_or(batch.next_message_id, |m| m.id);
    for (id, user, name) in &batch.devices {
        devices.execute(params![id, user, name, now, first_message])?;
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
        "INSERT INTO conversations (id, kind, name, created_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (id, name, creator) in &batch.rooms {
        rooms.execute(params![id, KIND_ROOM, name, now, creator])?;
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
    let mut user_state = tx.prepare_cached(
        "UPDATE users SET
             disabled_at = CASE WHEN ?2 THEN COALESCE(disabled_at, ?4) END,
             deleted_at = CASE WHEN ?3 THEN COALESCE(deleted_at, ?4) END,
             password_hash = CASE WHEN ?3 THEN NULL ELSE password_hash END
         WHERE id = ?1",
    )?;
    for (user, state) in &batch.user_states {
        user_state.execute(params![user, state.disabled, state.deleted, now])?;
    }
    let mut room_deleted = tx.prepare_cached(
        "UPDATE conversations SET name = NULL, deleted_at = ?2 WHERE id = ?1 AND kind = ?3",
    )?;
    let mut room_members =
        tx.prepare_cached("DELETE FROM memberships WHERE conversation_id = ?1")?;
    let mut room_cursors = tx.prepare_cached("DELETE FROM cursors WHERE conversation_id = ?1")?;
    let mut room_files = tx.prepare_cached("DELETE FROM attachments WHERE conversation_id = ?1")?;
    for conv in &batch.rooms_deleted {
        room_deleted.execute(params![conv, now, KIND_ROOM])?;
        room_members.execute([conv])?;
        room_cursors.execute([conv])?;
        room_files.execute([conv])?;
    }
    write_moderation(tx, batch, now)?;
    if let Some(mark) = reserve {
        tx.prepare_cached(
            "INSERT INTO counters (name, value) VALUES ('next_message_id', ?1)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )?
        .execute([mark])?;
    }
    Ok(())
}

/// The moderation rows of a batch: room settings and marks, blocks, deletions, and the marks
/// of rooms deleted. Rare, so each statement is prepared only when the batch has rows for it.
fn write_moderation(tx: &Connection, batch: &Batch, now: i64) -> anyhow::Result<()> {
    for (conv, setting) in &batch.room_settings {
        match setting {
            RoomSetting::Topic(topic) => tx
                .prepare_cached("UPDATE conversations SET topic = ?2 WHERE id = ?1")?
                .execute(params![conv, topic])?,
            RoomSetting::InviteOnly(on) => tx
                .prepare_cached("UPDATE conversations SET invite_only = ?2 WHERE id = ?1")?
                .execute(params![conv, i64::from(*on)])?,
        };
    }
    for m in &batch.room_marks {
        if m.set {
            tx.prepare_cached(
                "INSERT INTO room_marks (conversation_id, user_id, mark, set_by, set_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )?
            .execute(params![m.conv, m.user, m.mark as i64, m.by, now])?;
        } else {
            tx.prepare_cached(
                "DELETE FROM room_marks WHERE conversation_id = ?1 AND user_id = ?2 AND mark = ?3",
            )?
            .execute(params![m.conv, m.user, m.mark as i64])?;
        }
    }
    for (user, other, on) in &batch.blocks {
        if *on {
            tx.prepare_cached(
                "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![user, other, now])?;
        } else {
            tx.prepare_cached("DELETE FROM blocks WHERE user_id = ?1 AND blocked_id = ?2")?
                .execute(params![user, other])?;
        }
    }
    for d in &batch.deletions {
        tx.prepare_cached(
            "INSERT INTO deletions (message_id, conversation_id, seq, tombstone_id, deleted_by,
                                    deleted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![d.message, d.conv, d.seq, d.tombstone, d.by, d.at])?;
    }
    // A deleted room's marks go with its members (`rooms_deleted`, written above).
    for conv in &batch.rooms_deleted {
        tx.prepare_cached("DELETE FROM room_marks WHERE conversation_id = ?1")?
            .execute([conv])?;
    }
    Ok(())
}
