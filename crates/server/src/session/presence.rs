//! Who is online and who exists, the same for every protocol.
//!
//! Listings of users and rooms need a login (they show every name with when it was last
//! seen), and come a page at a time: a page is sorted by name, starts after the name a
//! client gives (the last one of its previous page), and holds at most `max_list_page`
//! entries. What a page costs is what it shows: a range of the name index, and one lookup
//! in the hub per name for whether it is online.

use parley_proto::ErrorKind;

use super::{Session, Who};
use crate::hub::Presence;
use crate::store::UserRow;

/// A user with their presence, as listings and searches show them.
pub(super) struct UserStatus {
    pub name: String,
    pub online: bool,
    /// When their last session ended, Unix ms; `None`: never (or not known).
    pub last_seen: Option<i64>,
}

impl Session {
    /// Who is online: logged-in users, sorted, and how many anonymous sessions are counted.
    pub(super) async fn who(&self) -> Presence {
        self.shared.hub.who().await
    }

    /// A page of the users: those after `after` ("": from the first), at most `limit` (0:
    /// as many as a page holds), each with whether they are online and when last seen.
    pub(super) async fn users(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<UserStatus>, ErrorKind> {
        self.acting(Who::Members)?;
        let limit = self.page_size(limit);
        let users = self.shared.reader.users(after.to_string(), limit).await;
        let users = users.map_err(|_| ErrorKind::Internal)?;
        Ok(self.with_presence(users).await)
    }

    /// `users` as listings show them: with whether each is online, asked of the hub for
    /// these names only.
    pub(super) async fn with_presence(&self, users: Vec<UserRow>) -> Vec<UserStatus> {
        let names = users.iter().map(|u| u.name.clone()).collect();
        let online = self.shared.hub.online(names).await;
        users
            .into_iter()
            .enumerate()
            .map(|(i, u)| UserStatus {
                online: online.get(i).copied().unwrap_or(false),
                name: u.name,
                last_seen: u.last_seen.filter(|&ms| ms > 0),
            })
            .collect()
    }

    /// How many entries a page of a listing holds: `limit`, at most `max_list_page` (0:
    /// that many).
    pub(super) fn page_size(&self, limit: usize) -> usize {
        let max = self.shared.config.max_list_page.max(1);
        match limit {
            0 => max,
            n => n.min(max),
        }
    }
}
