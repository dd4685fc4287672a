//! A device with a replica vSSD on a peer, over real loopback rpc (dtm's
//! ReplicaService serving it), on real files.

mod common;
#[path = "../../dtm/tests/support/mod.rs"]
mod support;

use std::path::Path;

use cdev::{
    CacheMode, Device, DeviceConfig, Extent, OpenOptions, ReplicaConfig, ReplicaLoss, Zeroing,
};
use common::dev::{data, replica_vssd, stat};
use dtm::Vssds;
use support::{TempDir, open_dev, run_io, serve_vssds};

const LINE: u64 = 4096;
const BACKING_BYTES: u64 = 4 << 20;
const REPLICA: &str = "dev0-r1";

fn config(dir: &Path, peer: std::net::SocketAddr) -> DeviceConfig {
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
        min_replicas: 2,
        replica_loss: ReplicaLoss::Degrade,
        destage_high_pct: 90,
        destage_low_pct: 10,
        seq_cutoff_bytes: 0,
        ram_cache_bytes: cdev::ramcache::RAM_CACHE_BYTES_DEFAULT,
    }
}

#[test]
fn writes_land_on_the_peer_replica_and_destage_cleans_it_there() {
    let dir = TempDir::new("cdev-replica");
    let path = dir.path.clone();
    run_io(move || {
        let vssds = Vssds::new();
        let addr = serve_vssds(&vssds);
        let c = config(&path, addr);
        let served = replica_vssd(&path.join("replica"), &c, open_dev);
        vssds.insert(REPLICA, served.clone());
        let peers = rpc::ClientConfig {
            name: "cdev-test".into(),
            call_timeout: std::time::Duration::from_secs(10),
            ..rpc::ClientConfig::default()
        };
        let create = OpenOptions {
            create: true,
            backing_bytes: BACKING_BYTES,
        };
        let dev = Device::open_with(&c, create, &peers).unwrap();
        assert_eq!(stat(&dev, "replicas.members"), 2);
        let d = data(LINE + 512, 3 * LINE, 1);
        dev.write(LINE + 512, &d).unwrap();
        dev.flush().unwrap();
        // Lines 1..=4 dirty on the peer's replica too, at the primary's versions.
        let dirty: Vec<u64> = served.dirty_lines().iter().map(|&(l, _)| l).collect();
        assert_eq!(dirty, vec![1, 2, 3, 4]);
        assert_eq!(dev.dirty_lines(), 4);
        dev.destage_all().unwrap();
        assert_eq!(served.dirty_count(), 0, "cleaned on the replica too");
        let mut buf = vec![0; d.len()];
        dev.read(LINE + 512, &mut buf).unwrap();
        assert!(buf == d);
        // Dirty data again, then closed and reopened with the peer: read back.
        let e = data(8 * LINE, 2 * LINE, 2);
        dev.write(8 * LINE, &e).unwrap();
        dev.close().unwrap();
        let dev = Device::open(&c, OpenOptions::default()).unwrap();
        assert_eq!(dev.dirty_lines(), 2);
        let mut buf = vec![0; e.len()];
        dev.read(8 * LINE, &mut buf).unwrap();
        assert!(buf == e);
        dev.close().unwrap();
        served.close();
    });
}

#[test]
fn a_lost_peer_replica_moves_the_device_to_a_new_epoch_under_degrade() {
    let dir = TempDir::new("cdev-replica-lost");
    let path = dir.path.clone();
    run_io(move || {
        let vssds = Vssds::new();
        let addr = serve_vssds(&vssds);
        let mut c = config(&path, addr);
        c.min_replicas = 1;
        let served = replica_vssd(&path.join("replica"), &c, open_dev);
        vssds.insert(REPLICA, served.clone());
        let dev = Device::open(
            &c,
            OpenOptions {
                create: true,
                backing_bytes: BACKING_BYTES,
            },
        )
        .unwrap();
        let epoch = stat(&dev, "replicas.epoch");
        dev.write(0, &data(0, LINE, 1)).unwrap();
        // The peer's vSSD goes away: the next write loses the member, epoch + 1.
        served.close();
        vssds.remove(REPLICA);
        let d = data(0, LINE, 2);
        dev.write(0, &d).unwrap();
        assert_eq!(stat(&dev, "replicas.members"), 1);
        assert!(stat(&dev, "replicas.epoch") > epoch);
        let mut buf = vec![0; d.len()];
        dev.read(0, &mut buf).unwrap();
        assert!(buf == d);
        dev.close().unwrap();
    });
}

#[test]
fn write_zeroes_drops_the_lines_on_every_replica_and_punches_the_backing_store() {
    let dir = TempDir::new("cdev-replica-zero");
    let path = dir.path.clone();
    run_io(move || {
        let vssds = Vssds::new();
        let addr = serve_vssds(&vssds);
        let c = config(&path, addr);
        let served = replica_vssd(&path.join("replica"), &c, open_dev);
        vssds.insert(REPLICA, served.clone());
        let peers = rpc::ClientConfig {
            name: "cdev-test".into(),
            call_timeout: std::time::Duration::from_secs(10),
            ..rpc::ClientConfig::default()
        };
        let create = OpenOptions {
            create: true,
            backing_bytes: BACKING_BYTES,
        };
        let dev = Device::open_with(&c, create, &peers).unwrap();
        // Lines 0..8: 0..4 destaged (clean, in the backing store), 4..8 dirty.
        let d = data(0, 8 * LINE, 3);
        dev.write(0, &d[..4 * LINE as usize]).unwrap();
        dev.destage_all().unwrap();
        dev.write(4 * LINE, &d[4 * LINE as usize..]).unwrap();
        // The peer's COMMITs are queued: the flush waits for them.
        dev.flush().unwrap();
        assert_eq!(served.dirty_count(), 4);
        let whole = |len| vec![Extent { len, hole: false }];
        assert_eq!(
            dev.block_status(0, 8 * LINE, false).unwrap(),
            whole(8 * LINE)
        );
        // Fast only: a range not in whole lines is refused, nothing changed.
        assert!(!dev.write_zeroes(512, 2 * LINE, Zeroing::FastOnly).unwrap());
        assert_eq!(served.dirty_count(), 4);
        // Lines 2..6 zeroed fast: gone from both replicas, punched in the backing
        // store; the head and tail lines keep their bytes.
        let written = stat(&dev, "blocks.client_written");
        assert!(
            dev.write_zeroes(2 * LINE, 4 * LINE, Zeroing::FastOnly)
                .unwrap()
        );
        assert_eq!(
            stat(&dev, "blocks.client_written") - written,
            4 * LINE / 512
        );
        let dirty: Vec<u64> = served.dirty_lines().iter().map(|&(l, _)| l).collect();
        assert_eq!(dirty, vec![6, 7]);
        assert!((2..6).all(|l| served.lookup(l).is_none() && dev.vssd().lookup(l).is_none()));
        let holes = [
            Extent {
                len: 2 * LINE,
                hole: false,
            },
            Extent {
                len: 4 * LINE,
                hole: true,
            },
            Extent {
                len: 2 * LINE,
                hole: false,
            },
        ];
        assert_eq!(dev.block_status(0, 8 * LINE, false).unwrap(), holes);
        assert_eq!(dev.block_status(0, 8 * LINE, true).unwrap(), holes[..1]);
        let mut want = d.clone();
        want[2 * LINE as usize..6 * LINE as usize].fill(0);
        let mut buf = vec![0xff; want.len()];
        dev.read(0, &mut buf).unwrap();
        assert!(buf == want);
        // The read cached the zeroed lines (clean): data now, as any cached line.
        assert_eq!(
            dev.block_status(0, 8 * LINE, false).unwrap(),
            whole(8 * LINE)
        );
        // A partial line is written (zeroes as data), whole lines punched.
        let written = stat(&dev, "blocks.client_written");
        assert!(
            dev.write_zeroes(7 * LINE - 512, 512, Zeroing::Punch)
                .unwrap()
        );
        assert_eq!(stat(&dev, "blocks.client_written") - written, 1);
        want[7 * LINE as usize - 512..7 * LINE as usize].fill(0);
        dev.close().unwrap();
        let dev = Device::open(&c, OpenOptions::default()).unwrap();
        dev.destage_all().unwrap();
        let mut buf = vec![0xff; want.len()];
        dev.read(0, &mut buf).unwrap();
        assert!(buf == want, "after a reopen and a destage");
        dev.close().unwrap();
        served.close();
    });
}
