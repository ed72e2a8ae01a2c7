//! Failed logins, and what they cost the next attempt: one policy for every protocol.
//!
//! Guessing is slowed where it happens, without letting one person's failures lock anyone
//! else out (behind a shared NAT, one address is many people):
//!
//! - **Per account and address.** After `login_failures_free` failures of one name from one
//!   address, that name is refused from that address, without checking the password, until
//!   `login_backoff_base_ms × 2^(failures − free)` (at most `login_backoff_max_ms`) has
//!   passed since the last failure. An attempt counts as failed from its start until it
//!   succeeds, so parallel connections gain nothing. A success clears the pair.
//! - **Per address**, over every name and token: failures leak away at one a minute. Past
//!   `login_address_failures_free`, the address's attempts take turns
//!   `login_address_spacing_ms` apart (a connection waits for its turn before its password
//!   is checked), and an attempt whose turn is more than [`TURNS_AHEAD`] turns away is
//!   refused. A password sprayer so gets one Argon2 run per turn, and the other people
//!   behind its address are delayed, not refused, unless that address has many attempts
//!   waiting at once.
//! - **Tokens** are never refused because of failures: a valid token is answered at once. A
//!   wrong one counts as a failure of its address, and past the free failures its answer
//!   waits for a turn.
//! - An address is an IPv4 address or an IPv6 /64 (one host usually holds a whole /64).
//! - **In a cluster** every node counts every node's attempts: each password attempt's
//!   start and success, and each wrong token, go to the other nodes (over NATS, cluster/),
//!   which count them as their own (`remote`). Attempts made on two nodes at the same
//!   moment may both be checked (the count reaches the other node a moment later): a
//!   guesser gains at most one attempt per node at each step of its back-off.
//! - **Memory** is bounded in bytes (`login_throttle_bytes`, half for each table). A full
//!   table drops what has expired, then the eighth with the fewest failures (the oldest
//!   first): spraying new names or addresses evicts other sprayed entries, not the long
//!   back-offs that took an attacker many failures to earn.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::config::Config;

/// How far ahead an address's turns may be booked (in turns) before its attempts are
/// refused.
pub const TURNS_AHEAD: u32 = 10;

/// One failure of an address is forgotten per this much time.
const LEAK: Duration = Duration::from_secs(60);

/// A pair's failures are forgotten this long after its last one (or after the longest
/// back-off, if that is longer).
const FORGET: Duration = Duration::from_secs(3600);

/// How often expired entries are swept out even when the tables are not full.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Why an attempt was refused without being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This name from this address is backing off.
    Account,
    /// This address has too many attempts waiting for their turns.
    Address,
}

/// Where attempts come from: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6(u64),
}

impl Source {
    fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.into()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.into()),
                None => Source::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// A name (by its keyed 64-bit hash: fixed-size entries) tried from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PairKey {
    name: u64,
    source: Source,
}

#[derive(Debug, Clone, Copy)]
struct Pair {
    failures: u32,
    last: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Address {
    /// Failures not yet leaked away.
    failures: u32,
    /// When the next failure leaks away (if any is left).
    leaks_at: Instant,
    /// The next free turn.
    next_turn: Instant,
}

impl Address {
    /// Takes off the failures that have leaked away by `now`.
    fn leak(&mut self, now: Instant) {
        if self.failures == 0 || now < self.leaks_at {
            return;
        }
        let periods = (now - self.leaks_at).as_secs() / LEAK.as_secs() + 1;
        let gone = u32::try_from(periods)
            .unwrap_or(u32::MAX)
            .min(self.failures);
        self.failures -= gone;
        self.leaks_at += LEAK * gone;
    }

    /// Counts one failure.
    fn fail(&mut self, now: Instant) {
        if self.failures == 0 {
            self.leaks_at = now + LEAK;
        }
        self.failures = self.failures.saturating_add(1);
    }

    /// Nothing left to remember at `now`.
    fn expired(&self, now: Instant) -> bool {
        let mut left = *self;
        left.leak(now);
        left.failures == 0 && self.next_turn <= now
    }
}

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

struct Tables {
    pairs: Map<PairKey, Pair>,
    addresses: Map<Source, Address>,
    next_sweep: Instant,
}

/// The login throttle shared by every session.
pub struct Throttle {
    free: u32,
    base: Duration,
    max: Duration,
    address_free: u32,
    spacing: Duration,
    max_pairs: usize,
    max_addresses: usize,
    /// Keys the names' hashes: randomly, so names cannot be chosen to collide.
    names: ahash::RandomState,
    tables: Mutex<Tables>,
    /// In a cluster: tells the other nodes of an attempt (name, address, what became of it).
    announce: OnceLock<Announce>,
}

/// What became of a password attempt, as one node tells the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Begun: a failure until it succeeds.
    Begun,
    Succeeded,
    /// The password could not be checked (the store failed): it counts for nothing.
    Unchecked,
    /// A wrong device token (no name): a failure of its address, as `token_failed` counts.
    TokenFailed,
}

/// How a cluster node tells the others of a login attempt: `(name, address, what became of
/// it)`, never waiting. A wrong token has no name (`""`).
pub type Announce = Box<dyn Fn(&str, IpAddr, Attempt) + Send + Sync>;

/// The most entries of `(K, V)` a table may hold within `bytes`. A hashbrown table has a
/// power-of-two number of buckets, each holding one entry and one control byte, at most 7/8
/// full. Holding at most N entries, it can still grow while removals leave tombstones, but
/// only until 7/8 of its buckets reach 2(N + 1) (past that it rehashes in place): so under
/// 32/7 × (N + 1) buckets, and an entry's share is at most 32/7 × (its size + 1) bytes.
fn entries_within<K, V>(bytes: usize) -> usize {
    let per_entry = (std::mem::size_of::<(K, V)>() + 1) * 32 / 7 + 1;
    (bytes / per_entry).saturating_sub(1).max(8)
}

impl Throttle {
    pub fn new(config: &Config) -> Self {
        let half = config.login_throttle_bytes / 2;
        Throttle {
            free: config.login_failures_free,
            base: Duration::from_millis(config.login_backoff_base_ms),
            max: Duration::from_millis(config.login_backoff_max_ms),
            address_free: config.login_address_failures_free,
            spacing: Duration::from_millis(config.login_address_spacing_ms),
            max_pairs: entries_within::<PairKey, Pair>(half),
            max_addresses: entries_within::<Source, Address>(half),
            names: ahash::RandomState::new(),
            tables: Mutex::new(Tables {
                pairs: Map::default(),
                addresses: Map::default(),
                next_sweep: Instant::now() + SWEEP_EVERY,
            }),
            announce: OnceLock::new(),
        }
    }

    /// In a cluster: from now on every attempt here is announced with `announce`.
    pub fn announce_to(&self, announce: Announce) {
        let _ = self.announce.set(announce);
    }

    fn announce(&self, name: &str, ip: IpAddr, attempt: Attempt) {
        if let Some(announce) = self.announce.get() {
            announce(name, ip, attempt);
        }
    }

    fn key(&self, name: &str, ip: IpAddr) -> PairKey {
        PairKey {
            name: self.names.hash_one(name),
            source: Source::of(ip),
        }
    }

    /// The back-off after `failures` failures of a pair.
    fn backoff(&self, failures: u32) -> Duration {
        if failures < self.free {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// Starts a password attempt at `name` from `ip`. On success it returns how long the
    /// attempt must wait for its address's turn before the password is checked; the
    /// attempt counts as a failure from now on (checked and counted under one lock, so
    /// parallel attempts cannot all pass) until `succeeded` takes it back.
    pub fn begin(&self, name: &str, ip: IpAddr) -> Result<Duration, Refusal> {
        let key = self.key(name, ip);
        let now = Instant::now();
        let mut tables = self.tables.lock().expect("throttle poisoned");
        self.sweep_if_due(&mut tables, now);
        if let Some(pair) = tables.pairs.get(&key) {
            if now < pair.last + self.backoff(pair.failures) {
                return Err(Refusal::Account);
            }
        }
        let wait = self.take_turn(&mut tables, key.source, now, true)?;
        self.count_failure(&mut tables, key, now);
        drop(tables);
        self.announce(name, ip, Attempt::Begun);
        Ok(wait)
    }

    /// A password attempt another node of the cluster made, counted as if it were made
    /// here.
    pub fn remote(&self, name: &str, ip: IpAddr, attempt: Attempt) {
        match attempt {
            Attempt::Begun => {}
            Attempt::Succeeded => return self.clear(name, ip),
            Attempt::Unchecked => return self.take_back(name, ip),
            Attempt::TokenFailed => {
                self.count_token_failure(ip);
                return;
            }
        }
        let key = self.key(name, ip);
        let now = Instant::now();
        let mut tables = self.tables.lock().expect("throttle poisoned");
        self.sweep_if_due(&mut tables, now);
        let _ = self.take_turn(&mut tables, key.source, now, false);
        self.count_failure(&mut tables, key, now);
    }

    /// One more failure of the pair `key` (an attempt counts as one until it succeeds).
    fn count_failure(&self, tables: &mut Tables, key: PairKey, now: Instant) {
        if !tables.pairs.contains_key(&key) && tables.pairs.len() >= self.max_pairs {
            evict(&mut tables.pairs, self.max_pairs, |p| {
                (!self.pair_expired(p, now)).then_some((p.failures, p.last))
            });
        }
        let pair = tables.pairs.entry(key).or_insert(Pair {
            failures: 0,
            last: now,
        });
        pair.failures = pair.failures.saturating_add(1);
        pair.last = now;
    }

    /// The attempt begun for `name` from `ip` succeeded: the pair is cleared and its
    /// address takes the failure back.
    pub fn succeeded(&self, name: &str, ip: IpAddr) {
        self.clear(name, ip);
        self.announce(name, ip, Attempt::Succeeded);
    }

    /// The attempt begun for `name` from `ip` could not check the password (the store
    /// failed, as while PostgreSQL restarts): the failure it counted is taken back, so an
    /// outage does not lock anyone out. Earlier failures stay.
    pub fn unchecked(&self, name: &str, ip: IpAddr) {
        self.take_back(name, ip);
        self.announce(name, ip, Attempt::Unchecked);
    }

    fn take_back(&self, name: &str, ip: IpAddr) {
        let key = self.key(name, ip);
        let mut tables = self.tables.lock().expect("throttle poisoned");
        if let Some(pair) = tables.pairs.get_mut(&key) {
            pair.failures = pair.failures.saturating_sub(1);
            if pair.failures == 0 {
                tables.pairs.remove(&key);
            }
        }
        if let Some(address) = tables.addresses.get_mut(&key.source) {
            address.failures = address.failures.saturating_sub(1);
        }
    }

    fn clear(&self, name: &str, ip: IpAddr) {
        let key = self.key(name, ip);
        let mut tables = self.tables.lock().expect("throttle poisoned");
        tables.pairs.remove(&key);
        if let Some(address) = tables.addresses.get_mut(&key.source) {
            address.failures = address.failures.saturating_sub(1);
        }
    }

    /// A wrong token from `ip`: counted against the address; returns how long its answer
    /// waits (zero while the address is within its free failures).
    pub fn token_failed(&self, ip: IpAddr) -> Duration {
        let wait = self.count_token_failure(ip);
        self.announce("", ip, Attempt::TokenFailed);
        wait
    }

    /// Counts a wrong token from `ip` (made here or on another node) against its address:
    /// it books a turn, never a refusal.
    fn count_token_failure(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let mut tables = self.tables.lock().expect("throttle poisoned");
        self.sweep_if_due(&mut tables, now);
        self.take_turn(&mut tables, Source::of(ip), now, false)
            .unwrap_or(self.spacing * TURNS_AHEAD)
    }

    /// Counts a failure of `source` and, past its free failures, books its next turn:
    /// returns the wait until that turn, or (if `refuse`) a refusal when the turn is too far
    /// ahead (nothing is counted or booked then).
    fn take_turn(
        &self,
        tables: &mut Tables,
        source: Source,
        now: Instant,
        refuse: bool,
    ) -> Result<Duration, Refusal> {
        if !tables.addresses.contains_key(&source) && tables.addresses.len() >= self.max_addresses {
            evict(&mut tables.addresses, self.max_addresses, |a| {
                (!a.expired(now)).then_some((a.failures, a.leaks_at))
            });
        }
        let address = tables.addresses.entry(source).or_insert(Address {
            failures: 0,
            leaks_at: now,
            next_turn: now,
        });
        address.leak(now);
        let mut wait = Duration::ZERO;
        if address.failures >= self.address_free {
            let turn = address.next_turn.max(now);
            wait = turn - now;
            if wait > self.spacing * TURNS_AHEAD {
                if refuse {
                    return Err(Refusal::Address);
                }
                wait = self.spacing * TURNS_AHEAD;
            } else {
                address.next_turn = turn + self.spacing;
            }
        }
        address.fail(now);
        Ok(wait)
    }

    fn pair_expired(&self, pair: &Pair, now: Instant) -> bool {
        now.duration_since(pair.last) >= FORGET.max(self.max)
    }

    /// Drops expired entries once a `SWEEP_EVERY`.
    fn sweep_if_due(&self, tables: &mut Tables, now: Instant) {
        if now < tables.next_sweep {
            return;
        }
        tables.next_sweep = now + SWEEP_EVERY;
        tables.pairs.retain(|_, p| !self.pair_expired(p, now));
        tables.addresses.retain(|_, a| !a.expired(now));
    }

    /// How long `name` from `ip` would be refused for now (zero: not).
    #[cfg(test)]
    fn backing_off(&self, name: &str, ip: IpAddr) -> Duration {
        let key = self.key(name, ip);
        let tables = self.tables.lock().unwrap();
        tables.pairs.get(&key).map_or(Duration::ZERO, |p| {
            (p.last + self.backoff(p.failures)).saturating_duration_since(Instant::now())
        })
    }
}

/// Makes room in a full table: drops every entry `rank` calls expired (`None`); if that
/// freed less than an eighth, drops the eighth with the lowest ranks (fewest failures,
/// oldest first). One pass per eighth of the table's inserts: constant time per insert,
/// and the table never grows past `max` (so never past its byte budget).
fn evict<K, V>(map: &mut Map<K, V>, max: usize, rank: impl Fn(&V) -> Option<(u32, Instant)>)
where
    K: std::hash::Hash + Eq,
{
    map.retain(|_, v| rank(v).is_some());
    let target = max - max / 8;
    if map.len() <= target {
        return;
    }
    let mut ranks: Vec<(u32, Instant)> = map.values().filter_map(&rank).collect();
    let cut = map.len() - target;
    let (_, cutoff, _) = ranks.select_nth_unstable(cut - 1);
    let cutoff = *cutoff;
    map.retain(|_, v| rank(v).is_some_and(|r| r > cutoff));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(tweak: impl FnOnce(&mut Config)) -> Throttle {
        let mut config = Config {
            login_failures_free: 2,
            login_backoff_base_ms: 1000,
            login_backoff_max_ms: 60_000,
            login_address_failures_free: 5,
            login_address_spacing_ms: 1000,
            ..Config::default()
        };
        tweak(&mut config);
        Throttle::new(&config)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_few_failures_are_free_then_the_pair_backs_off() {
        let t = throttle(|_| {});
        let home = ip("10.0.0.1");
        assert_eq!(t.begin("bob", home), Ok(Duration::ZERO));
        assert_eq!(
            t.begin("bob", home),
            Ok(Duration::ZERO),
            "two free failures"
        );
        assert_eq!(t.begin("bob", home), Err(Refusal::Account));
        let wait = t.backing_off("bob", home);
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
    }

    #[test]
    fn a_pairs_back_off_concerns_only_that_name_from_that_address() {
        let t = throttle(|_| {});
        let nat = ip("10.0.0.1");
        t.begin("bob", nat).unwrap();
        t.begin("bob", nat).unwrap();
        assert_eq!(t.begin("bob", nat), Err(Refusal::Account));
        assert_eq!(t.begin("alice", nat), Ok(Duration::ZERO), "another name");
        assert_eq!(
            t.begin("bob", ip("10.0.0.2")),
            Ok(Duration::ZERO),
            "elsewhere"
        );
    }

    #[test]
    fn an_attempt_the_store_could_not_check_counts_for_nothing() {
        let t = throttle(|_| {});
        let home = ip("10.0.0.1");
        // An outage: many attempts, none of which could check the password.
        for _ in 0..10 {
            assert_eq!(t.begin("bob", home), Ok(Duration::ZERO));
            t.unchecked("bob", home);
        }
        // Still two free failures (the address's too), then the back-off.
        t.begin("bob", home).unwrap();
        assert_eq!(t.begin("bob", home), Ok(Duration::ZERO));
        assert_eq!(t.begin("bob", home), Err(Refusal::Account));
        // A node that heard of them counts them the same.
        let other = throttle(|_| {});
        for _ in 0..10 {
            other.remote("bob", home, Attempt::Begun);
            other.remote("bob", home, Attempt::Unchecked);
        }
        assert_eq!(other.begin("bob", home), Ok(Duration::ZERO));
    }

    #[test]
    fn the_back_off_doubles_up_to_the_cap() {
        let t = throttle(|_| {});
        assert_eq!(t.backoff(1), Duration::ZERO);
        assert_eq!(t.backoff(2), Duration::from_secs(1));
        assert_eq!(t.backoff(4), Duration::from_secs(4));
        assert_eq!(t.backoff(40), Duration::from_secs(60));
    }

    #[test]
    fn a_success_clears_the_pair_and_takes_the_failure_back_from_the_address() {
        let t = throttle(|_| {});
        let home = ip("10.0.0.1");
        t.begin("bob", home).unwrap();
        t.begin("bob", home).unwrap();
        t.succeeded("bob", home);
        assert_eq!(t.backing_off("bob", home), Duration::ZERO);
        let tables = t.tables.lock().unwrap();
        assert_eq!(tables.addresses[&Source::of(home)].failures, 1);
    }

    #[test]
    fn past_its_free_failures_an_address_takes_turns_then_is_refused() {
        let t = throttle(|_| {});
        let nat = ip("10.0.0.1");
        for i in 0..5 {
            assert_eq!(t.begin(&format!("name{i}"), nat), Ok(Duration::ZERO));
        }
        let waits: Vec<_> = (5..16).map(|i| t.begin(&format!("name{i}"), nat)).collect();
        assert_eq!(waits[0], Ok(Duration::ZERO), "the first turn is now");
        for (n, wait) in waits[1..].iter().enumerate() {
            let wait = wait.expect("ten turns ahead are booked");
            let turns = (n + 1) as u64;
            assert!(
                wait > Duration::from_millis(turns * 1000 - 100)
                    && wait <= Duration::from_secs(turns)
            );
        }
        assert_eq!(t.begin("name16", nat), Err(Refusal::Address));
        assert_eq!(
            t.begin("name0", ip("10.0.0.2")),
            Ok(Duration::ZERO),
            "elsewhere"
        );
    }

    #[test]
    fn wrong_tokens_wait_for_turns_but_are_never_refused() {
        let t = throttle(|_| {});
        let nat = ip("10.0.0.1");
        for _ in 0..5 {
            assert_eq!(t.token_failed(nat), Duration::ZERO);
        }
        let waits: Vec<_> = (0..20).map(|_| t.token_failed(nat)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(10)));
        assert_eq!(waits[19], Duration::from_secs(10), "capped at ten turns");
    }

    #[test]
    fn another_nodes_wrong_tokens_count_against_the_address_here() {
        let t = throttle(|_| {});
        let nat = ip("10.0.0.1");
        for _ in 0..6 {
            t.remote("", nat, Attempt::TokenFailed);
        }
        let wait = t.token_failed(nat);
        assert!(
            wait > Duration::from_millis(900),
            "waits for a turn: {wait:?}"
        );
        assert_eq!(
            t.begin("bob", ip("10.0.0.2")),
            Ok(Duration::ZERO),
            "elsewhere"
        );
    }

    #[test]
    fn an_addresss_failures_leak_away() {
        let t = throttle(|_| {});
        let nat = ip("10.0.0.1");
        for i in 0..5 {
            t.begin(&format!("name{i}"), nat).unwrap();
        }
        assert_eq!(t.begin("name5", nat), Ok(Duration::ZERO), "the first turn");
        assert!(
            t.begin("name6", nat).unwrap() > Duration::ZERO,
            "the next turn"
        );
        // A minute later, one of the seven failures has leaked away: six are left, past
        // the five free, so turns are still taken.
        let mut tables = t.tables.lock().unwrap();
        let address = tables.addresses.get_mut(&Source::of(nat)).unwrap();
        address.leaks_at -= Duration::from_secs(61);
        address.next_turn = Instant::now();
        drop(tables);
        assert_eq!(t.begin("name7", nat), Ok(Duration::ZERO), "a turn now");
        let mut tables = t.tables.lock().unwrap();
        let address = tables.addresses.get_mut(&Source::of(nat)).unwrap();
        assert_eq!(address.failures, 7, "six left, and one more");
        // Ten minutes on, the address is within its free failures again: no turns.
        address.leaks_at -= Duration::from_secs(600);
        drop(tables);
        assert_eq!(t.begin("name8", nat), Ok(Duration::ZERO));
        assert_eq!(t.begin("name9", nat), Ok(Duration::ZERO));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_bit_prefix() {
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:10.0.0.1")),
            Source::of(ip("10.0.0.1"))
        );
    }

    /// Spraying names and addresses cannot grow the tables past their byte budget, and
    /// what was earned with many failures outlives the spray.
    #[test]
    fn spraying_names_and_addresses_stays_within_the_byte_budget() {
        let budget = 64 * 1024;
        let t = throttle(|c| {
            c.login_throttle_bytes = budget;
            c.login_failures_free = 3;
            c.login_backoff_base_ms = 3_600_000;
            c.login_backoff_max_ms = 3_600_000;
            c.login_address_failures_free = 1_000_000;
        });
        let victim = ip("10.9.9.9");
        for _ in 0..3 {
            t.begin("alice", victim).unwrap();
        }
        assert_eq!(t.begin("alice", victim), Err(Refusal::Account));
        for i in 0..50_000u32 {
            let sprayer = IpAddr::from(i.to_be_bytes());
            t.begin(&format!("spray{i}"), sprayer).unwrap();
            t.begin(&format!("spray{i}"), victim).unwrap();
        }
        let tables = t.tables.lock().unwrap();
        let bytes = |capacity: usize, entry: usize| capacity * 8 / 7 * (entry + 1);
        let pairs = bytes(
            tables.pairs.capacity(),
            std::mem::size_of::<(PairKey, Pair)>(),
        );
        let addresses = bytes(
            tables.addresses.capacity(),
            std::mem::size_of::<(Source, Address)>(),
        );
        assert!(tables.pairs.len() <= t.max_pairs);
        assert!(tables.addresses.len() <= t.max_addresses);
        assert!(pairs + addresses <= budget, "{pairs} + {addresses} bytes");
        drop(tables);
        assert_eq!(
            t.begin("alice", victim),
            Err(Refusal::Account),
            "the long back-off survived the spray"
        );
    }
}
