//! Requests of the seed-000 binary protocol.

use bytes::BytesMut;
use parley_proto::binary::{self, Frame};
use parley_proto::{validate_name, ErrorKind, Reply, Target};
use tracing::warn;

use super::{Flow, Session};
use crate::hub::Actor;
use crate::outbound::Outbound;
use crate::wire::Tag;

impl Session {
    /// Handles every complete frame in `buf`.
    pub(super) async fn drain_frames(&mut self, buf: &mut BytesMut) -> Flow {
        loop {
            let frame = match binary::decode(buf, self.shared.config.max_frame_bytes) {
                Ok(None) => return Flow::Continue,
                Ok(Some(frame)) => frame,
                Err(e) => match e.correlation_id() {
                    Some(cid) if !e.is_fatal() => {
                        warn!(session = self.link.id, error = %e, "bad frame");
                        self.answer(cid, Reply::Error(e.kind())).await;
                        continue;
                    }
                    _ => {
                        warn!(session = self.link.id, error = %e, "bad frame, closing");
                        return Flow::Close(format!("bad input: {e}"));
                    }
                },
            };
            self.frame(frame).await;
        }
    }

    async fn frame(&mut self, frame: Frame) {
        let max_name = self.shared.config.max_name_bytes;
        match frame {
            Frame::CorrelationTest { cid } => self.answer(cid, Reply::Ok).await,
            Frame::Login { cid, username } => {
                let reply = match validate_name(&username, max_name) {
                    Ok(name) => {
                        let name = name.to_string();
                        match self.login(&name).await {
                            Ok(()) => Reply::Ok,
                            Err(kind) => Reply::Error(kind),
                        }
                    }
                    Err(e) => {
                        warn!(session = self.link.id, error = %e, "bad login name");
                        Reply::Error(ErrorKind::InvalidName)
                    }
                };
                self.answer(cid, reply).await;
            }
            Frame::Message {
                cid,
                message,
                from,
                to,
                time,
            } => {
                let Some((identity, name)) = &self.login else {
                    return self.answer(cid, Reply::Error(ErrorKind::NotLoggedIn)).await;
                };
                if from != name.as_bytes() {
                    warn!(session = self.link.id, user = %name, "message with a forged sender refused");
                    return self.answer(cid, Reply::Error(ErrorKind::Forbidden)).await;
                }
                let identity = *identity;
                // No name that breaks the rules can have logged in.
                let Ok(to) = validate_name(&to, max_name) else {
                    return self
                        .answer(cid, Reply::Error(ErrorKind::UserNotFound))
                        .await;
                };
                let to = Target::User(to.to_string());
                self.acquire_inflight().await;
                let hub = &self.shared.hub;
                hub.send(
                    self.link.clone(),
                    Actor::Member(identity),
                    to,
                    message,
                    time,
                    Tag::Cid(cid),
                );
            }
            Frame::Response { cid, .. } => {
                warn!(session = self.link.id, "a client sent a response frame");
                self.answer(cid, Reply::Error(ErrorKind::UnknownCommand))
                    .await;
            }
        }
    }

    async fn answer(&mut self, cid: u32, reply: Reply) {
        self.say(Outbound::Reply(Tag::Cid(cid), reply)).await;
    }
}
