//! Latency histograms (HDR, microseconds) and their JSON summary.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram tracks: 10 minutes, in µs. Larger values are
/// clamped (they are failures anyway).
pub const MAX_TRACKABLE_US: u64 = 600_000_000;

/// A new latency histogram: 1 µs .. 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKABLE_US, 3).expect("static bounds are valid")
}

/// Records a duration in the histogram (µs, clamped to the tracked range).
pub fn record(hist: &mut Histogram<u64>, d: std::time::Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_TRACKABLE_US);
    hist.record(us).expect("value clamped into range");
}

/// Summary of a latency histogram, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of values.
    pub count: u64,
    /// Arithmetic mean, ms.
    pub mean_ms: f64,
    /// Median, ms.
    pub p50_ms: f64,
    /// 90th percentile, ms.
    pub p90_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest value, ms.
    pub max_ms: f64,
}

impl Percentiles {
    /// Summarises `hist` (µs values) in ms; all zero when it is empty.
    pub fn of(hist: &Histogram<u64>) -> Percentiles {
        if hist.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: hist.len(),
            mean_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn percentiles_of_uniform_values() {
        let mut h = new_histogram();
        for ms in 1..=1000u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        // 3 significant digits: within 0.1 %.
        let close = |a: f64, b: f64| (a / b - 1.0).abs() < 2e-3;
        assert!(close(p.p50_ms, 500.0), "{p:?}");
        assert!(close(p.p90_ms, 900.0), "{p:?}");
        assert!(close(p.p99_ms, 990.0), "{p:?}");
        assert!(close(p.p999_ms, 999.0), "{p:?}");
        assert!(close(p.mean_ms, 500.5), "{p:?}");
    }

    #[test]
    fn empty_histogram_is_all_zero_and_huge_values_clamp() {
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
        let mut h = new_histogram();
        record(&mut h, Duration::from_secs(100_000));
        assert!(Percentiles::of(&h).max_ms >= 599_000.0);
    }
}
