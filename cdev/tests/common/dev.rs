//! Helpers of the tests that drive a `cdev::Device` in process.

use std::path::Path;

use cdev::{Device, DeviceConfig};
use taskio::file::{File, OpenOptions};
use vssd::{Options, Vssd, format};

/// `len` bytes of write `tag` at `offset`: each 8 bytes name the offset and the tag.
pub fn data(offset: u64, len: u64, tag: u64) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| ((offset + i * 8) ^ tag.rotate_left(40)).to_le_bytes())
        .collect()
}

/// The value of STAT counter `name`.
pub fn stat(dev: &Device, name: &str) -> u64 {
    dev.stat()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

/// The replica vSSD file at `path`, formatted as the device's vSSD would be, opened
/// with `open_dev` (the vSSD tests' opener: O_DIRECT where the file system has it).
pub fn replica_vssd(path: &Path, c: &DeviceConfig, open_dev: fn(&Path) -> File) -> Vssd {
    let params = cdev::vssd_format_params(c).unwrap();
    let file = OpenOptions::new()
        .create(true)
        .size(c.vssd_bytes)
        .open(path)
        .unwrap();
    format(&file, &params).unwrap();
    drop(file);
    Vssd::open(open_dev(path), Some(&c.name), Options::default())
        .unwrap()
        .0
}
