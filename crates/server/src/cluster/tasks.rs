//! The node's periodic work against PostgreSQL, on a connection of its own:
//! - its lease: every fifth of `cluster_lease_ms` the node's row in `nodes` is given a
//!   new expiry; its sessions count as online while it runs;
//! - the sessions of nodes whose lease ran out (they died, or lost PostgreSQL) are
//!   deleted, and users online nowhere now are announced offline: a dead node's users go
//!   offline within one lease and one renewal;
//! - reconciliation: every `cluster_reconcile_ms`, and at once after NATS reconnects, the
//!   last sequence of every conversation the hub follows goes to the hub, which reads
//!   what it has not delivered yet. A message NATS lost with nothing after it is delivered
//!   at most that much later. A conversation whose gap the hub filled only in part (it
//!   reads a bounded number of messages per batch) is reconciled again at once;
//! - discovery: a conversation this node does not follow yet begins with a message on
//!   NATS; if NATS lost that one (it was away, or dropped messages this node read too
//!   slowly), nothing would reveal the conversation. So after every reconnection (and
//!   every drop) the direct conversations of the users online here that the hub does not
//!   follow are read, and their rooms (a join made on another node meanwhile was
//!   announced only on NATS): once, as soon as the NATS server has the node's
//!   subscriptions again (they are renewed a little after the reconnection is reported;
//!   a probe's round trip shows it, see `probe`), so nothing published after the read
//!   can be missed. Never at a plain reconciliation: it reads every conversation of every
//!   user online here.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::wire::{self, Event};
use super::{Discovered, Incoming, IncomingSink, Interest, RoomMembership};
use crate::store::postgres;
use crate::store::{ConvId, UserId};

/// How often the hub drops conversations nobody here needs.
const COLLECT_EVERY: Duration = Duration::from_secs(30);
/// How long a probe of the NATS server waits for its answer (see `Tasks::probe`).
const PROBE_WAIT: Duration = Duration::from_secs(1);

pub struct Tasks {
    pub url: String,
    pub node: String,
    pub lease: Duration,
    pub reconcile: Duration,
    pub hub: Arc<dyn IncomingSink>,
    pub interest: Arc<Interest>,
    pub guests: Arc<AtomicI64>,
    pub client: async_nats::Client,
    pub reconnected: Arc<tokio::sync::Notify>,
    /// Reconnections to NATS (and drops) seen, and discoveries read.
    pub resyncs: metrics::Counter,
    pub discoveries: metrics::Counter,
}

impl Tasks {
    /// Registers the node (its lease, no sessions left from an earlier run of it) and runs
    /// the periodic work until `shutdown`; then gives the lease up.
    pub async fn start(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut db = postgres::connect(&self.url).await?;
        let gone = self.register(&db).await?;
        self.announce_offline(&db, gone).await;
        tokio::spawn(async move {
            let mut renew = tokio::time::interval(self.lease / 5);
            let mut reconcile = tokio::time::interval(self.reconcile);
            let mut collect = tokio::time::interval(COLLECT_EVERY);
            for timer in [&mut renew, &mut reconcile, &mut collect] {
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            // Probes report here that the subscriptions are in force; a discovery is due
            // until one has been read.
            let (probed, mut probes) = tokio::sync::mpsc::channel::<()>(1);
            let mut discover = false;
            loop {
                if db.is_closed() {
                    match postgres::connect(&self.url).await {
                        Ok(fresh) => db = fresh,
                        Err(e) => warn!(error = %format!("{e:#}"), "cluster tasks: PostgreSQL"),
                    }
                }
                let done = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = renew.tick() => self.renew(&db).await,
                    _ = reconcile.tick() => self.reconcile(&db, false).await,
                    _ = self.reconnected.notified() => {
                        self.resyncs.increment(1);
                        self.probe(probed.clone());
                        self.reconcile(&db, false).await
                    }
                    Some(()) = probes.recv() => {
                        discover = true;
                        Ok(())
                    }
                    _ = collect.tick() => {
                        self.hub.incoming(Incoming::Collect);
                        Ok(())
                    }
                    more = self.interest.wanted() => self.reconcile_some(&db, &more).await,
                };
                if let Err(e) = done {
                    warn!(error = %format!("{e:#}"), "cluster tasks");
                }
                if discover {
                    // Tried again at the loop's next turn (a tick at the latest) if
                    // PostgreSQL failed.
                    match self.reconcile(&db, true).await {
                        Ok(()) => discover = false,
                        Err(e) => warn!(error = %format!("{e:#}"), "cluster tasks: discovery"),
                    }
                }
            }
            // Other nodes see this node's sessions offline at once.
            let left = db
                .execute("DELETE FROM nodes WHERE node_id = $1", &[&self.node])
                .await;
            if let Err(e) = left {
                warn!(error = %e, "giving up the lease");
            }
        });
        Ok(())
    }

    /// Reports on `probed` once the NATS server has this node's subscriptions, renewed after
    /// a reconnection: a request on a subject nobody serves comes back "no responders" only
    /// after the server has read everything the connection sent before it, and the client
    /// sends the renewed subscriptions before any later request. If no answer comes within
    /// a lease (NATS away again: its reconnection probes anew), it reports all the same:
    /// the discovery is never skipped, only perhaps made early.
    fn probe(&self, probed: tokio::sync::mpsc::Sender<()>) {
        let client = self.client.clone();
        let subject = format!("parley.probe.{}", self.node);
        let deadline = Instant::now() + self.lease;
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let asked = client.request(subject.clone(), bytes::Bytes::new());
                match tokio::time::timeout(PROBE_WAIT, asked).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => break,
                    // Not connected yet, or no answer: ask again a little later.
                    _ => tokio::time::sleep(PROBE_WAIT / 10).await,
                }
            }
            // Full: a discovery is due already, and this one would read the same.
            let _ = probed.try_send(());
        });
    }

    /// Takes the lease and removes what an earlier run of this node left online; returns
    /// the users that were.
    async fn register(&self, db: &Client) -> anyhow::Result<Vec<UserId>> {
        self.renew(db).await?;
        let rows = db
            .query(
                "DELETE FROM online_sessions WHERE node_id = $1 RETURNING user_id",
                &[&self.node],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Renews the lease, then takes the sessions of nodes whose lease ran out offline.
    async fn renew(&self, db: &Client) -> anyhow::Result<()> {
        let lease = self.lease.as_millis() as i64;
        let guests = self.guests.load(Ordering::Relaxed);
        db.execute(
            "INSERT INTO nodes (node_id, expires_at, guests)
             VALUES ($1, now() + $2::int8 * interval '1 millisecond', $3)
             ON CONFLICT (node_id) DO UPDATE
             SET expires_at = excluded.expires_at, guests = excluded.guests",
            &[&self.node, &lease, &(guests as i32)],
        )
        .await?;
        let rows = db
            .query(
                "DELETE FROM online_sessions o USING nodes n
                 WHERE o.node_id = n.node_id AND n.expires_at < now() RETURNING o.user_id",
                &[],
            )
            .await?;
        let gone: Vec<UserId> = rows.iter().map(|r| r.get(0)).collect();
        self.announce_offline(db, gone).await;
        Ok(())
    }

    /// Tells every node (this one too) about those of `users` who are online nowhere.
    async fn announce_offline(&self, db: &Client, users: Vec<UserId>) {
        if users.is_empty() {
            return;
        }
        let rows = db
            .query(
                "SELECT DISTINCT u.id, u.name FROM users u WHERE u.id = ANY($1) AND NOT EXISTS (
                     SELECT 1 FROM online_sessions o JOIN nodes n ON n.node_id = o.node_id
                     WHERE o.user_id = u.id AND n.expires_at > now())",
                &[&users],
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return warn!(error = %e, "finding users gone offline"),
        };
        for row in rows {
            let event = Event::Offline {
                user: row.get(0),
                name: row.get(1),
            };
            if let Ok(json) = serde_json::to_vec(&event) {
                if let Err(e) = self.client.publish(wire::EVENTS, json.into()).await {
                    warn!(error = %e, "publishing to NATS");
                }
            }
            self.hub.incoming(Incoming::Event(event));
        }
    }

    /// Hands the hub the last sequences of `convs` (all it follows at a tick; after a gap
    /// filled in part, those whose rest it wants now).
    async fn reconcile_some(&self, db: &Client, convs: &[ConvId]) -> anyhow::Result<()> {
        let rows = db
            .query(
                "SELECT id, last_seq FROM conversations WHERE id = ANY($1)",
                &[&convs],
            )
            .await?;
        let last = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        self.hub.incoming(Incoming::Reconcile(last));
        Ok(())
    }

    /// Hands the hub the last sequences of the conversations it follows, and with
    /// `discover` the direct conversations with messages of users online here that it
    /// does not follow.
    async fn reconcile(&self, db: &Client, discover: bool) -> anyhow::Result<()> {
        let convs = self.interest.convs();
        if !convs.is_empty() {
            self.reconcile_some(db, &convs).await?;
        }
        // Moderation changed somewhere? (hub/cluster_moderation.rs reads it again.)
        let version = db
            .query_one("SELECT version FROM moderation_version", &[])
            .await?;
        self.hub.incoming(Incoming::Moderation(version.get(0)));
        let users = self.interest.users();
        if !discover || users.is_empty() {
            return Ok(());
        }
        self.discoveries.increment(1);
        let rows = db
            .query(
                "SELECT DISTINCT c.id, c.last_seq, c.user_a, c.user_b
                 FROM memberships m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.user_id = ANY($1) AND c.kind = $2 AND c.last_seq > 0
                   AND c.id <> ALL($3)",
                &[&users, &(crate::store::KIND_DIRECT as i16), &convs],
            )
            .await?;
        let found: Vec<Discovered> = rows
            .iter()
            .map(|r| Discovered {
                conv: r.get(0),
                last_seq: r.get(1),
                a: r.get(2),
                b: r.get(3),
            })
            .collect();
        if !found.is_empty() {
            self.hub.incoming(Incoming::Discovered(found));
        }
        let rows = db
            .query(
                "SELECT m.user_id, c.id, c.name, m.joined_seq, c.last_seq
                 FROM memberships m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.user_id = ANY($1) AND c.kind = $2",
                &[&users, &(crate::store::KIND_ROOM as i16)],
            )
            .await?;
        let rooms: Vec<RoomMembership> = rows
            .iter()
            .map(|r| RoomMembership {
                user: r.get(0),
                conv: r.get(1),
                room: r.get::<_, Option<String>>(2).unwrap_or_default(),
                joined_seq: r.get(3),
                last_seq: r.get(4),
            })
            .collect();
        if !rooms.is_empty() {
            self.hub.incoming(Incoming::Memberships(rooms));
        }
        Ok(())
    }
}
