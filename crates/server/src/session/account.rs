//! Accounts, the same for every protocol: registration, password and token logins, password
//! changes, logout, profiles. The protocol files only parse and answer.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use parley_proto::{check_display_name, validate_name, ErrorKind};
use serde_json::json;
use tracing::{info, warn};

use super::{limited, Session, Who};
use crate::auth::{self, PASSWORD_LEN};
use crate::hub::{AccountChange, Auth};
use crate::metrics::LoginFailure;
use crate::outbound::{Item, Kill, Protocol, Style};
use crate::store::{now_ms, NewToken, Profile, ProfileChange, Revoke};

impl Session {
    fn valid_name<'a>(&self, name: &'a str) -> Result<&'a str, ErrorKind> {
        validate_name(name.as_bytes(), self.shared.config.max_name_bytes)
            .map_err(|_| ErrorKind::InvalidName)
    }

    /// Refuses a request that carries a password over plain TCP when the server requires
    /// TLS for them (`require_tls_for_passwords`). The password has crossed the network by
    /// then; the refusal keeps clients from being set up that way.
    fn password_over_tls(&self) -> Result<(), ErrorKind> {
        if self.shared.config.require_tls_for_passwords && !self.tls {
            warn!(session = self.link.id, peer = %self.peer, "a password over plain TCP: refused");
            return Err(ErrorKind::TlsRequired);
        }
        Ok(())
    }

    /// Whether `name` belongs to an account (has a password).
    pub(super) async fn is_account(&self, name: &str) -> bool {
        let credentials = self.shared.reader.credentials(name.to_string()).await;
        matches!(credentials, Ok(Some(c)) if c.password_hash.is_some())
    }

    /// Creates an account.
    pub(super) async fn register(&mut self, name: &str, password: &str) -> Result<(), ErrorKind> {
        self.password_over_tls()?;
        let name = self.valid_name(name)?;
        if !PASSWORD_LEN.contains(&password.len()) {
            return Err(ErrorKind::InvalidPassword);
        }
        let passwords = &self.shared.passwords;
        let hash = passwords.hash(password.to_string()).await.map_err(|e| {
            let (session, peer) = (self.link.id, self.peer);
            warn!(session, %peer, user = %name, error = %format!("{e:#}"), "hashing a password");
            ErrorKind::Internal
        })?;
        self.shared.hub.register(name.to_string(), hash).await?;
        info!(session = self.link.id, peer = %self.peer, user = %name, "account registered");
        Ok(())
    }

    /// Logs in with a password, under the login throttle (`throttle.rs`).
    pub(super) async fn password_login(
        &mut self,
        name: &str,
        password: &str,
        device: &str,
        welcome: Option<Item>,
    ) -> Result<(), ErrorKind> {
        if self.login.is_some() {
            return Err(ErrorKind::LoggedInHere);
        }
        self.password_over_tls()?;
        let name = self.valid_name(name)?;
        let device = if device.is_empty() { "default" } else { device };
        self.valid_name(device)?;
        let ip = self.peer.ip();
        self.begin_attempt(name).await?;
        let credentials = self.shared.reader.credentials(name.to_string()).await;
        let credentials = credentials.map_err(|_| {
            self.shared.throttle.unchecked(name, ip);
            ErrorKind::Internal
        })?;
        let user = credentials.as_ref().map(|c| c.user);
        let stored = credentials.and_then(|c| c.password_hash);
        let passwords = &self.shared.passwords;
        if !passwords.verify(password.to_string(), stored).await {
            limited!(self, warn, "wrong name or password", user = %name, peer = %self.peer);
            self.shared
                .monitor
                .metrics
                .login_failed(LoginFailure::Credentials);
            return Err(ErrorKind::Unauthorized);
        }
        self.shared.throttle.succeeded(name, ip);
        let user = user.ok_or(ErrorKind::Unauthorized)?;
        self.login_as(name, device, Auth::Password(user), welcome)
            .await
    }

    /// Logs in with a device token; `welcome` renders the success reply for the name.
    pub(super) async fn token_login(
        &mut self,
        token: &str,
        welcome: impl FnOnce(&str) -> Option<Item>,
    ) -> Result<String, ErrorKind> {
        if self.login.is_some() {
            return Err(ErrorKind::LoggedInHere);
        }
        let ip = self.peer.ip();
        // Looked up by its SHA-256, which a guesser cannot steer towards a stored one:
        // unknown, expired and revoked tokens take the same query and the same answer. A
        // valid token is never refused because of failures; a wrong one counts against its
        // address, and may wait for the address's turn.
        let row = self.shared.reader.token(auth::token_hash(token)).await;
        let row = row.map_err(|_| ErrorKind::Internal)?;
        let Some(row) = row.filter(|r| !r.revoked && r.expires_at > now_ms()) else {
            limited!(self, warn, "invalid, expired or revoked token", peer = %self.peer);
            self.shared
                .monitor
                .metrics
                .login_failed(LoginFailure::Credentials);
            let wait = self.shared.throttle.token_failed(ip);
            self.wait_turn(wait).await?;
            return Err(ErrorKind::Unauthorized);
        };
        let auth = Auth::Token(row.user, row.device);
        let welcome = welcome(&row.name);
        self.login_as(&row.name, &row.device_name, auth, welcome)
            .await?;
        Ok(row.name)
    }

    /// Starts a password check of `name` under the login throttle (`throttle.rs`): refused,
    /// or counted as a failure until it succeeds, after waiting for the address's turn.
    async fn begin_attempt(&self, name: &str) -> Result<(), ErrorKind> {
        let ip = self.peer.ip();
        match self.shared.throttle.begin(name, ip) {
            Ok(wait) => self.wait_turn(wait).await,
            Err(refusal) => {
                limited!(self, warn, "login throttled", user = %name, peer = %self.peer, ?refusal);
                self.shared
                    .monitor
                    .metrics
                    .login_failed(LoginFailure::Throttled);
                Err(ErrorKind::TooManyAttempts)
            }
        }
    }

    /// Waits `wait` (an address's turn), unless the server shuts down first.
    pub(super) async fn wait_turn(&self, wait: std::time::Duration) -> Result<(), ErrorKind> {
        if wait.is_zero() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = self.shared.shutdown.cancelled() => Err(ErrorKind::ShuttingDown),
        }
    }

    /// Issues a token for this device; returns it and its expiry (Unix ms).
    pub(super) async fn issue_token(&mut self) -> Result<(String, i64), ErrorKind> {
        let identity = self.account_identity()?;
        let (token, hash) = auth::new_token().map_err(|_| ErrorKind::Internal)?;
        let ttl_ms = self.shared.config.token_ttl_secs.saturating_mul(1000);
        let expires_at = now_ms().saturating_add(ttl_ms as i64);
        let change = AccountChange::Token(NewToken {
            hash,
            user: identity.user,
            device: identity.device,
            expires_at,
        });
        self.shared.hub.account(identity.user, change).await?;
        Ok((token, expires_at))
    }

    /// Changes the password (the old one must match); every other device's tokens die and
    /// its session ends.
    pub(super) async fn change_password(&mut self, old: &str, new: &str) -> Result<(), ErrorKind> {
        let identity = self.account_identity()?;
        self.password_over_tls()?;
        let name = self
            .login
            .as_ref()
            .map(|(_, n)| n.to_string())
            .unwrap_or_default();
        if !PASSWORD_LEN.contains(&new.len()) {
            return Err(ErrorKind::InvalidPassword);
        }
        self.begin_attempt(&name).await?;
        let credentials = self.shared.reader.credentials(name.clone()).await;
        let credentials = credentials.map_err(|_| {
            self.shared.throttle.unchecked(&name, self.peer.ip());
            ErrorKind::Internal
        })?;
        let stored = credentials.and_then(|c| c.password_hash);
        let passwords = &self.shared.passwords;
        if !passwords.verify(old.to_string(), stored).await {
            return Err(ErrorKind::Unauthorized);
        }
        self.shared.throttle.succeeded(&name, self.peer.ip());
        let hash = passwords
            .hash(new.to_string())
            .await
            .map_err(|_| ErrorKind::Internal)?;
        let change = AccountChange::Password {
            hash,
            keep: identity.device,
        };
        self.shared.hub.account(identity.user, change).await?;
        let (session, peer) = (self.link.id, self.peer);
        info!(session, %peer, user = %name, "password changed; other devices signed out");
        Ok(())
    }

    /// Revokes this device's tokens (or every device's); the caller then closes.
    pub(super) async fn logout(&mut self, all: bool) -> Result<(), ErrorKind> {
        let Some((identity, _)) = &self.login else {
            return Err(ErrorKind::NotLoggedIn);
        };
        let identity = *identity;
        if self.account {
            // Device id 0 never exists, so "all but 0" is every device.
            let revoke = match all {
                true => Revoke::AllBut(identity.user, 0),
                false => Revoke::Device(identity.user, identity.device),
            };
            let hub = &self.shared.hub;
            hub.account(identity.user, AccountChange::Revoke(revoke))
                .await?;
        }
        Ok(())
    }

    /// Tells a session that is being ended gracefully (a [`Kill`] that is not hard) why,
    /// where its protocol can: a text line; a JSON event once subscribed (seed 001's clients
    /// pair every line with a request); nothing in binary (no frame may answer no request).
    pub(super) fn tell_ended(&self, kill: Kill) {
        let (text, event, reason) = match kill {
            Kill::SignedOut => ("signed out", "signed_out", "the password was changed"),
            Kill::Disabled => ("signed out", "signed_out", "the account was disabled"),
            Kill::Kicked => ("disconnected", "closing", "disconnected by an operator"),
            Kill::Draining => (
                "reconnect",
                "reconnect",
                "server going away: reconnect elsewhere",
            ),
            Kill::SlowConsumer | Kill::Stalled | Kill::CatchupFailed => return,
        };
        // A session speaking gochat's dialect hears only `> ` lines.
        let style = Style::from_u8(self.link.style.load(Ordering::Relaxed));
        let line = match self.link.protocol {
            Protocol::Text if style == Style::Slash => format!("> {text}: {reason}"),
            Protocol::Text => format!("INFO {text}: {reason}"),
            Protocol::Json if self.subscribed => {
                json!({"event": event, "reason": reason}).to_string()
            }
            _ => return,
        };
        self.link.push(Item::Bytes(Bytes::from(line + "\n")));
    }

    /// Tells a session that the server is stopping, after the answers to its requests (so
    /// what was acknowledged stays acknowledged), where its protocol can: a text line, a
    /// JSON event once subscribed, and over WebSocket the close code 1001 (going away; see
    /// `close_websocket`). Its client can reconnect elsewhere at once instead of waiting
    /// for a timeout. Nothing in binary: no frame may answer no request.
    pub(super) fn tell_shutdown(&self) {
        let line = match (self.link.protocol, self.style()) {
            (Protocol::Text, Style::Slash) => "> server shutting down".to_string(),
            (Protocol::Text, _) => "INFO server shutting down".to_string(),
            (Protocol::Json, _) if self.subscribed => {
                let event = json!({"event": "shutdown", "reason": "server shutting down"});
                event.to_string()
            }
            _ => return,
        };
        self.link.push(Item::Bytes(Bytes::from(line + "\n")));
    }

    pub(super) async fn set_profile(
        &mut self,
        display_name: Option<String>,
        avatar: Option<Vec<u8>>,
    ) -> Result<(), ErrorKind> {
        let identity = self.account_identity()?;
        let config = &self.shared.config;
        let max = config.max_display_name_bytes;
        if let Some(display_name) = &display_name {
            check_display_name(display_name, max).map_err(|_| ErrorKind::InvalidName)?;
        }
        if avatar
            .as_ref()
            .is_some_and(|a| a.len() > config.max_avatar_bytes)
        {
            return Err(ErrorKind::TooLong);
        }
        let change = AccountChange::Profile(ProfileChange {
            user: identity.user,
            display_name,
            avatar,
        });
        self.shared.hub.account(identity.user, change).await
    }

    /// `name`'s profile, if `who` may ask (parley's protocols: logged-in users only).
    pub(super) async fn get_profile(&self, name: &str, who: Who) -> Result<Profile, ErrorKind> {
        self.acting(who)?;
        let profile = self.shared.reader.profile(name.to_string()).await;
        profile
            .map_err(|_| ErrorKind::Internal)?
            .ok_or(ErrorKind::UserNotFound)
    }

    /// The identity of a session logged in with a password or token.
    fn account_identity(&self) -> Result<crate::hub::Identity, ErrorKind> {
        match (&self.login, self.account) {
            (Some((identity, _)), true) => Ok(*identity),
            (Some(_), false) => Err(ErrorKind::Unauthorized),
            (None, _) => Err(ErrorKind::NotLoggedIn),
        }
    }
}
