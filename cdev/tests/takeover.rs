//! `Device::takeover`: a cvad holding a device's replica vSSD takes the device over
//! (recovery through the DTM, a new epoch, destage), over real loopback rpc (dtm's
//! ReplicaService serving the vSSDs), on real files.

mod common;
#[path = "../../dtm/tests/support/mod.rs"]
mod support;

use std::path::Path;

use cdev::{CacheMode, Device, DeviceConfig, OpenOptions, ReplicaConfig, ReplicaLoss};
use common::dev::{data, replica_vssd, stat};
use dtm::Vssds;
use rpc::Status;
use support::{TempDir, open_dev, run_io, serve_vssds};
use vssd::{Options, Vssd};

const LINE: u64 = 4096;
const BACKING_BYTES: u64 = 4 << 20;
const REPLICA: &str = "dev0-r1";
const PRIMARY: &str = "dev0-p";

/// The device as its primary cvad runs it: its vSSD (member 0) and a replica
/// (member 1) on the peer at `peer`; `min_replicas` of them must acknowledge.
fn primary_config(dir: &Path, peer: std::net::SocketAddr, min_replicas: usize) -> DeviceConfig {
    DeviceConfig {
        name: "dev0".into(),
        backing: dir.join("backing"),
        vssd: dir.join("vssd"),
        vssd_bytes: 8 << 20,
        line_size: LINE as u32,
        mode: CacheMode::WriteBack,
        local_member: 0,
        replicas: vec![ReplicaConfig {
            peer,
            vssd: REPLICA.into(),
            member: 1,
        }],
        min_replicas,
        replica_loss: ReplicaLoss::Degrade,
        destage_high_pct: 90,
        destage_low_pct: 10,
        seq_cutoff_bytes: 0,
        ram_cache_bytes: 1 << 20,
    }
}

/// The device as the replica's cvad takes it over: its replica vSSD local, the old
/// primary's vSSD (served at `old`) the other member; it goes on alone if need be.
fn takeover_config(dir: &Path, old: std::net::SocketAddr) -> DeviceConfig {
    DeviceConfig {
        vssd: dir.join("replica"),
        local_member: 1,
        replicas: vec![ReplicaConfig {
            peer: old,
            vssd: PRIMARY.into(),
            member: 0,
        }],
        ..primary_config(dir, old, 1)
    }
}

fn read(dev: &Device, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0; len as usize];
    dev.read(offset, &mut buf).unwrap();
    buf
}

fn peers() -> rpc::ClientConfig {
    rpc::ClientConfig {
        name: "cdev-test".into(),
        call_timeout: std::time::Duration::from_secs(10),
        ..rpc::ClientConfig::default()
    }
}

/// An address nothing listens on (a port bound, then released).
fn dead_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The primary writes (some destaged, some dirty); the replica's cvad stops serving
/// its vSSD and takes the device over, reaching the old primary's vSSD: every
/// acknowledged write reads back there, the old primary is fenced (its calls to
/// the replica, served again at the new epoch, fail STALE_EPOCH), and the new
/// primary's writes and destage land on the backing store.
#[test]
fn a_replica_takes_the_device_over_and_fences_the_old_primary() {
    let dir = TempDir::new("cdev-takeover");
    let path = dir.path.clone();
    run_io(move || {
        let on_replica = Vssds::new();
        let replica_addr = serve_vssds(&on_replica);
        let c = primary_config(&path, replica_addr, 2);
        let served = replica_vssd(&path.join("replica"), &c, open_dev);
        on_replica.insert(REPLICA, served.clone());
        let create = OpenOptions {
            create: true,
            backing_bytes: BACKING_BYTES,
        };
        let old = Device::open_with(&c, create, &peers()).unwrap();
        assert_eq!(stat(&old, "replicas.members"), 2);
        let epoch = stat(&old, "replicas.epoch");
        let d1 = data(0, 4 * LINE, 1);
        old.write(0, &d1).unwrap();
        old.destage_all().unwrap();
        // Dirty, partial lines, and an overwrite of destaged lines: acknowledged on
        // both members, COMMITs possibly still lazy.
        let d2 = data(LINE + 512, 2 * LINE, 2);
        old.write(LINE + 512, &d2).unwrap();
        let d3 = data(10 * LINE, 3 * LINE, 3);
        old.write(10 * LINE, &d3).unwrap();
        assert!(old.dirty_lines() >= 5);
        // Line 0 is in the old primary's RAM tier: fenced, it must not serve it.
        read(&old, 0, LINE);
        assert!(stat(&old, "requests.ram_hits") > 0);
        // The old primary's vSSD stays reachable (its cvad serves it).
        let on_old = Vssds::new();
        let old_addr = serve_vssds(&on_old);
        on_old.insert(PRIMARY, old.vssd());
        // The replica's cvad takes over with the vSSD it serves (and goes on
        // serving to the old primary).
        let t = takeover_config(&path, old_addr);
        let new = Device::takeover(&t, 1, served.clone(), &peers()).unwrap();
        assert!(stat(&new, "replicas.epoch") > epoch);
        assert_eq!(
            stat(&new, "replicas.members"),
            2,
            "the old primary's vSSD kept"
        );
        let mut want = d1.clone();
        want[(LINE + 512) as usize..][..d2.len()].copy_from_slice(&d2);
        assert!(read(&new, 0, 4 * LINE) == want);
        assert!(read(&new, 10 * LINE, 3 * LINE) == d3);
        // The old primary is fenced: it serves no read (its cache may be stale
        // now), and nothing it writes is acknowledged.
        let mut buf = vec![0; LINE as usize];
        let e = old.read(0, &mut buf).unwrap_err();
        assert_eq!(e.status(), Status::StaleEpoch, "{e}");
        let e = old.write(20 * LINE, &data(20 * LINE, LINE, 9)).unwrap_err();
        assert_eq!(e.status(), Status::StaleEpoch, "{e}");
        // The new primary writes, destages, and the backing store has it all.
        let d4 = data(2 * LINE, 512, 4);
        new.write(2 * LINE, &d4).unwrap();
        want[(2 * LINE) as usize..][..d4.len()].copy_from_slice(&d4);
        new.destage_all().unwrap();
        assert_eq!(new.dirty_lines(), 0);
        let backing = std::fs::read(path.join("backing")).unwrap();
        assert!(backing[..(4 * LINE) as usize] == want[..]);
        assert!(backing[(10 * LINE) as usize..][..d3.len()] == d3[..]);
        new.close().unwrap();
        let _ = old.close();
        served.close();
    });
}

/// The old primary is gone (nothing answers at its address): the replica takes over
/// alone, and every write the old primary acknowledged is there.
#[test]
fn a_replica_takes_the_device_over_from_a_primary_that_is_gone() {
    let dir = TempDir::new("cdev-takeover-gone");
    let path = dir.path.clone();
    run_io(move || {
        let on_replica = Vssds::new();
        let replica_addr = serve_vssds(&on_replica);
        let c = primary_config(&path, replica_addr, 2);
        let served = replica_vssd(&path.join("replica"), &c, open_dev);
        on_replica.insert(REPLICA, served.clone());
        let create = OpenOptions {
            create: true,
            backing_bytes: BACKING_BYTES,
        };
        let old = Device::open_with(&c, create, &peers()).unwrap();
        let d = data(3 * LINE + 1024, 5 * LINE, 5);
        old.write(3 * LINE + 1024, &d).unwrap();
        // The replica's cvad stops serving its vSSD to the old primary and takes
        // over.
        on_replica.remove(REPLICA);
        let t = takeover_config(&path, dead_addr());
        let new = Device::takeover(&t, 1, served.clone(), &peers()).unwrap();
        assert_eq!(stat(&new, "replicas.members"), 1);
        assert!(read(&new, 3 * LINE + 1024, 5 * LINE) == d);
        // The old primary finds too few replicas: it acknowledges nothing.
        assert!(old.write(0, &data(0, LINE, 6)).is_err());
        new.destage_all().unwrap();
        let backing = std::fs::read(path.join("backing")).unwrap();
        assert!(backing[(3 * LINE + 1024) as usize..][..d.len()] == d[..]);
        new.close().unwrap();
        let _ = old.close();
        served.close();
    });
}

/// A takeover that names the local member among the replicas is refused.
#[test]
fn a_takeover_naming_its_own_member_twice_is_refused() {
    let dir = TempDir::new("cdev-takeover-bad");
    let path = dir.path.clone();
    run_io(move || {
        let mut t = takeover_config(&path, dead_addr());
        t.replicas[0].member = 1;
        let replica = replica_vssd(&path.join("replica"), &t, open_dev);
        let e = Device::takeover(&t, 1, replica.clone(), &peers())
            .err()
            .unwrap();
        assert_eq!(e.status(), Status::InvalidArgument, "{e}");
        replica.close();
    });
}

/// The primary lost its replica and went on alone at a newer epoch (min_replicas 1):
/// the replica is stale, and a takeover from it, reaching the old primary's vSSD,
/// is refused (it would lose the writes acknowledged since); the write is kept.
#[test]
fn a_takeover_from_a_stale_replica_is_refused() {
    let dir = TempDir::new("cdev-takeover-stale");
    let path = dir.path.clone();
    run_io(move || {
        let on_replica = Vssds::new();
        let replica_addr = serve_vssds(&on_replica);
        let c = primary_config(&path, replica_addr, 1);
        let served = replica_vssd(&path.join("replica"), &c, open_dev);
        on_replica.insert(REPLICA, served.clone());
        let create = OpenOptions {
            create: true,
            backing_bytes: BACKING_BYTES,
        };
        let old = Device::open_with(&c, create, &peers()).unwrap();
        old.write(0, &data(0, LINE, 1)).unwrap();
        // The replica's vSSD goes away (its cvad restarts, say).
        on_replica.remove(REPLICA);
        served.close();
        // Acknowledged by the old primary alone, at a newer epoch.
        let late = data(0, LINE, 2);
        old.write(0, &late).unwrap();
        assert_eq!(stat(&old, "replicas.members"), 1);
        let on_old = Vssds::new();
        let old_addr = serve_vssds(&on_old);
        on_old.insert(PRIMARY, old.vssd());
        let t = takeover_config(&path, old_addr);
        let served = Vssd::open(open_dev(&t.vssd), Some(&t.name), Options::default())
            .unwrap()
            .0;
        let e = Device::takeover(&t, 1, served.clone(), &peers())
            .err()
            .unwrap();
        assert_eq!(e.status(), Status::InvalidArgument, "{e}");
        assert!(
            e.to_string().contains("not a member of the newest epoch"),
            "{e}"
        );
        served.close();
        // Recovery fences before it decides, so the refused takeover fenced the old
        // primary too; opened again (recovery on its own vSSD), it serves its write.
        let mut buf = vec![0; LINE as usize];
        let e = old.read(0, &mut buf).unwrap_err();
        assert_eq!(e.status(), Status::StaleEpoch, "{e}");
        let _ = old.close();
        let old = Device::open_with(&c, OpenOptions::default(), &peers()).unwrap();
        assert!(read(&old, 0, LINE) == late);
        old.close().unwrap();
    });
}
