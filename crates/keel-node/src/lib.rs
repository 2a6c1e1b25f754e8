//! # keel-node
//!
//! A Keel node: the store replicated by Raft (openraft 0.9, storage v2).
//!
//! - [`types`]: what the replicated log carries;
//! - [`log_store`]: the Raft log on disk (durable before acknowledged);
//! - [`state_machine`]: applies entries to the store; snapshots are checkpoints;
//! - [`fence`]: stops acknowledging when the data directory goes away;
//! - [`watch`]: change events for watchers;
//! - [`walk`]: the walk over a tree's objects, read from disk and hashed;
//! - [`fetch`]: catch-up by root hash, blob by blob, from any peer;
//! - [`scrub`]: background scrub, read repair and repair from peers;
//! - [`proposer`]: batching of writes and of linearizable reads;
//! - [`network`], [`server`]: Raft over HTTP (binary) and the client API (JSON);
//! - [`node`]: everything assembled, membership and status;
//! - [`disk`]: free space, the reserve, low-space mode and reclaim;
//! - [`primary`]: primary election per group;
//! - [`health`]: signals, diagnostics and the escalation ladder;
//! - [`daemon`]: runs a node and restarts it in-process when its health asks;
//! - [`identity`], [`config`]: which member a data directory is, and settings.
//!
//! The store knows nothing of Raft; this crate is the glue and the server.

// openraft's storage traits fix `StorageError` (about 224 bytes) as the
// error type; helpers that feed them return it too.
#![allow(clippy::result_large_err)]

pub mod admin;
pub mod api;
pub mod client;
pub mod config;
pub mod daemon;
pub mod disk;
pub mod election;
pub mod faults;
pub mod fence;
pub mod fetch;
pub mod health;
pub mod identity;
pub mod link;
pub mod log_store;
pub mod network;
pub mod node;
pub mod primary;
pub mod proposer;
pub mod scrub;
pub mod server;
pub mod state_machine;
pub mod types;
pub mod walk;
pub mod watch;
