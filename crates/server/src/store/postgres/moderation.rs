//! Moderation in PostgreSQL: what operators made of accounts, rooms' settings and marks,
//! blocks and deleted messages (schema version 2), as the embedded store keeps them in
//! SQLite.
//!
//! A batch writes them in its own transaction (write.rs calls [`Rows`]): a change is stored
//! with the batch that made it or not at all, and a deletion with its tombstone, whose id
//! PostgreSQL gives in that same transaction. Each such batch also counts one more in
//! `moderation_version` and logs its moderation events (JSON, as NATS carries them) in
//! `moderation_log` by that number. Every node reads the number at each reconciliation:
//! a node that sees one it has not applied reads the log after its own
//! ([`PgStore::moderation_log_after`]) — how a change announced while NATS was away still
//! reaches it — or, if the log no longer holds that far back, all of moderation again
//! ([`PgStore::moderation`]; the tables are small, a row per operator's decision).
//!
//! Readers ask which messages of a page are deleted or tombstones
//! ([`PgReader::deletions_among`]): one more indexed query per page of history or catch-up,
//! whatever the messages table's layout.

use std::collections::HashMap;

use bytes::Bytes;
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::{rows, Conn, PgReader, PgStore};
use crate::store::{
    Batch, ConvId, Mark, MessageKind, Page, RoomSetting, Seq, StoredMessage, UserId, UserState,
};

/// A room's rules as PostgreSQL holds them.
#[derive(Debug, Clone, Default)]
pub struct PgRules {
    pub topic: Option<String>,
    pub invite_only: bool,
    /// Operators, bans, mutes and invitations.
    pub marks: Vec<(UserId, Mark)>,
}

/// Everything moderation keeps, read whole.
#[derive(Debug, Default)]
pub struct Moderation {
    /// What `moderation_version` said when this was read.
    pub version: i64,
    pub user_states: Vec<(UserId, UserState)>,
    pub blocks: Vec<(UserId, UserId)>,
    /// Rules of every room that has any.
    pub rules: HashMap<ConvId, PgRules>,
}

/// Versions of `moderation_log` kept: a node further behind reads moderation whole.
const LOG_KEPT: i64 = 4096;

impl PgStore {
    /// The moderation events logged after `version`, in order, each with its version (a
    /// JSON array of events), up to `limit` of them.
    pub fn moderation_log_after(
        &mut self,
        version: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<(i64, String)>> {
        let rows = rows!(
            self,
            "SELECT version, events FROM moderation_log WHERE version > $1
             ORDER BY version LIMIT $2",
            version,
            limit
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Reads moderation's tables whole, and the version they are at.
    pub fn moderation(&mut self) -> anyhow::Result<Moderation> {
        let version = self.moderation_version()?;
        self.moderation_loaded.get_or_insert(version);
        let states = rows!(
            self,
            "SELECT user_id, disabled_at IS NOT NULL, deleted_at IS NOT NULL FROM user_states
             WHERE disabled_at IS NOT NULL OR deleted_at IS NOT NULL",
        )?;
        let user_states = states
            .iter()
            .map(|r| {
                let state = UserState {
                    disabled: r.get(1),
                    deleted: r.get(2),
                };
                (r.get(0), state)
            })
            .collect();
        let blocks = rows!(self, "SELECT user_id, blocked_id FROM blocks",)?;
        let blocks = blocks.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut rules: HashMap<ConvId, PgRules> = HashMap::new();
        let settings = rows!(
            self,
            "SELECT conversation_id, topic, invite_only FROM room_settings",
        )?;
        for r in &settings {
            let entry = rules.entry(r.get(0)).or_default();
            entry.topic = r.get(1);
            entry.invite_only = r.get(2);
        }
        let marks = rows!(
            self,
            "SELECT conversation_id, user_id, mark FROM room_marks",
        )?;
        for r in &marks {
            if let Some(mark) = Mark::from_i64(i64::from(r.get::<_, i16>(2))) {
                let entry = rules.entry(r.get(0)).or_default();
                entry.marks.push((r.get(1), mark));
            }
        }
        Ok(Moderation {
            version,
            user_states,
            blocks,
            rules,
        })
    }

    /// Which of `users` are members of which of `rooms`: (room, user).
    pub fn members_among(
        &mut self,
        users: &[UserId],
        rooms: &[ConvId],
    ) -> anyhow::Result<Vec<(ConvId, UserId)>> {
        let (users, rooms) = (users.to_vec(), rooms.to_vec());
        let rows = rows!(
            self,
            "SELECT conversation_id, user_id FROM memberships
             WHERE user_id = ANY($1) AND conversation_id = ANY($2)",
            users,
            rooms
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// How many batches changed moderation so far.
    pub fn moderation_version(&mut self) -> anyhow::Result<i64> {
        let rows = rows!(self, "SELECT version FROM moderation_version",)?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// Room `conv`'s owner (its creator) and rules, in one query.
    pub fn room_rules(&mut self, conv: ConvId) -> anyhow::Result<(Option<UserId>, PgRules)> {
        let rows = rows!(
            self,
            "SELECT c.created_by, s.topic, COALESCE(s.invite_only, false), m.user_id, m.mark
             FROM conversations c
             LEFT JOIN room_settings s ON s.conversation_id = c.id
             LEFT JOIN room_marks m ON m.conversation_id = c.id
             WHERE c.id = $1",
            conv
        )?;
        let mut rules = PgRules::default();
        let Some(first) = rows.first() else {
            return Ok((None, rules));
        };
        let owner = first.get(0);
        rules.topic = first.get(1);
        rules.invite_only = first.get(2);
        for r in &rows {
            let (user, mark): (Option<UserId>, Option<i16>) = (r.get(3), r.get(4));
            if let (Some(user), Some(mark)) = (user, mark.and_then(|m| Mark::from_i64(m.into()))) {
                rules.marks.push((user, mark));
            }
        }
        Ok((owner, rules))
    }

    /// Whether message `id` is deleted.
    pub fn message_deleted(&mut self, id: i64) -> anyhow::Result<bool> {
        let rows = rows!(self, "SELECT 1 FROM deletions WHERE message_id = $1", id)?;
        Ok(!rows.is_empty())
    }

    /// If message `id` is a deletion's tombstone: the deleted message's (id, sequence).
    pub fn tombstone(&mut self, id: i64) -> anyhow::Result<Option<(i64, Seq)>> {
        let rows = rows!(
            self,
            "SELECT message_id, seq FROM deletions WHERE tombstone_id = $1",
            id
        )?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }
}

impl PgReader {
    /// What each of `ids` (messages of `conv`) is, for those that are not plain messages.
    pub async fn deletions_among(
        &self,
        conv: ConvId,
        ids: Vec<i64>,
    ) -> anyhow::Result<HashMap<i64, MessageKind>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self
            .query(
                "SELECT message_id, seq, tombstone_id FROM deletions
                 WHERE conversation_id = $1 AND (message_id = ANY($2) OR tombstone_id = ANY($2))",
                &[&conv, &ids],
            )
            .await?;
        let mut kinds = HashMap::with_capacity(rows.len() * 2);
        for r in &rows {
            let (message, seq, tombstone): (i64, Seq, i64) = (r.get(0), r.get(1), r.get(2));
            kinds.insert(message, MessageKind::Deleted);
            kinds.insert(tombstone, MessageKind::Tombstone(message, seq));
        }
        Ok(kinds)
    }
}

/// One statement of a batch's transaction: what it writes (for errors), and its parameters.
pub(super) type Step<'p> = (&'static str, Statement, Vec<&'p (dyn ToSql + Sync)>);

/// The moderation rows of a batch, as the parameters of its statements.
pub(super) struct Rows {
    now: i64,
    /// (user, disabled at, deleted at).
    states: Vec<(UserId, Option<i64>, Option<i64>)>,
    topics: Vec<(ConvId, Option<String>)>,
    modes: Vec<(ConvId, bool)>,
    /// (room, user, mark, set by, set or cleared), in the batch's order.
    marks: Vec<(ConvId, UserId, i16, UserId, bool)>,
    /// (user, the user they block, begun or ended), in the batch's order.
    blocks: Vec<(UserId, UserId, bool)>,
    /// (message, conversation, sequence, tombstone id as stored, by, at).
    deletions: Vec<(i64, ConvId, Seq, i64, UserId, i64)>,
    /// Rooms deleted: their name is freed, their members, cursors and rules go.
    rooms_deleted: Vec<ConvId>,
    /// The batch's moderation events, a JSON array, logged by the version it takes.
    log: String,
}

impl Rows {
    /// The rows of `batch`, whose messages were given the ids `ids` (in the batch's order):
    /// a deletion names its tombstone by the hub's id, which PostgreSQL replaced.
    pub fn of(batch: &Batch, ids: &[i64]) -> anyhow::Result<Rows> {
        let now = crate::store::now_ms();
        let mut rows = Rows {
            now,
            states: Vec::new(),
            topics: Vec::new(),
            modes: Vec::new(),
            marks: Vec::new(),
            blocks: batch.blocks.clone(),
            deletions: Vec::new(),
            rooms_deleted: batch.rooms_deleted.clone(),
            log: format!("[{}]", batch.moderation_log.join(",")),
        };
        for (user, state) in &batch.user_states {
            let at = |on: bool| on.then_some(now);
            rows.states.push((
                *user,
                at(state.disabled || state.deleted),
                at(state.deleted),
            ));
        }
        for (conv, setting) in &batch.room_settings {
            match setting {
                RoomSetting::Topic(topic) => rows.topics.push((*conv, topic.clone())),
                RoomSetting::InviteOnly(on) => rows.modes.push((*conv, *on)),
            }
        }
        for m in &batch.room_marks {
            rows.marks
                .push((m.conv, m.user, m.mark as i16, m.by, m.set));
        }
        for d in &batch.deletions {
            let at = batch.messages.iter().position(|m| m.id == d.tombstone);
            let tombstone = at
                .and_then(|at| ids.get(at))
                .copied()
                .ok_or_else(|| anyhow::anyhow!("a deletion whose tombstone is not in its batch"))?;
            rows.deletions
                .push((d.message, d.conv, d.seq, tombstone, d.by, d.at));
        }
        Ok(rows)
    }

    fn is_empty(&self) -> bool {
        self.states.is_empty()
            && self.topics.is_empty()
            && self.modes.is_empty()
            && self.marks.is_empty()
            && self.blocks.is_empty()
            && self.deletions.is_empty()
            && self.rooms_deleted.is_empty()
            && self.log == "[]"
    }

    /// The statements that write these rows (none for a batch without any: most batches),
    /// one that counts the change in `moderation_version` and logs the batch's events by
    /// the version it took (a batch without events logs none: a node reads the empty list
    /// and knows it missed nothing), and one that drops the log's oldest.
    pub async fn steps<'p>(&'p self, conn: &mut Conn) -> anyhow::Result<Vec<Step<'p>>> {
        let mut steps: Vec<Step<'p>> = Vec::new();
        if self.is_empty() {
            return Ok(steps);
        }
        for (user, disabled, deleted) in &self.states {
            let sql = "INSERT INTO user_states (user_id, disabled_at, deleted_at)
                       VALUES ($1, $2, $3)
                       ON CONFLICT (user_id) DO UPDATE SET
                           disabled_at = CASE WHEN excluded.disabled_at IS NULL THEN NULL
                                         ELSE COALESCE(user_states.disabled_at,
                                                       excluded.disabled_at) END,
                           deleted_at = COALESCE(user_states.deleted_at, excluded.deleted_at)";
            steps.push((
                "user state",
                conn.prepare(sql).await?,
                vec![user, disabled, deleted],
            ));
            if deleted.is_some() {
                // Deleted for good: no password logs in again (as on one node).
                let sql = "UPDATE users SET password_hash = NULL WHERE id = $1";
                steps.push(("user deleted", conn.prepare(sql).await?, vec![user]));
            }
        }
        for (conv, topic) in &self.topics {
            let sql = "INSERT INTO room_settings (conversation_id, topic) VALUES ($1, $2)
                       ON CONFLICT (conversation_id) DO UPDATE SET topic = excluded.topic";
            steps.push(("topic", conn.prepare(sql).await?, vec![conv, topic]));
        }
        for (conv, on) in &self.modes {
            let sql = "INSERT INTO room_settings (conversation_id, invite_only) VALUES ($1, $2)
                       ON CONFLICT (conversation_id)
                       DO UPDATE SET invite_only = excluded.invite_only";
            steps.push(("invite-only", conn.prepare(sql).await?, vec![conv, on]));
        }
        for (conv, user, mark, by, set) in &self.marks {
            if *set {
                let sql = "INSERT INTO room_marks (conversation_id, user_id, mark, set_by, set_at)
                           VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
                let params: Vec<&(dyn ToSql + Sync)> = vec![conv, user, mark, by, &self.now];
                steps.push(("mark", conn.prepare(sql).await?, params));
            } else {
                let sql = "DELETE FROM room_marks
                           WHERE conversation_id = $1 AND user_id = $2 AND mark = $3";
                steps.push(("mark", conn.prepare(sql).await?, vec![conv, user, mark]));
            }
        }
        for (user, other, on) in &self.blocks {
            if *on {
                let sql = "INSERT INTO blocks (user_id, blocked_id, created_at)
                           VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
                steps.push((
                    "block",
                    conn.prepare(sql).await?,
                    vec![user, other, &self.now],
                ));
            } else {
                let sql = "DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2";
                steps.push(("block", conn.prepare(sql).await?, vec![user, other]));
            }
        }
        for (message, conv, seq, tombstone, by, at) in &self.deletions {
            let sql = "INSERT INTO deletions (message_id, conversation_id, seq, tombstone_id,
                                              deleted_by, deleted_at)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
            let params: Vec<&(dyn ToSql + Sync)> = vec![message, conv, seq, tombstone, by, at];
            steps.push(("deletion", conn.prepare(sql).await?, params));
        }
        for conv in &self.rooms_deleted {
            // Its row stays, nameless, so that its id is never handed out again (as on
            // one node); the name is free for a new room.
            let sql = "UPDATE conversations SET name = NULL WHERE id = $1 AND kind = 2";
            steps.push(("room deleted", conn.prepare(sql).await?, vec![conv]));
            for sql in [
                "DELETE FROM memberships WHERE conversation_id = $1",
                "DELETE FROM cursors WHERE conversation_id = $1",
                "DELETE FROM attachments WHERE conversation_id = $1",
                "DELETE FROM room_settings WHERE conversation_id = $1",
                "DELETE FROM room_marks WHERE conversation_id = $1",
            ] {
                steps.push(("room deleted", conn.prepare(sql).await?, vec![conv]));
            }
        }
        let sql =
            "WITH v AS (UPDATE moderation_version SET version = version + 1 RETURNING version)
                   INSERT INTO moderation_log (version, events) SELECT version, $1 FROM v";
        steps.push((
            "moderation version",
            conn.prepare(sql).await?,
            vec![&self.log],
        ));
        let sql = "DELETE FROM moderation_log
                   WHERE version <= (SELECT version FROM moderation_version) - $1";
        steps.push(("moderation log", conn.prepare(sql).await?, vec![&LOG_KEPT]));
        Ok(steps)
    }
}

impl PgReader {
    /// A page of `conv`'s history as `page` reads it, with deleted messages marked (their
    /// words never read out again) and the tombstones left out, as on one node: a page cut
    /// short by tombstones is read on past them, so it is short only where the history ends.
    pub async fn history(
        &self,
        conv: ConvId,
        page: Page,
        limit: usize,
    ) -> anyhow::Result<Vec<(StoredMessage, i64)>> {
        let forward = matches!(
            page,
            Page::AfterId(_) | Page::AfterSeq(_) | Page::AfterTime(_)
        );
        // Nearest to the page's start first.
        let mut kept: Vec<(StoredMessage, i64)> = Vec::new();
        let mut next = page;
        while kept.len() < limit {
            let want = limit - kept.len();
            let mut rows = self.page(conv, next, want).await?;
            let got = rows.len();
            let ids = rows.iter().map(|(m, _)| m.id).collect();
            let kinds = self.deletions_among(conv, ids).await?;
            if !forward {
                rows.reverse();
            }
            let Some(edge) = rows.last().map(|(m, _)| m.id) else {
                break;
            };
            for (mut m, at) in rows {
                if let Some(&kind) = kinds.get(&m.id) {
                    if let MessageKind::Tombstone(..) = kind {
                        continue;
                    }
                    m.kind = kind;
                    m.body = Bytes::new();
                }
                kept.push((m, at));
            }
            if got < want {
                break;
            }
            next = match forward {
                true => Page::AfterId(edge),
                false => Page::BeforeId(edge),
            };
        }
        if !forward {
            kept.reverse();
        }
        Ok(kept)
    }

    /// Up to `limit` messages of each conversation in `from` after the given sequence (as
    /// `after`), each marked deleted or a tombstone where it is one: a catch-up skips the
    /// first and delivers the second as the deletion.
    pub async fn after_marked(
        &self,
        from: Vec<(ConvId, Seq)>,
        limit: usize,
    ) -> anyhow::Result<Vec<Vec<StoredMessage>>> {
        let mut pages = self.after(from, limit).await?;
        for page in &mut pages {
            let Some(conv) = page.first().map(|m| m.conv) else {
                continue;
            };
            let kinds = self
                .deletions_among(conv, page.iter().map(|m| m.id).collect())
                .await?;
            for m in page.iter_mut() {
                if let Some(&kind) = kinds.get(&m.id) {
                    m.kind = kind;
                    m.body = Bytes::new();
                }
            }
        }
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::store::{Deletion, MarkChange, NewMessage};

    fn message(id: i64) -> NewMessage {
        NewMessage {
            id,
            conv: 2,
            seq: 0,
            sender: 1,
            sender_device: 1,
            body: Bytes::new(),
            sent_at: 0,
            received_at: 0,
        }
    }

    #[test]
    fn a_deletion_names_its_tombstone_by_the_id_postgresql_gave_it() {
        let batch = Batch {
            messages: vec![message(1), message(2)],
            deletions: vec![Deletion {
                message: 40,
                conv: 2,
                seq: 7,
                tombstone: 2,
                by: 1,
                at: 5,
            }],
            ..Batch::default()
        };
        let rows = Rows::of(&batch, &[900, 901]).unwrap();
        assert_eq!(rows.deletions, vec![(40, 2, 7, 901, 1, 5)]);
        // A deletion whose tombstone is not in the batch is an error, not a wrong row.
        assert!(Rows::of(&batch, &[900]).is_err());
    }

    #[test]
    fn marks_keep_the_batch_order_and_a_plain_batch_has_no_rows() {
        assert!(Rows::of(&Batch::default(), &[]).unwrap().is_empty());
        let change = |mark, set| MarkChange {
            conv: 3,
            user: 4,
            mark,
            set,
            by: 1,
        };
        let batch = Batch {
            room_marks: vec![change(Mark::Operator, true), change(Mark::Operator, false)],
            ..Batch::default()
        };
        let rows = Rows::of(&batch, &[]).unwrap();
        assert_eq!(rows.marks, vec![(3, 4, 1, 1, true), (3, 4, 1, 1, false)]);
        assert!(!rows.is_empty());
    }
}
