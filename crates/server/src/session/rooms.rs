//! Rooms, the same for every protocol: joining, leaving, listing rooms and their members.

use parley_proto::{validate_name, ErrorKind};

use super::{Session, Who};
use crate::hub::{Actor, MemberList, RoomInfo};
use crate::outbound::Item;

impl Session {
    /// Joins each of `rooms` in turn (creating it), after leaving `leave` if given (seed
    /// 004: one room at a time); stops at the first refusal. `ok`, the answer to the whole
    /// request, is queued by the hub once the last join is made, before any message of the
    /// room (written here, the room's first messages could overtake it).
    pub(super) async fn join(
        &mut self,
        rooms: &[String],
        mut leave: Option<String>,
        who: Who,
        mut ok: Option<Item>,
    ) -> Result<(), ErrorKind> {
        let actor = self.acting(who)?;
        for (i, room) in rooms.iter().enumerate() {
            let room = self.room_name(room)?;
            let hub = &self.shared.hub;
            let ok = if i + 1 == rooms.len() {
                ok.take()
            } else {
                None
            };
            hub.join(self.link.clone(), actor, room, leave.take(), ok)
                .await?;
        }
        if let Some(ok) = ok {
            // No room to join: the answer is the session's to write.
            self.say(ok).await;
        }
        Ok(())
    }

    /// Leaves each of `rooms` in turn; stops at the first refusal.
    pub(super) async fn leave(&mut self, rooms: &[String], who: Who) -> Result<(), ErrorKind> {
        let actor = self.acting(who)?;
        for room in rooms {
            let room = self.room_name(room)?;
            let hub = &self.shared.hub;
            hub.leave(self.link.clone(), actor, room).await?;
        }
        Ok(())
    }

    /// After `/nick`, a user in a room (seed 004) stays in it under the new name: it
    /// leaves as who it `was` (the anonymous user, or its old nick) and joins as who it is.
    pub(super) async fn renamed_in_room(&mut self, was: Actor, room: String) {
        let hub = &self.shared.hub;
        let _ = hub.leave(self.link.clone(), was, room.clone()).await;
        let _ = hub
            .join(self.link.clone(), self.actor(), room, None, None)
            .await;
    }

    /// A page of the rooms, sorted by name, with their member counts: those after `after`
    /// ("": from the first), at most `limit` (see `presence` for pages). `who` may ask:
    /// seed 004's `/rooms` works before `/nick`; everyone else lists rooms once logged in.
    pub(super) async fn rooms(
        &self,
        after: &str,
        limit: usize,
        who: Who,
    ) -> Result<Vec<RoomInfo>, ErrorKind> {
        self.acting(who)?;
        let limit = self.page_size(limit);
        Ok(self.shared.hub.rooms(after.to_string(), limit).await)
    }

    /// A room's members, sorted, each with whether they are online.
    pub(super) async fn members(&self, room: &str) -> Result<MemberList, ErrorKind> {
        self.shared.hub.members(room.to_string()).await
    }

    /// A room name that follows the name rules.
    pub(super) fn room_name(&self, room: &str) -> Result<String, ErrorKind> {
        validate_name(room.as_bytes(), self.shared.config.max_name_bytes)
            .map(str::to_string)
            .map_err(|_| ErrorKind::InvalidName)
    }
}
