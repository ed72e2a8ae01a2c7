//! `users list | show | create | reset-password | disable | enable | delete`.
//!
//! Reads go to the database's read pool; every change goes through the hub, which keeps
//! its name index, its online sessions and its rooms in step with what it stores.

use parley_proto::{validate_name, ErrorKind};
use serde_json::{json, Value};

use super::{Answer, Ctx, Failure};
use crate::auth::PASSWORD_LEN;
use crate::hub::{AccountChange, AdminAnswer, AdminOp};
use crate::store::admin::UserRow;
use crate::store::ContactState;

/// Every user.
pub async fn list(ctx: &Ctx) -> Answer {
    let users = ctx.shared.reader.admin_users().await?;
    Ok(serde_json::to_value(users)?)
}

/// One user: the row, devices and tokens, rooms, contacts, sessions online.
pub async fn show(ctx: &Ctx, name: String) -> Answer {
    let user = find(ctx, &name).await?;
    let id = user.id;
    let reader = &ctx.shared.reader;
    let devices = reader.admin_devices(id).await?;
    let rooms = reader.admin_rooms_of(id).await?;
    let contacts = reader.admin_contact_counts(id).await?;
    let contacts: serde_json::Map<String, Value> = contacts
        .into_iter()
        .filter_map(|(state, n)| Some((ContactState::from_i64(state)?.name().into(), n.into())))
        .collect();
    let sessions = match ctx.shared.hub.admin(AdminOp::Sessions).await {
        Ok(AdminAnswer::Sessions(all)) => all.into_iter().filter(|s| s.user == name).collect(),
        _ => Vec::new(),
    };
    Ok(json!({
        "user": user,
        "devices": devices,
        "rooms": rooms,
        "contacts": contacts,
        "sessions": sessions,
    }))
}

/// Creates an account with `password` (or gives one to a password-less name that is not
/// online, as `REGISTER` does).
pub async fn create(ctx: &Ctx, name: String, password: String) -> Answer {
    validate_name(name.as_bytes(), ctx.shared.config.max_name_bytes)
        .map_err(|e| Failure(format!("invalid name: {e}")))?;
    let hash = hash(ctx, password).await?;
    match ctx.shared.hub.register(name.clone(), hash).await {
        Ok(()) => Ok(json!({ "created": name })),
        Err(ErrorKind::AlreadyLoggedIn) => Err(Failure(format!("{name} is taken"))),
        Err(kind) => Err(refused(kind)),
    }
}

/// Sets a new password: every token of the user is revoked and its sessions end.
pub async fn reset_password(ctx: &Ctx, name: String, password: String) -> Answer {
    let user = find(ctx, &name).await?;
    live(&user)?;
    let hash = hash(ctx, password).await?;
    let change = AccountChange::Password { hash, keep: 0 };
    ctx.shared
        .hub
        .account(user.id, change)
        .await
        .map_err(refused)?;
    Ok(json!({ "reset": name }))
}

/// Disables (logins refused, sessions ended at once) or enables a user.
pub async fn set_disabled(ctx: &Ctx, name: String, disabled: bool) -> Answer {
    let op = AdminOp::SetDisabled {
        name: name.clone(),
        disabled,
    };
    ctx.shared.hub.admin(op).await.map_err(refused)?;
    Ok(json!({ "user": name, "disabled": disabled }))
}

/// Deletes a user (see `Core::delete_user`: its messages are kept).
pub async fn delete(ctx: &Ctx, name: String) -> Answer {
    let op = AdminOp::DeleteUser { name: name.clone() };
    ctx.shared.hub.admin(op).await.map_err(refused)?;
    Ok(json!({ "deleted": name, "messages": "kept" }))
}

/// The user called `name`.
pub(super) async fn find(ctx: &Ctx, name: &str) -> Result<UserRow, Failure> {
    let user = ctx.shared.reader.admin_user(name.to_string()).await?;
    user.ok_or_else(|| Failure(format!("no user {name}")))
}

/// Refuses to change a deleted user.
pub(super) fn live(user: &UserRow) -> Result<(), Failure> {
    match user.deleted {
        true => Err(Failure(format!("{} was deleted", user.name))),
        false => Ok(()),
    }
}

async fn hash(ctx: &Ctx, password: String) -> Result<String, Failure> {
    if !PASSWORD_LEN.contains(&password.len()) {
        return Err(Failure(format!(
            "a password has {} to {} bytes",
            PASSWORD_LEN.start(),
            PASSWORD_LEN.end()
        )));
    }
    Ok(ctx.shared.passwords.hash(password).await?)
}

/// The operator's words for the hub's refusals.
pub(super) fn refused(kind: ErrorKind) -> Failure {
    Failure(
        match kind {
            ErrorKind::UserNotFound => "no such user",
            ErrorKind::RoomNotFound => "no such room",
            ErrorKind::ShuttingDown => "the server is shutting down",
            ErrorKind::Internal => "the store failed (see the server's log)",
            _ => "refused",
        }
        .to_string(),
    )
}
