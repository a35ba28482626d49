//! deep_sched lab: what makes the collect → learn → deploy → compare loop
//! reproducible on one machine.
//!
//! - [`backend`]: the backend emulator (the social network's endpoints,
//!   bounded workers, noisy neighbour, failure modes), as a library and as
//!   the `deep-sched-backend` binary;
//! - [`load`] and [`schedule`]: the open-loop load generator
//!   (`deep-sched-load`) and its arrival schedules (constant rate,
//!   `gen_load`, day/night);
//! - [`dist`]: the random delays both use;
//! - [`percentiles`]: HDR latency histograms and their summaries;
//! - [`experiment`], [`nginx`], [`report`]: the experiment runner
//!   (`deep-sched-lab`): scenarios x balancers behind a real nginx, reports;
//! - [`generate`]: scenarios generated from a seed (`G<seed>`), for
//!   judging on scenarios a design was not tuned on;
//! - [`heldout`]: the held-out judgement (issue #13): every balancer and the
//!   learned loop per seed, excess over the one-pool reference, targets.

pub mod backend;
pub mod dist;
pub mod experiment;
pub mod generate;
pub mod heldout;
pub mod load;
pub mod nginx;
pub mod percentiles;
pub mod report;
pub mod schedule;
