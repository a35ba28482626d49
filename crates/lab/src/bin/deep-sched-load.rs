//! `deep-sched-load`: open-loop load generator (constant rate, `gen_load`,
//! day/night), JSON summary on stdout or `--out`.
//!
//! ```text
//! deep-sched-load rate --target http://127.0.0.1:8080 --rps 500 --duration 30s
//! deep-sched-load gen-load --target http://127.0.0.1:8080 --duration 2m --scale 0.1
//! deep-sched-load day-night --target http://127.0.0.1:8080 --duration 4m --max-rps 1500
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use deep_sched_lab::load::{run_blocking, LoadConfig, LoadSummary};
use deep_sched_lab::schedule::{Arrivals, DayNight, GenLoad, LoadPlan, Range, DAY_NIGHT_FRACTIONS};

const DEFAULT_PATHS: [&str; 3] = [
    "/wrk2-api/post/compose",
    "/wrk2-api/home-timeline/read",
    "/wrk2-api/user-timeline/read",
];

/// Open-loop HTTP load generator; latency from the intended send time.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    schedule: Schedule,
}

#[derive(Args, Debug)]
struct Common {
    /// Base URL of the server under test (127.0.0.1 only in this lab).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Length of the run (e.g. 30s, 2m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    /// Request paths, one request type (stream) each.
    #[arg(long, num_args = 1.., default_values_t = DEFAULT_PATHS.map(String::from))]
    paths: Vec<String>,
    /// A request unanswered after this long is a timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Most requests in flight; more arrivals count as `other` errors.
    #[arg(long, default_value_t = 4096)]
    max_inflight: usize,
    /// Seed of the arrival draws (and of gen_load's plan).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the JSON summary here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the plan (phases per stream) as JSON and exit without sending.
    #[arg(long)]
    plan_only: bool,
}

#[derive(Subcommand, Debug)]
enum Schedule {
    /// Poisson arrivals at a constant total rate split over the paths.
    Rate {
        #[command(flatten)]
        common: Common,
        /// Total requests per second.
        #[arg(long)]
        rps: f64,
    },
    /// The research's gen_load: per path, random shape/rate/length, then back off.
    GenLoad {
        #[command(flatten)]
        common: Common,
        /// Shortest busy phase.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
        run_min: Duration,
        /// Longest busy phase.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
        run_max: Duration,
        /// Lowest rate of a busy phase, per path.
        #[arg(long, default_value_t = 1000.0)]
        rate_min: f64,
        /// Highest rate of a busy phase, per path.
        #[arg(long, default_value_t = 2000.0)]
        rate_max: f64,
        /// Shortest back-off.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        backoff_min: Duration,
        /// Longest back-off.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "100s")]
        backoff_max: Duration,
        /// Multiplies phase lengths and rates (short runs: e.g. 0.1).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Multiplies phase lengths (overrides --scale for times).
        #[arg(long)]
        time_scale: Option<f64>,
        /// Multiplies rates (overrides --scale for rates).
        #[arg(long)]
        rate_scale: Option<f64>,
        /// Inter-arrival shapes to pick from.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "exponential,normal,fixed,zipf"
        )]
        shapes: Vec<String>,
    },
    /// The day/night feeder: hourly fractions stretched, repeated, scaled.
    DayNight {
        #[command(flatten)]
        common: Common,
        /// Requests per second at fraction 1.
        #[arg(long)]
        max_rps: f64,
        /// Steps per day (linear interpolation of the fractions).
        #[arg(long, default_value_t = 24)]
        breakpoints: usize,
        /// Days within --duration.
        #[arg(long, default_value_t = 1)]
        cycles: usize,
        /// Load fractions of one day, comma-separated (default: the feeder's 24).
        #[arg(long, value_delimiter = ',')]
        fractions: Option<Vec<f64>>,
    },
}

fn shape(name: &str) -> anyhow::Result<Arrivals> {
    Ok(match name.trim() {
        "exponential" | "exp" => Arrivals::Exponential,
        "normal" => Arrivals::Normal,
        "fixed" => Arrivals::Fixed,
        "zipf" => Arrivals::Zipf,
        other => anyhow::bail!("--shapes: `{other}`: expected exponential, normal, fixed or zipf"),
    })
}

fn positive(flag: &str, v: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(
        v.is_finite() && v > 0.0,
        "{flag} {v}: expected a positive number"
    );
    Ok(v)
}

fn plan(schedule: &Schedule) -> anyhow::Result<(LoadPlan, &Common)> {
    Ok(match schedule {
        Schedule::Rate { common, rps } => (
            LoadPlan::constant(positive("--rps", *rps)?, common.duration, &common.paths),
            common,
        ),
        Schedule::GenLoad {
            common,
            run_min,
            run_max,
            rate_min,
            rate_max,
            backoff_min,
            backoff_max,
            scale,
            time_scale,
            rate_scale,
            shapes,
        } => {
            let range = |flag: &str, min: f64, max: f64| {
                anyhow::ensure!(
                    min >= 0.0 && min <= max,
                    "{flag}: expected 0 <= min <= max, got {min} .. {max}"
                );
                Ok(Range { min, max })
            };
            let g = GenLoad {
                duration_s: common.duration.as_secs_f64(),
                run_s: range(
                    "--run-min/--run-max",
                    run_min.as_secs_f64(),
                    run_max.as_secs_f64(),
                )?,
                rps: range("--rate-min/--rate-max", *rate_min, *rate_max)?,
                backoff_s: range(
                    "--backoff-min/--backoff-max",
                    backoff_min.as_secs_f64(),
                    backoff_max.as_secs_f64(),
                )?,
                time_scale: positive("--time-scale", time_scale.unwrap_or(*scale))?,
                rate_scale: positive("--rate-scale", rate_scale.unwrap_or(*scale))?,
                shapes: shapes.iter().map(|s| shape(s)).collect::<Result<_, _>>()?,
                paths: common.paths.clone(),
                seed: common.seed,
            };
            (g.plan(), common)
        }
        Schedule::DayNight {
            common,
            max_rps,
            breakpoints,
            cycles,
            fractions,
        } => {
            anyhow::ensure!(*breakpoints >= 1, "--breakpoints: expected >= 1");
            anyhow::ensure!(*cycles >= 1, "--cycles: expected >= 1");
            let fractions = fractions
                .clone()
                .unwrap_or_else(|| DAY_NIGHT_FRACTIONS.to_vec());
            anyhow::ensure!(
                fractions.iter().all(|f| f.is_finite() && *f >= 0.0) && !fractions.is_empty(),
                "--fractions: expected non-negative numbers"
            );
            let d = DayNight {
                fractions,
                breakpoints: *breakpoints,
                cycles: *cycles,
                duration_s: common.duration.as_secs_f64(),
                max_rps: positive("--max-rps", *max_rps)?,
                paths: common.paths.clone(),
            };
            (d.plan(), common)
        }
    })
}

fn print_table(s: &LoadSummary) {
    eprintln!(
        "{:<10} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "type",
        "ok",
        "rps",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "connect",
        "timeout",
        "5xx",
        "other"
    );
    let rows = s.types.iter().map(|(k, v)| (k.as_str(), v));
    for (label, t) in rows.chain(std::iter::once(("all", &s.total))) {
        let l = &t.latency;
        let e = &t.errors;
        eprintln!(
            "{label:<10} {:>8} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>7} {:>7} {:>7} {:>7}",
            t.ok,
            t.rps,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            e.connect,
            e.timeout,
            e.status_5xx,
            e.other
        );
    }
    if !s.peers.is_empty() {
        let total: u64 = s.peers.values().sum();
        let shares: Vec<String> = s
            .peers
            .iter()
            .map(|(p, n)| format!("{p} {:.1}%", 100.0 * *n as f64 / total as f64))
            .collect();
        eprintln!("peers: {}", shares.join(", "));
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (plan, common) = plan(&cli.schedule)?;
    if common.plan_only {
        println!("{}", serde_json::to_string_pretty(&plan)?);
        return Ok(());
    }
    let config = LoadConfig {
        timeout: common.timeout,
        max_inflight: common.max_inflight,
        seed: common.seed,
        ..LoadConfig::new(common.target.clone(), plan)
    };
    let summary = run_blocking(config)?;
    print_table(&summary);
    let json = serde_json::to_string_pretty(&summary)?;
    match &common.out {
        Some(path) => std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the summary to {}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}
