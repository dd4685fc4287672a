//! Simulated disks: the durable image of a file and the volatile cache over it, and
//! the execution of a file operation against them.

use super::*;

/// One simulated disk file: the durable image and the volatile cache over it.
#[derive(Default, Clone)]
pub(crate) struct Disk {
    pub(super) durable: Vec<u8>,
    /// sector -> (write id, index of the sector within its write, contents)
    pub(super) cache: BTreeMap<u64, (u64, u64, Box<[u8; SECTOR]>)>,
    pub(super) len: u64,
}

impl Disk {
    pub(super) fn sector_view(&self, sector: u64) -> [u8; SECTOR] {
        if let Some((_, _, data)) = self.cache.get(&sector) {
            return **data;
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

    pub(super) fn write_durable(&mut self, offset: u64, data: &[u8]) {
        let end = offset as usize + data.len();
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[offset as usize..end].copy_from_slice(data);
    }

    /// A write into the cache (or straight to the durable image when `durable`).
    pub(super) fn write(&mut self, id: u64, offset: u64, data: &[u8], durable: bool) {
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
                self.cache
                    .insert(sector, (id, index as u64, Box::new(contents)));
            }
        }
    }

    pub(super) fn flush(&mut self) {
        let cache = std::mem::take(&mut self.cache);
        for (sector, (_, _, data)) in cache {
            self.write_durable(sector * SECTOR as u64, &data[..]);
        }
    }

    /// A power loss: each cached write is kept, dropped, or torn (a prefix of its
    /// sectors kept), at random; then the cache is gone.
    pub(super) fn crash(&mut self, rng: &mut Rng, trace: &mut u64) {
        let cache = std::mem::take(&mut self.cache);
        let mut fate: BTreeMap<u64, u64> = BTreeMap::new(); // write id -> sectors kept
        for (_, (id, _, _)) in cache.iter() {
            if fate.contains_key(id) {
                continue;
            }
            let keep = match rng.below(4) {
                0 | 1 => u64::MAX,
                2 => 0,
                _ => rng.below(64),
            };
            fate.insert(*id, keep);
            mix(trace, &[*id, keep]);
        }
        for (sector, (id, index, data)) in cache {
            if index < fate[&id] {
                self.write_durable(sector * SECTOR as u64, &data[..]);
            }
        }
        // What was only in the cache is gone, and with it any length it added.
        self.len = self.durable.len() as u64;
    }
}

impl SimState {
    pub(super) fn take_fault(
        &mut self,
        node: u32,
        path: &Path,
        want: &[DiskFault],
    ) -> Option<DiskFault> {
        let q = self.injected.get_mut(&(node, path.to_path_buf()))?;
        let i = q.iter().position(|f| want.contains(f))?;
        q.remove(i)
    }

    /// Performs a file operation on the disk image; returns bytes or -errno.
    pub(super) fn execute(&mut self, op: &FileOp, node: u32, path: &Path, dsync: bool) -> i64 {
        let iocb = op.iocb();
        let key = (node, path.to_path_buf());
        let kind = op.kind();
        match kind {
            FileOpKind::Fsync | FileOpKind::Fdatasync => {
                if let Some(d) = self.disks.get_mut(&key) {
                    d.flush();
                }
                0
            }
            FileOpKind::Read | FileOpKind::ReadV => {
                let injected =
                    self.take_fault(node, path, &[DiskFault::ReadError, DiskFault::CorruptRead]);
                if injected == Some(DiskFault::ReadError)
                    || self.rng.chance(self.config.faults.disk_read_error)
                {
                    return -(libc::EIO as i64);
                }
                let segs = segments(op);
                let total: usize = segs.iter().map(|s| s.1).sum();
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
                let injected = self.take_fault(node, path, &[DiskFault::WriteError]);
                if injected.is_some() || self.rng.chance(self.config.faults.disk_write_error) {
                    return -(libc::EIO as i64);
                }
                let mut data = Vec::new();
                for (ptr, len) in segments(op) {
                    // SAFETY: as for reads; the kernel (here: we) only reads the buffer.
                    data.extend_from_slice(unsafe { std::slice::from_raw_parts(ptr, len) });
                }
                let durable = dsync || iocb.aio_rw_flags & libaio_sys::RWF_DSYNC != 0;
                let id = self.next_write;
                self.next_write += 1;
                let Some(disk) = self.disks.get_mut(&key) else {
                    return -(libc::EBADF as i64);
                };
                disk.write(id, iocb.aio_offset as u64, &data, durable);
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
