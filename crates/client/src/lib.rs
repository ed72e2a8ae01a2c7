//! Async clients for parley's wire protocols, shared by the tests, the benchmark and the
//! terminal client.

#![forbid(unsafe_code)]

mod binary;
mod lines;

pub use binary::BinaryClient;
pub use lines::LineClient;
