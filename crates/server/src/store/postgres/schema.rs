//! The PostgreSQL schema, one version at a time, and the migrations between them.
//!
//! The version lives in `parley_schema`; a node that starts runs the versions the database
//! lacks, in order, each in its own transaction, under an advisory lock so that nodes
//! starting together migrate once. A database of a newer version than this parley knows
//! is refused. (rusqlite_migration is SQLite's; a list of statements and a version row is
//! all PostgreSQL needs here.)
//!
//! What differs from the SQLite schema, and why:
//! - ids are `bigserial`: in a cluster, rows that can be created on two nodes at once
//!   (users, devices, conversations) are inserted at once, on their own, and take their id
//!   from PostgreSQL (`INSERT ... ON CONFLICT DO NOTHING RETURNING id`);
//! - `conversations.last_seq` is kept current: a batch takes a conversation's next
//!   sequences from it under the row's lock, which orders the nodes writing one
//!   conversation;
//! - message ids come from the sequence `message_ids` (cache 1) taken under those locks,
//!   so that, as on one node, ids ascend with the sequence in every conversation; since
//!   version 5 each value of it begins a block of [`ID_BLOCK`] ids, so a batch takes one
//!   value per block, not one per message (ids jump by the unused rest of a block);
//! - the messages (since version 3 a row per conversation per batch: pack.rs), file
//!   contents (`blobs`) and who is online where (`nodes`, `online_sessions`) are tables;
//! - moderation (version 2) is in tables of its own rather than new columns, so that the
//!   tables every message touches stay as they are (store/postgres/moderation.rs).

use anyhow::Context;
use tokio_postgres::Client;

/// The schema's versions: version `n` is the `n`-th.
const VERSIONS: &[&str] = &[V1, V2, V3, V4, V5];

const V1: &str = "
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    display_name TEXT,
    avatar BYTEA,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT
);
CREATE TABLE devices (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT,
    -- Messages with lower ids were stored before the device existed (read.rs).
    first_message_id BIGINT NOT NULL DEFAULT 0,
    UNIQUE (user_id, name)
);
CREATE TABLE conversations (
    id BIGSERIAL PRIMARY KEY,
    kind SMALLINT NOT NULL,
    name TEXT,
    user_a BIGINT,
    user_b BIGINT,
    last_seq BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    created_by BIGINT
);
CREATE UNIQUE INDEX conversations_direct ON conversations (user_a, user_b) WHERE kind = 1;
CREATE UNIQUE INDEX conversations_named ON conversations (kind, name) WHERE kind <> 1;
CREATE TABLE memberships (
    user_id BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    joined_seq BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conversation_id)
);
CREATE INDEX memberships_conversation ON memberships (conversation_id);
CREATE SEQUENCE message_ids CACHE 1;
CREATE TABLE messages (
    conversation_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    id BIGINT NOT NULL,
    sender_id BIGINT NOT NULL,
    sender_device BIGINT NOT NULL,
    -- The client's timestamp, its 64 bits as they came.
    sent_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
CREATE INDEX messages_id ON messages (conversation_id, id);
CREATE TABLE cursors (
    device_id BIGINT NOT NULL,
    conversation_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    PRIMARY KEY (device_id, conversation_id)
);
CREATE TABLE tokens (
    hash BYTEA PRIMARY KEY,
    user_id BIGINT NOT NULL,
    device_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tokens_user ON tokens (user_id, device_id);
CREATE TABLE contacts (
    user_id BIGINT NOT NULL,
    contact_id BIGINT NOT NULL,
    state SMALLINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, contact_id)
);
CREATE TABLE files (
    hash TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
-- A stored file's content, in chunks of blobs.rs's CHUNK bytes; complete once `files`
-- has its row.
CREATE TABLE blobs (
    hash TEXT NOT NULL,
    chunk INT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (hash, chunk)
);
CREATE TABLE attachments (
    hash TEXT NOT NULL,
    conversation_id BIGINT NOT NULL,
    PRIMARY KEY (hash, conversation_id)
);
-- The nodes of the cluster and their leases: a node whose lease ran out is gone, and so
-- are its sessions.
CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL,
    guests INT NOT NULL DEFAULT 0
);
-- Who is online, on which node: a password-less name as device 0 (one session per
-- name), an account's devices as themselves.
CREATE TABLE online_sessions (
    user_id BIGINT NOT NULL,
    device_id BIGINT NOT NULL,
    node_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE INDEX online_sessions_node ON online_sessions (node_id);
-- What `parley migrate` copied so far: it resumes from here.
CREATE TABLE migration (
    step TEXT PRIMARY KEY,
    done BIGINT NOT NULL
);
";

/// Version 2: moderation, as the SQLite schema's version 9 keeps it (see there), and what
/// operators made of accounts (its version 8), in tables of their own. `moderation_version`
/// counts the batches that changed any of it: a node that reads a number it has not seen
/// reads the rest again (a change announced while NATS was away reaches it so).
const V2: &str = "
CREATE TABLE user_states (
    user_id BIGINT PRIMARY KEY,
    disabled_at BIGINT,
    deleted_at BIGINT
);
CREATE TABLE room_settings (
    conversation_id BIGINT PRIMARY KEY,
    topic TEXT,
    invite_only BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE room_marks (
    conversation_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    mark SMALLINT NOT NULL,
    set_by BIGINT,
    set_at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id, mark)
);
CREATE TABLE blocks (
    user_id BIGINT NOT NULL,
    blocked_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
);
-- A deleted message and the tombstone that announces it (store/deletions.rs): both stay
-- in `messages` as they were written.
CREATE TABLE deletions (
    message_id BIGINT PRIMARY KEY,
    conversation_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    tombstone_id BIGINT NOT NULL UNIQUE,
    deleted_by BIGINT NOT NULL,
    deleted_at BIGINT NOT NULL
);
CREATE INDEX deletions_conversation ON deletions (conversation_id, message_id);
CREATE TABLE moderation_version (version BIGINT NOT NULL);
INSERT INTO moderation_version VALUES (0);
";

/// Version 3: messages in packs (pack.rs), a row per conversation per batch instead of a
/// row per message. Each stored message becomes a pack of one.
const V3: &str = "
CREATE TABLE message_packs (
    conversation_id BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_id BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (conversation_id, last_seq)
);
CREATE INDEX message_packs_id ON message_packs (conversation_id, last_id);
-- Packed messages compress little: no time spent trying.
ALTER TABLE message_packs ALTER COLUMN data SET STORAGE EXTERNAL;
INSERT INTO message_packs (conversation_id, last_seq, first_seq, last_id, data)
SELECT conversation_id, seq, seq, id,
       int8send(id) || int8send(sender_id) || int8send(sender_device) || int8send(sent_at)
       || int8send(received_at) || int4send(length(body)) || body
FROM messages;
DROP TABLE messages;
";

/// Version 4: the moderation events of each batch that changed moderation, by the
/// `moderation_version` it took: a node that missed some on NATS reads just those and
/// applies them as their events (hub/cluster_moderation.rs). The last few thousand are
/// kept; a node further behind reads all of moderation again.
const V4: &str = "
CREATE TABLE moderation_log (
    version BIGINT PRIMARY KEY,
    events TEXT NOT NULL
);
";

/// Version 5: message ids in blocks. Each `nextval` hands out the first of [`ID_BLOCK`]
/// ids (the sequence steps by that much), so a batch takes one value per block of its
/// messages rather than one per message: the sequence's work (a buffer lock and, every
/// 32 values, a WAL record) was about 0.3–0.5 µs of PostgreSQL's CPU per message. Values
/// taken before this step are all below the next one, so no id is handed out twice.
const V5: &str = "ALTER SEQUENCE message_ids INCREMENT BY 64;";

/// How many message ids one value of `message_ids` stands for (version 5).
pub const ID_BLOCK: i64 = 64;

/// A number of our own for the advisory lock the migrations run under.
const LOCK: i64 = 0x7061_726c_6579; // "parley"

/// The schema version this parley writes.
pub const LATEST: i64 = VERSIONS.len() as i64;

/// Brings the database to [`LATEST`], or refuses one that is newer.
pub async fn migrate(client: &mut Client) -> anyhow::Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK])
        .await
        .context("taking the migration lock")?;
    let result = run(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await;
    result?;
    unlocked.context("releasing the migration lock")?;
    Ok(())
}

async fn run(client: &mut Client) -> anyhow::Result<()> {
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS parley_schema (version BIGINT NOT NULL)")
        .await?;
    let row = client
        .query_opt("SELECT version FROM parley_schema", &[])
        .await?;
    let version: i64 = row.map_or(0, |r| r.get(0));
    anyhow::ensure!(
        version <= LATEST,
        "the database is of schema version {version}, written by a newer parley; this one \
         reads versions up to {LATEST}"
    );
    for (at, sql) in VERSIONS.iter().enumerate().skip(version as usize) {
        let next = at as i64 + 1;
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("migrating to schema version {next}"))?;
        tx.execute("DELETE FROM parley_schema", &[]).await?;
        tx.execute("INSERT INTO parley_schema (version) VALUES ($1)", &[&next])
            .await?;
        tx.commit().await?;
        tracing::info!(version = next, "PostgreSQL schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_sequence_steps_by_the_block_the_writer_takes() {
        assert!(super::V5.contains(&format!("INCREMENT BY {};", super::ID_BLOCK)));
    }
}
