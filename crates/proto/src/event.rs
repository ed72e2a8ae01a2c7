//! What the server answers, whatever protocol the client spoke.

/// The outcome of one request. Each codec maps it to its own bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Error(ErrorKind),
}

/// Why a request failed. Codecs map these to their own error codes or words; the set is
/// protocol-neutral so every protocol reports the same failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Something went wrong on the server (the store failed); the request had no effect.
    Internal,
    /// The named recipient has never logged in.
    UserNotFound,
    /// The name is online already (elsewhere).
    AlreadyLoggedIn,
    /// This connection is logged in already: a second login on it is refused, whatever
    /// the name (binary says so with the seed's 0x04, as for `AlreadyLoggedIn`).
    LoggedInHere,
    /// The request needs a logged-in session.
    NotLoggedIn,
    /// The request claims to come from a user other than the session's.
    Forbidden,
    /// The name is empty, too long, not UTF-8, or has spaces or control characters.
    InvalidName,
    /// The request could not be parsed.
    Malformed,
    /// The command (or protocol version) is not known.
    UnknownCommand,
    /// The server is shutting down and accepts no new work.
    ShuttingDown,
    /// The sender is not a member of that room.
    NotMember,
    /// No room has that name.
    RoomNotFound,
    /// A line or message over the configured limit.
    TooLong,
    /// Text that had to be UTF-8 was not.
    InvalidUtf8,
    /// Wrong name, password or token (the same error for each, on purpose).
    Unauthorized,
    /// Too many messages too fast: this one was refused, nothing else happened.
    RateLimited,
    /// Too many failed logins for this name or address: try again later.
    TooManyAttempts,
    /// A password shorter than 8 or longer than 128 bytes.
    InvalidPassword,
    /// The server only allows DMs between accepted contacts, and these are not.
    NotContact,
    /// A file upload or download that does not fit: wrong offset, unknown upload, too big.
    BadTransfer,
    /// The uploaded bytes do not have the announced SHA-256 (or size): rejected.
    Corrupt,
    /// This user (or this address) has created as many rooms as the server allows
    /// (`max_rooms_per_user`, `max_rooms_per_address`): joining existing rooms still works.
    TooManyRooms,
    /// A password sent over plain TCP while `require_tls_for_passwords` is on: refused
    /// unchecked (and the client should consider it exposed).
    TlsRequired,
    /// Only the room's operators (or its owner, or a server operator) may do that, or the
    /// user acted on ranks as high as the one acting; deleting another's message too.
    NotOperator,
    /// The user is banned from that room.
    Banned,
    /// The user is muted in that room: their message was not sent.
    Muted,
    /// The room is invite-only and the user was not invited.
    InviteOnly,
    /// The recipient blocks the sender: no DMs or contact requests from them.
    Blocked,
    /// No message has that place in that conversation (or it is not one a user can
    /// delete).
    MessageNotFound,
    /// This server cannot do that in its configuration (moderation in cluster mode, whose
    /// PostgreSQL store does not keep it yet): refused rather than forgotten.
    Unsupported,
}
