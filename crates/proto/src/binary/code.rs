//! Response codes. 0x01, 0x03 and 0x04 are the seed's; the rest are parley's, chosen so that
//! no seed client mistakes them for one of its own.

use crate::ErrorKind;

pub const OK: u16 = 0x01;
/// A server-side failure (the seed reserved 0x02 for a generic error).
pub const ERROR: u16 = 0x02;
pub const USER_NOT_FOUND: u16 = 0x03;
pub const USER_ALREADY_LOGGED: u16 = 0x04;
pub const NOT_LOGGED_IN: u16 = 0x05;
pub const FORBIDDEN: u16 = 0x06;
pub const INVALID_NAME: u16 = 0x07;
pub const MALFORMED: u16 = 0x08;
pub const UNKNOWN_COMMAND: u16 = 0x09;
pub const SHUTTING_DOWN: u16 = 0x0A;
pub const NOT_MEMBER: u16 = 0x0B;
pub const ROOM_NOT_FOUND: u16 = 0x0C;
pub const TOO_LONG: u16 = 0x0D;
pub const INVALID_UTF8: u16 = 0x0E;
pub const RATE_LIMITED: u16 = 0x0F;
pub const UNAUTHORIZED: u16 = 0x10;
pub const TOO_MANY_ATTEMPTS: u16 = 0x11;
pub const INVALID_PASSWORD: u16 = 0x12;
pub const NOT_CONTACT: u16 = 0x13;
pub const BAD_TRANSFER: u16 = 0x14;
pub const CORRUPT: u16 = 0x15;
pub const TOO_MANY_ROOMS: u16 = 0x16;
pub const TLS_REQUIRED: u16 = 0x17;
pub const NOT_OPERATOR: u16 = 0x18;
pub const BANNED: u16 = 0x19;
pub const MUTED: u16 = 0x1A;
pub const INVITE_ONLY: u16 = 0x1B;
pub const BLOCKED: u16 = 0x1C;
pub const MESSAGE_NOT_FOUND: u16 = 0x1D;
pub const UNSUPPORTED: u16 = 0x1E;

/// The response code that reports `kind`.
pub fn error_code(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::Internal => ERROR,
        ErrorKind::UserNotFound => USER_NOT_FOUND,
        ErrorKind::AlreadyLoggedIn | ErrorKind::LoggedInHere => USER_ALREADY_LOGGED,
        ErrorKind::NotLoggedIn => NOT_LOGGED_IN,
        ErrorKind::Forbidden => FORBIDDEN,
        ErrorKind::InvalidName => INVALID_NAME,
        ErrorKind::Malformed => MALFORMED,
        ErrorKind::UnknownCommand => UNKNOWN_COMMAND,
        ErrorKind::ShuttingDown => SHUTTING_DOWN,
        ErrorKind::NotMember => NOT_MEMBER,
        ErrorKind::RoomNotFound => ROOM_NOT_FOUND,
        ErrorKind::TooLong => TOO_LONG,
        ErrorKind::InvalidUtf8 => INVALID_UTF8,
        ErrorKind::RateLimited => RATE_LIMITED,
        ErrorKind::Unauthorized => UNAUTHORIZED,
        ErrorKind::TooManyAttempts => TOO_MANY_ATTEMPTS,
        ErrorKind::InvalidPassword => INVALID_PASSWORD,
        ErrorKind::NotContact => NOT_CONTACT,
        ErrorKind::BadTransfer => BAD_TRANSFER,
        ErrorKind::Corrupt => CORRUPT,
        ErrorKind::TooManyRooms => TOO_MANY_ROOMS,
        ErrorKind::TlsRequired => TLS_REQUIRED,
        ErrorKind::NotOperator => NOT_OPERATOR,
        ErrorKind::Banned => BANNED,
        ErrorKind::Muted => MUTED,
        ErrorKind::InviteOnly => INVITE_ONLY,
        ErrorKind::Blocked => BLOCKED,
        ErrorKind::MessageNotFound => MESSAGE_NOT_FOUND,
        ErrorKind::Unsupported => UNSUPPORTED,
    }
}
