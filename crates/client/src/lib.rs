//! Async clients for parley's wire protocols, shared by the tests, the benchmark and the
//! terminal client.

mod binary;

pub use binary::BinaryClient;
