//! The bytes of the write-ahead log: records, the 4 KiB blocks that carry them, and
//! where a block lives in the circular log. Pure encoding and decoding, no I/O: the
//! log writer and recovery do the I/O and call this.
//!
//! # Records
//!
//! Every record is an 8-byte header and a body, little-endian, padded to nothing:
//! every body length is a multiple of 8, so every record is 8-aligned in its block.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 1 | `kind`: 1 PREPARE, 2 COMMIT, 3 ABORT, 4 CLEAN, 5 INVALIDATE, 6 EPOCH, 7 CHECKPOINT, 8 TRAN_HIGH (0 is never a record, so zeroed memory is not one) |
//! | 1 | 1 | reserved, 0 |
//! | 2 | 2 | `body_len`: bytes of body after this header |
//! | 4 | 4 | `crc`: CRC32C of header bytes 0..4 followed by the body |
//! | 8 | `body_len` | body, by kind (below) |
//!
//! | kind | body (offset within the body: field) | body bytes | record bytes |
//! | --- | --- | --- | --- |
//! | PREPARE | 0 `tran` u64, 8 `line` u64, 16 `slot` u64, 24 `payload_crc` u32, 28 `len` u32, 32 `part` u32, 36 `parts` u32 | 40 | 48 |
//! | COMMIT | 0 `tran` u64 | 8 | 16 |
//! | ABORT | 0 `tran` u64 | 8 | 16 |
//! | CLEAN | 0 `line` u64, 8 `version` u64 | 16 | 24 |
//! | INVALIDATE | 0 `line` u64 | 8 | 16 |
//! | EPOCH | 0 `epoch` u64, 8 `member_count` u8, 9 reserved 7 bytes of 0, 16 `member_count` x u64 member ids | 16 + 8 n | 24 + 8 n, n <= [`EPOCH_MEMBERS_MAX`] |
//! | CHECKPOINT | 0 `seq` u64, 8 `which` u8 (0 = A, 1 = B), 9 reserved 7 bytes of 0 | 16 | 24 |
//! | TRAN_HIGH | 0 `tran_high` u64 | 8 | 16 |
//!
//! A tran of several consecutive lines ([`crate::Vssd::writep1`]) logs one PREPARE per
//! line, `part` 0..`parts` in line order (`line` is the tran's first line + `part`),
//! appended in that order; a one-line tran is `part` 0 of 1 (no extra record). Recovery
//! keeps a tran only once all its `parts` PREPAREs are replayed: the log's durable
//! prefix may end among them, and then its writep1 never returned. `parts` is at most
//! [`TRAN_PARTS_MAX`].
//!
//! Why a CRC per record when the block has one: DESIGN.md asks every record to carry
//! its own, and it makes a record checkable on its own: the writer encodes each record
//! and decodes it back before it counts it appended, and a record that fails its own
//! CRC inside a block whose CRC holds names a writer bug, not a torn disk write. It
//! costs 4 bytes of 16 to 40. A record carries no sequence number of its own: its
//! sequence is its block's `seq` and its index in the block, and the block CRC binds
//! the two.
//!
//! # Blocks
//!
//! The log is written in blocks of [`LOG_BLOCK_SIZE`] (4 KiB: one O_DIRECT unit; a
//! group-commit write is one or more consecutive blocks). A block is a 32-byte header,
//! the records packed after it in append order, then zeros to the end:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | `magic`: `b"CVAL"` ([`LOG_BLOCK_MAGIC`]) |
//! | 4 | 4 | `crc`: CRC32C of bytes 0..4 followed by bytes 8..4096 (everything but itself) |
//! | 8 | 8 | `seq`: the block's log sequence number; consecutive blocks have consecutive seqs |
//! | 16 | 2 | `version`: [`LOG_BLOCK_VERSION`] |
//! | 18 | 2 | `record_count`: records in the block, 0..=[`RECORDS_PER_BLOCK_MAX`] |
//! | 20 | 2 | `records_len`: bytes of records after the header, 0..=[`BLOCK_RECORDS_LEN_MAX`] |
//! | 22 | 10 | reserved, 0 |
//! | 32 | `records_len` | the records |
//! | 32 + `records_len` | rest | zeros |
//!
//! A record never spans two blocks: one that does not fit in the space left starts the
//! next block. Since every record is 8-aligned and at most [`RECORD_LEN_MAX`] bytes, a
//! block sealed because it is full wastes at most [`BLOCK_WASTE_LEN_MAX`] bytes (144 of
//! 4064, 3.5 %; 32 bytes when the block holds only PREPAREs). A block sealed early
//! because a group commit flushes it wastes the rest: that trade of space for latency
//! is the log writer's.
//!
//! [`decode_block`] trusts a block only if its size, magic, CRC, version and `seq`
//! (against the seq the reader expects at that place) all hold, and then every
//! record's; anything else is the end of the log, and [`BlockEnd`] says which check
//! stopped it.
//!
//! # The circular log, and what the log writer and recovery must keep
//!
//! Block `seq` lives at block index `seq % blocks` of the log region ([`LogRing`]).
//! A block of an earlier lap at that index has a seq smaller by a multiple of
//! `blocks`: [`BlockEnd::Stale`]. A block torn at sector boundaries fails its CRC:
//! [`BlockEnd::Checksum`]. A never-written (zeroed) block fails its magic. So recovery
//! reads blocks `seq_checkpoint, seq_checkpoint + 1, ...` and stops at the first that
//! [`decode_block`] refuses.
//!
//! That is only sound if the writer keeps these rules:
//!
//! 1. **No overrun.** The log writer may write block `seq` only if
//!    `seq < seq_oldest_needed + blocks`, where `seq_oldest_needed` is the `seq` of the
//!    newest checkpoint that is *durable* (the one recovery would pick; while a new
//!    checkpoint is being written the old one still counts). [`LogRing::blocks_free`]
//!    computes the room; a full log makes writers wait, it never wraps over.
//! 2. **Acknowledge in order.** A record is durable only when its block *and every
//!    block before it* are durable: a multi-block write (or several writes in flight)
//!    may land partly, and recovery stops at the first missing block. Waiters are woken
//!    in seq order.
//! 3. **Never rewrite a durable block.** A block that reached the disk is never
//!    written again with more records (a torn rewrite would destroy records already
//!    acknowledged); the next group commit starts a fresh block with the next seq.
//! 4. **No block at or past `durable_end + LOG_BLOCKS_IN_FLIGHT_MAX`** is ever
//!    started, where `durable_end` is the end of the durable prefix (in flight, or
//!    written while an earlier write is still in flight: both may be on disk after a
//!    crash that lost the earlier one), and one write holds at most
//!    [`LOG_WRITE_BLOCKS_MAX`] blocks and does not cross the end of the region
//!    ([`LogRing::blocks_until_wrap`]).
//! 5. **Scrub after recovery.** After a crash, blocks past the end of the log (the
//!    first refused seq, `seq_end`) may still be on disk, valid, with the very seqs the
//!    new run will use next (a write whose earlier block was lost). Before the new run
//!    acknowledges anything, the blocks [`LogRing::scrub_after_recovery`] names must be
//!    durably overwritten with zeros; then the writer continues at `seq_end`. Rule 4
//!    bounds how far such leftovers can reach: `seq_end` is at least the durable end
//!    of the crashed run, so they lie before `seq_end + LOG_BLOCKS_IN_FLIGHT_MAX`.
//! 6. **Format** zeroes the whole log region (or starts at a seq that no earlier vSSD
//!    on the device can have used) and writes a first checkpoint whose `seq` is the
//!    first log seq: a block left by an earlier format must never carry a seq recovery
//!    expects.
//!
//! A checkpoint's `seq` (in the checkpoint region and in the CHECKPOINT record) is the
//! first log seq the checkpoint does *not* cover: replay starts at block `seq`. The
//! checkpoint is *exact*: it reflects every record before `seq` and none after (see
//! [`crate::recover::Replay`] for why a fuzzy one is not safe with these records).

use std::ops::Range;

use crate::error::VssdError;

/// Bytes of one log block: the unit the log writer writes (O_DIRECT-aligned).
pub const LOG_BLOCK_SIZE: usize = 4096;
/// The unit a disk writes atomically at best: a torn write tears at these boundaries.
pub const LOG_SECTOR_SIZE: usize = 512;
/// The first four bytes of every log block: `b"CVAL"` read as a little-endian u32.
pub const LOG_BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"CVAL");
/// The log block format this build writes and reads.
pub const LOG_BLOCK_VERSION: u16 = 3;
/// Bytes of the block header before the first record.
pub const BLOCK_HEADER_LEN: usize = 32;
/// Bytes of a block that records may fill.
pub const BLOCK_RECORDS_LEN_MAX: usize = LOG_BLOCK_SIZE - BLOCK_HEADER_LEN;

/// Bytes of the header every record starts with.
pub const RECORD_HEADER_LEN: usize = 8;
/// Every record length (and so every record offset in a block) is a multiple of this.
pub const RECORD_ALIGN: usize = 8;
/// Most members one EPOCH record names (a device has a handful of replicas).
pub const EPOCH_MEMBERS_MAX: usize = 16;
/// Largest payload a PREPARE may describe: the largest cache line (64 KiB).
pub const PAYLOAD_LEN_MAX: u32 = 64 * 1024;
/// Most bytes one tran writes: the largest write a DTM sends (rpc's `DATA_LEN_MAX`,
/// 1 MiB; `vssd` does not import `rpc`, so the figure is repeated here).
pub const TRAN_BYTES_MAX: u32 = 1024 * 1024;
/// Most lines (PREPAREs) one tran holds: [`TRAN_BYTES_MAX`] of the smallest lines.
/// A vSSD's own limit is lower for larger lines and small caches
/// ([`crate::Vssd::tran_lines_max`]).
pub const TRAN_PARTS_MAX: u32 = TRAN_BYTES_MAX / crate::layout::LINE_SIZE_MIN;
/// `which` of a CHECKPOINT record naming checkpoint region A.
pub const CHECKPOINT_A: u8 = 0;
/// `which` of a CHECKPOINT record naming checkpoint region B.
pub const CHECKPOINT_B: u8 = 1;

const PREPARE_BODY_LEN: usize = 40;
const TRAN_BODY_LEN: usize = 8; // COMMIT, ABORT
const CLEAN_BODY_LEN: usize = 16;
const INVALIDATE_BODY_LEN: usize = 8;
const EPOCH_BODY_FIXED_LEN: usize = 16;
const EPOCH_BODY_LEN_MAX: usize = EPOCH_BODY_FIXED_LEN + 8 * EPOCH_MEMBERS_MAX;
const CHECKPOINT_BODY_LEN: usize = 16;
const TRAN_HIGH_BODY_LEN: usize = 8;

/// The shortest record (COMMIT, ABORT, INVALIDATE).
pub const RECORD_LEN_MIN: usize = RECORD_HEADER_LEN + 8;
/// The longest record (an EPOCH with [`EPOCH_MEMBERS_MAX`] members).
pub const RECORD_LEN_MAX: usize = RECORD_HEADER_LEN + EPOCH_BODY_LEN_MAX;
/// Most records one block holds (all of the shortest kind).
pub const RECORDS_PER_BLOCK_MAX: usize = BLOCK_RECORDS_LEN_MAX / RECORD_LEN_MIN;
/// Most bytes a block sealed because the next record did not fit leaves unused.
pub const BLOCK_WASTE_LEN_MAX: usize = RECORD_LEN_MAX - RECORD_ALIGN;

/// Most blocks one log write carries (256 KiB).
pub const LOG_WRITE_BLOCKS_MAX: u64 = 64;
/// How far past the durable prefix of the log the log writer may start blocks (rule 4
/// of the module doc), and so how far past the end of the log recovery scrubs (rule
/// 5): room for the log writers' eight writes in flight ([`crate::log::LOG_WRITERS`]).
pub const LOG_BLOCKS_IN_FLIGHT_MAX: u64 = 8 * LOG_WRITE_BLOCKS_MAX;
/// The smallest log a vSSD may have, in blocks (4 MiB; the layout's
/// [`crate::layout::LOG_BYTES_MIN`]).
pub const LOG_BLOCKS_MIN: u64 = 2 * LOG_BLOCKS_IN_FLIGHT_MAX;
/// The largest log a vSSD may have, in blocks (16 TiB): byte offsets never overflow.
pub const LOG_BLOCKS_MAX: u64 = 1 << 32;

const _: () = assert!(LOG_BLOCK_SIZE.is_multiple_of(LOG_SECTOR_SIZE));
const _: () = assert!(BLOCK_HEADER_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(BLOCK_RECORDS_LEN_MAX <= u16::MAX as usize);
const _: () = assert!(RECORDS_PER_BLOCK_MAX <= u16::MAX as usize);
const _: () = assert!(RECORD_LEN_MAX <= BLOCK_RECORDS_LEN_MAX); // any record fits a fresh block
const _: () = assert!(EPOCH_BODY_LEN_MAX <= u16::MAX as usize);
const _: () = assert!(EPOCH_MEMBERS_MAX <= u8::MAX as usize);
const _: () = assert!(PREPARE_BODY_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(TRAN_PARTS_MAX >= 1);
// A tran's PREPAREs fit one log write, so they are appended together.
const _: () = assert!(
    TRAN_PARTS_MAX as usize * (RECORD_HEADER_LEN + PREPARE_BODY_LEN)
        <= (LOG_WRITE_BLOCKS_MAX as usize / 2) * (BLOCK_RECORDS_LEN_MAX - BLOCK_WASTE_LEN_MAX)
);
const _: () = assert!(TRAN_BODY_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(CLEAN_BODY_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(INVALIDATE_BODY_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(EPOCH_BODY_FIXED_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(CHECKPOINT_BODY_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(TRAN_HIGH_BODY_LEN.is_multiple_of(RECORD_ALIGN));
const _: () = assert!(RECORD_LEN_MIN == RECORD_HEADER_LEN + TRAN_BODY_LEN);
const _: () = assert!(BLOCK_WASTE_LEN_MAX * 25 < BLOCK_RECORDS_LEN_MAX); // < 4 % waste
const _: () = assert!(LOG_WRITE_BLOCKS_MAX <= LOG_BLOCKS_IN_FLIGHT_MAX);
const _: () = assert!(LOG_BLOCKS_IN_FLIGHT_MAX < LOG_BLOCKS_MIN);
const _: () = assert!(LOG_BLOCKS_MIN <= LOG_BLOCKS_MAX);
const _: () = assert!(LOG_BLOCKS_MAX <= u64::MAX / LOG_BLOCK_SIZE as u64);

/// The kind byte of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    Prepare = 1,
    Commit = 2,
    Abort = 3,
    Clean = 4,
    Invalidate = 5,
    Epoch = 6,
    Checkpoint = 7,
    TranHigh = 8,
}

impl RecordKind {
    /// The kind a byte names, if any.
    pub fn from_u8(byte: u8) -> Option<RecordKind> {
        Some(match byte {
            1 => RecordKind::Prepare,
            2 => RecordKind::Commit,
            3 => RecordKind::Abort,
            4 => RecordKind::Clean,
            5 => RecordKind::Invalidate,
            6 => RecordKind::Epoch,
            7 => RecordKind::Checkpoint,
            8 => RecordKind::TranHigh,
            _ => return None,
        })
    }

    /// The body lengths this kind allows (EPOCH: also a multiple of 8 bytes).
    fn body_len_range(self) -> (usize, usize) {
        match self {
            RecordKind::Prepare => (PREPARE_BODY_LEN, PREPARE_BODY_LEN),
            RecordKind::Commit | RecordKind::Abort => (TRAN_BODY_LEN, TRAN_BODY_LEN),
            RecordKind::Clean => (CLEAN_BODY_LEN, CLEAN_BODY_LEN),
            RecordKind::Invalidate => (INVALIDATE_BODY_LEN, INVALIDATE_BODY_LEN),
            RecordKind::Epoch => (EPOCH_BODY_FIXED_LEN, EPOCH_BODY_LEN_MAX),
            RecordKind::Checkpoint => (CHECKPOINT_BODY_LEN, CHECKPOINT_BODY_LEN),
            RecordKind::TranHigh => (TRAN_HIGH_BODY_LEN, TRAN_HIGH_BODY_LEN),
        }
    }
}

/// One log record (DESIGN.md, "vSSD on disk").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Record {
    /// Phase 1 of `tran`: `len` payload bytes with CRC32C `payload_crc` for `line`
    /// are durable in `slot`.
    Prepare {
        tran: u64,
        line: u64,
        slot: u64,
        payload_crc: u32,
        /// Payload bytes, 1..=[`PAYLOAD_LEN_MAX`].
        len: u32,
        /// Which of the tran's lines this is (`line` is its first line + `part`).
        part: u32,
        /// Lines the tran holds, 1..=[`TRAN_PARTS_MAX`]; `part < parts`.
        parts: u32,
    },
    /// `tran` committed: its slot is the line's version.
    Commit { tran: u64 },
    /// `tran` aborted: its slot is free again.
    Abort { tran: u64 },
    /// `line` was destaged; `version` is the tran id that wrote the destaged data.
    Clean { line: u64, version: u64 },
    /// `line` is no longer cached (DISCARD).
    Invalidate { line: u64 },
    /// The device's membership changed: `members` (at most [`EPOCH_MEMBERS_MAX`]
    /// member ids, in the DTM's order) from `epoch` on.
    Epoch { epoch: u64, members: Vec<u64> },
    /// Checkpoint region `which` ([`CHECKPOINT_A`] or [`CHECKPOINT_B`]) is durable and
    /// covers every log block before `seq`.
    Checkpoint { seq: u64, which: u8 },
    /// Every tran id the vSSD hands out ([`crate::Vssd::next_tran_id`]) until a
    /// later TRAN_HIGH is below `tran_high`: logged ahead, so that ids are never
    /// reused after a restart.
    TranHigh { tran_high: u64 },
}

/// Why one record does not decode, or may not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordFault {
    /// Fewer bytes than the header or the body it announces.
    #[error("record needs {need} bytes, {have} left")]
    Short { need: usize, have: usize },
    /// A kind byte this build does not know.
    #[error("record kind {got} unknown")]
    Kind { got: u8 },
    /// A body length the kind does not allow.
    #[error("{kind:?} record body of {got} bytes, allowed {min}..={max} in steps of 8")]
    BodyLen {
        kind: RecordKind,
        got: usize,
        min: usize,
        max: usize,
    },
    /// The record's own CRC does not match its bytes.
    #[error("record CRC32C {got:#010x}, computed {want:#010x}")]
    Checksum { got: u32, want: u32 },
    /// A reserved byte that is not zero.
    #[error("{kind:?} record: reserved byte {offset} is {got:#04x}, must be 0")]
    Reserved {
        kind: RecordKind,
        offset: usize,
        got: u8,
    },
    /// An EPOCH with more members than [`EPOCH_MEMBERS_MAX`].
    #[error("EPOCH record with {got} members, at most {max}")]
    TooManyMembers { got: usize, max: usize },
    /// An EPOCH whose `member_count` disagrees with its body length.
    #[error("EPOCH record says {got} members, its body holds {want}")]
    MemberCount { got: u8, want: usize },
    /// A CHECKPOINT naming neither region A nor B.
    #[error("CHECKPOINT record names region {got}, expected 0 (A) or 1 (B)")]
    Which { got: u8 },
    /// A PREPARE whose `part` is not below its `parts`, or `parts` of 0 or above
    /// [`TRAN_PARTS_MAX`].
    #[error("PREPARE record part {part} of {parts}, allowed parts 1..={max} and part < parts")]
    Part { part: u32, parts: u32, max: u32 },
    /// A PREPARE payload length of 0 or above [`PAYLOAD_LEN_MAX`].
    #[error("PREPARE record payload length {got}, allowed 1..={max}")]
    PayloadLen { got: u32, max: u32 },
}

impl Record {
    /// The record's kind byte.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Prepare { .. } => RecordKind::Prepare,
            Record::Commit { .. } => RecordKind::Commit,
            Record::Abort { .. } => RecordKind::Abort,
            Record::Clean { .. } => RecordKind::Clean,
            Record::Invalidate { .. } => RecordKind::Invalidate,
            Record::Epoch { .. } => RecordKind::Epoch,
            Record::Checkpoint { .. } => RecordKind::Checkpoint,
            Record::TranHigh { .. } => RecordKind::TranHigh,
        }
    }

    /// Whether the record may be encoded: every field within its limits. Whoever
    /// builds a record from input it does not control (an EPOCH from the DTM) checks
    /// this first; [`Record::encode`] asserts it.
    pub fn validate(&self) -> Result<(), RecordFault> {
        match self {
            Record::Prepare {
                len, part, parts, ..
            } => {
                if *len == 0 || *len > PAYLOAD_LEN_MAX {
                    return Err(RecordFault::PayloadLen {
                        got: *len,
                        max: PAYLOAD_LEN_MAX,
                    });
                }
                if *parts == 0 || *parts > TRAN_PARTS_MAX || part >= parts {
                    return Err(RecordFault::Part {
                        part: *part,
                        parts: *parts,
                        max: TRAN_PARTS_MAX,
                    });
                }
            }
            Record::Epoch { members, .. } => {
                if members.len() > EPOCH_MEMBERS_MAX {
                    return Err(RecordFault::TooManyMembers {
                        got: members.len(),
                        max: EPOCH_MEMBERS_MAX,
                    });
                }
            }
            Record::Checkpoint { which, .. } => {
                if *which != CHECKPOINT_A && *which != CHECKPOINT_B {
                    return Err(RecordFault::Which { got: *which });
                }
            }
            Record::Commit { .. }
            | Record::Abort { .. }
            | Record::Clean { .. }
            | Record::Invalidate { .. }
            | Record::TranHigh { .. } => {}
        }
        Ok(())
    }

    fn body_len(&self) -> usize {
        match self {
            Record::Prepare { .. } => PREPARE_BODY_LEN,
            Record::Commit { .. } | Record::Abort { .. } => TRAN_BODY_LEN,
            Record::Clean { .. } => CLEAN_BODY_LEN,
            Record::Invalidate { .. } => INVALIDATE_BODY_LEN,
            Record::Epoch { members, .. } => EPOCH_BODY_FIXED_LEN + 8 * members.len(),
            Record::Checkpoint { .. } => CHECKPOINT_BODY_LEN,
            Record::TranHigh { .. } => TRAN_HIGH_BODY_LEN,
        }
    }

    /// Bytes the record takes in a block, header included.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_LEN + self.body_len()
    }

    /// Writes the record at the start of `out` and returns its length.
    ///
    /// # Panics
    /// If the record does not [`validate`](Record::validate) or `out` is shorter than
    /// [`encoded_len`](Record::encoded_len): both are the caller's bugs.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        if let Err(fault) = self.validate() {
            panic!("encoding an invalid log record {self:?}: {fault}");
        }
        let len = self.encoded_len();
        assert!(
            out.len() >= len,
            "log record of {len} bytes into {} bytes",
            out.len()
        );
        assert!(len.is_multiple_of(RECORD_ALIGN));
        let out = &mut out[..len];
        let body_len = len - RECORD_HEADER_LEN;
        out[0] = self.kind() as u8;
        out[1] = 0;
        out[2..4].copy_from_slice(&(body_len as u16).to_le_bytes());
        let mut put = Put {
            out: &mut out[RECORD_HEADER_LEN..],
            pos: 0,
        };
        match self {
            Record::Prepare {
                tran,
                line,
                slot,
                payload_crc,
                len,
                part,
                parts,
            } => {
                put.u64(*tran);
                put.u64(*line);
                put.u64(*slot);
                put.u32(*payload_crc);
                put.u32(*len);
                put.u32(*part);
                put.u32(*parts);
            }
            Record::Commit { tran } | Record::Abort { tran } => put.u64(*tran),
            Record::Clean { line, version } => {
                put.u64(*line);
                put.u64(*version);
            }
            Record::Invalidate { line } => put.u64(*line),
            Record::Epoch { epoch, members } => {
                put.u64(*epoch);
                put.u8(members.len() as u8);
                put.zeros(7);
                for member in members {
                    put.u64(*member);
                }
            }
            Record::Checkpoint { seq, which } => {
                put.u64(*seq);
                put.u8(*which);
                put.zeros(7);
            }
            Record::TranHigh { tran_high } => put.u64(*tran_high),
        }
        assert_eq!(put.pos, body_len);
        let crc = record_crc(out);
        out[4..8].copy_from_slice(&crc.to_le_bytes());
        len
    }

    /// Reads one record from the start of `bytes`: the record and its length. Never
    /// panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<(Record, usize), RecordFault> {
        let header = bytes.get(..RECORD_HEADER_LEN).ok_or(RecordFault::Short {
            need: RECORD_HEADER_LEN,
            have: bytes.len(),
        })?;
        let kind = RecordKind::from_u8(header[0]).ok_or(RecordFault::Kind { got: header[0] })?;
        let body_len = usize::from(u16::from_le_bytes([header[2], header[3]]));
        let (min, max) = kind.body_len_range();
        if body_len < min || body_len > max || !body_len.is_multiple_of(RECORD_ALIGN) {
            return Err(RecordFault::BodyLen {
                kind,
                got: body_len,
                min,
                max,
            });
        }
        let len = RECORD_HEADER_LEN + body_len;
        let record = bytes.get(..len).ok_or(RecordFault::Short {
            need: len,
            have: bytes.len(),
        })?;
        let crc_got = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let crc_want = record_crc(record);
        if crc_got != crc_want {
            return Err(RecordFault::Checksum {
                got: crc_got,
                want: crc_want,
            });
        }
        if header[1] != 0 {
            return Err(RecordFault::Reserved {
                kind,
                offset: 1,
                got: header[1],
            });
        }
        let mut get = Get {
            bytes: &record[RECORD_HEADER_LEN..],
            pos: 0,
            kind,
        };
        let decoded = match kind {
            RecordKind::Prepare => {
                let tran = get.u64()?;
                let line = get.u64()?;
                let slot = get.u64()?;
                let payload_crc = get.u32()?;
                let len = get.u32()?;
                let part = get.u32()?;
                let parts = get.u32()?;
                Record::Prepare {
                    tran,
                    line,
                    slot,
                    payload_crc,
                    len,
                    part,
                    parts,
                }
            }
            RecordKind::Commit => Record::Commit { tran: get.u64()? },
            RecordKind::Abort => Record::Abort { tran: get.u64()? },
            RecordKind::Clean => {
                let line = get.u64()?;
                let version = get.u64()?;
                Record::Clean { line, version }
            }
            RecordKind::Invalidate => Record::Invalidate { line: get.u64()? },
            RecordKind::Epoch => {
                let epoch = get.u64()?;
                let count = get.u8()?;
                get.reserved(7)?;
                let want = (body_len - EPOCH_BODY_FIXED_LEN) / 8;
                if usize::from(count) != want {
                    return Err(RecordFault::MemberCount { got: count, want });
                }
                let mut members = Vec::with_capacity(want);
                for _ in 0..want {
                    members.push(get.u64()?);
                }
                Record::Epoch { epoch, members }
            }
            RecordKind::Checkpoint => {
                let seq = get.u64()?;
                let which = get.u8()?;
                get.reserved(7)?;
                Record::Checkpoint { seq, which }
            }
            RecordKind::TranHigh => Record::TranHigh {
                tran_high: get.u64()?,
            },
        };
        // The body lengths above are the kinds' own, so nothing is left over.
        debug_assert_eq!(get.pos, body_len);
        decoded.validate()?;
        Ok((decoded, len))
    }
}

/// CRC32C of a record: header bytes 0..4, then the body (bytes 8..).
fn record_crc(record: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&record[..4]);
    crc32c::crc32c_append(crc, &record[RECORD_HEADER_LEN..])
}

/// CRC32C of a block: bytes 0..4, then bytes 8.. (everything but the CRC field),
/// starting from `seed` (the format's [`crate::layout::Superblock::crc_seed`], so a
/// block left by an earlier format of the device never passes for one of this one).
fn block_crc(block: &[u8], seed: u32) -> u32 {
    let crc = crc32c::crc32c_append(seed, &block[..4]);
    crc32c::crc32c_append(crc, &block[8..])
}

/// Little-endian writes into a slice the caller sized; overrunning it is a bug.
struct Put<'a> {
    out: &'a mut [u8],
    pos: usize,
}

impl Put<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.out[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
    fn zeros(&mut self, n: usize) {
        self.out[self.pos..self.pos + n].fill(0);
        self.pos += n;
    }
}

/// Bounded little-endian reads of one record body; never indexes out of bounds.
struct Get<'a> {
    bytes: &'a [u8],
    pos: usize,
    kind: RecordKind,
}

impl Get<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordFault> {
        let have = self.bytes.len().saturating_sub(self.pos);
        let s = self
            .bytes
            .get(self.pos..)
            .and_then(|rest| rest.get(..N))
            .ok_or(RecordFault::Short {
                need: RECORD_HEADER_LEN + self.pos + N,
                have: RECORD_HEADER_LEN + self.pos + have,
            })?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        self.pos += N;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, RecordFault> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordFault> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, RecordFault> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn reserved(&mut self, n: usize) -> Result<(), RecordFault> {
        for _ in 0..n {
            let offset = RECORD_HEADER_LEN + self.pos;
            let got = self.u8()?;
            if got != 0 {
                return Err(RecordFault::Reserved {
                    kind: self.kind,
                    offset,
                    got,
                });
            }
        }
        Ok(())
    }
}

/// Why the log ends at a block: the block [`decode_block`] refused, and the check that
/// refused it (for recovery's diagnostics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockEnd {
    /// Not [`LOG_BLOCK_SIZE`] bytes: the caller's bug.
    #[error("log block of {len} bytes, expected {LOG_BLOCK_SIZE}")]
    Size { len: usize },
    /// Wrong magic: a block never written (zeros) or not a log block at all.
    #[error("log block magic {got:#010x}, expected {LOG_BLOCK_MAGIC:#010x}")]
    Magic { got: u32 },
    /// The block CRC does not match: a torn or corrupt block.
    #[error("log block CRC32C {got:#010x}, computed {want:#010x}: torn or corrupt")]
    Checksum { got: u32, want: u32 },
    /// A valid block of another format version.
    #[error("log block format version {got}, this build reads {LOG_BLOCK_VERSION}")]
    Version { got: u16 },
    /// A valid block with an older seq: written on an earlier lap of the log.
    #[error("log block seq {seq_got}, expected {seq_want}: stale, from an earlier lap")]
    Stale { seq_got: u64, seq_want: u64 },
    /// A valid block with a newer seq than expected: never the case in a log kept by
    /// the rules of this module (a wrong starting seq, or a foreign log).
    #[error("log block seq {seq_got}, expected {seq_want}: ahead of the log")]
    Ahead { seq_got: u64, seq_want: u64 },
    /// A header field out of range in a block whose CRC holds: a writer bug.
    #[error("log block seq {seq}: {what} is {got}, allowed at most {max}")]
    Header {
        seq: u64,
        what: &'static str,
        got: u64,
        max: u64,
    },
    /// A record that does not decode in a block whose CRC holds: a writer bug.
    #[error("log block seq {seq}: record {index} at byte {offset}: {fault}")]
    Record {
        seq: u64,
        index: usize,
        offset: usize,
        fault: RecordFault,
    },
}

impl BlockEnd {
    /// Whether this is how a log kept by the rules ends after a crash or on a fresh
    /// log (never written, torn, or from an earlier lap). Anything else means a bug or
    /// foreign data and deserves a loud report, though the log ends there all the same.
    pub fn is_crash_end(&self) -> bool {
        matches!(
            self,
            BlockEnd::Magic { .. } | BlockEnd::Checksum { .. } | BlockEnd::Stale { .. }
        )
    }
}

/// Decodes a sealed log block that must carry `expected_seq`: its records in append
/// order, or why the log ends here. Never panics, whatever the bytes.
pub fn decode_block(bytes: &[u8], expected_seq: u64, seed: u32) -> Result<Vec<Record>, BlockEnd> {
    let mut records = Vec::new();
    walk_block(bytes, expected_seq, seed, |record| records.push(record))?;
    Ok(records)
}

/// Checks a block as [`decode_block`] says and hands each record to `each`.
fn walk_block(
    bytes: &[u8],
    expected_seq: u64,
    seed: u32,
    mut each: impl FnMut(Record),
) -> Result<(), BlockEnd> {
    let Ok(block) = <&[u8; LOG_BLOCK_SIZE]>::try_from(bytes) else {
        return Err(BlockEnd::Size { len: bytes.len() });
    };
    let field_u16 = |at: usize| u16::from_le_bytes([block[at], block[at + 1]]);
    let field_u32 =
        |at: usize| u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
    let magic = field_u32(0);
    if magic != LOG_BLOCK_MAGIC {
        return Err(BlockEnd::Magic { got: magic });
    }
    let crc_got = field_u32(4);
    let crc_want = block_crc(block, seed);
    if crc_got != crc_want {
        return Err(BlockEnd::Checksum {
            got: crc_got,
            want: crc_want,
        });
    }
    let version = field_u16(16);
    if version != LOG_BLOCK_VERSION {
        return Err(BlockEnd::Version { got: version });
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&block[8..16]);
    let seq = u64::from_le_bytes(seq_bytes);
    if seq < expected_seq {
        return Err(BlockEnd::Stale {
            seq_got: seq,
            seq_want: expected_seq,
        });
    }
    if seq > expected_seq {
        return Err(BlockEnd::Ahead {
            seq_got: seq,
            seq_want: expected_seq,
        });
    }
    let header_fault = |what: &'static str, got: usize, max: usize| BlockEnd::Header {
        seq,
        what,
        got: got as u64,
        max: max as u64,
    };
    let record_count = usize::from(field_u16(18));
    if record_count > RECORDS_PER_BLOCK_MAX {
        return Err(header_fault(
            "record count",
            record_count,
            RECORDS_PER_BLOCK_MAX,
        ));
    }
    let records_len = usize::from(field_u16(20));
    if records_len > BLOCK_RECORDS_LEN_MAX {
        return Err(header_fault(
            "records length",
            records_len,
            BLOCK_RECORDS_LEN_MAX,
        ));
    }
    if let Some(at) = block[22..BLOCK_HEADER_LEN].iter().position(|b| *b != 0) {
        return Err(header_fault(
            "reserved header byte",
            usize::from(block[22 + at]),
            0,
        ));
    }
    let records = &block[BLOCK_HEADER_LEN..BLOCK_HEADER_LEN + records_len];
    let mut pos = 0;
    for index in 0..record_count {
        let (record, len) = Record::decode(&records[pos..]).map_err(|fault| BlockEnd::Record {
            seq,
            index,
            offset: BLOCK_HEADER_LEN + pos,
            fault,
        })?;
        each(record);
        pos += len;
    }
    if pos != records_len {
        return Err(header_fault(
            "records length past the counted records",
            records_len,
            pos,
        ));
    }
    let tail = &block[BLOCK_HEADER_LEN + records_len..];
    if let Some(at) = tail.iter().position(|b| *b != 0) {
        return Err(header_fault(
            "byte after the records",
            usize::from(tail[at]),
            0,
        ));
    }
    Ok(())
}

/// A block has no room for a record: seal it and append to the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("log block seq {seq} full: record of {need} bytes, {free} bytes free")]
pub struct Full {
    pub seq: u64,
    pub need: usize,
    pub free: usize,
}

/// Fills one log block with records and seals it. `B` is any [`LOG_BLOCK_SIZE`]-byte
/// buffer: an owned one, or `&mut buf[i * LOG_BLOCK_SIZE..][..LOG_BLOCK_SIZE]` of the
/// aligned buffer a group-commit write sends, so nothing is copied.
///
/// The block's record count and length are kept in its header as records are
/// appended, so a writer can be dropped and [`resume`](LogBlockWriter::resume)d on
/// the same unsealed bytes.
#[derive(Debug)]
pub struct LogBlockWriter<B: AsRef<[u8]> + AsMut<[u8]>> {
    buf: B,
    seq: u64,
    seed: u32,
    record_count: usize,
    records_len: usize,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> LogBlockWriter<B> {
    /// Starts block `seq` in `buf`, zeroing it.
    ///
    /// # Panics
    /// If `buf` is not [`LOG_BLOCK_SIZE`] bytes.
    pub fn new(mut buf: B, seq: u64, seed: u32) -> LogBlockWriter<B> {
        let block = buf.as_mut();
        assert_eq!(block.len(), LOG_BLOCK_SIZE, "log block buffer size");
        block.fill(0);
        block[0..4].copy_from_slice(&LOG_BLOCK_MAGIC.to_le_bytes());
        block[8..16].copy_from_slice(&seq.to_le_bytes());
        block[16..18].copy_from_slice(&LOG_BLOCK_VERSION.to_le_bytes());
        LogBlockWriter {
            buf,
            seq,
            seed,
            record_count: 0,
            records_len: 0,
        }
    }

    /// Continues appending to a block that [`new`](LogBlockWriter::new) started in
    /// `buf` and that is not sealed yet.
    ///
    /// # Panics
    /// If `buf` does not hold such a block (wrong size, magic or version, counts out
    /// of range): the caller's bug.
    pub fn resume(buf: B, seed: u32) -> LogBlockWriter<B> {
        let block = buf.as_ref();
        assert_eq!(block.len(), LOG_BLOCK_SIZE, "log block buffer size");
        assert_eq!(
            block[0..4],
            LOG_BLOCK_MAGIC.to_le_bytes(),
            "log block magic"
        );
        assert_eq!(
            block[16..18],
            LOG_BLOCK_VERSION.to_le_bytes(),
            "log block version"
        );
        let mut seq_bytes = [0u8; 8];
        seq_bytes.copy_from_slice(&block[8..16]);
        let seq = u64::from_le_bytes(seq_bytes);
        let record_count = usize::from(u16::from_le_bytes([block[18], block[19]]));
        let records_len = block_records_len(block);
        assert!(record_count <= RECORDS_PER_BLOCK_MAX);
        assert!(records_len <= BLOCK_RECORDS_LEN_MAX);
        assert!(records_len >= record_count * RECORD_LEN_MIN);
        LogBlockWriter {
            buf,
            seq,
            seed,
            record_count,
            records_len,
        }
    }

    /// The block's log sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Records appended so far.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Whether no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Bytes of records appended so far.
    pub fn records_len(&self) -> usize {
        self.records_len
    }

    /// Bytes still free for records.
    pub fn bytes_free(&self) -> usize {
        BLOCK_RECORDS_LEN_MAX - self.records_len
    }

    /// Whether `record` fits in the space left.
    pub fn fits(&self, record: &Record) -> bool {
        record.encoded_len() <= self.bytes_free()
    }

    /// Appends `record`, or says the block is full (nothing changed then).
    ///
    /// # Panics
    /// If the record does not [`validate`](Record::validate): the caller's bug.
    pub fn append(&mut self, record: &Record) -> Result<(), Full> {
        let need = record.encoded_len();
        if need > self.bytes_free() {
            return Err(Full {
                seq: self.seq,
                need,
                free: self.bytes_free(),
            });
        }
        assert!(self.record_count < RECORDS_PER_BLOCK_MAX);
        let at = BLOCK_HEADER_LEN + self.records_len;
        let block = self.buf.as_mut();
        let len = record.encode(&mut block[at..]);
        assert_eq!(len, need);
        // Checked on the way in: the bytes read back as the record they encode.
        match Record::decode(&block[at..at + len]) {
            Ok((back, back_len)) => {
                assert_eq!(back_len, len);
                assert_eq!(&back, record, "log record does not read back");
            }
            Err(fault) => panic!("log record {record:?} does not read back: {fault}"),
        }
        self.record_count += 1;
        self.records_len += len;
        block[18..20].copy_from_slice(&(self.record_count as u16).to_le_bytes());
        block[20..22].copy_from_slice(&(self.records_len as u16).to_le_bytes());
        Ok(())
    }

    /// Seals the block (its CRC) and hands back the buffer, ready to write.
    pub fn seal(mut self) -> B {
        let block = self.buf.as_mut();
        let crc = block_crc(block, self.seed);
        block[4..8].copy_from_slice(&crc.to_le_bytes());
        // Checked on the way out: the sealed block decodes with every record.
        let mut count = 0;
        let decoded = walk_block(block, self.seq, self.seed, |_| count += 1);
        assert_eq!(decoded, Ok(()), "sealed log block seq {}", self.seq);
        assert_eq!(count, self.record_count);
        self.buf
    }
}

/// Bytes of records in a block a [`LogBlockWriter`] started (its header's
/// `records_len`), sealed or not.
pub fn block_records_len(block: &[u8]) -> usize {
    usize::from(u16::from_le_bytes([block[20], block[21]]))
}

/// Where log blocks live in the circular log region, and how much room the writer
/// has (rules 1, 4 and 5 of the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRing {
    blocks: u64,
}

impl LogRing {
    /// A log of `blocks` blocks, [`LOG_BLOCKS_MIN`]..=[`LOG_BLOCKS_MAX`].
    pub fn new(blocks: u64) -> Result<LogRing, VssdError> {
        if !(LOG_BLOCKS_MIN..=LOG_BLOCKS_MAX).contains(&blocks) {
            return Err(VssdError::BadGeometry {
                what: "log blocks",
                got: blocks,
                allowed: format!("{LOG_BLOCKS_MIN}..={LOG_BLOCKS_MAX}"),
            });
        }
        Ok(LogRing { blocks })
    }

    /// Blocks in the log.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Bytes of the log region.
    pub fn len_bytes(&self) -> u64 {
        self.blocks * LOG_BLOCK_SIZE as u64
    }

    /// The block index of block `seq`.
    pub fn index(&self, seq: u64) -> u64 {
        seq % self.blocks
    }

    /// The byte offset of block `seq` from the start of the log region.
    pub fn offset_bytes(&self, seq: u64) -> u64 {
        self.index(seq) * LOG_BLOCK_SIZE as u64
    }

    /// How many consecutive blocks from `seq` lie before the end of the region: the
    /// most one contiguous write starting at `seq` may carry.
    pub fn blocks_until_wrap(&self, seq: u64) -> u64 {
        self.blocks - self.index(seq)
    }

    /// How many blocks from `seq_next` on the writer may still write without passing
    /// `seq_oldest_needed`, the `seq` of the newest durable checkpoint.
    ///
    /// # Panics
    /// If the log has already overrun itself (`seq_next - seq_oldest_needed > blocks`)
    /// or the checkpoint is ahead of the log: the caller's bug.
    pub fn blocks_free(&self, seq_next: u64, seq_oldest_needed: u64) -> u64 {
        assert!(
            seq_oldest_needed <= seq_next,
            "checkpoint seq {seq_oldest_needed} ahead of log seq {seq_next}"
        );
        let used = seq_next - seq_oldest_needed;
        assert!(
            used <= self.blocks,
            "log overran itself: {used} blocks since checkpoint seq {seq_oldest_needed}, log holds {}",
            self.blocks
        );
        self.blocks - used
    }

    /// The seqs whose blocks must be durably zeroed after recovery found the log to
    /// end at `seq_end` (the first refused block) replaying from checkpoint
    /// `seq_checkpoint`, before the new run writes block `seq_end` (rule 5). Never
    /// touches a block replay needed: it stops where the next lap would reach
    /// `seq_checkpoint`.
    ///
    /// # Panics
    /// If `seq_end` is before `seq_checkpoint` or more than a log ahead of it.
    pub fn scrub_after_recovery(&self, seq_end: u64, seq_checkpoint: u64) -> Range<u64> {
        let room = self.blocks_free(seq_end, seq_checkpoint);
        seq_end..seq_end + room.min(LOG_BLOCKS_IN_FLIGHT_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(record: &Record) -> Vec<u8> {
        let mut out = vec![0xEE; record.encoded_len() + 5];
        let len = record.encode(&mut out);
        assert_eq!(len, record.encoded_len());
        assert!(
            out[len..].iter().all(|b| *b == 0xEE),
            "wrote past its length"
        );
        out.truncate(len);
        out
    }

    /// The header of an encoded record, checked against the table of the module doc.
    fn check_header(bytes: &[u8], kind: u8, body_len: u16) {
        assert_eq!(bytes[0], kind);
        assert_eq!(bytes[1], 0);
        assert_eq!(bytes[2..4], body_len.to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..4]), &bytes[8..]);
        assert_eq!(bytes[4..8], crc.to_le_bytes());
        assert_eq!(bytes.len(), 8 + usize::from(body_len));
    }

    #[test]
    fn record_layouts_match_the_doc() {
        let b = encoded(&Record::Prepare {
            tran: 0x0102030405060708,
            line: 0x1112131415161718,
            slot: 0x2122232425262728,
            payload_crc: 0x31323334,
            len: 4096,
            part: 3,
            parts: 7,
        });
        check_header(&b, 1, 40);
        assert_eq!(b[8..16], 0x0102030405060708u64.to_le_bytes());
        assert_eq!(b[16..24], 0x1112131415161718u64.to_le_bytes());
        assert_eq!(b[24..32], 0x2122232425262728u64.to_le_bytes());
        assert_eq!(b[32..36], 0x31323334u32.to_le_bytes());
        assert_eq!(b[36..40], 4096u32.to_le_bytes());
        assert_eq!(b[40..44], 3u32.to_le_bytes());
        assert_eq!(b[44..48], 7u32.to_le_bytes());

        for (record, kind) in [
            (Record::Commit { tran: 77 }, 2),
            (Record::Abort { tran: 77 }, 3),
            (Record::Invalidate { line: 77 }, 5),
            (Record::TranHigh { tran_high: 77 }, 8),
        ] {
            let b = encoded(&record);
            check_header(&b, kind, 8);
            assert_eq!(b[8..16], 77u64.to_le_bytes());
        }

        let b = encoded(&Record::Clean {
            line: 5,
            version: 9,
        });
        check_header(&b, 4, 16);
        assert_eq!(b[8..16], 5u64.to_le_bytes());
        assert_eq!(b[16..24], 9u64.to_le_bytes());

        let b = encoded(&Record::Epoch {
            epoch: 3,
            members: vec![10, 20],
        });
        check_header(&b, 6, 32);
        assert_eq!(b[8..16], 3u64.to_le_bytes());
        assert_eq!(b[16], 2);
        assert_eq!(b[17..24], [0; 7]);
        assert_eq!(b[24..32], 10u64.to_le_bytes());
        assert_eq!(b[32..40], 20u64.to_le_bytes());

        let b = encoded(&Record::Checkpoint {
            seq: 1234,
            which: CHECKPOINT_B,
        });
        check_header(&b, 7, 16);
        assert_eq!(b[8..16], 1234u64.to_le_bytes());
        assert_eq!(b[16], 1);
        assert_eq!(b[17..24], [0; 7]);
    }

    #[test]
    fn record_lengths_are_the_limits() {
        let epoch_max = Record::Epoch {
            epoch: 1,
            members: vec![7; EPOCH_MEMBERS_MAX],
        };
        assert_eq!(epoch_max.encoded_len(), RECORD_LEN_MAX);
        assert_eq!(Record::Commit { tran: 1 }.encoded_len(), RECORD_LEN_MIN);
        assert_eq!(RECORD_LEN_MAX, 152);
        assert_eq!(RECORDS_PER_BLOCK_MAX, 254);
        assert_eq!(BLOCK_WASTE_LEN_MAX, 144);
    }

    #[test]
    fn invalid_records_are_refused() {
        let too_many = Record::Epoch {
            epoch: 1,
            members: vec![0; EPOCH_MEMBERS_MAX + 1],
        };
        assert_eq!(
            too_many.validate(),
            Err(RecordFault::TooManyMembers {
                got: EPOCH_MEMBERS_MAX + 1,
                max: EPOCH_MEMBERS_MAX
            })
        );
        let which = Record::Checkpoint { seq: 1, which: 2 };
        assert_eq!(which.validate(), Err(RecordFault::Which { got: 2 }));
        for len in [0, PAYLOAD_LEN_MAX + 1] {
            let prepare = Record::Prepare {
                tran: 1,
                line: 1,
                slot: 1,
                payload_crc: 1,
                len,
                part: 0,
                parts: 1,
            };
            assert_eq!(
                prepare.validate(),
                Err(RecordFault::PayloadLen {
                    got: len,
                    max: PAYLOAD_LEN_MAX
                })
            );
        }
    }

    #[test]
    fn prepare_parts_out_of_range_are_refused() {
        for (part, parts) in [(0, 0), (1, 1), (5, 3), (0, TRAN_PARTS_MAX + 1)] {
            let prepare = Record::Prepare {
                tran: 1,
                line: 1,
                slot: 1,
                payload_crc: 1,
                len: 1,
                part,
                parts,
            };
            assert_eq!(
                prepare.validate(),
                Err(RecordFault::Part {
                    part,
                    parts,
                    max: TRAN_PARTS_MAX
                })
            );
        }
        let last = Record::Prepare {
            tran: 1,
            line: 1,
            slot: 1,
            payload_crc: 1,
            len: 1,
            part: TRAN_PARTS_MAX - 1,
            parts: TRAN_PARTS_MAX,
        };
        assert_eq!(last.validate(), Ok(()));
    }

    #[test]
    #[should_panic(expected = "invalid log record")]
    fn encoding_an_invalid_record_panics() {
        let mut out = [0u8; RECORD_LEN_MAX];
        Record::Checkpoint { seq: 1, which: 9 }.encode(&mut out);
    }

    /// Rewrites a record's CRC after its bytes were edited, so decode gets past it.
    fn fix_crc(bytes: &mut [u8]) {
        let crc = record_crc(bytes);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn field_faults_behind_a_good_crc_are_named() {
        let mut b = encoded(&Record::Checkpoint {
            seq: 1,
            which: CHECKPOINT_A,
        });
        b[16] = 5;
        fix_crc(&mut b);
        assert_eq!(Record::decode(&b), Err(RecordFault::Which { got: 5 }));

        b[16] = 0;
        b[20] = 1;
        fix_crc(&mut b);
        assert_eq!(
            Record::decode(&b),
            Err(RecordFault::Reserved {
                kind: RecordKind::Checkpoint,
                offset: 20,
                got: 1
            })
        );

        let mut b = encoded(&Record::Epoch {
            epoch: 1,
            members: vec![1, 2, 3],
        });
        b[16] = 2;
        fix_crc(&mut b);
        assert_eq!(
            Record::decode(&b),
            Err(RecordFault::MemberCount { got: 2, want: 3 })
        );

        let mut b = encoded(&Record::Prepare {
            tran: 1,
            line: 2,
            slot: 3,
            payload_crc: 4,
            len: 512,
            part: 0,
            parts: 1,
        });
        b[36..40].copy_from_slice(&0u32.to_le_bytes());
        fix_crc(&mut b);
        assert_eq!(
            Record::decode(&b),
            Err(RecordFault::PayloadLen {
                got: 0,
                max: PAYLOAD_LEN_MAX
            })
        );

        let mut b = encoded(&Record::Commit { tran: 1 });
        b[1] = 1;
        fix_crc(&mut b);
        assert!(matches!(
            Record::decode(&b),
            Err(RecordFault::Reserved { offset: 1, .. })
        ));

        let mut b = encoded(&Record::Commit { tran: 1 });
        b[0] = 0;
        assert_eq!(Record::decode(&b), Err(RecordFault::Kind { got: 0 }));

        let mut b = encoded(&Record::Commit { tran: 1 });
        b[2] = 16;
        assert!(matches!(
            Record::decode(&b),
            Err(RecordFault::BodyLen { got: 16, .. })
        ));

        let b = encoded(&Record::Clean {
            line: 1,
            version: 2,
        });
        assert_eq!(
            Record::decode(&b[..20]),
            Err(RecordFault::Short { need: 24, have: 20 })
        );
        assert_eq!(
            Record::decode(&b[..3]),
            Err(RecordFault::Short { need: 8, have: 3 })
        );
    }

    #[test]
    fn block_header_layout_matches_the_doc() {
        let mut w = LogBlockWriter::new(vec![0xFFu8; LOG_BLOCK_SIZE], 0xA1A2A3A4A5A6A7A8, 0);
        w.append(&Record::Commit { tran: 9 }).unwrap();
        w.append(&Record::Clean {
            line: 1,
            version: 2,
        })
        .unwrap();
        let b = w.seal();
        assert_eq!(b[0..4], *b"CVAL");
        let crc = crc32c::crc32c_append(crc32c::crc32c(&b[..4]), &b[8..]);
        assert_eq!(b[4..8], crc.to_le_bytes());
        assert_eq!(b[8..16], 0xA1A2A3A4A5A6A7A8u64.to_le_bytes());
        assert_eq!(b[16..18], LOG_BLOCK_VERSION.to_le_bytes());
        assert_eq!(b[18..20], 2u16.to_le_bytes());
        assert_eq!(b[20..22], 40u16.to_le_bytes());
        assert_eq!(b[22..32], [0; 10]);
        assert_eq!(b[32..48], encoded(&Record::Commit { tran: 9 })[..]);
        assert!(b[72..].iter().all(|x| *x == 0));
    }

    #[test]
    fn a_block_holds_records_per_block_max_of_the_shortest() {
        let mut w = LogBlockWriter::new([0u8; LOG_BLOCK_SIZE], 5, 0);
        for tran in 0..RECORDS_PER_BLOCK_MAX as u64 {
            w.append(&Record::Commit { tran }).unwrap();
        }
        let full = w.append(&Record::Commit { tran: 0 });
        assert_eq!(
            full,
            Err(Full {
                seq: 5,
                need: RECORD_LEN_MIN,
                free: BLOCK_RECORDS_LEN_MAX - RECORDS_PER_BLOCK_MAX * RECORD_LEN_MIN
            })
        );
        assert_eq!(w.record_count(), RECORDS_PER_BLOCK_MAX);
        let b = w.seal();
        assert_eq!(decode_block(&b, 5, 0).unwrap().len(), RECORDS_PER_BLOCK_MAX);
    }

    #[test]
    fn an_empty_sealed_block_is_valid() {
        let b = LogBlockWriter::new(vec![0u8; LOG_BLOCK_SIZE], 0, 0).seal();
        assert_eq!(decode_block(&b, 0, 0), Ok(Vec::new()));
    }

    #[test]
    fn resume_continues_an_unsealed_block() {
        let mut buf = vec![0u8; 2 * LOG_BLOCK_SIZE];
        let second = &mut buf[LOG_BLOCK_SIZE..];
        LogBlockWriter::new(&mut *second, 8, 0)
            .append(&Record::Commit { tran: 1 })
            .unwrap();
        let mut w = LogBlockWriter::resume(&mut *second, 0);
        assert_eq!((w.seq(), w.record_count(), w.records_len()), (8, 1, 16));
        w.append(&Record::Abort { tran: 2 }).unwrap();
        w.seal();
        assert_eq!(
            decode_block(&buf[LOG_BLOCK_SIZE..], 8, 0),
            Ok(vec![Record::Commit { tran: 1 }, Record::Abort { tran: 2 }])
        );
    }

    #[test]
    fn header_faults_behind_a_good_crc_are_named() {
        let sealed = {
            let mut w = LogBlockWriter::new(vec![0u8; LOG_BLOCK_SIZE], 3, 0);
            w.append(&Record::Invalidate { line: 4 }).unwrap();
            w.seal()
        };
        let reseal = |edit: &dyn Fn(&mut [u8])| {
            let mut b = sealed.clone();
            edit(&mut b);
            let crc = block_crc(&b, 0);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            decode_block(&b, 3, 0)
        };
        let other = LOG_BLOCK_VERSION as u8 + 1;
        assert_eq!(
            reseal(&|b| b[16] = other),
            Err(BlockEnd::Version { got: other.into() })
        );
        assert!(matches!(
            reseal(&|b| b[18] = 2),
            Err(BlockEnd::Record { index: 1, .. })
        ));
        assert!(matches!(
            reseal(&|b| b[20] = 24),
            Err(BlockEnd::Header {
                what: "records length past the counted records",
                ..
            })
        ));
        assert!(matches!(
            reseal(&|b| b[20..22].copy_from_slice(&5000u16.to_le_bytes())),
            Err(BlockEnd::Header {
                what: "records length",
                ..
            })
        ));
        assert!(matches!(
            reseal(&|b| b[30] = 1),
            Err(BlockEnd::Header {
                what: "reserved header byte",
                ..
            })
        ));
        assert!(matches!(
            reseal(&|b| b[4000] = 1),
            Err(BlockEnd::Header {
                what: "byte after the records",
                ..
            })
        ));
        assert!(matches!(
            reseal(&|b| b[18..20].copy_from_slice(&1000u16.to_le_bytes())),
            Err(BlockEnd::Header {
                what: "record count",
                ..
            })
        ));
        assert_eq!(reseal(&|_| {}), Ok(vec![Record::Invalidate { line: 4 }]));
    }

    #[test]
    fn crash_ends_are_told_apart_from_bugs() {
        assert!(BlockEnd::Magic { got: 0 }.is_crash_end());
        assert!(BlockEnd::Checksum { got: 0, want: 1 }.is_crash_end());
        assert!(
            BlockEnd::Stale {
                seq_got: 0,
                seq_want: 1
            }
            .is_crash_end()
        );
        assert!(
            !BlockEnd::Ahead {
                seq_got: 2,
                seq_want: 1
            }
            .is_crash_end()
        );
        assert!(!BlockEnd::Size { len: 1 }.is_crash_end());
    }
}
