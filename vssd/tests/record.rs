//! The log codec from outside: every record round-trips, random record sequences packed
//! into blocks decode back in order, and a block that was corrupted, torn, stale or is
//! just arbitrary bytes is refused without a panic.

use proptest::prelude::*;
use proptest::test_runner::RngAlgorithm;
use vssd::VssdError;
use vssd::record::{
    BLOCK_HEADER_LEN, BLOCK_RECORDS_LEN_MAX, BLOCK_WASTE_LEN_MAX, BlockEnd, CHECKPOINT_A,
    CHECKPOINT_B, EPOCH_MEMBERS_MAX, LOG_BLOCK_SIZE, LOG_BLOCKS_IN_FLIGHT_MAX, LOG_BLOCKS_MAX,
    LOG_BLOCKS_MIN, LOG_SECTOR_SIZE, LogBlockWriter, LogRing, PAYLOAD_LEN_MAX, RECORD_ALIGN,
    RECORD_LEN_MAX, RECORDS_PER_BLOCK_MAX, Record, RecordFault, TRAN_PARTS_MAX, decode_block,
};

fn arb_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            1..=PAYLOAD_LEN_MAX,
            (1..=TRAN_PARTS_MAX).prop_flat_map(|parts| (0..parts, Just(parts)))
        )
            .prop_map(|(tran, line, slot, payload_crc, len, (part, parts))| {
                Record::Prepare {
                    tran,
                    line,
                    slot,
                    payload_crc,
                    len,
                    part,
                    parts,
                }
            }),
        any::<u64>().prop_map(|tran| Record::Commit { tran }),
        any::<u64>().prop_map(|tran| Record::Abort { tran }),
        (any::<u64>(), any::<u64>()).prop_map(|(line, version)| Record::Clean { line, version }),
        any::<u64>().prop_map(|line| Record::Invalidate { line }),
        (
            any::<u64>(),
            prop::collection::vec(any::<u64>(), 0..=EPOCH_MEMBERS_MAX)
        )
            .prop_map(|(epoch, members)| Record::Epoch { epoch, members }),
        (
            any::<u64>(),
            prop_oneof![Just(CHECKPOINT_A), Just(CHECKPOINT_B)]
        )
            .prop_map(|(seq, which)| Record::Checkpoint { seq, which }),
        any::<u64>().prop_map(|tran_high| Record::TranHigh { tran_high }),
    ]
}

/// Packs `records` into sealed blocks from `seq_first` on, a new block whenever the
/// next record does not fit; returns each block with the records it holds.
fn pack(records: &[Record], seq_first: u64) -> Vec<(Vec<u8>, Vec<Record>)> {
    let mut blocks = Vec::new();
    let mut writer = LogBlockWriter::new(vec![0u8; LOG_BLOCK_SIZE], seq_first, 0);
    let mut held = Vec::new();
    for record in records {
        if writer.append(record).is_err() {
            // Sealed only because this record does not fit: the waste bound.
            assert!(writer.bytes_free() < record.encoded_len());
            assert!(writer.bytes_free() <= BLOCK_WASTE_LEN_MAX);
            let seq = writer.seq();
            blocks.push((writer.seal(), std::mem::take(&mut held)));
            writer = LogBlockWriter::new(vec![0u8; LOG_BLOCK_SIZE], seq + 1, 0);
            writer.append(record).expect("a record fits a fresh block");
        }
        held.push(record.clone());
    }
    blocks.push((writer.seal(), held));
    blocks
}

/// One sealed block of `records` (as many as fit).
fn one_block(records: &[Record], seq: u64) -> (Vec<u8>, Vec<Record>) {
    pack(records, seq).swap_remove(0)
}

/// Test cases from the fast XorShift generator: ChaCha dominates debug-build time.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn every_record_round_trips(record in arb_record(), trailing in prop::collection::vec(any::<u8>(), 0..16)) {
        prop_assert_eq!(record.validate(), Ok(()));
        let len = record.encoded_len();
        prop_assert!(len <= RECORD_LEN_MAX);
        prop_assert!(len.is_multiple_of(RECORD_ALIGN));
        let mut bytes = vec![0u8; len];
        prop_assert_eq!(record.encode(&mut bytes), len);
        // Whatever follows a record in its block does not change how it reads.
        bytes.extend_from_slice(&trailing);
        let (back, used) = Record::decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(used, len);
        prop_assert_eq!(back, record);
    }

    #[test]
    fn a_changed_record_byte_is_detected(record in arb_record(), at in any::<prop::sample::Index>(), mask in 1u8..=255) {
        let mut bytes = vec![0u8; record.encoded_len()];
        record.encode(&mut bytes);
        let at = at.index(bytes.len());
        bytes[at] ^= mask;
        prop_assert!(Record::decode(&bytes).is_err(), "byte {} ^ {:#x} went unnoticed", at, mask);
    }

    #[test]
    fn a_changed_block_byte_is_detected(
        records in prop::collection::vec(arb_record(), 0..120),
        seq in any::<u64>(),
        at in 0..LOG_BLOCK_SIZE,
        mask in 1u8..=255,
    ) {
        let (mut block, _) = one_block(&records, seq);
        block[at] ^= mask;
        let end = decode_block(&block, seq, 0);
        prop_assert!(end.is_err(), "byte {} ^ {:#x} went unnoticed", at, mask);
    }

    #[test]
    fn a_block_of_another_seq_is_refused(
        records in prop::collection::vec(arb_record(), 0..40),
        seq in any::<u64>(),
        expected in any::<u64>(),
    ) {
        let (block, held) = one_block(&records, seq);
        let got = decode_block(&block, expected, 0);
        if expected == seq {
            prop_assert_eq!(got, Ok(held));
        } else if seq < expected {
            prop_assert_eq!(got, Err(BlockEnd::Stale { seq_got: seq, seq_want: expected }));
        } else {
            prop_assert_eq!(got, Err(BlockEnd::Ahead { seq_got: seq, seq_want: expected }));
        }
    }

    /// A write of the new block torn at a sector boundary: its first `sectors` sectors
    /// reached the disk, the rest is still the block of the previous lap (`old_count`
    /// records, so its sectors differ from the new block's as far as it was filled).
    #[test]
    fn a_torn_block_is_refused(
        old_count in 0..=RECORDS_PER_BLOCK_MAX as u64,
        old_salt in any::<u64>(),
        new_records in prop::collection::vec(arb_record(), 0..150),
        seq in LOG_BLOCKS_MIN..u64::MAX / 2,
        sectors in 0..=LOG_BLOCK_SIZE / LOG_SECTOR_SIZE,
    ) {
        let old_records: Vec<Record> = (0..old_count)
            .map(|i| Record::Commit { tran: old_salt.wrapping_add(i) })
            .collect();
        let (old, _) = one_block(&old_records, seq - LOG_BLOCKS_MIN);
        let (new, new_held) = one_block(&new_records, seq);
        let cut = sectors * LOG_SECTOR_SIZE;
        let mut torn = new[..cut].to_vec();
        torn.extend_from_slice(&old[cut..]);
        let got = decode_block(&torn, seq, 0);
        if torn == new {
            // The sectors that did not land held what the new block holds there.
            prop_assert_eq!(got, Ok(new_held));
        } else if sectors == 0 {
            prop_assert_eq!(got, Err(BlockEnd::Stale { seq_got: seq - LOG_BLOCKS_MIN, seq_want: seq }));
        } else {
            prop_assert!(matches!(got, Err(BlockEnd::Checksum { .. })), "got {:?}", got);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..5000), seq in any::<u64>()) {
        let _ = decode_block(&bytes, seq, 0);
        let _ = Record::decode(&bytes);
    }

    /// Arbitrary bytes behind a good magic, version, seq and CRC: the decoder gets past
    /// the block checks and parses the header counts and records.
    #[test]
    fn arbitrary_blocks_with_a_good_crc_never_panic(
        mut block in prop::collection::vec(any::<u8>(), LOG_BLOCK_SIZE),
        count in 0u16..300,
        len in 0u16..5000,
        seq in any::<u64>(),
    ) {
        block[0..4].copy_from_slice(b"CVAL");
        block[8..16].copy_from_slice(&seq.to_le_bytes());
        block[16..18].copy_from_slice(&1u16.to_le_bytes());
        block[18..20].copy_from_slice(&count.to_le_bytes());
        block[20..22].copy_from_slice(&len.to_le_bytes());
        block[22..32].fill(0);
        reseal(&mut block);
        prop_assert!(decode_block(&block, seq, 0).is_err());
    }

    /// A valid block whose record bytes were edited and then resealed: either it still
    /// decodes (the edit kept every record valid) or a record is named, never a panic.
    #[test]
    fn edited_records_behind_a_good_crc_are_named(
        records in prop::collection::vec(arb_record(), 1..100),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        seq in any::<u64>(),
    ) {
        let (mut block, held) = one_block(&records, seq);
        let records_len = usize::from(u16::from_le_bytes([block[20], block[21]]));
        for (at, value) in edits {
            block[BLOCK_HEADER_LEN + at.index(records_len)] = value;
        }
        reseal(&mut block);
        match decode_block(&block, seq, 0) {
            Ok(got) => prop_assert_eq!(got.len(), held.len()),
            Err(BlockEnd::Record { .. } | BlockEnd::Header { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected end {:?}", other),
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn record_sequences_round_trip_through_blocks(
        records in prop::collection::vec(arb_record(), 0..400),
        seq_first in 0..u64::MAX / 2,
    ) {
        let blocks = pack(&records, seq_first);
        let mut back = Vec::new();
        for (i, (block, held)) in blocks.iter().enumerate() {
            prop_assert_eq!(block.len(), LOG_BLOCK_SIZE);
            let got = decode_block(block, seq_first + i as u64, 0)
                .map_err(|e| TestCaseError::fail(format!("block {i}: {e}")))?;
            prop_assert_eq!(&got, held);
            back.extend(got);
        }
        prop_assert_eq!(back, records);
    }
}

/// Recomputes a block's CRC the way the format table says (bytes 0..4, then 8..).
fn reseal(block: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&block[..4]), &block[8..]);
    block[4..8].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn every_single_byte_change_of_a_full_block_is_detected() {
    let records: Vec<Record> = (0..200u64)
        .map(|i| match i % 4 {
            0 => Record::Prepare {
                tran: i,
                line: i * 7,
                slot: i * 13,
                payload_crc: i as u32,
                len: 4096,
                part: (i % 3) as u32,
                parts: 3,
            },
            1 => Record::Commit { tran: i },
            2 => Record::Clean {
                line: i,
                version: i + 1,
            },
            _ => Record::Epoch {
                epoch: i,
                members: vec![1, 2, 3],
            },
        })
        .collect();
    let (block, held) = one_block(&records, 42);
    assert!(
        BLOCK_RECORDS_LEN_MAX - held.iter().map(Record::encoded_len).sum::<usize>()
            <= BLOCK_WASTE_LEN_MAX
    );
    let mut copy = block.clone();
    for at in 0..LOG_BLOCK_SIZE {
        for mask in [0x01, 0x80] {
            copy[at] ^= mask;
            assert!(decode_block(&copy, 42, 0).is_err(), "byte {at} ^ {mask:#x}");
            copy[at] ^= mask;
        }
    }
    assert_eq!(decode_block(&copy, 42, 0), Ok(held));
}

#[test]
fn a_never_written_block_ends_the_log() {
    assert_eq!(
        decode_block(&[0u8; LOG_BLOCK_SIZE], 0, 0),
        Err(BlockEnd::Magic { got: 0 })
    );
    assert_eq!(
        decode_block(&[0u8; LOG_BLOCK_SIZE - 1], 0, 0),
        Err(BlockEnd::Size {
            len: LOG_BLOCK_SIZE - 1
        })
    );
}

#[test]
fn an_epoch_beyond_the_limit_is_refused_before_encoding() {
    let record = Record::Epoch {
        epoch: 1,
        members: vec![1; EPOCH_MEMBERS_MAX + 1],
    };
    assert_eq!(
        record.validate(),
        Err(RecordFault::TooManyMembers {
            got: EPOCH_MEMBERS_MAX + 1,
            max: EPOCH_MEMBERS_MAX
        })
    );
}

#[test]
fn the_ring_maps_seqs_to_blocks() {
    let ring = LogRing::new(LOG_BLOCKS_MIN).unwrap();
    let n = ring.blocks();
    assert_eq!(ring.len_bytes(), n * LOG_BLOCK_SIZE as u64);
    assert_eq!(ring.index(0), 0);
    assert_eq!(ring.index(n - 1), n - 1);
    assert_eq!(ring.index(n), 0);
    assert_eq!(ring.index(3 * n + 5), 5);
    assert_eq!(ring.offset_bytes(n + 2), 2 * LOG_BLOCK_SIZE as u64);
    assert_eq!(ring.blocks_until_wrap(n + 2), n - 2);
    assert_eq!(ring.blocks_until_wrap(n - 1), 1);
    assert_eq!(ring.blocks_until_wrap(2 * n), n);
}

#[test]
fn the_ring_leaves_room_up_to_the_oldest_needed_block() {
    let ring = LogRing::new(LOG_BLOCKS_MIN).unwrap();
    let n = ring.blocks();
    assert_eq!(ring.blocks_free(100, 100), n);
    assert_eq!(ring.blocks_free(100 + n - 1, 100), 1);
    assert_eq!(ring.blocks_free(100 + n, 100), 0); // full: the writer waits
}

#[test]
#[should_panic(expected = "log overran itself")]
fn an_overrun_is_a_bug() {
    let ring = LogRing::new(LOG_BLOCKS_MIN).unwrap();
    ring.blocks_free(100 + LOG_BLOCKS_MIN + 1, 100);
}

#[test]
fn recovery_scrubs_past_the_end_but_never_a_needed_block() {
    let ring = LogRing::new(LOG_BLOCKS_MIN).unwrap();
    let n = ring.blocks();
    assert_eq!(
        ring.scrub_after_recovery(1000, 990),
        1000..1000 + LOG_BLOCKS_IN_FLIGHT_MAX
    );
    // Nearly full log: the scrub stops where the next lap reaches the checkpoint.
    assert_eq!(
        ring.scrub_after_recovery(990 + n - 3, 990),
        990 + n - 3..990 + n
    );
    assert_eq!(ring.scrub_after_recovery(990 + n, 990), 990 + n..990 + n);
}

#[test]
fn the_ring_refuses_bad_sizes() {
    for blocks in [0, LOG_BLOCKS_MIN - 1, LOG_BLOCKS_MAX + 1] {
        match LogRing::new(blocks) {
            Err(VssdError::BadGeometry { what, got, .. }) => {
                assert_eq!(what, "log blocks");
                assert_eq!(got, blocks);
            }
            other => panic!("{blocks} blocks: {other:?}"),
        }
    }
    assert!(LogRing::new(LOG_BLOCKS_MAX).is_ok());
}

/// A block of another format of the device (another uuid, so another CRC seed) is
/// where the log ends, never a block of this one: it fails its CRC like a torn block.
#[test]
fn a_block_of_another_format_ends_the_log() {
    let (seed_old, seed_new) = (0x1234_5678, 0x9abc_def0);
    let mut w = LogBlockWriter::new(vec![0u8; LOG_BLOCK_SIZE], 7, seed_old);
    w.append(&Record::Commit { tran: 3 }).unwrap();
    let block = w.seal();
    assert_eq!(
        decode_block(&block, 7, seed_old),
        Ok(vec![Record::Commit { tran: 3 }])
    );
    let end = decode_block(&block, 7, seed_new).unwrap_err();
    assert!(matches!(end, BlockEnd::Checksum { .. }), "{end:?}");
    assert!(end.is_crash_end());
}
