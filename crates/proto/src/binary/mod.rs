//! The seed-000 "Console Chat" binary protocol, byte for byte, and parley's frames on it.
//!
//! A frame is `u32 length | u8 version | u16 key | body`, all big-endian; `length` counts the
//! version, key and body but not itself. Strings are `u16 length | bytes`, lists `u16 count |
//! entries`. Every body starts with a `u32` correlation id, which the response (key 0x03,
//! always 13 bytes on the wire) carries back. See docs/PROTOCOL.md for worked examples.
//!
//! Decoding takes bytes from a `BytesMut` and hands out `Bytes` slices of the frame, so the
//! strings of a message are never copied.
//!
//! The frames are stated once each, in a table per key range: `seed.rs` (0x01–0x09, the
//! seed's own), `account.rs` (0x10–0x18), `messaging.rs` (0x20–0x2F), `contacts.rs`
//! (0x30–0x35), `files.rs` (0x40–0x45) and `moderation.rs` (0x50–0x5C). `table.rs` makes [`Frame`], [`key`] and each
//! frame's decoding and encoding from them.

mod account;
pub mod code;
mod contacts;
mod decode;
mod field;
mod files;
mod messaging;
mod moderation;
mod seed;
mod table;

use bytes::{BufMut, Bytes, BytesMut};

use account::account_frames;
use contacts::contacts_frames;
use field::{Field, Reader};
use files::files_frames;
use messaging::messaging_frames;
use moderation::moderation_frames;
use seed::seed_frames;
use table::define_frames;

pub use account::flags;
pub use code::error_code;
pub use contacts::{contact, ContactEntry};
pub use decode::{decode, decode_view, Decoded, FrameError};
pub use field::StringTooLong;
pub use messaging::{encode_event, kind, page, Event, ListPage, RoomEntry, UserEntry};
pub use moderation::{action, change, rank, RoomInfoEntry};
pub use seed::{encode_message, encode_response, MessageView};

/// The only protocol version there is.
pub const VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX: usize = 4;
/// Bytes of version + key, the smallest possible frame body.
pub const HEADER: usize = 3;
/// The length (prefix value) of the largest legal seed-000 frame: a message (key 0x02)
/// whose three strings have 65,535 bytes each — version and key, cid, three length-prefixed
/// strings and the time. A server must read a frame this long to answer it.
pub const MAX_MESSAGE_FRAME: usize = HEADER + 4 + 3 * (2 + u16::MAX as usize) + 8;

// `Frame`, `key`, and every frame's decoding and encoding: each range's table adds its
// entries and hands the list to the next, `define_frames!` last (see `table.rs`).
seed_frames! { [account_frames messaging_frames contacts_frames files_frames moderation_frames define_frames] }
