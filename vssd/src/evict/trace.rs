//! Synthetic access traces for measuring eviction policies: seeded, reproducible,
//! endless iterators over line numbers (take as many as needed).
//!
//! - [`Zipf`]: independent draws from a Zipf distribution, the usual model of a
//!   skewed block workload (a few lines take most accesses, a long cold tail).
//! - [`ScanMix`]: a Zipf workload interrupted by long sequential scans of lines
//!   never seen before (a backup, a table scan, a VM booting), the pattern that
//!   flushes an LRU cache.

use taskio::rand::Rng;

/// Zipf over `keys` lines: line `k` (0-based) is drawn with probability
/// proportional to `1 / (k + 1)^alpha`, so line 0 is the hottest.
///
/// Sampled by rejection from a continuous envelope whose inverse CDF is closed-form
/// (the method of `rand_distr::Zipf`): O(1) time and memory per draw, no table,
/// usually one or two envelope draws per sample.
#[derive(Clone, Debug)]
pub struct Zipf {
    keys: u64,
    alpha: f64,
    /// Total mass of the envelope h(x) = 1 on [0, 1], x^-alpha on [1, keys].
    mass: f64,
    /// 1 / (1 - alpha), for alpha != 1.
    q: f64,
    rng: Rng,
}

impl Zipf {
    pub fn new(keys: u64, alpha: f64, seed: u64) -> Self {
        assert!(keys >= 1, "a Zipf over no keys");
        assert!(alpha > 0.0 && alpha.is_finite(), "Zipf alpha {alpha}");
        let n = keys as f64;
        let (mass, q) = if alpha == 1.0 {
            (1.0 + n.ln(), 0.0)
        } else {
            let q = 1.0 / (1.0 - alpha);
            ((n.powf(1.0 - alpha) - alpha) * q, q)
        };
        Zipf {
            keys,
            alpha,
            mass,
            q,
            rng: Rng::new(seed),
        }
    }

    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// The envelope's inverse CDF at `p` in [0, 1).
    fn envelope_inv(&self, p: f64) -> f64 {
        let pt = p * self.mass;
        if pt <= 1.0 {
            pt
        } else if self.alpha == 1.0 {
            (pt - 1.0).exp()
        } else {
            (pt * (1.0 - self.alpha) + self.alpha).powf(self.q)
        }
    }

    pub fn sample(&mut self) -> u64 {
        // A draw x of the envelope falls in [k - 1, k) for rank k; accepting it with
        // probability k^-alpha / h(x) (<= 1 since h decreases) leaves rank k with
        // probability proportional to k^-alpha.
        loop {
            let p = self.rng.next_f64();
            let x = self.envelope_inv(p);
            let rank = (x + 1.0).floor();
            let mut ratio = rank.powf(-self.alpha);
            if rank > 1.0 {
                ratio *= x.powf(self.alpha);
            }
            if self.rng.next_f64() < ratio {
                // Rounding can put x a hair over `keys`; clamp the rank.
                return (rank as u64).clamp(1, self.keys) - 1;
            }
        }
    }
}

impl Iterator for Zipf {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        Some(self.sample())
    }
}

/// Rounds of `zipf_run` draws of a [`Zipf`] over lines `0..keys`, each followed by
/// one sequential scan of `scan_len` lines from `keys` upward that no earlier
/// access touched (each scan continues where the last one stopped).
#[derive(Clone, Debug)]
pub struct ScanMix {
    zipf: Zipf,
    zipf_run: u64,
    scan_len: u64,
    /// The next line a scan reads.
    scan_next: u64,
    /// Accesses left in the current phase.
    phase_left: u64,
    scanning: bool,
}

impl ScanMix {
    pub fn new(zipf: Zipf, zipf_run: u64, scan_len: u64) -> Self {
        assert!(zipf_run >= 1 && scan_len >= 1);
        ScanMix {
            scan_next: zipf.keys(),
            zipf,
            zipf_run,
            scan_len,
            phase_left: zipf_run,
            scanning: false,
        }
    }
}

impl Iterator for ScanMix {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        if self.phase_left == 0 {
            self.scanning = !self.scanning;
            self.phase_left = if self.scanning {
                self.scan_len
            } else {
                self.zipf_run
            };
        }
        self.phase_left -= 1;
        if self.scanning {
            let line = self.scan_next;
            self.scan_next += 1;
            Some(line)
        } else {
            Some(self.zipf.sample())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_matches_its_distribution() {
        let keys = 100_000u64;
        let alpha = 0.9;
        let harmonic: f64 = (1..=keys).map(|k| (k as f64).powf(-alpha)).sum();
        let draws = 200_000u64;
        let mut counts = [0u64; 4];
        let mut zipf = Zipf::new(keys, alpha, 42);
        for _ in 0..draws {
            let k = zipf.sample();
            assert!(k < keys);
            if let Some(c) = counts.get_mut(k as usize) {
                *c += 1;
            }
        }
        for (k, &count) in counts.iter().enumerate() {
            let want = draws as f64 * ((k + 1) as f64).powf(-alpha) / harmonic;
            let got = count as f64;
            // Five standard deviations of a binomial count.
            assert!(
                (got - want).abs() < 5.0 * want.sqrt(),
                "rank {k}: {got} draws, expected {want:.0}"
            );
        }
    }

    #[test]
    fn zipf_alpha_one_and_one_key() {
        let mut z = Zipf::new(1000, 1.0, 1);
        assert!(z.by_ref().take(10_000).all(|k| k < 1000));
        let mut one = Zipf::new(1, 0.9, 1);
        assert!(one.by_ref().take(100).all(|k| k == 0));
    }

    #[test]
    fn zipf_is_reproducible() {
        let a: Vec<u64> = Zipf::new(1 << 20, 0.9, 7).take(1000).collect();
        let b: Vec<u64> = Zipf::new(1 << 20, 0.9, 7).take(1000).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn scan_mix_alternates() {
        let t: Vec<u64> = ScanMix::new(Zipf::new(10, 0.9, 3), 3, 2).take(10).collect();
        assert!(t[0..3].iter().all(|&k| k < 10));
        assert_eq!(&t[3..5], &[10, 11]);
        assert!(t[5..8].iter().all(|&k| k < 10));
        assert_eq!(&t[8..10], &[12, 13]);
    }
}
