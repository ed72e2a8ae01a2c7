//! What seed-003 sessions share: device tokens, the names behind user ids, and the MD5s
//! of files they uploaded.
//!
//! A token bound to a user is also stored, hashed, as a device token of the store (see
//! `stored_hash`), so it survives a restart: a token not known here is looked up there
//! and taken back in. What a token fetched (its marks) lives here only: after a restart
//! its first `FETCHMSG` starts from the beginning again (the client keeps one copy of
//! each message). Each table is bounded in entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{ConvId, DeviceId, Seq, UserId};

/// Most tokens kept; past it, the ones with no connection go, unbound ones first.
const MAX_TOKENS: usize = 100_000;
/// Most file MD5s remembered.
const MAX_FILES: usize = 100_000;
/// Most names remembered by id.
const MAX_NAMES: usize = 1_000_000;
/// An unknown id rescans the users at most this often.
const RESCAN: Duration = Duration::from_secs(1);
/// Connections of one token at once (each is a device of its own in the hub).
pub const MAX_SLOTS: u32 = 16;

#[derive(Default)]
pub struct State {
    tokens: Mutex<HashMap<i64, Token>>,
    names: Mutex<Names>,
    files: Mutex<HashMap<String, String>>,
    /// The SHA-256 of the file each file message carries, by the message's `md5encoded`
    /// (what `FETCHFILE` names), for the messages sent or fetched here.
    message_files: Mutex<HashMap<String, String>>,
    /// Bytes of file payloads being received, over every connection (see
    /// [`State::reserve_upload`]).
    uploads: AtomicU64,
}

#[derive(Default)]
struct Names {
    by_id: HashMap<i64, Arc<str>>,
    scanned: Option<Instant>,
}

/// A token: whom it is logged in as, how far it fetched, which connections use it.
#[derive(Default)]
struct Token {
    user: Option<(UserId, Arc<str>)>,
    /// How far the client has what `FETCHMSG` returns, in the server's order: per
    /// conversation, the last sequence it acknowledged (or sent itself). Client clocks
    /// never move it: see [`State::ack`].
    marks: HashMap<ConvId, Seq>,
    /// The hub devices this token's connections logged in as (what it sent itself).
    devices: Vec<DeviceId>,
    /// The device the store keeps this token under (its tokens are revoked on `LOGOUT`).
    stored: Option<DeviceId>,
    /// Bit `i`: slot `i` (device `simpletcp-<token>-<i>`) has a connection.
    slots: u32,
}

/// A message a `FETCHMSG` reply held: where it is stored, and the `timestamp` the client
/// saw (what its `ACKFETCH` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offered {
    pub conv: ConvId,
    pub seq: Seq,
    pub timestamp: i64,
}

/// The last `FETCHMSG` reply a connection wrote, until its `ACKFETCH`. Kept per
/// connection, not per token: an acknowledgement covers only what was written on the
/// connection it comes on, never a reply another connection of the token was writing
/// when it closed.
#[derive(Debug, Clone)]
pub struct Reply {
    pub token: i64,
    /// Whom the token was logged in as: an acknowledgement after a login as someone else
    /// moves nothing.
    pub user: UserId,
    pub offered: Vec<Offered>,
    /// The reply left messages out (they come after its acknowledgement).
    pub more: bool,
}

/// Where a token's `FETCHMSG` starts.
#[derive(Debug, Clone, Default)]
pub struct Marks {
    pub marks: HashMap<ConvId, Seq>,
    pub devices: Vec<DeviceId>,
}

impl Token {
    /// Forgets what the token fetched: it now stands for another user, or none.
    fn reset(&mut self) {
        self.marks.clear();
        self.devices.clear();
        self.stored = None;
    }
}

impl State {
    /// Takes `bytes` of the server's budget for payloads being received (`limit` bytes in
    /// all), or says there is not that much left. Each reservation is given back with
    /// [`State::release_upload`] once its frame is handled or its connection ends.
    pub fn reserve_upload(&self, bytes: u64, limit: u64) -> bool {
        self.uploads
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    pub fn release_upload(&self, bytes: u64) {
        self.uploads.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes of payloads being received now.
    pub fn uploads(&self) -> u64 {
        self.uploads.load(Ordering::Acquire)
    }

    /// A new, unbound token: random, unguessable, below 2^53 (exact in a JSON number).
    pub fn issue(&self) -> i64 {
        let mut tokens = self.tokens.lock().expect("tokens poisoned");
        if tokens.len() >= MAX_TOKENS {
            evict(&mut tokens);
        }
        loop {
            let mut bytes = [0u8; 8];
            getrandom::getrandom(&mut bytes).expect("the OS random source");
            let id = (u64::from_le_bytes(bytes) & ((1 << 53) - 1)) as i64;
            if id != 0 && !tokens.contains_key(&id) {
                tokens.insert(id, Token::default());
                return id;
            }
        }
    }

    pub fn exists(&self, token: i64) -> bool {
        self.tokens
            .lock()
            .expect("tokens poisoned")
            .contains_key(&token)
    }

    /// Whom `token` is logged in as.
    pub fn user(&self, token: i64) -> Option<(UserId, Arc<str>)> {
        let tokens = self.tokens.lock().expect("tokens poisoned");
        tokens.get(&token).and_then(|t| t.user.clone())
    }

    pub fn bind(&self, token: i64, user: UserId, name: Arc<str>) {
        let mut tokens = self.tokens.lock().expect("tokens poisoned");
        let token = tokens.entry(token).or_default();
        if token.user.as_ref().map(|(u, _)| *u) != Some(user) {
            token.reset();
        }
        token.user = Some((user, name));
    }

    /// Unbinds `token`; returns the device the store kept it under, if any.
    pub fn unbind(&self, token: i64) -> Option<DeviceId> {
        let mut tokens = self.tokens.lock().expect("tokens poisoned");
        let t = tokens.get_mut(&token)?;
        let stored = t.stored;
        t.user = None;
        t.reset();
        stored
    }

    /// Unbinds every token of `user` but `keep` (its password changed: the store revoked
    /// the other devices' tokens).
    pub fn unbind_others(&self, user: UserId, keep: i64) {
        let mut tokens = self.tokens.lock().expect("tokens poisoned");
        for (id, t) in tokens.iter_mut() {
            if *id != keep && t.user.as_ref().is_some_and(|(u, _)| *u == user) {
                t.user = None;
                t.reset();
            }
        }
    }

    /// Notes that the store keeps `token` under `device`.
    pub fn stored(&self, token: i64, device: DeviceId) {
        if let Some(t) = self.tokens.lock().expect("tokens poisoned").get_mut(&token) {
            t.stored = Some(device);
        }
    }

    /// Takes back a token the store kept (after a restart, or once evicted here), bound to
    /// `user`.
    pub fn restore(&self, token: i64, user: UserId, name: Arc<str>, device: DeviceId) {
        let mut tokens = self.tokens.lock().expect("tokens poisoned");
        if tokens.len() >= MAX_TOKENS {
            evict(&mut tokens);
        }
        let t = tokens.entry(token).or_default();
        if t.user.as_ref().map(|(u, _)| *u) != Some(user) {
            t.reset();
        }
        t.user = Some((user, name));
        t.stored = Some(device);
    }

    /// Remembers that a connection of `token` logged in to the hub as `device`, so what it
    /// sends counts as the token's own.
    pub fn add_device(&self, token: i64, device: DeviceId) {
        if let Some(t) = self.tokens.lock().expect("tokens poisoned").get_mut(&token) {
            if !t.devices.contains(&device) {
                if t.devices.len() >= MAX_SLOTS as usize {
                    t.devices.remove(0);
                }
                t.devices.push(device);
            }
        }
    }

    /// Where `token`'s next `FETCHMSG` starts.
    pub fn marks(&self, token: i64) -> Marks {
        let tokens = self.tokens.lock().expect("tokens poisoned");
        tokens.get(&token).map_or_else(Marks::default, |t| Marks {
            marks: t.marks.clone(),
            devices: t.devices.clone(),
        })
    }

    /// Moves `token`'s mark in `conv` to `seq`, never back.
    pub fn advance(&self, token: i64, conv: ConvId, seq: Seq) {
        if let Some(t) = self.tokens.lock().expect("tokens poisoned").get_mut(&token) {
            let mark = t.marks.entry(conv).or_default();
            *mark = (*mark).max(seq);
        }
    }

    /// `ACKFETCH`: the client has `reply`'s messages up to `timestamp` (its newest
    /// message's, as the client sends it). In each conversation the mark moves over the
    /// reply's messages in the server's order while their timestamps are at most that,
    /// and stops at the first that is later: a message the client may not have is never
    /// passed, whatever the senders' clocks said. Nothing else moves it (but the token's
    /// own messages: `advance`), so a message stored after the reply comes with the next.
    ///
    /// True if the reply left messages out and this moved a mark: the next part is due.
    pub fn ack(&self, reply: Reply, timestamp: i64) -> bool {
        let mut tokens = self.tokens.lock().expect("tokens poisoned");
        let Some(t) = tokens.get_mut(&reply.token) else {
            return false;
        };
        if t.user.as_ref().map(|(user, _)| *user) != Some(reply.user) {
            return false;
        }
        let mut moved = false;
        let Reply {
            mut offered, more, ..
        } = reply;
        offered.sort_unstable_by_key(|o| (o.conv, o.seq));
        let mut stopped: Option<ConvId> = None;
        for o in offered {
            if stopped == Some(o.conv) {
                continue;
            }
            if o.timestamp > timestamp {
                stopped = Some(o.conv);
                continue;
            }
            let mark = t.marks.entry(o.conv).or_default();
            moved |= o.seq > *mark;
            *mark = (*mark).max(o.seq);
        }
        more && moved
    }

    /// A free connection slot of `token`, taken.
    pub fn take_slot(&self, token: i64) -> Option<u32> {
        let mut tokens = self.tokens.lock().expect("tokens poisoned");
        let t = tokens.get_mut(&token)?;
        let slot = (0..MAX_SLOTS).find(|i| t.slots & (1 << i) == 0)?;
        t.slots |= 1 << slot;
        Some(slot)
    }

    pub fn free_slot(&self, token: i64, slot: u32) {
        if let Some(t) = self.tokens.lock().expect("tokens poisoned").get_mut(&token) {
            t.slots &= !(1 << slot);
        }
    }

    /// Remembers the name behind an id.
    pub fn learn(&self, id: i64, name: Arc<str>) {
        let mut names = self.names.lock().expect("names poisoned");
        if names.by_id.len() >= MAX_NAMES {
            names.by_id.clear();
        }
        names.by_id.insert(id, name);
    }

    /// The name behind `id`, if known.
    pub fn name(&self, id: i64) -> Option<Arc<str>> {
        self.names
            .lock()
            .expect("names poisoned")
            .by_id
            .get(&id)
            .cloned()
    }

    /// Whether the users may be scanned for an unknown id now (at most once per
    /// `RESCAN`, so unknown ids cannot make the server read every user again and again).
    pub fn may_scan(&self) -> bool {
        let mut names = self.names.lock().expect("names poisoned");
        let now = Instant::now();
        if names
            .scanned
            .is_some_and(|at| now.duration_since(at) < RESCAN)
        {
            return false;
        }
        names.scanned = Some(now);
        true
    }

    /// Remembers that the file with MD5 `md5` is stored as `sha256`.
    pub fn remember_file(&self, md5: &str, sha256: &str) {
        let mut files = self.files.lock().expect("files poisoned");
        if files.len() >= MAX_FILES {
            files.clear();
        }
        files.insert(md5.to_string(), sha256.to_string());
    }

    /// Remembers that the message `md5encoded` carries the file `sha256`.
    pub fn remember_message_file(&self, md5encoded: &str, sha256: &str) {
        let mut files = self.message_files.lock().expect("files poisoned");
        if files.len() >= MAX_FILES {
            files.clear();
        }
        files.insert(md5encoded.to_string(), sha256.to_string());
    }

    /// The file the message `md5encoded` carries, if it is indexed.
    pub fn message_file(&self, md5encoded: &str) -> Option<String> {
        let files = self.message_files.lock().expect("files poisoned");
        files.get(md5encoded).cloned()
    }

    pub fn file(&self, md5: &str) -> Option<String> {
        self.files.lock().expect("files poisoned").get(md5).cloned()
    }
}

/// What the store keeps for seed-003 token `token`: the SHA-256 of a text no other
/// protocol's token can be (theirs are 64 hex digits).
pub fn stored_hash(token: i64) -> Vec<u8> {
    crate::auth::token_hash(&format!("simpletcp:{token}"))
}

/// Makes room for a token: drops tokens no connection uses, unbound ones first.
fn evict(tokens: &mut HashMap<i64, Token>) {
    let excess = tokens.len() + 1 - MAX_TOKENS;
    let mut idle: Vec<(bool, i64)> = tokens
        .iter()
        .filter(|(_, t)| t.slots == 0)
        .map(|(id, t)| (t.user.is_some(), *id))
        .collect();
    idle.sort_unstable();
    for (_, id) in idle.into_iter().take(excess.max(MAX_TOKENS / 10)) {
        tokens.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_share_one_budget_in_bytes() {
        let state = State::default();
        assert!(state.reserve_upload(600, 1000));
        assert!(!state.reserve_upload(401, 1000), "past the budget");
        assert!(state.reserve_upload(400, 1000));
        assert!(!state.reserve_upload(u64::MAX, 1000), "no overflow");
        state.release_upload(600);
        assert_eq!(state.uploads(), 400);
        assert!(state.reserve_upload(600, 1000));
    }

    #[test]
    fn tokens_are_random_below_2_53_and_bind_and_unbind() {
        let state = State::default();
        let (a, b) = (state.issue(), state.issue());
        assert_ne!(a, b);
        assert!(a > 0 && a < 1 << 53 && b > 0 && b < 1 << 53);
        assert!(state.user(a).is_none());
        state.bind(a, 7, Arc::from("alice"));
        state.advance(a, 3, 99);
        assert_eq!(state.user(a).map(|(u, _)| u), Some(7));
        assert_eq!(state.marks(a).marks.get(&3), Some(&99));
        state.unbind(a);
        assert!(state.user(a).is_none());
        assert!(state.marks(a).marks.is_empty());
        assert!(!state.exists(12345) || a == 12345 || b == 12345);
    }

    #[test]
    fn an_ack_passes_what_the_reply_held_in_server_order_up_to_a_later_timestamp() {
        let state = State::default();
        let t = state.issue();
        state.bind(t, 7, Arc::from("alice"));
        let at = |conv, seq, timestamp| Offered {
            conv,
            seq,
            timestamp,
        };
        // Conversation 1: seq 2 has a clock far ahead, seq 3 one behind.
        let offered = vec![at(1, 1, 100), at(1, 2, 900), at(1, 3, 50), at(2, 5, 100)];
        let reply = |user, more| Reply {
            token: t,
            user,
            offered: offered.clone(),
            more,
        };
        assert!(state.ack(reply(7, true), 100), "the rest is due");
        let marks = state.marks(t).marks;
        assert_eq!((marks.get(&1), marks.get(&2)), (Some(&1), Some(&5)));
        // A reply that left nothing out asks for nothing more; marks never go back.
        assert!(!state.ack(reply(7, false), i64::MAX));
        state.advance(t, 2, 4);
        assert_eq!(state.marks(t).marks.get(&2), Some(&5));
    }

    #[test]
    fn an_ack_of_a_reply_to_someone_else_moves_nothing() {
        let state = State::default();
        let t = state.issue();
        state.bind(t, 7, Arc::from("alice"));
        let offered = vec![Offered {
            conv: 1,
            seq: 3,
            timestamp: 10,
        }];
        // The reply went to alice; the token is bob's by the time its ack comes.
        state.unbind(t);
        state.bind(t, 8, Arc::from("bob"));
        let reply = Reply {
            token: t,
            user: 7,
            offered,
            more: true,
        };
        assert!(!state.ack(reply, i64::MAX));
        assert!(state.marks(t).marks.is_empty());
    }

    #[test]
    fn slots_are_handed_out_once_until_freed() {
        let state = State::default();
        let t = state.issue();
        let (s0, s1) = (state.take_slot(t), state.take_slot(t));
        assert_eq!((s0, s1), (Some(0), Some(1)));
        state.free_slot(t, 0);
        assert_eq!(state.take_slot(t), Some(0));
        for _ in 2..MAX_SLOTS {
            assert!(state.take_slot(t).is_some());
        }
        assert_eq!(state.take_slot(t), None);
    }
}
