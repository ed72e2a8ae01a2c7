//! The schema, one version at a time: what each migration (migrations.rs) adds.
//!
//! Version 1 is the schema as it stood before accounts, less the messages (which version 3
//! moves out of SQLite). Its statements say `IF NOT EXISTS` because the
//! databases written before the schema was versioned (`user_version` 0) already hold most
//! of it: migrations.rs adopts them at the version they match.

pub(super) const V1: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER
);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen_at INTEGER,
    UNIQUE (user_id, name)
);
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    name TEXT,
    user_a INTEGER,
    user_b INTEGER,
    -- No longer kept current: the last stored message's sequence is (see index.rs);
    -- databases written while it was still count it as a floor.
    last_seq INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS conversations_direct
    ON conversations (user_a, user_b) WHERE kind = 1;
CREATE UNIQUE INDEX IF NOT EXISTS conversations_named
    ON conversations (kind, name) WHERE kind <> 1;
CREATE TABLE IF NOT EXISTS memberships (
    user_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    joined_seq INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors (
    device_id INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (device_id, conversation_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tokens (
    hash BLOB PRIMARY KEY,
    user_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tokens_user ON tokens (user_id, device_id);
CREATE TABLE IF NOT EXISTS contacts (
    user_id INTEGER NOT NULL,
    contact_id INTEGER NOT NULL,
    state INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, contact_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS files (
    hash TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attachments (
    hash TEXT NOT NULL,
    conversation_id INTEGER NOT NULL,
    PRIMARY KEY (hash, conversation_id)
) WITHOUT ROWID;
-- The message index as saved at the last clean stop (see index.rs).
CREATE TABLE IF NOT EXISTS message_index (
    conversation_id INTEGER PRIMARY KEY,
    ids BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 2: accounts (passwords) and profiles.
pub(super) const V2: &str = "
ALTER TABLE users ADD COLUMN password_hash TEXT;
ALTER TABLE users ADD COLUMN display_name TEXT;
ALTER TABLE users ADD COLUMN avatar BLOB;
";

/// Version 3: the messages leave SQLite for the message log (log.rs); the spans of its
/// records are saved here at a clean stop. The tables of the earlier layouts (`messages`,
/// `message_blocks`) are dropped once their messages are in the log (migrations.rs).
pub(super) const V3: &str = "
CREATE TABLE IF NOT EXISTS message_spans (
    chunk INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
";

/// Version 4: memberships by conversation. Loading the rooms joins every room to its
/// members; with only the (user, conversation) key that was a scan of every membership per
/// room, and a start with 90,000 rooms took 7 min 25 s.
pub(super) const V4: &str = "
CREATE INDEX IF NOT EXISTS memberships_conversation ON memberships (conversation_id, user_id);
";

/// Version 5: the saved spans of the message log say where damaged bytes lie between two
/// records (log.rs); those saved in the earlier form are dropped (the next start reads the
/// log instead, once).
pub(super) const V5: &str = "DELETE FROM message_spans;";

/// Version 6: the first message id a device could have been sent (the next id when it was
/// created), so that it gets every message stored after it first existed (reader.rs).
/// Devices created before this version have none, and keep the older rule.
pub(super) const V6: &str = "ALTER TABLE devices ADD COLUMN first_message_id INTEGER;";

/// Version 7: who created each room, so that rooms created per user can be limited
/// (`max_rooms_per_user`) across restarts.
pub(super) const V7: &str = "ALTER TABLE conversations ADD COLUMN created_by INTEGER;";

/// Version 8: accounts an operator disabled or deleted (`parley admin`), and deleted rooms.
/// A deleted user's row stays, so that its id still names the sender of its messages and
/// nobody else can take the name; a deleted room loses its name (it may be created again,
/// as a new conversation) and its members.
pub(super) const V8: &str = "
ALTER TABLE users ADD COLUMN disabled_at INTEGER;
ALTER TABLE users ADD COLUMN deleted_at INTEGER;
ALTER TABLE conversations ADD COLUMN deleted_at INTEGER;
";

/// Version 9: moderation. A room's topic and invite-only mode; per user of a room a mark
/// (`room_marks.mark`: 1 operator, 2 banned, 3 muted, 4 invited; the owner is the creator,
/// `created_by`); blocks between users; and deleted messages, each with the tombstone that
/// announces it in the log (store/deletions.rs: the log itself is never rewritten).
pub(super) const V9: &str = "
ALTER TABLE conversations ADD COLUMN topic TEXT;
ALTER TABLE conversations ADD COLUMN invite_only INTEGER NOT NULL DEFAULT 0;
CREATE TABLE room_marks (
    conversation_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    mark INTEGER NOT NULL,
    set_by INTEGER,
    set_at INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id, mark)
) WITHOUT ROWID;
CREATE TABLE blocks (
    user_id INTEGER NOT NULL,
    blocked_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
) WITHOUT ROWID;
CREATE TABLE deletions (
    message_id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    tombstone_id INTEGER NOT NULL UNIQUE,
    deleted_by INTEGER NOT NULL,
    deleted_at INTEGER NOT NULL
);
";
