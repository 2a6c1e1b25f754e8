//! # keel-node
//!
//! A Keel node: the store replicated by Raft (openraft 0.9, storage v2).
//!
//! - [`types`]: what the replicated log carries;
//! - [`log_store`]: the Raft log on disk (durable before acknowledged);
//! - [`state_machine`]: applies entries to the store; snapshots are checkpoints;
//! - [`fence`]: stops acknowledging when the data directory goes away;
//! - [`watch`]: change events for watchers.
//!
//! The store knows nothing of Raft; this crate is the glue and the server.

pub mod fence;
pub mod log_store;
pub mod state_machine;
pub mod types;
pub mod watch;
