//! What only a shared store does for the hub: creates that two nodes may race, gap reads,
//! and who is online where.
//!
//! Creates run at once, each on its own (`INSERT ... ON CONFLICT DO NOTHING RETURNING`,
//! then a `SELECT` of the row another node made): in a batch, a name two nodes took at once
//! would abort every message of the batch with it. They are rare (a new name, a first
//! message between two users, a new room or device): a round trip each.
//!
//! Who is online: a row per online session in `online_sessions` (a password-less name as
//! device 0, so a second one anywhere conflicts with it), owned by a node whose lease in
//! `nodes` its cluster task renews (cluster/tasks.rs). A row counts while its node's lease
//! runs; a node that dies has its sessions offline when its lease ends.

use crate::store::{ConvId, DeviceId, Seq, UserId, KIND_DIRECT, KIND_ROOM};

use super::{rows, PgStore};

/// A room as a node reads it on a cache miss.
#[derive(Debug, Clone)]
pub struct PgRoom {
    pub conv: ConvId,
    pub members: Vec<(UserId, String)>,
}

/// A stored message read back to fill a gap.
#[derive(Debug, Clone)]
pub struct GapMessage {
    pub id: i64,
    pub seq: Seq,
    pub sender: UserId,
    pub sender_name: String,
    pub sender_device: DeviceId,
    pub body: Vec<u8>,
    pub sent_at: u64,
    pub tombstone: crate::store::Tombstone,
}

/// A conversation as a node reads it to start delivering it.
#[derive(Debug, Clone)]
pub struct ConvRow {
    pub id: ConvId,
    pub kind: parley_proto::ConversationKind,
    pub a: UserId,
    pub b: UserId,
    pub name: String,
    pub last_seq: Seq,
}

/// The answer to a login's claim of its name or device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlineClaim {
    Taken,
    /// Online on another node (or, for a password-less login, an account's name).
    Busy,
}

/// Message ids that batches in flight may hold (16 nodes' worth of full batches; a
/// batch's ids are blocks of `message_ids`, whose `last_value` is the newest block's first).
const IN_FLIGHT: i64 = 16 * 4096;

impl PgStore {
    /// The user named `name`, created if new: (id, whether it has a password).
    pub fn ensure_user(&mut self, name: &str) -> anyhow::Result<(UserId, bool)> {
        let now = crate::store::now_ms();
        let owned = name.to_string();
        let made = rows!(
            self,
            "INSERT INTO users (name, created_at, last_seen_at) VALUES ($1, $2, NULL)
             ON CONFLICT (name) DO NOTHING RETURNING id",
            owned,
            now
        )?;
        if let Some(row) = made.first() {
            return Ok((row.get(0), false));
        }
        let (id, _, account) = self
            .find_user(name)?
            .ok_or_else(|| anyhow::anyhow!("user {name:?} neither created nor found"))?;
        Ok((id, account))
    }

    /// The user named `name`: (id, name, whether it has a password).
    pub fn find_user(&mut self, name: &str) -> anyhow::Result<Option<(UserId, String, bool)>> {
        let name = name.to_string();
        let rows = rows!(
            self,
            "SELECT id, name, password_hash IS NOT NULL FROM users WHERE name = $1",
            name
        )?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// The user with id `user`: (name, whether it has a password).
    pub fn user_by_id(&mut self, user: UserId) -> anyhow::Result<Option<(String, bool)>> {
        let rows = rows!(
            self,
            "SELECT name, password_hash IS NOT NULL FROM users WHERE id = $1",
            user
        )?;
        Ok(rows.first().map(|r| (r.get(0), r.get(1))))
    }

    /// Creates the account `name` with password `hash`, or gives the password to a name
    /// that has none and is online nowhere. `None`: the name is taken.
    pub fn register(&mut self, name: &str, hash: &str) -> anyhow::Result<Option<UserId>> {
        let now = crate::store::now_ms();
        let (name, hash) = (name.to_string(), hash.to_string());
        let rows = rows!(
            self,
            "INSERT INTO users (name, password_hash, created_at, last_seen_at)
             VALUES ($1, $2, $3, NULL)
             ON CONFLICT (name) DO UPDATE SET password_hash = excluded.password_hash
             WHERE users.password_hash IS NULL AND NOT EXISTS (
                 SELECT 1 FROM online_sessions o JOIN nodes n ON n.node_id = o.node_id
                 WHERE o.user_id = users.id AND n.expires_at > now())
             RETURNING id",
            name,
            hash,
            now
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// The device `name` of `user`, created if new. Its first message id is the last one
    /// handed out less [`IN_FLIGHT`]: messages of batches still in flight on some node
    /// have lower ids but may commit after the device exists, and a new device may be
    /// given a few messages more, never fewer.
    pub fn ensure_device(&mut self, user: UserId, name: &str) -> anyhow::Result<DeviceId> {
        let now = crate::store::now_ms();
        let owned = name.to_string();
        let made = rows!(
            self,
            "INSERT INTO devices (user_id, name, created_at, last_seen_at, first_message_id)
             VALUES ($1, $2, $3, $3, GREATEST((SELECT last_value FROM message_ids) - $4, 0))
             ON CONFLICT (user_id, name) DO NOTHING RETURNING id",
            user,
            owned,
            now,
            IN_FLIGHT
        )?;
        if let Some(row) = made.first() {
            return Ok(row.get(0));
        }
        use crate::store::LogStore;
        self.find_device(user, name)?.ok_or_else(|| {
            anyhow::anyhow!("device {name:?} of user {user} neither created nor found")
        })
    }

    /// The direct conversation of `a` and `b` (a <= b), created with both memberships if
    /// new: (id, last sequence).
    pub fn ensure_direct(&mut self, a: UserId, b: UserId) -> anyhow::Result<(ConvId, Seq)> {
        let now = crate::store::now_ms();
        let kind = KIND_DIRECT as i16;
        let made = rows!(
            self,
            "WITH c AS (
                 INSERT INTO conversations (kind, user_a, user_b, created_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (user_a, user_b) WHERE kind = 1 DO NOTHING RETURNING id),
             m AS (
                 INSERT INTO memberships (user_id, conversation_id, joined_seq)
                 SELECT DISTINCT u, c.id, 0 FROM c, unnest(ARRAY[$2, $3]::int8[]) AS u
                 ON CONFLICT DO NOTHING)
             SELECT id FROM c",
            kind,
            a,
            b,
            now
        )?;
        if let Some(row) = made.first() {
            return Ok((row.get(0), 0));
        }
        use crate::store::LogStore;
        let found = self.find_direct(a, b)?.ok_or_else(|| {
            anyhow::anyhow!("direct conversation {a}-{b} neither created nor found")
        })?;
        Ok((found.id, found.last_seq))
    }

    /// The room `name`, created by `creator` if new: the room and whether it was created.
    pub fn ensure_room(
        &mut self,
        name: &str,
        creator: Option<UserId>,
    ) -> anyhow::Result<(PgRoom, bool)> {
        let now = crate::store::now_ms();
        let kind = KIND_ROOM as i16;
        let owned = name.to_string();
        let made = rows!(
            self,
            "INSERT INTO conversations (kind, name, created_at, created_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (kind, name) WHERE kind <> 1 DO NOTHING RETURNING id",
            kind,
            owned,
            now,
            creator
        )?;
        if let Some(row) = made.first() {
            let room = PgRoom {
                conv: row.get(0),
                members: Vec::new(),
            };
            return Ok((room, true));
        }
        let room = self
            .find_room(name)?
            .ok_or_else(|| anyhow::anyhow!("room {name:?} neither created nor found"))?;
        Ok((room, false))
    }

    /// The room `name` with its members, if it exists.
    pub fn find_room(&mut self, name: &str) -> anyhow::Result<Option<PgRoom>> {
        let kind = KIND_ROOM as i16;
        let owned = name.to_string();
        let rows = rows!(
            self,
            "SELECT c.id, u.id, u.name FROM conversations c
             LEFT JOIN memberships m ON m.conversation_id = c.id
             LEFT JOIN users u ON u.id = m.user_id
             WHERE c.kind = $1 AND c.name = $2",
            kind,
            owned
        )?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let mut room = PgRoom {
            conv: first.get(0),
            members: Vec::new(),
        };
        for row in &rows {
            if let (Some(id), Some(member)) = (row.get(1), row.get(2)) {
                room.members.push((id, member));
            }
        }
        Ok(Some(room))
    }

    /// The rooms `user` is a member of: (conversation, joined at, name).
    pub fn rooms_of(&mut self, user: UserId) -> anyhow::Result<Vec<(ConvId, Seq, String)>> {
        let kind = KIND_ROOM as i16;
        let rows = rows!(
            self,
            "SELECT c.id, m.joined_seq, c.name FROM memberships m
             JOIN conversations c ON c.id = m.conversation_id
             WHERE m.user_id = $1 AND c.kind = $2",
            user,
            kind
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// The conversations of `ids` that exist.
    pub fn conversations(&mut self, ids: &[ConvId]) -> anyhow::Result<Vec<ConvRow>> {
        let ids = ids.to_vec();
        let rows = rows!(
            self,
            "SELECT id, kind, COALESCE(user_a, 0), COALESCE(user_b, 0), COALESCE(name, ''),
                    last_seq
             FROM conversations WHERE id = ANY($1)",
            ids
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let kind = parley_proto::ConversationKind::from_code(r.get::<_, i16>(1) as u8)?;
                Some(ConvRow {
                    id: r.get(0),
                    kind,
                    a: r.get(2),
                    b: r.get(3),
                    name: r.get(4),
                    last_seq: r.get(5),
                })
            })
            .collect())
    }

    /// The messages of `conv` after sequence `after`, up to `upto`, at most `limit`, in
    /// order.
    pub fn messages_after(
        &mut self,
        conv: ConvId,
        after: Seq,
        upto: Seq,
        limit: i64,
    ) -> anyhow::Result<Vec<GapMessage>> {
        let limit = limit.max(0) as usize;
        self.run(async move |conn, counters| {
            use super::pack::{scan, Packed, Start, Take};
            let until = |m: &Packed<'_>| match m.seq <= upto {
                true => Take::Yes,
                false => Take::Stop,
            };
            let read = scan(&conn.client, conv, Start::After(after), limit, false, until).await?;
            let mut senders: Vec<UserId> = read.iter().map(|m| m.sender).collect();
            senders.sort_unstable();
            senders.dedup();
            let names = conn
                .prepare("SELECT id, name FROM users WHERE id = ANY($1)")
                .await?;
            let rows = conn.client.query(&names, &[&senders]).await?;
            counters.statements += 2;
            let names: std::collections::HashMap<UserId, String> =
                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            Ok(read
                .into_iter()
                .map(|m| GapMessage {
                    id: m.id,
                    seq: m.seq,
                    sender: m.sender,
                    sender_name: names.get(&m.sender).cloned().unwrap_or_default(),
                    sender_device: m.sender_device,
                    body: m.body.to_vec(),
                    sent_at: m.sent_at as u64,
                    tombstone: m.tombstone,
                })
                .collect())
        })
    }

    /// Marks `user`'s `device` online on this node (device 0 for a password-less name,
    /// which `name_rule` then also refuses while the name is online anywhere, or is an
    /// account's).
    pub fn claim_online(
        &mut self,
        user: UserId,
        device: DeviceId,
        name_rule: bool,
    ) -> anyhow::Result<OnlineClaim> {
        let node = self.node.clone();
        let rows = rows!(
            self,
            "INSERT INTO online_sessions (user_id, device_id, node_id)
             SELECT $1, $2, $3
             WHERE NOT ($4 AND EXISTS (
                       SELECT 1 FROM online_sessions o JOIN nodes n ON n.node_id = o.node_id
                       WHERE o.user_id = $1 AND o.node_id <> $3 AND n.expires_at > now()))
               AND NOT ($4 AND EXISTS (
                       SELECT 1 FROM users WHERE id = $1 AND password_hash IS NOT NULL))
             ON CONFLICT (user_id, device_id) DO UPDATE SET node_id = excluded.node_id
             WHERE online_sessions.node_id = excluded.node_id OR NOT EXISTS (
                 SELECT 1 FROM nodes n
                 WHERE n.node_id = online_sessions.node_id AND n.expires_at > now())
             RETURNING 1",
            user,
            device,
            node,
            name_rule
        )?;
        Ok(if rows.is_empty() {
            OnlineClaim::Busy
        } else {
            OnlineClaim::Taken
        })
    }

    /// Takes these sessions of this node offline; returns the users among them who are
    /// now online nowhere.
    pub fn release_online(
        &mut self,
        sessions: &[(UserId, DeviceId)],
    ) -> anyhow::Result<Vec<UserId>> {
        let users: Vec<UserId> = sessions.iter().map(|s| s.0).collect();
        let devices: Vec<DeviceId> = sessions.iter().map(|s| s.1).collect();
        let node = self.node.clone();
        let released = users.clone();
        rows!(
            self,
            "DELETE FROM online_sessions o USING unnest($1::int8[], $2::int8[]) AS s(u, d)
             WHERE o.user_id = s.u AND o.device_id = s.d AND o.node_id = $3",
            released,
            devices,
            node
        )?;
        self.offline_among(&users)
    }

    /// Which of `users` are online nowhere.
    pub fn offline_among(&mut self, users: &[UserId]) -> anyhow::Result<Vec<UserId>> {
        let users = users.to_vec();
        let rows = rows!(
            self,
            "SELECT DISTINCT u FROM unnest($1::int8[]) AS u WHERE NOT EXISTS (
                 SELECT 1 FROM online_sessions o JOIN nodes n ON n.node_id = o.node_id
                 WHERE o.user_id = u AND n.expires_at > now())",
            users
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Every user online on some node.
    pub fn online_users(&mut self) -> anyhow::Result<Vec<UserId>> {
        let rows = rows!(
            self,
            "SELECT DISTINCT o.user_id FROM online_sessions o
             JOIN nodes n ON n.node_id = o.node_id WHERE n.expires_at > now()",
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Anonymous sessions counted in presence on the other live nodes.
    pub fn remote_guests(&mut self) -> anyhow::Result<i64> {
        let node = self.node.clone();
        let rows = rows!(
            self,
            "SELECT COALESCE(SUM(guests), 0)::int8 FROM nodes
             WHERE node_id <> $1 AND expires_at > now()",
            node
        )?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// A page of the rooms: (name, members, members online anywhere), the rooms named
    /// after `after`, at most `limit`, in the byte order of their names, as one node
    /// sorts them: `COLLATE "C"`, whatever the database's collation, or a page's last name
    /// would not say where the next one starts. Members are counted for the page only.
    pub fn room_page(
        &mut self,
        after: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<(String, i64, i64)>> {
        let kind = KIND_ROOM as i16;
        let (after, limit) = (after.to_string(), limit.min(i64::MAX as usize) as i64);
        let rows = rows!(
            self,
            r#"WITH page AS (
                 SELECT id, name FROM conversations
                 WHERE kind = $1 AND name IS NOT NULL AND name COLLATE "C" > $2
                 ORDER BY name COLLATE "C" LIMIT $3),
             online AS (
                 SELECT DISTINCT o.user_id FROM online_sessions o
                 JOIN nodes n ON n.node_id = o.node_id WHERE n.expires_at > now())
             SELECT p.name, COUNT(m.user_id), COUNT(o.user_id) FROM page p
             LEFT JOIN memberships m ON m.conversation_id = p.id
             LEFT JOIN online o ON o.user_id = m.user_id
             GROUP BY p.id, p.name ORDER BY p.name COLLATE "C""#,
            kind,
            after,
            limit
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// The members of room `conv`, each with whether they are online anywhere.
    pub fn room_members(&mut self, conv: ConvId) -> anyhow::Result<Vec<(String, bool)>> {
        let rows = rows!(
            self,
            "SELECT u.name, EXISTS (
                 SELECT 1 FROM online_sessions o JOIN nodes n ON n.node_id = o.node_id
                 WHERE o.user_id = u.id AND n.expires_at > now())
             FROM memberships m JOIN users u ON u.id = m.user_id
             WHERE m.conversation_id = $1",
            conv
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
