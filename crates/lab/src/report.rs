//! Experiment reports: `report.md`, `summary.json` and PNG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use statrs::distribution::{Binomial, DiscreteCDF};

use crate::experiment::{summarise, BalancerSummary, RunResult, Scenario, Settings};
use crate::nginx::{Balancer, ONE_POOL};
use crate::percentiles::new_histogram;

/// Errors writing a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A `summary.json` lacks something a report needs, or is not JSON.
    #[error("{path}: {reason}")]
    Summary {
        /// The summary file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// A plot could not be drawn.
    #[error("plot {path}: {reason}")]
    Plot {
        /// PNG being drawn.
        path: PathBuf,
        /// Drawing error.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn perr<E: std::fmt::Display>(path: &Path, e: E) -> ReportError {
    ReportError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// How a scenario's runs were made, as its report states it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// Repetitions per balancer.
    pub reps: usize,
    /// Length of each run.
    pub duration: std::time::Duration,
    /// nginx `worker_processes`.
    pub worker_processes: usize,
    /// `nginx -v`'s version, e.g. `1.28.3`.
    pub nginx_version: String,
}

/// The plots a report links, with their titles, in order.
const PLOTS: [(&str, &str); 3] = [
    (
        "Latency by percentile (all repetitions merged)",
        "latency_percentiles.png",
    ),
    (
        "Per-peer share over time (first repetition)",
        "peer_share.png",
    ),
    (
        "deep_sched state over time (first repetition)",
        "state_timeline.png",
    ),
];

/// Writes `DIR/report.md`, `DIR/summary.json` and the plots for one
/// scenario; returns the report's path.
pub fn write_scenario_report(
    scenario: &Scenario,
    settings: &Settings,
    results: &[RunResult],
    nginx_version: &str,
    dir: &Path,
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let summaries = summarise(results);

    let info = RunInfo {
        reps: settings.reps,
        duration: settings.duration,
        worker_processes: settings.worker_processes,
        nginx_version: nginx_version.to_string(),
    };
    let json_path = dir.join("summary.json");
    let json = serde_json::json!({
        "scenario": scenario.id,
        "title": scenario.title,
        "duration_s": info.duration.as_secs_f64(),
        "reps": info.reps,
        "worker_processes": info.worker_processes,
        "nginx": info.nginx_version,
        "balancers": summaries,
        "runs": results.iter().map(|r| serde_json::json!({
            "balancer": r.balancer,
            "rep": r.rep,
            "total": r.load.total,
            "types": r.load.types,
            "peers": r.load.peers,
            "floor": r.floor,
            "backends": r.backends,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json).expect("json") + "\n",
    )
    .map_err(io_err(&json_path))?;

    let [cdf, share, states] = PLOTS.map(|(_, file)| dir.join(file));
    let drawn = [
        plot_percentiles(results, &cdf).map(|()| true),
        plot_shares(results, &share).map(|()| true),
        plot_states(results, &states),
    ];
    let mut plots = Vec::new();
    for (plot, outcome) in PLOTS.into_iter().zip(drawn) {
        match outcome {
            Ok(true) => plots.push(plot),
            Ok(false) => {}
            Err(e) => eprintln!("warning: {e}"),
        }
    }

    let md = render_markdown(scenario, &info, &summaries, &plots);
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(io_err(&path))?;
    Ok(path)
}

/// Rewrites `DIR/report.md` from `DIR/summary.json`, e.g. after the
/// report's wording or the targets changed, without running anything
/// again; returns the report's path. The plots need the runs' timelines,
/// which the summary does not keep: those already in `DIR` are linked,
/// not redrawn.
pub fn rerender_scenario_report(dir: &Path) -> Result<PathBuf, ReportError> {
    let path = dir.join("summary.json");
    let (v, summaries) = read_summary(&path)?;
    let bad = |reason: String| summary_error(&path, reason);
    let field = |name: &str| v.get(name).ok_or_else(|| bad(missing(name)));
    let id = field("scenario")?.as_str().unwrap_or_default();
    let scenario = Scenario::by_id(id).ok_or_else(|| bad(format!("unknown scenario `{id}`")))?;
    let count = |name: &str| {
        field(name)?
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(format!("`{name}` is not a count")))
    };
    let duration_s = field("duration_s")?
        .as_f64()
        .filter(|d| d.is_finite() && *d >= 0.0)
        .ok_or_else(|| bad("`duration_s` is not a length in seconds".into()))?;
    let info = RunInfo {
        reps: count("reps")?,
        duration: std::time::Duration::from_secs_f64(duration_s),
        worker_processes: count("worker_processes")?,
        nginx_version: field("nginx")?
            .as_str()
            .ok_or_else(|| bad("`nginx` is not a version string".into()))?
            .to_string(),
    };
    let plots: Vec<(&str, &str)> = PLOTS
        .into_iter()
        .filter(|(_, file)| dir.join(file).is_file())
        .collect();
    let md = render_markdown(&scenario, &info, &summaries, &plots);
    let out = dir.join("report.md");
    std::fs::write(&out, md).map_err(io_err(&out))?;
    Ok(out)
}

/// A `summary.json`: the whole document and its balancers.
fn read_summary(path: &Path) -> Result<(serde_json::Value, Vec<BalancerSummary>), ReportError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| summary_error(path, format!("not JSON: {e}")))?;
    let balancers = v
        .get("balancers")
        .ok_or_else(|| summary_error(path, missing("balancers")))?;
    let summaries = serde_json::from_value(balancers.clone())
        .map_err(|e| summary_error(path, format!("balancers: {e}")))?;
    Ok((v, summaries))
}

fn summary_error(path: &Path, reason: String) -> ReportError {
    ReportError::Summary {
        path: path.to_path_buf(),
        reason,
    }
}

fn missing(field: &str) -> String {
    format!("no `{field}` (written by an older release? run it again)")
}

fn render_markdown(
    scenario: &Scenario,
    info: &RunInfo,
    summaries: &[BalancerSummary],
    plots: &[(&str, &str)],
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {} — {}\n", scenario.id, scenario.title);
    let _ = writeln!(
        md,
        "- backends: {}",
        scenario
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let slow = b.slow.map_or(String::new(), |s| {
                    format!(
                        ", {}x slower {:?} of every {:?}",
                        s.factor, s.slow_for, s.period
                    )
                });
                let degrade = b.degrade.map_or(String::new(), |d| {
                    format!(
                        ", degrading to {}x slower from {:.0}% to {:.0}% of each run",
                        d.factor,
                        d.from * 100.0,
                        d.to * 100.0
                    )
                });
                let reads = if b.service.user_timeline == b.service.home_timeline {
                    format!("reads {}", b.service.home_timeline)
                } else {
                    format!(
                        "home {} / user {}",
                        b.service.home_timeline, b.service.user_timeline
                    )
                };
                format!(
                    "b{} {} workers, compose {} / {reads} ms{slow}{degrade}",
                    i + 1,
                    b.workers,
                    b.service.compose,
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(md, "- load: {} (open loop)", scenario.describe_load());
    if let Some(crate::experiment::Event::PeerDies { peer, at }) = scenario.event {
        let _ = writeln!(
            md,
            "- event: b{} stops listening at {:.0}% of each run",
            peer + 1,
            at * 100.0
        );
    }
    let _ = writeln!(
        md,
        "- {} repetitions x {:?} per balancer, interleaved; medians below; nginx {} with {} worker processes",
        info.reps, info.duration, info.nginx_version, info.worker_processes
    );
    let _ = writeln!(
        md,
        "- floor = p99 of the backends' own service time (no balancer can go below it)\n"
    );
    let peers: Vec<String> = summaries
        .first()
        .map(|s| s.shares.keys().cloned().collect())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "| balancer | p50 ms | p90 ms | p99 ms | p99.9 ms | floor p99 ms | p99 / floor | req/s | errors | share {} |",
        peers.join(" / ")
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for s in summaries {
        let shares: Vec<String> = if s.balancer == ONE_POOL {
            vec!["(one backend, one queue)".to_string()]
        } else {
            s.shares
                .values()
                .map(|v| format!("{:.0}%", v * 100.0))
                .collect()
        };
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} | {} |",
            s.balancer,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.p999_ms,
            s.floor_p99_ms,
            s.p99_ms / s.floor_p99_ms.max(1e-9),
            s.rps,
            s.errors,
            shares.join(" / ")
        );
    }
    let builtins: Vec<&BalancerSummary> = summaries
        .iter()
        .filter(|s| Balancer::is_builtin_name(&s.balancer))
        .collect();
    let best = builtins
        .iter()
        .copied()
        .min_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
    if let Some(best) = best {
        let _ = writeln!(
            md,
            "\nBest built-in by p99: **{}** ({:.1} ms, {:.1} ms above the floor).",
            best.balancer,
            best.p99_ms,
            best.p99_ms - best.floor_p99_ms
        );
        if let Some(pool) = summaries.iter().find(|s| s.balancer == ONE_POOL) {
            let _ = writeln!(
                md,
                "Reference, not a balancer: **{ONE_POOL}**, every worker in one backend with one FIFO queue, what a perfect balancer over these backends would get: p99 {:.1} ms = {:.2} x the best built-in.",
                pool.p99_ms,
                pool.p99_ms / best.p99_ms.max(1e-9)
            );
        }
        for ds in summaries
            .iter()
            .filter(|s| s.balancer.starts_with("deep_sched"))
        {
            let _ = writeln!(
                md,
                "{}: p99 {:.1} ms = {:.2} x the best built-in; excess over the floor {:.1} ms = {:.2} x the best built-in's; {}.",
                ds.balancer,
                ds.p99_ms,
                ds.p99_ms / best.p99_ms.max(1e-9),
                ds.p99_ms - ds.floor_p99_ms,
                (ds.p99_ms - ds.floor_p99_ms) / (best.p99_ms - best.floor_p99_ms).max(1e-9),
                failures_against(ds, best, &builtins)
            );
        }
    }
    let _ = writeln!(md, "\n## Spread and details\n");
    let _ = writeln!(
        md,
        "| balancer | p99 of each run, ms | p99 per request type (median), ms | failures: connect / timeout / 5xx / other (all runs) |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    for s in summaries {
        let runs: Vec<String> = s.p99_runs_ms.iter().map(|x| format!("{x:.1}")).collect();
        let types: Vec<String> = s
            .type_p99_ms
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect();
        let e = s.errors_by_kind;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} / {} / {} / {} |",
            s.balancer,
            runs.join(", "),
            types.join(", "),
            e.connect,
            e.timeout,
            e.status_5xx,
            e.other
        );
    }
    for (title, file) in plots {
        let _ = writeln!(md, "\n## {title}\n\n![{title}]({file})");
    }
    let _ = writeln!(
        md,
        "\nRaw per-run numbers: `summary.json`. Reproduce: `scripts/experiment.sh {}`.",
        scenario.id
    );
    md
}

const COLORS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
];

fn balancers_in_order(results: &[RunResult]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for r in results {
        if !v.contains(&r.balancer) {
            v.push(r.balancer.clone());
        }
    }
    v
}

/// Latency (log scale) against percentile on a "nines" axis
/// `x = -log10(1 - q)` (1 = p90, 2 = p99, 3 = p99.9), one line per balancer.
fn plot_percentiles(results: &[RunResult], path: &Path) -> Result<(), ReportError> {
    let mut lines = Vec::new();
    let mut y_max: f64 = 1.0;
    let mut y_min: f64 = f64::MAX;
    for name in balancers_in_order(results) {
        let mut h = new_histogram();
        for r in results.iter().filter(|r| r.balancer == name) {
            if let Some(x) = &r.load.histogram {
                h.add(x).map_err(|e| perr(path, e))?;
            }
        }
        if h.is_empty() {
            continue;
        }
        let pts: Vec<(f64, f64)> = (0..=350)
            .map(|i| {
                let nines = i as f64 / 100.0;
                let q = 1.0 - 10f64.powf(-nines);
                let ms = h.value_at_quantile(q) as f64 / 1000.0;
                (nines, ms.max(0.01))
            })
            .collect();
        for &(_, y) in &pts {
            y_max = y_max.max(y);
            y_min = y_min.min(y);
        }
        lines.push((name, pts));
    }
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency by percentile", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..3.5f64,
            (y_min.max(0.1) * 0.8..y_max * 1.2).log_scale(),
        )
        .map_err(|e| perr(path, e))?;
    chart
        .configure_mesh()
        .x_desc("percentile (1 = p90, 2 = p99, 3 = p99.9)")
        .y_desc("latency, ms (log)")
        .x_label_formatter(&|x| match (*x * 10.0).round() as i64 {
            0 => "p0".into(),
            10 => "p90".into(),
            20 => "p99".into(),
            30 => "p99.9".into(),
            _ => format!("{x:.1}"),
        })
        .draw()
        .map_err(|e| perr(path, e))?;
    for (i, (name, pts)) in lines.into_iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(|e| perr(path, e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| perr(path, e))?;
    root.present().map_err(|e| perr(path, e))?;
    Ok(())
}

/// Share of each backend per second, one panel per balancer (first run).
fn plot_shares(results: &[RunResult], path: &Path) -> Result<(), ReportError> {
    // the one-pool reference has a single backend: nothing to share
    let mut names = balancers_in_order(results);
    names.retain(|n| n != ONE_POOL);
    let firsts: Vec<&RunResult> = names
        .iter()
        .filter_map(|n| results.iter().find(|r| &r.balancer == n))
        .collect();
    let rows = firsts.len().max(1);
    let root = BitMapBackend::new(path, (900, 180 * rows as u32 + 20)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(path, e))?;
    let panels = root.split_evenly((rows, 1));
    for (panel, run) in panels.iter().zip(firsts) {
        let t_max = run.load.timeline.len().max(1) as f64;
        let mut chart = ChartBuilder::on(panel)
            .caption(&run.balancer, ("sans-serif", 16))
            .margin(6)
            .x_label_area_size(26)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..t_max, 0f64..1f64)
            .map_err(|e| perr(path, e))?;
        chart
            .configure_mesh()
            .y_desc("share")
            .x_desc("s")
            .y_labels(5)
            .draw()
            .map_err(|e| perr(path, e))?;
        let peers: Vec<String> = run.backends.iter().map(|b| b.backend.clone()).collect();
        for (i, peer) in peers.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let pts: Vec<(f64, f64)> = run
                .load
                .timeline
                .iter()
                .map(|s| {
                    let total: u64 = s.peers.values().sum();
                    let n = s.peers.get(peer).copied().unwrap_or(0);
                    (s.t as f64 + 0.5, n as f64 / total.max(1) as f64)
                })
                .collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))
                .map_err(|e| perr(path, e))?
                .label(peer.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| perr(path, e))?;
    }
    root.present().map_err(|e| perr(path, e))?;
    Ok(())
}

/// deep_sched's state per decision (from its sample log) for the first
/// deep_sched run; `false` when there is none.
fn plot_states(results: &[RunResult], path: &Path) -> Result<bool, ReportError> {
    let Some(log) = results.iter().find_map(|r| r.decisions.clone()) else {
        return Ok(false);
    };
    let Ok(text) = std::fs::read_to_string(&log) else {
        return Ok(false);
    };
    let mut pts: Vec<(f64, f64)> = Vec::new();
    let mut t0 = None;
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(t), Some(state)) = (v["time_ms"].as_f64(), v["state"].as_f64()) else {
            continue;
        };
        let t0 = *t0.get_or_insert(t);
        pts.push(((t - t0) / 1000.0, state));
    }
    if pts.is_empty() {
        return Ok(false);
    }
    let t_max = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let s_max = pts.iter().map(|p| p.1).fold(1.0, f64::max);
    let root = BitMapBackend::new(path, (900, 320)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("deep_sched state per decision", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(44)
        .build_cartesian_2d(0f64..t_max, -0.5f64..s_max + 0.5)
        .map_err(|e| perr(path, e))?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("state")
        .draw()
        .map_err(|e| perr(path, e))?;
    chart
        .draw_series(LineSeries::new(pts.clone(), COLORS[0].stroke_width(1)))
        .map_err(|e| perr(path, e))?;
    chart
        .draw_series(
            pts.into_iter()
                .map(|p| Circle::new(p, 3, COLORS[0].filled())),
        )
        .map_err(|e| perr(path, e))?;
    root.present().map_err(|e| perr(path, e))?;
    Ok(true)
}

/// Standard deviation of per-peer request counts, by balancer and number
/// of peers (the consistent-hashing study).
pub type DistributionTable = BTreeMap<String, BTreeMap<usize, f64>>;

/// One cell of the key distribution study (consistent hashing of 10,000
/// distinct keys over N peers of weight 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyCell {
    /// Standard deviation of the per-peer share of the keys, percentage
    /// points (`100 · sd(counts) / keys`).
    pub share_sd_pct: f64,
    /// Keys that move when a peer is added (N → N+1), % (ideal 100/(N+1)).
    pub moved_add_pct: Option<f64>,
    /// Keys that move when the first peer is removed (N → N−1), % (ideal
    /// 100/N: exactly its own keys).
    pub moved_remove_pct: Option<f64>,
}

/// The key study by hash function (row) and N.
pub type KeyTable = BTreeMap<String, BTreeMap<usize, KeyCell>>;

/// Writes the key study into `DIR/keys.md` and `DIR/keys.png` (std. dev.
/// of the share by N, one line per hash function).
pub fn write_key_report(
    table: &KeyTable,
    keys: usize,
    nginx_version: &str,
    dir: &Path,
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ns: Vec<usize> = table
        .values()
        .flat_map(|m| m.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Consistent hashing of {keys} keys over N peers
"
    );
    let _ = writeln!(
        md,
        "{keys} distinct request URIs (`/wrk2-api/home-timeline/read?user=i`), N peers of weight 1, \
         160 points per peer. deep_sched's ring (the module's `choose=hash` as plain consistent hashing: \
         with idle peers the load bound never acts) with each hash function the core offers, computed \
         in process (point j of a peer = the hash of its address continued over j); nginx \
         {nginx_version}'s `hash $request_uri consistent` (ketama: crc32, each point from the previous \
         one) measured through the real nginx, each key sent once. Ideal: share std. dev. 0; keys \
         moved on adding a peer 100/(N+1) %, on removing one 100/N % (only its own).\n"
    );
    let header = |md: &mut String, what: &str| {
        let _ = writeln!(
            md,
            "
## {what}

| hash | {} |",
            ns.iter()
                .map(|n| format!("N={n}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(md, "|---|{}", "---:|".repeat(ns.len()));
    };
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    header(
        &mut md,
        "Std. dev. of the per-peer share, percentage points",
    );
    for (h, row) in table {
        let cells: Vec<String> = ns
            .iter()
            .map(|n| pct(row.get(n).map(|c| c.share_sd_pct)))
            .collect();
        let _ = writeln!(md, "| {h} | {} |", cells.join(" | "));
    }
    header(&mut md, "Keys moved when a peer is added (N → N+1), %");
    let _ = writeln!(
        md,
        "| ideal | {} |",
        ns.iter()
            .map(|n| format!("{:.1}", 100.0 / (n + 1) as f64))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    for (h, row) in table {
        let cells: Vec<String> = ns
            .iter()
            .map(|n| pct(row.get(n).and_then(|c| c.moved_add_pct)))
            .collect();
        let _ = writeln!(md, "| {h} | {} |", cells.join(" | "));
    }
    header(
        &mut md,
        "Keys moved when the first peer is removed (N → N−1), %",
    );
    for (h, row) in table {
        let cells: Vec<String> = ns
            .iter()
            .map(|n| pct(row.get(n).and_then(|c| c.moved_remove_pct)))
            .collect();
        let _ = writeln!(md, "| {h} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "
A removal moves exactly the removed peer's keys (its share, whose spread the first table shows); an addition moves the keys the new peer's points take."
    );
    let sd: DistributionTable = table
        .iter()
        .map(|(h, row)| {
            (
                h.clone(),
                row.iter().map(|(n, c)| (*n, c.share_sd_pct)).collect(),
            )
        })
        .collect();
    let png = dir.join("keys.png");
    match plot_lines(
        &sd,
        &ns,
        &png,
        "std. dev. of the per-peer share of 10,000 keys",
        "std. dev., % points",
    ) {
        Ok(()) => {
            let _ = writeln!(md, "\n![share std. dev. by N](keys.png)");
        }
        Err(e) => eprintln!("warning: {e}"),
    }
    let _ = writeln!(md, "\nReproduce: `scripts/experiment.sh distribution`.");
    let path = dir.join("keys.md");
    std::fs::write(&path, md).map_err(io_err(&path))?;
    Ok(path)
}

/// Writes `DIR/report.md` and `DIR/distribution.png` for the distribution
/// analysis.
pub fn write_distribution_report(
    table: &DistributionTable,
    requests: u64,
    nginx_version: &str,
    dir: &Path,
) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ns: Vec<usize> = table
        .values()
        .flat_map(|m| m.keys().copied())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut md = String::new();
    let _ = writeln!(md, "# Distribution of {requests} requests over N peers\n");
    let _ = writeln!(
        md,
        "Standard deviation of the per-peer request counts (lower = more even; a perfectly even split gives 0). nginx {nginx_version}; idle fast backends, so only the balancer decides.\n"
    );
    let _ = writeln!(
        md,
        "| balancer | {} |",
        ns.iter()
            .map(|n| format!("N={n}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(md, "|---|{}", "---:|".repeat(ns.len()));
    for (b, row) in table {
        let cells: Vec<String> = ns
            .iter()
            .map(|n| row.get(n).map_or("-".into(), |v| format!("{v:.1}")))
            .collect();
        let _ = writeln!(md, "| {b} | {} |", cells.join(" | "));
    }
    let png = dir.join("distribution.png");
    let plotted = plot_lines(
        table,
        &ns,
        &png,
        "std. dev. of per-peer counts",
        "std. dev., requests",
    );
    if let Err(e) = &plotted {
        eprintln!("warning: {e}");
    } else {
        let _ = writeln!(md, "\n![standard deviation by N](distribution.png)");
    }
    let _ = writeln!(md, "\nReproduce: `scripts/experiment.sh distribution`.");
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(io_err(&path))?;
    Ok(path)
}

fn plot_lines(
    table: &DistributionTable,
    ns: &[usize],
    path: &Path,
    caption: &str,
    y_desc: &str,
) -> Result<(), ReportError> {
    let y_max = table
        .values()
        .flat_map(|m| m.values().copied())
        .fold(1.0, f64::max);
    let (n_min, n_max) = (
        *ns.first().unwrap_or(&2) as f64,
        *ns.last().unwrap_or(&6) as f64,
    );
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(path, e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(n_min - 0.2..n_max + 0.2, 0f64..y_max * 1.15)
        .map_err(|e| perr(path, e))?;
    chart
        .configure_mesh()
        .x_desc("peers N")
        .y_desc(y_desc)
        .x_labels(ns.len())
        .draw()
        .map_err(|e| perr(path, e))?;
    for (i, (b, row)) in table.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = row.iter().map(|(n, v)| (*n as f64, *v)).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| perr(path, e))?
            .label(b.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(|e| perr(path, e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| perr(path, e))?;
    root.present().map_err(|e| perr(path, e))?;
    Ok(())
}

/// The goal deep_sched has in a scenario, relative to the best built-in
/// (lowest median p99) and the floor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// `p99 ≤ ratio · best p99`.
    P99Ratio(f64),
    /// `p99 − floor ≤ ratio · (best p99 − floor)`.
    ExcessRatio(f64),
    /// No more failed requests than the best built-in, summed over the
    /// repetitions (per run, if the counts of runs differ). Medians of
    /// counts that are 0 to 3 per run say nothing; sums do, and
    /// [`more_failures_p`] says whether an excess is more than chance.
    NoMoreErrors,
}

impl Target {
    /// The target of scenario `id` (SPEC goals).
    pub fn of(id: &str) -> Option<Target> {
        match id {
            "S1" => Some(Target::P99Ratio(1.02)),
            "S2" => Some(Target::ExcessRatio(0.5)),
            "S3" | "S5" | "S6" => Some(Target::P99Ratio(0.8)),
            "S4" => Some(Target::NoMoreErrors),
            _ => None,
        }
    }

    /// The p99 bound in ms, given the best built-in's p99 and the floor
    /// (`None` for a target on failures).
    pub fn bound_ms(&self, best_p99: f64, floor: f64) -> Option<f64> {
        match *self {
            Target::P99Ratio(r) => Some(r * best_p99),
            Target::ExcessRatio(r) => Some(floor + r * (best_p99 - floor)),
            Target::NoMoreErrors => None,
        }
    }

    /// The bound as text, given the best built-in's numbers.
    pub fn bound(&self, best: &BalancerSummary, floor: f64) -> String {
        let ms = self.bound_ms(best.p99_ms, floor).unwrap_or(0.0);
        match *self {
            Target::P99Ratio(r) => format!("p99 ≤ {r} x best = {ms:.1} ms"),
            Target::ExcessRatio(r) => format!("p99 ≤ floor + {r} x best's excess = {ms:.1} ms"),
            Target::NoMoreErrors => format!(
                "failures ≤ {} (sum of {} runs)",
                best.errors_by_kind.total(),
                best.runs
            ),
        }
    }

    /// Whether `deep_sched` (`ds`) meets it against the best built-in.
    pub fn met(&self, ds: &BalancerSummary, best: &BalancerSummary, floor: f64) -> bool {
        match *self {
            Target::P99Ratio(r) => ds.p99_ms <= r * best.p99_ms,
            Target::ExcessRatio(r) => ds.p99_ms - floor <= r * (best.p99_ms - floor),
            Target::NoMoreErrors => failures_per_run(ds) <= failures_per_run(best),
        }
    }
}

/// One-sided exact test of "`a` failures in `runs_a` runs are more than
/// `b` in `runs_b` by chance". If both come from the same Poisson rate per
/// run, `a` given `a + b` is Binomial(a + b, runs_a / (runs_a + runs_b));
/// the answer is `P(X ≥ a)` under that law (1 when `a` is 0). Small means
/// the excess is real.
pub fn more_failures_p(a: u64, runs_a: usize, b: u64, runs_b: usize) -> f64 {
    if a == 0 || runs_a + runs_b == 0 {
        return 1.0;
    }
    let share = runs_a as f64 / (runs_a + runs_b) as f64;
    Binomial::new(share, a.saturating_add(b)).map_or(1.0, |law| law.sf(a - 1))
}

/// Failed requests per run, summed over the runs of `s`.
fn failures_per_run(s: &BalancerSummary) -> f64 {
    s.errors_by_kind.total() as f64 / s.runs.max(1) as f64
}

/// "A vs B failed requests" over all runs, with the exact test when
/// deep_sched has more, and the built-in with the fewest when that is not
/// the best one (it is named, so the choice of comparison hides nothing).
fn failures_against(
    ds: &BalancerSummary,
    best: &BalancerSummary,
    builtins: &[&BalancerSummary],
) -> String {
    let (a, b) = (ds.errors_by_kind.total(), best.errors_by_kind.total());
    let mut text = format!("{a} vs {b} failed requests over all runs");
    if failures_per_run(ds) > failures_per_run(best) {
        let p = more_failures_p(a, ds.runs, b, best.runs);
        let _ = write!(text, " (more by chance? one-sided exact test p = {p:.2})");
    }
    let fewest = builtins
        .iter()
        .min_by(|x, y| failures_per_run(x).total_cmp(&failures_per_run(y)));
    if let Some(f) = fewest.filter(|f| failures_per_run(f) < failures_per_run(best)) {
        let c = f.errors_by_kind.total();
        let p = more_failures_p(a, ds.runs, c, f.runs);
        let _ = write!(
            text,
            "; fewest of any built-in: {} {c} (p = {p:.2})",
            f.balancer
        );
    }
    text
}

/// The `## lab` section of BENCHMARKS.md from `results/S*/summary.json`.
pub fn benchmarks_section(results_dir: &Path, command: &str) -> Result<String, ReportError> {
    let mut md = String::new();
    let _ = writeln!(md, "## lab\n");
    let _ = writeln!(
        md,
        "Command: `{command}`, then `deep-sched-lab benchmarks` (2 shared cores; nginx, backends and load generator on the same machine). \
Median p99 in ms over interleaved repetitions, (min–max) of the runs, failed requests summed over the runs; floor = p99 of the backends' own service time; \
one pool = the same workers in a single backend with one queue, what a perfect balancer would get (where one backend can stand for the scenario's). \
Scenarios and protocol: docs/lab.md; full reports: `results/S*/report.md`.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | floor | one pool (reference) | round robin | least_conn | random two least_conn | hash consistent | deep_sched | deep_sched choose=p2c | target for deep_sched | met (wrr / p2c) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|");
    let names = [
        ONE_POOL,
        "round_robin",
        "least_conn",
        "random_two_least_conn",
        "hash_consistent",
        "deep_sched",
        "deep_sched_p2c",
    ];
    for id in ["S1", "S2", "S3", "S4", "S5", "S6"] {
        let path = results_dir.join(id).join("summary.json");
        if !path.is_file() {
            continue;
        }
        let (_, summaries) = read_summary(&path)?;
        let cell = |name: &str| {
            summaries
                .iter()
                .find(|s| s.balancer == name)
                .map_or("—".to_string(), |s| {
                    let lo = s.p99_runs_ms.iter().copied().fold(f64::MAX, f64::min);
                    let hi = s.p99_runs_ms.iter().copied().fold(0.0, f64::max);
                    let failed = s.errors_by_kind.total();
                    let errors = if id == "S4" || failed > 0 {
                        format!(", {failed} failed")
                    } else {
                        String::new()
                    };
                    format!("{:.1} ({lo:.1}–{hi:.1}){errors}", s.p99_ms)
                })
        };
        let builtins: Vec<&BalancerSummary> = summaries
            .iter()
            .filter(|s| Balancer::is_builtin_name(&s.balancer))
            .collect();
        let best = builtins.iter().min_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
        let floor = median(&summaries.iter().map(|s| s.floor_p99_ms).collect::<Vec<_>>());
        let (target, met) = match (best, Target::of(id)) {
            (Some(best), Some(t)) => {
                let met_by = |name: &str| {
                    summaries
                        .iter()
                        .find(|s| s.balancer == name)
                        .map_or("—".to_string(), |ds| {
                            if t.met(ds, best, floor) {
                                "yes".into()
                            } else if t == Target::NoMoreErrors {
                                let p = more_failures_p(
                                    ds.errors_by_kind.total(),
                                    ds.runs,
                                    best.errors_by_kind.total(),
                                    best.runs,
                                );
                                format!("**no** (p = {p:.2})")
                            } else {
                                "**no**".into()
                            }
                        })
                };
                let mut met = format!("{} / {}", met_by("deep_sched"), met_by("deep_sched_p2c"));
                let pool = summaries.iter().find(|s| s.balancer == ONE_POOL);
                if let (Some(pool), Some(bound)) = (pool, t.bound_ms(best.p99_ms, floor)) {
                    if bound < pool.p99_ms && bound >= floor {
                        met.push_str(" (bound below one pool)");
                    }
                }
                let fixed = Scenario::by_id(id).is_some_and(|s| s.floor_is_fixed());
                if fixed && t.bound_ms(best.p99_ms, floor).is_some_and(|b| b < floor) {
                    // every request takes at least its own service time
                    met.push_str(" (bound below the floor)");
                }
                (
                    format!("best built-in {}: {}", best.balancer, t.bound(best, floor)),
                    met,
                )
            }
            _ => ("—".into(), "—".into()),
        };
        let cells: Vec<String> = names.iter().map(|n| cell(n)).collect();
        let _ = writeln!(
            md,
            "| {id} | {floor:.1} | {} | {target} | {met} |",
            cells.join(" | ")
        );
    }
    let dist = results_dir.join("distribution").join("report.md");
    if dist.is_file() {
        let _ = writeln!(
            md,
            "\nDistribution of 10,000 requests over N = 2..6 peers (std. dev. of per-peer counts): `results/distribution/report.md`."
        );
    }
    if results_dir.join("distribution").join("keys.md").is_file() {
        let _ = writeln!(
            md,
            "\nConsistent hashing of 10,000 keys over N = 2..6 peers by hash function and nginx's ketama (share std. dev., keys moved on adding or removing a peer): `results/distribution/keys.md`."
        );
    }
    Ok(md)
}

fn median(xs: &[f64]) -> f64 {
    crate::experiment::median(xs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that `text` contains `needle`, showing `text` if not.
    #[track_caller]
    fn has(text: &str, needle: &str) {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }

    fn summary(name: &str, p99: f64, floor: f64, errors: f64) -> BalancerSummary {
        BalancerSummary {
            balancer: name.into(),
            runs: 3,
            p50_ms: 10.0,
            p90_ms: 25.0,
            p99_ms: p99,
            p999_ms: p99 * 1.5,
            p99_runs_ms: vec![p99 - 1.0, p99, p99 + 2.0],
            floor_p99_ms: floor,
            rps: 1000.0,
            errors,
            errors_by_kind: Default::default(),
            shares: BTreeMap::new(),
            type_p99_ms: BTreeMap::new(),
        }
    }

    /// `summary` with `failed` 5xx answers summed over its runs.
    fn failing(name: &str, p99: f64, failed: u64) -> BalancerSummary {
        let mut s = summary(name, p99, 47.0, 0.0);
        s.errors_by_kind.status_5xx = failed;
        s
    }

    #[test]
    fn targets_compare_against_the_best_builtin() {
        // S2: best 60 ms over a 46 ms floor: excess 14, half is 7 → ≤ 53 ms
        let best = summary("least_conn", 60.0, 46.0, 0.0);
        let t = Target::of("S2").unwrap();
        assert!(t.met(&summary("deep_sched", 53.0, 46.0, 0.0), &best, 46.0));
        assert!(!t.met(&summary("deep_sched", 53.5, 46.0, 0.0), &best, 46.0));
        let best = summary("least_conn", 76.0, 46.0, 0.0);
        let t = Target::of("S3").unwrap();
        assert!(t.met(&summary("deep_sched", 60.0, 46.0, 0.0), &best, 46.0));
        assert!(!t.met(&summary("deep_sched", 61.0, 46.0, 0.0), &best, 46.0));
        // S4 counts failures summed over the runs, whatever the p99
        let t = Target::of("S4").unwrap();
        let best = failing("least_conn", 50.0, 6);
        assert!(t.met(&failing("deep_sched", 99.0, 6), &best, 46.0));
        assert!(!t.met(&failing("deep_sched", 40.0, 7), &best, 46.0));
        assert_eq!(t.bound(&best, 46.0), "failures ≤ 6 (sum of 3 runs)");
        // per run when the counts of runs differ: 7 in 4 runs < 6 in 3
        let mut ds = failing("deep_sched", 50.0, 7);
        ds.runs = 4;
        assert!(t.met(&ds, &best, 46.0));
        assert_eq!(Target::of("S9"), None);
    }

    #[test]
    fn the_failure_test_is_the_binomial_tail() {
        // no failures, or fewer than the other: nothing to explain
        assert_eq!(more_failures_p(0, 3, 9, 3), 1.0);
        // 5 vs 0 in equal runs: all five on one side, 2^-5
        assert!((more_failures_p(5, 3, 0, 3) - 1.0 / 32.0).abs() < 1e-12);
        // 3 vs 3: P(X ≥ 3) for Binomial(6, ½) = (20 + 15 + 6 + 1) / 64
        assert!((more_failures_p(3, 3, 3, 3) - 42.0 / 64.0).abs() < 1e-12);
        // 2 in 1 run vs 0 in 3: Binomial(2, ¼), P(X = 2) = 1/16
        assert!((more_failures_p(2, 1, 0, 3) - 1.0 / 16.0).abs() < 1e-12);
        // more failures on one side is ever less likely by chance
        let ps: Vec<f64> = (10..=20).map(|a| more_failures_p(a, 9, 10, 9)).collect();
        assert!(ps.windows(2).all(|w| w[1] < w[0]), "{ps:?}");
        assert_eq!(more_failures_p(1, 0, 0, 0), 1.0);
    }

    /// How the runs were made, for rendering (nothing is run).
    fn info() -> RunInfo {
        RunInfo {
            reps: 3,
            duration: std::time::Duration::from_secs(20),
            worker_processes: 2,
            nginx_version: "1.28".into(),
        }
    }

    /// The BENCHMARKS section from one scenario's summaries, and its row.
    fn section_of(id: &str, balancers: &[BalancerSummary], command: &str) -> (String, String) {
        let dir = std::env::temp_dir().join(format!("lab-bench-{id}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let json = serde_json::json!({ "scenario": id, "balancers": balancers });
        std::fs::write(dir.join(id).join("summary.json"), json.to_string()).unwrap();
        let md = benchmarks_section(&dir, command).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {id} |")))
            .expect(&md)
            .to_string();
        (md, row)
    }

    #[test]
    fn benchmarks_section_reads_summaries_and_checks_targets() {
        let balancers = [
            summary("round_robin", 400.0, 47.0, 0.0),
            summary("least_conn", 76.0, 47.0, 0.0),
            summary("deep_sched", 58.0, 47.0, 0.0),
        ];
        let (md, row) = section_of("S3", &balancers, "scripts/experiment.sh S3");
        has(&row, "| 76.0 (75.0–78.0) |");
        has(&row, "best built-in least_conn: p99 ≤ 0.8 x best = 60.8 ms");
        assert!(row.ends_with("| yes / — |"), "{row}");
        assert!(md.contains("`scripts/experiment.sh S3`"));
    }

    #[test]
    fn one_pool_is_a_reference_not_the_best_builtin() {
        // the pool beats every built-in but must not become "the best
        // built-in"; the 0.8 x 110 = 88 ms bound is below its 100 ms
        let balancers = [
            summary("least_conn", 120.0, 70.0, 0.0),
            summary("random_two_least_conn", 110.0, 70.0, 0.0),
            summary(ONE_POOL, 100.0, 70.0, 0.0),
            summary("deep_sched_p2c", 105.0, 70.0, 0.0),
        ];
        let (_, row) = section_of("S5", &balancers, "x");
        assert!(
            row.starts_with("| S5 | 70.0 | 100.0 (99.0–102.0) | — |"),
            "{row}"
        );
        has(
            &row,
            "best built-in random_two_least_conn: p99 ≤ 0.8 x best = 88.0 ms",
        );
        assert!(
            row.ends_with("| — / **no** (bound below one pool) |"),
            "{row}"
        );

        let scenario = Scenario::by_id("S5").unwrap();
        let text = render_markdown(&scenario, &info(), &balancers, &[]);
        assert!(
            text.contains("Best built-in by p99: **random_two_least_conn** (110.0 ms"),
            "{text}"
        );
        has(&text, "| one_pool | 10.0 |");
        has(&text, "(one backend, one queue)");
        has(
            &text,
            "perfect balancer over these backends would get: p99 100.0 ms = 0.91 x",
        );
    }

    #[test]
    fn failures_are_judged_by_sums_against_the_best_builtin_with_the_test() {
        // least_conn is the best by p99; hash fails least but is not the
        // bound, and it is named with its own p
        let balancers = [
            failing("least_conn", 52.0, 6),
            failing("hash_consistent", 108.0, 1),
            failing("deep_sched", 65.0, 5),
            failing("deep_sched_p2c", 53.0, 9),
        ];
        let (_, row) = section_of("S4", &balancers, "x");
        has(&row, "| 52.0 (51.0–54.0), 6 failed |");
        has(
            &row,
            "best built-in least_conn: failures ≤ 6 (sum of 3 runs)",
        );
        // 9 vs 6: P(X ≥ 9) for Binomial(15, ½) = 0.30
        assert!(row.ends_with("| yes / **no** (p = 0.30) |"), "{row}");

        let scenario = Scenario::by_id("S4").unwrap();
        let text = render_markdown(&scenario, &info(), &balancers, &[]);
        has(&text, "deep_sched_p2c: p99 53.0 ms = 1.02 x the best built-in; excess over the floor 6.0 ms = 1.20 x the best built-in's; 9 vs 6 failed requests over all runs (more by chance? one-sided exact test p = 0.30); fewest of any built-in: hash_consistent 1 (p = 0.01).");
        has(&text, "deep_sched: p99 65.0 ms = 1.25 x the best built-in; excess over the floor 18.0 ms = 3.60 x the best built-in's; 5 vs 6 failed requests over all runs; fewest");
    }

    #[test]
    fn a_bound_below_the_floor_is_flagged_as_such() {
        // S6-like: 0.8 x 54.8 = 43.8 ms < the 46.8 ms floor; no request is
        // faster than its own service time, so no balancer can meet it
        let balancers = [
            summary("least_conn", 54.8, 46.8, 0.0),
            summary(ONE_POOL, 48.4, 46.8, 0.0),
            summary("deep_sched_p2c", 49.3, 46.8, 0.0),
        ];
        let (_, row) = section_of("S6", &balancers, "x");
        assert!(
            row.ends_with("| — / **no** (bound below the floor) |"),
            "{row}"
        );
        // S3's floor moves with the traffic sent to its slow peer: the
        // median floor is no bound there
        let balancers = [
            summary("least_conn", 91.3, 87.5, 0.0),
            summary("deep_sched_p2c", 63.3, 60.0, 0.0),
            summary("round_robin", 3000.0, 90.0, 0.0),
        ];
        let (_, row) = section_of("S3", &balancers, "x");
        assert!(row.ends_with("| — / yes |"), "{row}");
    }

    /// A scratch directory for one test, removed by the caller.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lab-report-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_report_is_rendered_again_from_its_summary() {
        let balancers = [
            failing("least_conn", 52.0, 6),
            failing("deep_sched_p2c", 53.0, 9),
        ];
        let dir = scratch("rerender");
        let json = serde_json::json!({
            "scenario": "S4", "title": "t", "duration_s": 20.0, "reps": 3,
            "worker_processes": 2, "nginx": "1.28", "balancers": balancers,
        });
        std::fs::write(dir.join("summary.json"), json.to_string()).unwrap();
        // only the plots that are there are linked
        std::fs::write(dir.join("peer_share.png"), b"png").unwrap();
        let path = rerender_scenario_report(&dir).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let scenario = Scenario::by_id("S4").unwrap();
        let plots = [PLOTS[1]];
        assert_eq!(
            text,
            render_markdown(&scenario, &info(), &balancers, &plots)
        );
        assert!(text.contains("(peer_share.png)") && !text.contains("latency_percentiles"));
        has(&text, "- 3 repetitions x 20s per balancer, interleaved; medians below; nginx 1.28 with 2 worker processes");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_summary_is_refused_by_name() {
        let good = serde_json::json!({
            "scenario": "S1", "title": "t", "duration_s": 20.0, "reps": 3,
            "worker_processes": 2, "nginx": "1.28",
            "balancers": [summary("least_conn", 48.0, 47.0, 0.0)],
        });
        let without = |k: &str| {
            let mut v = good.clone();
            v.as_object_mut().unwrap().remove(k);
            v.to_string()
        };
        let with = |k: &str, x: serde_json::Value| {
            let mut v = good.clone();
            v[k] = x;
            v.to_string()
        };
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "not JSON"),
            (without("nginx"), "no `nginx` (written by an older release"),
            (without("worker_processes"), "no `worker_processes`"),
            (without("scenario"), "no `scenario`"),
            (with("scenario", "S9".into()), "unknown scenario `S9`"),
            (with("reps", (-1).into()), "`reps` is not a count"),
            (with("reps", "3".into()), "`reps` is not a count"),
            (
                with("duration_s", (-5.0).into()),
                "`duration_s` is not a length",
            ),
            (with("nginx", 128.into()), "`nginx` is not a version string"),
            (
                with("balancers", serde_json::json!([{"balancer": 1}])),
                "balancers: ",
            ),
        ];
        let dir = scratch("bad");
        for (text, expected) in &cases {
            std::fs::write(dir.join("summary.json"), text).unwrap();
            std::fs::write(dir.join("report.md"), "kept").unwrap();
            let e = rerender_scenario_report(&dir).unwrap_err().to_string();
            assert!(
                e.contains("summary.json") && e.contains(expected),
                "{expected}: {e}"
            );
            // a refused summary leaves the old report alone
            assert_eq!(
                std::fs::read_to_string(dir.join("report.md")).unwrap(),
                "kept"
            );
        }
        std::fs::remove_file(dir.join("summary.json")).unwrap();
        let e = rerender_scenario_report(&dir).unwrap_err().to_string();
        has(&e, "summary.json");
        std::fs::write(dir.join("summary.json"), good.to_string()).unwrap();
        assert!(rerender_scenario_report(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
