//! A link to the server that outlives connections.
//!
//! It logs in (device token first, the password if the token is refused, registering first
//! if asked), enables acks so the device's cursor moves only when this client has the
//! message, and when the connection drops it connects again with exponential back-off. The
//! server then sends everything after the device's cursor, in order; messages that were
//! pushed but whose ack never reached the server come again, and the link drops them by
//! their place in the conversation, so the consumer sees each message exactly once.
//!
//! Requests wait for a connection; `Link::send` finds out after a reconnect whether a
//! message whose OK was lost was stored, and sends it again only if it was not.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parley_proto::binary::{code, kind, Event, UserEntry};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::connection::Push;
use crate::requests::{Page, Target, Token};
use crate::transport::Endpoint;
use crate::{Connection, Error};

/// How a link logs in and how it retries.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub endpoint: Endpoint,
    pub user: String,
    /// The device name (its cursors and tokens are its own).
    pub device: String,
    /// A device token from an earlier login; tried first.
    pub token: Option<String>,
    /// Used when there is no token or it is refused; a new token is then issued.
    pub password: Option<String>,
    /// Create the account first (an existing one is fine: the login then decides).
    pub register: bool,
    /// The first wait before reconnecting; doubled each failed attempt up to `backoff_max`.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// How often an idle connection is checked with a round trip.
    pub heartbeat: Duration,
    /// Give up after this many failed attempts before the first login (`None`: never).
    /// Once it has been online the link always tries again.
    pub max_attempts: Option<u32>,
}

impl LinkOptions {
    pub fn new(endpoint: Endpoint, user: &str, device: &str) -> LinkOptions {
        LinkOptions {
            endpoint,
            user: user.to_string(),
            device: device.to_string(),
            token: None,
            password: None,
            register: false,
            backoff_first: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            heartbeat: Duration::from_secs(20),
            max_attempts: None,
        }
    }
}

/// What the link tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    Status(LinkStatus),
    /// A message, each exactly once, in order within its conversation.
    Message(Event),
    /// A new device token: store it for the next start.
    Token(Token),
    /// A message was deleted (each deletion once, in order with the messages): `event` is
    /// the deletion's own place in the conversation, `message_seq` the deleted message's.
    Deleted {
        event: Event,
        message_id: u64,
        message_seq: u64,
    },
    /// A watched user's presence: pushed when it changes, and as each (re)connection's
    /// watch finds it.
    Presence {
        user: String,
        online: bool,
        /// Unix ms of the end of their last session (0: unknown).
        last_seen: u64,
    },
    /// Something happened in a room (`binary::change`), to `user` (empty: the room), by
    /// `by`; `text` is the topic.
    Notice {
        room: String,
        change: u8,
        user: String,
        by: String,
        text: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    Connecting {
        attempt: u32,
    },
    Online,
    /// Waiting `retry_in` before attempt `attempt + 1`.
    Offline {
        attempt: u32,
        retry_in: Duration,
        reason: String,
    },
    /// For good: credentials refused, too many attempts, or closed.
    Stopped(Error),
}

#[derive(Clone)]
enum State {
    Offline,
    Online(Connection),
    Stopped(Error),
}

/// A handle on the link; clones share it.
#[derive(Clone)]
pub struct Link {
    state: watch::Receiver<State>,
    stop: CancellationToken,
    user: Arc<str>,
    clock: Arc<AtomicU64>,
    /// The users watched for presence, watched again on every new connection.
    watching: Watching,
}

type Watching = Arc<std::sync::Mutex<Vec<String>>>;

/// How long a heartbeat's round trip may take before the connection counts as dead.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Pushes handled before their acks go out.
const ACK_BATCH: usize = 256;
/// Messages a "was it stored?" check looks back through.
const SENT_CHECK: u16 = 200;

impl Link {
    /// Starts the link's task; its events arrive on the receiver, which the owner must keep
    /// draining (pushes wait for it).
    pub fn spawn(options: LinkOptions) -> (Link, mpsc::Receiver<LinkEvent>) {
        let (state_tx, state) = watch::channel(State::Offline);
        let (events_tx, events) = mpsc::channel(1024);
        let stop = CancellationToken::new();
        let watching = Watching::default();
        let link = Link {
            state,
            stop: stop.clone(),
            user: Arc::from(options.user.as_str()),
            clock: Arc::new(AtomicU64::new(0)),
            watching: watching.clone(),
        };
        tokio::spawn(run(options, state_tx, events_tx, stop, watching));
        (link, events)
    }

    /// Watches `users` for presence (replacing the list), now and on every connection to
    /// come: their presence arrives as `LinkEvent::Presence`, first as it is now.
    pub async fn watch(&self, users: Vec<String>) -> Result<Vec<UserEntry>, Error> {
        *self.watching.lock().expect("watch list poisoned") = users.clone();
        self.retry(|c| {
            let users = users.clone();
            async move { c.watch(&users).await }
        })
        .await
    }

    /// The logged-in user.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Stops the link: the connection closes, waiting requests fail with `Closed`.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// The current connection, waiting for one while reconnecting.
    pub async fn connection(&self) -> Result<Connection, Error> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                State::Online(conn) if !conn.is_closed() => return Ok(conn.clone()),
                State::Stopped(e) => return Err(e.clone()),
                _ => {}
            }
            if self.stop.is_cancelled() {
                return Err(Error::Closed);
            }
            if state.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Runs `request` on the current connection, and again on the next one while the
    /// connection is lost: for requests that may safely run twice (listings, joins, pages).
    pub async fn retry<T, F, Fut>(&self, request: F) -> Result<T, Error>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        loop {
            let conn = self.connection().await?;
            match request(conn.clone()).await {
                Err(e) if e.is_transient() => {
                    // The server may still be closing it: wait for a new connection.
                    conn.close();
                }
                other => return other,
            }
        }
    }

    /// A timestamp for a new message: Unix nanoseconds (what seed 000's client sends), never
    /// twice the same from this process, so it also names the message for `send`.
    pub fn fresh_time(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut last = self.clock.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .clock
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Sends a message exactly once, across reconnects: if the connection drops before the
    /// OK, the next connection looks for it (by `time`, from `fresh_time`) among the
    /// conversation's latest messages and sends it again only if it is not there.
    pub async fn send(&self, to: &Target, body: Bytes, time: u64) -> Result<(), Error> {
        self.exactly_once(to, time, |conn| {
            let (to, body, user) = (to.clone(), body.clone(), self.user.clone());
            async move { conn.send(&user, &to, body, time).await }
        })
        .await
    }

    /// Runs the storing request `attempt` until it is known to have been stored once.
    pub(crate) async fn exactly_once<F, Fut>(
        &self,
        to: &Target,
        time: u64,
        attempt: F,
    ) -> Result<(), Error>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = Result<(), Error>>,
    {
        let mut unsure = false;
        loop {
            let conn = self.connection().await?;
            if unsure {
                match self.stored(&conn, to, time).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) if e.is_transient() => {
                        conn.close();
                        continue;
                    }
                    // The conversation cannot be read (left the room meanwhile): sending
                    // again gets the real answer.
                    Err(_) => {}
                }
            }
            match attempt(conn.clone()).await {
                Err(Error::Disconnected) => {
                    unsure = true;
                    conn.close();
                }
                Err(Error::Refused(code::SHUTTING_DOWN)) => conn.close(),
                other => return other,
            }
        }
    }

    /// Whether a message of ours with this `time` is among the conversation's latest.
    async fn stored(&self, conn: &Connection, to: &Target, time: u64) -> Result<bool, Error> {
        let page = conn.history(to.name(), Page::Latest, SENT_CHECK).await?;
        Ok(page
            .iter()
            .any(|e| e.time == time && *e.from == *self.user.as_bytes()))
    }
}

/// The link's task: connect, log in, pump pushes; on loss, wait and start again.
async fn run(
    mut options: LinkOptions,
    state: watch::Sender<State>,
    events: mpsc::Sender<LinkEvent>,
    stop: CancellationToken,
    watching: Watching,
) {
    let emit = |status: LinkStatus| {
        let events = events.clone();
        async move {
            let _ = events.send(LinkEvent::Status(status)).await;
        }
    };
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut attempt = 0u32;
    let mut ever_online = false;
    loop {
        attempt += 1;
        emit(LinkStatus::Connecting { attempt }).await;
        let opened = tokio::select! {
            _ = stop.cancelled() => break,
            opened = open(&mut options, &events) => opened,
        };
        let reason = match opened {
            Ok((conn, pushes)) => {
                ever_online = true;
                let _ = state.send(State::Online(conn.clone()));
                emit(LinkStatus::Online).await;
                rewatch(&conn, &watching, &events).await;
                pump(&conn, pushes, &mut seen, &events, options.heartbeat, &stop).await;
                conn.close();
                let _ = state.send(State::Offline);
                if stop.is_cancelled() {
                    break;
                }
                // Straight back: the first attempt after a loss waits only the first step.
                attempt = 1;
                "connection lost".to_string()
            }
            Err(e) if fatal(&e, ever_online) => {
                let _ = state.send(State::Stopped(e.clone()));
                emit(LinkStatus::Stopped(e)).await;
                return;
            }
            Err(e) => {
                if !ever_online && options.max_attempts.is_some_and(|max| attempt >= max) {
                    let _ = state.send(State::Stopped(e.clone()));
                    emit(LinkStatus::Stopped(e)).await;
                    return;
                }
                e.to_string()
            }
        };
        let retry_in = backoff(&options, attempt);
        emit(LinkStatus::Offline {
            attempt,
            retry_in,
            reason,
        })
        .await;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(retry_in) => {}
        }
    }
    let _ = state.send(State::Stopped(Error::Closed));
    emit(LinkStatus::Stopped(Error::Closed)).await;
}

/// Watches again on a new connection what was watched on the last, and reports what it
/// finds (the server forgets a session's watch list with the session).
async fn rewatch(conn: &Connection, watching: &Watching, events: &mpsc::Sender<LinkEvent>) {
    let users = watching.lock().expect("watch list poisoned").clone();
    if users.is_empty() {
        return;
    }
    // A failure here is the connection's: the next one watches again.
    let Ok(found) = conn.watch(&users).await else {
        return;
    };
    for u in found {
        let event = LinkEvent::Presence {
            user: String::from_utf8_lossy(&u.name).into_owned(),
            online: u.online,
            last_seen: u.last_seen,
        };
        let _ = events.send(event).await;
    }
}

/// Errors that trying again cannot fix: refused credentials, or (before the first success)
/// a device already in use elsewhere or an invalid name.
fn fatal(e: &Error, ever_online: bool) -> bool {
    match e {
        e if e.is_auth() => true,
        Error::Refused(code::USER_ALREADY_LOGGED | code::INVALID_NAME) => !ever_online,
        Error::Refused(code::SHUTTING_DOWN | code::ERROR) => false,
        Error::Refused(_) | Error::Local(_) | Error::Protocol(_) => !ever_online,
        _ => false,
    }
}

/// The wait before the next attempt: doubling from `backoff_first`, at most `backoff_max`,
/// with up to a quarter taken off at random so clients dropped together do not return
/// together.
fn backoff(options: &LinkOptions, attempt: u32) -> Duration {
    let step = options
        .backoff_first
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(options.backoff_max);
    let noise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    step - step.mul_f64(f64::from(noise % 1000) / 4000.0)
}

/// Connects and logs in: acks first (so the catch-up comes as events), then the token, or
/// the password (asking for a new token).
async fn open(
    options: &mut LinkOptions,
    events: &mpsc::Sender<LinkEvent>,
) -> Result<(Connection, mpsc::Receiver<Push>), Error> {
    let (conn, pushes) = Connection::connect(&options.endpoint).await?;
    let result = login(&conn, options, events).await;
    match result {
        Ok(()) => Ok((conn, pushes)),
        Err(e) => {
            conn.close();
            Err(e)
        }
    }
}

async fn login(
    conn: &Connection,
    options: &mut LinkOptions,
    events: &mpsc::Sender<LinkEvent>,
) -> Result<(), Error> {
    conn.enable_acks().await?;
    if options.register {
        let password = options.password.as_deref().unwrap_or_default();
        match conn.register(&options.user, password).await {
            // Taken: by us earlier, perhaps; the login decides.
            Ok(()) | Err(Error::Refused(code::USER_ALREADY_LOGGED)) => {}
            Err(e) => return Err(e),
        }
        options.register = false;
    }
    if let Some(token) = &options.token {
        match conn.login_token(token).await {
            Ok(()) => return Ok(()),
            Err(Error::Refused(code::UNAUTHORIZED)) if options.password.is_some() => {
                options.token = None;
            }
            Err(e) => return Err(e),
        }
    }
    let Some(password) = &options.password else {
        return Err(Error::Refused(code::UNAUTHORIZED));
    };
    let token = conn
        .login_password(&options.user, password, &options.device, true)
        .await?;
    if let Some(token) = token {
        options.token = Some(token.token.clone());
        let _ = events.send(LinkEvent::Token(token)).await;
    }
    Ok(())
}

/// Hands pushes to the owner, each once, and acks them; checks the connection with a
/// round trip when idle. Returns when the connection ends or the link stops.
async fn pump(
    conn: &Connection,
    mut pushes: mpsc::Receiver<Push>,
    seen: &mut HashMap<u64, u64>,
    events: &mpsc::Sender<LinkEvent>,
    heartbeat: Duration,
    stop: &CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut acks: HashMap<u64, u64> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = conn.closed() => return,
            _ = ticks.tick() => {
                let conn = conn.clone();
                tokio::spawn(async move {
                    if !matches!(tokio::time::timeout(PING_TIMEOUT, conn.ping()).await, Ok(Ok(()))) {
                        conn.close();
                    }
                });
            }
            push = pushes.recv() => {
                let Some(mut push) = push else { return };
                for _ in 0..ACK_BATCH {
                    if deliver(push, seen, events, &mut acks).await.is_err() {
                        return;
                    }
                    match pushes.try_recv() {
                        Ok(next) => push = next,
                        Err(_) => break,
                    }
                }
                for (conversation, seq) in acks.drain() {
                    conn.ack(conversation, seq);
                }
            }
        }
    }
}

/// One push to the owner, unless it was delivered before (then only acked again).
async fn deliver(
    push: Push,
    seen: &mut HashMap<u64, u64>,
    events: &mpsc::Sender<LinkEvent>,
    acks: &mut HashMap<u64, u64>,
) -> Result<(), ()> {
    let event = match push {
        Push::Event(event) => event,
        Push::Deleted {
            event,
            message_id,
            message_seq,
        } => {
            if !fresh(&event, seen, acks) {
                return Ok(());
            }
            let deleted = LinkEvent::Deleted {
                event,
                message_id,
                message_seq,
            };
            return events.send(deleted).await.map_err(drop);
        }
        Push::Presence {
            user,
            online,
            last_seen,
        } => {
            let user = String::from_utf8_lossy(&user).into_owned();
            let presence = LinkEvent::Presence {
                user,
                online,
                last_seen,
            };
            return events.send(presence).await.map_err(drop);
        }
        Push::Notice {
            room,
            change,
            user,
            by,
            text,
        } => {
            let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let notice = LinkEvent::Notice {
                room: s(&room),
                change,
                user: s(&user),
                by: s(&by),
                text: s(&text),
            };
            return events.send(notice).await.map_err(drop);
        }
        // Only before acks are enabled, which the link does first; shown all the same.
        Push::Message {
            from,
            to,
            message,
            time,
        } => Event {
            id: 0,
            conversation: 0,
            seq: 0,
            kind: if to.first() == Some(&b'#') {
                kind::ROOM
            } else {
                kind::DIRECT
            },
            from,
            to,
            time,
            message,
        },
    };
    if !fresh(&event, seen, acks) {
        return Ok(());
    }
    events.send(LinkEvent::Message(event)).await.map_err(drop)
}

/// Notes `event` for its ack; false if it was delivered before (a replay whose ack was
/// lost).
fn fresh(event: &Event, seen: &mut HashMap<u64, u64>, acks: &mut HashMap<u64, u64>) -> bool {
    if event.seq == 0 {
        return true;
    }
    let last = seen.entry(event.conversation).or_insert(0);
    let ack = acks.entry(event.conversation).or_insert(0);
    *ack = (*ack).max(event.seq);
    if event.seq <= *last {
        return false;
    }
    *last = event.seq;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let options = LinkOptions {
            backoff_first: Duration::from_millis(400),
            backoff_max: Duration::from_secs(3),
            ..LinkOptions::new(Endpoint::tcp("x:1"), "u", "d")
        };
        let waits: Vec<Duration> = (1..=6).map(|a| backoff(&options, a)).collect();
        let bounds = [400, 800, 1600, 3000, 3000, 3000];
        for (wait, max) in waits.iter().zip(bounds) {
            let max = Duration::from_millis(max);
            assert!(
                *wait <= max && *wait >= max.mul_f64(0.75),
                "{wait:?} vs {max:?}"
            );
        }
    }

    #[test]
    fn fresh_times_never_repeat() {
        let (state_tx, state) = watch::channel(State::Offline);
        drop(state_tx);
        let link = Link {
            state,
            stop: CancellationToken::new(),
            user: Arc::from("u"),
            clock: Arc::new(AtomicU64::new(0)),
            watching: Watching::default(),
        };
        let times: Vec<u64> = (0..1000).map(|_| link.fresh_time()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }
}
