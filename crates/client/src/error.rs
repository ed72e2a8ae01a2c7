//! What can go wrong talking to a server, in terms a caller can act on: the server said no
//! (with its code), the connection went away (try again), or something local failed.

use parley_proto::binary::code;

/// An error from a request to the server.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The server answered with a code other than OK. Nothing happened on its side.
    #[error("{}", describe(*.0))]
    Refused(u16),
    /// The connection ended before the answer came: the request may or may not have been
    /// carried out (see `Link::send`, which finds out).
    #[error("the connection to the server was lost")]
    Disconnected,
    /// The connection could not be made (refused, unreachable, TLS handshake failed).
    #[error("{0}")]
    Connect(String),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local failure: a file that cannot be read or written, a download that does not
    /// match its SHA-256.
    #[error("{0}")]
    Local(String),
    /// The link was stopped (by `Link::close`, or for good after a failed login).
    #[error("the link to the server is closed")]
    Closed,
}

impl Error {
    /// The server's response code, when it refused.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Refused(code) => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again later, on a new connection, could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Disconnected | Error::Connect(_))
            || matches!(self, Error::Refused(c) if *c == code::SHUTTING_DOWN)
    }

    /// Whether the server refused the credentials (wrong password, revoked token, throttled).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            Error::Refused(code::UNAUTHORIZED | code::TOO_MANY_ATTEMPTS | code::INVALID_PASSWORD)
        )
    }
}

/// A response code in words, for people.
pub fn describe(c: u16) -> &'static str {
    match c {
        code::OK => "ok",
        code::ERROR => "the server failed to do it (try again)",
        code::USER_NOT_FOUND => "no such user",
        code::USER_ALREADY_LOGGED => "already logged in (that name or device is in use)",
        code::NOT_LOGGED_IN => "not logged in",
        code::FORBIDDEN => "not allowed",
        code::INVALID_NAME => "invalid name (1-32 bytes, no spaces or control characters)",
        code::MALFORMED => "the server could not parse the request",
        code::UNKNOWN_COMMAND => "the server does not know this request",
        code::SHUTTING_DOWN => "the server is shutting down",
        code::NOT_MEMBER => "not a member of that room",
        code::ROOM_NOT_FOUND => "no such room",
        code::TOO_LONG => "too long",
        code::INVALID_UTF8 => "not valid UTF-8",
        code::RATE_LIMITED => "too many messages too fast: not sent",
        code::UNAUTHORIZED => "wrong name or password, or the device token is no longer valid",
        code::TOO_MANY_ATTEMPTS => "too many failed logins: wait a while",
        code::INVALID_PASSWORD => "a password must have 8 to 128 bytes",
        code::NOT_CONTACT => "not a contact (this server only allows DMs between contacts)",
        code::BAD_TRANSFER => "file transfer refused (unknown or too large file)",
        code::CORRUPT => "the file's bytes do not match its SHA-256",
        _ => "refused by the server",
    }
}
