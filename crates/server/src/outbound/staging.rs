//! What one hub batch queues for sessions, staged per session until the batch ends.
//!
//! Each push into a session's queue takes its lock and touches memory its writer (on
//! another core) touched last: pushed one by one, a room message cost that for every
//! member, and a batch with ten messages for a room ten times over. Gathered here during
//! the batch, every session gets its items in one push, in the order the batch made them.

use std::collections::HashMap;
use std::sync::Arc;

use super::delivery::{Delivery, RoomRun};
use super::link::Link;
use super::queue::Tally;
use super::Item;
use crate::store::{DeviceId, UserId};

/// Emptied lists kept for the next batch, and the most slots a kept one may have.
const SPARE_LISTS: usize = 1024;
const SPARE_SLOTS: usize = 64;

#[derive(Default)]
pub struct Staging {
    /// Where each session's items are in `staged`, by link id.
    slots: HashMap<u64, usize, ahash::RandomState>,
    staged: Vec<Staged>,
    /// Emptied item lists, kept for the next batch.
    spare: Vec<Vec<Item>>,
    /// Each room named so far: the sessions it reaches, as slots in `staged`, and its
    /// messages. Membership and presence do not change while a batch's effects are
    /// performed, so the first message to a room looks its sessions up and the room's
    /// other messages reuse the list.
    rooms: HashMap<Arc<str>, RoomBatch, ahash::RandomState>,
    /// The last two sessions given a slot (link id, slot): a run of direct messages
    /// alternates between its sender's answers and its recipient's deliveries, and finds
    /// both here without a lookup in `slots`.
    recent: [Option<(u64, usize)>; 2],
    /// The direct conversation named last (by its members), and the sessions it reaches
    /// (their live devices): a run of direct messages names the same one again and again.
    last_direct: Option<(UserId, UserId)>,
    direct_reach: Vec<Reach>,
}

/// A room's part of the batch being gathered.
struct RoomBatch {
    reach: Vec<Reach>,
    /// What the sessions are given: stretches of it (complete once the batch is flushed).
    run: Arc<RoomRun>,
    deliveries: Vec<Arc<Delivery>>,
}

/// A session a room's messages reach.
struct Reach {
    slot: usize,
    /// The member's device; `None` for an anonymous guest.
    device: Option<DeviceId>,
    link: u64,
}

struct Staged {
    link: Arc<Link>,
    items: Vec<Item>,
    /// What `items` add up to, counted as they are staged (each item weighed once).
    tally: Tally,
    /// In-flight permits to return once the replies are queued.
    permits: usize,
}

impl Staging {
    /// Queues `item` for `link` when the batch is flushed.
    pub fn push(&mut self, link: &Arc<Link>, item: Item) {
        let staged = self.staged(link);
        staged.tally.add(&item);
        staged.items.push(item);
    }

    /// Queues a reply to a request, returning its in-flight permit after it.
    pub fn reply(&mut self, link: &Arc<Link>, item: Item) {
        let staged = self.staged(link);
        staged.tally.add(&item);
        staged.items.push(item);
        staged.permits += 1;
    }

    /// Queues `delivery` for every session of `room` that `skip` does not reject (by
    /// device, `None` for a guest, and session id). `sessions` lists the room's sessions the
    /// first time the room is named in a batch. A session whose last item is the stretch of
    /// this room's messages just before this one has it lengthened instead of a new item.
    pub fn push_room<'a, I>(
        &mut self,
        room: &Arc<str>,
        sessions: impl FnOnce() -> I,
        skip: impl Fn(Option<DeviceId>, u64) -> bool,
        delivery: &Arc<Delivery>,
    ) where
        I: IntoIterator<Item = (&'a Arc<Link>, Option<DeviceId>)>,
    {
        if !self.rooms.contains_key(room) {
            let reach = sessions()
                .into_iter()
                .map(|(link, device)| Reach {
                    slot: self.slot(link),
                    device,
                    link: link.id,
                })
                .collect();
            let run = Arc::new(RoomRun::new(delivery.conv));
            let deliveries = Vec::new();
            let batch = RoomBatch {
                reach,
                run,
                deliveries,
            };
            self.rooms.insert(room.clone(), batch);
        }
        let batch = self.rooms.get_mut(room).expect("inserted above");
        let index = u32::try_from(batch.deliveries.len()).expect("a batch under 4 G messages");
        batch.deliveries.push(delivery.clone());
        // What a stretch weighs is what its messages do (`RoomRun::weight`).
        let weight = delivery.weight();
        for r in &batch.reach {
            if skip(r.device, r.link) {
                continue;
            }
            let staged = &mut self.staged[r.slot];
            staged.tally.pushes += 1;
            staged.tally.bytes += weight;
            let items = &mut staged.items;
            match items.last_mut() {
                Some(Item::Run(run, _, end)) if Arc::ptr_eq(run, &batch.run) && *end == index => {
                    *end += 1
                }
                _ => items.push(Item::Run(batch.run.clone(), index, index + 1)),
            }
        }
    }

    /// Queues `delivery` for every session of the direct conversation of `members` that
    /// `skip` does not reject (by device and session id). `sessions` lists them when the
    /// conversation is not the one named last.
    pub fn push_direct<'a, I>(
        &mut self,
        members: (UserId, UserId),
        sessions: impl FnOnce() -> I,
        skip: impl Fn(Option<DeviceId>, u64) -> bool,
        delivery: &Arc<Delivery>,
    ) where
        I: IntoIterator<Item = (&'a Arc<Link>, Option<DeviceId>)>,
    {
        if self.last_direct != Some(members) {
            self.direct_reach.clear();
            for (link, device) in sessions() {
                let slot = self.slot(link);
                self.direct_reach.push(Reach {
                    slot,
                    device,
                    link: link.id,
                });
            }
            self.last_direct = Some(members);
        }
        let weight = delivery.weight();
        for r in &self.direct_reach {
            if !skip(r.device, r.link) {
                let staged = &mut self.staged[r.slot];
                staged.tally.pushes += 1;
                staged.tally.bytes += weight;
                staged.items.push(Item::Deliver(delivery.clone()));
            }
        }
    }

    /// Queues everything gathered so far. Called at the end of a batch, and before
    /// anything that lets a session go on (a login's or a request's answer), so that what
    /// was queued before that answer still is.
    pub fn flush(&mut self) {
        self.slots.clear();
        // Complete before any session is given them.
        for (_, room) in self.rooms.drain() {
            room.run.complete(room.deliveries);
        }
        self.recent = Default::default();
        self.last_direct = None;
        for mut staged in self.staged.drain(..) {
            if !staged.items.is_empty() {
                staged.link.push_all(&mut staged.items, staged.tally);
            }
            staged.link.inflight.add_permits(staged.permits);
            if self.spare.len() < SPARE_LISTS && staged.items.capacity() <= SPARE_SLOTS {
                self.spare.push(staged.items);
            }
        }
    }

    fn staged(&mut self, link: &Arc<Link>) -> &mut Staged {
        let slot = self.slot(link);
        &mut self.staged[slot]
    }

    fn slot(&mut self, link: &Arc<Link>) -> usize {
        if let Some((_, slot)) = self.recent.iter().flatten().find(|r| r.0 == link.id) {
            return *slot;
        }
        let slot = *self.slots.entry(link.id).or_insert_with(|| {
            self.staged.push(Staged {
                link: link.clone(),
                items: self.spare.pop().unwrap_or_default(),
                tally: Tally::default(),
                permits: 0,
            });
            self.staged.len() - 1
        });
        self.recent = [Some((link.id, slot)), self.recent[0]];
        slot
    }
}
