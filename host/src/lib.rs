//! zkrun: a leader-election runtime. Exactly one host of a fleet runs a
//! WebAssembly job, and stops the moment it is no longer sure it leads.
//!
//! - [`election`]: the ZooKeeper session and the election (knows nothing of
//!   WebAssembly).
//! - [`plugin`]: the WebAssembly runtime for the job (knows nothing of
//!   ZooKeeper).
//! - [`zkpath`]: connect strings and node paths, checked up front.
//! - [`clock`]: the machine's monotonic clock as a number.

pub mod clock;
pub mod election;
pub mod plugin;
pub mod zkpath;
