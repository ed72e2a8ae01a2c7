//! The parley server: one port, many wire protocols, one ordered log per conversation.
//!
//! The modules follow the path of a message:
//! `server` (accept) → `sniff` (pick a protocol) → `session` (decode requests)
//! → `hub` (apply, group-commit to `store`, then answer and deliver) → `outbound` (each
//! session's queue and writer, and the bytes of every style). `catchup` replays what a
//! device missed before it goes live. In cluster mode, `cluster` connects the node's hub to
//! the other nodes' (NATS) and the store is PostgreSQL's (`store::postgres`).

// Unsafe code only where a module allows it (tcp_ack.rs).
#![deny(unsafe_code)]

pub mod admin;
mod auth;
mod catchup;
mod cluster;
mod config;
mod conn;
mod files;
mod http;
mod hub;
mod log_limit;
mod lookalikes;
mod metrics;
mod monitor;
mod node;
mod outbound;
mod server;
mod session;
mod sniff;
mod store;
mod throttle;
mod timer;
mod tls;

pub use config::{Config, SyncMode};
pub use server::{serve, serve_with, start, start_with, Listeners, Options, Running};
pub use store::postgres::{migrate as migrate_to_postgres, MigrationReport};
pub use store::{backup, check, CheckReport};
pub use tls::{write_self_signed, Tls};
