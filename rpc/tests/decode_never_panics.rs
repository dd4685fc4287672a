//! Decoding arbitrary bytes, and arbitrarily mutated valid frames, never panics:
//! it returns an error or a valid message, and a valid message re-encodes to the
//! very bytes it came from (`rpc::fuzzing::check`, the fuzzers' property).

mod common;

use common::{KINDS, build, parts};
use proptest::prelude::*;
use rpc::encode_frame;
use rpc::fuzzing::{check, with_sound_framing};
use rpc::limits::HEADER_LEN;

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte at (index mod len).
    Flip(usize, u8),
    /// Set a byte.
    Set(usize, u8),
    /// Cut the frame short.
    Truncate(usize),
    /// Insert bytes.
    Insert(usize, Vec<u8>),
    /// Write a little-endian u32 (lengths, counts, CRCs).
    SetU32(usize, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (
            any::<usize>(),
            prop_oneof![
                Just(0u32),
                Just(1),
                Just(u32::MAX),
                Just(0x8000_0000),
                any::<u32>()
            ]
        )
            .prop_map(|(i, x)| Mutation::SetU32(i, x)),
    ]
}

fn apply(v: &mut Vec<u8>, m: &Mutation) {
    if v.is_empty() {
        return;
    }
    let at = |i: usize| i % v.len();
    match m {
        Mutation::Flip(i, x) => {
            let i = at(*i);
            v[i] ^= x;
        }
        Mutation::Set(i, x) => {
            let i = at(*i);
            v[i] = *x;
        }
        Mutation::Truncate(i) => {
            let i = at(*i);
            v.truncate(i);
        }
        Mutation::Insert(i, b) => {
            let i = at(*i);
            v.splice(i..i, b.iter().copied());
        }
        Mutation::SetU32(i, x) => {
            let i = at(*i);
            for (k, b) in x.to_le_bytes().iter().enumerate() {
                if let Some(slot) = v.get_mut(i + k) {
                    *slot = *b;
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_a_sound_header(bytes in prop::collection::vec(any::<u8>(), HEADER_LEN..HEADER_LEN + 256)) {
        // `check` fixes up the framing itself too; this makes sure the fixed-up
        // frame really passes the framing step.
        let v = with_sound_framing(&bytes);
        let raw = rpc::RawHeader::decode(rpc::header_bytes(&v).unwrap());
        prop_assert!(raw.is_ok(), "{:?}", raw);
        check(&bytes);
    }

    #[test]
    fn mutated_valid_frames(
        p in parts(256),
        kind in 0..KINDS,
        muts in prop::collection::vec(mutation(), 1..6),
        reseal in any::<bool>(),
    ) {
        let mut v = Vec::new();
        encode_frame(1, &build(kind, &p), &mut v).unwrap();
        for m in &muts {
            apply(&mut v, m);
        }
        // Half the time, repair the CRCs so the mutation reaches the field and
        // body checks instead of stopping at the header CRC.
        if reseal {
            v = with_sound_framing(&v);
        }
        check(&v);
    }

    #[test]
    fn mutated_streams(
        p in parts(64),
        kinds in prop::collection::vec(0..KINDS, 2..6),
        muts in prop::collection::vec(mutation(), 0..4),
    ) {
        let mut v = Vec::new();
        for k in &kinds {
            encode_frame(1, &build(*k, &p), &mut v).unwrap();
        }
        for m in &muts {
            apply(&mut v, m);
        }
        check(&v);
    }
}

#[test]
fn every_seed_passes_the_property() {
    for (name, frame) in rpc::fuzzing::seeds() {
        check(&frame);
        rpc::decode_frame(&frame).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
