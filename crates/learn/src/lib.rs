//! The deep_sched offline learner: reads the module's sample log (or
//! nginx-module-vts snapshots), fits the GMM states, estimates the
//! transition model `P(s' | s, a)` and the reward, solves for a policy and
//! writes it in the format the module loads (`deep_sched_core::policy`).

pub mod em;
pub mod reader;
pub mod reward;
