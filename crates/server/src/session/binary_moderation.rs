//! The binary protocol's moderation and presence keys (0x50-0x5C): topics, modes and
//! operators' actions, room details, deleting a message, blocks, and watching presence.

use bytes::{Bytes, BytesMut};
use parley_proto::binary::{self, action, Frame, RoomInfoEntry, UserEntry};
use parley_proto::ErrorKind;

use super::binary::{reply, utf8};
use super::Session;
use crate::hub::RoomAction;
use crate::outbound::Item;

impl Session {
    pub(super) async fn moderation_frame(&mut self, frame: Frame) {
        let cid = frame.cid();
        let result = match frame {
            Frame::SetTopic { room, topic, .. } => match (utf8(&room), utf8(&topic)) {
                (Ok(room), Ok(topic)) => {
                    let topic = (!topic.is_empty()).then(|| topic.to_string());
                    self.moderate(room, RoomAction::Topic(topic)).await
                }
                (Err(kind), _) | (_, Err(kind)) => Err(kind),
            },
            Frame::SetInviteOnly { room, on, .. } => match utf8(&room) {
                Ok(room) => self.moderate(room, RoomAction::InviteOnly(on)).await,
                Err(kind) => Err(kind),
            },
            Frame::Moderate {
                room, action, user, ..
            } => match (utf8(&room), utf8(&user)) {
                (Ok(room), Ok(user)) => match room_action(action, user) {
                    Some(action) => self.moderate(room, action).await,
                    None => Err(ErrorKind::Malformed),
                },
                (Err(kind), _) | (_, Err(kind)) => Err(kind),
            },
            Frame::GetRoomInfo { room, .. } => match utf8(&room) {
                Ok(room) => match self.room_details(room).await {
                    Ok(d) => {
                        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
                        let names =
                            |list: &[std::sync::Arc<str>]| list.iter().map(|n| b(n)).collect();
                        let info = RoomInfoEntry {
                            room: b(&d.name),
                            topic: d.topic.as_deref().map_or(Bytes::new(), b),
                            invite_only: d.invite_only,
                            owner: d.owner.as_deref().map_or(Bytes::new(), b),
                            rank: d.rank.code(),
                            member: d.member,
                            operators: names(&d.operators),
                            banned: names(&d.banned),
                            muted: names(&d.muted),
                        };
                        self.send_frame(Frame::RoomInfo { cid, info }).await;
                        Ok(())
                    }
                    Err(kind) => Err(kind),
                },
                Err(kind) => Err(kind),
            },
            Frame::DeleteMessage { target, seq, .. } => match utf8(&target) {
                Ok(target) => {
                    let seq = seq.min(i64::MAX as u64) as i64;
                    self.delete_message(target, seq).await
                }
                Err(kind) => Err(kind),
            },
            Frame::Block { user, on, .. } => match utf8(&user) {
                Ok(user) => self.block(user, on).await,
                Err(kind) => Err(kind),
            },
            Frame::ListBlocks { .. } => match self.blocks().await {
                Ok(list) => {
                    let users = list
                        .iter()
                        .map(|n| Bytes::copy_from_slice(n.as_bytes()))
                        .collect();
                    self.send_frame(Frame::Blocks { cid, users }).await;
                    Ok(())
                }
                Err(kind) => Err(kind),
            },
            Frame::Watch { users, .. } => {
                let names: Result<Vec<String>, ErrorKind> =
                    users.iter().map(|u| utf8(u).map(str::to_string)).collect();
                let render = move |found: Vec<super::moderation::WatchedUser>| {
                    let users = found
                        .iter()
                        .map(|u| UserEntry {
                            name: Bytes::copy_from_slice(u.name.as_bytes()),
                            online: u.online,
                            last_seen: u.last_seen.max(0) as u64,
                        })
                        .collect();
                    // The listing, then the response, as one item.
                    let mut out = BytesMut::new();
                    if (Frame::Users { cid, users }).encode(&mut out).is_err() {
                        out.clear();
                        let code = binary::error_code(ErrorKind::TooLong);
                        binary::encode_response(cid, code, &mut out);
                    } else {
                        binary::encode_response(cid, binary::code::OK, &mut out);
                    }
                    Item::Bytes(out.freeze())
                };
                match names {
                    Ok(names) => match self.watch(names, render).await {
                        // The hub queues the answer, in order with the pushes after it.
                        Ok(()) => return,
                        Err(kind) => Err(kind),
                    },
                    Err(kind) => Err(kind),
                }
            }
            _ => Err(ErrorKind::UnknownCommand),
        };
        self.answer(cid, reply(result)).await;
    }
}

/// The room action of a `Moderate` frame (`binary::action`).
fn room_action(code: u8, user: &str) -> Option<RoomAction> {
    let user = user.to_string();
    Some(match code {
        action::INVITE => RoomAction::Invite(user),
        action::KICK => RoomAction::Kick(user),
        action::BAN => RoomAction::Ban(user),
        action::UNBAN => RoomAction::Unban(user),
        action::MUTE => RoomAction::Mute(user),
        action::UNMUTE => RoomAction::Unmute(user),
        action::OP => RoomAction::Op(user),
        action::DEOP => RoomAction::Deop(user),
        action::DELETE_ROOM => RoomAction::Delete,
        _ => return None,
    })
}
