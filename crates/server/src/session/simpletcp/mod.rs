//! Seed 003's framed JSON (Linloir's Simple-TCP-Server), on its own port
//! (`listen_simpletcp`): the seed's requests mapped onto the neutral session functions,
//! so its users, messages, contacts and files are everyone's.
//!
//! A token (an integer the client keeps) stands for a signed-in device: the first request
//! without a valid one gets a `TOKEN` reply first, `REGISTER` and `LOGIN` bind it to a
//! user, `LOGOUT` unbinds it. Every connection that sends a request with a bound token is
//! logged in to the hub as a device of its own (`simpletcp-<token>-<slot>`), so it gets
//! the user's direct messages pushed as `FORWARDMSG`; the client's short extra connections
//! (file uploads and downloads) are such connections too.

mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parley_proto::simpletcp::{
    self, message_md5, ContentType, Decoder, FileMd5, Frame, Kind, Message, MsgMd5, Request,
    Timestamp, UserIdentity, UserInfo, UserName, Value,
};
use parley_proto::{ErrorKind, Target};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::{Flow, Session, Shared, Who};
use crate::conn::Conn;
use crate::files::{Offer, MAX_CHUNK};
use crate::hub::{AccountChange, Auth, Identity};
use crate::outbound::simpletcp as model;
use crate::outbound::{json_error, Item, Protocol, Style, Tag};
use crate::store::{ContactState, NewToken, Revoke};

pub use state::State;
use state::{Marks, Offered, Reply};

/// Longest message body a seed-003 client may send, in bytes: what every other protocol
/// can carry (a binary frame's strings hold at most 65,535 bytes).
const MAX_BODY: usize = 60_000;
/// Largest payload (a file) held in memory, whatever `max_file_bytes` allows.
const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;
/// Bytes of a file payload that earn it another `request_timeout_ms` (about 2 KiB/s at
/// the default 30 s).
const PAYLOAD_PROGRESS: usize = 64 * 1024;
/// A `FETCHMSG` reply's body without messages.
const EMPTY_MESSAGES: &str = r#"{"messages":[]}"#;
/// Fewest bytes of JSON a message takes in a `FETCHMSG` reply (its keys, two ids, an MD5).
const MIN_MESSAGE_JSON: usize = 120;
/// Rounds of a `FETCHMSG` that found only the token's own messages.
const OWN_ROUNDS: usize = 4;
/// A connection's `FETCHFILE`s of messages not indexed search the history at most this
/// often; a request sooner waits its turn (the answer is never a false "not found").
const SEARCH_EVERY: Duration = Duration::from_secs(1);

/// This connection's seed-003 state.
pub(super) struct Conn003 {
    decoder: Decoder,
    /// The token this connection handed out (reused for later requests without a valid
    /// one, as the seed does).
    issued: Option<i64>,
    /// Bytes of the frame being read when it was last given more time (see
    /// `simpletcp_progress`).
    granted: usize,
    /// Why the connection must end (a reply that could not be finished).
    broken: Option<&'static str>,
    /// The token and slot this connection is logged in to the hub with.
    slot: Option<(i64, u32)>,
    /// The last `FETCHMSG` reply written here, until its `ACKFETCH`.
    reply: Option<Reply>,
    /// When a `FETCHFILE` last searched the history for a message not indexed.
    searched: Option<Instant>,
    /// Bytes of the server's upload budget the frame being read holds (its payload's
    /// length, taken when its header arrives).
    reserved: u64,
}

/// What a request answers: a body (`Value::Null` for null) and a payload, or nothing
/// (`ACKFETCH`, and `SENDMSG`, which the hub answers once the message is stored).
type Answer = Result<Option<(Value, Bytes)>, String>;

fn ok(body: Value) -> Answer {
    Ok(Some((body, Bytes::new())))
}

fn not_logged_in() -> String {
    "Exception: User not logged in".into()
}

/// The seed's way of saying why: `Exception: <text>`.
fn exception(kind: ErrorKind) -> String {
    format!("Exception: {}", json_error(kind))
}

/// Serves a connection of `listen_simpletcp`. As `super::run`, set up before the future
/// exists.
pub fn run(
    conn: Conn,
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    keep: impl Send + 'static,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (mut session, mut socket) = Session::open(conn, peer, Protocol::Json, false, shared);
    let config = &session.shared.config;
    // The client keeps its connection open without sending anything while the user reads
    // (pushes come unasked), and does not come back once closed: a long timeout of its
    // own (TCP keepalive finds peers that vanished sooner).
    session.idle = match config.simpletcp_idle_timeout_ms {
        0 => None,
        ms => Some(std::time::Duration::from_millis(ms)),
    };
    let max_json = 4 * MAX_BODY + 2 * config.max_avatar_bytes + 4096;
    let max_payload = config.max_file_bytes.min(MAX_PAYLOAD) as usize;
    session.simpletcp = Some(Box::new(Conn003 {
        decoder: Decoder::new(max_json, max_payload),
        issued: None,
        granted: 0,
        broken: None,
        slot: None,
        reply: None,
        searched: None,
        reserved: 0,
    }));
    session.set_style(Style::SimpleTcp);
    let mut buf = BytesMut::new();
    async move {
        let reason = session.read_loop(&mut socket, &mut buf).await;
        drop((socket, buf));
        Box::pin(session.finish(reason)).await;
        drop(keep);
    }
}

impl Session {
    fn st(&mut self) -> &mut Conn003 {
        self.simpletcp.as_mut().expect("a seed-003 session")
    }

    fn tokens(&self) -> &State {
        &self.shared.simpletcp
    }

    /// Handles every whole frame in `buf`. A frame whose lengths are out of bounds ends
    /// the connection (what follows it cannot be found), after an ERR saying why.
    pub(super) async fn drain_simpletcp(&mut self, buf: &mut BytesMut) -> Flow {
        loop {
            if let Flow::Close(why) = self.reserve_payload(buf).await {
                return Flow::Close(why);
            }
            let Some(st) = self.simpletcp.as_ref() else {
                return Flow::Continue;
            };
            match st.decoder.decode(buf) {
                Ok(None) => return Flow::Continue,
                Ok(Some(frame)) => {
                    if let Some(st) = self.simpletcp.as_mut() {
                        st.granted = 0;
                    }
                    // A client that does not read its answers is not read either.
                    if let Flow::Close(why) = self.room().await {
                        return Flow::Close(why);
                    }
                    self.commands.take().await;
                    self.simpletcp_frame(frame).await;
                    self.release_payload();
                    if let Some(why) = self.simpletcp.as_ref().and_then(|st| st.broken) {
                        return Flow::Close(why.into());
                    }
                }
                Err(e) => {
                    self.st_err("UNKNOWN", format!("Exception: {e}")).await;
                    buf.clear();
                    return Flow::Close(format!("seed 003: {e}"));
                }
            }
        }
    }

    /// Whether the frame at the front of `buf` earned more time: its header and JSON came
    /// within the request deadline like any request's, but a file payload may take longer
    /// on a slow link, as long as it keeps coming. Each further `PAYLOAD_PROGRESS` bytes
    /// of it restart the deadline (`request_timeout_ms`); a payload slower than that per
    /// deadline, or stalled, is cut.
    pub(super) fn simpletcp_progress(&mut self, buf: &BytesMut) -> bool {
        let Some(st) = self.simpletcp.as_mut() else {
            return false;
        };
        let Ok(Some((json_len, _))) = st.decoder.lengths(buf) else {
            return false;
        };
        let in_payload = buf.len() > simpletcp::HEADER + json_len;
        if in_payload && buf.len() >= st.granted + PAYLOAD_PROGRESS {
            st.granted = buf.len();
            return true;
        }
        false
    }

    /// Takes the upload budget for the payload of the frame whose header is at the front
    /// of `buf`, before its bytes are held. Past the server's budget
    /// (`simpletcp_upload_bytes`, over every connection) the frame is refused with an ERR
    /// and the connection closed: its payload cannot be skipped without reading it.
    async fn reserve_payload(&mut self, buf: &mut BytesMut) -> Flow {
        let Some(st) = self.simpletcp.as_mut() else {
            return Flow::Continue;
        };
        if st.reserved > 0 {
            return Flow::Continue;
        }
        let Ok(Some((_, payload))) = st.decoder.lengths(buf) else {
            return Flow::Continue;
        };
        let payload = payload as u64;
        if payload == 0 {
            return Flow::Continue;
        }
        let limit = self.shared.config.simpletcp_upload_bytes;
        if self.shared.simpletcp.reserve_upload(payload, limit) {
            if let Some(st) = self.simpletcp.as_mut() {
                st.reserved = payload;
            }
            return Flow::Continue;
        }
        warn!(
            session = self.link.id,
            payload,
            held = self.shared.simpletcp.uploads(),
            limit,
            "seed 003: upload refused, the server holds its upload budget"
        );
        let info = "Exception: Server busy: too many files arriving at once, try again later";
        self.st_err("UNKNOWN", info.into()).await;
        buf.clear();
        Flow::Close("seed 003: upload budget exhausted".into())
    }

    /// Gives back the upload budget the frame just handled held.
    fn release_payload(&mut self) {
        if let Some(st) = self.simpletcp.as_mut() {
            let reserved = std::mem::take(&mut st.reserved);
            if reserved > 0 {
                self.shared.simpletcp.release_upload(reserved);
            }
        }
    }

    /// Gives back this connection's token slot (the session is ending).
    pub(super) fn release_simpletcp(&mut self) {
        self.release_payload();
        if let Some((token, slot)) = self.simpletcp.as_mut().and_then(|st| st.slot.take()) {
            self.shared.simpletcp.free_slot(token, slot);
        }
    }

    async fn st_say(&mut self, frame: BytesMut) {
        self.say(Item::Bytes(frame.freeze())).await;
    }

    async fn st_err(&mut self, response: &str, info: String) {
        let mut out = BytesMut::new();
        simpletcp::encode_err(response, &info, &mut out);
        self.st_say(out).await;
    }

    async fn simpletcp_frame(&mut self, frame: Frame) {
        let request = match simpletcp::parse_request(&frame.json) {
            Ok(request) => request,
            Err(e) => {
                debug!(session = self.link.id, error = %e, "seed 003: bad request");
                return self.st_err("UNKNOWN", format!("Exception: {e}")).await;
            }
        };
        let Some(token) = self.st_token(request.tokenid).await else {
            return;
        };
        self.st_align(token).await;
        let Some(kind) = request.kind else {
            return self.st_err("UNKNOWN", "Unkown request".into()).await;
        };
        let answer = self.st_handle(kind, token, &request, frame.payload).await;
        let added = kind == Kind::AddContact && answer.is_ok();
        match answer {
            Ok(None) => {}
            Ok(Some((body, payload))) => {
                let mut out = BytesMut::new();
                simpletcp::encode_ok(kind.word(), Some(&body), &payload, &mut out);
                self.st_say(out).await;
            }
            Err(info) => self.st_err(kind.word(), info).await,
        }
        if added {
            // The seed's server follows an added contact with the new lists, unasked.
            let answer = self.st_contacts().await;
            if let Ok(Some((body, _))) = answer {
                let mut out = BytesMut::new();
                simpletcp::encode_ok(Kind::FetchContact.word(), Some(&body), b"", &mut out);
                self.st_say(out).await;
            }
        }
    }

    /// The request's token if it is valid; otherwise this connection's own (new the first
    /// time), announced with a `TOKEN` reply. A wrong token counts against the address as
    /// a wrong device token does (`throttle.rs`); `None` if the server shuts down meanwhile.
    async fn st_token(&mut self, tokenid: Option<i64>) -> Option<i64> {
        if let Some(token) = tokenid {
            if self.tokens().exists(token) || self.st_restore(token).await {
                return Some(token);
            }
            info!(session = self.link.id, peer = %self.peer, "seed 003: unknown token");
            let wait = self.shared.throttle.token_failed(self.peer.ip());
            self.wait_turn(wait).await.ok()?;
        }
        let issued = self.st().issued;
        let token = match issued {
            Some(token) if self.tokens().exists(token) => token,
            _ => {
                let token = self.tokens().issue();
                self.st().issued = Some(token);
                token
            }
        };
        let mut out = BytesMut::new();
        simpletcp::encode_ok("TOKEN", Some(&json!({ "tokenid": token })), b"", &mut out);
        self.st_say(out).await;
        Some(token)
    }

    /// Takes back `token` from the store if it keeps it, valid (a restart forgot it here).
    async fn st_restore(&self, token: i64) -> bool {
        let row = self.shared.reader.token(state::stored_hash(token)).await;
        let Ok(Some(row)) = row else {
            return false;
        };
        if row.revoked || row.expires_at <= crate::store::now_ms() {
            return false;
        }
        let name = Arc::from(row.name.as_str());
        self.tokens().restore(token, row.user, name, row.device);
        true
    }

    /// Keeps `token`, now bound to this connection's user, in the store (hashed, as a
    /// device token of this connection's device), so it outlives a restart.
    async fn st_store_token(&self, token: i64) -> Result<(), ErrorKind> {
        let (identity, _) = self.login.clone().ok_or(ErrorKind::NotLoggedIn)?;
        let ttl_ms = self.shared.config.token_ttl_secs.saturating_mul(1000);
        let expires_at = crate::store::now_ms().saturating_add(ttl_ms.min(i64::MAX as u64) as i64);
        let change = AccountChange::Token(NewToken {
            hash: state::stored_hash(token),
            user: identity.user,
            device: identity.device,
            expires_at,
        });
        self.shared.hub.account(identity.user, change).await?;
        self.tokens().stored(token, identity.device);
        Ok(())
    }

    /// Unbinds `token` here and in the store.
    async fn st_unbind(&self, token: i64) {
        let user = self.tokens().user(token).map(|(user, _)| user);
        let device = self.tokens().unbind(token);
        if let (Some(user), Some(device)) = (user, device) {
            let revoke = AccountChange::Revoke(Revoke::Device(user, device));
            if let Err(kind) = self.shared.hub.account(user, revoke).await {
                debug!(session = self.link.id, error = ?kind, "seed 003: token not revoked");
            }
        }
    }

    /// Makes this connection's login follow its token's: logged in to the hub as the
    /// token's user, or not at all.
    async fn st_align(&mut self, token: i64) {
        let bound = self.tokens().user(token);
        let current = self.login.as_ref().map(|(identity, _)| identity.user);
        match bound {
            Some((user, _)) if current == Some(user) => {}
            Some((user, name)) => {
                self.st_leave();
                if let Err(kind) = self.st_enter(token, user, &name).await {
                    debug!(session = self.link.id, error = ?kind, "seed 003: no push login");
                }
            }
            None if current.is_some() => self.st_leave(),
            None => {}
        }
    }

    /// Logs in to the hub as `user`, on a device of its own for this connection.
    async fn st_enter(&mut self, token: i64, user: i64, name: &str) -> Result<(), ErrorKind> {
        let slot = self
            .tokens()
            .take_slot(token)
            .ok_or(ErrorKind::AlreadyLoggedIn)?;
        let device = format!("simpletcp-{token}-{slot}");
        self.subscribed = true;
        match self
            .login_as(name, &device, Auth::Password(user), None)
            .await
        {
            Ok(()) => {
                self.st().slot = Some((token, slot));
                if let Some((identity, _)) = &self.login {
                    self.tokens().add_device(token, identity.device);
                }
                Ok(())
            }
            Err(kind) => {
                self.tokens().free_slot(token, slot);
                Err(kind)
            }
        }
    }

    /// Logs this connection out of the hub (not the token: see `LOGOUT`).
    fn st_leave(&mut self) {
        if let Some(catchup) = self.catchup.take() {
            catchup.cancel();
        }
        if let Some((identity, _)) = self.login.take() {
            self.shared.hub.gone(self.link.id, Some(identity));
            self.shared.hub.guest(self.link.clone());
        }
        self.account = false;
        self.subscribed = false;
        self.release_simpletcp();
    }

    fn st_me(&self) -> Result<(Identity, Arc<str>), String> {
        self.login.clone().ok_or_else(not_logged_in)
    }

    async fn st_handle(
        &mut self,
        kind: Kind,
        token: i64,
        request: &Request,
        payload: Bytes,
    ) -> Answer {
        let bad = |e: simpletcp::BadRequest| format!("Exception: {e}");
        match kind {
            Kind::State => match self.tokens().user(token) {
                Some((_, name)) => ok(self.st_user_info(&name).await?),
                None => Err(not_logged_in()),
            },
            Kind::Register => {
                let identity: UserIdentity = request.body().map_err(bad)?;
                let name = decode_name(&identity.username)?;
                self.st_leave();
                self.st_unbind(token).await;
                self.register(&name, &identity.passwd)
                    .await
                    .map_err(|kind| match kind {
                        ErrorKind::AlreadyLoggedIn => "Exception: Username already exists".into(),
                        kind => exception(kind),
                    })?;
                ok(self.st_login(token, &name, &identity.passwd).await?)
            }
            Kind::Login => {
                let identity: UserIdentity = request.body().map_err(bad)?;
                let name = decode_name(&identity.username)?;
                self.st_leave();
                self.st_unbind(token).await;
                ok(self.st_login(token, &name, &identity.passwd).await?)
            }
            Kind::Logout => {
                self.st_unbind(token).await;
                self.st_leave();
                ok(Value::Null)
            }
            Kind::Profile => {
                let who: simpletcp::UserId = request.body().map_err(bad)?;
                let name = self.st_name(who.userid).await?;
                ok(self.st_user_info(&name).await?)
            }
            Kind::ModifyPasswd => {
                self.st_me()?;
                let identity: UserIdentity = request.body().map_err(bad)?;
                let new = identity
                    .new_passwd
                    .ok_or("Exception: newPasswd is missing")?;
                self.change_password(&identity.passwd, &new)
                    .await
                    .map_err(|kind| match kind {
                        ErrorKind::Unauthorized => "Exception: Invalid password".into(),
                        kind => exception(kind),
                    })?;
                if let Some((user, _)) = self.tokens().user(token) {
                    self.tokens().unbind_others(user, token);
                }
                ok(Value::Null)
            }
            Kind::ModifyProfile => {
                let (_, me) = self.st_me()?;
                let info: UserInfo = request.body().map_err(bad)?;
                if let Some(avatar) = &info.avatar {
                    let bytes =
                        simpletcp::unb64(avatar).ok_or("Exception: avatar is not base64")?;
                    self.set_profile(None, Some(bytes))
                        .await
                        .map_err(exception)?;
                }
                ok(self.st_user_info(&me).await?)
            }
            Kind::SendMsg => {
                let message: Message = request.body().map_err(bad)?;
                self.st_send(message, payload).await
            }
            Kind::AckFetch => {
                let at: Timestamp = request.body().map_err(bad)?;
                self.st_ack(token, at.timestamp).await
            }
            Kind::FetchMsg => {
                let reply = self.st_fetch(token).await?;
                self.st_say(reply).await;
                Ok(None)
            }
            Kind::FindFile => {
                let file: FileMd5 = request.body().map_err(bad)?;
                let stored = self.tokens().file(&file.filemd5);
                match stored.filter(|sha| self.shared.files.has(sha)) {
                    Some(_) => ok(Value::Null),
                    None => Err("File not found".into()),
                }
            }
            Kind::FetchFile => {
                let which: MsgMd5 = request.body().map_err(bad)?;
                let (sha256, size, first) = self.st_fetch_file(&which.msgmd5).await?;
                self.st_send_file(&sha256, size, first).await;
                Ok(None)
            }
            Kind::SearchUsr => {
                let who: UserName = request.body().map_err(bad)?;
                let name = decode_name(&who.username)?;
                ok(self.st_user_info(&name).await?)
            }
            Kind::AddContact => {
                self.st_me()?;
                let who: simpletcp::UserId = request.body().map_err(bad)?;
                let name = self.st_name(who.userid).await?;
                let action = crate::hub::ContactAction::Request;
                self.contact_action(&name, action)
                    .await
                    .map_err(exception)?;
                ok(Value::Null)
            }
            Kind::FetchContact => self.st_contacts().await,
        }
    }

    /// Logs in with a password (the client's MD5 of it) and binds `token` to the user.
    async fn st_login(&mut self, token: i64, name: &str, passwd: &str) -> Result<Value, String> {
        let slot = self
            .tokens()
            .take_slot(token)
            .ok_or_else(|| exception(ErrorKind::AlreadyLoggedIn))?;
        let device = format!("simpletcp-{token}-{slot}");
        self.subscribed = true;
        match self.password_login(name, passwd, &device, None).await {
            Ok(()) => {
                self.st().slot = Some((token, slot));
                let (identity, name) = self.st_me()?;
                self.tokens().bind(token, identity.user, name.clone());
                self.tokens().add_device(token, identity.device);
                self.st_store_token(token).await.map_err(exception)?;
                self.st_user_info(&name).await
            }
            Err(kind) => {
                self.tokens().free_slot(token, slot);
                self.subscribed = false;
                Err(match kind {
                    ErrorKind::Unauthorized | ErrorKind::InvalidName => {
                        let known = self.shared.reader.credentials(name.to_string()).await;
                        match known {
                            Ok(Some(_)) => "Exception: Invalid password".into(),
                            _ => "Exception: User not found".into(),
                        }
                    }
                    kind => exception(kind),
                })
            }
        }
    }

    /// `name`'s profile as the seed's `UserInfo`.
    async fn st_user_info(&self, name: &str) -> Result<Value, String> {
        let profile = self
            .get_profile(name, Who::Anyone)
            .await
            .map_err(|_| "Exception: User not found".to_string())?;
        let userid = model::user_id(&profile.name);
        self.tokens()
            .learn(userid, Arc::from(profile.name.as_str()));
        let info = UserInfo {
            userid,
            username: simpletcp::b64(profile.name.as_bytes()),
            avatar: profile.avatar.map(|a| simpletcp::b64(&a)),
        };
        Ok(serde_json::to_value(info).expect("plain data"))
    }

    /// The name behind a seed-003 user id.
    async fn st_name(&self, id: i64) -> Result<Arc<str>, String> {
        let missing = || "Exception: User not found".to_string();
        // An id not seen yet is looked for among every user, which one scan a second at
        // most does for the whole server: a lookup waits for its turn (at most a second).
        for _ in 0..20 {
            if let Some(name) = self.tokens().name(id) {
                return Ok(name);
            }
            if self.tokens().may_scan() {
                let every = self.shared.reader.users(String::new(), usize::MAX);
                let users = every.await.map_err(|_| missing())?;
                for user in users {
                    self.tokens()
                        .learn(model::user_id(&user.name), Arc::from(user.name));
                }
                return self.tokens().name(id).ok_or_else(missing);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(missing())
    }

    /// Sends a message as the logged-in user; the hub answers once it is stored.
    async fn st_send(&mut self, message: Message, payload: Bytes) -> Answer {
        let (identity, me) = self.st_me()?;
        if message.userid != model::user_id(&me) {
            return Err(exception(ErrorKind::Forbidden));
        }
        let to = self.st_name(message.targetid).await?;
        let text = simpletcp::unb64(&message.content)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or("Exception: content is not base64 of UTF-8")?;
        let sent_at = model::nanos(message.timestamp);
        let tag = Tag::SimpleTcp {
            md5encoded: Arc::from(message.md5encoded.as_str()),
        };
        let body = match message.contenttype {
            ContentType::Plaintext => text,
            ContentType::Image => {
                if simpletcp::unb64(&text).is_none() {
                    return Err("Exception: an image's content is base64 of base64".into());
                }
                format!("{}{text}", model::IMAGE)
            }
            ContentType::File => {
                let md5 = message
                    .filemd5
                    .filter(|m| simpletcp::is_md5(m))
                    .ok_or("Exception: filemd5 is missing")?;
                let sha256 = self.st_store_file(&md5, payload).await?;
                let mime = format!("application/octet-stream;md5={md5}");
                let target = Target::User(to.to_string());
                let _ = identity;
                self.send_file(target, &sha256, &text, &mime, "", sent_at, tag)
                    .await
                    .map_err(exception)?;
                // Indexed by the id the server gives it back under (the client's, unless
                // the client computed it otherwise: then not taken on trust).
                let id = message_md5(
                    text.as_bytes(),
                    message.userid,
                    message.targetid,
                    message.timestamp,
                );
                self.tokens().remember_message_file(&id, &sha256);
                return Ok(None);
            }
        };
        if body.is_empty() {
            return Err("Exception: Message is empty".into());
        }
        if body.len() > MAX_BODY {
            return Err(exception(ErrorKind::TooLong));
        }
        let target = Target::User(to.to_string());
        self.send(target, Bytes::from(body), sent_at, tag, super::Who::Members)
            .await;
        Ok(None)
    }

    /// Stores a file sent as a payload after checking it against its MD5; returns its
    /// SHA-256. Without a payload, a file this server already has under that MD5.
    async fn st_store_file(&mut self, md5: &str, payload: Bytes) -> Result<String, String> {
        if payload.is_empty() {
            let known = self.tokens().file(md5);
            return known
                .filter(|sha| self.shared.files.has(sha))
                .ok_or_else(|| "Exception: File not found".into());
        }
        if simpletcp::md5_hex(&payload) != md5 {
            return Err("Exception: the file does not match its filemd5".into());
        }
        let sha256: String = Sha256::digest(&payload)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let size = payload.len() as u64;
        let mut offset = match self.file_offer(&sha256, size).await.map_err(exception)? {
            Offer::Have => size,
            Offer::Upload { offset } => offset.min(size),
        };
        while offset < size {
            let end = (offset as usize + MAX_CHUNK).min(payload.len());
            let chunk = payload.slice(offset as usize..end);
            self.file_chunk(&sha256, size, offset, chunk)
                .await
                .map_err(exception)?;
            offset = end as u64;
        }
        self.tokens().remember_file(md5, &sha256);
        Ok(sha256)
    }

    /// Answers `FETCHFILE` with the file `sha256` of `size` bytes (`first`: its first
    /// piece, read already), streamed from the file store in pieces of `MAX_CHUNK`, each
    /// read once the connection has room for it: a file is never held whole. A file may
    /// be larger than the outbound queue's byte bound, which a push queued behind it would
    /// then pass (a slow consumer). So the connection first stops taking pushes (the client
    /// downloads on a connection of its own; its next request logs it in again), and the
    /// pieces wait for room one by one with nothing between them. A read that fails once
    /// the header is out cannot be told in the frame: the connection ends.
    async fn st_send_file(&mut self, sha256: &str, size: u64, first: Bytes) {
        if let Some((identity, _)) = &self.login {
            let user = identity.user;
            self.st_leave();
            // Answered after what the hub decided before the leave has been queued here.
            let hub = &self.shared.hub;
            let _ = hub.go_live(self.link.id, user, Default::default()).await;
        }
        // Every answer in flight is in: what follows goes straight to the queue, in order.
        self.settle().await;
        let mut head = BytesMut::new();
        let json = br#"{"response":"FETCHFILE","status":"OK","info":null,"body":null}"#;
        // The header says how much payload follows.
        let _ = simpletcp::encode_head(json, size, &mut head);
        self.st_say(head).await;
        let mut at = first.len() as u64;
        self.say(Item::Bytes(first)).await;
        while at < size {
            let want = MAX_CHUNK.min((size - at) as usize);
            let chunk = self.shared.files.read_chunk(sha256, at, want).await;
            match chunk {
                Ok(chunk) if !chunk.is_empty() => {
                    at += chunk.len() as u64;
                    self.say(Item::Bytes(chunk)).await;
                }
                _ => {
                    tracing::warn!(
                        session = self.link.id,
                        sha256,
                        at,
                        "seed 003: a file read failed"
                    );
                    self.st().broken = Some("seed 003: a file could not be read to its end");
                    return;
                }
            }
        }
    }

    /// The file a message (named by its `md5encoded`) carries, which the user may read:
    /// its SHA-256, size and first piece. Found in the index of file messages seed-003
    /// clients sent or were sent in a reply (`State::message_file`); a message only pushed
    /// (a file from another protocol) is searched for in the history, then indexed.
    async fn st_fetch_file(&mut self, msgmd5: &str) -> Result<(String, u64, Bytes), String> {
        let missing = || "Exception: File not found".to_string();
        let sha256 = match self.tokens().message_file(msgmd5) {
            Some(sha256) => sha256,
            None => {
                let sha256 = self.st_search_file(msgmd5).await?.ok_or_else(missing)?;
                self.tokens().remember_message_file(msgmd5, &sha256);
                sha256
            }
        };
        let size = self
            .shared
            .files
            .size(&sha256)
            .await
            .map_err(|_| missing())?;
        // The first read checks the user may read it (a member of a conversation it was
        // sent to); the rest read on.
        let first = self
            .download(&sha256, 0, MAX_CHUNK.min(size as usize))
            .await
            .map_err(exception)?;
        if first.is_empty() && size > 0 {
            return Err(exception(ErrorKind::Internal));
        }
        Ok((sha256, size, first))
    }

    /// `FETCHMSG`: the user's direct messages (seed 003 has no rooms) stored after the
    /// token's marks, newest first. The marks are positions in the server's order (see
    /// `State::ack`), so a sender's clock cannot hide a message. A conversation's messages
    /// right after the mark that this token sent itself (stored, so their sends
    /// succeeded) are not sent back: the mark moves over them, as the seed moves it on a
    /// send, but never over a message of someone else's the client has not acknowledged.
    ///
    /// The reply's JSON is at most `max_frame_bytes` (or one message, should one be
    /// larger): the messages first stored, in the server's order, that fit. Whatever is
    /// left comes next: the client acknowledges each reply (`ACKFETCH` of its newest), and
    /// an acknowledgement of a reply that left messages out is followed by the next reply,
    /// unasked (`st_ack`), so the client takes in the whole backlog a reply at a time.
    async fn st_fetch(&mut self, token: i64) -> Result<BytesMut, String> {
        let (identity, me) = self.st_me()?;
        self.settle().await;
        let config = &self.shared.config;
        let envelope = simpletcp::ok_overhead(Kind::FetchMsg.word()) + EMPTY_MESSAGES.len();
        let budget = config
            .max_frame_bytes
            .min(simpletcp::MAX_JSON)
            .saturating_sub(envelope);
        // More than this many messages cannot fit the budget.
        let limit = config.max_history.min(budget / MIN_MESSAGE_JSON + 1);
        let reader = self.shared.reader.clone();
        let internal = |_| exception(ErrorKind::Internal);
        let positions = reader.positions(identity.user, identity.device).await;
        let positions: Vec<_> = positions
            .map_err(internal)?
            .into_iter()
            .filter(|p| p.kind == parley_proto::ConversationKind::Direct)
            .collect();
        let mut found = Vec::new();
        let mut more = false;
        // A page of nothing but the token's own messages moves the marks on and reads again
        // (a few rounds at most; what is left is there for the next request).
        for _ in 0..OWN_ROUNDS {
            let Marks { marks, devices } = self.tokens().marks(token);
            more = false;
            for p in &positions {
                let from = marks.get(&p.conv).copied().unwrap_or(0).max(p.joined);
                if from >= p.last_seq {
                    continue;
                }
                let (a, b) = &p.members;
                let other = if **a == *me { b.clone() } else { a.clone() };
                self.tokens().learn(model::user_id(&other), other.clone());
                // Read as history pages are, a frame's worth at most (`rows`): a backlog
                // of large messages is never read or encoded whole to send a frame of it.
                let after = crate::store::Page::AfterSeq(from);
                let page = self
                    .rows(p.conv, after, limit, other.len().max(me.len()))
                    .await;
                let page = page.map_err(exception)?;
                more |= page.last().is_some_and(|(m, _)| m.seq < p.last_seq);
                // The run of this token's own messages right after the mark, if any.
                let (mut own, mut leading) = (None, true);
                for (m, _) in page {
                    leading = leading && devices.contains(&m.sender_device);
                    if leading {
                        own = Some(m.seq);
                        continue;
                    }
                    let to = if *m.sender == *me { &other } else { &me };
                    let message = model::message(&m.sender, to, &m.body, m.sent_at);
                    if let Some(sha256) = model::content(&m.body).sha256 {
                        self.tokens()
                            .remember_message_file(&message.md5encoded, &sha256);
                    }
                    let json = simpletcp::ascii_json(&message);
                    found.push((m.id, m.conv, m.seq, message.timestamp, json));
                }
                if let Some(seq) = own {
                    self.tokens().advance(token, p.conv, seq);
                }
            }
            if !found.is_empty() || !more {
                break;
            }
        }
        // The first stored, in the server's order, as many as fit (one at least).
        found.sort_unstable_by_key(|(id, ..)| *id);
        let mut size = 0;
        let fit = found
            .iter()
            .position(|(.., json)| {
                size += json.len() + 1;
                size > budget + 1
            })
            .unwrap_or(found.len())
            .max(1)
            .min(found.len());
        more |= fit < found.len();
        found.truncate(fit);
        // Newest first by the senders' clocks, as the client shows them (ties in the
        // server's order).
        found.sort_unstable_by_key(|(id, _, _, timestamp, _)| std::cmp::Reverse((*timestamp, *id)));
        let offered = found
            .iter()
            .map(|(_, conv, seq, timestamp, _)| Offered {
                conv: *conv,
                seq: *seq,
                timestamp: *timestamp,
            })
            .collect();
        self.st().reply = Some(Reply {
            token,
            user: identity.user,
            offered,
            more,
        });
        let mut body = Vec::with_capacity(size + EMPTY_MESSAGES.len());
        body.extend_from_slice(&EMPTY_MESSAGES.as_bytes()[..EMPTY_MESSAGES.len() - 2]);
        for (i, (.., json)) in found.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(json);
        }
        body.extend_from_slice(b"]}");
        let mut out = BytesMut::new();
        simpletcp::encode_ok_json(Kind::FetchMsg.word(), &body, &mut out);
        Ok(out)
    }

    /// `ACKFETCH`: no reply, but the next part of a backlog when the acknowledged reply
    /// left some out (see `st_fetch`).
    async fn st_ack(&mut self, token: i64, timestamp: i64) -> Answer {
        let reply = self.st().reply.take().filter(|r| r.token == token);
        if reply.is_some_and(|reply| self.tokens().ack(reply, timestamp)) {
            let next = self.st_fetch(token).await?;
            self.st_say(next).await;
        }
        Ok(None)
    }

    /// The SHA-256 of the file the message `msgmd5` carries, searched for in the last
    /// `max_history` messages of each of the user's direct conversations (seed 003 has no
    /// rooms), a page at a time, stopping at the first match. At most one search per
    /// `SEARCH_EVERY` on a connection: one asking for unknown messages again and again
    /// waits rather than making the server read its history in a loop.
    async fn st_search_file(&mut self, msgmd5: &str) -> Result<Option<String>, String> {
        let (identity, me) = self.st_me()?;
        if let Some(at) = self.st().searched {
            tokio::time::sleep_until((at + SEARCH_EVERY).into()).await;
        }
        self.st().searched = Some(Instant::now());
        self.settle().await;
        let reader = self.shared.reader.clone();
        let internal = |_| exception(ErrorKind::Internal);
        let positions = reader.positions(identity.user, identity.device).await;
        for p in positions.map_err(internal)? {
            if p.kind != parley_proto::ConversationKind::Direct {
                continue;
            }
            let (a, b) = &p.members;
            let other = if **a == *me { b.clone() } else { a.clone() };
            self.tokens().learn(model::user_id(&other), other.clone());
            let limit = self.shared.config.max_history;
            let page = reader.page(p.conv, crate::store::Page::Latest, limit).await;
            for (m, _) in page.map_err(internal)? {
                let Some(sha256) = model::content(&m.body).sha256 else {
                    continue;
                };
                let to = if *m.sender == *me { &other } else { &me };
                if model::message(&m.sender, to, &m.body, m.sent_at).md5encoded == msgmd5 {
                    return Ok(Some(sha256));
                }
            }
        }
        Ok(None)
    }

    /// The three contact lists: mutual, asked by me, asking me.
    async fn st_contacts(&mut self) -> Answer {
        self.st_me()?;
        let list = self.contact_list().await.map_err(exception)?;
        let (mut contacts, mut pending, mut requesting) = (Vec::new(), Vec::new(), Vec::new());
        for contact in list {
            let Ok(info) = self.st_user_info(&contact.name).await else {
                continue;
            };
            match contact.state {
                ContactState::Accepted => contacts.push(info),
                ContactState::Requested => pending.push(info),
                ContactState::Pending => requesting.push(info),
            }
        }
        ok(json!({ "contacts": contacts, "pending": pending, "requesting": requesting }))
    }
}

/// A user name as the client sends it: padded base64 of UTF-8.
fn decode_name(username: &str) -> Result<String, String> {
    simpletcp::unb64(username)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| "Exception: username is not base64 of UTF-8".into())
}
