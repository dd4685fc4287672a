//! The one seeded random generator of CVA: the simulator draws every choice from it,
//! and every scenario, torture, benchmark and test that wants repeatable randomness
//! uses it instead of a copy of its own.
//!
//! It is SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
//! generators", 2014): one 64-bit word of state, any seed (zero included) is good, and
//! its output passes BigCrush. It is for repeatable runs, never for anything secret.
//! The same seed gives the same sequence on every machine and every build, so a
//! failing seed replays exactly.
//!
//! ```
//! use taskio::rand::Rng;
//! let mut a = Rng::new(7);
//! let mut b = Rng::new(7);
//! assert_eq!(a.below(100), b.below(100));
//! assert!((10..=20).contains(&a.between(10, 20)));
//! ```

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijection of u64 that mixes every bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded generator (SplitMix64). Deliberately not `Copy`: a copy would repeat the
/// original's sequence, which is what [`Rng::stream`] exists to avoid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    /// The generator of stream `stream` of `seed`: independent of stream `stream + 1`
    /// and of `Rng::new(seed)` (for one generator per task, per boot, per node, ...).
    /// Seeds of SplitMix64 that differ by a multiple of its increment would give
    /// overlapping sequences; mixing the stream number first avoids that.
    pub fn stream(seed: u64, stream: u64) -> Rng {
        Rng::new(seed ^ mix64(stream.wrapping_add(GAMMA)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Uniform in `0..n`. `n` must not be zero.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0): an empty range");
        // Lemire's multiply-shift: unbiased enough for n far below 2^64 and
        // cheaper than a division.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform index into a collection of `len` elements. `len` must not be zero.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// Uniform in `lo..=hi` (`hi` below `lo` counts as `lo`).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        let hi = hi.max(lo);
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// True with probability `p` (0.0 never draws and is never true; 1.0 always is).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_splitmix_reference_values() {
        // The first outputs of SplitMix64 seeded with 0 (the reference sequence).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        let (mut a, mut b) = (Rng::new(99), Rng::new(99));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn ranges_hold_and_cover() {
        let mut r = Rng::new(5);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            let v = r.below(7);
            seen[v as usize] += 1;
            let w = r.between(3, 5);
            assert!((3..=5).contains(&w));
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(r.between(9, 9), 9);
        assert_eq!(r.between(9, 2), 9);
        let _ = r.between(0, u64::MAX);
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
    }

    #[test]
    fn streams_differ_from_each_other_and_from_the_seed() {
        let firsts: Vec<u64> = (0..16).map(|s| Rng::stream(1, s).next_u64()).collect();
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 16);
        assert!(!firsts.contains(&Rng::new(1).next_u64()));
    }

    #[test]
    fn fill_covers_odd_lengths() {
        let mut a = [0u8; 13];
        Rng::new(3).fill(&mut a);
        let mut r = Rng::new(3);
        let w0 = r.next_u64().to_le_bytes();
        let w1 = r.next_u64().to_le_bytes();
        assert_eq!(&a[..8], &w0);
        assert_eq!(&a[8..], &w1[..5]);
    }
}
