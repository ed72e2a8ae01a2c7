//! Wire formats of parley and the protocol-neutral model they translate to.
//!
//! This crate is sans-IO: no sockets, no async runtime. A codec turns bytes into
//! [`Command`]s and [`Reply`]s / deliveries back into bytes, so the server, the client, the
//! benchmark and the fuzzers all share one implementation of each format.

#![forbid(unsafe_code)]

pub mod binary;
mod command;
mod event;
pub mod json;
pub mod lines;
mod names;
pub mod text;

pub use command::{Command, Target};
pub use event::{ErrorKind, Reply};
pub use names::{check_name, validate_name, NameError};
