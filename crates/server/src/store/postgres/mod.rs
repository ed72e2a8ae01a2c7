//! The PostgreSQL store, for running several nodes (`parley serve --cluster`).
//!
//! The hub thread owns a [`PgStore`]: the same [`LogStore`] the embedded store is, plus what
//! only a shared store needs (cluster.rs): creating users, devices and conversations at
//! once and on their own (two nodes may create the same one), reading a conversation's
//! messages to fill a gap in what NATS brought, and the table of who is online where.
//! Sessions read through [`PgReader`] (read.rs); file contents are chunks in a table
//! (blobs.rs).
//!
//! The hub thread is not a runtime thread: it runs each request to its end with
//! `Handle::block_on`, on the server's runtime, where the connection's task lives. A
//! request costs the hub a round trip (tens of µs on loopback); a batch costs two (write.rs).
//! A connection that fails is dropped and made again at the next request, so a restarted
//! PostgreSQL is picked up by itself; until then every commit fails, and senders get errors.

mod admin;
mod blobs;
mod cluster;
mod migrate;
mod moderation;
mod pack;
mod read;
mod schema;
mod write;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio_postgres::{Client, NoTls, Statement};

pub use blobs::PgBlobs;
pub use cluster::OnlineClaim;
pub use migrate::{migrate, Report as MigrationReport};
pub use moderation::Moderation;
pub use read::PgReader;

use super::{
    Batch, ContactState, ConvId, DeviceId, DirectConv, LogStore, Membership, NextIds, Seq,
    StoredRoom, UserId, UserState, KIND_BROADCAST,
};

/// How long a connection attempt may take: while PostgreSQL is down, each commit waits
/// this long before it fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one request of the hub may take before its connection is given up (a server
/// that stopped answering without closing the connection would hold the hub forever).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects to `url` and runs the connection on the current runtime.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let connecting = tokio_postgres::connect(url, NoTls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("connecting to PostgreSQL timed out"))?
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Connects and brings the schema up to date (done once, at a node's start).
pub async fn open(url: &str) -> anyhow::Result<()> {
    let mut client = connect(url).await?;
    schema::migrate(&mut client).await
}

/// A connection and its prepared statements, made again after a failure.
pub(crate) struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
}

impl Conn {
    /// `sql` prepared on this connection (once).
    async fn prepare(&mut self, sql: &'static str) -> anyhow::Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self
            .client
            .prepare(sql)
            .await
            .with_context(|| format!("preparing {}", sql.trim()))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

/// What the store has done, for the figures of a bench (logged at the end).
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub statements: u64,
    pub batches: u64,
    pub messages: u64,
    pub message_bytes: u64,
}

/// The hub's side of the PostgreSQL store.
pub struct PgStore {
    url: String,
    runtime: Handle,
    conn: Option<Conn>,
    /// This node's id (the online table's rows are this node's).
    pub node: String,
    pub counters: Counters,
    /// The count of moderation's changes when the start first read them (moderation.rs).
    pub(crate) moderation_loaded: Option<i64>,
}

impl PgStore {
    /// A store on `url` for node `node`, whose requests run on `runtime`. The schema must
    /// be migrated already ([`open`]).
    pub fn new(url: &str, node: &str, runtime: Handle) -> PgStore {
        PgStore {
            url: url.to_string(),
            runtime,
            conn: None,
            node: node.to_string(),
            counters: Counters::default(),
            moderation_loaded: None,
        }
    }

    /// Runs `f` with a live connection (made if needed) to its end. On an error the
    /// connection is dropped if it has closed, so the next request makes a new one.
    fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Conn, &mut Counters) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let runtime = self.runtime.clone();
        let url = self.url.clone();
        let conn = &mut self.conn;
        let counters = &mut self.counters;
        let result = runtime.block_on(async move {
            if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                let client = connect(&url).await.map_err(|e| (e, false))?;
                *conn = Some(Conn {
                    client,
                    statements: HashMap::new(),
                });
            }
            let request = f(conn.as_mut().expect("connected above"), counters);
            match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
                Ok(result) => result.map_err(|e| (e, false)),
                Err(_) => Err((anyhow::anyhow!("PostgreSQL did not answer in time"), true)),
            }
        });
        match result {
            Ok(value) => Ok(value),
            Err((e, timed_out)) => {
                if timed_out || self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
                    self.conn = None;
                }
                Err(e)
            }
        }
    }
}

/// One request: `sql` with `params`, its rows.
macro_rules! rows {
    ($store:expr, $sql:expr, $($param:expr),* $(,)?) => {{
        $store.run(async move |conn: &mut $crate::store::postgres::Conn, counters: &mut $crate::store::postgres::Counters| {
            let statement = conn.prepare($sql).await?;
            counters.statements += 1;
            Ok(conn.client.query(&statement, &[$(&$param),*]).await?)
        })
    }};
}
pub(crate) use rows;

impl LogStore for PgStore {
    fn load_users(&mut self) -> anyhow::Result<Vec<(UserId, String, bool)>> {
        let rows = rows!(
            self,
            "SELECT id, name, password_hash IS NOT NULL FROM users",
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect())
    }

    /// Ids are PostgreSQL's in a cluster (cluster.rs): the hub's counters only number the
    /// messages of a batch until the store gives them their ids.
    fn next_ids(&mut self) -> anyhow::Result<NextIds> {
        Ok(NextIds {
            user: 1,
            device: 1,
            conv: 1,
            message: 1,
        })
    }

    fn find_device(&mut self, user: UserId, name: &str) -> anyhow::Result<Option<DeviceId>> {
        let name = name.to_string();
        let rows = rows!(
            self,
            "SELECT id FROM devices WHERE user_id = $1 AND name = $2",
            user,
            name
        )?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    fn find_direct(&mut self, a: UserId, b: UserId) -> anyhow::Result<Option<DirectConv>> {
        let rows = rows!(
            self,
            "SELECT id, last_seq FROM conversations WHERE kind = 1 AND user_a = $1 AND user_b = $2",
            a,
            b
        )?;
        Ok(rows.first().map(|r| DirectConv {
            id: r.get(0),
            last_seq: r.get(1),
        }))
    }

    fn memberships(&mut self, user: UserId) -> anyhow::Result<Vec<Membership>> {
        let rows = rows!(
            self,
            "SELECT conversation_id, joined_seq FROM memberships WHERE user_id = $1",
            user
        )?;
        Ok(rows
            .iter()
            .map(|r| Membership {
                conv: r.get(0),
                joined_seq: r.get(1),
            })
            .collect())
    }

    fn last_seq(&mut self, conv: ConvId) -> anyhow::Result<Seq> {
        let rows = rows!(
            self,
            "SELECT last_seq FROM conversations WHERE id = $1",
            conv
        )?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    fn load_rooms(&mut self) -> anyhow::Result<Vec<StoredRoom>> {
        let rows = rows!(
            self,
            "SELECT c.id, c.name, m.user_id, c.created_by FROM conversations c
             LEFT JOIN memberships m ON m.conversation_id = c.id
             WHERE c.kind = 2 AND c.name IS NOT NULL ORDER BY c.id",
        )?;
        let mut rules = self.moderation()?.rules;
        let mut rooms: Vec<StoredRoom> = Vec::new();
        for row in rows {
            let conv: ConvId = row.get(0);
            if rooms.last().map(|r| r.conv) != Some(conv) {
                let rules = rules.remove(&conv).unwrap_or_default();
                rooms.push(StoredRoom {
                    conv,
                    name: row.get(1),
                    members: Vec::new(),
                    created_by: row.get(3),
                    topic: rules.topic,
                    invite_only: rules.invite_only,
                    marks: rules.marks,
                });
            }
            let room = rooms.last_mut().expect("pushed above");
            room.members.extend(row.get::<_, Option<UserId>>(2));
        }
        Ok(rooms)
    }

    fn ensure_builtin(&mut self, anonymous: &str) -> anyhow::Result<(ConvId, UserId)> {
        let now = super::now_ms();
        let kind = KIND_BROADCAST as i16;
        rows!(
            self,
            "INSERT INTO conversations (kind, name, created_at) VALUES ($1, '*', $2)
             ON CONFLICT (kind, name) WHERE kind <> 1 DO NOTHING",
            kind,
            now
        )?;
        let conv = rows!(
            self,
            "SELECT id FROM conversations WHERE kind = $1 AND name = '*'",
            kind
        )?;
        let (user, _) = self.ensure_user(anonymous)?;
        Ok((conv[0].get(0), user))
    }

    fn contacts(&mut self, user: UserId) -> anyhow::Result<Vec<(UserId, ContactState)>> {
        let rows = rows!(
            self,
            "SELECT contact_id, state FROM contacts WHERE user_id = $1",
            user
        )?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let state = ContactState::from_i64(i64::from(r.get::<_, i16>(1)))?;
                Some((r.get(0), state))
            })
            .collect())
    }

    fn load_user_states(&mut self) -> anyhow::Result<Vec<(UserId, UserState)>> {
        Ok(self.moderation()?.user_states)
    }

    fn load_blocks(&mut self) -> anyhow::Result<Vec<(UserId, UserId)>> {
        Ok(self.moderation()?.blocks)
    }

    fn is_deleted(&mut self, id: i64) -> anyhow::Result<bool> {
        self.message_deleted(id)
    }

    fn write(&mut self, batch: &Batch) -> anyhow::Result<()> {
        self.commit(batch).map(|_| ())
    }

    fn commit(&mut self, batch: &Batch) -> anyhow::Result<Option<Vec<(i64, Seq)>>> {
        let assigned =
            self.run(async |conn, counters| write::batch(conn, counters, batch).await)?;
        Ok(Some(assigned))
    }

    fn cluster(&mut self) -> Option<&mut PgStore> {
        Some(self)
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        let c = self.counters;
        tracing::info!(
            statements = c.statements,
            batches = c.batches,
            messages = c.messages,
            message_bytes = c.message_bytes,
            "PostgreSQL store closed"
        );
    }
}
