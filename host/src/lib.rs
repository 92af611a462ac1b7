//! zkrun: a leader-election runtime. Exactly one host of a fleet runs a
//! WebAssembly job, and stops the moment it is no longer sure it leads.
//!
//! - [`election`]: the ZooKeeper session and the election (knows nothing of
//!   WebAssembly).
//! - [`zkpath`]: connect strings and node paths, checked up front.

pub mod election;
pub mod zkpath;
