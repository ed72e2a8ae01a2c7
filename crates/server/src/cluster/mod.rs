//! Several nodes: what a node runs beside its hub in cluster mode (`parley serve
//! --cluster`).
//!
//! Each node keeps its sessions, codecs and hub; PostgreSQL is the store every node writes
//! (store/postgres/), and NATS carries what one node must tell the others at once:
//! - the bus task (bus.rs) publishes what the hub commits, after the commit, and hands the
//!   hub what other nodes committed: only what this node's sessions need, by the
//!   [`Interest`] the hub keeps current, so the hub never sees the rest;
//! - the cluster tasks (tasks.rs) renew this node's lease in PostgreSQL (its sessions are
//!   online while it runs), take the sessions of nodes whose lease ran out offline, and
//!   have the hub reconcile what it delivered with what PostgreSQL holds every
//!   `cluster_reconcile_ms` and after every reconnection to NATS: a message NATS lost, with
//!   nothing after it to show the gap, is delivered that much later, never lost.
//!
//! ```text
//! client ─► node A: session ─► hub ─batch tx─► PostgreSQL ◄─ catch-up, history, logins
//!           publish after commit │  ▲ gap fill, reconciliation (every second)
//!                                ▼  │
//!                               NATS ─► node B: bus (only what B needs) ─► hub ─► sessions
//! ```
//!
//! A batch is one PostgreSQL transaction that locks its conversations' rows in id order and
//! takes their next sequences there (store/postgres/): an OK means committed, and two nodes
//! never fork a conversation's order. NATS is never the only copy of anything: the hub
//! delivers each conversation in sequence order and reads a gap from PostgreSQL before it
//! goes on (hub/cluster.rs). Online sessions are rows under their node's lease
//! (`cluster_lease_ms`, 10 s); files are chunks in PostgreSQL, so nodes share no disk.

mod bus;
mod tasks;
pub mod wire;

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::{ConvId, Seq, UserId};

pub use self::wire::{Event, Wired};

type Set<K> = std::collections::HashSet<K, ahash::RandomState>;

/// Where the bus and the cluster tasks hand what they hear: in the server, the hub, which
/// delivers it. A trait rather than the hub itself, so the cluster depends on nothing that
/// depends on it (the hub → cluster, as the output path's `ProgressSink`).
pub trait IncomingSink: Send + Sync {
    /// Takes `incoming` in; never waits.
    fn incoming(&self, incoming: Incoming);
}

/// What the cluster's tasks hand the hub.
#[derive(Debug)]
pub enum Incoming {
    /// Messages other nodes committed, in the order they published them.
    Messages(Vec<Wired>),
    Event(Event),
    /// The last sequences PostgreSQL holds for conversations this node delivers.
    Reconcile(Vec<(ConvId, Seq)>),
    /// Direct conversations of users online here that this node does not follow, with
    /// their last sequence and members: read after NATS was away (or dropped messages),
    /// when the message that began one may have been lost with nothing after it.
    Discovered(Vec<Discovered>),
    /// The rooms users online here are members of, with where they joined and where each
    /// room stands: read with `Discovered`, as a join made on another node while NATS was
    /// away reached this node by nothing else.
    Memberships(Vec<RoomMembership>),
    /// Time to stop delivering conversations nobody here needs any more.
    Collect,
    /// How many changes moderation's tables have seen (`moderation_version`): read at
    /// each reconciliation, so that a node that missed a change's event reads them again.
    Moderation(i64),
}

/// What the hub delivers: conversations it follows (and their last sequence dispatched is
/// the hub's), and users with sessions here (a direct conversation new to both of them is
/// not followed yet). The bus passes the hub only messages of these; the hub adds to it
/// before it reads where a conversation stands, so nothing committed after that read can
/// be filtered out.
#[derive(Default)]
pub struct Interest {
    sets: Mutex<Sets>,
    /// Conversations whose gap the hub filled in part (it reads a bounded number of
    /// messages per batch): the cluster tasks read where they stand at once, and hand the
    /// hub a reconciliation of them to go on with.
    more: Mutex<Vec<ConvId>>,
    more_wanted: tokio::sync::Notify,
}

#[derive(Default)]
struct Sets {
    convs: Set<ConvId>,
    users: Set<UserId>,
}

impl Interest {
    pub fn follow(&self, conv: ConvId) {
        self.sets
            .lock()
            .expect("interest poisoned")
            .convs
            .insert(conv);
    }

    /// Keeps only the conversations `keep` says yes to.
    pub fn retain(&self, keep: impl Fn(ConvId) -> bool) {
        let mut sets = self.sets.lock().expect("interest poisoned");
        sets.convs.retain(|c| keep(*c));
    }

    pub fn user_online(&self, user: UserId, online: bool) {
        let mut sets = self.sets.lock().expect("interest poisoned");
        if online {
            sets.users.insert(user);
        } else {
            sets.users.remove(&user);
        }
    }

    /// The conversations followed now.
    pub fn convs(&self) -> Vec<ConvId> {
        let sets = self.sets.lock().expect("interest poisoned");
        sets.convs.iter().copied().collect()
    }

    /// The users with sessions here now.
    pub fn users(&self) -> Vec<UserId> {
        let sets = self.sets.lock().expect("interest poisoned");
        sets.users.iter().copied().collect()
    }

    /// Asks for `convs` to be reconciled soon (see `more`).
    pub fn more(&self, convs: Vec<ConvId>) {
        let mut more = self.more.lock().expect("interest poisoned");
        for conv in convs {
            if !more.contains(&conv) {
                more.push(conv);
            }
        }
        drop(more);
        self.more_wanted.notify_one();
    }

    /// Waits until some conversations are to be reconciled soon, and takes them.
    async fn wanted(&self) -> Vec<ConvId> {
        loop {
            self.more_wanted.notified().await;
            let more = std::mem::take(&mut *self.more.lock().expect("interest poisoned"));
            if !more.is_empty() {
                return more;
            }
        }
    }

    /// Decodes the messages of a batch this node delivers; the rest is stepped over
    /// (`wire::decode_where`).
    fn decode(&self, data: Bytes, names: &mut wire::Names) -> anyhow::Result<Vec<Wired>> {
        let sets = self.sets.lock().expect("interest poisoned");
        wire::decode_where(data, names, |conv, a, b| {
            sets.convs.contains(&conv) || sets.users.contains(&a) || sets.users.contains(&b)
        })
    }
}

/// A direct conversation found in PostgreSQL (see [`Incoming::Discovered`]).
#[derive(Debug, Clone, Copy)]
pub struct Discovered {
    pub conv: ConvId,
    pub last_seq: Seq,
    pub a: UserId,
    pub b: UserId,
}

/// A room membership found in PostgreSQL (see [`Incoming::Memberships`]).
#[derive(Debug, Clone)]
pub struct RoomMembership {
    pub user: UserId,
    pub conv: ConvId,
    pub room: String,
    pub joined_seq: Seq,
    pub last_seq: Seq,
}

/// Something for the bus to publish.
#[derive(Debug)]
pub struct Outgoing {
    pub subject: &'static str,
    pub payload: Bytes,
}

/// How many publications may wait for NATS before new ones are dropped (counted and
/// logged): while NATS is unreachable, the other nodes find what they miss in PostgreSQL.
const OUTGOING: usize = 4096;

/// The hub's end of the cluster.
pub struct Link {
    pub interest: Arc<Interest>,
    pub outgoing: tokio::sync::mpsc::Sender<Outgoing>,
    /// Anonymous sessions counted in presence here (published with the lease).
    pub guests: Arc<AtomicI64>,
    /// Publications dropped because the queue to NATS was full.
    pub dropped: u64,
}

impl Link {
    /// Queues a publication; never waits.
    pub fn publish(&mut self, subject: &'static str, payload: Bytes) {
        let sent = self.outgoing.try_send(Outgoing { subject, payload });
        if sent.is_err() {
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped,
                    "NATS is behind: publications dropped (PostgreSQL has them)"
                );
            }
        }
    }

    pub fn event(&mut self, event: &Event) {
        match serde_json::to_vec(event) {
            Ok(json) => self.publish(wire::EVENTS, Bytes::from(json)),
            Err(e) => tracing::error!(error = %e, "encoding a cluster event"),
        }
    }
}

/// The cluster's tasks, started before the hub (which needs the [`Link`]) and given the
/// hub once it runs.
pub struct Starting {
    interest: Arc<Interest>,
    guests: Arc<AtomicI64>,
    to_bus: Option<tokio::sync::mpsc::Sender<Outgoing>>,
    outgoing: tokio::sync::mpsc::Receiver<Outgoing>,
    client: async_nats::Client,
    reconnected: Arc<tokio::sync::Notify>,
    node: String,
}

/// Connects to NATS (waiting for it if it is not up yet, as for a later reconnection) and
/// makes this node known in PostgreSQL.
pub async fn connect(config: &Config) -> anyhow::Result<Starting> {
    let url = config
        .nats
        .as_deref()
        .expect("validated: cluster mode has a NATS URL");
    let node = config
        .node_id
        .clone()
        .expect("validated: cluster mode has a node id");
    let reconnected = Arc::new(tokio::sync::Notify::new());
    let client = bus::connect(url, &node, reconnected.clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(OUTGOING);
    Ok(Starting {
        interest: Arc::default(),
        guests: Arc::default(),
        to_bus: Some(tx),
        outgoing: rx,
        client,
        reconnected,
        node,
    })
}

impl Starting {
    /// How the login throttle tells the other nodes of this node's password attempts and
    /// wrong tokens.
    pub fn announcer(&self) -> crate::throttle::Announce {
        let outgoing = self.to_bus.clone().expect("before the hub takes its end");
        Box::new(move |name, ip, attempt| {
            let event = Event::Login {
                name: name.to_string(),
                ip,
                succeeded: attempt == crate::throttle::Attempt::Succeeded,
                unchecked: attempt == crate::throttle::Attempt::Unchecked,
                token: attempt == crate::throttle::Attempt::TokenFailed,
            };
            match serde_json::to_vec(&event) {
                // Full: NATS is behind, and this attempt counts on this node only.
                Ok(json) => {
                    let _ = outgoing.try_send(Outgoing {
                        subject: wire::EVENTS,
                        payload: Bytes::from(json),
                    });
                }
                Err(e) => tracing::error!(error = %e, "encoding a cluster event"),
            }
        })
    }

    /// The hub's end.
    pub fn link(&mut self) -> Link {
        Link {
            interest: self.interest.clone(),
            outgoing: self.to_bus.take().expect("one hub"),
            guests: self.guests.clone(),
            dropped: 0,
        }
    }

    /// Starts the bus and the cluster tasks, which hand what they hear to `hub` (and count
    /// in `metrics`); they stop with `shutdown`.
    pub async fn run(
        self,
        config: &Config,
        hub: Arc<dyn IncomingSink>,
        shutdown: CancellationToken,
        throttle: Arc<crate::throttle::Throttle>,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<()> {
        let bus = bus::Bus {
            client: self.client.clone(),
            hub: hub.clone(),
            interest: self.interest.clone(),
            throttle,
        };
        bus.start(self.outgoing, shutdown.clone()).await?;
        let tasks = tasks::Tasks {
            url: config.postgres.clone().expect("validated"),
            node: self.node,
            lease: std::time::Duration::from_millis(config.cluster_lease_ms),
            reconcile: std::time::Duration::from_millis(config.cluster_reconcile_ms),
            hub,
            interest: self.interest,
            guests: self.guests,
            client: self.client,
            reconnected: self.reconnected,
            resyncs: metrics.cluster_resyncs.clone(),
            discoveries: metrics.cluster_discoveries.clone(),
        };
        tasks.start(shutdown).await
    }
}
