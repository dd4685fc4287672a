//! The latencies of a sample's operations, recorded one by one into an
//! `hdrhistogram` (the histogram cvacli's bench uses): memory bounded by the range and
//! the precision, not by the number of operations, unlike a vector of every latency.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest latency told apart (ns): 60 s, far above any op of a bench; a longer
/// one is recorded as this.
const MAX_NS: u64 = 60_000_000_000;
/// Significant digits kept: any latency is known within 0.1 %, so 1 ns up to 2 us and
/// under 0.1 us up to 100 us, finer than the table's 0.1 us; 3 digits over 1 ns..60 s
/// cost about 200 KiB of counters a histogram (5 digits would cost about 100x that).
const DIGITS: u8 = 3;
const _: () = assert!(DIGITS <= 5 && MAX_NS >= 2);

/// The latencies (ns) of the ops of one task or one sample.
pub(super) struct Latencies(Histogram<u64>);

impl Latencies {
    pub(super) fn new() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_NS, DIGITS).expect("constant bounds are valid"))
    }

    /// Records one op that took `d` (clamped to 1 ns..MAX_NS).
    pub(super) fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns.clamp(1, MAX_NS));
    }

    /// Adds the latencies of `other` (another task's) to these.
    pub(super) fn merge(&mut self, other: &Latencies) {
        // Same bounds and precision on both sides: adding cannot fail.
        self.0.add(&other.0).expect("histograms of the same bounds");
    }

    /// How many ops were recorded.
    pub(super) fn len(&self) -> u64 {
        self.0.len()
    }

    /// The latency at quantile `q` (0.5 for p50) in us, None before any op.
    pub(super) fn quantile_us(&self, q: f64) -> Option<f64> {
        (!self.0.is_empty()).then(|| self.0.value_at_quantile(q) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_precision_and_empty_is_none() {
        let mut a = Latencies::new();
        assert_eq!(a.quantile_us(0.5), None);
        // 1..=1000 us in the first task, 1001..=2000 us in the second.
        for us in 1..=1000u64 {
            a.record(Duration::from_micros(us));
        }
        let mut b = Latencies::new();
        for us in 1001..=2000u64 {
            b.record(Duration::from_micros(us));
        }
        a.merge(&b);
        assert_eq!(a.len(), 2000);
        let near = |got: Option<f64>, want: f64| {
            let got = got.expect("ops were recorded");
            assert!(
                (got - want).abs() <= want * 0.001,
                "{got} us, want {want} us"
            );
        };
        near(a.quantile_us(0.50), 1000.0);
        near(a.quantile_us(0.99), 1980.0);
        // Out of range both ways: clamped, not lost.
        a.record(Duration::ZERO);
        a.record(Duration::from_secs(3600));
        assert_eq!(a.len(), 2002);
    }
}
