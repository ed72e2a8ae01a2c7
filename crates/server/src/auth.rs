//! Passwords, device tokens and failed-login throttling.
//!
//! Passwords are hashed with Argon2id (PHC strings, so parameters can change without
//! invalidating stored hashes) on the blocking pool: a hash costs tens of milliseconds of
//! CPU and must never run on an async thread or the hub. Tokens are 256 random bits, given
//! to the client once and stored only as their SHA-256.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// Shortest and longest password accepted, in bytes.
pub const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=128;

fn argon2(config: &Config) -> anyhow::Result<Argon2<'static>> {
    let params = Params::new(
        config.argon2_memory_kib,
        config.argon2_iterations,
        config.argon2_parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashing and checking passwords with the configured Argon2id cost.
///
/// A login of a name that is not an account (or has no password) must cost what a wrong
/// password costs, or the time of the answer tells which names are accounts. So it is
/// checked against `dummy`, a hash of a random password made once at start with the same
/// parameters: one verification either way, and nothing else.
pub struct Passwords {
    argon2: Argon2<'static>,
    dummy: Arc<str>,
    /// Argon2 hashes and verifications run (tests check the work a login does).
    runs: AtomicU64,
}

impl Passwords {
    /// Checks the parameters and makes the dummy hash (one hash's time, on the blocking
    /// pool).
    pub async fn new(config: &Config) -> anyhow::Result<Passwords> {
        let argon2 = argon2(config)?;
        let mut random = [0u8; 32];
        getrandom::getrandom(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let hasher = argon2.clone();
        let dummy = tokio::task::spawn_blocking(move || hash(&hasher, &random)).await??;
        Ok(Passwords {
            argon2,
            dummy: Arc::from(dummy),
            runs: AtomicU64::new(0),
        })
    }

    /// Hashes `password` (on the blocking pool).
    pub async fn hash(&self, password: String) -> anyhow::Result<String> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || hash(&argon2, password.as_bytes())).await?
    }

    /// Whether `password` matches `stored` (on the blocking pool). Without a stored hash
    /// the dummy is checked, so the answer (false) takes as long as a wrong password's.
    pub async fn verify(&self, password: String, stored: Option<String>) -> bool {
        self.runs.fetch_add(1, Ordering::Relaxed);
        let known = stored.is_some();
        let stored: Arc<str> = match stored {
            Some(stored) => Arc::from(stored),
            None => self.dummy.clone(),
        };
        let argon2 = self.argon2.clone();
        let matches = tokio::task::spawn_blocking(move || match PasswordHash::new(&stored) {
            Ok(hash) => argon2.verify_password(password.as_bytes(), &hash).is_ok(),
            Err(_) => false,
        })
        .await;
        known && matches.unwrap_or(false)
    }

    /// How many Argon2 hashes and verifications have run.
    #[cfg(test)]
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }
}

fn hash(argon2: &Argon2<'_>, password: &[u8]) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// A fresh token (what the client keeps) and its hash (what the store keeps).
pub fn new_token() -> anyhow::Result<(String, Vec<u8>)> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The stored form of a token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Failed logins per name and per address, with exponential back-off.
///
/// After `free` failures, the next attempt is refused outright (without checking the
/// password) until a delay has passed since the last failure: `base × 2^(failures - free)`,
/// at most `max`. Refusing instead of sleeping means parallel connections gain nothing, so
/// with the defaults (3 free, 1 s doubling to 60 s) 1,000 guesses at one name take about
/// 16 hours. A success clears the name's count; idle entries are forgotten after an hour.
pub struct Throttle {
    free: u32,
    base: Duration,
    max: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Name(String),
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

const FORGET_AFTER: Duration = Duration::from_secs(3600);

impl Throttle {
    pub fn new(config: &Config) -> Self {
        Throttle {
            free: config.login_failures_free,
            base: Duration::from_millis(config.login_backoff_base_ms),
            max: Duration::from_millis(config.login_backoff_max_ms),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn delay(&self, entry: &Entry) -> Duration {
        if entry.failures < self.free {
            return Duration::ZERO;
        }
        let doublings = (entry.failures - self.free).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// How long the caller must wait before it may try `name` from `ip` again (zero: now).
    #[cfg(test)]
    pub fn wait(&self, name: &str, ip: IpAddr) -> Duration {
        let entries = self.entries.lock().expect("throttle poisoned");
        self.wait_locked(&entries, name, ip)
    }

    fn wait_locked(&self, entries: &HashMap<Key, Entry>, name: &str, ip: IpAddr) -> Duration {
        let now = Instant::now();
        [Key::Name(name.to_string()), Key::Ip(ip)]
            .iter()
            .filter_map(|k| entries.get(k))
            .map(|e| (e.last + self.delay(e)).saturating_duration_since(now))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Starts an attempt at `name` from `ip`: false if it must wait; otherwise the attempt
    /// is counted as a failure at once (check and count under one lock, so parallel
    /// attempts cannot all pass the check) until `succeeded` takes it back.
    pub fn begin(&self, name: &str, ip: IpAddr) -> bool {
        let mut entries = self.entries.lock().expect("throttle poisoned");
        if !self.wait_locked(&entries, name, ip).is_zero() {
            return false;
        }
        let now = Instant::now();
        entries.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        for key in [Key::Name(name.to_string()), Key::Ip(ip)] {
            let e = entries.entry(key).or_insert(Entry {
                failures: 0,
                last: now,
            });
            e.failures += 1;
            e.last = now;
        }
        true
    }

    /// The attempt begun for `name` from `ip` succeeded: the name's count is cleared and
    /// the address's count takes the attempt back.
    pub fn succeeded(&self, name: &str, ip: IpAddr) {
        let mut entries = self.entries.lock().expect("throttle poisoned");
        entries.remove(&Key::Name(name.to_string()));
        if let Some(e) = entries.get_mut(&Key::Ip(ip)) {
            e.failures = e.failures.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        let config = Config {
            login_failures_free: 2,
            login_backoff_base_ms: 1000,
            login_backoff_max_ms: 60_000,
            ..Config::default()
        };
        Throttle::new(&config)
    }

    #[test]
    fn a_few_attempts_are_free_then_attempts_are_refused_until_the_back_off_passes() {
        let t = throttle();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(t.begin("bob", ip));
        assert!(t.begin("bob", ip), "two free attempts");
        assert!(!t.begin("bob", ip), "the third waits");
        let wait = t.wait("bob", ip);
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
    }

    #[test]
    fn the_back_off_doubles_up_to_the_cap() {
        let t = throttle();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        let mut entries = t.entries.lock().unwrap();
        entries.insert(
            Key::Name("bob".into()),
            Entry {
                failures: 4,
                last: now,
            },
        );
        drop(entries);
        assert!(t.wait("bob", ip) > Duration::from_millis(3900), "2^(4-2) s");
        t.entries.lock().unwrap().insert(
            Key::Name("bob".into()),
            Entry {
                failures: 40,
                last: now,
            },
        );
        let wait = t.wait("bob", ip);
        assert!(wait > Duration::from_secs(59) && wait <= Duration::from_secs(60));
    }

    #[test]
    fn the_address_is_throttled_for_every_name_and_success_clears_the_name() {
        let t = throttle();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(t.begin("a", ip));
        assert!(t.begin("b", ip));
        assert!(!t.begin("c", ip), "same address, any name");
        assert!(t.begin("c", other));
        t.succeeded("c", other);
        assert_eq!(t.wait("c", other), Duration::ZERO);
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let (a, ha) = new_token().unwrap();
        let (b, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(token_hash(&a), ha);
        assert_ne!(ha, a.as_bytes());
    }

    fn cheap() -> Config {
        Config {
            argon2_memory_kib: 1024,
            argon2_iterations: 1,
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn a_password_verifies_against_its_hash_only() {
        let passwords = Passwords::new(&cheap()).await.unwrap();
        let hash = passwords.hash("correct horse".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
        );
        assert!(!passwords.verify("wrong horse".into(), Some(hash)).await);
        assert!(!passwords.verify("correct horse".into(), None).await);
    }

    /// The mechanism that keeps unknown names from answering faster or slower than known
    /// ones: no stored hash means one verification against a hash with the same cost,
    /// never a hash made on the spot (which cost twice a wrong password's time: 70 ms
    /// against 35 ms with the default cost).
    #[tokio::test]
    async fn an_unknown_name_costs_one_verification_against_a_hash_of_the_same_cost() {
        let passwords = Passwords::new(&cheap()).await.unwrap();
        let real = passwords.hash("correct horse".into()).await.unwrap();
        let params = |phc: &str| {
            let hash = PasswordHash::new(phc).unwrap();
            (
                hash.algorithm.to_string(),
                hash.version,
                hash.params.to_string(),
            )
        };
        assert_eq!(params(&passwords.dummy), params(&real));

        let before = passwords.runs();
        assert!(!passwords.verify("guess".into(), None).await);
        assert_eq!(
            passwords.runs() - before,
            1,
            "an unknown name: one Argon2 run"
        );
        assert!(!passwords.verify("guess".into(), Some(real)).await);
        assert_eq!(
            passwords.runs() - before,
            2,
            "a wrong password: one Argon2 run"
        );
    }
}
