//! A lock-free log-linear histogram of microseconds (64 sub-buckets per power of two: about
//! 1.6 % precision), shared by every connection task through relaxed atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Enough buckets for values up to 2^40 µs (about 12 days).
const BUCKETS: usize = ((40 - SUB_BITS as usize) + 2) * SUB as usize;

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

/// The histogram.
pub struct Hist {
    buckets: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let sub = (v >> shift) & (SUB - 1);
    let i = ((shift as u64 + 1) * SUB + sub) as usize;
    i.min(BUCKETS - 1)
}

/// The middle of bucket `i` (its lower bound for the exact buckets).
fn value(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let sub = i % SUB;
    let low = (SUB + sub) << shift;
    low + ((1u64 << shift) >> 1)
}

impl Hist {
    /// Records one sample (µs).
    pub fn record(&self, us: u64) {
        self.buckets[index(us)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    /// Clears every bucket.
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.max.store(0, Ordering::Relaxed);
    }

    /// Percentiles of what was recorded.
    pub fn percentiles(&self) -> Percentiles {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Percentiles::default();
        }
        let at = |q: f64| -> f64 {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return value(i) as f64 / 1000.0;
                }
            }
            0.0
        };
        let max = self.max.load(Ordering::Relaxed) as f64 / 1000.0;
        Percentiles {
            count: total,
            p50_ms: at(0.50).min(max),
            p90_ms: at(0.90).min(max),
            p99_ms: at(0.99).min(max),
            max_ms: max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_two_percent() {
        for v in [
            0u64,
            1,
            63,
            64,
            65,
            100,
            1000,
            12_345,
            1_000_000,
            987_654_321,
        ] {
            let back = value(index(v));
            let err = (back as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.02, "{v} -> {back}");
        }
    }

    #[test]
    fn percentiles_of_a_uniform_range() {
        let h = Hist::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p = h.percentiles();
        assert_eq!(p.count, 10_000);
        assert!((p.p50_ms - 5.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 9.9).abs() < 0.2, "{p:?}");
        assert_eq!(p.max_ms, 10.0);
        h.reset();
        assert_eq!(h.percentiles().count, 0);
    }
}
