//! Passwords and device tokens (failed logins are the throttle's: `throttle.rs`).
//!
//! Passwords are hashed with Argon2id (PHC strings, so parameters can change without
//! invalidating stored hashes) on the blocking pool: a hash costs tens of milliseconds of
//! CPU and must never run on an async thread or the hub. Tokens are 256 random bits, given
//! to the client once and stored only as their SHA-256.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

#[cfg(test)]
mod tests {
    use super::*;

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
