//! Fits the learner's GMM to a raw matrix and prints one JSON line with the
//! fit time and the mean log-likelihood; used by `scripts/bench-learner.sh`
//! to compare against scikit-learn on the very same data.
//!
//! `cargo run --release -p deep-sched-learn --example gmm_fit -- FILE D K [full|diag] [TOL] [MAX_ITER] [SEED]`
//!
//! `FILE` holds `n × D` little-endian `f64`, row-major (numpy's
//! `x.astype('<f8').tofile(FILE)`).

use std::io::Read;
use std::time::Instant;

use anyhow::{bail, Context};
use deep_sched_core::gmm::CovarianceKind;
use deep_sched_learn::em::{fit, GmmParams};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!("usage: gmm_fit FILE D K [full|diag] [TOL] [MAX_ITER] [SEED]");
    }
    let path = &args[0];
    let d: usize = args[1]
        .parse()
        .with_context(|| format!("D: \"{}\" is not a count", args[1]))?;
    let k: usize = args[2]
        .parse()
        .with_context(|| format!("K: \"{}\" is not a count", args[2]))?;
    let kind = match args.get(3).map(String::as_str).unwrap_or("full") {
        "full" => CovarianceKind::Full,
        "diag" => CovarianceKind::Diag,
        other => bail!("covariance: \"{other}\", expected full or diag"),
    };
    let tol: f64 = args.get(4).map_or(Ok(1e-3), |s| s.parse()).context("TOL")?;
    let max_iter: usize = args
        .get(5)
        .map_or(Ok(100), |s| s.parse())
        .context("MAX_ITER")?;
    let seed: u64 = args.get(6).map_or(Ok(0), |s| s.parse()).context("SEED")?;

    // Read straight into the matrix, so the file is not held twice.
    let file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading {path}"))?
        .len() as usize;
    if d == 0 || !len.is_multiple_of(8 * d) {
        bail!("{path}: {len} bytes is not a whole number of rows of {d} f64");
    }
    let mut reader = std::io::BufReader::new(file);
    let mut x = Vec::with_capacity(len / 8);
    let mut b = [0u8; 8];
    for _ in 0..len / 8 {
        reader
            .read_exact(&mut b)
            .with_context(|| format!("reading {path}"))?;
        x.push(f64::from_le_bytes(b));
    }
    let n = x.len() / d;
    let params = GmmParams::new(k)
        .covariance(kind)
        .tol(tol)
        .max_iter(max_iter)
        .seed(seed)
        .check(n)?;
    let start = Instant::now();
    let g = fit(&x, d, &params, |_, _| {});
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "n": n,
            "d": d,
            "k": k,
            "fit_seconds": secs,
            "iterations": g.curve.len().saturating_sub(1),
            "converged": g.converged,
            "mean_log_likelihood": g.mean_log_likelihood(),
            "threads": rayon::current_num_threads(),
        })
    );
    Ok(())
}
