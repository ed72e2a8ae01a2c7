//! Read-only access for sessions: catch-up pages, off the async threads.
//!
//! A small pool of SQLite connections and the message log; each call runs on tokio's
//! blocking pool so a slow query never stalls a runtime thread. WAL lets readers run beside
//! the writer, and the log is read with positional reads of what is already appended.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use parley_proto::ConversationKind;
use rusqlite::{params, Connection, OptionalExtension};

use super::block_cache::{BlockCache, Finder};
use super::deletions::{Deletions, Kind as MessageKind};
use super::{ConvId, DeviceId, MessageIndex, MessageLog, Seq, UserId};
use crate::config::SyncMode;

/// Where a device stands in one conversation it belongs to.
#[derive(Debug, Clone)]
pub struct ConvPosition {
    pub conv: ConvId,
    pub kind: ConversationKind,
    /// For a direct conversation, the two members' names (lower id first); for a room, its
    /// name twice.
    pub members: (Arc<str>, Arc<str>),
    /// The last sequence this device received (or, for a device that never received
    /// anything of it, where it starts: see `Reader::positions`).
    pub cursor: Seq,
    /// Where the user's membership began.
    pub joined: Seq,
    pub last_seq: Seq,
}

/// One message as read back from a log.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: i64,
    pub conv: ConvId,
    pub seq: Seq,
    pub sender: Arc<str>,
    pub sender_device: DeviceId,
    pub body: Bytes,
    pub sent_at: u64,
    /// The message was stored but its block of the log is damaged (reported): only its id,
    /// conversation and sequence are known, so a catch-up can go on past it.
    pub lost: bool,
    /// A message, a deleted one (its body empty), or the tombstone of a deletion.
    pub kind: MessageKind,
}

impl StoredMessage {
    fn lost(id: i64, conv: ConvId, seq: Seq) -> Self {
        StoredMessage {
            id,
            conv,
            seq,
            sender: Arc::from(""),
            sender_device: 0,
            body: Bytes::new(),
            sent_at: 0,
            lost: true,
            kind: MessageKind::Message,
        }
    }
}

/// A name's password hash, for checking a login.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: UserId,
    pub password_hash: Option<String>,
}

/// A stored device token.
#[derive(Debug, Clone)]
pub struct TokenRow {
    pub user: UserId,
    pub name: String,
    pub device: DeviceId,
    pub device_name: String,
    pub expires_at: i64,
    pub revoked: bool,
}

/// A user's public profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub display_name: Option<String>,
    pub avatar: Option<Vec<u8>>,
}

/// Which part of a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Latest,
    BeforeId(i64),
    AfterId(i64),
    /// Unix ms.
    BeforeTime(i64),
    AfterTime(i64),
    BeforeSeq(i64),
    AfterSeq(i64),
}

/// A user as listed with presence.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub name: String,
    /// Unix ms of the end of the last session (or the creation), if any.
    pub last_seen: Option<i64>,
}

/// What a history target names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Conv(ConvId, ConversationKind),
    /// A room the asking user is not a member of (a server operator may still act in it).
    NotMember(ConvId),
    /// A user the asking user never talked with.
    Empty,
    NotFound,
}

/// A cloneable handle to the read pool.
#[derive(Clone)]
pub struct SqliteReader {
    inner: Arc<Pool>,
}

struct Pool {
    path: PathBuf,
    /// Which ids make up each conversation (the log is in id order).
    index: Arc<MessageIndex>,
    /// The message log's blocks read last, shared by every read.
    blocks: BlockCache,
    /// Which messages are deleted and which are tombstones (store/deletions.rs).
    deletions: Arc<Deletions>,
    idle: Mutex<Vec<Connection>>,
    /// At most this many reads at once: a burst of logins queues here instead of opening
    /// a connection (and a blocking thread) each.
    busy: tokio::sync::Semaphore,
}

/// Connections in the pool, and reads at once.
const READERS: usize = 8;

impl SqliteReader {
    pub fn new(
        data_dir: &std::path::Path,
        index: Arc<MessageIndex>,
        log: Arc<MessageLog>,
        deletions: Arc<Deletions>,
    ) -> Self {
        SqliteReader {
            inner: Arc::new(Pool {
                path: super::sqlite::database_path(data_dir),
                index,
                blocks: BlockCache::new(log),
                deletions,
                idle: Mutex::new(Vec::new()),
                busy: tokio::sync::Semaphore::new(READERS),
            }),
        }
    }

    /// Runs `f` with a pooled connection on the blocking pool.
    async fn with<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Pool) -> anyhow::Result<T> + Send + 'static,
    {
        let pool = self.inner.clone();
        let _permit = pool.busy.acquire().await?;
        let pool = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match pool.idle.lock().expect("reader pool poisoned").pop() {
                Some(conn) => conn,
                None => {
                    let conn = super::sqlite::open(&pool.path, SyncMode::Normal)?;
                    conn.pragma_update(None, "query_only", true)?;
                    conn
                }
            };
            let result = f(&conn, &pool);
            let mut idle = pool.idle.lock().expect("reader pool poisoned");
            if idle.len() < READERS {
                idle.push(conn);
            }
            result
        })
        .await?
    }

    /// Where the message log's last complete record ends.
    pub fn log_end(&self) -> u64 {
        self.inner.blocks.log().end()
    }

    /// Runs `f` with a read-only connection on the blocking pool: the operator's queries
    /// (`admin/queries.rs`), rare enough to keep their SQL beside their commands.
    pub async fn query<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> anyhow::Result<T> + Send + 'static,
    {
        self.with(move |conn, _| f(conn)).await
    }

    /// Every conversation `user` belongs to, with `device`'s cursor in it. A device that
    /// never received anything of a conversation gets every message of it stored after the
    /// device first existed, and also what no device of the account received yet: it
    /// starts where the account's furthest device is or where its own life began, whichever
    /// is earlier (never before the membership). So a new device is not sent again what
    /// another device received, what none received goes to whichever device comes first,
    /// and a device that was away gets the conversations that began meanwhile. (Devices
    /// created before schema version 6 have no known beginning: the furthest device's
    /// position alone.)
    pub async fn positions(
        &self,
        user: UserId,
        device: DeviceId,
    ) -> anyhow::Result<Vec<ConvPosition>> {
        self.with(move |conn, pool| {
            // `c.last_seq` is a floor that databases written before the index still count.
            let first_message: Option<i64> = conn
                .prepare_cached("SELECT first_message_id FROM devices WHERE id = ?1")?
                .query_row([device], |r| r.get(0))
                .optional()?
                .flatten();
            let mut stmt = conn.prepare_cached(
                "SELECT c.id, ua.name, ub.name, cur.seq, c.last_seq, c.kind, c.name, m.joined_seq,
                        (SELECT MAX(c2.seq) FROM cursors c2
                         JOIN devices d2 ON d2.id = c2.device_id
                         WHERE d2.user_id = ?1 AND c2.conversation_id = c.id)
                 FROM memberships m
                 JOIN conversations c ON c.id = m.conversation_id
                 LEFT JOIN users ua ON ua.id = c.user_a
                 LEFT JOIN users ub ON ub.id = c.user_b
                 LEFT JOIN cursors cur
                     ON cur.device_id = ?2 AND cur.conversation_id = m.conversation_id
                 WHERE m.user_id = ?1",
            )?;
            let rows = stmt.query_map(params![user, device], |r| {
                let kind: i64 = r.get(5)?;
                let (kind, a, b): (ConversationKind, Option<String>, Option<String>) = match kind {
                    super::KIND_DIRECT => (ConversationKind::Direct, r.get(1)?, r.get(2)?),
                    super::KIND_ROOM => (ConversationKind::Room, r.get(6)?, r.get(6)?),
                    _ => (
                        ConversationKind::Broadcast,
                        Some("*".into()),
                        Some("*".into()),
                    ),
                };
                let conv = r.get(0)?;
                let joined: Seq = r.get(7)?;
                let cursor = match r.get::<_, Option<Seq>>(3)? {
                    Some(seq) => seq,
                    None => {
                        let furthest = r.get::<_, Option<Seq>>(8)?.unwrap_or(0);
                        // The messages stored before the device existed.
                        let before = first_message
                            .map(|first| pool.index.position(conv, |id| id < first) as Seq);
                        before.map_or(furthest, |before| before.min(furthest))
                    }
                };
                Ok(ConvPosition {
                    conv,
                    kind,
                    members: (
                        Arc::from(a.unwrap_or_default()),
                        Arc::from(b.unwrap_or_default()),
                    ),
                    cursor: cursor.max(joined),
                    last_seq: pool.index.last_seq(conv).max(r.get(4)?),
                    joined,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    pub async fn credentials(&self, name: String) -> anyhow::Result<Option<Credentials>> {
        self.with(move |conn, _| {
            let row = conn
                .prepare_cached("SELECT id, password_hash FROM users WHERE name = ?1")?
                .query_row([name], |r| {
                    Ok(Credentials {
                        user: r.get(0)?,
                        password_hash: r.get(1)?,
                    })
                })
                .optional()?;
            Ok(row)
        })
        .await
    }

    pub async fn token(&self, hash: Vec<u8>) -> anyhow::Result<Option<TokenRow>> {
        self.with(move |conn, _| {
            let row = conn
                .prepare_cached(
                    "SELECT t.user_id, u.name, t.device_id, d.name, t.expires_at,
                            t.revoked_at IS NOT NULL
                     FROM tokens t JOIN users u ON u.id = t.user_id
                     JOIN devices d ON d.id = t.device_id
                     WHERE t.hash = ?1",
                )?
                .query_row([hash], |r| {
                    Ok(TokenRow {
                        user: r.get(0)?,
                        name: r.get(1)?,
                        device: r.get(2)?,
                        device_name: r.get(3)?,
                        expires_at: r.get(4)?,
                        revoked: r.get(5)?,
                    })
                })
                .optional()?;
            Ok(row)
        })
        .await
    }

    pub async fn profile(&self, name: String) -> anyhow::Result<Option<Profile>> {
        self.with(move |conn, _| {
            let row = conn
                .prepare_cached("SELECT name, display_name, avatar FROM users WHERE name = ?1")?
                .query_row([name], |r| {
                    Ok(Profile {
                        name: r.get(0)?,
                        display_name: r.get(1)?,
                        avatar: r.get(2)?,
                    })
                })
                .optional()?;
            Ok(row)
        })
        .await
    }

    /// The conversation a history request names, if `user` may read it: a room they are a
    /// member of (`#name` or any room name), the direct conversation with another user, or
    /// `*` for the public broadcast log.
    pub async fn resolve(&self, user: UserId, target: String) -> anyhow::Result<Resolved> {
        self.with(move |conn, _| {
            let room: Option<(ConvId, Option<i64>)> = conn
                .prepare_cached(
                    "SELECT c.id, m.user_id FROM conversations c
                     LEFT JOIN memberships m ON m.conversation_id = c.id AND m.user_id = ?2
                     WHERE c.kind = ?3 AND c.name = ?1",
                )?
                .query_row(params![target, user, super::KIND_ROOM], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            if let Some((conv, member)) = room {
                return Ok(if member.is_some() {
                    Resolved::Conv(conv, ConversationKind::Room)
                } else {
                    Resolved::NotMember(conv)
                });
            }
            if target == "*" {
                let conv = conn
                    .prepare_cached("SELECT id FROM conversations WHERE kind = ?1")?
                    .query_row([super::KIND_BROADCAST], |r| r.get(0))
                    .optional()?;
                let broadcast = |conv| Resolved::Conv(conv, ConversationKind::Broadcast);
                return Ok(conv.map_or(Resolved::NotFound, broadcast));
            }
            let other: Option<UserId> = conn
                .prepare_cached("SELECT id FROM users WHERE name = ?1")?
                .query_row([&target], |r| r.get(0))
                .optional()?;
            let Some(other) = other else {
                return Ok(Resolved::NotFound);
            };
            let conv = conn
                .prepare_cached(
                    "SELECT id FROM conversations WHERE kind = 1 AND user_a = ?1 AND user_b = ?2",
                )?
                .query_row(params![user.min(other), user.max(other)], |r| r.get(0))
                .optional()?;
            let direct = |conv| Resolved::Conv(conv, ConversationKind::Direct);
            Ok(conv.map_or(Resolved::Empty, direct))
        })
        .await
    }

    /// Users whose names start with `prefix`, sorted, at most `limit`.
    pub async fn search(&self, prefix: String, limit: usize) -> anyhow::Result<Vec<UserRow>> {
        self.with(move |conn, _| {
            // A range on the name index: every name that starts with `prefix` sorts between
            // it and it followed by the highest code point.
            let mut stmt = conn.prepare_cached(
                "SELECT name, last_seen_at FROM users
                 WHERE name >= ?1 AND name < ?1 || char(1114111) AND name <> 'anonymous'
                 ORDER BY name LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![prefix, limit as i64], |r| {
                Ok(UserRow {
                    name: r.get(0)?,
                    last_seen: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// `user`'s contacts: (name, state, last seen).
    pub async fn contacts(
        &self,
        user: UserId,
    ) -> anyhow::Result<Vec<(String, super::ContactState, Option<i64>)>> {
        self.with(move |conn, _| {
            let mut stmt = conn.prepare_cached(
                "SELECT u.name, c.state, u.last_seen_at FROM contacts c
                 JOIN users u ON u.id = c.contact_id WHERE c.user_id = ?1 ORDER BY u.name",
            )?;
            let rows = stmt.query_map([user], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get(2)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, state, seen) = row?;
                if let Some(state) = super::ContactState::from_i64(state) {
                    out.push((name, state, seen));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Whether `user` may download the file `hash`: it is attached to a conversation they
    /// belong to.
    pub async fn may_download(&self, user: UserId, hash: String) -> anyhow::Result<bool> {
        self.with(move |conn, _| {
            let found: Option<i64> = conn
                .prepare_cached(
                    "SELECT 1 FROM attachments a
                     JOIN conversations c ON c.id = a.conversation_id
                     LEFT JOIN memberships m ON m.conversation_id = c.id AND m.user_id = ?2
                     WHERE a.hash = ?1 AND (m.user_id IS NOT NULL OR c.kind = 3) LIMIT 1",
                )?
                .query_row(params![hash, user], |r| r.get(0))
                .optional()?;
            Ok(found.is_some())
        })
        .await
    }

    /// A page of the users (but the reserved anonymous one), sorted by name: those after
    /// `after`, at most `limit` (a range of the name index).
    pub async fn users(&self, after: String, limit: usize) -> anyhow::Result<Vec<UserRow>> {
        self.with(move |conn, _| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, last_seen_at FROM users WHERE name > ?1 AND name <> 'anonymous'
                 ORDER BY name LIMIT ?2",
            )?;
            let limit = limit.min(i64::MAX as usize) as i64;
            let rows = stmt.query_map(params![after, limit], |r| {
                Ok(UserRow {
                    name: r.get(0)?,
                    last_seen: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    /// A page of `conv`'s history, oldest first, with receive times (ms).
    pub async fn page(
        &self,
        conv: ConvId,
        page: Page,
        limit: usize,
    ) -> anyhow::Result<Vec<(StoredMessage, i64)>> {
        self.with(move |conn, pool| {
            let index = &pool.index;
            // A history shows messages (deleted ones as such), never the tombstones.
            let keep = |id| !matches!(pool.deletions.kind(id), MessageKind::Tombstone(..));
            let before = |end| index.before_where(conv, end, limit, keep);
            let from = |start| index.starting_where(conv, start, limit, keep);
            // Positions in the index: position p holds sequence p + 1.
            let ids = match page {
                Page::Latest => before(usize::MAX),
                Page::BeforeSeq(seq) => before(position(seq.saturating_sub(1))),
                Page::AfterSeq(seq) => from(position(seq)),
                Page::BeforeId(id) => before(index.position(conv, |x| x < id)),
                Page::AfterId(id) => from(index.position(conv, |x| x <= id)),
                Page::BeforeTime(ms) => before(by_time(pool, conv, |t| t < ms)?),
                Page::AfterTime(ms) => from(by_time(pool, conv, |t| t <= ms)?),
            };
            let page = fetch(conn, pool, conv, &ids)?;
            Ok(page.into_iter().filter(|(m, _)| !m.lost).collect())
        })
        .await
    }

    /// Up to `limit` messages of each conversation in `from`, after the given sequence.
    pub async fn after(
        &self,
        from: Vec<(ConvId, Seq)>,
        limit: usize,
    ) -> anyhow::Result<Vec<Vec<StoredMessage>>> {
        self.with(move |conn, pool| {
            let mut pages = Vec::with_capacity(from.len());
            for (conv, after) in from {
                let ids = pool.index.from(conv, position(after), limit);
                let page = fetch(conn, pool, conv, &ids)?;
                pages.push(page.into_iter().map(|(m, _)| m).collect());
            }
            Ok(pages)
        })
        .await
    }
}

/// The index position of sequence `seq + 1`; positions start at 0.
fn position(seq: Seq) -> usize {
    usize::try_from(seq).unwrap_or(0)
}

/// The first position in `conv` whose message was not received `before` (a test on its
/// receive time). The hub stamps receive times as it hands out sequences, so they grow
/// with the sequence and a binary search finds the bound in a few lookups.
fn by_time(pool: &Pool, conv: ConvId, before: impl Fn(i64) -> bool) -> anyhow::Result<usize> {
    let index = &pool.index;
    let mut lookup = Finder::new(&pool.blocks);
    let (mut low, mut high) = (0, position(index.last_seq(conv)));
    while low < high {
        let mid = low + (high - low) / 2;
        let id = index.id_at(conv, mid);
        // Position 0 of a conversation whose first sequence is missing holds no id.
        let at = if id == 0 {
            None
        } else {
            lookup.find(id)?.map(|m| m.received_at)
        };
        if at.is_none_or(&before) {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    Ok(low)
}

/// The messages of `conv` with these ids (ascending, from the index), with their receive
/// times; those in a damaged block of the log as `lost`. A conversation written in a run
/// (the offline case) fills whole blocks, so a page reads few of them; each block is read
/// once however many of the page's ids it holds, and is shared with the reads of other
/// pages while it stays in the cache (block_cache.rs).
fn fetch(
    conn: &Connection,
    pool: &Pool,
    conv: ConvId,
    ids: &[i64],
) -> anyhow::Result<Vec<(StoredMessage, i64)>> {
    let mut lookup = Finder::new(&pool.blocks);
    let mut names = conn.prepare_cached("SELECT name FROM users WHERE id = ?1")?;
    let mut known: HashMap<UserId, Arc<str>> = HashMap::new();
    let mut out = Vec::with_capacity(ids.len());
    for &id in ids {
        let Some(m) = lookup.find(id)? else {
            if lookup.lost(id) {
                let seq = pool.index.position(conv, |x| x < id) as Seq + 1;
                out.push((StoredMessage::lost(id, conv, seq), 0));
            }
            continue;
        };
        if m.conv != conv {
            // Only an index out of step with the log gets here; the rows it names
            // are not this conversation's to show.
            continue;
        }
        let sender = match known.get(&m.sender) {
            Some(name) => name.clone(),
            None => {
                let name: Option<String> = names.query_row([m.sender], |r| r.get(0)).optional()?;
                // A sender that is not a user (which the store never writes) is skipped,
                // as the join it replaces skipped it.
                let Some(name) = name else { continue };
                let name: Arc<str> = Arc::from(name);
                known.insert(m.sender, name.clone());
                name
            }
        };
        let kind = pool.deletions.kind(id);
        // A deleted message's words are never read out again.
        let body = match kind {
            MessageKind::Message => Bytes::copy_from_slice(m.body),
            MessageKind::Deleted | MessageKind::Tombstone(..) => Bytes::new(),
        };
        out.push((
            StoredMessage {
                id,
                conv,
                seq: m.seq,
                sender,
                sender_device: m.sender_device,
                body,
                sent_at: m.sent_at,
                lost: false,
                kind,
            },
            m.received_at,
        ));
    }
    Ok(out)
}
