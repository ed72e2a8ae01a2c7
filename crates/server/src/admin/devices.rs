//! `devices list | revoke`: a user's devices with their tokens, and revoking them.

use serde_json::json;

use super::users::{find, live, refused};
use super::{Answer, Ctx, Failure};
use crate::hub::{AccountChange, AdminOp, Whom};
use crate::outbound::Kill;
use crate::store::Revoke;

/// The devices of a user, each with its tokens.
pub async fn list(ctx: &Ctx, name: String) -> Answer {
    let user = find(ctx, &name).await?;
    let id = user.id;
    let devices = ctx.shared.reader.admin_devices(id).await?;
    Ok(serde_json::to_value(devices)?)
}

/// Revokes every token of one device of a user (of every device without `device`), and
/// ends the sessions on it.
pub async fn revoke(ctx: &Ctx, name: String, device: Option<String>) -> Answer {
    let user = find(ctx, &name).await?;
    live(&user)?;
    let id = user.id;
    let revoke = match &device {
        None => Revoke::AllBut(id, 0),
        Some(device) => {
            let devices = ctx.shared.reader.admin_devices(id).await?;
            let found = devices.iter().find(|d| &d.name == device);
            let found = found.ok_or_else(|| Failure(format!("{name} has no device {device}")))?;
            Revoke::Device(id, found.id)
        }
    };
    let hub = &ctx.shared.hub;
    hub.account(id, AccountChange::Revoke(revoke))
        .await
        .map_err(refused)?;
    let target = Whom::User {
        name: name.clone(),
        device: device.clone(),
    };
    let end = AdminOp::End {
        target,
        why: Kill::Kicked,
    };
    // A device that never logged in since the server started is not in the hub's cache:
    // then it has no session to end either.
    let ended = match hub.admin(end).await {
        Ok(crate::hub::AdminAnswer::Ended(n)) => n,
        _ => 0,
    };
    Ok(json!({ "user": name, "device": device, "revoked": true, "sessions_ended": ended }))
}
