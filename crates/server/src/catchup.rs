//! Replaying what a device missed, then switching it to live pushes without a gap.
//!
//! A device that logs in reads, from its cursor on, every conversation it belongs to, in
//! message-id order across conversations (a k-way merge over pages), and queues it. When
//! it has read everything, it asks the hub to go live; the hub, being the only writer,
//! agrees only if nothing was appended since, so the replay and the live stream meet
//! exactly: nothing missed, nothing twice, old before new.
//!
//! Only a few catch-ups replay at once ([`Gate`]); the others wait their turn, idle. When
//! every device of a crowd comes back at once (the reconnect storm), replaying all of them
//! at once made each take its turns at the read pool, the hub and its writer among ten
//! thousand others, for the whole storm: every runnable task queued behind them, a live
//! message's included (tokio has no priorities). A few at a time, each catch-up is over in
//! a few turns and the runtime's queues stay short.

use std::collections::HashMap;
use std::sync::Arc;

use parley_proto::ConversationKind;
use tokio::sync::{Semaphore, SemaphorePermit};
use tracing::{debug, warn};

use crate::hub::{GoLive, Hub, Identity};
use crate::monitor::Monitor;
use crate::outbound::{Delivery, Item, Kill, Link, Waiter, MESSAGE_OVERHEAD};
use crate::store::{ConvId, ConvPosition, MessageKind, Reader, Seq};

/// Most messages read per conversation per round.
const PAGE: usize = 512;
/// About the most bytes one round reads, over every conversation: a device that missed
/// large messages reads a few at a time, so its catch-up holds about this much besides
/// what waits in its queue (which the queue's room bounds).
const ROUND_BYTES: usize = 1 << 20;
/// What a message is taken to weigh before any was read: the largest a frame can carry, so
/// the first round is small.
const FIRST_GUESS: usize = 64 * 1024;

/// Catch-ups replaying at once per core, unless `catchups_at_once` says otherwise. Two
/// per core keep the cores busy while one waits for a read or the hub; in the storm (10,000
/// devices x 100 messages on two cores) 4 at once gave the bystander's DMs a p50 of
/// 0.6-1.6 ms against 3.2-11.6 ms with every catch-up at once, 8 gave 1.6-2.5 ms and 32
/// 4-7 ms (docs/perf/2026-12-06-storm3.md).
const AT_ONCE_PER_CORE: usize = 2;
/// Messages a catch-up replays before it lets a waiting one have its place: a device with a
/// large backlog (and a client that keeps up) takes turns with the others instead of
/// making them wait for all of it. A storm's devices (100 messages each) never yield.
const TURN_MESSAGES: usize = 4096;

/// The bound on catch-ups replaying at once, shared by a server's sessions. A catch-up holds
/// its place while it reads and queues; it gives it up while its client does not read (a
/// client that never reads holds no place of the others'), and after `TURN_MESSAGES`
/// when others wait.
pub struct Gate(Semaphore);

impl Gate {
    /// `at_once` catch-ups at a time; 0: two per core.
    pub fn new(at_once: usize) -> Gate {
        let at_once = match at_once {
            0 => {
                let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
                AT_ONCE_PER_CORE * cores
            }
            n => n,
        };
        Gate(Semaphore::new(at_once))
    }

    async fn enter(&self) -> anyhow::Result<SemaphorePermit<'_>> {
        Ok(self.0.acquire().await?)
    }

    /// Whether a catch-up waits for a place.
    fn contended(&self) -> bool {
        self.0.available_permits() == 0
    }
}

/// Replays the backlog of `identity` into `link`'s queue, then goes live.
pub async fn run(
    gate: Arc<Gate>,
    reader: Reader,
    hub: Hub,
    link: Arc<Link>,
    identity: Identity,
    monitor: Arc<Monitor>,
) {
    let mut backlog = Backlog::new(&monitor);
    match replay(&gate, &reader, &hub, &link, identity, &mut backlog).await {
        Ok(count) => debug!(session = link.id, replayed = count, "caught up"),
        Err(e) => {
            warn!(session = link.id, error = %format!("{e:#}"), "catch-up failed");
            link.kill(Kill::CatchupFailed);
        }
    }
}

/// This session's part of the catch-up metrics, given back when it ends however it ends
/// (the catch-up task may be dropped mid-way when its session closes).
struct Backlog<'m> {
    monitor: &'m Monitor,
    /// The messages this session is known to have still to read.
    pending: u64,
}

impl<'m> Backlog<'m> {
    fn new(monitor: &'m Monitor) -> Self {
        monitor.metrics.catchup_sessions.increment(1.0);
        Backlog {
            monitor,
            pending: 0,
        }
    }

    /// The messages still to read are now `pending` (counted once per round of pages).
    fn set(&mut self, pending: u64) {
        let gauge = &self.monitor.metrics.catchup_backlog;
        gauge.increment(pending as f64 - self.pending as f64);
        self.pending = pending;
    }
}

impl Drop for Backlog<'_> {
    fn drop(&mut self) {
        self.set(0);
        self.monitor.metrics.catchup_sessions.decrement(1.0);
    }
}

async fn replay(
    gate: &Gate,
    reader: &Reader,
    hub: &Hub,
    link: &Link,
    me: Identity,
    backlog: &mut Backlog<'_>,
) -> anyhow::Result<usize> {
    let mut progress: HashMap<ConvId, Seq> = HashMap::new();
    let mut convs: HashMap<ConvId, ConvPosition> = HashMap::new();
    let mut replayed = 0;
    let mut first = true;
    // What a message of this replay weighs on average, as read so far.
    let mut weight = FIRST_GUESS;
    let mut place = Some(gate.enter().await?);
    // Messages replayed since this catch-up took its place.
    let mut turn = 0;
    loop {
        let before = replayed;
        for p in reader.positions(me.user, me.device).await? {
            // The stored position only seeds a conversation this replay has not seen yet;
            // later it may have moved for reasons that are not this device's (a new device
            // starts where the account's furthest device is, and that device keeps acking).
            // A conversation that appears while this device is online starts where the
            // membership does: the device was there for all of it.
            let start = if first { p.cursor } else { p.joined };
            progress.entry(p.conv).or_insert(start);
            convs.insert(p.conv, p);
        }
        first = false;
        loop {
            let behind: Vec<(ConvId, Seq)> = convs
                .values()
                .filter(|p| p.last_seq > progress[&p.conv])
                .map(|p| (p.conv, progress[&p.conv]))
                .collect();
            let pending = behind.iter().map(|(conv, at)| convs[conv].last_seq - at);
            backlog.set(pending.sum::<i64>().max(0) as u64);
            if behind.is_empty() {
                break;
            }
            let page = (ROUND_BYTES / weight.saturating_mul(behind.len()).max(1)).clamp(1, PAGE);
            let pages = reader.after(behind, page).await?;
            let (read, bytes) = pages.iter().flatten().fold((0, 0), |(n, bytes), m| {
                (n + 1, bytes + m.body.len() + MESSAGE_OVERHEAD)
            });
            if let Some(average) = bytes.checked_div(read) {
                weight = average.max(1);
            }
            // A full page may continue past its last id: nothing beyond the smallest such
            // id can be ordered yet, so it waits for the next round.
            let bound = pages
                .iter()
                .filter(|p| p.len() == page)
                .filter_map(|p| p.last().map(|m| m.id))
                .min()
                .unwrap_or(i64::MAX);
            let mut rows: Vec<_> = pages
                .into_iter()
                .flatten()
                .filter(|m| m.id <= bound)
                .collect();
            if rows.is_empty() {
                break;
            }
            backlog
                .monitor
                .metrics
                .replayed
                .increment(rows.len() as u64);
            rows.sort_unstable_by_key(|m| m.id);
            for m in rows {
                progress.insert(m.conv, m.seq);
                // Lost to damage in the message log (reported there), or deleted before
                // this device had it (its words are never sent again): nothing to send.
                if m.lost || m.kind == MessageKind::Deleted {
                    continue;
                }
                let position = &convs[&m.conv];
                let (a, b) = &position.members;
                let to_self = position.kind == ConversationKind::Direct && a == b;
                // A device does not get back what it sent itself (other devices do).
                if m.sender_device == me.device && !to_self {
                    continue;
                }
                let to = if *a == m.sender { b.clone() } else { a.clone() };
                let d = Delivery::new(
                    m.id,
                    m.conv,
                    m.seq,
                    position.kind,
                    m.sender,
                    to,
                    m.body,
                    m.sent_at,
                );
                // A deletion reaches the device in its place, like a message.
                let d = match m.kind {
                    MessageKind::Tombstone(id, seq) => d.deleting(id, seq),
                    _ => d,
                };
                // The replay waits while the queue has no room (it holds what a slow reader
                // has not taken yet), so it never holds more of it than the room's bytes;
                // it waits without its place among the catch-ups at once.
                // Room is looked at again after a wait for a place (which can be long in a
                // storm): a client that stopped reading meanwhile must not hold a place
                // while the push waits for it.
                loop {
                    if !link.has_room() {
                        place = None;
                        if !link.room_for(Waiter::Replay).await {
                            return Ok(replayed);
                        }
                    }
                    if turn >= TURN_MESSAGES && gate.contended() {
                        place = None;
                    }
                    if place.is_some() {
                        break;
                    }
                    place = Some(gate.enter().await?);
                    turn = 0;
                }
                turn += 1;
                if !link
                    .push_in_room(Item::Replay(Arc::new(d)), Waiter::Replay)
                    .await
                {
                    return Ok(replayed);
                }
                replayed += 1;
            }
        }
        match hub.go_live(link.id, me.user, progress.clone()).await {
            GoLive::Live | GoLive::Gone => return Ok(replayed),
            // Behind with nothing new read means the hub saw a write the read pool did
            // not yet: give it a moment rather than spin.
            GoLive::Behind if replayed == before => {
                place = None;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await
            }
            GoLive::Behind => {}
        }
    }
}
