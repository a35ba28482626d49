//! `deep-sched-backend`: one emulated backend of the social network.
//!
//! ```text
//! deep-sched-backend --listen 127.0.0.1:18081 --name b1 --workers 8 --service exp:10
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use deep_sched_lab::backend::{
    Backend, BackendConfig, Degradation, Mode, ServiceTimes, SlowSchedule,
};
use deep_sched_lab::dist::Delay;

/// Emulated social-network backend: bounded workers, FIFO queue, service
/// time by waiting; GET /stats for its own service/queueing percentiles.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on (port 0: any free port, printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name sent in the X-Backend response header.
    #[arg(long, default_value = "backend")]
    name: String,
    /// Requests served at once; more wait in a FIFO queue.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Service time of the two reads (`exp:MEAN`, `normal:MEAN[,SD]`,
    /// `fixed:MS`, `zipf:MEAN[,N[,S]]`, `lognormal:MEAN[,SIGMA]`,
    /// `bimodal:FAST,SLOW[,P]`; ms).
    #[arg(long, default_value = "exp:10")]
    service: Delay,
    /// Service time of compose (default: the reads' shape with twice their mean).
    #[arg(long)]
    compose: Option<Delay>,
    /// Noisy neighbour: service-time multiplier while slow.
    #[arg(long, requires_all = ["slow_period", "slow_for"])]
    slow_factor: Option<f64>,
    /// Noisy neighbour: length of one cycle (e.g. 15s).
    #[arg(long, value_parser = humantime::parse_duration)]
    slow_period: Option<Duration>,
    /// Noisy neighbour: slow part at the start of each cycle (e.g. 5s).
    #[arg(long, value_parser = humantime::parse_duration)]
    slow_for: Option<Duration>,
    /// Degrading peer: service-time multiplier reached at the end of the
    /// ramp (grows linearly from 1).
    #[arg(long)]
    degrade_factor: Option<f64>,
    /// Degrading peer: when the ramp begins, after the start (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    degrade_after: Duration,
    /// Degrading peer: length of the ramp (e.g. 60s; 0s: a step).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    degrade_over: Duration,
    /// Fraction of requests answered 500 at once.
    #[arg(long)]
    error_rate: Option<f64>,
    /// Start refusing (not listening) or hanging (never answering).
    #[arg(long, value_parser = ["normal", "refuse", "hang"], default_value = "normal")]
    mode: String,
    /// Close every Nth accepted connection at once.
    #[arg(long)]
    drop_every: Option<u64>,
    /// Response body size, bytes.
    #[arg(long, default_value_t = 256)]
    response_bytes: usize,
    /// Seed of the service-time sampler.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn config(args: Args) -> anyhow::Result<BackendConfig> {
    let mut service = ServiceTimes::reads(args.service);
    if let Some(c) = args.compose {
        service.compose = c;
    }
    let mode = match (args.mode.as_str(), args.error_rate) {
        ("refuse", _) => Mode::Refuse,
        ("hang", _) => Mode::Hang,
        (_, Some(r)) if (0.0..=1.0).contains(&r) => Mode::Error5xx(r),
        (_, Some(r)) => anyhow::bail!("--error-rate {r}: expected a fraction in 0..=1"),
        _ => Mode::Normal,
    };
    let slow = match (args.slow_factor, args.slow_period, args.slow_for) {
        (Some(factor), Some(period), Some(slow_for)) => {
            anyhow::ensure!(
                factor.is_finite() && factor > 0.0,
                "--slow-factor {factor}: expected a positive number"
            );
            anyhow::ensure!(
                !period.is_zero() && slow_for <= period,
                "--slow-period {period:?} --slow-for {slow_for:?}: expected 0 < slow-for <= slow-period"
            );
            Some(SlowSchedule {
                factor,
                period,
                slow_for,
            })
        }
        _ => None,
    };
    let degrade = match args.degrade_factor {
        Some(factor) => {
            anyhow::ensure!(
                factor.is_finite() && factor > 0.0,
                "--degrade-factor {factor}: expected a positive number"
            );
            Some(Degradation {
                factor,
                start: args.degrade_after,
                ramp: args.degrade_over,
            })
        }
        None => None,
    };
    Ok(BackendConfig {
        name: args.name,
        listen: args.listen,
        workers: args.workers,
        service,
        slow,
        degrade,
        mode,
        drop_every: args.drop_every.filter(|&n| n > 0),
        response_bytes: args.response_bytes,
        seed: args.seed,
    })
}

fn main() -> anyhow::Result<()> {
    let config = config(Args::parse())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let backend = Backend::bind(config)?;
        let control = backend.control();
        // Scripts read the chosen address from the first line.
        println!("listening {} name {}", control.addr(), control.name());
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(true);
        });
        backend.serve(rx).await;
        anyhow::Ok(())
    })
}
