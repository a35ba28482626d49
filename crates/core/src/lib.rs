#![warn(missing_docs)]
//! deep_sched's core: everything the nginx module and the learner must
//! agree on, with no nginx and no I/O (but [`policy::Policy::load`]).
//!
//! - [`counters`]: per-peer counters, interval statistics, latency histogram;
//! - [`features`]: the agent's shape and its feature vectors;
//! - [`gmm`]: Gaussian mixture scoring (log domain);
//! - [`policy`]: the policy file and its validation (both kinds), peers
//!   matched by name;
//! - [`perpeer`]: per-peer policies (version 2): features relative to the
//!   pool, per-peer states, multipliers on capacity baselines;
//! - [`decision`]: one decision of an agent;
//! - [`check`]: active health checks (directive, health state machine,
//!   status line, checker lease);
//! - [`choose`]: per-request peer choice (p2c, read-time latency decay,
//!   slow start, round robin's back-off under new weights);
//! - [`draw`]: p2c in O(1) by alias-table draws, read only for drawn peers;
//! - [`hash`]: consistent hashing with bounded loads (`choose=hash`);
//! - [`publish`]: the lock-free publication of a decision to every worker;
//! - [`samples`]: the sample log record;
//! - [`slots`]: the per-peer and per-agent records of the shared zone;
//! - [`directive`]: the `deep_sched` directive's syntax;
//! - [`status`]: the status document (JSON, Prometheus);
//! - [`api`]: the runtime API's routes and request bodies.

pub mod api;
pub mod check;
pub mod choose;
pub mod counters;
pub mod decision;
pub mod directive;
pub mod draw;
pub mod features;
pub mod gmm;
pub mod hash;
pub mod perpeer;
pub mod policy;
pub mod publish;
pub mod samples;
pub mod slots;
pub mod status;
