//! Latency percentiles of a device's operations for STAT: a log-linear histogram of
//! microseconds (each power of two split in [`SUB_BUCKETS`]), so a percentile is
//! within 1/[`SUB_BUCKETS`] of the true value, in fixed memory whatever the count.

use std::time::Duration;

/// Buckets per power of two (and the values below `SUB_BUCKETS * 2` exact).
const SUB_BUCKETS: u64 = 8;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Powers of two covered: latencies up to 2^40 µs (12 days) are told apart; longer
/// ones count in the last bucket.
const EXPONENT_MAX: u32 = 40;
/// Exact values `0..2 * SUB_BUCKETS`, then `SUB_BUCKETS` per power of two above.
const BUCKETS: usize = (2 * SUB_BUCKETS + (EXPONENT_MAX - SUB_BITS) as u64 * SUB_BUCKETS) as usize;

const _: () = assert!(SUB_BUCKETS.is_power_of_two() && SUB_BITS >= 1);
const _: () = assert!(EXPONENT_MAX > SUB_BITS + 1 && EXPONENT_MAX < 63);

/// See the module documentation.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            total: 0,
        }
    }
}

/// The bucket of `us`.
fn bucket(us: u64) -> usize {
    if us < 2 * SUB_BUCKETS {
        return us as usize;
    }
    let exponent = (63 - us.leading_zeros()).min(EXPONENT_MAX);
    if exponent == EXPONENT_MAX {
        return BUCKETS - 1;
    }
    let sub = (us >> (exponent - SUB_BITS)) & (SUB_BUCKETS - 1);
    (2 * SUB_BUCKETS + u64::from(exponent - SUB_BITS - 1) * SUB_BUCKETS + sub) as usize
}

/// The largest value of bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB_BUCKETS {
        return i;
    }
    let exponent = (i - 2 * SUB_BUCKETS) / SUB_BUCKETS + u64::from(SUB_BITS) + 1;
    let sub = (i - 2 * SUB_BUCKETS) % SUB_BUCKETS;
    let step = 1u64 << (exponent - u64::from(SUB_BITS));
    (1u64 << exponent) + (sub + 1) * step - 1
}

impl Histogram {
    pub(crate) fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)] += 1;
        self.total += 1;
    }

    /// The latency, in µs, that `per_mille` thousandths of the recorded ones do not
    /// exceed (the top of its bucket); 0 when none was recorded.
    pub(crate) fn percentile_us(&self, per_mille: u64) -> u64 {
        assert!(per_mille <= 1000, "a percentile over 100%");
        if self.total == 0 {
            return 0;
        }
        let rank = (self.total * per_mille).div_ceil(1000).max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(i);
            }
        }
        unreachable!("the counts add up to the total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_their_values_in_order() {
        let mut last = 0;
        for us in (0..5000).chain([1 << 20, (1 << 20) + 12345, 1 << 39]) {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            assert!(
                us <= bucket_high(b),
                "{us} above its bucket {b}'s {}",
                bucket_high(b)
            );
            if b > 0 {
                assert!(
                    us > bucket_high(b - 1),
                    "{us} in bucket {b}, fits {}",
                    b - 1
                );
            }
            // Within 1/SUB_BUCKETS.
            assert!(
                bucket_high(b) - us <= us / SUB_BUCKETS,
                "{us}: {}",
                bucket_high(b)
            );
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_of_known_latencies() {
        let mut h = Histogram::default();
        assert_eq!(h.percentile_us(500), 0);
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.percentile_us(500);
        assert!((500..=500 + 500 / SUB_BUCKETS).contains(&p50), "{p50}");
        let p999 = h.percentile_us(999);
        assert!((999..=999 + 999 / SUB_BUCKETS).contains(&p999), "{p999}");
        assert!(h.percentile_us(1000) >= 1000);
    }
}
