//! The operator's reads of the database (`parley admin users|devices`), on the read pool
//! (never the hub's writer): the rows `parley admin` prints. Handlers ask through
//! `Reader`'s `admin_*` methods: SQLite's SQL here, PostgreSQL's in `postgres/admin.rs` on
//! a cluster node, the same rows from both.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{now_ms, UserId, ANONYMOUS, KIND_ROOM};

/// A user as `users list` shows it.
#[derive(Debug, Serialize)]
pub struct UserRow {
    pub id: UserId,
    pub name: String,
    /// Has a password (an account), or logs in by name alone.
    pub account: bool,
    pub disabled: bool,
    pub deleted: bool,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub devices: i64,
}

const USER_COLUMNS: &str = "u.id, u.name, u.password_hash IS NOT NULL,
    u.disabled_at IS NOT NULL, u.deleted_at IS NOT NULL, u.created_at, u.last_seen_at,
    (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id)";

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok(UserRow {
        id: r.get(0)?,
        name: r.get(1)?,
        account: r.get(2)?,
        disabled: r.get(3)?,
        deleted: r.get(4)?,
        created_at: r.get(5)?,
        last_seen_at: r.get(6)?,
        devices: r.get(7)?,
    })
}

/// Every user but the reserved anonymous one, by name.
pub fn users(conn: &Connection) -> anyhow::Result<Vec<UserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.name <> ?1 ORDER BY u.name");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([ANONYMOUS], user_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The user called `name`.
pub fn user(conn: &Connection, name: &str) -> anyhow::Result<Option<UserRow>> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.name = ?1 AND u.name <> ?2");
    let row = conn
        .query_row(&sql, [name, ANONYMOUS], user_row)
        .optional()?;
    Ok(row)
}

/// A device of a user, with its tokens.
#[derive(Debug, Serialize)]
pub struct DeviceRow {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    pub last_seen_at: Option<i64>,
    pub tokens: Vec<TokenRow>,
}

/// A device token (only a prefix of its hash is shown: the token itself is never stored).
#[derive(Debug, Serialize)]
pub struct TokenRow {
    /// The first 8 bytes of the token's SHA-256, in hex.
    pub id: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// Neither revoked nor expired.
    pub valid: bool,
}

/// The devices of `user` (the password-less logins' device is named `""`), with their
/// tokens, newest first.
pub fn devices(conn: &Connection, user: UserId) -> anyhow::Result<Vec<DeviceRow>> {
    let mut devices = conn.prepare(
        "SELECT id, name, created_at, last_seen_at FROM devices WHERE user_id = ?1 ORDER BY name",
    )?;
    let mut tokens = conn.prepare(
        "SELECT hash, created_at, expires_at, revoked_at FROM tokens
         WHERE device_id = ?1 ORDER BY created_at DESC",
    )?;
    let now = now_ms();
    let mut list = Vec::new();
    let rows = devices.query_map([user], |r| {
        Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    for row in rows {
        let (id, name, created_at, last_seen_at) = row?;
        let tokens = tokens
            .query_map([id], |r| {
                let hash: Vec<u8> = r.get(0)?;
                let (expires_at, revoked_at): (i64, Option<i64>) = (r.get(2)?, r.get(3)?);
                Ok(TokenRow {
                    id: hash.iter().take(8).map(|b| format!("{b:02x}")).collect(),
                    created_at: r.get(1)?,
                    expires_at,
                    revoked_at,
                    valid: revoked_at.is_none() && expires_at > now,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        list.push(DeviceRow {
            id,
            name,
            created_at,
            last_seen_at,
            tokens,
        });
    }
    Ok(list)
}

/// The rooms `user` is a member of, by name.
pub fn rooms_of(conn: &Connection, user: UserId) -> anyhow::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT c.name FROM memberships m JOIN conversations c ON c.id = m.conversation_id
         WHERE m.user_id = ?1 AND c.kind = ?2 AND c.name IS NOT NULL ORDER BY c.name",
    )?;
    let rows = stmt.query_map(params![user, KIND_ROOM], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// How many contacts `user` has, by state.
pub fn contact_counts(conn: &Connection, user: UserId) -> anyhow::Result<Vec<(i64, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT state, COUNT(*) FROM contacts WHERE user_id = ?1 GROUP BY state ORDER BY state",
    )?;
    let rows = stmt.query_map([user], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
