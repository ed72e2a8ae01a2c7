//! Search and contacts (keys 0x30–0x35): finding users by prefix, asking, answering and
//! removing contacts, and the contact list with presence.

use bytes::Bytes;

use super::field::struct_field;

/// The contact frames, for `define_frames!` (see `binary/table.rs`).
macro_rules! contacts_frames {
    ([$next:ident $($rest:ident)*] $($done:tt)*) => { $next! { [$($rest)*] $($done)*
        /// Users whose names start with `prefix` (answered with a `Users` frame).
        Search = SEARCH 0x30 { prefix: Bytes, limit: u16 },
        ContactRequest = CONTACT_REQUEST 0x31 { name: Bytes },
        /// `accept` 1: accept the other's request; 0: decline it.
        ContactAnswer = CONTACT_ANSWER 0x32 { name: Bytes, accept: u8 },
        ContactRemove = CONTACT_REMOVE 0x33 { name: Bytes },
        ListContacts = LIST_CONTACTS 0x34 {},
        Contacts = CONTACTS 0x35 { contacts: Vec<ContactEntry> },
    } };
}
pub(super) use contacts_frames;

/// Contact states in a `Contacts` list.
pub mod contact {
    /// This user asked the other.
    pub const REQUESTED: u8 = 1;
    /// The other asked this user.
    pub const PENDING: u8 = 2;
    pub const ACCEPTED: u8 = 3;
}

/// A contact in a `Contacts` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactEntry {
    pub name: Bytes,
    /// One of `contact::*`.
    pub state: u8,
    pub online: bool,
    pub last_seen: u64,
}

struct_field!(ContactEntry {
    name,
    state,
    online,
    last_seen
});
