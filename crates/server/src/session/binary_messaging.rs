//! The binary protocol's messaging keys (0x20-0x2F): rooms, several recipients, everyone,
//! listings with presence, history pages, and pushes that carry their place in the log and
//! are acknowledged by the client.

use bytes::Bytes;
use parley_proto::binary::{self, ContactEntry, Event, Frame, ListPage, RoomEntry, UserEntry};
use parley_proto::{ErrorKind, Reply, Target};
use std::sync::atomic::Ordering;

use super::binary::{reply, utf8};
use super::presence::UserStatus;
use super::{Session, Who};
use crate::files::Offer;
use crate::hub::ContactAction;
use crate::outbound::{Item, Style, Tag};
use crate::store::Page;

impl Session {
    pub(super) async fn messaging_frame(&mut self, frame: Frame) {
        let cid = frame.cid();
        let result = match frame {
            Frame::Ack {
                conversation, seq, ..
            } => {
                // A notification: no response.
                if let (Some((identity, _)), true) = (&self.login, seq > 0) {
                    let progress = vec![(conversation as i64, seq as i64)];
                    self.shared.hub.cursors(identity.device, progress);
                }
                return;
            }
            Frame::EnableAcks { .. } => self.enable_acks(),
            Frame::Join { room, .. } => match name(&room) {
                Ok(room) => {
                    // The answer is queued by the hub, before the room's first message.
                    let ok = Item::Reply(Tag::Cid(cid), Reply::Ok);
                    match self.join(&[room], None, Who::Members, Some(ok)).await {
                        Ok(()) => return,
                        Err(kind) => Err(kind),
                    }
                }
                Err(kind) => Err(kind),
            },
            Frame::Leave { room, .. } => match name(&room) {
                Ok(room) => self.leave(&[room], Who::Members).await,
                Err(kind) => Err(kind),
            },
            Frame::SendRoom {
                room,
                message,
                time,
                ..
            } => match name(&room).and_then(|room| self.room_name(&room)) {
                Ok(room) => {
                    return self
                        .send_binary(cid, Target::Room(room), message, time)
                        .await
                }
                Err(kind) => Err(kind),
            },
            Frame::SendMany {
                to, message, time, ..
            } => {
                let names: Option<Vec<String>> = to
                    .iter()
                    .map(|n| self.recipient(n).ok().map(|()| lossless(n)))
                    .collect();
                match names {
                    Some(names) if !names.is_empty() => {
                        return self
                            .send_binary(cid, Target::Users(names), message, time)
                            .await
                    }
                    Some(_) => Err(ErrorKind::Malformed),
                    None => Err(ErrorKind::UserNotFound),
                }
            }
            Frame::SendAll { message, time, .. } => {
                return self.send_binary(cid, Target::Everyone, message, time).await
            }
            Frame::ListRooms { page, .. } => {
                let (after, limit) = list_page(page);
                match self.rooms(&after, limit, Who::Members).await {
                    Ok(rooms) => {
                        let rooms = rooms
                            .into_iter()
                            .map(|r| RoomEntry {
                                name: Bytes::copy_from_slice(r.name.as_bytes()),
                                members: r.members as u32,
                                online: r.online as u32,
                            })
                            .collect();
                        self.send_frame(Frame::Rooms { cid, rooms }).await;
                        Ok(())
                    }
                    Err(kind) => Err(kind),
                }
            }
            Frame::ListMembers { room, .. } => match utf8(&room) {
                Ok(room) => match self.members(room).await {
                    Ok(list) => {
                        let members = list
                            .into_iter()
                            .map(|(name, online)| UserEntry {
                                name: Bytes::copy_from_slice(name.as_bytes()),
                                online,
                                last_seen: 0,
                            })
                            .collect();
                        self.send_frame(Frame::Members { cid, members }).await;
                        Ok(())
                    }
                    Err(kind) => Err(kind),
                },
                Err(kind) => Err(kind),
            },
            Frame::ListUsers { page, .. } => match self.users_page(page).await {
                Ok(users) => {
                    let users = users.into_iter().map(user_entry).collect();
                    self.send_frame(Frame::Users { cid, users }).await;
                    Ok(())
                }
                Err(kind) => Err(kind),
            },
            Frame::History {
                target,
                mode,
                value,
                limit,
                ..
            } => match self.history_page(&target, mode, value, limit).await {
                Ok(events) => {
                    self.send_frame(Frame::HistoryPage { cid, events }).await;
                    Ok(())
                }
                Err(kind) => Err(kind),
            },
            _ => Err(ErrorKind::UnknownCommand),
        };
        self.answer(cid, reply(result)).await;
    }

    pub(super) async fn files_frame(&mut self, frame: Frame) {
        let cid = frame.cid();
        let result = match frame {
            Frame::FileOffer { sha256, size, .. } => match utf8(&sha256) {
                Ok(hash) => match self.file_offer(hash, size).await {
                    Ok(offer) => {
                        let (have, offset) = match offer {
                            Offer::Have => (1, size),
                            Offer::Upload { offset } => (0, offset),
                        };
                        self.send_frame(Frame::FileStatus { cid, have, offset })
                            .await;
                        Ok(())
                    }
                    Err(kind) => Err(kind),
                },
                Err(kind) => Err(kind),
            },
            Frame::FileChunk {
                sha256,
                size,
                offset,
                data,
                ..
            } => match utf8(&sha256) {
                Ok(hash) => self.file_chunk(hash, size, offset, data).await.map(drop),
                Err(kind) => Err(kind),
            },
            Frame::SendFile {
                target_kind,
                target,
                sha256,
                name,
                mime,
                caption,
                time,
                ..
            } => {
                let fields = (
                    utf8(&target),
                    utf8(&sha256),
                    utf8(&name),
                    utf8(&mime),
                    utf8(&caption),
                );
                match fields {
                    (Ok(target), Ok(hash), Ok(name), Ok(mime), Ok(caption)) => {
                        match self.file_target(target_kind, target) {
                            Ok(to) => {
                                let tag = Tag::Cid(cid);
                                match self
                                    .send_file(to, hash, name, mime, caption, time, tag)
                                    .await
                                {
                                    // The hub answers once the message is stored.
                                    Ok(()) => return,
                                    Err(kind) => Err(kind),
                                }
                            }
                            Err(kind) => Err(kind),
                        }
                    }
                    _ => Err(ErrorKind::InvalidUtf8),
                }
            }
            Frame::Download {
                sha256,
                offset,
                length,
                ..
            } => match utf8(&sha256) {
                Ok(hash) => match self.download(hash, offset, length as usize).await {
                    Ok(data) => {
                        self.send_frame(Frame::FileData { cid, offset, data }).await;
                        Ok(())
                    }
                    Err(kind) => Err(kind),
                },
                Err(kind) => Err(kind),
            },
            _ => Err(ErrorKind::UnknownCommand),
        };
        self.answer(cid, reply(result)).await;
    }

    pub(super) async fn contacts_frame(&mut self, frame: Frame) {
        let cid = frame.cid();
        let result = match frame {
            Frame::Search { prefix, limit, .. } => match utf8(&prefix) {
                Ok(prefix) => match self.search_users(prefix, usize::from(limit)).await {
                    Ok(found) => {
                        let users = found.into_iter().map(user_entry).collect();
                        self.send_frame(Frame::Users { cid, users }).await;
                        Ok(())
                    }
                    Err(kind) => Err(kind),
                },
                Err(kind) => Err(kind),
            },
            Frame::ContactRequest { name, .. } => match utf8(&name) {
                Ok(name) => self.contact_action(name, ContactAction::Request).await,
                Err(kind) => Err(kind),
            },
            Frame::ContactAnswer { name, accept, .. } => match utf8(&name) {
                Ok(name) => {
                    let action = match accept {
                        0 => ContactAction::Decline,
                        _ => ContactAction::Accept,
                    };
                    self.contact_action(name, action).await
                }
                Err(kind) => Err(kind),
            },
            Frame::ContactRemove { name, .. } => match utf8(&name) {
                Ok(name) => self.contact_action(name, ContactAction::Remove).await,
                Err(kind) => Err(kind),
            },
            Frame::ListContacts { .. } => match self.contact_list().await {
                Ok(list) => {
                    let contacts = list
                        .into_iter()
                        .map(|c| ContactEntry {
                            name: Bytes::from(c.name),
                            state: c.state as u8,
                            online: c.online,
                            last_seen: c.last_seen.max(0) as u64,
                        })
                        .collect();
                    self.send_frame(Frame::Contacts { cid, contacts }).await;
                    Ok(())
                }
                Err(kind) => Err(kind),
            },
            _ => Err(ErrorKind::UnknownCommand),
        };
        self.answer(cid, reply(result)).await;
    }

    /// From now on this session's pushes are `Event` frames and its cursor moves on acks.
    pub(super) fn enable_acks(&mut self) -> Result<(), ErrorKind> {
        self.link.acks.store(true, Ordering::Relaxed);
        if self.link.protocol == crate::outbound::Protocol::Binary {
            self.set_style(Style::Events);
        }
        Ok(())
    }

    async fn send_binary(&mut self, cid: u32, to: Target, message: Bytes, time: u64) {
        self.send(to, message, time, Tag::Cid(cid), Who::Members)
            .await
    }

    /// A `ListUsers` request's page.
    async fn users_page(&self, page: Option<ListPage>) -> Result<Vec<UserStatus>, ErrorKind> {
        let (after, limit) = list_page(page);
        self.users(&after, limit).await
    }

    /// A `History` request's page, as `Event`s.
    async fn history_page(
        &self,
        target: &[u8],
        mode: u8,
        value: u64,
        limit: u16,
    ) -> Result<Vec<Event>, ErrorKind> {
        let target = utf8(target)?;
        let value = value.min(i64::MAX as u64) as i64;
        let page = match mode {
            binary::page::LATEST => Page::Latest,
            binary::page::BEFORE_ID => Page::BeforeId(value),
            binary::page::AFTER_ID => Page::AfterId(value),
            binary::page::BEFORE_TIME => Page::BeforeTime(value),
            binary::page::AFTER_TIME => Page::AfterTime(value),
            _ => return Err(ErrorKind::Malformed),
        };
        // 0 asks for the default count.
        let limit = (limit != 0).then_some(usize::from(limit));
        let messages = self.history(target, page, limit).await?;
        Ok(messages
            .into_iter()
            .map(|m| Event {
                id: m.id as u64,
                conversation: m.conv as u64,
                seq: m.seq as u64,
                kind: match m.deleted {
                    true => m.kind.code() | binary::kind::DELETED,
                    false => m.kind.code(),
                },
                from: Bytes::copy_from_slice(m.from.as_bytes()),
                to: Bytes::from(m.to),
                time: m.sent_at,
                message: m.body,
            })
            .collect())
    }
}

/// A user as `Users` frames list them (`last_seen` 0: never).
fn user_entry(u: UserStatus) -> UserEntry {
    UserEntry {
        name: Bytes::from(u.name),
        online: u.online,
        last_seen: u.last_seen.unwrap_or(0).max(0) as u64,
    }
}

/// The page a listing asks for: after which name (lossy: a name that is not UTF-8 sorts
/// where its replacement does), and how many (0: a full page).
fn list_page(page: Option<ListPage>) -> (String, usize) {
    let page = page.unwrap_or_default();
    let after = String::from_utf8_lossy(&page.after).into_owned();
    (after, usize::from(page.limit))
}

/// A name sent as bytes: one that is not UTF-8 breaks the name rules.
fn name(bytes: &[u8]) -> Result<String, ErrorKind> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ErrorKind::InvalidName)
}

/// Bytes that passed the name rules, as a `String` (they are UTF-8).
fn lossless(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}
