//! The operator's reads (`parley admin users|devices`) on a cluster node: the questions
//! `store/admin.rs` asks SQLite, asked of PostgreSQL's tables, answered with the same rows.
//! A user's disabled and deleted marks are in `user_states` here (schema version 2).

use tokio_postgres::Row;

use super::PgReader;
use crate::store::admin::{DeviceRow, TokenRow, UserRow};
use crate::store::{now_ms, UserId, ANONYMOUS, KIND_ROOM};

const USERS: &str = "SELECT u.id, u.name, u.password_hash IS NOT NULL,
    s.disabled_at IS NOT NULL, s.deleted_at IS NOT NULL, u.created_at, u.last_seen_at,
    (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id)
    FROM users u LEFT JOIN user_states s ON s.user_id = u.id
    WHERE u.name <> $1 ORDER BY u.name";

const USER: &str = "SELECT u.id, u.name, u.password_hash IS NOT NULL,
    s.disabled_at IS NOT NULL, s.deleted_at IS NOT NULL, u.created_at, u.last_seen_at,
    (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.id)
    FROM users u LEFT JOIN user_states s ON s.user_id = u.id
    WHERE u.name = $1 AND u.name <> $2";

fn user_row(r: &Row) -> UserRow {
    UserRow {
        id: r.get(0),
        name: r.get(1),
        account: r.get(2),
        disabled: r.get(3),
        deleted: r.get(4),
        created_at: r.get(5),
        last_seen_at: r.get(6),
        devices: r.get(7),
    }
}

impl PgReader {
    /// Every user but the reserved anonymous one, by name.
    pub async fn admin_users(&self) -> anyhow::Result<Vec<UserRow>> {
        let rows = self.query(USERS, &[&ANONYMOUS]).await?;
        Ok(rows.iter().map(user_row).collect())
    }

    /// The user called `name`.
    pub async fn admin_user(&self, name: String) -> anyhow::Result<Option<UserRow>> {
        let rows = self.query(USER, &[&name, &ANONYMOUS]).await?;
        Ok(rows.first().map(user_row))
    }

    /// The devices of `user`, by name, each with its tokens, newest first.
    pub async fn admin_devices(&self, user: UserId) -> anyhow::Result<Vec<DeviceRow>> {
        let devices = self
            .query(
                "SELECT id, name, created_at, last_seen_at FROM devices
                 WHERE user_id = $1 ORDER BY name",
                &[&user],
            )
            .await?;
        let now = now_ms();
        let mut list = Vec::with_capacity(devices.len());
        for d in &devices {
            let id: i64 = d.get(0);
            let tokens = self
                .query(
                    "SELECT hash, created_at, expires_at, revoked_at FROM tokens
                     WHERE device_id = $1 ORDER BY created_at DESC",
                    &[&id],
                )
                .await?;
            let tokens = tokens
                .iter()
                .map(|t| {
                    let hash: Vec<u8> = t.get(0);
                    let (expires_at, revoked_at): (i64, Option<i64>) = (t.get(2), t.get(3));
                    TokenRow {
                        id: hash.iter().take(8).map(|b| format!("{b:02x}")).collect(),
                        created_at: t.get(1),
                        expires_at,
                        revoked_at,
                        valid: revoked_at.is_none() && expires_at > now,
                    }
                })
                .collect();
            list.push(DeviceRow {
                id,
                name: d.get(1),
                created_at: d.get(2),
                last_seen_at: d.get(3),
                tokens,
            });
        }
        Ok(list)
    }

    /// The rooms `user` is a member of, by name.
    pub async fn admin_rooms_of(&self, user: UserId) -> anyhow::Result<Vec<String>> {
        let room = KIND_ROOM as i16;
        let rows = self
            .query(
                "SELECT c.name FROM memberships m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.user_id = $1 AND c.kind = $2 AND c.name IS NOT NULL ORDER BY c.name",
                &[&user, &room],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// How many contacts `user` has, by state.
    pub async fn admin_contact_counts(&self, user: UserId) -> anyhow::Result<Vec<(i64, i64)>> {
        let rows = self
            .query(
                "SELECT state, COUNT(*) FROM contacts WHERE user_id = $1
                 GROUP BY state ORDER BY state",
                &[&user],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (i64::from(r.get::<_, i16>(0)), r.get(1)))
            .collect())
    }
}
