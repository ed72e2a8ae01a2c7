//! Contacts and user search, the same for every protocol.

use parley_proto::{validate_name, ErrorKind};

use super::presence::UserStatus;
use super::{Session, Who};
use crate::hub::ContactAction;
use crate::store::ContactState;

/// A contact as listed.
pub(super) struct Contact {
    pub name: String,
    pub state: ContactState,
    pub online: bool,
    /// Unix ms, 0 if unknown.
    pub last_seen: i64,
}

impl Session {
    /// Users whose names start with `prefix`, at most `limit` (and `max_search_results`):
    /// like every listing, for logged-in users only, costing what it shows.
    pub(super) async fn search_users(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<UserStatus>, ErrorKind> {
        self.acting(Who::Members)?;
        let limit = limit.clamp(1, self.shared.config.max_search_results);
        let found = self.shared.reader.search(prefix.to_string(), limit).await;
        let found = found.map_err(|_| ErrorKind::Internal)?;
        Ok(self.with_presence(found).await)
    }

    pub(super) async fn contact_action(
        &mut self,
        name: &str,
        action: ContactAction,
    ) -> Result<(), ErrorKind> {
        let Some((identity, _)) = &self.login else {
            return Err(ErrorKind::NotLoggedIn);
        };
        let user = identity.user;
        let name = validate_name(name.as_bytes(), self.shared.config.max_name_bytes)
            .map_err(|_| ErrorKind::UserNotFound)?;
        self.shared
            .hub
            .contact(user, name.to_string(), action)
            .await
    }

    pub(super) async fn contact_list(&self) -> Result<Vec<Contact>, ErrorKind> {
        let Some((identity, _)) = &self.login else {
            return Err(ErrorKind::NotLoggedIn);
        };
        self.settle().await;
        let list = self.shared.reader.contacts(identity.user).await;
        let list = list.map_err(|_| ErrorKind::Internal)?;
        let names = list.iter().map(|(name, ..)| name.clone()).collect();
        let online = self.shared.hub.online(names).await;
        Ok(list
            .into_iter()
            .enumerate()
            .map(|(i, (name, state, seen))| Contact {
                online: online.get(i).copied().unwrap_or(false),
                name,
                state,
                last_seen: seen.unwrap_or(0),
            })
            .collect())
    }
}

/// The action a word names (`add`/`request`, `accept`, `decline`, `remove`).
pub(super) fn action(word: &str) -> Option<ContactAction> {
    match word {
        "add" | "request" => Some(ContactAction::Request),
        "accept" => Some(ContactAction::Accept),
        "decline" => Some(ContactAction::Decline),
        "remove" => Some(ContactAction::Remove),
        _ => None,
    }
}
