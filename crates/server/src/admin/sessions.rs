//! `sessions list | kick`: who is online, and ending sessions.

use serde_json::json;

use super::users::refused;
use super::{Answer, Ctx, Failure};
use crate::hub::{AdminAnswer, AdminOp, Whom};
use crate::outbound::Kill;

/// Every logged-in session: user, device, protocol, peer, since, and whether it is still
/// catching up.
pub async fn list(ctx: &Ctx) -> Answer {
    match ctx.shared.hub.admin(AdminOp::Sessions).await {
        Ok(AdminAnswer::Sessions(list)) => Ok(serde_json::to_value(list)?),
        Ok(_) => Err(Failure("unexpected answer".into())),
        Err(kind) => Err(refused(kind)),
    }
}

/// Ends sessions: those of `user` (on `device` only, if given), or the one with id
/// `session`. They are told why where the protocol can, and may log in again.
pub async fn kick(
    ctx: &Ctx,
    user: Option<String>,
    device: Option<String>,
    session: Option<u64>,
) -> Answer {
    let target = match (user, session) {
        (Some(name), None) => Whom::User { name, device },
        (None, Some(id)) if device.is_none() => Whom::Sessions(vec![id]),
        _ => return Err(Failure("name a user (and a device), or a session".into())),
    };
    let op = AdminOp::End {
        target,
        why: Kill::Kicked,
    };
    match ctx.shared.hub.admin(op).await {
        Ok(AdminAnswer::Ended(n)) => Ok(json!({ "ended": n })),
        Ok(_) => Err(Failure("unexpected answer".into())),
        Err(kind) => Err(refused(kind)),
    }
}
