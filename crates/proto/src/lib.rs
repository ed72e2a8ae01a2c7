//! Wire formats of parley and the protocol-neutral model they translate to.
//!
//! This crate is sans-IO: no sockets, no async runtime. Each codec (`binary`, `text`, `json`, `simpletcp`)
//! turns bytes into its protocol's requests, and replies and pushes back into bytes, so the
//! server, the client, the benchmark and the fuzzers all share one implementation of each
//! format. What every protocol shares is here too: where a message goes ([`Target`]), the
//! kinds of conversation ([`ConversationKind`]), outcomes and failures ([`Reply`],
//! [`ErrorKind`]), and the rules for names.

#![forbid(unsafe_code)]

pub mod binary;
mod conversation;
mod event;
pub mod json;
pub mod lines;
mod names;
pub mod simpletcp;
pub mod text;
pub mod ws;

pub use conversation::{ConversationKind, Target};
pub use event::{ErrorKind, Reply};
pub use names::{
    check_display_name, check_name, check_new_name, skeleton, validate_name, NameError,
};
