//! Contacts in the hub: requests, answers, removal, and the contacts-only DM rule.
//!
//! A contact is two rows, one per side (`requested` / `pending`, then `accepted` on both).
//! The other side is told at once if online; otherwise it sees the request in its contact
//! list at its next login.

use std::sync::Arc;

use parley_proto::ErrorKind;

use super::core::{internal, Audience, Core, Effect};
use super::{ContactAction, Map};
use crate::outbound::{ContactChange, Notice, SharedNotice};
use crate::store::{Batch, ContactState, UserId};

impl Core {
    /// `user`'s contacts, loaded on first use.
    fn contacts_of(&mut self, user: UserId) -> anyhow::Result<&mut Map<UserId, ContactState>> {
        if !self.contacts.contains_key(&user) {
            let list = self.store_contacts(user)?;
            self.contacts.insert(user, list.into_iter().collect());
        }
        Ok(self.contacts.get_mut(&user).expect("inserted above"))
    }

    /// Where `user` stands with `other`.
    pub(super) fn contact_state(
        &mut self,
        user: UserId,
        other: UserId,
    ) -> anyhow::Result<Option<ContactState>> {
        Ok(self.contacts_of(user)?.get(&other).copied())
    }

    fn set_contact(
        &mut self,
        user: UserId,
        other: UserId,
        state: Option<ContactState>,
        batch: &mut Batch,
    ) -> anyhow::Result<()> {
        let list = self.contacts_of(user)?;
        match state {
            Some(state) => list.insert(other, state),
            None => list.remove(&other),
        };
        batch.contacts.push((user, other, state));
        Ok(())
    }

    pub(super) fn contact(
        &mut self,
        user: UserId,
        other: &str,
        action: ContactAction,
        batch: &mut Batch,
        effects: &mut Vec<Effect>,
    ) -> Result<(), ErrorKind> {
        let (_, other) = self
            .find_name(other.as_bytes())
            .ok_or(ErrorKind::UserNotFound)?;
        if other == user || other == self.anonymous {
            return Err(ErrorKind::UserNotFound);
        }
        // A blocked user's requests (and their acceptance of one) are refused.
        if matches!(action, ContactAction::Request | ContactAction::Accept)
            && self.blocks(other, user)
        {
            return Err(ErrorKind::Blocked);
        }
        let mine = self.contact_state(user, other).map_err(internal)?;
        use ContactState::*;
        let (me, them, change) = match (action, mine) {
            (ContactAction::Request, Some(Accepted) | Some(Requested)) => return Ok(()),
            // They asked first: asking back accepts.
            (ContactAction::Request, Some(Pending)) | (ContactAction::Accept, Some(Pending)) => {
                (Some(Accepted), Some(Accepted), ContactChange::Accepted)
            }
            (ContactAction::Request, None) => {
                (Some(Requested), Some(Pending), ContactChange::Requested)
            }
            (ContactAction::Accept, Some(Accepted)) => return Ok(()),
            (ContactAction::Decline, Some(Pending)) => (None, None, ContactChange::Declined),
            (ContactAction::Remove, Some(_)) => (None, None, ContactChange::Removed),
            (ContactAction::Accept | ContactAction::Decline, _) | (ContactAction::Remove, None) => {
                return Err(ErrorKind::NotContact)
            }
        };
        self.set_contact(user, other, me, batch).map_err(internal)?;
        self.set_contact(other, user, them, batch)
            .map_err(internal)?;
        if self.cluster.is_some() {
            self.cluster_contact(user, other, change);
        }
        let notice = Notice::Contact {
            name: self.users[&user].clone(),
            change,
        };
        effects.push(Effect::Notify {
            notice: Arc::new(SharedNotice::new(notice)),
            audience: Audience::User(other),
            except: 0,
        });
        Ok(())
    }
}
