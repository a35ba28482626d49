//! `deep-sched`: learn, inspect and synthesise deep_sched policies.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use deep_sched_core::gmm::CovarianceKind;
use deep_sched_core::policy::{LoadedPolicy, Policy};
use deep_sched_learn::learn::{learn, Algorithm, LearnOptions, States};

#[derive(Parser)]
#[command(
    name = "deep-sched",
    version,
    about = "Learn and inspect deep_sched policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Covariance {
    Full,
    Diag,
}

/// Which policy kind `learn` writes.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// Version 1: one state for the whole agent, a table state -> weights per peer by position.
    Table,
    /// Version 2: a state per peer, a shared table state -> multiplier on the peer's capacity baseline.
    PerPeer,
}

#[derive(Clone, Copy, ValueEnum)]
enum Algo {
    ValueIteration,
    PolicyIteration,
    QLearning,
    Bandit,
}

#[derive(Subcommand)]
enum Command {
    /// Learn a policy from sample logs (or vts snapshots with --vts).
    Learn {
        /// Sample log files (JSON Lines), read in order.
        #[arg(long, required = true, num_args = 1..)]
        samples: Vec<PathBuf>,
        /// Where to write the policy.
        #[arg(long)]
        out: PathBuf,
        /// Policy kind: `per-peer` (version 2: order- and size-invariant, capacity baselines, per-state off-policy decisions) or `table` (version 1).
        #[arg(long, value_enum, default_value = "per-peer")]
        kind: Kind,
        /// Number of states, or "auto" (table: lowest BIC; per-peer: the default). Default: 27 (table), 4 (per-peer).
        #[arg(long)]
        states: Option<String>,
        #[arg(long, value_enum, default_value = "full")]
        covariance: Covariance,
        #[arg(long, value_enum, default_value = "value-iteration")]
        algo: Algo,
        /// Reward of an interval: names p50_ms p95_ms p99_ms mean_ms error_rate rps inflight.
        #[arg(long, default_value = "-p95_ms - 1000*error_rate")]
        reward: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Count and skip bad records instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
        /// Inputs are nginx-module-vts status snapshots.
        #[arg(long)]
        vts: bool,
        /// Decision interval of the policy (default: the samples' median).
        #[arg(long)]
        interval_ms: Option<u64>,
        /// provenance.created (default: SOURCE_DATE_EPOCH, else now), for reproducible output.
        #[arg(long)]
        created: Option<String>,
        /// Discount factor.
        #[arg(long, default_value_t = 0.8)]
        gamma: f64,
        /// Fewest visits of a (state, action) pair before the policy may use it.
        #[arg(long, default_value_t = 2)]
        min_visits: u64,
        /// Rewards are lowered by PESSIMISM x sd / sqrt(visits) (a lower confidence bound); 0 uses plain means.
        #[arg(long, default_value_t = 1.0)]
        pessimism: f64,
        /// Other weights than equal ones must beat them by ANCHOR x pooled sd x sqrt(1/n + 1/n_equal) in a state to be used there; 0 turns the test off.
        #[arg(long, default_value_t = 3.0)]
        anchor: f64,
        /// Also allow a vector that a linear model of reward in the peers' traffic shares, fitted across all vectors of a state, finds better than equal weights by ANCHOR standard errors (and whose own mean beats them): pools evidence across vectors. `false` tests each vector alone.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        share_model: bool,
        #[arg(long, default_value_t = 2)]
        n_init: usize,
        #[arg(long, default_value_t = 200)]
        max_iter: usize,
        #[arg(long, default_value_t = 1e-4)]
        tol: f64,
        #[arg(long, default_value_t = 1e-3)]
        reg_covar: f64,
    },
    /// Validate a policy and print its table.
    Inspect { policy: PathBuf },
    /// PNG plots of a policy against a sample log: state means, state
    /// timeline, policy heatmap, EM learning curve.
    Report {
        /// Sample log files (JSON Lines), read in order.
        #[arg(long, num_args = 1.., required = true)]
        samples: Vec<PathBuf>,
        /// The policy (as written by `learn`).
        #[arg(long)]
        policy: PathBuf,
        /// Directory for the PNG files (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Inputs are nginx-module-vts status snapshots.
        #[arg(long)]
        vts: bool,
        /// Count and skip bad records instead of stopping at the first.
        #[arg(long)]
        skip_bad: bool,
    },
    /// Write a synthetic sample log (3 peers, peer 3 periodically slow).
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2000)]
        records: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Intervals per phase (peer 3 is slow every other phase).
        #[arg(long, default_value_t = 40)]
        phase: usize,
    },
}

/// RFC 3339 UTC from seconds since the epoch (civil-from-days, Hinnant).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Learn {
            samples,
            out,
            kind,
            states,
            covariance,
            algo,
            reward,
            seed,
            skip_bad,
            vts,
            interval_ms,
            created,
            gamma,
            min_visits,
            pessimism,
            anchor,
            share_model,
            n_init,
            max_iter,
            tol,
            reg_covar,
        } => {
            let per_peer_states = match (kind, states.as_deref()) {
                (Kind::PerPeer, Some(s)) if s != "auto" => s
                    .parse::<usize>()
                    .with_context(|| format!("--states {s}: expected a number or \"auto\""))?,
                _ => deep_sched_learn::perpeer::DEFAULT_STATES,
            };
            let states = states.unwrap_or_else(|| "27".into());
            let states = match states.as_str() {
                "auto" => States::Auto,
                s => States::Fixed(
                    s.parse()
                        .with_context(|| format!("--states {s}: expected a number or \"auto\""))?,
                ),
            };
            let created = match created {
                Some(c) => c,
                None => {
                    let secs = match std::env::var("SOURCE_DATE_EPOCH") {
                        Ok(v) => v
                            .parse()
                            .with_context(|| format!("SOURCE_DATE_EPOCH={v}: not a number"))?,
                        Err(_) => std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs())
                            .unwrap_or(0),
                    };
                    rfc3339(secs)
                }
            };
            let opts = LearnOptions {
                states,
                covariance: match covariance {
                    Covariance::Full => CovarianceKind::Full,
                    Covariance::Diag => CovarianceKind::Diag,
                },
                algorithm: match algo {
                    Algo::ValueIteration => Algorithm::ValueIteration,
                    Algo::PolicyIteration => Algorithm::PolicyIteration,
                    Algo::QLearning => Algorithm::QLearning,
                    Algo::Bandit => Algorithm::Bandit,
                },
                reward,
                seed,
                skip_bad,
                vts,
                interval_ms,
                created,
                gamma,
                min_visits,
                pessimism,
                anchor,
                share_model,
                n_init,
                max_iter,
                tol,
                reg_covar,
                ..LearnOptions::default()
            };
            if kind == Kind::PerPeer {
                let learned =
                    deep_sched_learn::perpeer::learn_per_peer(&samples, &opts, per_peer_states)?;
                let text = serde_json::to_string_pretty(&learned.policy)?;
                std::fs::write(&out, text + "\n")
                    .with_context(|| format!("cannot write {}", out.display()))?;
                print!("{}", learned.summary);
                println!(
                    "policy: {} (per-peer, {} states, {} rows)",
                    out.display(),
                    learned.policy.multipliers.len(),
                    learned.rows
                );
                return Ok(());
            }
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = indicatif::ProgressBar::new_spinner();
                b.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                        .expect("static template"),
                );
                b
            });
            let learned = learn(&samples, &opts, |stage, i, v| {
                if let Some(b) = &bar {
                    match stage {
                        "read" => b.set_message(format!("read {i} intervals")),
                        "em" => {
                            b.set_message(format!("EM iteration {i}: mean log-likelihood {v:.4}"))
                        }
                        _ => b.set_message(format!("K={i}: BIC {v:.1}")),
                    }
                    b.tick();
                }
            })?;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let text = serde_json::to_string_pretty(&learned.policy)?;
            std::fs::write(&out, text + "\n")
                .with_context(|| format!("cannot write {}", out.display()))?;
            print!("{}", learned.summary);
            println!(
                "policy: {} ({} states, {} actions)",
                out.display(),
                learned.policy.table.len(),
                learned.policy.actions.len()
            );
        }
        Command::Inspect { policy } => {
            if let LoadedPolicy::PerPeer(p) = LoadedPolicy::load(&policy)? {
                let doc = p.document();
                println!(
                    "policy {} (format {} v{}, {}), interval {} ms",
                    policy.display(),
                    doc.format,
                    doc.version,
                    doc.kind,
                    doc.interval_ms
                );
                for (k, v) in &doc.provenance {
                    println!("  {k}: {v}");
                }
                println!("baseline: {}", serde_json::to_string(&doc.baseline)?);
                println!("features: {}", serde_json::to_string(&doc.peer_features)?);
                println!(
                    "{:>5}  {:>7}  multiplier (default {})",
                    "state", "mix", doc.default_multiplier
                );
                for (s, m) in doc.multipliers.iter().enumerate() {
                    println!("{s:>5}  {:>7.4}  x{m}", doc.gmm.weights[s]);
                }
                return Ok(());
            }
            let p = Policy::load(policy.display().to_string())?;
            let doc = p.to_document();
            let shape = p.shape();
            println!(
                "policy {} (format {} v{}), interval {} ms",
                policy.display(),
                doc.format,
                doc.version,
                doc.interval_ms
            );
            for (k, v) in &doc.provenance {
                match v.as_array() {
                    // The EM curve: its length and ends, not 100 numbers.
                    Some(a) if a.len() > 8 => {
                        println!("  {k}: {} values, {} ... {}", a.len(), a[0], a[a.len() - 1])
                    }
                    _ => println!("  {k}: {v}"),
                }
            }
            println!(
                "agent: {}",
                shape
                    .upstreams
                    .iter()
                    .map(|u| format!("{} [{}]", u.name, u.peers.join(", ")))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            println!(
                "{} features, {} states, {} actions, default action {}",
                doc.features.len(),
                p.states(),
                doc.actions.len(),
                doc.default_action
            );
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:>5}  {:>7}  {:<8}  weights",
                "state", "mix", "scaling"
            )?;
            for s in 0..p.states() {
                let a = p.action_for(s);
                let w: Vec<String> = doc.actions[a]
                    .weights
                    .iter()
                    .zip(&shape.upstreams)
                    .map(|(w, u)| {
                        format!(
                            "{}=({})",
                            u.name,
                            w.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
                        )
                    })
                    .collect();
                writeln!(
                    out,
                    "{s:>5}  {:>7.4}  {:<8}  action {a}: {}",
                    doc.gmm.weights[s],
                    p.scaling(s).unwrap_or("-"),
                    w.join(" ")
                )?;
            }
        }
        Command::Report {
            samples,
            policy,
            out,
            vts,
            skip_bad,
        } => {
            let p = Policy::load(policy.display().to_string())?;
            let files = deep_sched_learn::report::report(&p, &samples, vts, skip_bad, &out)?;
            for f in files {
                println!("{}", f.display());
            }
        }
        Command::Synth {
            out,
            records,
            seed,
            phase,
        } => {
            if records < 2 {
                bail!("--records {records}: need at least 2");
            }
            let f = std::fs::File::create(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let mut w = BufWriter::new(f);
            deep_sched_learn::synth::synth(records, seed, phase, &mut w)?;
            w.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_763_856_000), "2025-11-23T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
