//! Simulated disks: the durable image of a file and the volatile cache over it, and
//! the execution of a file operation against them.

use super::*;

/// One version of a sector in a disk's volatile cache: what one write put there.
#[derive(Clone)]
pub(super) struct Version {
    /// The write's id (given at completion, increasing).
    write: u64,
    /// The node that wrote it (on a shared disk, a crash of that node decides the
    /// fate of its writes alone).
    writer: u32,
    /// The sector's index within its write (for tears).
    index: u64,
    data: Box<[u8; SECTOR]>,
}

/// One simulated disk file: the durable image and the volatile cache over it.
///
/// The cache keeps every version of a sector that is not durable yet, oldest first,
/// because a flush makes durable only the writes that completed before it was
/// issued: a newer version of the same sector must stay volatile (and may still be
/// lost in a crash) while the older one becomes durable.
#[derive(Default, Clone)]
pub(crate) struct Disk {
    pub(super) durable: Vec<u8>,
    /// sector -> its cached versions, in increasing write id.
    pub(super) cache: BTreeMap<u64, Vec<Version>>,
    pub(super) len: u64,
}

/// A write in flight at a crash: its id (given at the crash), offset and bytes.
pub(super) struct InFlight {
    pub(super) write: u64,
    pub(super) writer: u32,
    pub(super) offset: u64,
    pub(super) data: Vec<u8>,
}

/// What a crash did to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Whole,
    Dropped,
    /// Some sectors kept, others not (any subset, not only a prefix).
    Torn,
}

impl Disk {
    pub(super) fn sector_view(&self, sector: u64) -> [u8; SECTOR] {
        if let Some(v) = self.cache.get(&sector).and_then(|vs| vs.last()) {
            return *v.data;
        }
        let mut out = [0u8; SECTOR];
        let start = sector as usize * SECTOR;
        if start < self.durable.len() {
            let end = (start + SECTOR).min(self.durable.len());
            out[..end - start].copy_from_slice(&self.durable[start..end]);
        }
        out
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The durable image alone.
    pub(crate) fn read_durable(&self) -> Vec<u8> {
        self.durable.clone()
    }

    /// What a read sees: the cache over the durable image, up to the length.
    pub(crate) fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let end = (offset + len as u64).min(self.len);
        if end <= offset {
            return Vec::new();
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        let mut pos = offset;
        while pos < end {
            let sector = pos / SECTOR as u64;
            let within = (pos % SECTOR as u64) as usize;
            let take = ((SECTOR - within) as u64).min(end - pos) as usize;
            out.extend_from_slice(&self.sector_view(sector)[within..within + take]);
            pos += take as u64;
        }
        out
    }

    fn write_durable(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[offset as usize..end].copy_from_slice(data);
    }

    /// A completed write `id` by node `writer` into the cache (or straight to the
    /// durable image when `durable`, which supersedes every cached version of its
    /// sectors).
    pub(super) fn write(&mut self, id: u64, writer: u32, offset: u64, data: &[u8], durable: bool) {
        self.len = self.len.max(offset + data.len() as u64);
        if data.is_empty() {
            return;
        }
        let first = offset / SECTOR as u64;
        let last = (offset + data.len() as u64 - 1) / SECTOR as u64;
        for (index, sector) in (first..=last).enumerate() {
            let mut contents = self.sector_view(sector);
            let s_start = sector * SECTOR as u64;
            let from = offset.max(s_start);
            let to = (offset + data.len() as u64).min(s_start + SECTOR as u64);
            contents[(from - s_start) as usize..(to - s_start) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            if durable {
                self.cache.remove(&sector);
                self.write_durable(s_start, &contents);
            } else {
                let versions = self.cache.entry(sector).or_default();
                debug_assert!(versions.last().is_none_or(|v| v.write < id));
                versions.push(Version {
                    write: id,
                    writer,
                    index: index as u64,
                    data: Box::new(contents),
                });
            }
        }
    }

    /// A flush issued when the next write id was `barrier`: the newest version of
    /// each sector among the writes below `barrier` becomes durable; the versions of
    /// later writes stay cached. Returns how many writes stayed cached that way.
    pub(super) fn flush(&mut self, barrier: u64) -> u64 {
        let mut excluded = BTreeSet::new();
        let mut emptied = Vec::new();
        let mut durable = Vec::new();
        for (sector, versions) in self.cache.iter_mut() {
            let below = versions.partition_point(|v| v.write < barrier);
            if below > 0 {
                durable.push((*sector, versions[below - 1].data.clone()));
                versions.drain(..below);
            }
            excluded.extend(versions.iter().map(|v| v.write));
            if versions.is_empty() {
                emptied.push(*sector);
            }
        }
        for sector in emptied {
            self.cache.remove(&sector);
        }
        for (sector, data) in durable {
            self.write_durable(sector * SECTOR as u64, &data[..]);
        }
        excluded.len() as u64
    }

    /// Puts the writes in flight at a crash in the cache (their buffers are read
    /// now), counted; their ids, which the crash's fates treat as landing.
    fn land(&mut self, in_flight: Vec<InFlight>, stats: &mut SimStats) -> BTreeSet<u64> {
        let landing: BTreeSet<u64> = in_flight.iter().map(|w| w.write).collect();
        stats.in_flight_writes_at_crash += landing.len() as u64;
        for w in in_flight {
            self.write(w.write, w.writer, w.offset, &w.data, false);
        }
        landing
    }

    /// A power loss. The writes still in flight are added to the cache as the newest
    /// writes (their buffers are read now); then each cached write is kept whole,
    /// dropped, or torn to a random subset of its sectors, and what is kept reaches
    /// the durable image in write order. Then the cache is gone.
    pub(super) fn crash(
        &mut self,
        in_flight: Vec<InFlight>,
        rng: &mut Rng,
        trace: &mut u64,
        stats: &mut SimStats,
    ) {
        let landing = self.land(in_flight, stats);
        let cache = std::mem::take(&mut self.cache);
        let fates = draw_fates(&cache, |_| true, &landing, rng, trace, stats);
        for (sector, versions) in cache {
            for v in versions {
                let keep = match &fates[&v.write] {
                    (Fate::Whole, _) => true,
                    (Fate::Dropped, _) => false,
                    (Fate::Torn, kept) => kept.contains(&v.index),
                };
                if keep {
                    self.write_durable(sector * SECTOR as u64, &v.data[..]);
                }
            }
        }
        // What was only in the cache is gone, and with it any length it added.
        self.len = self.durable.len() as u64;
    }

    /// A clean stop of the node's process: writes in flight complete into the cache
    /// (the kernel finishes a dead process's I/O); nothing is lost.
    pub(super) fn settle(&mut self, in_flight: Vec<InFlight>) {
        for w in in_flight {
            self.write(w.write, w.writer, w.offset, &w.data, false);
        }
    }

    /// A crash of node `node` on a disk that other nodes share (storage that does
    /// not lose power with it): its writes still in flight join the cache as the
    /// newest, then each cached write of `node` is kept whole, dropped, or torn to a
    /// random subset of its sectors, as in [`Disk::crash`]; what is kept stays in the
    /// cache (a later flush by any node makes it durable) as the storage's own, which
    /// no later crash decides again, and the writes of the other nodes are untouched.
    /// The length stays as it is.
    pub(super) fn crash_writer(
        &mut self,
        node: u32,
        in_flight: Vec<InFlight>,
        rng: &mut Rng,
        trace: &mut u64,
        stats: &mut SimStats,
    ) {
        let landing = self.land(in_flight, stats);
        let fates = draw_fates(
            &self.cache,
            |v| v.writer == node,
            &landing,
            rng,
            trace,
            stats,
        );
        for versions in self.cache.values_mut() {
            versions.retain(|v| match fates.get(&v.write) {
                None | Some((Fate::Whole, _)) => true,
                Some((Fate::Dropped, _)) => false,
                Some((Fate::Torn, kept)) => kept.contains(&v.index),
            });
            // What this crash kept has reached the storage: the node's next crash
            // does not decide it again.
            for v in versions.iter_mut().filter(|v| fates.contains_key(&v.write)) {
                v.writer = SHARED_NODE;
            }
        }
        self.cache.retain(|_, versions| !versions.is_empty());
    }
}

/// The fate of each write in `cache` that `decided` selects, drawn in write order:
/// write id -> (fate, for a tear the indexes of the sectors kept). `landing`: the
/// writes that were in flight (counted when they reach the disk).
fn draw_fates(
    cache: &BTreeMap<u64, Vec<Version>>,
    decided: impl Fn(&Version) -> bool,
    landing: &BTreeSet<u64>,
    rng: &mut Rng,
    trace: &mut u64,
    stats: &mut SimStats,
) -> BTreeMap<u64, (Fate, BTreeSet<u64>)> {
    let mut fates: BTreeMap<u64, (Fate, BTreeSet<u64>)> = BTreeMap::new();
    let mut sectors_of: BTreeMap<u64, u64> = BTreeMap::new();
    for versions in cache.values() {
        for v in versions.iter().filter(|v| decided(v)) {
            let n = sectors_of.entry(v.write).or_default();
            *n = (*n).max(v.index + 1);
        }
    }
    for (&write, &sectors) in &sectors_of {
        let fate = match rng.below(4) {
            0 | 1 => Fate::Whole,
            2 => Fate::Dropped,
            _ => Fate::Torn,
        };
        let kept: BTreeSet<u64> = match fate {
            Fate::Torn => (0..sectors).filter(|_| rng.chance(0.5)).collect(),
            _ => BTreeSet::new(),
        };
        // A tear that kept every sector or none is not one.
        let fate = match fate {
            Fate::Torn if kept.len() as u64 == sectors => Fate::Whole,
            Fate::Torn if kept.is_empty() => Fate::Dropped,
            other => other,
        };
        mix(trace, &[0x7ea2, write, fate as u64, kept.len() as u64]);
        match fate {
            Fate::Whole => stats.crash_writes_whole += 1,
            Fate::Dropped => stats.crash_writes_dropped += 1,
            Fate::Torn => stats.crash_writes_torn += 1,
        }
        if landing.contains(&write) && (fate == Fate::Whole || !kept.is_empty()) {
            stats.in_flight_writes_landed += 1;
        }
        fates.insert(write, (fate, kept));
    }
    fates
}

impl SimState {
    /// The first injected fault of a kind in `want` whose byte range overlaps the
    /// operation's `len` bytes at `offset`, taken off the queue.
    pub(super) fn take_fault(
        &mut self,
        node: u32,
        path: &Path,
        want: &[DiskFault],
        (offset, len): (u64, u64),
    ) -> Option<DiskFault> {
        let q = self.injected.get_mut(&(node, path.to_path_buf()))?;
        let end = offset.saturating_add(len.max(1));
        let i = q
            .iter()
            .position(|(f, r)| want.contains(f) && r.start < end && offset < r.end)?;
        q.remove(i).map(|(f, _)| f)
    }

    /// Performs a file operation on the disk image; returns bytes or -errno.
    pub(super) fn execute(
        &mut self,
        op: &FileOp,
        node: u32,
        path: &Path,
        dsync: bool,
        barrier: u64,
    ) -> i64 {
        let iocb = op.iocb();
        let key = self.disk_key(node, path);
        let kind = op.kind();
        match kind {
            FileOpKind::Fsync | FileOpKind::Fdatasync => {
                if let Some(d) = self.disks.get_mut(&key) {
                    let excluded = d.flush(barrier);
                    self.sim_stats.flush_excluded_writes += excluded;
                    mix(&mut self.trace, &[0xf1, barrier, excluded]);
                }
                0
            }
            FileOpKind::Read | FileOpKind::ReadV => {
                let segs = segments(op);
                let total: usize = segs.iter().map(|s| s.1).sum();
                let injected = self.take_fault(
                    node,
                    path,
                    &[DiskFault::ReadError, DiskFault::CorruptRead],
                    (iocb.aio_offset as u64, total as u64),
                );
                if injected == Some(DiskFault::ReadError)
                    || self.rng.chance(self.config.faults.disk_read_error)
                {
                    return -(libc::EIO as i64);
                }
                let Some(disk) = self.disks.get(&key) else {
                    return -(libc::EBADF as i64);
                };
                let mut data = disk.read(iocb.aio_offset as u64, total);
                if !data.is_empty()
                    && (injected == Some(DiskFault::CorruptRead)
                        || self.rng.chance(self.config.faults.disk_corrupt_read))
                {
                    let i = self.rng.index(data.len());
                    data[i] ^= 0x5a;
                }
                let mut done = 0;
                for (ptr, len) in segs {
                    let n = len.min(data.len() - done);
                    // SAFETY: `ptr..ptr+len` is a buffer of the operation, which holds
                    // its storage until `complete`; nothing else accesses it while the
                    // operation is in flight (the submitter is parked).
                    unsafe { std::ptr::copy_nonoverlapping(data[done..].as_ptr(), ptr, n) };
                    done += n;
                    if done == data.len() {
                        break;
                    }
                }
                self.stats.bytes_read += done as u64;
                done as i64
            }
            FileOpKind::Write | FileOpKind::WriteV => {
                let segs = segments(op);
                let total: u64 = segs.iter().map(|s| s.1 as u64).sum();
                let injected = self.take_fault(
                    node,
                    path,
                    &[DiskFault::WriteError],
                    (iocb.aio_offset as u64, total),
                );
                if injected.is_some() || self.rng.chance(self.config.faults.disk_write_error) {
                    return -(libc::EIO as i64);
                }
                let mut data = Vec::new();
                for (ptr, len) in segs {
                    // SAFETY: as for reads; the kernel (here: we) only reads the buffer.
                    data.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
                }
                let durable = dsync || iocb.aio_rw_flags & libaio_sys::RWF_DSYNC != 0;
                let id = self.next_write;
                self.next_write += 1;
                let Some(disk) = self.disks.get_mut(&key) else {
                    return -(libc::EBADF as i64);
                };
                disk.write(id, node, iocb.aio_offset as u64, &data, durable);
                self.stats.bytes_written += data.len() as u64;
                data.len() as i64
            }
        }
    }
}

/// (pointer, length) of each buffer segment of a read or write.
pub(super) fn segments(op: &FileOp) -> Vec<(*mut u8, usize)> {
    let iocb = op.iocb();
    match op.kind() {
        FileOpKind::Read | FileOpKind::Write => {
            vec![(iocb.aio_buf as usize as *mut u8, iocb.aio_nbytes as usize)]
        }
        FileOpKind::ReadV | FileOpKind::WriteV => op
            .iovecs()
            .iter()
            .map(|v| (v.iov_base.cast::<u8>(), v.iov_len))
            .collect(),
        FileOpKind::Fsync | FileOpKind::Fdatasync => Vec::new(),
    }
}
