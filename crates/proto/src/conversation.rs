//! Where a message goes, and the kinds of conversation it can belong to, whatever protocol
//! the sender spoke.

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A direct message to one user, by name.
    User(String),
    /// A message to the members of a room.
    Room(String),
    /// One message to several users, each in their direct conversation with the sender;
    /// stored for all of them or for none.
    Users(Vec<String>),
    /// A message to everyone online (seed 002 `MSG`, seed 001 `MESSAGE`).
    Everyone,
}

/// The kind of conversation a stored message belongs to. The same numbers are the binary
/// protocol's event kinds (`binary::kind`) and the store's `conversations.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConversationKind {
    /// Two users (or one user with themself).
    Direct = 1,
    Room = 2,
    /// The one public log of messages to everyone.
    Broadcast = 3,
}

impl ConversationKind {
    /// The kind numbered `code`, if any.
    pub fn from_code(code: u8) -> Option<ConversationKind> {
        match code {
            1 => Some(ConversationKind::Direct),
            2 => Some(ConversationKind::Room),
            3 => Some(ConversationKind::Broadcast),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The name JSON events carry (`"kind"`).
    pub fn name(self) -> &'static str {
        match self {
            ConversationKind::Direct => "dm",
            ConversationKind::Room => "room",
            ConversationKind::Broadcast => "broadcast",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's number is the binary protocol's, and reads back as the same kind.
    #[test]
    fn codes_are_the_binary_protocols_and_round_trip() {
        let kinds = [
            (ConversationKind::Direct, crate::binary::kind::DIRECT),
            (ConversationKind::Room, crate::binary::kind::ROOM),
            (ConversationKind::Broadcast, crate::binary::kind::BROADCAST),
        ];
        for (kind, code) in kinds {
            assert_eq!(kind.code(), code);
            assert_eq!(ConversationKind::from_code(code), Some(kind));
        }
        assert_eq!(ConversationKind::from_code(0), None);
        assert_eq!(ConversationKind::from_code(4), None);
    }
}
