//! The self-describing blocks `verify` writes: every 512-byte sector says where it
//! belongs, which run wrote it and which generation of its region it is, under a
//! CRC, so a read-back tells a lost, a stale and a foreign sector apart.

/// The unit every field is repeated in.
pub const SECTOR: usize = 512;
const MAGIC: &[u8; 8] = b"CVAVRFY1";
/// Fields: magic, offset, seed, generation; filler; CRC32C of the rest at the end.
const CRC_AT: usize = SECTOR - 4;
const FILL_AT: usize = 32;
const _: () = assert!(FILL_AT < CRC_AT && CRC_AT + 4 == SECTOR);

/// What one sector read back holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sector {
    /// A verify sector, intact: where it says it belongs, the run and generation.
    Ours {
        offset: u64,
        seed: u64,
        generation: u64,
    },
    /// Not a verify sector, or one whose CRC or filler does not match.
    Garbage,
}

/// Fills `buf` (a multiple of SECTOR) with the sectors of generation `generation`
/// of the data at `offset` written by run `seed`.
pub fn fill(buf: &mut [u8], offset: u64, seed: u64, generation: u64) {
    assert_eq!(buf.len() % SECTOR, 0, "blocks are whole sectors");
    for (i, s) in buf.chunks_exact_mut(SECTOR).enumerate() {
        let at = offset + (i * SECTOR) as u64;
        s[..8].copy_from_slice(MAGIC);
        s[8..16].copy_from_slice(&at.to_le_bytes());
        s[16..24].copy_from_slice(&seed.to_le_bytes());
        s[24..32].copy_from_slice(&generation.to_le_bytes());
        filler(&mut s[FILL_AT..CRC_AT], at, seed, generation);
        let crc = crc32c::crc32c(&s[..CRC_AT]);
        s[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Decodes one sector.
pub fn decode(s: &[u8]) -> Sector {
    assert_eq!(s.len(), SECTOR, "one sector");
    let u64_at = |i: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&s[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let crc = u32::from_le_bytes([s[CRC_AT], s[CRC_AT + 1], s[CRC_AT + 2], s[CRC_AT + 3]]);
    if &s[..8] != MAGIC || crc32c::crc32c(&s[..CRC_AT]) != crc {
        return Sector::Garbage;
    }
    let (offset, seed, generation) = (u64_at(8), u64_at(16), u64_at(24));
    let mut want = [0; CRC_AT - FILL_AT];
    filler(&mut want, offset, seed, generation);
    if s[FILL_AT..CRC_AT] != want {
        return Sector::Garbage;
    }
    Sector::Ours {
        offset,
        seed,
        generation,
    }
}

/// Pseudo-random bytes from the sector's identity (so two generations differ in
/// every byte, not only in the header).
fn filler(out: &mut [u8], offset: u64, seed: u64, generation: u64) {
    let mut rng = Rng::new(seed ^ offset.rotate_left(17) ^ generation.rotate_left(41));
    for c in out.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// splitmix64: the commands' only random numbers (offsets, op mix, fillers).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_block_decodes_sector_by_sector() {
        let mut b = vec![0; 4 * SECTOR];
        fill(&mut b, 8192, 7, 3);
        for (i, s) in b.chunks_exact(SECTOR).enumerate() {
            assert_eq!(
                decode(s),
                Sector::Ours {
                    offset: 8192 + (i * SECTOR) as u64,
                    seed: 7,
                    generation: 3
                }
            );
        }
    }

    #[test]
    fn damage_and_zeros_are_garbage() {
        let mut b = vec![0; SECTOR];
        assert_eq!(decode(&b), Sector::Garbage);
        fill(&mut b, 0, 1, 1);
        b[100] ^= 1;
        assert_eq!(decode(&b), Sector::Garbage);
        fill(&mut b, 0, 1, 1);
        b[10] ^= 1; // the offset field: the CRC catches it
        assert_eq!(decode(&b), Sector::Garbage);
    }

    #[test]
    fn generations_differ_past_the_header() {
        let (mut a, mut b) = (vec![0; SECTOR], vec![0; SECTOR]);
        fill(&mut a, 0, 1, 1);
        fill(&mut b, 0, 1, 2);
        assert_ne!(a[FILL_AT..CRC_AT], b[FILL_AT..CRC_AT]);
    }
}
