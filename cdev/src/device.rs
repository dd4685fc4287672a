//! A cache device on its taskio runtime: the client operations over the DTM, the
//! primary vSSD and the backing store, the cache modes and the destage task.
//!
//! Everything of a device lives on one runtime (single-threaded, `Rc` inside): the
//! server hands each connection that opened the device to that runtime, so a request
//! never crosses threads.

use std::rc::Rc;

use crate::config::{CacheMode, DeviceConfig};
use crate::error::CdevError;

/// Block size of every device: offsets and lengths are multiples of it.
pub const BLOCK_SIZE: u32 = 512;

/// How [`Device::open`] treats missing files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Format the vSSD and create the (sparse) backing file when they are missing.
    pub create: bool,
}

/// What a client is told at DEVICE_OPEN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The backing store's size.
    pub size_bytes: u64,
    /// [`BLOCK_SIZE`].
    pub block_size: u32,
    /// Longest READ or WRITE.
    pub io_len_max: u32,
    /// Bytes per cache line.
    pub line_size: u32,
    pub read_only: bool,
}

impl DeviceInfo {
    /// The wire's form (DEVICE_OPEN reply).
    pub fn wire(&self) -> rpc::DeviceInfo {
        rpc::DeviceInfo {
            size_bytes: self.size_bytes,
            block_size: self.block_size,
            io_len_max: self.io_len_max,
            read_only: self.read_only,
        }
    }
}

struct Inner {
    config: DeviceConfig,
}

/// One open cache device (cheap to clone: every clone is the same device).
#[derive(Clone)]
pub struct Device {
    inner: Rc<Inner>,
}

impl Device {
    /// Opens the device of `config` on the calling runtime: opens (or, with
    /// `options.create`, formats) the primary vSSD and the backing store, recovers
    /// through the DTM (the local replica alone when `config.replicas` is empty, a
    /// `RemoteReplica` for each configured peer), starts the DTM and the destage task.
    pub fn open(config: &DeviceConfig, options: OpenOptions) -> Result<Device, CdevError> {
        let _ = options;
        Err(unbuilt("open", &config.name))
    }

    /// Size, block size, longest I/O, line size, read-only.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            size_bytes: 0,
            block_size: BLOCK_SIZE,
            io_len_max: rpc::limits::DATA_LEN_MAX,
            line_size: self.inner.config.line_size,
            read_only: false,
        }
    }

    /// Reads `buf.len()` bytes at `offset` (both multiples of [`BLOCK_SIZE`], inside
    /// the device, at most `io_len_max`): hits from the cache, misses from the
    /// backing store (then cached clean, unless a long sequential stream bypasses).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), CdevError> {
        let _ = (offset, buf);
        Err(unbuilt("read", &self.inner.config.name))
    }

    /// Writes `data` at `offset` (same rules as [`Device::read`]); durable when it
    /// returns: on every replica (write-back) or on the backing store (the other
    /// modes).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), CdevError> {
        let _ = (offset, data);
        Err(unbuilt("write", &self.inner.config.name))
    }

    /// Every write acknowledged before it durable (they already are: this makes the
    /// replicas' commits durable too).
    pub fn flush(&self) -> Result<(), CdevError> {
        Err(unbuilt("flush", &self.inner.config.name))
    }

    /// Drops `len` bytes at `offset` from the cache (whole lines only; a partial line
    /// is left as it is). The backing store keeps what it holds.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), CdevError> {
        let _ = (offset, len);
        Err(unbuilt("discard", &self.inner.config.name))
    }

    /// The STAT counters: names without spaces, at most 64 bytes, at most
    /// `rpc::limits::STAT_COUNTERS_MAX` of them.
    pub fn stat(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// Changes the cache mode; leaving write-back destages every dirty line first.
    pub fn set_mode(&self, mode: CacheMode) -> Result<(), CdevError> {
        let _ = mode;
        Err(unbuilt("set_mode", &self.inner.config.name))
    }

    /// Dirty lines in the cache now.
    pub fn dirty_lines(&self) -> u64 {
        0
    }

    /// Drains the requests in flight, stops destage, checkpoints and closes the
    /// vSSD. Later calls fail.
    pub fn close(&self) -> Result<(), CdevError> {
        Err(unbuilt("close", &self.inner.config.name))
    }
}

fn unbuilt(op: &'static str, device: &str) -> CdevError {
    CdevError::NotServing {
        op,
        device: device.to_string(),
        state: "not built yet",
    }
}
