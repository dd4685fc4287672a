//! The on-disk layout of a vSSD: where each region lives ([`Geometry`]), the
//! superblock that records it (two copies, [`Superblock`]), and the calls that make a
//! vSSD ([`format()`]), find it again ([`open_superblock`]) and update its superblock
//! ([`write_superblock`]).
//!
//! # Regions
//!
//! Every region starts and ends on a 4 KiB boundary ([`BLOCK_BYTES`], the O_DIRECT
//! granule), so every I/O of the vSSD can be direct. In order:
//!
//! | region | offset | bytes |
//! | --- | --- | --- |
//! | superblock A | 0 | 4 KiB |
//! | superblock B | 4 KiB | 4 KiB |
//! | log (circular) | 8 KiB ([`LOG_OFFSET`]) | `log_bytes`: a multiple of 4 KiB, 4 MiB ..= 64 GiB |
//! | checkpoint A | after the log | `checkpoint_bytes` = (1 header block + ⌈`slot_count` / 127⌉ entry blocks) × 4 KiB |
//! | checkpoint B | after checkpoint A | `checkpoint_bytes` |
//! | data slots | after checkpoint B, rounded up to `line_size` | `slot_count` × `line_size` |
//!
//! `slot_count` = `lines` + max(⌈`lines` / 16⌉, 4): the slots beyond the capacity
//! ("spare" slots) are not a separate area but the slack that lets `writep1` put a
//! line's new version in a free slot (never over its current version) while the
//! cache map is full: up to `spare_slots` writes can be prepared at once before one
//! must wait for an eviction or a commit to free a slot.
//!
//! A checkpoint region has room for one entry per *slot* (not only per line), so a
//! checkpoint can describe prepared versions as well as committed ones. Its first
//! block is the checkpoint header; each following block holds a
//! [`CHECKPOINT_BLOCK_HEADER_BYTES`]-byte block header (magic, CRC32C of the block,
//! checkpoint sequence, block index, entry count) and [`CHECKPOINT_ENTRIES_PER_BLOCK`]
//! entries of [`CHECKPOINT_ENTRY_BYTES`] (line u64, slot u64, version u64, payload
//! CRC32C u32, state u8, 3 zero bytes). The cache map owns those encodings; this
//! module only sizes the regions for them.
//!
//! Example: 4 KiB lines, 262,144 lines (1 GiB of cache), a 64 MiB log: 278,528 slots,
//! checkpoints of 2,195 blocks (8.6 MiB, 0.8% of the data) each, data at byte
//! 85,098,496, 1,225,949,184 bytes in all (a unit test keeps these figures true).
//!
//! # Superblock
//!
//! One 4 KiB block, little-endian, written at 0 (copy A) and at 4 KiB (copy B):
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `"CVA-VSSD"` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | superblock bytes (4096) |
//! | 16 | 8 | generation (≥ 1; of two valid copies the higher wins) |
//! | 24 | 16 | uuid of this format of the vSSD (never all zero) |
//! | 40 | 4 | copy: 0 at offset 0, 1 at offset 4 KiB (catches a misdirected write) |
//! | 44 | 4 | device id length (1 ..= 64) |
//! | 48 | 64 | device id: UTF-8, no control characters, zero padded |
//! | 112 | 4 | line size |
//! | 116 | 4 | zero |
//! | 120 | 8 | lines (capacity) |
//! | 128 | 8 | slot count |
//! | 136 | 8 | log offset |
//! | 144 | 8 | log bytes |
//! | 152 | 8 | checkpoint A offset |
//! | 160 | 8 | checkpoint B offset |
//! | 168 | 8 | checkpoint bytes (each) |
//! | 176 | 8 | data offset |
//! | 184 | 8 | data bytes |
//! | 192 | 8 | total bytes |
//! | 200 | 3892 | zero |
//! | 4092 | 4 | CRC32C of bytes 0 .. 4092 |
//!
//! The magic, the version and the CRC keep their places in every future version, so
//! any build can tell "not a vSSD", "a torn or corrupt copy" and "another version"
//! apart. Decoding checks, in this order: magic, CRC, version, then every other field:
//! the stored layout must be exactly what this build computes from (line size, lines,
//! log bytes), so a superblock can never point I/O outside its regions.
//!
//! # What format leaves behind ("an empty vSSD")
//!
//! Both checkpoint header blocks are zero (no valid checkpoint), and so are the first
//! [`LOG_ZERO_BYTES`] of the log. Recovery of a vSSD without a valid checkpoint starts
//! from an empty cache map and replays the log from log offset 0, expecting the
//! sequence number [`LOG_SEQ_FIRST`] (1); a zero block has sequence 0, which never
//! follows anything, so the log is empty. Records beyond the zeroed head may be left
//! over from an earlier format of the same device; the log and checkpoint code must
//! bind each record and block to this format's uuid (e.g. seed its CRC32C with
//! [`Superblock::crc_seed`]) so that such leftovers never pass as records of this
//! one. For the same reason [`format()`] refuses to reuse the uuid of the vSSD it
//! overwrites.

use std::fmt;
use std::path::Path;

use taskio::file::File;
use taskio::{ALIGN, AlignedBuf};

use crate::VssdError;

// ---------------------------------------------------------------------------------
// Constants

/// The granule of every region and of every I/O of a vSSD: one O_DIRECT block.
pub const BLOCK_BYTES: u64 = 4096;
/// Bytes of one superblock copy.
pub const SUPERBLOCK_BYTES: u64 = BLOCK_BYTES;
/// Superblock copies, A at offset 0 and B right after it.
pub const SUPERBLOCK_COPIES: u64 = 2;
/// Where the log starts: right after the two superblocks.
pub const LOG_OFFSET: u64 = SUPERBLOCK_COPIES * SUPERBLOCK_BYTES;

/// The superblock's magic: the first 8 bytes of both copies.
pub const SUPERBLOCK_MAGIC: [u8; 8] = *b"CVA-VSSD";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 3;
/// Offset of the format version (u32, little-endian) in a superblock, in every version.
pub const SUPERBLOCK_VERSION_OFFSET: usize = 8;
/// Offset of the CRC32C (u32, little-endian) in a superblock, in every version; it
/// covers every byte before it.
pub const SUPERBLOCK_CRC_OFFSET: usize = SUPERBLOCK_BYTES as usize - 4;

pub const LINE_SIZE_MIN: u32 = 4096;
pub const LINE_SIZE_MAX: u32 = 64 * 1024;
/// Largest capacity in lines: 2^36 lines is 256 TiB of 4 KiB lines; the bound keeps
/// every offset of the layout far below `i64::MAX` (asserted below).
pub const LINES_MAX: u64 = 1 << 36;
/// The smallest log: [`crate::record::LOG_BLOCKS_MIN`] blocks (4 MiB), room for the
/// writes in flight and as much again.
pub const LOG_BYTES_MIN: u64 = crate::record::LOG_BLOCKS_MIN * BLOCK_BYTES;
pub const LOG_BYTES_MAX: u64 = 64 << 30;
/// Longest device id, in bytes of UTF-8.
pub const DEVICE_ID_BYTES_MAX: usize = 64;

/// One line over this many gets a spare slot (rounded up).
pub const SPARE_SLOTS_DIVISOR: u64 = 16;
/// Fewest spare slots, so that even a tiny vSSD can prepare a few writes at once.
pub const SPARE_SLOTS_MIN: u64 = 4;

/// Bytes of one cache-map entry in a checkpoint.
pub const CHECKPOINT_ENTRY_BYTES: u64 = 32;
/// Bytes at the head of each checkpoint entry block (magic, CRC, sequence, index,
/// count).
pub const CHECKPOINT_BLOCK_HEADER_BYTES: u64 = 32;
/// Entries in one checkpoint entry block.
pub const CHECKPOINT_ENTRIES_PER_BLOCK: u64 =
    (BLOCK_BYTES - CHECKPOINT_BLOCK_HEADER_BYTES) / CHECKPOINT_ENTRY_BYTES;
/// Blocks at the head of a checkpoint region before its entry blocks.
pub const CHECKPOINT_HEADER_BLOCKS: u64 = 1;

/// The sequence number of the first record of a freshly formatted log, at log offset
/// 0. Zero is never a valid sequence number, so a zeroed block never continues a log.
pub const LOG_SEQ_FIRST: u64 = 1;
/// Bytes at the head of the log that [`format()`] zeroes.
pub const LOG_ZERO_BYTES: u64 = 64 * 1024;

const _: () = assert!(BLOCK_BYTES == ALIGN as u64);
const _: () = assert!(LOG_OFFSET.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(SUPERBLOCK_VERSION_OFFSET == OFF_VERSION);
const _: () = assert!(SUPERBLOCK_CRC_OFFSET == OFF_CRC);
const _: () = assert!(LINE_SIZE_MIN.is_power_of_two() && LINE_SIZE_MAX.is_power_of_two());
const _: () = assert!(LINE_SIZE_MIN as u64 >= BLOCK_BYTES);
const _: () = assert!(LINE_SIZE_MIN <= LINE_SIZE_MAX);
const _: () = assert!(LOG_BYTES_MIN.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(LOG_BYTES_MAX.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(LOG_BYTES_MIN <= LOG_BYTES_MAX);
const _: () = assert!(LOG_ZERO_BYTES <= LOG_BYTES_MIN);
const _: () = assert!(LOG_ZERO_BYTES.is_multiple_of(BLOCK_BYTES));
const _: () = assert!(CHECKPOINT_ENTRIES_PER_BLOCK == 127);
const _: () = assert!(
    CHECKPOINT_BLOCK_HEADER_BYTES + CHECKPOINT_ENTRIES_PER_BLOCK * CHECKPOINT_ENTRY_BYTES
        <= BLOCK_BYTES
);
const _: () = assert!(SPARE_SLOTS_MIN >= 1);
// The largest layout fits in an off_t with room to spare, so no sum below overflows.
const _: () = assert!(
    Geometry::compute(LINE_SIZE_MAX, LINES_MAX, LOG_BYTES_MAX).total_bytes < (i64::MAX as u64) / 2
);
// The smallest layout is still a layout: one line, its spare slots, both checkpoints.
const _: () = assert!(Geometry::compute(LINE_SIZE_MIN, 1, LOG_BYTES_MIN).slot_count == 1 + 4);

// ---------------------------------------------------------------------------------
// Geometry

/// Where every region of a vSSD lives. Made only by [`Geometry::new`] (from line
/// size, capacity and log size), so every `Geometry` is consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    line_size: u32,
    lines: u64,
    slot_count: u64,
    log_offset: u64,
    log_bytes: u64,
    checkpoint_offsets: [u64; 2],
    checkpoint_bytes: u64,
    data_offset: u64,
    data_bytes: u64,
    total_bytes: u64,
}

/// One region of the layout, for tables and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub name: &'static str,
    pub offset: u64,
    pub bytes: u64,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.offset + self.bytes
    }
}

impl Geometry {
    /// The layout for lines of `line_size` bytes (a power of two, 4 KiB ..= 64 KiB),
    /// a capacity of `lines` lines (1 ..= [`LINES_MAX`]) and a log of `log_bytes` (a
    /// multiple of 4 KiB, [`LOG_BYTES_MIN`] ..= [`LOG_BYTES_MAX`]).
    pub fn new(line_size: u32, lines: u64, log_bytes: u64) -> Result<Geometry, VssdError> {
        if !line_size.is_power_of_two() || !(LINE_SIZE_MIN..=LINE_SIZE_MAX).contains(&line_size) {
            return Err(VssdError::BadGeometry {
                what: "line size",
                got: line_size.into(),
                allowed: format!("a power of two in {LINE_SIZE_MIN}..={LINE_SIZE_MAX} bytes"),
            });
        }
        if !(1..=LINES_MAX).contains(&lines) {
            return Err(VssdError::BadGeometry {
                what: "capacity in lines",
                got: lines,
                allowed: format!("1..={LINES_MAX}"),
            });
        }
        if !log_bytes.is_multiple_of(BLOCK_BYTES)
            || !(LOG_BYTES_MIN..=LOG_BYTES_MAX).contains(&log_bytes)
        {
            return Err(VssdError::BadGeometry {
                what: "log size",
                got: log_bytes,
                allowed: format!(
                    "a multiple of {BLOCK_BYTES} in {LOG_BYTES_MIN}..={LOG_BYTES_MAX} bytes"
                ),
            });
        }
        let g = Geometry::compute(line_size, lines, log_bytes);
        if let Err(why) = g.check() {
            panic!("layout of {line_size} x {lines} lines, log {log_bytes}: {why}\n{g}");
        }
        Ok(g)
    }

    /// The layout arithmetic, for arguments within the bounds `new` checks (also
    /// evaluated at compile time, for the assertions above).
    const fn compute(line_size: u32, lines: u64, log_bytes: u64) -> Geometry {
        let spare = lines.div_ceil(SPARE_SLOTS_DIVISOR);
        let spare = if spare < SPARE_SLOTS_MIN {
            SPARE_SLOTS_MIN
        } else {
            spare
        };
        let slot_count = lines + spare;
        let entry_blocks = slot_count.div_ceil(CHECKPOINT_ENTRIES_PER_BLOCK);
        let checkpoint_bytes = (CHECKPOINT_HEADER_BLOCKS + entry_blocks) * BLOCK_BYTES;
        let checkpoint_a = LOG_OFFSET + log_bytes;
        let checkpoint_b = checkpoint_a + checkpoint_bytes;
        // Slots on line-size boundaries: a line never straddles a larger device block.
        let data_offset = (checkpoint_b + checkpoint_bytes).next_multiple_of(line_size as u64);
        let data_bytes = slot_count * line_size as u64;
        Geometry {
            line_size,
            lines,
            slot_count,
            log_offset: LOG_OFFSET,
            log_bytes,
            checkpoint_offsets: [checkpoint_a, checkpoint_b],
            checkpoint_bytes,
            data_offset,
            data_bytes,
            total_bytes: data_offset + data_bytes,
        }
    }

    /// Checks what every layout must satisfy, independently of how `compute` got
    /// there: regions in order, 4 KiB aligned, not overlapping, inside the total,
    /// slots aligned to the line size, room for the spare slots and for one
    /// checkpoint entry per slot.
    pub fn check(&self) -> Result<(), String> {
        let regions = self.regions();
        let mut end_prev = 0;
        for r in &regions {
            if !r.offset.is_multiple_of(BLOCK_BYTES) || !r.bytes.is_multiple_of(BLOCK_BYTES) {
                return Err(format!(
                    "{} at {} + {} is not 4 KiB aligned",
                    r.name, r.offset, r.bytes
                ));
            }
            if r.bytes == 0 {
                return Err(format!("{} is empty", r.name));
            }
            if r.offset < end_prev {
                return Err(format!(
                    "{} at {} overlaps what ends at {end_prev}",
                    r.name, r.offset
                ));
            }
            end_prev = r.end();
        }
        if end_prev != self.total_bytes {
            return Err(format!(
                "regions end at {end_prev}, total is {}",
                self.total_bytes
            ));
        }
        if !self.data_offset.is_multiple_of(self.line_size.into()) {
            return Err(format!("data at {} is not line aligned", self.data_offset));
        }
        if self.data_bytes != self.slot_count * u64::from(self.line_size) {
            return Err(format!(
                "data holds {} bytes, not {} slots",
                self.data_bytes, self.slot_count
            ));
        }
        if self.slot_count < self.lines + self.lines / SPARE_SLOTS_DIVISOR
            || self.slot_count < self.lines + SPARE_SLOTS_MIN
        {
            return Err(format!(
                "{} slots for {} lines",
                self.slot_count, self.lines
            ));
        }
        let entry_blocks = self.checkpoint_entry_blocks();
        if entry_blocks * CHECKPOINT_ENTRIES_PER_BLOCK < self.slot_count {
            return Err(format!(
                "checkpoint of {entry_blocks} blocks for {} slots",
                self.slot_count
            ));
        }
        Ok(())
    }

    /// The regions in disk order.
    pub fn regions(&self) -> [Region; 6] {
        let sb = |name, copy: SuperblockCopy| Region {
            name,
            offset: copy.offset(),
            bytes: SUPERBLOCK_BYTES,
        };
        let ck = |name, i: usize| Region {
            name,
            offset: self.checkpoint_offsets[i],
            bytes: self.checkpoint_bytes,
        };
        [
            sb("superblock A", SuperblockCopy::A),
            sb("superblock B", SuperblockCopy::B),
            Region {
                name: "log",
                offset: self.log_offset,
                bytes: self.log_bytes,
            },
            ck("checkpoint A", 0),
            ck("checkpoint B", 1),
            Region {
                name: "data slots",
                offset: self.data_offset,
                bytes: self.data_bytes,
            },
        ]
    }

    pub fn line_size(&self) -> u32 {
        self.line_size
    }

    /// Capacity: how many lines the cache map may hold.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Data slots: `lines` plus the spare ones.
    pub fn slot_count(&self) -> u64 {
        self.slot_count
    }

    pub fn spare_slots(&self) -> u64 {
        self.slot_count - self.lines
    }

    pub fn log_offset(&self) -> u64 {
        self.log_offset
    }

    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    pub fn log_blocks(&self) -> u64 {
        self.log_bytes / BLOCK_BYTES
    }

    /// Offsets of checkpoint A and checkpoint B.
    pub fn checkpoint_offsets(&self) -> [u64; 2] {
        self.checkpoint_offsets
    }

    /// Bytes of each checkpoint region.
    pub fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes
    }

    /// Entry blocks of each checkpoint region (after its header block).
    pub fn checkpoint_entry_blocks(&self) -> u64 {
        self.checkpoint_bytes / BLOCK_BYTES - CHECKPOINT_HEADER_BLOCKS
    }

    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Bytes the device must hold at least.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Where data slot `slot` starts. A slot number out of range is a programmer
    /// error.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        assert!(
            slot < self.slot_count,
            "slot {slot} of a vSSD with {} slots",
            self.slot_count
        );
        self.data_offset + slot * u64::from(self.line_size)
    }

    /// One line for error messages: the sizes that make up the total.
    fn summary(&self) -> String {
        format!(
            "superblocks {}, log {}, checkpoints 2 x {}, {} slots x {} bytes",
            SUPERBLOCK_COPIES * SUPERBLOCK_BYTES,
            self.log_bytes,
            self.checkpoint_bytes,
            self.slot_count,
            self.line_size
        )
    }
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "vSSD layout: {} lines of {} bytes, {} slots ({} spare), {} bytes",
            self.lines,
            self.line_size,
            self.slot_count,
            self.spare_slots(),
            self.total_bytes
        )?;
        writeln!(f, "{:<14} {:>16} {:>16}", "region", "offset", "bytes")?;
        for r in self.regions() {
            writeln!(f, "{:<14} {:>16} {:>16}", r.name, r.offset, r.bytes)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Format parameters

/// What [`format()`] makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatParams {
    /// Bytes per cache line: a power of two, 4 KiB ..= 64 KiB.
    pub line_size: u32,
    /// Capacity in lines.
    pub lines: u64,
    /// Bytes of the log: a multiple of 4 KiB.
    pub log_bytes: u64,
    /// The cache device this vSSD belongs to: 1 ..= 64 bytes of UTF-8 without
    /// control characters.
    pub device_id: String,
    /// This format's identity: random ([`random_uuid`], or seeded in a simulation),
    /// never all zero, never the uuid of the vSSD being overwritten.
    pub uuid: [u8; 16],
    /// Format over a valid vSSD of another cache device (or of another format
    /// version, or whose two copies disagree). Without it such a device is refused
    /// and left as it is: its cached lines may be the only copy of some device's
    /// dirty data. A vSSD of the same device is reformatted without `force` (the
    /// owner starting afresh, e.g. a replica being rebuilt).
    pub force: bool,
}

impl FormatParams {
    /// The layout these parameters make, once they are checked.
    pub fn geometry(&self) -> Result<Geometry, VssdError> {
        check_device_id(&self.device_id)?;
        if self.uuid == [0; 16] {
            return Err(VssdError::BadGeometry {
                what: "uuid (all 16 bytes zero)",
                got: 0,
                allowed: "16 random bytes, not all zero (vssd::layout::random_uuid)".into(),
            });
        }
        Geometry::new(self.line_size, self.lines, self.log_bytes)
    }
}

fn check_device_id(id: &str) -> Result<(), VssdError> {
    if id.is_empty() || id.len() > DEVICE_ID_BYTES_MAX {
        return Err(VssdError::BadGeometry {
            what: "device id length in bytes",
            got: id.len() as u64,
            allowed: format!("1..={DEVICE_ID_BYTES_MAX}"),
        });
    }
    if let Some((at, _)) = id.char_indices().find(|(_, c)| c.is_control()) {
        return Err(VssdError::BadGeometry {
            what: "device id: a control character at byte",
            got: at as u64,
            allowed: "printable UTF-8 only".into(),
        });
    }
    Ok(())
}

/// 16 random bytes from the OS (`/dev/urandom`), marked as an RFC 4122 version 4
/// uuid. For real callers (cvad, cvacli); simulated code passes a seeded uuid.
pub fn random_uuid() -> std::io::Result<[u8; 16]> {
    use std::io::Read;
    let mut uuid = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut uuid)?;
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    Ok(uuid)
}

/// A uuid as 8-4-4-4-12 hex digits.
pub fn uuid_string(uuid: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

// ---------------------------------------------------------------------------------
// Superblock

/// Which of the two superblock copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuperblockCopy {
    /// At offset 0.
    A,
    /// At offset 4 KiB.
    B,
}

impl SuperblockCopy {
    pub const BOTH: [SuperblockCopy; 2] = [SuperblockCopy::A, SuperblockCopy::B];

    pub fn offset(self) -> u64 {
        self.index() as u64 * SUPERBLOCK_BYTES
    }

    pub fn index(self) -> usize {
        match self {
            SuperblockCopy::A => 0,
            SuperblockCopy::B => 1,
        }
    }

    /// "superblock A" or "superblock B".
    pub fn what(self) -> &'static str {
        match self {
            SuperblockCopy::A => "superblock A",
            SuperblockCopy::B => "superblock B",
        }
    }

    fn other(self) -> SuperblockCopy {
        match self {
            SuperblockCopy::A => SuperblockCopy::B,
            SuperblockCopy::B => SuperblockCopy::A,
        }
    }
}

impl fmt::Display for SuperblockCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (offset {})", self.what(), self.offset())
    }
}

/// What the superblock records: the identity of a vSSD and its layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// This format's identity.
    pub uuid: [u8; 16],
    /// The cache device the vSSD belongs to.
    pub device_id: String,
    pub geometry: Geometry,
    /// Bumped by every [`write_superblock`]; of two valid copies the higher wins.
    /// 1 after [`format()`].
    pub generation: u64,
}

// Byte offsets of the superblock's fields (see the module's table).
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_SUPERBLOCK_BYTES: usize = 12;
const OFF_GENERATION: usize = 16;
const OFF_UUID: usize = 24;
const OFF_COPY: usize = 40;
const OFF_DEVICE_ID_LEN: usize = 44;
const OFF_DEVICE_ID: usize = 48;
const OFF_LINE_SIZE: usize = 112;
const OFF_ZERO_116: usize = 116;
const OFF_LINES: usize = 120;
const OFF_SLOT_COUNT: usize = 128;
const OFF_LOG_OFFSET: usize = 136;
const OFF_LOG_BYTES: usize = 144;
const OFF_CHECKPOINT_A: usize = 152;
const OFF_CHECKPOINT_B: usize = 160;
const OFF_CHECKPOINT_BYTES: usize = 168;
const OFF_DATA_OFFSET: usize = 176;
const OFF_DATA_BYTES: usize = 184;
const OFF_TOTAL_BYTES: usize = 192;
/// Everything from here to the CRC is zero.
const OFF_FIELDS_END: usize = 200;
const OFF_CRC: usize = SUPERBLOCK_BYTES as usize - 4;

const _: () = assert!(OFF_MAGIC + SUPERBLOCK_MAGIC.len() == OFF_VERSION);
const _: () = assert!(OFF_UUID + 16 == OFF_COPY);
const _: () = assert!(OFF_DEVICE_ID + DEVICE_ID_BYTES_MAX == OFF_LINE_SIZE);
const _: () = assert!(OFF_TOTAL_BYTES + 8 == OFF_FIELDS_END);
const _: () = assert!(OFF_FIELDS_END <= OFF_CRC);
// The u64 fields sit on 8-byte boundaries.
const _: () = assert!(OFF_GENERATION.is_multiple_of(8) && OFF_LINES.is_multiple_of(8));
const _: () = assert!(OFF_SLOT_COUNT.is_multiple_of(8) && OFF_TOTAL_BYTES.is_multiple_of(8));

/// The u64 fields of the layout, by name and offset: written by `encode`, compared
/// with the recomputed layout by `decode`.
fn layout_fields(g: &Geometry) -> [(&'static str, usize, u64); 10] {
    [
        ("lines", OFF_LINES, g.lines),
        ("slot count", OFF_SLOT_COUNT, g.slot_count),
        ("log offset", OFF_LOG_OFFSET, g.log_offset),
        ("log bytes", OFF_LOG_BYTES, g.log_bytes),
        (
            "checkpoint A offset",
            OFF_CHECKPOINT_A,
            g.checkpoint_offsets[0],
        ),
        (
            "checkpoint B offset",
            OFF_CHECKPOINT_B,
            g.checkpoint_offsets[1],
        ),
        ("checkpoint bytes", OFF_CHECKPOINT_BYTES, g.checkpoint_bytes),
        ("data offset", OFF_DATA_OFFSET, g.data_offset),
        ("data bytes", OFF_DATA_BYTES, g.data_bytes),
        ("total bytes", OFF_TOTAL_BYTES, g.total_bytes),
    ]
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(v)
}

pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why one superblock copy cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    /// The device ends before the copy does.
    Short {
        device_bytes: usize,
    },
    Magic {
        found: [u8; 8],
    },
    Checksum {
        stored: u32,
        computed: u32,
    },
    Version {
        got: u32,
    },
    Invalid {
        why: String,
    },
}

impl Fault {
    fn describe(&self) -> String {
        match self {
            Fault::Short { device_bytes } => {
                format!("the device ends at byte {device_bytes}, before the end of this copy")
            }
            Fault::Magic { found } => format!(
                "no vSSD magic (found {}, a vSSD has {})",
                hex(found),
                hex(&SUPERBLOCK_MAGIC)
            ),
            Fault::Checksum { stored, computed } => format!(
                "CRC32C {computed:#010x} over the block, {stored:#010x} stored (torn or corrupt)"
            ),
            Fault::Version { got } => {
                format!("format version {got}, this build reads {FORMAT_VERSION}")
            }
            Fault::Invalid { why } => why.clone(),
        }
    }

    fn into_error(self, path: &Path, copy: SuperblockCopy) -> VssdError {
        match self {
            Fault::Short { .. } | Fault::Magic { .. } => VssdError::NotAVssd {
                path: path.to_path_buf(),
                why: format!("{copy}: {}", self.describe()),
            },
            Fault::Checksum { stored, computed } => VssdError::Checksum {
                what: copy.what(),
                offset: copy.offset(),
                got: computed,
                want: stored,
            },
            Fault::Version { got } => VssdError::Version {
                path: path.to_path_buf(),
                got,
                want: FORMAT_VERSION,
            },
            Fault::Invalid { why } => VssdError::Corrupt {
                what: copy.what(),
                offset: copy.offset(),
                why: format!("{}: {why}", path.display()),
            },
        }
    }
}

impl Superblock {
    /// The superblock as copy `copy` stores it: one 4 KiB block. An invalid
    /// superblock (a device id or generation `format` would not make) is a
    /// programmer error.
    pub fn encode(&self, copy: SuperblockCopy) -> AlignedBuf {
        if let Err(e) = check_device_id(&self.device_id) {
            panic!("encode of a superblock: {e}");
        }
        assert!(
            self.uuid != [0; 16],
            "encode of a superblock with a zero uuid"
        );
        assert!(
            self.generation >= 1,
            "encode of a superblock of generation 0"
        );
        let mut buf = AlignedBuf::new(SUPERBLOCK_BYTES as usize);
        buf.set_len(SUPERBLOCK_BYTES as usize);
        let b = &mut buf[..];
        b.fill(0);
        b[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&SUPERBLOCK_MAGIC);
        put_u32(b, OFF_VERSION, FORMAT_VERSION);
        put_u32(b, OFF_SUPERBLOCK_BYTES, SUPERBLOCK_BYTES as u32);
        put_u64(b, OFF_GENERATION, self.generation);
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.uuid);
        put_u32(b, OFF_COPY, copy.index() as u32);
        let id = self.device_id.as_bytes();
        put_u32(b, OFF_DEVICE_ID_LEN, id.len() as u32);
        b[OFF_DEVICE_ID..OFF_DEVICE_ID + id.len()].copy_from_slice(id);
        put_u32(b, OFF_LINE_SIZE, self.geometry.line_size);
        for (_, off, v) in layout_fields(&self.geometry) {
            put_u64(b, off, v);
        }
        let crc = crc32c::crc32c(&b[..OFF_CRC]);
        put_u32(b, OFF_CRC, crc);
        // Checked on the way out as it will be on the way in.
        match decode_copy(&buf, copy) {
            Ok(back) => assert_eq!(&back, self, "superblock does not decode to itself"),
            Err(f) => panic!("encoded superblock does not decode: {}", f.describe()),
        }
        buf
    }

    /// Reads copy `copy` (one 4 KiB block) of the superblock of the device at
    /// `path`: checks magic, CRC, version and every field. Errors: `NotAVssd` (no
    /// magic), `Checksum` (torn or corrupt), `Version`, `Corrupt` (a field out of
    /// place, the copy number wrong, the layout not the one its parameters make).
    pub fn decode(
        block: &[u8],
        copy: SuperblockCopy,
        path: &Path,
    ) -> Result<Superblock, VssdError> {
        decode_copy(block, copy).map_err(|f| f.into_error(path, copy))
    }

    /// The CRC32C of the uuid: a seed for the CRCs of log records and checkpoint
    /// blocks (`crc32c::crc32c_append(seed, bytes)`), so that blocks left over from an
    /// earlier format of the device never check out as this format's.
    pub fn crc_seed(&self) -> u32 {
        crc32c::crc32c(&self.uuid)
    }
}

fn decode_copy(b: &[u8], copy: SuperblockCopy) -> Result<Superblock, Fault> {
    assert_eq!(
        b.len(),
        SUPERBLOCK_BYTES as usize,
        "decode of a superblock from {} bytes",
        b.len()
    );
    let invalid = |why: String| Fault::Invalid { why };
    let mut found = [0u8; 8];
    found.copy_from_slice(&b[OFF_MAGIC..OFF_MAGIC + 8]);
    if found != SUPERBLOCK_MAGIC {
        return Err(Fault::Magic { found });
    }
    let stored = get_u32(b, OFF_CRC);
    let computed = crc32c::crc32c(&b[..OFF_CRC]);
    if stored != computed {
        return Err(Fault::Checksum { stored, computed });
    }
    let version = get_u32(b, OFF_VERSION);
    if version != FORMAT_VERSION {
        return Err(Fault::Version { got: version });
    }
    let sb_bytes = get_u32(b, OFF_SUPERBLOCK_BYTES);
    if u64::from(sb_bytes) != SUPERBLOCK_BYTES {
        return Err(invalid(format!(
            "superblock size {sb_bytes}, not {SUPERBLOCK_BYTES}"
        )));
    }
    let copy_stored = get_u32(b, OFF_COPY);
    if copy_stored != copy.index() as u32 {
        return Err(invalid(format!(
            "holds copy number {copy_stored} where copy {} belongs (a misdirected write)",
            copy.index()
        )));
    }
    let generation = get_u64(b, OFF_GENERATION);
    if generation == 0 {
        return Err(invalid("generation 0".into()));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
    if uuid == [0; 16] {
        return Err(invalid("uuid all zero".into()));
    }
    let id_len = get_u32(b, OFF_DEVICE_ID_LEN) as usize;
    if id_len == 0 || id_len > DEVICE_ID_BYTES_MAX {
        return Err(invalid(format!(
            "device id of {id_len} bytes (1..={DEVICE_ID_BYTES_MAX})"
        )));
    }
    let id_bytes = &b[OFF_DEVICE_ID..OFF_DEVICE_ID + id_len];
    let device_id = match std::str::from_utf8(id_bytes) {
        Ok(s) => s.to_string(),
        Err(e) => return Err(invalid(format!("device id is not UTF-8: {e}"))),
    };
    if let Err(e) = check_device_id(&device_id) {
        return Err(invalid(format!("device id {device_id:?}: {e}")));
    }
    if let Some(i) = b[OFF_DEVICE_ID + id_len..OFF_LINE_SIZE]
        .iter()
        .position(|&x| x != 0)
    {
        return Err(invalid(format!(
            "non-zero byte after the device id at offset {}",
            OFF_DEVICE_ID + id_len + i
        )));
    }
    if get_u32(b, OFF_ZERO_116) != 0 {
        return Err(invalid(format!(
            "non-zero reserved field at offset {OFF_ZERO_116}"
        )));
    }
    if let Some(i) = b[OFF_FIELDS_END..OFF_CRC].iter().position(|&x| x != 0) {
        return Err(invalid(format!(
            "non-zero byte in the reserved area at offset {}",
            OFF_FIELDS_END + i
        )));
    }
    let line_size = get_u32(b, OFF_LINE_SIZE);
    let lines = get_u64(b, OFF_LINES);
    let log_bytes = get_u64(b, OFF_LOG_BYTES);
    let geometry = Geometry::new(line_size, lines, log_bytes)
        .map_err(|e| invalid(format!("layout parameters: {e}")))?;
    for (name, off, want) in layout_fields(&geometry) {
        let got = get_u64(b, off);
        if got != want {
            return Err(invalid(format!(
                "{name} {got}, where {line_size}-byte lines x {lines}, log {log_bytes} put it at {want}"
            )));
        }
    }
    Ok(Superblock {
        uuid,
        device_id,
        geometry,
        generation,
    })
}

// ---------------------------------------------------------------------------------
// Reading and writing the superblocks

/// A superblock found by [`open_superblock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The valid copy of the highest generation.
    pub superblock: Superblock,
    /// A copy that is invalid or older than the other: rewrite both (one
    /// [`write_superblock`]) before relying on two copies again.
    pub repair: Option<Repair>,
}

/// A superblock copy that needs rewriting, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub copy: SuperblockCopy,
    pub why: String,
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.copy, self.why)
    }
}

/// Finds the vSSD on `file` without writing anything: reads both superblock copies
/// and takes the valid one with the higher generation (the other, if invalid or
/// older, is named in [`Opened::repair`]).
///
/// Refused, with the device left as it is: no valid copy (`NotAVssd`, naming what is
/// wrong with each), a copy of another format version (`Version`, even if the other
/// copy is of this one: a newer build has touched the device), a vSSD of another
/// cache device than `expect_device` (`WrongDevice`), a device shorter than the
/// layout (`TooSmall`), two valid copies of one generation that differ (`Corrupt`).
pub fn open_superblock(file: &File, expect_device: Option<&str>) -> Result<Opened, VssdError> {
    let copies = read_copies(file)?;
    let (superblock, repair) = choose(file.path(), copies)?;
    if let Some(want) = expect_device
        && want != superblock.device_id
    {
        return Err(VssdError::WrongDevice {
            path: file.path().to_path_buf(),
            got: superblock.device_id,
            want: want.to_string(),
        });
    }
    let len = device_len(file)?;
    let need = superblock.geometry.total_bytes;
    if len < need {
        return Err(VssdError::TooSmall {
            op: "open",
            path: file.path().to_path_buf(),
            got: len,
            need,
            layout: superblock.geometry.summary(),
        });
    }
    Ok(Opened { superblock, repair })
}

/// Writes `sb` with the next generation into both copies, one after the other, each
/// made durable (pwrite + fdatasync) before the other is touched, so that a crash at
/// any instant leaves at least one valid copy: the old state or the new one. The copy
/// that holds the newest valid state on disk is overwritten last. On success
/// `sb.generation` is the generation written: above both `sb`'s and the disk's.
///
/// Refused, writing nothing, when the device holds no valid copy of the vSSD of
/// `sb.uuid` (it was formatted again since `sb` was read, or never held it) or holds
/// another format version. Callers serialise their calls (one owner of the
/// superblock); the copies are read back and checked.
pub fn write_superblock(file: &File, sb: &mut Superblock) -> Result<(), VssdError> {
    let refuse = |why: String| VssdError::Refused {
        op: "write_superblock",
        path: file.path().to_path_buf(),
        why,
    };
    let copies = read_copies(file)?;
    let mut newest: Option<(SuperblockCopy, &Superblock)> = None;
    for copy in SuperblockCopy::BOTH {
        match &copies[copy.index()] {
            Ok(s) => {
                if newest.is_none_or(|(_, n)| s.generation > n.generation) {
                    newest = Some((copy, s));
                }
            }
            Err(Fault::Version { got }) => {
                return Err(refuse(format!(
                    "{copy} is of format version {got}, this build writes {FORMAT_VERSION}"
                )));
            }
            Err(_) => {}
        }
    }
    let Some((newest_copy, on_disk)) = newest else {
        return Err(refuse(format!(
            "no valid superblock on the device ({}; {}): it is not the vSSD {}, format it instead",
            fault_of(&copies[0]),
            fault_of(&copies[1]),
            uuid_string(&sb.uuid)
        )));
    };
    if on_disk.uuid != sb.uuid {
        return Err(refuse(format!(
            "{newest_copy} holds vSSD {} of device {:?}, not vSSD {}: formatted again since this superblock was read",
            uuid_string(&on_disk.uuid),
            on_disk.device_id,
            uuid_string(&sb.uuid)
        )));
    }
    let disk_generation = on_disk.generation;
    let Some(generation) = sb.generation.max(disk_generation).checked_add(1) else {
        return Err(refuse(format!("generation {disk_generation} cannot grow")));
    };
    let next = Superblock {
        generation,
        ..sb.clone()
    };
    // The newest valid copy is the state a crash must be able to fall back on.
    let first = newest_copy.other();
    for copy in [first, first.other()] {
        write_copy(file, &next, copy)?;
    }
    verify_written(file, &next)?;
    *sb = next;
    Ok(())
}

/// Makes a new, empty vSSD on `file` (see the module docs for what "empty" means)
/// and returns its layout. The device must hold at least
/// `params.geometry()?.total_bytes()` bytes (a larger one is fine; the rest is not
/// used); a smaller one is refused with the size it needs. A valid vSSD of another
/// device (or another format version) is refused unless `params.force`; one with the
/// uuid `params.uuid` is always refused. Anything else on the device is overwritten.
///
/// Order of writes, each step durable before the next: (1) both superblock copies
/// zeroed, so a crash from here on leaves "not a vSSD" rather than the old vSSD over
/// a wiped log; (2) the log head and both checkpoint headers zeroed; (3) superblock A,
/// then superblock B, generation 1. The copies are read back and checked.
pub fn format(file: &File, params: &FormatParams) -> Result<Geometry, VssdError> {
    let geometry = params.geometry()?;
    lock(file, "format")?;
    let path = file.path();
    let len = device_len(file)?;
    if len < geometry.total_bytes {
        return Err(VssdError::TooSmall {
            op: "format",
            path: path.to_path_buf(),
            got: len,
            need: geometry.total_bytes,
            layout: geometry.summary(),
        });
    }
    refuse_to_overwrite(file, params)?;

    zero(file, 0, SUPERBLOCK_COPIES * SUPERBLOCK_BYTES)?;
    sync(file)?;
    zero(file, geometry.log_offset, LOG_ZERO_BYTES)?;
    for offset in geometry.checkpoint_offsets {
        zero(file, offset, CHECKPOINT_HEADER_BLOCKS * BLOCK_BYTES)?;
    }
    sync(file)?;
    let sb = Superblock {
        uuid: params.uuid,
        device_id: params.device_id.clone(),
        geometry,
        generation: 1,
    };
    for copy in SuperblockCopy::BOTH {
        write_copy(file, &sb, copy)?;
    }
    verify_written(file, &sb)?;
    Ok(geometry)
}

/// Takes the device's exclusive lock: one vSSD user at a time (an open vSSD in another
/// process, or another `File` of this one, is refused).
pub fn lock(file: &File, op: &'static str) -> Result<(), VssdError> {
    match file.try_lock_exclusive() {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(VssdError::Refused {
            op,
            path: file.path().to_path_buf(),
            why:
                "the device is in use: another process (or another open of it here) holds its lock"
                    .into(),
        }),
        Err(source) => Err(VssdError::Io {
            op,
            path: file.path().to_path_buf(),
            source,
        }),
    }
}

fn refuse_to_overwrite(file: &File, params: &FormatParams) -> Result<(), VssdError> {
    let refuse = |why: String| VssdError::Refused {
        op: "format",
        path: file.path().to_path_buf(),
        why,
    };
    let force_hint = "formatting it destroys its cached lines; set force to do so";
    match choose(file.path(), read_copies(file)?) {
        Ok((old, _)) => {
            if old.uuid == params.uuid {
                return Err(refuse(format!(
                    "the device already holds vSSD {}; a new format needs a new uuid, or the old log would pass for the new one's",
                    uuid_string(&old.uuid)
                )));
            }
            if old.device_id != params.device_id && !params.force {
                return Err(refuse(format!(
                    "it holds vSSD {} of device {:?}, not {:?}: {force_hint}",
                    uuid_string(&old.uuid),
                    old.device_id,
                    params.device_id
                )));
            }
            Ok(())
        }
        Err(VssdError::NotAVssd { .. }) => Ok(()),
        Err(e @ VssdError::Io { .. }) => Err(e),
        Err(_) if params.force => Ok(()),
        Err(e) => Err(refuse(format!(
            "it holds a vSSD this build cannot use ({e}): {force_hint}"
        ))),
    }
}

/// Reads both copies at once and decodes each; only an I/O error fails the call.
fn read_copies(file: &File) -> Result<[Result<Superblock, Fault>; 2], VssdError> {
    let bytes = (SUPERBLOCK_COPIES * SUPERBLOCK_BYTES) as usize;
    let mut buf = AlignedBuf::new(bytes);
    buf.set_len(bytes);
    let n = file.pread(&mut buf, 0).map_err(|source| VssdError::Io {
        op: "read superblocks",
        path: file.path().to_path_buf(),
        source,
    })?;
    Ok(SuperblockCopy::BOTH.map(|copy| {
        let start = copy.offset() as usize;
        let end = start + SUPERBLOCK_BYTES as usize;
        if n < end {
            Err(Fault::Short { device_bytes: n })
        } else {
            decode_copy(&buf[start..end], copy)
        }
    }))
}

/// The superblock to use of the two copies read, and the copy to repair if any.
fn choose(
    path: &Path,
    copies: [Result<Superblock, Fault>; 2],
) -> Result<(Superblock, Option<Repair>), VssdError> {
    for copy in SuperblockCopy::BOTH {
        if let Err(f @ Fault::Version { .. }) = &copies[copy.index()] {
            return Err(f.clone().into_error(path, copy));
        }
    }
    let [a, b] = copies;
    let older = |copy: SuperblockCopy, old: u64, new: u64| Repair {
        copy,
        why: format!(
            "generation {old}, older than {}'s {new}",
            copy.other().what()
        ),
    };
    match (a, b) {
        (Ok(a), Ok(b)) => {
            if a.generation > b.generation {
                let r = older(SuperblockCopy::B, b.generation, a.generation);
                Ok((a, Some(r)))
            } else if b.generation > a.generation {
                let r = older(SuperblockCopy::A, a.generation, b.generation);
                Ok((b, Some(r)))
            } else if a == b {
                Ok((a, None))
            } else {
                Err(VssdError::Corrupt {
                    what: "superblocks",
                    offset: 0,
                    why: format!(
                        "{}: copies A and B are both valid at generation {} but differ (vSSD {} of device {:?} against vSSD {} of device {:?})",
                        path.display(),
                        a.generation,
                        uuid_string(&a.uuid),
                        a.device_id,
                        uuid_string(&b.uuid),
                        b.device_id
                    ),
                })
            }
        }
        (Ok(a), Err(fb)) => {
            let why = fb.describe();
            Ok((
                a,
                Some(Repair {
                    copy: SuperblockCopy::B,
                    why,
                }),
            ))
        }
        (Err(fa), Ok(b)) => {
            let why = fa.describe();
            Ok((
                b,
                Some(Repair {
                    copy: SuperblockCopy::A,
                    why,
                }),
            ))
        }
        (Err(fa), Err(fb)) => Err(VssdError::NotAVssd {
            path: path.to_path_buf(),
            why: format!(
                "{}: {}; {}: {}",
                SuperblockCopy::A,
                fa.describe(),
                SuperblockCopy::B,
                fb.describe()
            ),
        }),
    }
}

fn fault_of(copy: &Result<Superblock, Fault>) -> String {
    match copy {
        Ok(_) => "valid".into(),
        Err(f) => f.describe(),
    }
}

/// Writes one copy and makes it durable before returning.
fn write_copy(file: &File, sb: &Superblock, copy: SuperblockCopy) -> Result<(), VssdError> {
    let buf = sb.encode(copy);
    file.pwrite(&buf, copy.offset())
        .map_err(|source| VssdError::Io {
            op: "write superblock",
            path: file.path().to_path_buf(),
            source,
        })?;
    sync(file)
}

/// Reads both copies back: both must decode to `sb`.
fn verify_written(file: &File, sb: &Superblock) -> Result<(), VssdError> {
    let copies = read_copies(file)?;
    for copy in SuperblockCopy::BOTH {
        let why = match &copies[copy.index()] {
            Ok(back) if back == sb => continue,
            Ok(back) => format!(
                "read back generation {} of vSSD {}, wrote generation {} of vSSD {}",
                back.generation,
                uuid_string(&back.uuid),
                sb.generation,
                uuid_string(&sb.uuid)
            ),
            Err(f) => format!("read back: {}", f.describe()),
        };
        return Err(VssdError::Corrupt {
            what: copy.what(),
            offset: copy.offset(),
            why: format!("{}: {why}", file.path().display()),
        });
    }
    Ok(())
}

fn zero(file: &File, offset: u64, bytes: u64) -> Result<(), VssdError> {
    assert!(offset.is_multiple_of(BLOCK_BYTES) && bytes.is_multiple_of(BLOCK_BYTES));
    let mut buf = AlignedBuf::new(bytes as usize);
    buf.set_len(bytes as usize);
    file.pwrite(&buf, offset).map_err(|source| VssdError::Io {
        op: "zero",
        path: file.path().to_path_buf(),
        source,
    })
}

fn sync(file: &File) -> Result<(), VssdError> {
    file.fdatasync().map_err(|source| VssdError::Io {
        op: "fdatasync",
        path: file.path().to_path_buf(),
        source,
    })
}

fn device_len(file: &File) -> Result<u64, VssdError> {
    file.len().map_err(|source| VssdError::Io {
        op: "size",
        path: file.path().to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the module docs.
    #[test]
    fn documented_example_layout() {
        let g = Geometry::new(4096, 262_144, 64 << 20).unwrap();
        assert_eq!(g.slot_count(), 278_528);
        assert_eq!(g.checkpoint_bytes() / BLOCK_BYTES, 2_195);
        assert_eq!(g.data_offset(), 85_098_496);
        assert_eq!(g.total_bytes(), 1_225_949_184);
        // Checkpoints cost under 1% of the data at 4 KiB lines.
        assert!(g.checkpoint_bytes() * 100 < g.data_bytes());
    }

    #[test]
    fn smallest_layout() {
        let g = Geometry::new(LINE_SIZE_MIN, 1, LOG_BYTES_MIN).unwrap();
        assert_eq!(g.slot_count(), 1 + SPARE_SLOTS_MIN);
        assert_eq!(g.checkpoint_bytes(), 2 * BLOCK_BYTES);
        assert_eq!(g.log_offset(), 8192);
        let text = g.to_string();
        assert!(text.contains("checkpoint B"), "{text}");
    }

    #[test]
    fn uuid_string_is_8_4_4_4_12() {
        let u: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(uuid_string(&u), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }
}
