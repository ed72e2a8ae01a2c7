//! Who is online and who exists, the same for every protocol.

use parley_proto::ErrorKind;

use super::Session;
use crate::hub::Presence;

/// A user with their presence, as listings and searches show them.
pub(super) struct UserStatus {
    pub name: String,
    pub online: bool,
    /// When their last session ended (or the account was created), Unix ms; 0 if unknown.
    pub last_seen: i64,
}

impl Session {
    /// Who is online: logged-in users, sorted, and how many anonymous sessions are counted.
    pub(super) async fn who(&self) -> Presence {
        self.shared.hub.who().await
    }

    /// Every user, with whether they are online and when they were last seen.
    pub(super) async fn users(&self) -> Result<Vec<UserStatus>, ErrorKind> {
        let online = self.who().await.users;
        let users = self.shared.reader.users().await;
        let users = users.map_err(|_| ErrorKind::Internal)?;
        Ok(users
            .into_iter()
            .map(|u| UserStatus {
                online: online.iter().any(|o| **o == *u.name),
                name: u.name,
                last_seen: u.last_seen.unwrap_or(0),
            })
            .collect())
    }
}
