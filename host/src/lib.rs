//! zkrun: a leader-election runtime. Exactly one host of a fleet runs a
//! WebAssembly job, and stops the moment it is no longer sure it leads.
//!
//! - [`election`]: the ZooKeeper session and the election (knows nothing of
//!   WebAssembly).
//! - [`plugin`]: the WebAssembly runtime for the job (knows nothing of
//!   ZooKeeper).
//! - [`state`]: fenced state, kept in ZooKeeper across failovers.
//! - [`schedule`]: cron and interval schedules, and the slot ledger;
//!   [`slots`] runs a schedule's slots for the supervisor.
//! - [`rollout`]: `zkrun publish` and participants that follow it.
//! - [`supervisor`]: the one place where leadership drives the job.
//! - [`cli`], [`status`], [`logging`]: the `zkrun` command.
//! - [`metrics`], [`health`], [`notify`]: what operators watch (Prometheus,
//!   health checks, systemd), fed by the supervisor.
//! - [`zkpath`]: connect strings and node paths, checked up front.
//! - [`zkconnect`]: credentials, TLS and the ACL of every node zkrun creates.
//! - [`clock`]: the machine's monotonic clock as a number.

pub mod cli;
pub mod clock;
pub mod election;
pub mod exposition;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod plugin;
pub mod rollout;
pub mod schedule;
pub mod slots;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod text;
pub mod zkconnect;
pub mod zkpath;
