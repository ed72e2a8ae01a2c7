//! Moderation and presence requests of the binary protocol (docs/PROTOCOL.md, keys
//! 0x50-0x59) as typed calls on a `Connection`.

use bytes::Bytes;
use parley_proto::binary::{Frame, RoomInfoEntry, UserEntry};

use crate::{Connection, Error};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

impl Connection {
    /// Watches `users` (replacing the list): their presence changes arrive as
    /// `Push::Presence`. Returns their presence now.
    pub async fn watch(&self, users: &[String]) -> Result<Vec<UserEntry>, Error> {
        let users = users.iter().map(|u| b(u)).collect();
        let reply = self.request(|cid| Frame::Watch { cid, users }).await?;
        match reply.into_iter().next() {
            Some(Frame::Users { users, .. }) => Ok(users),
            other => Err(Error::Protocol(format!("expected Users, got {other:?}"))),
        }
    }

    /// Deletes the message at `seq` of `target` (a room, a user, or `*`).
    pub async fn delete_message(&self, target: &str, seq: u64) -> Result<(), Error> {
        let target = b(target);
        self.request(|cid| Frame::DeleteMessage { cid, target, seq })
            .await
            .map(drop)
    }

    /// Sets `room`'s topic (empty: none).
    pub async fn set_topic(&self, room: &str, topic: &str) -> Result<(), Error> {
        let (room, topic) = (b(room), b(topic));
        self.request(|cid| Frame::SetTopic { cid, room, topic })
            .await
            .map(drop)
    }

    /// One of `binary::action` on `user` in `room`.
    pub async fn moderate(&self, room: &str, action: u8, user: &str) -> Result<(), Error> {
        let (room, user) = (b(room), b(user));
        self.request(|cid| Frame::Moderate {
            cid,
            room,
            action,
            user,
        })
        .await
        .map(drop)
    }

    /// `room`'s topic, mode, owner and marks, and this user's rank in it.
    pub async fn room_info(&self, room: &str) -> Result<RoomInfoEntry, Error> {
        let room = b(room);
        let reply = self.request(|cid| Frame::GetRoomInfo { cid, room }).await?;
        match reply.into_iter().next() {
            Some(Frame::RoomInfo { info, .. }) => Ok(info),
            other => Err(Error::Protocol(format!("expected RoomInfo, got {other:?}"))),
        }
    }

    /// Blocks `user` (or stops: `on` false).
    pub async fn block(&self, user: &str, on: bool) -> Result<(), Error> {
        let user = b(user);
        self.request(|cid| Frame::Block { cid, user, on })
            .await
            .map(drop)
    }
}
