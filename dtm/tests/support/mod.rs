//! Helpers of dtm's real-file tests: vSSD files formatted in a scratch directory and
//! opened as [`LocalReplica`]s. The scratch directory, the runtime and the O_DIRECT
//! open are vssd's test helpers, shared rather than copied.
#![allow(dead_code)] // each test binary uses its own part

#[path = "../../../vssd/tests/common/mod.rs"]
mod common;

pub use common::{TempDir, open_dev, run_io};

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use std::net::SocketAddr;

use dtm::{LocalReplica, ReplicaService, Vssds};
use rpc::{SessionConfig, serve_listener};
use taskio::{AlignedBuf, Builder};
use vssd::layout::{FormatParams, LOG_BYTES_MIN};
use vssd::{Options, Vssd, format};

pub const LINE: u32 = 4096;
pub const DEVICE: &str = "cdev-dtm";

pub fn params() -> FormatParams {
    FormatParams {
        line_size: LINE,
        lines: 64,
        log_bytes: LOG_BYTES_MIN,
        device_id: DEVICE.to_string(),
        uuid: [5; 16],
        force: false,
    }
}

/// A formatted vSSD file `name` in `dir` (run outside a runtime).
pub fn formatted(dir: &TempDir, name: &str) -> PathBuf {
    let path = dir.file(name);
    let g = params().geometry().unwrap();
    std::fs::File::create(&path)
        .unwrap()
        .set_len(g.total_bytes())
        .unwrap();
    let p = path.clone();
    run_io(move || format(&open_dev(&p), &params()).unwrap());
    path
}

/// The vSSD at `path` opened (inside a runtime), its recovery's in-doubt trans left
/// for the replica to list.
pub fn open_vssd(path: &Path) -> Vssd {
    let (v, _) = Vssd::open(open_dev(path), Some(DEVICE), Options::default()).unwrap();
    v
}

/// The vSSD at `path` as replica `member`, opened at the vSSD's own epoch.
pub fn replica(path: &Path, member: u64) -> LocalReplica {
    let v = open_vssd(path);
    let epoch = v.epoch();
    LocalReplica::new(v, member, path.display().to_string(), epoch)
}

/// `lines` lines of data of `tran` from `first`: each line filled with a byte of
/// its own, the tran id in its first 8 bytes.
pub fn payload(first: u64, lines: u64, tran: u64) -> AlignedBuf {
    let line = LINE as usize;
    let mut b = AlignedBuf::new(lines as usize * line);
    b.set_len(lines as usize * line);
    for i in 0..lines as usize {
        let chunk = &mut b[i * line..][..line];
        chunk.fill((first as usize + i) as u8 ^ tran as u8);
        chunk[..8].copy_from_slice(&tran.to_le_bytes());
    }
    b
}

/// Flips one byte of `slot`'s payload in the file (the vSSD closed).
pub fn damage_slot(path: &Path, slot: u64) {
    let g = params().geometry().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = g.slot_offset(slot) + 100;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[!byte[0]], at).unwrap();
    f.sync_all().unwrap();
}

/// The slot of the first line of in-doubt `tran` in the vSSD at `path` (opened and
/// closed again inside a runtime).
pub fn in_doubt_slot(path: &Path, tran: u64) -> u64 {
    let p = path.to_path_buf();
    run_io(move || {
        let (v, rec) = Vssd::open(open_dev(&p), Some(DEVICE), Options::default()).unwrap();
        v.close();
        let d = rec.in_doubt.iter().find(|d| d.tran == tran);
        d.unwrap_or_else(|| panic!("tran {tran} not in doubt: {rec:?}"))
            .parts[0]
            .slot
    })
}

/// Serves `make()` sessions on 127.0.0.1:0 from a system task of this runtime
/// (ended with the runtime once the test's tasks are done); returns the address.
pub fn serve<S, F>(make: F) -> SocketAddr
where
    S: rpc::Service + 'static,
    F: Fn() -> S + 'static,
{
    let listener = taskio::net::listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = listener.local_addr();
    Builder::new()
        .name("peer")
        .system(true)
        .spawn(move || {
            let e = serve_listener(&listener, &SessionConfig::default(), 8, make);
            panic!("serve_listener returned: {e:?}");
        })
        .unwrap();
    addr
}

/// Serves `vssds` as a replica peer.
pub fn serve_vssds(vssds: &Vssds) -> SocketAddr {
    let vssds = vssds.clone();
    serve(move || ReplicaService::new(vssds.clone()))
}
