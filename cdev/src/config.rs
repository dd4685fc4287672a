//! A cache device's configuration: what `cvad` keeps in its data dir as TOML (one file
//! per device, unknown keys refused) and what [`crate::device::Device::open`] takes.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the device treats writes and misses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Writes land on every replica vSSD and are acknowledged; destage copies them to
    /// the backing store later.
    #[default]
    WriteBack,
    /// Writes go to the backing store (durable) and into the cache as clean lines.
    WriteThrough,
    /// Writes go to the backing store; the cache drops the lines they cover.
    WriteAround,
    /// The cache is bypassed for reads and writes (lines written are dropped).
    PassThrough,
}

/// What the DTM does when a replica is lost (issue [dtm]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaLoss {
    /// Go on while at least `min_replicas` members acknowledge; epoch + 1.
    #[default]
    Degrade,
    /// While short of replicas, write the backing store synchronously.
    WriteThrough,
}

/// A replica of the device's dirty data on a peer cvad.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    /// The peer cvad's native-protocol address.
    pub peer: SocketAddr,
    /// The name of the replica vSSD on that peer.
    pub vssd: String,
    /// The member id in epochs (unique in the device; the primary's is 0).
    pub member: u64,
}

/// One cache device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device's name (a protocol name: 1..=64 bytes, no spaces).
    pub name: String,
    /// The backing store: a file or block device; its size is the device's size.
    pub backing: PathBuf,
    /// The primary vSSD's file and size.
    pub vssd: PathBuf,
    pub vssd_bytes: u64,
    /// Bytes per cache line: a power of two, 4 KiB..=64 KiB.
    #[serde(default = "default_line_size")]
    pub line_size: u32,
    #[serde(default)]
    pub mode: CacheMode,
    /// Replicas on peers, besides the primary vSSD.
    #[serde(default)]
    pub replicas: Vec<ReplicaConfig>,
    /// The member id of `vssd` in the device's epochs: 0, the primary's, unless this
    /// cvad took the device over on the replica vSSD it held (DEVICE_TAKEOVER).
    #[serde(default, skip_serializing_if = "is_primary")]
    pub local_member: u64,
    /// Members that must acknowledge a write (the primary included).
    #[serde(default = "default_min_replicas")]
    pub min_replicas: usize,
    #[serde(default)]
    pub replica_loss: ReplicaLoss,
    /// Destage starts when this percentage of the vSSD's lines is dirty and stops
    /// below `destage_low_pct`; it also runs when the device is idle.
    #[serde(default = "default_destage_high_pct")]
    pub destage_high_pct: u8,
    #[serde(default = "default_destage_low_pct")]
    pub destage_low_pct: u8,
    /// A sequential read stream longer than this many bytes bypasses the cache
    /// (0: never).
    #[serde(default = "default_seq_cutoff")]
    pub seq_cutoff_bytes: u64,
    /// Bytes of the RAM tier in front of the vSSD (recently read or written lines;
    /// whole lines, rounded down; 0: none): see [`crate::ramcache`].
    #[serde(default = "default_ram_cache_bytes")]
    pub ram_cache_bytes: u64,
}

fn is_primary(member: &u64) -> bool {
    *member == 0
}
fn default_line_size() -> u32 {
    4096
}
fn default_min_replicas() -> usize {
    1
}
fn default_destage_high_pct() -> u8 {
    50
}
fn default_destage_low_pct() -> u8 {
    10
}
fn default_seq_cutoff() -> u64 {
    1 << 20
}
fn default_ram_cache_bytes() -> u64 {
    crate::ramcache::RAM_CACHE_BYTES_DEFAULT
}

impl DeviceConfig {
    /// A device of `name` on `backing`, cached on the vSSD file `vssd` of
    /// `vssd_bytes`, every other setting at its default (what a TOML that names only
    /// these four keys gives).
    pub fn new(name: &str, backing: PathBuf, vssd: PathBuf, vssd_bytes: u64) -> DeviceConfig {
        DeviceConfig {
            name: name.to_string(),
            backing,
            vssd,
            vssd_bytes,
            line_size: default_line_size(),
            mode: CacheMode::default(),
            replicas: Vec::new(),
            local_member: 0,
            min_replicas: default_min_replicas(),
            replica_loss: ReplicaLoss::default(),
            destage_high_pct: default_destage_high_pct(),
            destage_low_pct: default_destage_low_pct(),
            seq_cutoff_bytes: default_seq_cutoff(),
            ram_cache_bytes: default_ram_cache_bytes(),
        }
    }
}

/// The settings DEVICE_SET may change on a running device (a TOML of those alone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSettings {
    pub mode: Option<CacheMode>,
    pub destage_high_pct: Option<u8>,
    pub destage_low_pct: Option<u8>,
    pub seq_cutoff_bytes: Option<u64>,
}

impl DeviceSettings {
    /// The keys of a DEVICE_SET's TOML (this struct's fields).
    pub const KEYS: [&str; 4] = [
        "mode",
        "destage_high_pct",
        "destage_low_pct",
        "seq_cutoff_bytes",
    ];

    /// `config` with these settings applied.
    pub fn applied_to(&self, config: &DeviceConfig) -> DeviceConfig {
        let mut c = config.clone();
        if let Some(m) = self.mode {
            c.mode = m;
        }
        if let Some(h) = self.destage_high_pct {
            c.destage_high_pct = h;
        }
        if let Some(l) = self.destage_low_pct {
            c.destage_low_pct = l;
        }
        if let Some(s) = self.seq_cutoff_bytes {
            c.seq_cutoff_bytes = s;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_keys_are_the_fields() {
        let all = DeviceSettings {
            mode: Some(CacheMode::WriteBack),
            destage_high_pct: Some(1),
            destage_low_pct: Some(0),
            seq_cutoff_bytes: Some(0),
        };
        let table = toml::Table::try_from(all).unwrap();
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        let mut want = DeviceSettings::KEYS.to_vec();
        keys.sort_unstable();
        want.sort_unstable();
        assert_eq!(keys, want);
    }
}
