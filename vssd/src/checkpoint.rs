//! Checkpoints: the cache map written to one of the two checkpoint regions, so that
//! recovery replays only the log after it, and the log before it can be reused.
//!
//! A checkpoint is *exact* at its `seq` (see [`crate::recover::Replay`]): it holds the
//! map's state after every log record in blocks before `seq` and none after. The vSSD
//! cuts the log ([`crate::log::LogWriter::cut`]) and copies the map without a park in
//! between, then writes the copy here in the background.
//!
//! # On disk
//!
//! Region A or B ([`crate::layout::Geometry::checkpoint_offsets`]): a header block,
//! then entry blocks. Little-endian; every CRC32C starts from the format's seed
//! ([`crate::layout::Superblock::crc_seed`]), so a checkpoint of an earlier format of
//! the device never passes for one of this one.
//!
//! Header block (4 KiB):
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `"CVA-CKPT"` |
//! | 8 | 4 | CRC32C of bytes 0..8 then 12..4096 |
//! | 12 | 4 | version (3) |
//! | 16 | 8 | `seq`: the first log block the checkpoint does not cover |
//! | 24 | 1 | which region: 0 = A, 1 = B (catches a misdirected write) |
//! | 25 | 7 | zero |
//! | 32 | 8 | entries |
//! | 40 | 8 | entry blocks (⌈entries / 127⌉) |
//! | 48 | 8 | `tran_high`: every tran id handed out or prepared before `seq` is below it |
//! | 56 | 8 | membership epoch |
//! | 64 | 1 | its member count (at most 16) |
//! | 65 | 7 | zero |
//! | 72 | 8 x count | its member ids |
//! | .. | .. | zero |
//!
//! Entry block (4 KiB): a 32-byte header (0 magic `"CVAE"`, 4 CRC32C of bytes 0..4
//! then 8..4096, 8 the checkpoint's `seq`, 16 block index u32, 20 entries in this
//! block u32, 24 zero u64) and up to 127 entries of 32 bytes:
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 8 | line |
//! | 8 | 8 | slot; for a prepared entry: 8 slot u32, 12 `part` u16, 14 `parts` u16 (which of its tran's lines, of how many) |
//! | 16 | 8 | version (the tran that wrote it; for a prepared entry, the tran) |
//! | 24 | 4 | payload CRC32C |
//! | 28 | 1 | state: 1 clean, 2 dirty, 3 prepared |
//! | 29 | 3 | payload length (1 ..= 64 KiB), 24 bits |
//!
//! # Writing order
//!
//! Entry blocks, fdatasync, header, fdatasync. A header is only ever durable after
//! the entries it counts, so a valid header whose entries do not check out is
//! corruption, not a torn write: [`read_newest`] reports it instead of falling back to
//! the other region (whose log may already be reused). The other region's checkpoint
//! stays valid until the new header is durable; the log writer keeps the log from the
//! older one's `seq` until then (the caller moves `oldest_needed` only afterwards).
//! Two checkpoints never carry the same `seq` (the vSSD skips a checkpoint when no
//! record was logged since the last), so the higher `seq` is always the newer.
//! The first fdatasync also makes durable every payload written before the map was
//! copied (lines filled from the backing store are not logged: the checkpoint is
//! their only record).

use std::path::Path;

use taskio::AlignedBuf;
use taskio::file::File;

use crate::epoch::Membership;
use crate::error::VssdError;
use crate::layout::{
    BLOCK_BYTES, CHECKPOINT_BLOCK_HEADER_BYTES, CHECKPOINT_ENTRIES_PER_BLOCK,
    CHECKPOINT_ENTRY_BYTES, Geometry, get_u32, get_u64,
};
use crate::map::{Entry, Prepared, State};
use crate::record::EPOCH_MEMBERS_MAX;

const HEADER_MAGIC: [u8; 8] = *b"CVA-CKPT";
const ENTRY_MAGIC: [u8; 4] = *b"CVAE";
const VERSION: u32 = 3;
/// Where the header's member ids start.
const HEADER_MEMBERS: usize = 72;
const _: () = assert!(HEADER_MEMBERS + 8 * EPOCH_MEMBERS_MAX <= BLOCK);
const STATE_PREPARED: u8 = 3;
const _: () = assert!(crate::record::TRAN_PARTS_MAX <= u16::MAX as u32);
/// Entry blocks written or read by one I/O (256 KiB).
const IO_BLOCKS: usize = 64;
const BLOCK: usize = BLOCK_BYTES as usize;
const PER_BLOCK: usize = CHECKPOINT_ENTRIES_PER_BLOCK as usize;
const ENTRY: usize = CHECKPOINT_ENTRY_BYTES as usize;
const BLOCK_HEADER: usize = CHECKPOINT_BLOCK_HEADER_BYTES as usize;

/// What a checkpoint holds: the map's current versions and prepared trans at `seq`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The first log block not covered: replay starts here.
    pub seq: u64,
    pub entries: Vec<(u64, Entry)>,
    /// The lines of the prepared trans whose PREPAREs are before `seq`, by tran then
    /// part: a tran whose writep1 was appending its PREPAREs when the log was cut has
    /// its first parts here and the rest in the log after `seq`.
    pub prepared: Vec<(u64, Prepared)>,
    /// Every tran id handed out or prepared before `seq` is below this.
    pub tran_high: u64,
    /// The membership epoch after every record before `seq`.
    pub membership: Membership,
}

/// A checkpoint found on disk: its region (0 = A, 1 = B) and contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub which: u8,
    pub snapshot: Snapshot,
}

fn crc(seed: u32, bytes: &[u8], skip: std::ops::Range<usize>) -> u32 {
    let c = crc32c::crc32c_append(seed, &bytes[..skip.start]);
    crc32c::crc32c_append(c, &bytes[skip.end..])
}

fn io_error(op: &'static str, path: &Path, source: taskio::IoError) -> VssdError {
    VssdError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn encode_entry(out: &mut [u8], line: u64, slot: u64, version: u64, crc: u32, state: u8, len: u32) {
    assert!((1..1 << 24).contains(&len), "checkpoint entry length {len}");
    out[0..8].copy_from_slice(&line.to_le_bytes());
    out[8..16].copy_from_slice(&slot.to_le_bytes());
    out[16..24].copy_from_slice(&version.to_le_bytes());
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out[28] = state;
    out[29..32].copy_from_slice(&len.to_le_bytes()[..3]);
}

/// Writes `snap` to region `which` (0 or 1) of `file`: entry blocks, fdatasync,
/// header, fdatasync. On return the checkpoint is durable.
pub fn write(
    file: &File,
    geometry: &Geometry,
    seed: u32,
    which: u8,
    snap: &Snapshot,
) -> Result<(), VssdError> {
    assert!(which <= 1, "checkpoint region {which}");
    let path = file.path();
    let total = snap.entries.len() + snap.prepared.len();
    let blocks = total.div_ceil(PER_BLOCK);
    assert!(
        blocks as u64 <= geometry.checkpoint_entry_blocks(),
        "checkpoint of {total} entries does not fit its region"
    );
    let region = geometry.checkpoint_offsets()[usize::from(which)];
    let mut items = snap
        .entries
        .iter()
        .map(|&(line, e)| {
            let state = match e.state {
                State::Clean => State::Clean as u8,
                State::Dirty => State::Dirty as u8,
            };
            (line, e.slot, e.version, e.crc, state, e.len)
        })
        .chain(snap.prepared.iter().map(|&(tran, p)| {
            let slot = u32::try_from(p.slot).expect("slot numbers fit u32 (map)");
            let part = u16::try_from(p.part).expect("TRAN_PARTS_MAX fits u16");
            let parts = u16::try_from(p.parts).expect("TRAN_PARTS_MAX fits u16");
            let packed = u64::from(slot) | u64::from(part) << 32 | u64::from(parts) << 48;
            (p.line, packed, tran, p.crc, STATE_PREPARED, p.len)
        }));
    let mut buf = AlignedBuf::new(IO_BLOCKS * BLOCK);
    let mut block = 0;
    while block < blocks {
        let n = IO_BLOCKS.min(blocks - block);
        buf.set_len(n * BLOCK);
        buf.fill(0);
        for i in 0..n {
            let b = &mut buf[i * BLOCK..(i + 1) * BLOCK];
            let mut count = 0;
            for (k, (line, slot, version, c, state, len)) in
                items.by_ref().take(PER_BLOCK).enumerate()
            {
                let at = BLOCK_HEADER + k * ENTRY;
                encode_entry(&mut b[at..at + ENTRY], line, slot, version, c, state, len);
                count += 1;
            }
            b[0..4].copy_from_slice(&ENTRY_MAGIC);
            b[8..16].copy_from_slice(&snap.seq.to_le_bytes());
            b[16..20].copy_from_slice(&((block + i) as u32).to_le_bytes());
            b[20..24].copy_from_slice(&(count as u32).to_le_bytes());
            let c = crc(seed, b, 4..8);
            b[4..8].copy_from_slice(&c.to_le_bytes());
        }
        let offset = region + ((1 + block) * BLOCK) as u64;
        file.pwrite(&buf, offset)
            .map_err(|e| io_error("checkpoint entries write", path, e))?;
        block += n;
    }
    assert!(items.next().is_none());
    file.fdatasync()
        .map_err(|e| io_error("checkpoint fdatasync", path, e))?;
    buf.set_len(BLOCK);
    buf.fill(0);
    buf[0..8].copy_from_slice(&HEADER_MAGIC);
    buf[12..16].copy_from_slice(&VERSION.to_le_bytes());
    buf[16..24].copy_from_slice(&snap.seq.to_le_bytes());
    buf[24] = which;
    buf[32..40].copy_from_slice(&(total as u64).to_le_bytes());
    buf[40..48].copy_from_slice(&(blocks as u64).to_le_bytes());
    buf[48..56].copy_from_slice(&snap.tran_high.to_le_bytes());
    let members = &snap.membership.members;
    assert!(
        members.len() <= EPOCH_MEMBERS_MAX,
        "{} members",
        members.len()
    );
    buf[56..64].copy_from_slice(&snap.membership.epoch.to_le_bytes());
    buf[64] = members.len() as u8;
    for (i, member) in members.iter().enumerate() {
        buf[HEADER_MEMBERS + 8 * i..][..8].copy_from_slice(&member.to_le_bytes());
    }
    let c = crc(seed, &buf, 8..12);
    buf[8..12].copy_from_slice(&c.to_le_bytes());
    file.pwrite(&buf, region)
        .map_err(|e| io_error("checkpoint header write", path, e))?;
    file.fdatasync()
        .map_err(|e| io_error("checkpoint fdatasync", path, e))
}

/// The fields of a valid header.
struct Header {
    seq: u64,
    entries: u64,
    blocks: u64,
    tran_high: u64,
    membership: Membership,
}

/// A valid header's fields.
fn header(b: &[u8], seed: u32, which: u8, geometry: &Geometry) -> Option<Header> {
    if b[0..8] != HEADER_MAGIC || get_u32(b, 8) != crc(seed, b, 8..12) {
        return None;
    }
    if get_u32(b, 12) != VERSION || b[24] != which {
        return None;
    }
    let h = Header {
        seq: get_u64(b, 16),
        entries: get_u64(b, 32),
        blocks: get_u64(b, 40),
        tran_high: get_u64(b, 48),
        membership: Membership::default(),
    };
    let count = usize::from(b[64]);
    if count > EPOCH_MEMBERS_MAX {
        return None;
    }
    let h = Header {
        membership: Membership {
            epoch: get_u64(b, 56),
            members: (0..count)
                .map(|i| get_u64(b, HEADER_MEMBERS + 8 * i))
                .collect(),
        },
        ..h
    };
    let ok = h.blocks <= geometry.checkpoint_entry_blocks()
        && h.entries <= geometry.slot_count()
        && h.entries.div_ceil(CHECKPOINT_ENTRIES_PER_BLOCK) == h.blocks
        && h.seq >= 1;
    ok.then_some(h)
}

/// Reads both regions' headers and loads the checkpoint with the highest `seq`;
/// `None` if neither holds a valid header (a vSSD never checkpointed). A valid header
/// whose entries do not check out is an error (see the module doc).
pub fn read_newest(
    file: &File,
    geometry: &Geometry,
    seed: u32,
) -> Result<Option<Loaded>, VssdError> {
    let path = file.path();
    let mut buf = AlignedBuf::new(IO_BLOCKS * BLOCK);
    let mut best: Option<(u8, Header)> = None;
    for which in 0..=1u8 {
        buf.set_len(BLOCK);
        let region = geometry.checkpoint_offsets()[usize::from(which)];
        file.pread_exact(&mut buf, region)
            .map_err(|e| io_error("checkpoint header read", path, e))?;
        if let Some(h) = header(&buf, seed, which, geometry)
            && best.as_ref().is_none_or(|(_, b)| h.seq > b.seq)
        {
            best = Some((which, h));
        }
    }
    let Some((which, h)) = best else {
        return Ok(None);
    };
    let Header {
        seq,
        entries,
        blocks,
        tran_high,
        membership,
    } = h;
    let region = geometry.checkpoint_offsets()[usize::from(which)];
    let corrupt = |offset: u64, why: String| VssdError::Corrupt {
        what: "checkpoint entry block",
        offset,
        why: format!(
            "{}: checkpoint {} (seq {seq}) has a valid header but {why}",
            path.display(),
            if which == 0 { "A" } else { "B" }
        ),
    };
    let mut snap = Snapshot {
        seq,
        tran_high,
        membership,
        ..Snapshot::default()
    };
    let mut left = entries;
    let mut block = 0u64;
    while block < blocks {
        let n = (IO_BLOCKS as u64).min(blocks - block) as usize;
        buf.set_len(n * BLOCK);
        let offset = region + (1 + block) * BLOCK_BYTES;
        file.pread_exact(&mut buf, offset)
            .map_err(|e| io_error("checkpoint entries read", path, e))?;
        for i in 0..n {
            let b = &buf[i * BLOCK..(i + 1) * BLOCK];
            let at = offset + (i * BLOCK) as u64;
            let index = block + i as u64;
            if b[0..4] != ENTRY_MAGIC || get_u32(b, 4) != crc(seed, b, 4..8) {
                return Err(corrupt(at, format!("entry block {index} fails its CRC")));
            }
            let count = u64::from(get_u32(b, 20));
            let want = left.min(CHECKPOINT_ENTRIES_PER_BLOCK);
            if get_u64(b, 8) != seq || u64::from(get_u32(b, 16)) != index || count != want {
                return Err(corrupt(
                    at,
                    format!(
                        "entry block {index} says seq {}, index {}, {count} entries (want {want})",
                        get_u64(b, 8),
                        get_u32(b, 16)
                    ),
                ));
            }
            for k in 0..count as usize {
                let e = &b[BLOCK_HEADER + k * ENTRY..][..ENTRY];
                let (line, slot, version) = (get_u64(e, 0), get_u64(e, 8), get_u64(e, 16));
                let c = get_u32(e, 24);
                let len = u32::from_le_bytes([e[29], e[30], e[31], 0]);
                let state = match e[28] {
                    1 => Some(State::Clean),
                    2 => Some(State::Dirty),
                    STATE_PREPARED => None,
                    other => {
                        return Err(corrupt(at, format!("entry {k} has state {other}")));
                    }
                };
                match state {
                    Some(state) => snap.entries.push((
                        line,
                        Entry {
                            slot,
                            version,
                            crc: c,
                            len,
                            state,
                        },
                    )),
                    None => snap.prepared.push((
                        version,
                        Prepared {
                            line,
                            slot: slot & u64::from(u32::MAX),
                            crc: c,
                            len,
                            part: (slot >> 32) as u32 & u32::from(u16::MAX),
                            parts: (slot >> 48) as u32,
                        },
                    )),
                }
            }
            left -= count;
        }
        block += n as u64;
    }
    Ok(Some(Loaded {
        which,
        snapshot: snap,
    }))
}
