//! Requests of the seed-000 binary protocol.

use bytes::BytesMut;
use parley_proto::binary::{self, Decoded, Frame};
use parley_proto::{validate_name, ErrorKind, Reply};

use super::{limited, Flow, Session, Who};
use crate::hub::DirectMessage;
use crate::outbound::{Item, Tag};

impl Session {
    /// Handles every complete frame in `buf`. The direct messages among them go to the hub
    /// together, one hand-over for each run of them (the hub answers each by its own
    /// correlation id, in order); any other request first hands over the run before it, so
    /// the hub still sees everything in the order it was sent.
    pub(super) async fn drain_frames(&mut self, buf: &mut BytesMut) -> Flow {
        let mut run = Vec::new();
        let flow = self.drain_frames_into(buf, &mut run).await;
        self.hand_over(&mut run);
        flow
    }

    async fn drain_frames_into(
        &mut self,
        buf: &mut BytesMut,
        run: &mut Vec<DirectMessage>,
    ) -> Flow {
        loop {
            if !self.link.has_room() {
                // The run's answers come from the hub: hand it over before waiting.
                self.hand_over(run);
                if let Flow::Close(why) = self.room().await {
                    return Flow::Close(why);
                }
            }
            let unread = buf.len();
            let frame = match binary::decode_view(buf, self.shared.config.max_frame_bytes) {
                Ok(None) => return Flow::Continue,
                Ok(Some(frame)) => frame,
                Err(e) => match e.correlation_id() {
                    Some(cid) if !e.is_fatal() => {
                        limited!(self, warn, "bad frame", peer = %self.peer, user = self.user(), error = %e);
                        self.hand_over(run);
                        self.answer(cid, Reply::Error(e.kind())).await;
                        continue;
                    }
                    _ => {
                        limited!(self, warn, "bad frame, closing", peer = %self.peer, user = self.user(), error = %e);
                        return Flow::Close(format!("bad input: {e}"));
                    }
                },
            };
            match frame {
                // The hot path, handled here rather than in a handler of its own: building
                // a handler's future would copy the frame into it (and a boxed one would be
                // allocated and freed for every message).
                Decoded::Message(message) => {
                    if let Err(kind) = self.check_message(message.from(), message.to()) {
                        self.hand_over(run);
                        self.refuse(Tag::Cid(message.cid), kind).await;
                        continue;
                    }
                    // The permits come back only once the hub has the run.
                    if !self.try_acquire_inflight() {
                        self.hand_over(run);
                        self.acquire_inflight().await;
                    }
                    if run.capacity() == 0 {
                        // About as many as the frames left in `buf`, so it seldom grows.
                        let frame_len = unread - buf.len();
                        run.reserve(1 + buf.len() / frame_len);
                    }
                    run.push(message);
                }
                // Boxed: an idle session's future stays small (the biggest handler's state
                // would otherwise be part of every connection's footprint).
                Decoded::Frame(frame) => {
                    self.hand_over(run);
                    Box::pin(self.frame(frame)).await
                }
            }
            if let Some(why) = self.quit {
                return Flow::Close(why.into());
            }
        }
    }

    /// Gives the hub the direct messages read so far.
    fn hand_over(&self, run: &mut Vec<DirectMessage>) {
        if let (false, Some((identity, _))) = (run.is_empty(), &self.login) {
            let run = std::mem::take(run);
            self.shared
                .hub
                .send_direct(self.link.clone(), *identity, run);
        }
    }

    /// Whether a direct message (key 0x02) from `from` to `to` may go to the hub, which
    /// stores and delivers it.
    fn check_message(&mut self, from: &[u8], to: &[u8]) -> Result<(), ErrorKind> {
        let Some((_, name)) = &self.login else {
            return Err(ErrorKind::NotLoggedIn);
        };
        if from != name.as_bytes() {
            limited!(self, warn, "message with a forged sender refused", peer = %self.peer, user = %name);
            return Err(ErrorKind::Forbidden);
        }
        if !self.messages.try_take() {
            return Err(ErrorKind::RateLimited);
        }
        self.recipient(to)
    }

    async fn frame(&mut self, frame: Frame) {
        let max_name = self.shared.config.max_name_bytes;
        match frame {
            Frame::CorrelationTest { cid } => self.answer(cid, Reply::Ok).await,
            Frame::Login { cid, username } => {
                let reply = match validate_name(&username, max_name) {
                    Ok(name) => {
                        let name = name.to_string();
                        let welcome = Item::Reply(Tag::Cid(cid), Reply::Ok);
                        match self.login(&name, Some(welcome)).await {
                            Ok(()) => return,
                            Err(kind) => Reply::Error(kind),
                        }
                    }
                    Err(e) => {
                        limited!(self, warn, "bad login name", peer = %self.peer, user = self.user(), error = %e);
                        Reply::Error(ErrorKind::InvalidName)
                    }
                };
                self.answer(cid, reply).await;
            }
            Frame::Join { .. }
            | Frame::Leave { .. }
            | Frame::SendRoom { .. }
            | Frame::SendMany { .. }
            | Frame::SendAll { .. }
            | Frame::ListRooms { .. }
            | Frame::ListMembers { .. }
            | Frame::ListUsers { .. }
            | Frame::History { .. }
            | Frame::EnableAcks { .. }
            | Frame::Ack { .. } => self.messaging_frame(frame).await,
            Frame::Search { .. }
            | Frame::ContactRequest { .. }
            | Frame::ContactAnswer { .. }
            | Frame::ContactRemove { .. }
            | Frame::ListContacts { .. } => self.contacts_frame(frame).await,
            Frame::FileOffer { .. }
            | Frame::FileChunk { .. }
            | Frame::SendFile { .. }
            | Frame::Download { .. } => self.files_frame(frame).await,
            Frame::SetTopic { .. }
            | Frame::SetInviteOnly { .. }
            | Frame::Moderate { .. }
            | Frame::GetRoomInfo { .. }
            | Frame::DeleteMessage { .. }
            | Frame::Block { .. }
            | Frame::ListBlocks { .. }
            | Frame::Watch { .. } => self.moderation_frame(frame).await,
            Frame::RoomInfo { cid, .. }
            | Frame::Blocks { cid, .. }
            | Frame::Presence { cid, .. }
            | Frame::Deleted { cid, .. }
            | Frame::Notice { cid, .. }
            | Frame::FileStatus { cid, .. }
            | Frame::FileData { cid, .. }
            | Frame::Contacts { cid, .. }
            | Frame::Rooms { cid, .. }
            | Frame::Members { cid, .. }
            | Frame::Users { cid, .. }
            | Frame::HistoryPage { cid, .. }
            | Frame::Event { cid, .. } => {
                limited!(self, warn, "a client sent a server-only frame");
                self.answer(cid, Reply::Error(ErrorKind::UnknownCommand))
                    .await;
            }
            // `drain_frames_into` handles messages itself and never passes one here.
            Frame::Message { cid, .. } => self.answer(cid, Reply::Error(ErrorKind::Internal)).await,
            Frame::Response { cid, .. } | Frame::Token { cid, .. } | Frame::Profile { cid, .. } => {
                limited!(self, warn, "a client sent a server-only frame");
                self.answer(cid, Reply::Error(ErrorKind::UnknownCommand))
                    .await;
            }
            Frame::Register {
                cid,
                username,
                password,
            } => {
                let result = match (utf8(&username), utf8(&password)) {
                    (Ok(name), Ok(password)) => self.register(name, password).await,
                    (Err(kind), _) | (_, Err(kind)) => Err(kind),
                };
                self.answer(cid, reply(result)).await;
            }
            Frame::LoginPassword {
                cid,
                username,
                password,
                device,
                flags,
            } => {
                // With a token asked for, the Token frame must come before the response.
                let want_token = flags & binary::flags::WANT_TOKEN != 0;
                let welcome = (!want_token).then(|| Item::Reply(Tag::Cid(cid), Reply::Ok));
                let result = match (utf8(&username), utf8(&password), utf8(&device)) {
                    (Ok(name), Ok(password), Ok(device)) => {
                        self.password_login(name, password, device, welcome).await
                    }
                    _ => Err(ErrorKind::InvalidUtf8),
                };
                if result.is_ok() && !want_token {
                    return;
                }
                if result.is_ok() && flags & binary::flags::WANT_TOKEN != 0 {
                    match self.issue_token().await {
                        Ok((token, expires_at)) => {
                            let frame = Frame::Token {
                                cid,
                                token: token.into(),
                                expires_at: expires_at as u64,
                            };
                            self.send_frame(frame).await;
                        }
                        Err(kind) => return self.answer(cid, Reply::Error(kind)).await,
                    }
                }
                self.answer(cid, reply(result)).await;
            }
            Frame::LoginToken { cid, token } => {
                let welcome = |_: &str| Some(Item::Reply(Tag::Cid(cid), Reply::Ok));
                let result = match utf8(&token) {
                    Ok(token) => self.token_login(token, welcome).await.map(drop),
                    Err(kind) => Err(kind),
                };
                if result.is_err() {
                    self.answer(cid, reply(result)).await;
                }
            }
            Frame::Logout { cid, scope } => {
                let result = self.logout(scope == 1).await;
                self.answer(cid, reply(result)).await;
                if result.is_ok() {
                    self.quit = Some("logged out");
                }
            }
            Frame::ChangePassword { cid, old, new } => {
                let result = match (utf8(&old), utf8(&new)) {
                    (Ok(old), Ok(new)) => self.change_password(old, new).await,
                    (Err(kind), _) | (_, Err(kind)) => Err(kind),
                };
                self.answer(cid, reply(result)).await;
            }
            Frame::SetProfile {
                cid,
                display_name,
                avatar,
            } => {
                let result = match utf8(&display_name) {
                    Ok(display) => {
                        let display = (!display.is_empty()).then(|| display.to_string());
                        let avatar = (!avatar.is_empty()).then(|| avatar.to_vec());
                        self.set_profile(display, avatar).await
                    }
                    Err(kind) => Err(kind),
                };
                self.answer(cid, reply(result)).await;
            }
            Frame::GetProfile { cid, username } => {
                let result = match utf8(&username) {
                    Ok(name) => self.get_profile(name, Who::Members).await,
                    Err(kind) => Err(kind),
                };
                match result {
                    Ok(profile) => {
                        let frame = Frame::Profile {
                            cid,
                            username: profile.name.into(),
                            display_name: profile.display_name.unwrap_or_default().into(),
                            avatar: profile.avatar.unwrap_or_default().into(),
                        };
                        self.send_frame(frame).await;
                        self.answer(cid, Reply::Ok).await;
                    }
                    Err(kind) => self.answer(cid, Reply::Error(kind)).await,
                }
            }
        }
    }

    /// Queues a data frame (it precedes the response to the same request).
    pub(super) async fn send_frame(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        if frame.encode(&mut out).is_ok() {
            self.say(Item::Bytes(out.freeze())).await;
        }
    }

    pub(super) async fn answer(&mut self, cid: u32, reply: Reply) {
        self.say(Item::Reply(Tag::Cid(cid), reply)).await;
    }
}

pub(super) fn utf8(bytes: &[u8]) -> Result<&str, ErrorKind> {
    std::str::from_utf8(bytes).map_err(|_| ErrorKind::InvalidUtf8)
}

pub(super) fn reply(result: Result<(), ErrorKind>) -> Reply {
    match result {
        Ok(()) => Reply::Ok,
        Err(kind) => Reply::Error(kind),
    }
}
