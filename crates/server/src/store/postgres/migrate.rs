//! `parley migrate --to-postgres URL --data-dir DIR`: a single node's store moved into
//! PostgreSQL, for running it as a cluster.
//!
//! Everything keeps its id (users, devices, conversations, messages) and every message its
//! sequence, so tokens, cursors and history mean what they meant; an operator's decisions
//! (disabled and deleted accounts, rooms' rules and marks, blocks, deleted messages) come
//! along, since PostgreSQL enforces them as SQLite did. Each step is idempotent
//! (`ON CONFLICT DO NOTHING`) and the messages are copied a page at a time, each page in
//! one transaction with the progress of its conversation: an interrupted migration run
//! again goes on where it stopped. At the end both sides are counted table by table, and
//! the messages summed (SHA-256 over every field of every message, in conversation and
//! sequence order) on both sides: a difference is an error, never a silent success.
//!
//! The server must be stopped while it runs (the store is opened as a server opens it,
//! with its recovery).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::pack::{scan, Builder, Packed, Start, Take};
use crate::config::SyncMode;
use crate::store::{
    ConvId, LogStore, MessageKind, NewMessage, Page, Reader, SqliteReader, SqliteStore, Tombstone,
    UserId,
};

/// Messages copied per transaction.
const PAGE: usize = 5000;

/// What a migration found and copied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// (table, rows in the data directory, rows in PostgreSQL).
    pub counts: Vec<(&'static str, i64, i64)>,
    /// SHA-256 of every message, in hex: the data directory's and PostgreSQL's.
    pub checksums: (String, String),
    /// Messages copied by this run (not by an earlier, interrupted one).
    pub copied: u64,
}

/// Moves the store in `data_dir` into the database at `url`; `progress` is told how many
/// messages are copied as it goes.
pub async fn migrate(
    data_dir: &Path,
    url: &str,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        crate::store::sqlite::database_path(data_dir).is_file(),
        "no parley store in {}",
        data_dir.display()
    );
    let mut pg = super::connect(url).await?;
    super::schema::migrate(&mut pg).await?;
    let started: Option<i64> = pg
        .query_opt("SELECT done FROM migration WHERE step = 'started'", &[])
        .await?
        .map(|r| r.get(0));
    if started.is_none() {
        let users: i64 = pg
            .query_one("SELECT COUNT(*) FROM users", &[])
            .await?
            .get(0);
        anyhow::ensure!(
            users == 0,
            "the database already holds {users} users: migrate into an empty database"
        );
        pg.execute(
            "INSERT INTO migration (step, done) VALUES ('started', 1) ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    }

    let mut store = SqliteStore::open(data_dir, SyncMode::Normal)?;
    let reader = Reader::Local(SqliteReader::new(
        data_dir,
        store.index(),
        store.log(),
        store.deletions(),
    ));
    let sqlite = crate::store::sqlite::open(
        &crate::store::sqlite::database_path(data_dir),
        SyncMode::Normal,
    )?;
    copy_tables(&sqlite, &mut pg).await?;

    // The messages, conversation by conversation, from where an earlier run stopped.
    let names: HashMap<String, UserId> = store
        .load_users()?
        .into_iter()
        .map(|(id, name, _)| (name, id))
        .collect();
    let convs: Vec<ConvId> = column(&sqlite, "SELECT id FROM conversations ORDER BY id")?;
    let total: i64 = convs.iter().map(|&c| store.last_seq(c).unwrap_or(0)).sum();
    let mut copied = 0u64;
    let mut done_total = 0u64;
    for &conv in &convs {
        let step = format!("conv:{conv}");
        let mut after: i64 = pg
            .query_opt("SELECT done FROM migration WHERE step = $1", &[&step])
            .await?
            .map_or(0, |r| r.get(0));
        done_total += after as u64;
        loop {
            let page = reader.page(conv, Page::AfterSeq(after), PAGE).await?;
            let Some(last) = page.last().map(|(m, _)| m.seq) else {
                break;
            };
            let tx = pg.transaction().await?;
            // The page as packs of consecutive sequences (a damaged log may have gaps).
            let mut packs: Vec<Builder> = Vec::new();
            for (m, received_at) in &page {
                let sender = *names
                    .get(&*m.sender)
                    .with_context(|| format!("message {} by unknown {:?}", m.id, m.sender))?;
                let message = NewMessage {
                    id: m.id,
                    conv,
                    seq: m.seq,
                    sender,
                    sender_device: m.sender_device,
                    body: m.body.clone(),
                    sent_at: m.sent_at,
                    received_at: *received_at,
                };
                let next = packs
                    .last()
                    .is_some_and(|p| p.last_seq + 1 == m.seq && p.fits(&message));
                if !next {
                    packs.push(Builder::new(m.seq));
                }
                let tombstone = match m.kind {
                    MessageKind::Tombstone(id, seq) => Tombstone::Of(id, seq),
                    _ => Tombstone::No,
                };
                packs
                    .last_mut()
                    .expect("pushed above")
                    .push(m.id, &message, tombstone);
            }
            let mut cols = Columns::default();
            for pack in packs {
                cols.conv.push(conv);
                cols.last_seq.push(pack.last_seq);
                cols.first_seq.push(pack.first_seq);
                cols.last_id.push(pack.last_id);
                cols.data.push(pack.data);
            }
            tx.execute(
                "INSERT INTO message_packs (conversation_id, last_seq, first_seq, last_id, data)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[],
                                      $5::bytea[])
                 ON CONFLICT DO NOTHING",
                &[
                    &cols.conv,
                    &cols.last_seq,
                    &cols.first_seq,
                    &cols.last_id,
                    &cols.data,
                ],
            )
            .await?;
            tx.execute(
                "INSERT INTO migration (step, done) VALUES ($1, $2)
                 ON CONFLICT (step) DO UPDATE SET done = excluded.done",
                &[&step, &last],
            )
            .await?;
            tx.commit().await?;
            copied += page.len() as u64;
            done_total += page.len() as u64;
            progress(done_total, total as u64);
            after = last;
        }
    }
    copy_cursors(&sqlite, &pg).await?;
    pg.batch_execute(
        "UPDATE conversations c SET last_seq = GREATEST(c.last_seq, COALESCE(
             (SELECT MAX(last_seq) FROM message_packs p WHERE p.conversation_id = c.id), 0));
         SELECT setval('users_id_seq', GREATEST((SELECT MAX(id) FROM users), 1));
         SELECT setval('devices_id_seq', GREATEST((SELECT MAX(id) FROM devices), 1));
         SELECT setval('conversations_id_seq', GREATEST((SELECT MAX(id) FROM conversations), 1));
         SELECT setval('message_ids', GREATEST((SELECT MAX(last_id) FROM message_packs), 1));",
    )
    .await?;
    copy_files(&sqlite, data_dir, url).await?;

    let report = verify(&sqlite, &reader, &convs, &pg, copied).await?;
    let differ: Vec<String> = report
        .counts
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(t, a, b)| format!("{t}: {a} in the data directory, {b} in PostgreSQL"))
        .collect();
    anyhow::ensure!(differ.is_empty(), "the copy differs: {}", differ.join("; "));
    anyhow::ensure!(
        report.checksums.0 == report.checksums.1,
        "the messages differ: checksum {} in the data directory, {} in PostgreSQL",
        report.checksums.0,
        report.checksums.1
    );
    // Nodes already running (there should be none) read moderation's tables again.
    pg.execute("UPDATE moderation_version SET version = version + 1", &[])
        .await?;
    pg.execute(
        "INSERT INTO migration (step, done) VALUES ('finished', 1) ON CONFLICT DO NOTHING",
        &[],
    )
    .await?;
    drop(store);
    Ok(report)
}

#[derive(Default)]
struct Columns {
    conv: Vec<i64>,
    last_seq: Vec<i64>,
    first_seq: Vec<i64>,
    last_id: Vec<i64>,
    data: Vec<Vec<u8>>,
}

fn column(db: &rusqlite::Connection, sql: &str) -> anyhow::Result<Vec<i64>> {
    let mut stmt = db.prepare(sql)?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A table copied row by row: `select` reads the data directory's, `insert` takes them.
async fn copy_table(
    db: &rusqlite::Connection,
    pg: &mut Client,
    select: &str,
    insert: &str,
    row: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Vec<Box<dyn ToSql + Sync + Send>>>,
) -> anyhow::Result<()> {
    let mut stmt = db.prepare(select)?;
    let rows: Vec<Vec<Box<dyn ToSql + Sync + Send>>> =
        stmt.query_map([], |r| row(r))?.collect::<Result<_, _>>()?;
    let statement = pg.prepare(insert).await?;
    for chunk in rows.chunks(1000) {
        let tx = pg.transaction().await?;
        for values in chunk {
            let params: Vec<&(dyn ToSql + Sync)> =
                values.iter().map(|v| &**v as &(dyn ToSql + Sync)).collect();
            tx.execute(&statement, &params)
                .await
                .with_context(|| format!("copying into: {}", insert.trim()))?;
        }
        tx.commit().await?;
    }
    Ok(())
}

macro_rules! boxed {
    ($($v:expr),*) => { vec![$(Box::new($v) as Box<dyn ToSql + Sync + Send>),*] };
}

async fn copy_tables(db: &rusqlite::Connection, pg: &mut Client) -> anyhow::Result<()> {
    copy_table(
        db,
        pg,
        "SELECT id, name, password_hash, display_name, avatar, created_at, last_seen_at FROM users",
        "INSERT INTO users (id, name, password_hash, display_name, avatar, created_at,
                            last_seen_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?
            ])
        },
    )
    .await?;
    copy_user_states(db, pg).await?;
    copy_table(
        db,
        pg,
        "SELECT id, user_id, name, created_at, last_seen_at, COALESCE(first_message_id, 0)
         FROM devices",
        "INSERT INTO devices (id, user_id, name, created_at, last_seen_at, first_message_id)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?
            ])
        },
    )
    .await?;
    copy_table(
        db,
        pg,
        "SELECT id, kind, name, user_a, user_b, created_at, created_by FROM conversations",
        "INSERT INTO conversations (id, kind, name, user_a, user_b, created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)? as i16,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?
            ])
        },
    )
    .await?;
    copy_table(
        db,
        pg,
        "SELECT user_id, conversation_id, joined_seq FROM memberships",
        "INSERT INTO memberships (user_id, conversation_id, joined_seq) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?
            ])
        },
    )
    .await?;
    copy_table(
        db,
        pg,
        "SELECT hash, user_id, device_id, created_at, expires_at, revoked_at FROM tokens",
        "INSERT INTO tokens (hash, user_id, device_id, created_at, expires_at, revoked_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Option<i64>>(5)?
            ])
        },
    )
    .await?;
    copy_table(
        db,
        pg,
        "SELECT user_id, contact_id, state, created_at FROM contacts",
        "INSERT INTO contacts (user_id, contact_id, state, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)? as i16,
                r.get::<_, i64>(3)?
            ])
        },
    )
    .await?;
    copy_table(
        db,
        pg,
        "SELECT hash, conversation_id FROM attachments",
        "INSERT INTO attachments (hash, conversation_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        |r| Ok(boxed![r.get::<_, String>(0)?, r.get::<_, i64>(1)?]),
    )
    .await?;
    copy_moderation(db, pg).await?;
    Ok(())
}

/// Accounts an operator disabled or deleted, straight after the users: a deleted account
/// has no password, and without its state a cluster node would let its name log in
/// without one (and inherit its conversations). PostgreSQL marks a deleted account
/// disabled too (moderation.rs), so `disabled_at` falls back on `deleted_at`.
async fn copy_user_states(db: &rusqlite::Connection, pg: &mut Client) -> anyhow::Result<()> {
    copy_table(
        db,
        pg,
        "SELECT id, COALESCE(disabled_at, deleted_at), deleted_at FROM users
         WHERE disabled_at IS NOT NULL OR deleted_at IS NOT NULL",
        "INSERT INTO user_states (user_id, disabled_at, deleted_at) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET disabled_at = excluded.disabled_at,
                                             deleted_at = excluded.deleted_at",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, Option<i64>>(1)?,
                r.get::<_, Option<i64>>(2)?
            ])
        },
    )
    .await
}

/// Rooms' topics and invite-only modes, their marks (operators, bans, mutes,
/// invitations), blocks and deleted messages: what PostgreSQL enforces as SQLite did.
async fn copy_moderation(db: &rusqlite::Connection, pg: &mut Client) -> anyhow::Result<()> {
    copy_table(
        db,
        pg,
        ROOM_SETTINGS,
        "INSERT INTO room_settings (conversation_id, topic, invite_only) VALUES ($1, $2, $3)
         ON CONFLICT (conversation_id) DO UPDATE SET topic = excluded.topic,
                                                     invite_only = excluded.invite_only",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, i64>(2)? != 0
            ])
        },
    )
    .await?;
    copy_table(
        db,
        pg,
        "SELECT conversation_id, user_id, mark, set_by, set_at FROM room_marks",
        "INSERT INTO room_marks (conversation_id, user_id, mark, set_by, set_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)? as i16,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?
            ])
        },
    )
    .await?;
    copy_table(
        db,
        pg,
        "SELECT user_id, blocked_id, created_at FROM blocks",
        "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?
            ])
        },
    )
    .await?;
    copy_table(
        db,
        pg,
        "SELECT message_id, conversation_id, seq, tombstone_id, deleted_by, deleted_at
         FROM deletions",
        "INSERT INTO deletions (message_id, conversation_id, seq, tombstone_id, deleted_by,
                                deleted_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        |r| {
            Ok(boxed![
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?
            ])
        },
    )
    .await
}

/// The rooms with a topic or invite-only, as `room_settings` keeps them (a deleted room
/// has none).
const ROOM_SETTINGS: &str = "SELECT id, topic, invite_only FROM conversations
     WHERE kind = 2 AND deleted_at IS NULL AND (topic IS NOT NULL OR invite_only <> 0)";

/// Moderation's tables, counted on both sides: (name, the data directory's count,
/// PostgreSQL's).
const MODERATION_COUNTS: &[(&str, &str, &str)] = &[
    (
        "user_states",
        "SELECT COUNT(*) FROM users WHERE disabled_at IS NOT NULL OR deleted_at IS NOT NULL",
        "SELECT COUNT(*) FROM user_states
         WHERE disabled_at IS NOT NULL OR deleted_at IS NOT NULL",
    ),
    (
        "room_settings",
        "SELECT COUNT(*) FROM conversations
         WHERE kind = 2 AND deleted_at IS NULL AND (topic IS NOT NULL OR invite_only <> 0)",
        "SELECT COUNT(*) FROM room_settings",
    ),
    (
        "room_marks",
        "SELECT COUNT(*) FROM room_marks",
        "SELECT COUNT(*) FROM room_marks",
    ),
    (
        "blocks",
        "SELECT COUNT(*) FROM blocks",
        "SELECT COUNT(*) FROM blocks",
    ),
    (
        "deletions",
        "SELECT COUNT(*) FROM deletions",
        "SELECT COUNT(*) FROM deletions",
    ),
];

async fn copy_cursors(db: &rusqlite::Connection, pg: &Client) -> anyhow::Result<()> {
    let mut stmt = db.prepare("SELECT device_id, conversation_id, seq FROM cursors")?;
    let rows: Vec<(i64, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for chunk in rows.chunks(PAGE) {
        let (d, c, s): (Vec<i64>, Vec<i64>, Vec<i64>) =
            chunk
                .iter()
                .fold(Default::default(), |(mut d, mut c, mut s), r| {
                    d.push(r.0);
                    c.push(r.1);
                    s.push(r.2);
                    (d, c, s)
                });
        pg.execute(
            "INSERT INTO cursors (device_id, conversation_id, seq)
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[])
             ON CONFLICT (device_id, conversation_id)
             DO UPDATE SET seq = GREATEST(cursors.seq, excluded.seq)",
            &[&d, &c, &s],
        )
        .await?;
    }
    Ok(())
}

/// The stored files' contents into PostgreSQL (blobs.rs), then their rows.
async fn copy_files(db: &rusqlite::Connection, data_dir: &Path, url: &str) -> anyhow::Result<()> {
    let mut stmt = db.prepare("SELECT hash, size FROM files")?;
    let files: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let blobs = super::PgBlobs::new(super::PgReader::new(url));
    for (hash, size) in files {
        if blobs.size(&hash).await? == Some(size as u64) {
            continue;
        }
        let path = data_dir
            .join("files")
            .join(&hash[..2.min(hash.len())])
            .join(&hash);
        let stored = blobs
            .store(&hash, &path)
            .await
            .with_context(|| format!("copying file {hash}"))?;
        anyhow::ensure!(
            stored == size as u64,
            "file {hash}: {stored} bytes on disk, {size} recorded"
        );
    }
    Ok(())
}

/// Counts both sides, and sums the messages on both.
async fn verify(
    db: &rusqlite::Connection,
    reader: &Reader,
    convs: &[ConvId],
    pg: &Client,
    copied: u64,
) -> anyhow::Result<Report> {
    let mut report = Report {
        copied,
        ..Report::default()
    };
    for table in [
        "users",
        "devices",
        "conversations",
        "memberships",
        "cursors",
        "tokens",
        "contacts",
        "files",
        "attachments",
    ] {
        let here: i64 = db.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))?;
        let there: i64 = pg
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await?
            .get(0);
        report.counts.push((table, here, there));
    }
    for &(table, here, there) in MODERATION_COUNTS {
        let here: i64 = db.query_row(here, [], |r| r.get(0))?;
        let there: i64 = pg.query_one(there, &[]).await?.get(0);
        report.counts.push((table, here, there));
    }
    // Messages: what the data directory can read (a message in a damaged block of its log
    // cannot be copied, and is counted out on both sides by its absence).
    let mut here = Sha256::new();
    let mut count_here = 0i64;
    let names: HashMap<String, i64> = {
        let mut stmt = db.prepare("SELECT name, id FROM users")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for &conv in convs {
        let mut after = 0;
        loop {
            let page = reader.page(conv, Page::AfterSeq(after), PAGE).await?;
            let Some(last) = page.last().map(|(m, _)| m.seq) else {
                break;
            };
            for (m, received_at) in &page {
                let sender = names.get(&*m.sender).copied().unwrap_or(0);
                digest(
                    &mut here,
                    conv,
                    m.seq,
                    m.id,
                    sender,
                    m.sender_device,
                    m.sent_at as i64,
                    *received_at,
                    &m.body,
                );
                count_here += 1;
            }
            after = last;
        }
    }
    let mut there = Sha256::new();
    let mut count_there = 0i64;
    for &conv in convs {
        let mut after = 0i64;
        loop {
            let all = |_: &Packed<'_>| Take::Yes;
            let read = scan(pg, conv, Start::After(after), 5000, false, all).await?;
            let Some(last) = read.last().map(|m| m.seq) else {
                break;
            };
            for m in &read {
                digest(
                    &mut there,
                    conv,
                    m.seq,
                    m.id,
                    m.sender,
                    m.sender_device,
                    m.sent_at,
                    m.received_at,
                    &m.body,
                );
                count_there += 1;
            }
            after = last;
        }
    }
    report.counts.push(("messages", count_here, count_there));
    report.checksums = (hex(here.finalize()), hex(there.finalize()));
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn digest(
    h: &mut Sha256,
    conv: i64,
    seq: i64,
    id: i64,
    sender: i64,
    device: i64,
    sent_at: i64,
    received_at: i64,
    body: &[u8],
) {
    for v in [
        conv,
        seq,
        id,
        sender,
        device,
        sent_at,
        received_at,
        body.len() as i64,
    ] {
        h.update(v.to_le_bytes());
    }
    h.update(body);
}

fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
