//! What a client asks for, whatever protocol it spoke.

use bytes::Bytes;

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

/// A request from a client, decoded from any wire protocol.
///
/// The hub and the sessions only ever see these: no command carries bytes of a particular
/// wire format, so adding a protocol never touches the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Log in under `name` (password-less, as seed 000 and seed 002 do).
    Login { name: String },
    /// Send `body` to `to`. `claimed_from` is what the client said the sender was (the binary
    /// protocol carries it); it is checked against the session's user, never trusted.
    /// `sent_at` is the client's own timestamp, passed through to recipients untouched.
    Send {
        to: Target,
        body: Bytes,
        claimed_from: Option<Bytes>,
        sent_at: Option<u64>,
    },
    /// A request that only wants an OK back (the binary protocol's correlation-id test, 0x09).
    Ping,
}
