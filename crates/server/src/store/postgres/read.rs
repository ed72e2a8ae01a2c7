//! Sessions' reads from PostgreSQL: catch-up pages, credentials, tokens, history, search,
//! contacts: what `store::Reader` answers from SQLite and the message log on one node.
//!
//! A few connections, each shared by every read that picks it (tokio-postgres pipelines
//! concurrent queries on one connection), each made again after it fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use parley_proto::ConversationKind;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};

use super::pack;
use crate::store::reader::{Credentials, StoredMessage, TokenRow, UserRow};
use crate::store::{
    ContactState, ConvId, ConvPosition, DeviceId, Page, Profile, Resolved, Seq, UserId,
    KIND_BROADCAST, KIND_DIRECT, KIND_ROOM,
};

/// Connections the readers of a node share.
const CONNECTIONS: usize = 4;

/// A connection and the statements prepared on it.
struct Shared {
    client: Client,
    statements: Mutex<HashMap<&'static str, Statement>>,
}

/// A cloneable handle to a node's read connections.
#[derive(Clone)]
pub struct PgReader {
    inner: Arc<Pool>,
}

struct Pool {
    url: String,
    slots: Vec<tokio::sync::Mutex<Option<Arc<Shared>>>>,
    next: AtomicUsize,
}

impl PgReader {
    pub fn new(url: &str) -> PgReader {
        PgReader {
            inner: Arc::new(Pool {
                url: url.to_string(),
                slots: (0..CONNECTIONS)
                    .map(|_| tokio::sync::Mutex::new(None))
                    .collect(),
                next: AtomicUsize::new(0),
            }),
        }
    }

    /// A live connection: the next slot's, made if it has none or it closed.
    async fn conn(&self) -> anyhow::Result<Arc<Shared>> {
        let at = self.inner.next.fetch_add(1, Ordering::Relaxed) % CONNECTIONS;
        let mut slot = self.inner.slots[at].lock().await;
        if let Some(shared) = slot.as_ref().filter(|s| !s.client.is_closed()) {
            return Ok(shared.clone());
        }
        let shared = Arc::new(Shared {
            client: super::connect(&self.inner.url).await?,
            statements: Mutex::new(HashMap::new()),
        });
        *slot = Some(shared.clone());
        Ok(shared)
    }

    /// The rows of `sql` with `params`.
    pub(super) async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> anyhow::Result<Vec<Row>> {
        let conn = self.conn().await?;
        let known = conn.statements.lock().expect("poisoned").get(sql).cloned();
        let statement = match known {
            Some(statement) => statement,
            None => {
                let statement = conn.client.prepare(sql).await?;
                let mut statements = conn.statements.lock().expect("poisoned");
                statements.insert(sql, statement.clone());
                statement
            }
        };
        Ok(conn.client.query(&statement, params).await?)
    }

    /// Every conversation `user` belongs to, with `device`'s cursor in it (as
    /// `store::Reader::positions`).
    pub async fn positions(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> anyhow::Result<Vec<ConvPosition>> {
        let rows = self
            .query(
                "SELECT c.id, ua.name, ub.name, c.kind, c.name, m.joined_seq, c.last_seq,
                        cur.seq,
                        (SELECT COALESCE(MAX(c2.seq), 0) FROM cursors c2
                         JOIN devices d2 ON d2.id = c2.device_id
                         WHERE d2.user_id = $1 AND c2.conversation_id = c.id),
                        d.first_message_id
                 FROM memberships m
                 JOIN conversations c ON c.id = m.conversation_id
                 JOIN devices d ON d.id = $2
                 LEFT JOIN users ua ON ua.id = c.user_a
                 LEFT JOIN users ub ON ub.id = c.user_b
                 LEFT JOIN cursors cur ON cur.device_id = $2 AND cur.conversation_id = c.id
                 WHERE m.user_id = $1",
                &[&user, &device],
            )
            .await?;
        let mut positions = Vec::with_capacity(rows.len());
        for r in &rows {
            // A device without a cursor starts where the account's furthest device is, or
            // before the first message stored after the device was made, whichever is
            // earlier.
            let cursor = match r.get::<_, Option<Seq>>(7) {
                Some(seq) => seq,
                None => {
                    let furthest: Seq = r.get(8);
                    match furthest {
                        0 => 0,
                        _ => furthest.min(pack::last_seq_below_id(self, r.get(0), r.get(9)).await?),
                    }
                }
            };
            positions.push({
                let (kind, a, b): (ConversationKind, Option<String>, Option<String>) =
                    match i64::from(r.get::<_, i16>(3)) {
                        KIND_DIRECT => (ConversationKind::Direct, r.get(1), r.get(2)),
                        KIND_ROOM => (ConversationKind::Room, r.get(4), r.get(4)),
                        _ => (
                            ConversationKind::Broadcast,
                            Some("*".into()),
                            Some("*".into()),
                        ),
                    };
                let joined: Seq = r.get(5);
                ConvPosition {
                    conv: r.get(0),
                    kind,
                    members: (
                        Arc::from(a.unwrap_or_default()),
                        Arc::from(b.unwrap_or_default()),
                    ),
                    cursor: cursor.max(joined),
                    joined,
                    last_seq: r.get(6),
                }
            });
        }
        Ok(positions)
    }

    pub async fn credentials(&self, name: String) -> anyhow::Result<Option<Credentials>> {
        let rows = self
            .query(
                "SELECT id, password_hash FROM users WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(rows.first().map(|r| Credentials {
            user: r.get(0),
            password_hash: r.get(1),
        }))
    }

    pub async fn token(&self, hash: Vec<u8>) -> anyhow::Result<Option<TokenRow>> {
        let rows = self
            .query(
                "SELECT t.user_id, u.name, t.device_id, d.name, t.expires_at,
                        t.revoked_at IS NOT NULL
                 FROM tokens t JOIN users u ON u.id = t.user_id
                 JOIN devices d ON d.id = t.device_id
                 WHERE t.hash = $1",
                &[&hash],
            )
            .await?;
        Ok(rows.first().map(|r| TokenRow {
            user: r.get(0),
            name: r.get(1),
            device: r.get(2),
            device_name: r.get(3),
            expires_at: r.get(4),
            revoked: r.get(5),
        }))
    }

    pub async fn profile(&self, name: String) -> anyhow::Result<Option<Profile>> {
        let rows = self
            .query(
                "SELECT name, display_name, avatar FROM users WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(rows.first().map(|r| Profile {
            name: r.get(0),
            display_name: r.get(1),
            avatar: r.get(2),
        }))
    }

    /// The conversation a history request names, if `user` may read it (as
    /// `store::Reader::resolve`).
    pub async fn resolve(&self, user: UserId, target: String) -> anyhow::Result<Resolved> {
        let room = KIND_ROOM as i16;
        let rows = self
            .query(
                "SELECT c.id, m.user_id FROM conversations c
                 LEFT JOIN memberships m ON m.conversation_id = c.id AND m.user_id = $2
                 WHERE c.kind = $3 AND c.name = $1",
                &[&target, &user, &room],
            )
            .await?;
        if let Some(r) = rows.first() {
            let member: Option<UserId> = r.get(1);
            return Ok(match member {
                Some(_) => Resolved::Conv(r.get(0), ConversationKind::Room),
                None => Resolved::NotMember(r.get(0)),
            });
        }
        if target == "*" {
            let broadcast = KIND_BROADCAST as i16;
            let rows = self
                .query(
                    "SELECT id FROM conversations WHERE kind = $1",
                    &[&broadcast],
                )
                .await?;
            return Ok(rows.first().map_or(Resolved::NotFound, |r| {
                Resolved::Conv(r.get(0), ConversationKind::Broadcast)
            }));
        }
        let rows = self
            .query("SELECT id FROM users WHERE name = $1", &[&target])
            .await?;
        let Some(other) = rows.first().map(|r| r.get::<_, UserId>(0)) else {
            return Ok(Resolved::NotFound);
        };
        let (a, b) = (user.min(other), user.max(other));
        let rows = self
            .query(
                "SELECT id FROM conversations WHERE kind = 1 AND user_a = $1 AND user_b = $2",
                &[&a, &b],
            )
            .await?;
        Ok(rows.first().map_or(Resolved::Empty, |r| {
            Resolved::Conv(r.get(0), ConversationKind::Direct)
        }))
    }

    /// Users whose names start with `prefix`, sorted, at most `limit`.
    pub async fn search(&self, prefix: String, limit: usize) -> anyhow::Result<Vec<UserRow>> {
        let limit = limit as i64;
        let rows = self
            .query(
                "SELECT name, last_seen_at FROM users
                 WHERE starts_with(name, $1) AND name <> 'anonymous'
                 ORDER BY name LIMIT $2",
                &[&prefix, &limit],
            )
            .await?;
        Ok(rows.iter().map(user_row).collect())
    }

    /// `user`'s contacts: (name, state, last seen).
    pub async fn contacts(
        &self,
        user: UserId,
    ) -> anyhow::Result<Vec<(String, ContactState, Option<i64>)>> {
        let rows = self
            .query(
                "SELECT u.name, c.state, u.last_seen_at FROM contacts c
                 JOIN users u ON u.id = c.contact_id WHERE c.user_id = $1 ORDER BY u.name",
                &[&user],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let state = ContactState::from_i64(i64::from(r.get::<_, i16>(1)))?;
                Some((r.get(0), state, r.get(2)))
            })
            .collect())
    }

    /// Whether `user` may download the file `hash` (attached to a conversation of theirs,
    /// or to the broadcast one).
    pub async fn may_download(&self, user: UserId, hash: String) -> anyhow::Result<bool> {
        let rows = self
            .query(
                "SELECT 1 FROM attachments a
                 JOIN conversations c ON c.id = a.conversation_id
                 LEFT JOIN memberships m ON m.conversation_id = c.id AND m.user_id = $2
                 WHERE a.hash = $1 AND (m.user_id IS NOT NULL OR c.kind = 3) LIMIT 1",
                &[&hash, &user],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// A page of the users (but the reserved anonymous one), sorted by name: those after
    /// `after`, at most `limit` (a range of the name index).
    pub async fn users(&self, after: String, limit: usize) -> anyhow::Result<Vec<UserRow>> {
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .query(
                "SELECT name, last_seen_at FROM users WHERE name > $1 AND name <> 'anonymous'
                 ORDER BY name LIMIT $2",
                &[&after, &limit],
            )
            .await?;
        Ok(rows.iter().map(user_row).collect())
    }

    /// A page of `conv`'s history, oldest first, with receive times (ms).
    pub async fn page(
        &self,
        conv: ConvId,
        page: Page,
        limit: usize,
    ) -> anyhow::Result<Vec<(StoredMessage, i64)>> {
        use pack::{Start, Take};
        let all = |_: &pack::Packed<'_>| Take::Yes;
        let mut read = match page {
            Page::Latest => pack::scan(self, conv, Start::Latest, limit, false, all).await?,
            Page::BeforeSeq(bound) => {
                pack::scan(self, conv, Start::Before(bound), limit, false, all).await?
            }
            Page::AfterSeq(bound) => {
                pack::scan(self, conv, Start::After(bound), limit, false, all).await?
            }
            Page::BeforeId(bound) => {
                pack::scan(self, conv, Start::BeforeId(bound), limit, false, all).await?
            }
            Page::AfterId(bound) => {
                pack::scan(self, conv, Start::AfterId(bound), limit, false, all).await?
            }
            // Receive times need not ascend with sequences (nodes' clocks differ): every
            // message is looked at, as the one-row-per-message query did.
            Page::BeforeTime(bound) => {
                let before = |m: &pack::Packed<'_>| match m.received_at < bound {
                    true => Take::Yes,
                    false => Take::Skip,
                };
                pack::scan(self, conv, Start::Latest, limit, true, before).await?
            }
            Page::AfterTime(bound) => {
                let after = |m: &pack::Packed<'_>| match m.received_at > bound {
                    true => Take::Yes,
                    false => Take::Skip,
                };
                pack::scan(self, conv, Start::After(0), limit, true, after).await?
            }
        };
        if !matches!(
            page,
            Page::AfterSeq(_) | Page::AfterId(_) | Page::AfterTime(_)
        ) {
            read.reverse();
        }
        let names = self.names(&read).await?;
        Ok(read
            .into_iter()
            .map(|m| {
                let received_at = m.received_at;
                (message(conv, &names, m), received_at)
            })
            .collect())
    }

    /// Up to `limit` messages of each conversation in `from`, after the given sequence.
    pub async fn after(
        &self,
        from: Vec<(ConvId, Seq)>,
        limit: usize,
    ) -> anyhow::Result<Vec<Vec<StoredMessage>>> {
        let mut pages = Vec::with_capacity(from.len());
        for (conv, after) in from {
            let all = |_: &pack::Packed<'_>| pack::Take::Yes;
            let read = pack::scan(self, conv, pack::Start::After(after), limit, false, all).await?;
            let names = self.names(&read).await?;
            pages.push(read.into_iter().map(|m| message(conv, &names, m)).collect());
        }
        Ok(pages)
    }

    /// The names of the senders of `messages`.
    async fn names(&self, messages: &[pack::Message]) -> anyhow::Result<HashMap<UserId, Arc<str>>> {
        let mut ids: Vec<UserId> = messages.iter().map(|m| m.sender).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = self
            .query("SELECT id, name FROM users WHERE id = ANY($1)", &[&ids])
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), Arc::from(r.get::<_, &str>(1))))
            .collect())
    }
}

impl pack::Rows for PgReader {
    async fn rows(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> anyhow::Result<Vec<Row>> {
        self.query(sql, params).await
    }
}

/// A stored message as sessions read it, its sender named (a sender without a name, which
/// the store never makes, is read as an empty one).
fn message(conv: ConvId, names: &HashMap<UserId, Arc<str>>, m: pack::Message) -> StoredMessage {
    StoredMessage {
        id: m.id,
        conv,
        seq: m.seq,
        sender: names
            .get(&m.sender)
            .cloned()
            .unwrap_or_else(|| Arc::from("")),
        sender_device: m.sender_device,
        body: m.body,
        sent_at: m.sent_at as u64,
        lost: false,
        // Deletions are not kept in PostgreSQL yet.
        kind: crate::store::MessageKind::Message,
    }
}

fn user_row(r: &Row) -> UserRow {
    UserRow {
        name: r.get(0),
        last_seen: r.get(1),
    }
}
