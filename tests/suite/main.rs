//! zkrun's integration suite: real ZooKeeper ensembles, real components,
//! real zkrun processes. One test binary, so the host links once.

mod bench;
mod chaos;
mod cli;
mod containment;
mod containment_text;
mod docs;
mod egress;
mod egress_shadow;
mod election;
mod guests;
mod hostmem;
mod model;
mod ops;
mod rollout;
mod runtime;
mod schedules;
mod security;
mod state;
