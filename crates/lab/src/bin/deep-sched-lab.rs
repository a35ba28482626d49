//! `deep-sched-lab`: experiment runner (scenarios x balancers against a real
//! nginx and emulated backends) and the distribution study.
//!
//! ```text
//! deep-sched-lab run S1 S2 --nginx build/sbin/nginx --duration 30s --reps 3
//! deep-sched-lab distribution --nginx build/sbin/nginx
//! deep-sched-lab list
//! deep-sched-lab scenario 1001           # a generated scenario as JSON
//! deep-sched-lab run G3 --nginx build/sbin/nginx --duration 20s
//! deep-sched-lab report results/S4     # report.md again from summary.json
//! deep-sched-lab heldout --module M --learner L --least-time   # issue #13's judgement
//! deep-sched-lab heldout-report results/heldout                 # its tables again
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use deep_sched_lab::experiment::{
    builtin_balancers, default_work_dir, distribution, explore, key_distribution, run_scenario,
    Scenario, Settings,
};
use deep_sched_lab::report::{
    benchmarks_section, rerender_scenario_report, write_distribution_report, write_key_report,
    write_scenario_report,
};

/// deep_sched lab: explore -> learn -> compare against nginx's balancers.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Debug)]
struct Common {
    /// nginx binary (for deep_sched: the one the module was built against).
    #[arg(long, default_value = "build/sbin/nginx")]
    nginx: PathBuf,
    /// nginx worker_processes.
    #[arg(long, default_value_t = 2)]
    worker_processes: usize,
    /// Where SCENARIO/report.md and plots go.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Scratch directory for nginx prefixes and sample logs (default: a new
    /// directory under $TMPDIR, removed at the end unless --keep-work).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the scratch directory.
    #[arg(long)]
    keep_work: bool,
    /// Base seed of arrivals and service times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Per-request choice during exploration runs: `p2c` (what policies
    /// are served with) or `wrr`.
    #[arg(long, default_value = "p2c", value_parser = ["p2c", "wrr"])]
    explore_choose: String,
    /// Exploration set: the weights each peer draws from during
    /// exploration runs (`deep_sched explore weights=`). Fewer values mean
    /// fewer weight vectors, each tried more often.
    #[arg(long, value_delimiter = ',', default_value = "1,3",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    explore_weights: Vec<u32>,
    /// Decision interval of exploration runs (`deep_sched explore
    /// interval=`, the same syntax and range); a policy learned from them
    /// is served with it too.
    #[arg(long = "explore-interval", value_name = "TIME", value_parser = parse_interval, default_value = "1s")]
    explore_interval_ms: u64,
}

/// `--explore-interval`: the module's own parser, the input named on error.
fn parse_interval(text: &str) -> Result<u64, String> {
    deep_sched_core::directive::parse_interval_ms(text).map_err(|e| format!("{text:?}: {e}"))
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// List the scenarios.
    List,
    /// Print the scenario generated from a seed as JSON
    /// (policies/scenario.schema.json); `run G<SEED>` runs it.
    Scenario {
        /// The seed (see lab/seeds/tuning.txt; never tune on heldout.txt).
        seed: u64,
    },
    /// Run scenarios (S1..S6, G<seed> for a generated one, or `all` for
    /// S1..S6) and write their reports.
    Run {
        /// Scenario ids.
        #[arg(required = true)]
        scenarios: Vec<String>,
        #[command(flatten)]
        common: Common,
        /// Length of each evaluation run.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        duration: Duration,
        /// Repetitions per balancer.
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// deep_sched module (.so); with --learner, adds deep_sched.
        #[arg(long)]
        module: Option<PathBuf>,
        /// `deep-sched` learner binary.
        #[arg(long)]
        learner: Option<PathBuf>,
        /// Length of the exploration run.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
        explore: Duration,
        /// Only these balancers (round_robin, least_conn,
        /// random_two_least_conn, hash_consistent, deep_sched, deep_sched_p2c,
        /// one_pool: the one-backend reference, where the scenario has one).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Extra argument for `deep-sched learn`, repeatable
        /// (`--learn-arg=--states --learn-arg=auto`).
        #[arg(long = "learn-arg", allow_hyphen_values = true)]
        learn_args: Vec<String>,
        /// Evaluate this policy instead of exploring and learning one (one
        /// scenario at a time; needs --module).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Only the exploration run of a scenario (`deep_sched explore`):
    /// writes its sample log, for the learner.
    Explore {
        /// Scenario id.
        scenario: String,
        #[command(flatten)]
        common: Common,
        /// deep_sched module (.so).
        #[arg(long, default_value = "build/modules/ngx_http_deep_sched_module.so")]
        module: PathBuf,
        /// Length of the run.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
        duration: Duration,
        /// Where to copy the sample log.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the `## lab` section of BENCHMARKS.md from results/S*/summary.json.
    Benchmarks {
        /// Results directory.
        #[arg(long, default_value = "results")]
        results: PathBuf,
        /// The command that produced the results (quoted in the section).
        #[arg(long, default_value = "scripts/experiment.sh all")]
        command: String,
    },
    /// Write each DIR/report.md again from DIR/summary.json (after a change
    /// to the report or the targets; the plots are kept, not redrawn).
    Report {
        /// Scenario result directories, e.g. results/S4.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// The held-out judgement (issue #13): per seed, explore -> learn ->
    /// serve and every comparison balancer, interleaved; writes
    /// RESULTS/G<seed>.json, RESULTS/heldout.md and RESULTS/section.md
    /// (RESULTS defaults to results/heldout). See scripts/lab-heldout.sh.
    Heldout {
        #[command(flatten)]
        common: Common,
        /// Seeds: `heldout` (lab/seeds/heldout.txt), `tuning`
        /// (lab/seeds/tuning.txt, for design work), a list `3,7` or a file.
        #[arg(long, default_value = "heldout")]
        seeds: String,
        /// Only the first N seeds of the list.
        #[arg(long)]
        first: Option<usize>,
        /// Length of each evaluation run.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        duration: Duration,
        /// Repetitions per balancer (at least 3 for a judgement).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Length of the exploration run.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "120s")]
        explore: Duration,
        /// deep_sched module (.so) built for --nginx; adds deep_sched p2c
        /// with equal weights and the capacity oracle, and with --learner
        /// the learned policy.
        #[arg(long)]
        module: Option<PathBuf>,
        /// `deep-sched` learner binary.
        #[arg(long)]
        learner: Option<PathBuf>,
        /// Add nginx's `least_time header` (--nginx must be >= 1.31).
        #[arg(long)]
        least_time: bool,
        /// Extra argument for `deep-sched learn`, repeatable.
        #[arg(long = "learn-arg", allow_hyphen_values = true)]
        learn_args: Vec<String>,
        /// The command quoted in the reports.
        #[arg(long, default_value = "scripts/lab-heldout.sh")]
        command: String,
    },
    /// Write RESULTS/heldout.md and RESULTS/section.md again from the
    /// G<seed>.json files of a held-out run.
    HeldoutReport {
        /// The held-out results directory.
        #[arg(default_value = "results/heldout")]
        dir: PathBuf,
        /// The command quoted in the reports.
        #[arg(long, default_value = "scripts/lab-heldout.sh")]
        command: String,
    },
    /// N = 2..6 idle peers, 10,000 requests each: std. dev. of per-peer
    /// counts; and the key study: 10,000 keys consistently hashed by each
    /// hash function of the core and by nginx's `hash $request_uri
    /// consistent` (share std. dev., keys moved on adding or removing a peer).
    Distribution {
        #[command(flatten)]
        common: Common,
        /// Requests per (balancer, N); 0 skips the balancer study.
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        /// Distinct keys of the key study; 0 skips it.
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
    },
}

fn nginx_version(nginx: &PathBuf) -> String {
    Command::new(nginx)
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .trim()
                .rsplit('/')
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".to_string())
}

fn settings(common: &Common) -> anyhow::Result<Settings> {
    anyhow::ensure!(
        common.nginx.is_file(),
        "--nginx {}: no such file (build it with scripts/build.sh or pass another nginx)",
        common.nginx.display()
    );
    let work_dir = common.work_dir.clone().unwrap_or_else(default_work_dir);
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating the work directory {}", work_dir.display()))?;
    // nginx resolves relative paths against its prefix: make ours absolute.
    let abs = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    Ok(Settings {
        nginx: abs(&common.nginx),
        module: None,
        learner: None,
        duration: Duration::from_secs(30),
        explore: Duration::from_secs(120),
        explore_p2c: common.explore_choose == "p2c",
        explore_weights: common.explore_weights.clone(),
        explore_interval_ms: common.explore_interval_ms,
        policy: None,
        reps: 3,
        worker_processes: common.worker_processes,
        work_dir: abs(&work_dir),
        results_dir: common.results.clone(),
        seed: common.seed,
        only: Vec::new(),
        learn_args: Vec::new(),
    })
}

fn cleanup(common: &Common, settings: &Settings) {
    if !common.keep_work && common.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&settings.work_dir);
    }
}

/// Stops the nginx masters this process started when it is interrupted
/// (their `Drop` would not run).
fn stop_nginx_on_signals() -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing the signal handler")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("deep-sched-lab: signal {sig}, stopping nginx");
            deep_sched_lab::nginx::terminate_all();
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stop_nginx_on_signals()?;
    match cli.command {
        Cmd::List => {
            for s in Scenario::all() {
                println!("{}  {}", s.id, s.title);
                println!("    load: {}", s.describe_load());
            }
            println!("G<seed>  generated from a seed (`deep-sched-lab scenario SEED`; seeds in lab/seeds/)");
        }
        Cmd::Scenario { seed } => {
            use std::io::Write as _;
            let g = deep_sched_lab::generate::generate(seed);
            let text = serde_json::to_string_pretty(&g)? + "\n";
            match std::io::stdout().lock().write_all(text.as_bytes()) {
                // `| head` is not a failure
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                r => r.context("writing the scenario to stdout")?,
            }
        }
        Cmd::Run {
            scenarios,
            common,
            duration,
            reps,
            module,
            learner,
            explore,
            only,
            learn_args,
            policy,
        } => {
            let chosen: Vec<Scenario> = if scenarios.iter().any(|s| s == "all") {
                Scenario::all()
            } else {
                scenarios
                    .iter()
                    .map(|id| {
                        Scenario::by_id(id).with_context(|| {
                            format!("scenario `{id}`: expected one of S1..S6, G<seed> or all")
                        })
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
            if let Some(m) = &module {
                anyhow::ensure!(m.is_file(), "--module {}: no such file", m.display());
                anyhow::ensure!(
                    learner.is_some() || policy.is_some(),
                    "--module needs --learner (or --policy)"
                );
            }
            if let Some(p) = &policy {
                anyhow::ensure!(module.is_some(), "--policy needs --module");
                anyhow::ensure!(p.is_file(), "--policy {}: no such file", p.display());
                anyhow::ensure!(
                    chosen.len() == 1,
                    "--policy names peers by address: give one scenario"
                );
            }
            let settings = Settings {
                duration,
                reps: reps.max(1),
                module: module.map(abs),
                learner: learner.map(abs),
                policy: policy.map(abs),
                explore,
                only,
                learn_args,
                ..settings(&common)?
            };
            let version = nginx_version(&settings.nginx);
            let mut outcome = Ok(());
            for s in &chosen {
                let results = match run_scenario(s, &settings) {
                    Ok(r) => r,
                    Err(e) => {
                        outcome = Err(anyhow::Error::new(e).context(format!("scenario {}", s.id)));
                        break;
                    }
                };
                let dir = settings.results_dir.join(&s.id);
                let report = write_scenario_report(s, &settings, &results, &version, &dir)?;
                println!("{}: {}", s.id, report.display());
            }
            cleanup(&common, &settings);
            outcome?;
        }
        Cmd::Explore {
            scenario,
            common,
            module,
            duration,
            out,
        } => {
            let s = Scenario::by_id(&scenario).with_context(|| {
                format!("scenario `{scenario}`: expected one of S1..S6 or G<seed>")
            })?;
            anyhow::ensure!(
                module.is_file(),
                "--module {}: no such file",
                module.display()
            );
            let settings = Settings {
                module: Some(std::fs::canonicalize(&module)?),
                explore: duration,
                ..settings(&common)?
            };
            let outcome = explore(&s, &settings)
                .map(|(log, run)| (std::fs::copy(log, &out), run.load.total.clone()));
            cleanup(&common, &settings);
            let (copied, total) = outcome?;
            copied.with_context(|| format!("copying the sample log to {}", out.display()))?;
            let lines = std::fs::read_to_string(&out)?.lines().count();
            println!(
                "{}: {lines} samples in {} ({:.0} req/s, p99 {:.1} ms, {} failed)",
                s.id,
                out.display(),
                total.rps,
                total.latency.p99_ms,
                total.errors.total()
            );
        }
        Cmd::Benchmarks { results, command } => {
            print!("{}", benchmarks_section(&results, &command)?);
        }
        Cmd::Report { dirs } => {
            for dir in &dirs {
                let path = rerender_scenario_report(dir)?;
                println!("{}", path.display());
            }
        }
        Cmd::Heldout {
            common,
            seeds,
            first,
            duration,
            reps,
            explore,
            module,
            learner,
            least_time,
            learn_args,
            command,
        } => {
            use deep_sched_lab::heldout;
            let mut list = heldout::resolve_seeds(&seeds).map_err(anyhow::Error::msg)?;
            if let Some(n) = first {
                anyhow::ensure!(n > 0, "--first {n}: at least one seed");
                list.truncate(n);
            }
            if let Some(m) = &module {
                anyhow::ensure!(m.is_file(), "--module {}: no such file", m.display());
            }
            if let Some(l) = &learner {
                anyhow::ensure!(l.is_file(), "--learner {}: no such file", l.display());
                anyhow::ensure!(module.is_some(), "--learner needs --module");
            }
            let version_text = Command::new(&common.nginx)
                .arg("-v")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
                .unwrap_or_default();
            if least_time {
                let v = deep_sched_lab::nginx::parse_version(&version_text);
                anyhow::ensure!(
                    v.is_some_and(deep_sched_lab::nginx::has_least_time),
                    "--least-time: {} is {:?}, least_time needs nginx >= 1.31 \
                     (scripts/build-nginx-least-time.sh builds one from source)",
                    common.nginx.display(),
                    version_text.trim()
                );
            }
            // the results go to results/heldout unless told otherwise
            let mut common = common;
            if common.results == Path::new("results") {
                common.results = PathBuf::from("results/heldout");
            }
            let abs = |p: PathBuf| std::fs::canonicalize(&p).unwrap_or(p);
            let settings = Settings {
                duration,
                reps: reps.max(1),
                module: module.map(abs),
                learner: learner.map(abs),
                explore,
                learn_args,
                ..settings(&common)?
            };
            let version = nginx_version(&settings.nginx);
            let dir = settings.results_dir.clone();
            let mut failed = Vec::new();
            for seed in &list {
                match heldout::run_seed(*seed, &settings, least_time, &version) {
                    Ok(r) => {
                        let path = heldout::write_result(&dir, &r).map_err(anyhow::Error::msg)?;
                        heldout::write_reports(&dir, &command).map_err(anyhow::Error::msg)?;
                        println!("G{seed}: {}", path.display());
                    }
                    Err(e) => {
                        eprintln!("G{seed}: failed: {e}");
                        failed.push(format!("G{seed}: {e}"));
                    }
                }
            }
            cleanup(&common, &settings);
            println!("{}", dir.join("heldout.md").display());
            anyhow::ensure!(
                failed.is_empty(),
                "seeds that failed:\n{}",
                failed.join("\n")
            );
        }
        Cmd::HeldoutReport { dir, command } => {
            let results = deep_sched_lab::heldout::write_reports(&dir, &command)
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(!results.is_empty(), "{}: no G<seed>.json", dir.display());
            println!("{}", dir.join("heldout.md").display());
        }
        Cmd::Distribution {
            common,
            requests,
            keys,
        } => {
            let settings = settings(&common)?;
            let version = nginx_version(&settings.nginx);
            let dir = settings.results_dir.join("distribution");
            if requests > 0 {
                let table = distribution(&settings, &builtin_balancers(), 2..=6, requests);
                let report = table
                    .map_err(anyhow::Error::from)
                    .and_then(|t| Ok(write_distribution_report(&t, requests, &version, &dir)?));
                if let Err(e) = report {
                    cleanup(&common, &settings);
                    return Err(e);
                }
                println!("distribution: {}", dir.join("report.md").display());
            }
            if keys > 0 {
                let table = key_distribution(&settings, 2..=6, keys);
                cleanup(&common, &settings);
                let report = write_key_report(&table?, keys, &version, &dir)?;
                println!("key distribution: {}", report.display());
            } else {
                cleanup(&common, &settings);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_interval;

    #[test]
    fn explore_intervals_are_what_the_module_accepts() {
        assert_eq!(parse_interval("500ms"), Ok(500));
        assert_eq!(parse_interval("2s"), Ok(2000));
        assert_eq!(parse_interval("1h"), Ok(3_600_000));
        for bad in ["99ms", "0s", "2h", "1500us", "fast", ""] {
            let e = parse_interval(bad).unwrap_err();
            assert!(e.starts_with(&format!("{bad:?}: ")), "{bad}: {e}");
        }
        let e = parse_interval("50ms").unwrap_err();
        assert!(
            e.contains("\"50ms\": the interval must be between 100ms and 1h"),
            "{e}"
        );
    }
}
