//! `deep-sched report`: PNG plots of a policy against a sample log.
//!
//! - `state_means.png`: the GMM means, one row per state, one column per
//!   feature (standardised units; blue below the mean, red above, ±3 σ
//!   saturates);
//! - `state_timeline.png`: the state of every interval of the log, as the
//!   policy classifies it (x: interval, y: state 0 at the bottom);
//! - `policy_heatmap.png`: the table, one row per state, one column per peer
//!   (all upstreams side by side, a grey gap between upstreams); the darker,
//!   the larger the peer's weight relative to the largest of its upstream;
//! - `learning_curve.png`: the EM mean log-likelihood per iteration, when the
//!   policy's provenance has it (`em_log_likelihood`, written by `learn`).
//!
//! Bitmaps only, and no text at all, so nothing depends on system fonts:
//! the layout is fixed and described here instead of in axis labels.

use std::path::{Path, PathBuf};

use deep_sched_core::counters::AgentInterval;
use deep_sched_core::policy::Policy;
use plotters::prelude::*;

use crate::reader::{read_samples, read_vts, ReadError};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the samples failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The samples do not belong to the policy's agent.
    #[error("samples {file}: the agent's upstreams/peers differ from the policy's ({policy})")]
    Shape {
        /// First sample file.
        file: PathBuf,
        /// The policy's agent.
        policy: String,
    },
    /// Creating the output directory or drawing a plot failed.
    #[error("{file}: {reason}")]
    Draw {
        /// The plot or directory.
        file: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

const W: u32 = 900;
const H: u32 = 500;

fn draw_err(file: &Path, e: impl std::fmt::Display) -> ReportError {
    ReportError::Draw {
        file: file.to_owned(),
        reason: e.to_string(),
    }
}

/// Diverging colour for a standardised value: blue (−3) → white (0) → red (+3).
fn diverging(z: f64) -> RGBColor {
    let t = (z / 3.0).clamp(-1.0, 1.0);
    let fade = |t: f64| (255.0 * (1.0 - t.abs())) as u8;
    if t < 0.0 {
        RGBColor(fade(t), fade(t), 255)
    } else {
        RGBColor(255, fade(t), fade(t))
    }
}

/// Sequential colour for a share in `[0, 1]`: white → dark green.
fn sequential(x: f64) -> RGBColor {
    let t = x.clamp(0.0, 1.0);
    RGBColor(
        (255.0 - 225.0 * t) as u8,
        (255.0 - 135.0 * t) as u8,
        (255.0 - 195.0 * t) as u8,
    )
}

/// A grid of coloured cells filling the image (with a margin).
fn heatmap(
    file: &Path,
    rows: usize,
    cols: usize,
    colour: impl Fn(usize, usize) -> RGBColor,
) -> Result<(), ReportError> {
    let root = BitMapBackend::new(file, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(file, e))?;
    let (m, cw, ch) = (
        10i32,
        (W as i32 - 20) / cols.max(1) as i32,
        (H as i32 - 20) / rows.max(1) as i32,
    );
    for r in 0..rows {
        for c in 0..cols {
            // Row 0 at the top.
            let (x0, y0) = (m + c as i32 * cw, m + r as i32 * ch);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cw - 1, y0 + ch - 1)],
                colour(r, c).filled(),
            ))
            .map_err(|e| draw_err(file, e))?;
        }
    }
    root.present().map_err(|e| draw_err(file, e))
}

/// A polyline (or dots) of `ys` against their index, scaled to the image.
fn series(file: &Path, ys: &[f64], dots: bool) -> Result<(), ReportError> {
    let root = BitMapBackend::new(file, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| draw_err(file, e))?;
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
            (a.min(*y), b.max(*y))
        });
    let span = if hi > lo { hi - lo } else { 1.0 };
    let m = 20.0;
    let n = ys.len().max(2) - 1;
    let px = |i: usize, y: f64| {
        (
            (m + (W as f64 - 2.0 * m) * i as f64 / n as f64) as i32,
            (H as f64 - m - (H as f64 - 2.0 * m) * (y - lo) / span) as i32,
        )
    };
    // Axes: a frame, so an all-flat series is still visibly a plot.
    root.draw(&Rectangle::new(
        [
            (m as i32 - 2, m as i32 - 2),
            (W as i32 - m as i32 + 2, H as i32 - m as i32 + 2),
        ],
        BLACK.stroke_width(1),
    ))
    .map_err(|e| draw_err(file, e))?;
    if dots {
        for (i, y) in ys.iter().enumerate() {
            root.draw(&Circle::new(px(i, *y), 2, BLUE.filled()))
                .map_err(|e| draw_err(file, e))?;
        }
    } else {
        let pts: Vec<(i32, i32)> = ys.iter().enumerate().map(|(i, y)| px(i, *y)).collect();
        root.draw(&PathElement::new(pts.clone(), BLUE.stroke_width(2)))
            .map_err(|e| draw_err(file, e))?;
        for p in pts {
            root.draw(&Circle::new(p, 3, RED.filled()))
                .map_err(|e| draw_err(file, e))?;
        }
    }
    root.present().map_err(|e| draw_err(file, e))
}

/// Most points a timeline draws; longer logs are thinned to every n-th
/// interval (the pattern of states is what matters at this size).
const TIMELINE_POINTS: usize = 4000;

/// Classifies the samples with the policy and writes the plots into `out`;
/// returns the files written.
pub fn report(
    policy: &Policy,
    samples: &[PathBuf],
    vts: bool,
    skip_bad: bool,
    out: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(out).map_err(|e| draw_err(out, e))?;
    let features = policy.features();
    let gmm = policy.gmm();
    let mut x = vec![0.0; features.len()];
    let mut lw = vec![0.0; gmm.k()];
    let mut scratch = vec![0.0; gmm.scratch_len()];
    // One state per interval (u16: 2 bytes per interval).
    let mut timeline: Vec<u16> = Vec::new();
    let mut sink = |o: crate::reader::Observation| {
        let interval = AgentInterval::from_deltas(&o.deltas, o.interval_ms);
        features.compute_into(&interval, &mut x);
        let (state, _) = gmm.classify_with(&x, &mut lw, &mut scratch);
        timeline.push(state as u16);
    };
    let (shape, _) = if vts {
        read_vts(samples, skip_bad, &mut sink)?
    } else {
        read_samples(samples, skip_bad, &mut sink)?
    };
    if shape != *policy.shape() {
        return Err(ReportError::Shape {
            file: samples.first().cloned().unwrap_or_default(),
            policy: policy
                .shape()
                .upstreams
                .iter()
                .map(|u| format!("{}: {}", u.name, u.peers.join(",")))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let doc = policy.to_document();
    let mut written = Vec::new();

    let f = out.join("state_means.png");
    let means = &doc.gmm.means;
    heatmap(&f, means.len(), features.len(), |r, c| {
        diverging(means[r][c])
    })?;
    written.push(f);

    let f = out.join("state_timeline.png");
    let stride = timeline.len().div_ceil(TIMELINE_POINTS).max(1);
    let ys: Vec<f64> = timeline
        .iter()
        .step_by(stride)
        .map(|s| f64::from(*s))
        .collect();
    series(&f, &ys, true)?;
    written.push(f);

    let f = out.join("policy_heatmap.png");
    // Columns: peers of upstream 0, a gap, peers of upstream 1, ...
    let mut cols: Vec<Option<(usize, usize)>> = Vec::new();
    for (u, up) in policy.shape().upstreams.iter().enumerate() {
        if u > 0 {
            cols.push(None);
        }
        cols.extend((0..up.peers.len()).map(|p| Some((u, p))));
    }
    heatmap(&f, doc.table.len(), cols.len(), |r, c| match cols[c] {
        None => RGBColor(200, 200, 200),
        Some((u, p)) => {
            let w = &doc.actions[doc.table[r]].weights[u];
            let max = w.iter().copied().max().unwrap_or(1).max(1);
            sequential(f64::from(w[p]) / f64::from(max))
        }
    })?;
    written.push(f);

    if let Some(curve) = doc
        .provenance
        .get("em_log_likelihood")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect::<Vec<f64>>())
        .filter(|c| !c.is_empty())
    {
        let f = out.join("learning_curve.png");
        series(&f, &curve, false)?;
        written.push(f);
    }
    Ok(written)
}
