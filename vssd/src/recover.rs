//! Recovery: how [`Vssd::open`] turns what a crash left on the device into a running
//! vSSD. All of it is here, in the order it runs (one entry point, called by
//! [`Vssd::open`]):
//!
//! 1. the superblock ([`crate::layout::open_superblock`]; a damaged copy is rewritten);
//! 2. the newest valid checkpoint ([`crate::checkpoint::read_newest`]);
//! 3. the log from the checkpoint's seq on, up to the first block [`recover_scan`]
//!    refuses (one refused for its magic or CRC is read again, [`LOG_REREADS`]
//!    times: a corrupt read is not the end), replayed into the map ([`Replay`]);
//! 4. the checks a recovered map must pass (no payload longer than a line);
//! 5. the scrub past the end of the log ([`scrub_after_recovery`], rule 5 of
//!    [`crate::record`]), before the log writer starts at that end;
//! 6. the vSSD started (knowing the outcomes of the trans the replayed log resolved,
//!    [`crate::TranOutcome`]), then the in-doubt trans, each with its payload checked
//!    ([`Payload`]), returned in [`Recovered`] for the DTM to resolve
//!    ([`Vssd::resolve`], [`Vssd::resolve_repaired`]); with [`Options::sole_copy`]
//!    those whose payload is damaged are aborted instead.

use taskio::AlignedBuf;
use taskio::file::File;

use crate::checkpoint;
use crate::checkpoint::Snapshot;
use crate::device::{Options, Resolution, Vssd};
use crate::epoch::Membership;
use crate::error::VssdError;
use crate::layout::{Geometry, LOG_SEQ_FIRST, Repair, open_superblock, write_superblock};
use crate::log::LOG_BUFFER_BYTES;
use crate::log::RecordPos;
use crate::map::{CacheMap, Entry, MapError, Prepared, State, TRAN_FIRST, parts_complete};
use crate::outcome::Outcomes;
use crate::record::{
    BlockEnd, LOG_BLOCK_SIZE, LOG_WRITE_BLOCKS_MAX, LogRing, Record, decode_block,
};

/// A tran recovery found prepared with neither COMMIT nor ABORT: the DTM decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InDoubt {
    pub tran: u64,
    /// Its lines in line order (part `i` on line `parts[0].line + i`), every one
    /// of them: a tran whose PREPAREs are not all durable is not in doubt (its
    /// writep1 never returned), recovery drops it ([`Recovered::incomplete`]).
    pub parts: Vec<Prepared>,
    /// What recovery read in its slots.
    pub payload: Payload,
}

impl InDoubt {
    /// Its first line.
    pub fn line(&self) -> u64 {
        self.parts[0].line
    }

    /// Its payload bytes, all lines together.
    pub fn payload_len(&self) -> u64 {
        self.parts.iter().map(|p| u64::from(p.len)).sum()
    }
}

/// What recovery found in the slots of an in-doubt tran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The payloads its PREPAREs describe.
    Intact,
    /// Not those payloads: the one of `line` (the first damaged line; the tran is
    /// damaged as a whole, committed only with all its data). Either the crash tore it (the log block with its PREPARE
    /// survived, the payload did not: its writep1 never returned) or it was damaged
    /// after its writep1 returned, when the DTM may have acknowledged the write.
    /// Recovery cannot tell the two apart: the caller decides (see [`Vssd::open`]).
    Damaged {
        line: u64,
        slot: u64,
        reason: Damage,
    },
}

/// Why an in-doubt payload is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("the slot's CRC32C is {got:#010x}, its PREPARE says {want:#010x}")]
    Checksum { got: u32, want: u32 },
}

/// What [`Vssd::open`] found and did.
#[derive(Debug)]
pub struct Recovered {
    /// Trans to resolve, by tran: [`Vssd::resolve`] or, for a damaged payload,
    /// [`Vssd::resolve_repaired`] or an abort.
    pub in_doubt: Vec<InDoubt>,
    /// In-doubt trans with a damaged payload that recovery aborted because the
    /// vSSD holds the only copy ([`Options::sole_copy`]).
    pub damaged_aborted: Vec<InDoubt>,
    /// Trans dropped because fewer of their PREPAREs than their lines were durable:
    /// their writep1 never returned, and none of their lines is there.
    pub incomplete: Vec<u64>,
    /// The checkpoint recovery started from: (region, seq), if any.
    pub checkpoint: Option<(u8, u64)>,
    /// Log blocks replayed after it, and records in them.
    pub blocks_replayed: u64,
    pub records_replayed: u64,
    /// Where and why the log ended.
    pub log_end: (u64, BlockEnd),
    /// A superblock copy that was rewritten, and why.
    pub repaired: Option<Repair>,
}

/// What recovery rebuilt, for [`Vssd::start`].
pub(crate) struct Rebuilt {
    pub map: CacheMap,
    /// The end of the log: the seq of the first block the new run writes.
    pub seq_end: u64,
    /// The newest durable checkpoint's region, if any, and its seq (the log's start).
    pub ck_which: Option<u8>,
    pub ck_seq: u64,
    /// Every tran id handed out or prepared before the crash is below this.
    pub tran_high: u64,
    pub membership: Membership,
    /// The outcomes of the trans the replayed log resolved; older ids forgotten.
    pub outcomes: Outcomes,
}

/// Recovers the vSSD on `file` and starts it: [`Vssd::open`]'s body (module doc).
pub(crate) fn open(
    file: File,
    expect_device: Option<&str>,
    options: Options,
) -> Result<(Vssd, Recovered), VssdError> {
    crate::layout::lock(&file, "open")?;
    let opened = open_superblock(&file, expect_device)?;
    let mut superblock = opened.superblock;
    if opened.repair.is_some() {
        write_superblock(&file, &mut superblock)?;
    }
    let geometry = superblock.geometry;
    let seed = superblock.crc_seed();
    let loaded = checkpoint::read_newest(&file, &geometry, seed)?;
    let (seq_start, ck_which, mut replay) = match &loaded {
        Some(l) => (
            l.snapshot.seq,
            Some(l.which),
            Replay::from_checkpoint(&l.snapshot),
        ),
        None => (LOG_SEQ_FIRST, None, Replay::default()),
    };
    let scan = recover_scan(&file, &geometry, seed, seq_start)?;
    let mut records = 0;
    for (seq, block) in &scan.blocks {
        for (index, r) in block.iter().enumerate() {
            let pos = RecordPos {
                seq: *seq,
                index: index as u32,
            };
            replay.apply_at(r, pos);
            records += 1;
        }
    }
    let path = file.path().to_path_buf();
    let tran_high = replay.tran_high();
    let membership = replay.membership().clone();
    let incomplete: Vec<u64> = replay.incomplete().collect();
    let outcomes = Outcomes::recovered(replay.resolved(), tran_high);
    let mut map = replay
        .finish(geometry.slot_count(), geometry.lines())
        .map_err(|e| VssdError::Corrupt {
            what: "recovered cache map",
            offset: 0,
            why: format!(
                "{}: checkpoint at seq {seq_start} plus {} log blocks: {e}",
                path.display(),
                scan.blocks.len()
            ),
        })?;
    check_payload_lens(&map, &geometry, &path)?;
    scrub_after_recovery(&file, &geometry, scan.seq_end, seq_start)?;
    map.durable(scan.seq_end - 1);
    let mut in_doubt: Vec<InDoubt> = Vec::new();
    for (tran, p) in map.prepared_all() {
        match in_doubt.last_mut() {
            Some(d) if d.tran == tran => d.parts.push(p),
            _ => in_doubt.push(InDoubt {
                tran,
                parts: vec![p],
                payload: Payload::Intact, // until read
            }),
        }
    }
    let rebuilt = Rebuilt {
        map,
        seq_end: scan.seq_end,
        ck_which,
        ck_seq: seq_start,
        tran_high,
        membership,
        outcomes,
    };
    let vssd = Vssd::start(file, superblock, rebuilt, options)?;
    let (kept, damaged_aborted) = match check_in_doubt(&vssd, in_doubt, options.sole_copy) {
        Ok(split) => split,
        Err(e) => {
            vssd.close(); // the log writers stop, the device's lock is released
            return Err(e);
        }
    };
    let recovered = Recovered {
        in_doubt: kept,
        damaged_aborted,
        incomplete,
        checkpoint: loaded.map(|l| (l.which, l.snapshot.seq)),
        blocks_replayed: scan.blocks.len() as u64,
        records_replayed: records,
        log_end: (scan.seq_end, scan.end),
        repaired: opened.repair,
    };
    Ok((vssd, recovered))
}

/// Lengths past the line size cannot come from this vSSD's own writes.
fn check_payload_lens(
    map: &CacheMap,
    geometry: &Geometry,
    path: &std::path::Path,
) -> Result<(), VssdError> {
    let line_size = geometry.line_size();
    let too_long = map
        .entries()
        .into_iter()
        .map(|(line, e)| (line, e.slot, e.len))
        .chain(
            map.prepared_all()
                .into_iter()
                .map(|(_, p)| (p.line, p.slot, p.len)),
        )
        .find(|&(_, _, len)| len > line_size);
    match too_long {
        Some((line, slot, len)) => Err(VssdError::Corrupt {
            what: "recovered cache map",
            offset: geometry.slot_offset(slot),
            why: format!(
                "{}: line {line} in slot {slot} has a payload of {len} bytes, lines hold {line_size}",
                path.display()
            ),
        }),
        None => Ok(()),
    }
}

/// Reads each in-doubt payload and checks it against its PREPARE. A PREPARE may have
/// survived a crash without its payload (log.rs, "Why write + fdatasync"), or the
/// payload may have been damaged since: a damaged one stays in doubt, marked, for
/// the caller to repair or abort, unless `sole_copy` says no other copy exists; then
/// it is aborted, counted and logged. Returns the trans still in doubt and the
/// aborted ones.
fn check_in_doubt(
    vssd: &Vssd,
    in_doubt: Vec<InDoubt>,
    sole_copy: bool,
) -> Result<(Vec<InDoubt>, Vec<InDoubt>), VssdError> {
    let mut buf = AlignedBuf::new(vssd.geometry().line_size() as usize);
    let mut aborted = Vec::new();
    let mut kept = Vec::new();
    for mut d in in_doubt {
        let mut damaged = None;
        for p in &d.parts {
            let got = vssd.read_slot(
                "recovery read of a prepared payload",
                p.slot,
                p.len,
                &mut buf,
            )?;
            if got != p.crc {
                let reason = Damage::Checksum { got, want: p.crc };
                damaged = Some(Payload::Damaged {
                    line: p.line,
                    slot: p.slot,
                    reason,
                });
                break;
            }
        }
        let Some(payload) = damaged else {
            kept.push(d);
            continue;
        };
        d.payload = payload;
        if !sole_copy {
            vssd.mark_damaged(d.clone());
            kept.push(d);
            continue;
        }
        let Payload::Damaged { line, slot, reason } = payload else {
            unreachable!("damaged above");
        };
        tracing::warn!(
            path = %vssd.path().display(),
            tran = d.tran,
            line,
            slot,
            "vssd recovery aborts in-doubt tran {} of line {} ({} lines): its payload for line {line} (slot {slot}) is damaged ({reason}) and no other copy exists",
            d.tran,
            d.line(),
            d.parts.len(),
        );
        vssd.abort(d.tran)?;
        vssd.count_damaged_aborted();
        aborted.push(d);
    }
    if !aborted.is_empty() {
        vssd.sync()?;
    }
    Ok((kept, aborted))
}

/// What [`recover_scan`] found: the valid blocks from the start seq, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Each valid block's seq and records.
    pub blocks: Vec<(u64, Vec<Record>)>,
    /// The first seq refused: the end of the log, where the next run writes.
    pub seq_end: u64,
    /// Why the block at `seq_end` was refused.
    pub end: BlockEnd,
}

/// Reads the log from block `seq_start` until [`decode_block`] refuses a block.
pub fn recover_scan(
    file: &File,
    geometry: &Geometry,
    seed: u32,
    seq_start: u64,
) -> Result<Scan, VssdError> {
    let ring = LogRing::new(geometry.log_blocks())?;
    let mut buf = AlignedBuf::new(LOG_BUFFER_BYTES);
    let mut blocks = Vec::new();
    let mut seq = seq_start;
    // At most a whole lap: block seq_start + blocks would be the start's own place.
    while seq < seq_start + ring.blocks() {
        let count = LOG_WRITE_BLOCKS_MAX
            .min(ring.blocks_until_wrap(seq))
            .min(seq_start + ring.blocks() - seq);
        buf.set_len(count as usize * LOG_BLOCK_SIZE);
        let offset = geometry.log_offset() + ring.offset_bytes(seq);
        file.pread_exact(&mut buf, offset)
            .map_err(|source| VssdError::Io {
                op: "log recovery read",
                path: file.path().to_path_buf(),
                source,
            })?;
        for i in 0..count as usize {
            let block = &buf[i * LOG_BLOCK_SIZE..][..LOG_BLOCK_SIZE];
            match decode_block(block, seq, seed) {
                Ok(records) => blocks.push((seq, records)),
                Err(end) => match reread_block(file, geometry, &ring, seq, seed, &end)? {
                    Some(records) => blocks.push((seq, records)),
                    None => {
                        return Ok(Scan {
                            blocks,
                            seq_end: seq,
                            end,
                        });
                    }
                },
            }
            seq += 1;
        }
    }
    // A full lap of valid blocks: the next is the start's own place, an older seq.
    Ok(Scan {
        blocks,
        seq_end: seq,
        end: BlockEnd::Stale {
            seq_got: seq_start,
            seq_want: seq,
        },
    })
}

/// Times [`recover_scan`] reads a block again that failed its magic or CRC before
/// taking it for the end of the log.
pub const LOG_REREADS: usize = 2;

/// The records of block `seq` read again, alone, when the first read refused it
/// for its magic or CRC (`end`): a corrupt read that does not repeat is not the end
/// of the log (taking it for one would scrub every acknowledged record after it).
/// `None`: refused again, or refused for another reason (the end).
fn reread_block(
    file: &File,
    geometry: &Geometry,
    ring: &LogRing,
    seq: u64,
    seed: u32,
    end: &BlockEnd,
) -> Result<Option<Vec<Record>>, VssdError> {
    if !matches!(end, BlockEnd::Magic { .. } | BlockEnd::Checksum { .. }) {
        return Ok(None);
    }
    let mut one = AlignedBuf::new(LOG_BLOCK_SIZE);
    let offset = geometry.log_offset() + ring.offset_bytes(seq);
    for _ in 0..LOG_REREADS {
        file.pread_exact(&mut one, offset)
            .map_err(|source| VssdError::Io {
                op: "log recovery read",
                path: file.path().to_path_buf(),
                source,
            })?;
        if let Ok(records) = decode_block(&one, seq, seed) {
            return Ok(Some(records));
        }
    }
    Ok(None)
}

/// Durably zeroes the blocks past the end of a recovered log that an interrupted
/// write may have left (rule 5 of [`crate::record`]). Call before
/// [`crate::log::LogWriter::start`] at `seq_end`.
pub fn scrub_after_recovery(
    file: &File,
    geometry: &Geometry,
    seq_end: u64,
    seq_checkpoint: u64,
) -> Result<(), VssdError> {
    let ring = LogRing::new(geometry.log_blocks())?;
    let range = ring.scrub_after_recovery(seq_end, seq_checkpoint);
    let mut zeros = AlignedBuf::new(LOG_BUFFER_BYTES);
    let mut seq = range.start;
    while seq < range.end {
        let count = LOG_WRITE_BLOCKS_MAX
            .min(ring.blocks_until_wrap(seq))
            .min(range.end - seq);
        zeros.set_len(count as usize * LOG_BLOCK_SIZE);
        let offset = geometry.log_offset() + ring.offset_bytes(seq);
        file.pwrite_durable(&zeros, offset)
            .map_err(|source| VssdError::Io {
                op: "log scrub",
                path: file.path().to_path_buf(),
                source,
            })?;
        seq += count;
    }
    Ok(())
}

/// Recovery's rebuild of the map's logged state: a checkpoint's entries and
/// prepared trans, then the log's records from the checkpoint's seq on, in order,
/// then [`Replay::finish`].
///
/// # The checkpoint must be exact at its seq
///
/// The snapshot must reflect exactly the records of the blocks before the
/// checkpoint's seq and none after: the vSSD seals the open log block, so that the
/// next record goes to block `seq`, and copies the map ([`CacheMap::entries`],
/// [`CacheMap::prepared_all`]) before it applies another operation (the map is
/// changed in the order the records are appended, so the copy is that state; it can
/// then be written in the background while the log runs).
///
/// A *fuzzy* checkpoint (already reflecting some records after its seq) is not safe with these records: with PREPARE(t) before the
/// seq, INVALIDATE(line) and COMMIT(t) after it, and a snapshot taken after the
/// commit, replay removes the committed line and then skips the COMMIT (t is no
/// longer prepared in the snapshot): an acknowledged write is lost. Making it safe
/// would need the version in INVALIDATE records; the exact checkpoint costs one
/// early-sealed log block per checkpoint instead.
///
/// Lines filled from the backing store are not logged: those in the checkpoint
/// stay unless a later INVALIDATE drops them. Because every slot release is logged
/// (eviction included), no replayed version can land on such a line's slot.
/// A COMMIT or ABORT of a tran that is not prepared cannot follow an exact
/// checkpoint and a log prefix; it is skipped, never trusted to invent a version.
///
/// # Trans of several lines
///
/// A tran's PREPAREs come in part order (`part` 0..`parts`), appended together; the
/// durable prefix of the log may end among them, and a checkpoint may be cut among
/// them (it keeps the parts before its seq). Replay gathers them by tran: part 0
/// starts the tran afresh (a writep1 the DTM retried with the same id after a crash
/// that lost the first try), each next part must follow the last one gathered (any
/// other drops the tran: it cannot come from this vSSD's writes). A tran is prepared
/// once all its parts are there; one with parts missing at the end of the log is
/// [`Replay::incomplete`]: its writep1 never returned, and [`Replay::finish`] leaves
/// it out, its slots free. A COMMIT of an incomplete tran cannot be (a commit waits
/// for writep1 to return) and is skipped.
#[derive(Clone, Debug)]
pub struct Replay {
    entries: std::collections::BTreeMap<u64, Entry>,
    /// tran -> its parts gathered so far, in part order.
    prepared: std::collections::BTreeMap<u64, Vec<Prepared>>,
    /// Every tran id handed out or prepared so far is below this.
    tran_high: u64,
    membership: Membership,
    /// The COMMITs and ABORTs applied by [`Replay::apply_at`] that resolved a
    /// prepared tran, in log order, with their positions.
    resolved: Vec<(u64, Resolution, RecordPos)>,
}

impl Default for Replay {
    /// A vSSD without a checkpoint.
    fn default() -> Replay {
        Replay::new([], [])
    }
}

impl Replay {
    /// Starts from a checkpoint (empty for a vSSD without one).
    pub fn new(
        entries: impl IntoIterator<Item = (u64, Entry)>,
        prepared: impl IntoIterator<Item = (u64, Prepared)>,
    ) -> Replay {
        let entries: std::collections::BTreeMap<u64, Entry> = entries.into_iter().collect();
        let tran_high = entries
            .values()
            .map(|e| e.version.saturating_add(1))
            .fold(TRAN_FIRST, u64::max);
        let mut replay = Replay {
            entries,
            prepared: std::collections::BTreeMap::new(),
            tran_high,
            membership: Membership::default(),
            resolved: Vec::new(),
        };
        for (tran, p) in prepared {
            replay.prepare(tran, p);
        }
        replay
    }

    /// One PREPARE (or a checkpoint's prepared line): gathered with its tran's
    /// parts (type doc).
    fn prepare(&mut self, tran: u64, p: Prepared) {
        self.raise_tran_high(tran.saturating_add(1));
        if p.part == 0 {
            self.prepared.insert(tran, vec![p]);
            return;
        }
        let follows = self
            .prepared
            .get(&tran)
            .and_then(|v| v.last())
            .is_some_and(|last| {
                last.part + 1 == p.part
                    && last.parts == p.parts
                    && last.line.checked_add(1) == Some(p.line)
            });
        if follows {
            self.prepared.get_mut(&tran).expect("follows").push(p);
        } else {
            self.prepared.remove(&tran);
        }
    }

    /// The trans with parts missing: their writep1 never returned.
    pub fn incomplete(&self) -> impl Iterator<Item = u64> + '_ {
        self.prepared
            .iter()
            .filter(|(_, v)| !parts_complete(v))
            .map(|(&t, _)| t)
    }

    /// Starts from a checkpoint read from disk.
    pub fn from_checkpoint(snapshot: &Snapshot) -> Replay {
        let mut replay = Replay::new(
            snapshot.entries.iter().copied(),
            snapshot.prepared.iter().copied(),
        );
        replay.raise_tran_high(snapshot.tran_high);
        replay.membership = snapshot.membership.clone();
        replay
    }

    fn raise_tran_high(&mut self, tran_high: u64) {
        self.tran_high = self.tran_high.max(tran_high);
    }

    /// Every tran id handed out or prepared before the records applied so far is
    /// below this (at least [`TRAN_FIRST`]).
    pub fn tran_high(&self) -> u64 {
        self.tran_high
    }

    /// [`Replay::apply`] of the record at `pos` of the log, remembering it when it
    /// resolves a prepared tran ([`Replay::resolved`]).
    pub fn apply_at(&mut self, record: &Record, pos: RecordPos) {
        let resolution = match *record {
            Record::Commit { tran } => Some((tran, Resolution::Commit)),
            Record::Abort { tran } => Some((tran, Resolution::Abort)),
            _ => None,
        }
        .filter(|&(tran, _)| self.prepared.get(&tran).is_some_and(|v| parts_complete(v)));
        self.apply(record);
        if let Some((tran, resolution)) = resolution {
            self.resolved.push((tran, resolution, pos));
        }
    }

    /// The trans the records given to [`Replay::apply_at`] resolved, in log order,
    /// with the positions of their COMMIT or ABORT.
    pub fn resolved(&self) -> &[(u64, Resolution, RecordPos)] {
        &self.resolved
    }

    /// Applies one record of the log, in log order.
    pub fn apply(&mut self, record: &Record) {
        match *record {
            Record::Prepare {
                tran,
                line,
                slot,
                payload_crc,
                len,
                part,
                parts,
            } => {
                let p = Prepared {
                    line,
                    slot,
                    crc: payload_crc,
                    len,
                    part,
                    parts,
                };
                self.prepare(tran, p);
            }
            Record::Commit { tran } => {
                if self.prepared.get(&tran).is_some_and(|v| parts_complete(v)) {
                    for p in self.prepared.remove(&tran).expect("complete") {
                        let e = Entry {
                            slot: p.slot,
                            version: tran,
                            crc: p.crc,
                            len: p.len,
                            state: State::Dirty,
                        };
                        self.entries.insert(p.line, e);
                    }
                }
            }
            Record::Abort { tran } => {
                self.prepared.remove(&tran);
            }
            Record::Clean { line, version } => {
                if let Some(e) = self.entries.get_mut(&line)
                    && e.version == version
                {
                    e.state = State::Clean;
                }
            }
            Record::Invalidate { line } => {
                self.entries.remove(&line);
            }
            Record::TranHigh { tran_high } => self.raise_tran_high(tran_high),
            Record::Epoch { epoch, ref members } => {
                // In log order epochs only go up; never trust one that goes back.
                if epoch >= self.membership.epoch {
                    self.membership = Membership {
                        epoch,
                        members: members.clone(),
                    };
                }
            }
            Record::Checkpoint { .. } => {}
        }
    }

    /// The lines of the in-doubt trans (prepared, all their parts there, neither
    /// committed nor aborted), by tran then part.
    pub fn in_doubt(&self) -> impl Iterator<Item = (u64, Prepared)> + '_ {
        self.prepared
            .iter()
            .filter(|(_, v)| parts_complete(v))
            .flat_map(|(&t, v)| v.iter().map(move |&p| (t, p)))
    }

    /// The membership epoch after the records applied so far.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The rebuilt map, every slot not current or prepared free; an error if the
    /// state is not one a map can hold (a corrupt checkpoint or log).
    pub fn finish(self, slot_count: u64, lines: u64) -> Result<CacheMap, MapError> {
        let prepared: Vec<(u64, Prepared)> = self.in_doubt().collect();
        CacheMap::restore(slot_count, lines, self.entries, prepared)
    }
}
