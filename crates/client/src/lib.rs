//! Async clients for parley's wire protocols, shared by the tests, the benchmark and the
//! terminal client.
//!
//! - `BinaryClient` and `LineClient`: one connection, frame by frame or line by line, for
//!   tests that need to see (or send) every byte.
//! - `Connection`: the binary protocol with many requests in flight, typed requests and
//!   pushes on a channel of their own.
//! - `Link`: a logged-in device that outlives connections: reconnects with back-off, catches
//!   up from the device's cursor, delivers each message once, sends each message once.
//! - `chat`: `parley chat`, the terminal client built on `Link`.

#![forbid(unsafe_code)]

mod binary;
pub mod chat;
mod connection;
mod error;
mod files;
mod lines;
mod link;
mod moderation;
mod requests;
mod transport;

pub use binary::BinaryClient;
pub use connection::{Answer, Connection, Push, Reply};
pub use error::{describe, Error};
pub use files::{mime_for, part_path, sha256_file, FileInfo, CHUNK};
pub use lines::LineClient;
pub use link::{Link, LinkEvent, LinkOptions, LinkStatus};
pub use requests::{Page, Target, Token};
pub use transport::{Endpoint, TlsOptions};
