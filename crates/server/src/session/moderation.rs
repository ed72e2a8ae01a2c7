//! Moderation and presence, the same for every protocol: an operator's actions in a room,
//! a room's details, deleting a message, blocking a user, and watching users' presence.
//!
//! The rules themselves (who outranks whom, what a ban or a mute refuses) are the hub's
//! (`hub/moderation.rs`), decided by its one writer; here are the checks a request needs
//! before it goes there, and the store reads a deletion needs (which message, whose).

use std::sync::Arc;

use parley_proto::{validate_name, ErrorKind};

use super::Session;
use crate::hub::{Doomed, Identity, RenderWatch, RoomAction, RoomDetails};
use crate::outbound::Item;
use crate::store::{MessageKind, Resolved};

impl Session {
    /// The session's user, for a request only a logged-in session may make.
    fn identity(&self) -> Result<Identity, ErrorKind> {
        match &self.login {
            Some((identity, _)) => Ok(*identity),
            None => Err(ErrorKind::NotLoggedIn),
        }
    }

    /// Does `action` in `room` as this session's user.
    pub(super) async fn moderate(
        &mut self,
        room: &str,
        action: RoomAction,
    ) -> Result<(), ErrorKind> {
        let identity = self.identity()?;
        let room = self.room_name(room).map_err(|_| ErrorKind::RoomNotFound)?;
        if let RoomAction::Topic(Some(topic)) = &action {
            if topic.len() > self.shared.config.max_topic_bytes {
                return Err(ErrorKind::TooLong);
            }
        }
        // The session's own requests still with the hub come first (a JOIN, then a KICK).
        self.settle().await;
        let hub = &self.shared.hub;
        hub.moderate(Some(self.link.clone()), Some(identity), room, action)
            .await
    }

    /// `room`'s topic, mode, owner and marks, and this user's rank in it.
    pub(super) async fn room_details(&mut self, room: &str) -> Result<RoomDetails, ErrorKind> {
        let identity = self.identity()?;
        let room = self.room_name(room).map_err(|_| ErrorKind::RoomNotFound)?;
        self.settle().await;
        self.shared
            .hub
            .room_details(room, Some(identity.user))
            .await
    }

    /// Deletes the message at `seq` of `target` (a room, a user, or `*`): the author may,
    /// and so may an operator of its room or a server operator (the hub decides). Answered
    /// once the deletion is stored; a message deleted already is answered OK again.
    pub(super) async fn delete_message(&mut self, target: &str, seq: i64) -> Result<(), ErrorKind> {
        let identity = self.identity()?;
        if seq < 1 {
            return Err(ErrorKind::MessageNotFound);
        }
        self.settle().await;
        let reader = &self.shared.reader;
        let resolved = reader.resolve(identity.user, target.to_string()).await;
        let (conv, kind) = match resolved.map_err(|_| ErrorKind::Internal)? {
            Resolved::Conv(conv, kind) => (conv, kind),
            // Not a member: only a server operator may act there (the hub says).
            Resolved::NotMember(conv) => (conv, parley_proto::ConversationKind::Room),
            Resolved::Empty => return Err(ErrorKind::MessageNotFound),
            Resolved::NotFound => return Err(ErrorKind::UserNotFound),
        };
        let message = reader.message_at(conv, seq).await;
        let message = message.map_err(|_| ErrorKind::Internal)?;
        let Some(message) = message.filter(|m| !matches!(m.kind, MessageKind::Tombstone(..)))
        else {
            return Err(ErrorKind::MessageNotFound);
        };
        let doomed = Doomed {
            conv,
            kind,
            target: target.to_string(),
            id: message.id,
            seq: message.seq,
            author: message.sender,
        };
        let hub = &self.shared.hub;
        hub.delete_message(self.link.clone(), identity, doomed)
            .await
    }

    /// Starts (`on`) or stops blocking `user`: no DMs or contact requests from them.
    pub(super) async fn block(&mut self, user: &str, on: bool) -> Result<(), ErrorKind> {
        let identity = self.identity()?;
        let max = self.shared.config.max_name_bytes;
        let user = validate_name(user.as_bytes(), max).map_err(|_| ErrorKind::UserNotFound)?;
        self.shared
            .hub
            .block(identity.user, user.to_string(), on)
            .await
    }

    /// The users this user blocks, sorted.
    pub(super) async fn blocks(&mut self) -> Result<Vec<Arc<str>>, ErrorKind> {
        let identity = self.identity()?;
        self.settle().await;
        Ok(self.shared.hub.blocks(identity.user).await)
    }

    /// Makes `users` this session's watch list: their presence is pushed from now on. The
    /// answer, `render`ed from the watched users that exist with their presence now, is
    /// queued in order with those pushes. A list longer than `max_watched_users` is refused
    /// (not cut: the client would believe it watched users it does not).
    pub(super) async fn watch(
        &mut self,
        users: Vec<String>,
        render: impl FnOnce(Vec<WatchedUser>) -> Item + Send + 'static,
    ) -> Result<(), ErrorKind> {
        let identity = self.identity()?;
        if users.len() > self.shared.config.max_watched_users {
            return Err(ErrorKind::TooLong);
        }
        // When those offline were last seen: the store knows (the hub only who is online).
        let seen = self.shared.reader.last_seen(&users).await;
        let seen = seen.map_err(|_| ErrorKind::Internal)?;
        let render: RenderWatch = Box::new(move |found| {
            let users = found
                .iter()
                .map(|u| WatchedUser {
                    name: u.name.clone(),
                    online: u.online,
                    last_seen: match u.online {
                        true => 0,
                        false => seen.get(&*u.name).copied().unwrap_or(0),
                    },
                })
                .collect();
            render(users)
        });
        self.acquire_inflight().await;
        self.shared
            .hub
            .watch(self.link.clone(), identity.user, users, render);
        Ok(())
    }
}

/// A watched user as the answer to a watch shows them.
pub(super) struct WatchedUser {
    pub name: Arc<str>,
    pub online: bool,
    /// Unix ms of the end of their last session; 0 while online, or if never seen.
    pub last_seen: i64,
}

/// The action a word of the text or JSON protocols names, on `user`.
pub(super) fn action(word: &str, user: String) -> Option<RoomAction> {
    Some(match word {
        "invite" => RoomAction::Invite(user),
        "kick" => RoomAction::Kick(user),
        "ban" => RoomAction::Ban(user),
        "unban" => RoomAction::Unban(user),
        "mute" => RoomAction::Mute(user),
        "unmute" => RoomAction::Unmute(user),
        "op" => RoomAction::Op(user),
        "deop" => RoomAction::Deop(user),
        _ => return None,
    })
}
