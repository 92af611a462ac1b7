//! zkrun's integration suite: real ZooKeeper ensembles, real components,
//! real zkrun processes. One test binary, so the host links once.

mod bench;
mod chaos;
mod cli;
mod containment;
mod egress;
mod election;
mod guests;
mod ops;
mod rollout;
mod runtime;
mod security;
mod state;
