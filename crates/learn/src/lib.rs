//! deep_sched's offline learner: sample logs (or nginx-module-vts
//! snapshots) → standardised features → GMM states → transition model under
//! each action → solved table → a policy file the nginx module loads.
//!
//! - [`reader`]: streamed, validated input records;
//! - [`capacity`]: per-peer capacity (M/M/c fit) and capacity-proportional
//!   weights;
//! - [`em`]: Gaussian mixture fitting (k-means++ + EM, BIC/AIC);
//! - [`mdp`]: the estimated MDP and its solvers (value/policy iteration,
//!   Q-learning, LinUCB);
//! - [`reward`]: the reward expression;
//! - [`report`]: PNG plots of a policy against a sample log;
//! - [`learn`]: the pipeline (version-1 table policies);
//! - [`perpeer`]: the per-peer pipeline (version-2 policies);
//! - [`ope`]: off-policy evaluation (IPS, direct method, doubly robust)
//!   and the keep-the-baseline-unless-confident decision rule;
//! - [`synth`]: a synthetic sample log and M/M/c queueing data for tests
//!   and demos.
//!
//! The `deep-sched` binary is a thin shell over these.

pub mod capacity;
pub mod em;
pub mod learn;
pub mod mdp;
pub mod ope;
pub mod perpeer;
pub mod reader;
pub mod report;
pub mod reward;
pub mod synth;
