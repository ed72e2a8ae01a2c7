//! `rooms list | members | delete`.

use serde_json::json;

use super::users::refused;
use super::{Answer, Ctx, Failure};
use crate::hub::AdminOp;

/// Every room with its member count and how many are online.
pub async fn list(ctx: &Ctx) -> Answer {
    // An operator's list is whole (clients page theirs).
    let rooms = ctx.shared.hub.rooms(String::new(), usize::MAX).await;
    let rooms: Vec<_> = rooms
        .into_iter()
        .map(|r| json!({"name": &*r.name, "members": r.members, "online": r.online}))
        .collect();
    Ok(rooms.into())
}

/// A room's members, with whether each is online.
pub async fn members(ctx: &Ctx, room: String) -> Answer {
    let members = ctx.shared.hub.members(room.clone()).await;
    let members = members.map_err(|_| Failure(format!("no room {room}")))?;
    let members: Vec<_> = members
        .into_iter()
        .map(|(name, online)| json!({"name": &*name, "online": online}))
        .collect();
    Ok(members.into())
}

/// Deletes a room (see `Core::delete_room`).
pub async fn delete(ctx: &Ctx, room: String) -> Answer {
    let op = AdminOp::DeleteRoom { name: room.clone() };
    ctx.shared.hub.admin(op).await.map_err(refused)?;
    Ok(json!({ "deleted": room }))
}
