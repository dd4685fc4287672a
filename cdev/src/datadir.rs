//! cvad's data dir: one TOML file per cache device under `devices/`, the port file,
//! and the files of the default device. Every configuration read from here (or
//! from an admin request) is checked before it is used or kept; a bad one is
//! refused with what is wrong and where (the file, the key).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::DeviceConfig;

/// The name of the device cvad creates on first start.
pub const DEFAULT_DEVICE: &str = "dev0";
/// The default device's backing file size (sparse).
pub const DEFAULT_BACKING_BYTES: u64 = 1 << 30;
/// The default device's vSSD size.
pub const DEFAULT_VSSD_BYTES: u64 = 256 << 20;
/// Devices one cvad keeps, at most (each is a runtime thread when open).
pub const DEVICES_MAX: usize = 64;
/// Longest device TOML file read.
pub const CONFIG_FILE_BYTES_MAX: u64 = 64 * 1024;
/// The file, in the data dir, where cvad writes the port it listens on.
pub const PORT_FILE: &str = "cvad.port";
const DEVICES_DIR: &str = "devices";

const _: () = assert!(DEFAULT_VSSD_BYTES < DEFAULT_BACKING_BYTES);
// The device list fits one DEVICE_LIST reply.
const _: () = assert!(DEVICES_MAX <= rpc::limits::DEVICES_PER_LIST_MAX);

/// A configuration refused, or the data dir failing.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// `where_` is the file (or the request) and `key` the setting that is wrong.
    #[error("{where_}: {key}: {why}")]
    BadConfig {
        where_: String,
        key: String,
        why: String,
    },
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DataDirError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError {
        let path = path.to_path_buf();
        move |source| DataDirError::Io { op, path, source }
    }
}

/// A configuration error at `where_`, key `key`.
pub fn bad(where_: &str, key: &str, why: impl Into<String>) -> DataDirError {
    DataDirError::BadConfig {
        where_: where_.to_string(),
        key: key.to_string(),
        why: why.into(),
    }
}

/// Parses a TOML text of `T` (unknown keys refused by its serde attributes), naming
/// the key and line toml found wrong.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    where_: &str,
    text: &str,
) -> Result<T, DataDirError> {
    toml::from_str(text).map_err(|e| {
        // Lines are numbered from 1: the newlines before the span, plus one.
        let at = match e.span() {
            Some(span) => {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let newlines = before.iter().filter(|&&b| b == b'\n').count();
                format!("line {}", newlines + 1)
            }
            None => "(whole file)".to_string(),
        };
        bad(where_, &at, e.message().trim().to_string())
    })
}

/// Checks what serde cannot: names, sizes, ranges and their relations.
pub fn check_device(where_: &str, c: &DeviceConfig) -> Result<(), DataDirError> {
    check_name(where_, "name", &c.name)?;
    if c.backing.as_os_str().is_empty() {
        return Err(bad(where_, "backing", "a path is needed"));
    }
    if c.vssd.as_os_str().is_empty() {
        return Err(bad(where_, "vssd", "a path is needed"));
    }
    if c.vssd == c.backing {
        return Err(bad(where_, "vssd", "the vSSD cannot be the backing store"));
    }
    if !c.line_size.is_power_of_two() || !(4096..=65536).contains(&c.line_size) {
        let why = format!("{} is not a power of two in 4096..=65536", c.line_size);
        return Err(bad(where_, "line_size", why));
    }
    if c.vssd_bytes < 64 * u64::from(c.line_size) {
        let why = format!("{} bytes hold fewer than 64 lines", c.vssd_bytes);
        return Err(bad(where_, "vssd_bytes", why));
    }
    check_watermarks(where_, c.destage_high_pct, c.destage_low_pct)?;
    if let Some(why) = crate::ramcache::check_bytes(c.ram_cache_bytes, c.line_size) {
        return Err(bad(where_, "ram_cache_bytes", why));
    }
    let members = 1 + c.replicas.len();
    if !(1..=members).contains(&c.min_replicas) {
        let why = format!(
            "{} is not in 1..={members} (the primary and its replicas)",
            c.min_replicas
        );
        return Err(bad(where_, "min_replicas", why));
    }
    let mut ids = vec![c.local_member];
    for (i, r) in c.replicas.iter().enumerate() {
        check_name(where_, &format!("replicas[{i}].vssd"), &r.vssd)?;
        if ids.contains(&r.member) {
            let why = format!(
                "member id {} is used twice (the local vSSD is {})",
                r.member, c.local_member
            );
            return Err(bad(where_, &format!("replicas[{i}].member"), why));
        }
        ids.push(r.member);
    }
    Ok(())
}

/// Destage watermarks: low < high <= 100.
pub fn check_watermarks(where_: &str, high: u8, low: u8) -> Result<(), DataDirError> {
    if high > 100 || high == 0 {
        return Err(bad(
            where_,
            "destage_high_pct",
            format!("{high} is not in 1..=100"),
        ));
    }
    if low >= high {
        let why = format!("{low} is not below destage_high_pct ({high})");
        return Err(bad(where_, "destage_low_pct", why));
    }
    Ok(())
}

/// A PROTOCOL.md name: 1..=64 bytes of printable ASCII, no space; no path
/// separator or leading dot either (it names a file here).
pub fn check_name(where_: &str, key: &str, name: &str) -> Result<(), DataDirError> {
    let printable = name.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if name.is_empty() || name.len() > rpc::limits::NAME_LEN_MAX || !printable {
        let why = format!("{name:?} is not 1..=64 printable ASCII bytes without spaces");
        return Err(bad(where_, key, why));
    }
    if name.contains('/') || name.starts_with('.') {
        return Err(bad(
            where_,
            key,
            format!("{name:?} holds '/' or starts with '.'"),
        ));
    }
    Ok(())
}

/// The data dir of one cvad.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// Absolute: the device files name paths under it, whatever the working dir.
    root: PathBuf,
    /// It had no `devices/` before this open: the first start.
    first_start: bool,
}

impl DataDir {
    /// Opens (creating it if missing) the data dir at `root`.
    pub fn open(root: &Path) -> Result<DataDir, DataDirError> {
        let devices = root.join(DEVICES_DIR);
        let first_start = !devices.exists();
        fs::create_dir_all(&devices).map_err(DataDirError::io("create", &devices))?;
        let root = fs::canonicalize(root).map_err(DataDirError::io("canonicalize", root))?;
        Ok(DataDir { root, first_start })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where device `name`'s TOML lives.
    pub fn device_file(&self, name: &str) -> PathBuf {
        self.root.join(DEVICES_DIR).join(format!("{name}.toml"))
    }

    /// Every device configuration kept here, checked, in name order. One bad file
    /// refuses them all: a server must not start with a device it misreads.
    pub fn load_devices(&self) -> Result<Vec<DeviceConfig>, DataDirError> {
        let dir = self.root.join(DEVICES_DIR);
        let mut paths = Vec::new();
        for entry in fs::read_dir(&dir).map_err(DataDirError::io("read dir", &dir))? {
            let path = entry.map_err(DataDirError::io("read dir", &dir))?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                paths.push(path);
            }
            if paths.len() > DEVICES_MAX {
                let why = format!("more than DEVICES_MAX ({DEVICES_MAX}) device files");
                return Err(bad(&dir.display().to_string(), "(files)", why));
            }
        }
        paths.sort();
        let mut configs = Vec::with_capacity(paths.len());
        for path in paths {
            let where_ = path.display().to_string();
            let text = read_bounded(&path)?;
            let config: DeviceConfig = parse_toml(&where_, &text)?;
            check_device(&where_, &config)?;
            if path.file_stem().is_none_or(|s| s != config.name.as_str()) {
                let why = format!("{:?} does not match the file's name", config.name);
                return Err(bad(&where_, "name", why));
            }
            configs.push(config);
        }
        Ok(configs)
    }

    /// Writes `config` as its device's file (checked first; atomically: a crash
    /// leaves the old file or the new one).
    pub fn save_device(&self, config: &DeviceConfig) -> Result<(), DataDirError> {
        let path = self.device_file(&config.name);
        check_device(&path.display().to_string(), config)?;
        let text = toml::to_string_pretty(config)
            .map_err(|e| bad(&path.display().to_string(), "(all)", e.to_string()))?;
        write_atomic(&path, text.as_bytes())
    }

    /// Removes device `name`'s file.
    pub fn remove_device(&self, name: &str) -> Result<(), DataDirError> {
        let path = self.device_file(name);
        fs::remove_file(&path).map_err(DataDirError::io("remove", &path))
    }

    /// The default device's configuration: files in the data dir.
    pub fn default_device(&self) -> DeviceConfig {
        DeviceConfig::new(
            DEFAULT_DEVICE,
            self.root.join(format!("{DEFAULT_DEVICE}.backing")),
            self.root.join(format!("{DEFAULT_DEVICE}.vssd")),
            DEFAULT_VSSD_BYTES,
        )
    }

    /// Creates the default device on first start: its sparse backing file and its
    /// TOML. Returns whether it did (after the first start the devices are the
    /// operator's: a deleted dev0 stays deleted).
    pub fn ensure_default_device(&self) -> Result<bool, DataDirError> {
        if !self.first_start {
            return Ok(false);
        }
        let config = self.default_device();
        create_sparse(&config.backing, DEFAULT_BACKING_BYTES)?;
        self.save_device(&config)?;
        Ok(true)
    }

    /// Writes the port file (atomically: a reader never sees half of it).
    pub fn write_port(&self, port: u16) -> Result<(), DataDirError> {
        write_atomic(&self.root.join(PORT_FILE), format!("{port}\n").as_bytes())
    }
}

/// A sparse file of `bytes`, unless one exists already.
pub fn create_sparse(path: &Path, bytes: u64) -> Result<(), DataDirError> {
    if path.exists() {
        return Ok(());
    }
    let f = fs::File::create_new(path).map_err(DataDirError::io("create", path))?;
    f.set_len(bytes)
        .map_err(DataDirError::io("set_len", path))?;
    f.sync_all().map_err(DataDirError::io("fsync", path))
}

/// A file's text, refusing one over CONFIG_FILE_BYTES_MAX.
pub fn read_bounded(path: &Path) -> Result<String, DataDirError> {
    String::from_utf8(read_bytes_bounded(path)?)
        .map_err(|e| bad(&path.display().to_string(), "(file)", e.to_string()))
}

/// A file's bytes, refusing one over CONFIG_FILE_BYTES_MAX.
pub fn read_bytes_bounded(path: &Path) -> Result<Vec<u8>, DataDirError> {
    let len = fs::metadata(path)
        .map_err(DataDirError::io("stat", path))?
        .len();
    if len > CONFIG_FILE_BYTES_MAX {
        let why = format!("{len} bytes, over CONFIG_FILE_BYTES_MAX ({CONFIG_FILE_BYTES_MAX})");
        return Err(bad(&path.display().to_string(), "(file)", why));
    }
    fs::read(path).map_err(DataDirError::io("read", path))
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(DataDirError::io("create", &tmp))?;
    f.write_all(bytes)
        .map_err(DataDirError::io("write", &tmp))?;
    f.sync_all().map_err(DataDirError::io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(DataDirError::io("rename", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> DeviceConfig {
        DeviceConfig::new("d1", "/b".into(), "/v".into(), 64 << 20)
    }

    /// A change that makes a good configuration bad.
    type Spoil = fn(&mut DeviceConfig);

    /// The key a refusal names.
    fn key_of(e: DataDirError) -> String {
        match e {
            DataDirError::BadConfig { key, .. } => key,
            other => panic!("not a configuration refusal: {other}"),
        }
    }

    #[test]
    fn each_bad_setting_is_refused_by_its_key() {
        check_device("t", &good()).unwrap();
        let cases: [(&str, Spoil); 11] = [
            ("name", |c| c.name = "a b".into()),
            ("name", |c| c.name = "../x".into()),
            ("vssd", |c| c.vssd = c.backing.clone()),
            ("line_size", |c| c.line_size = 3000),
            ("line_size", |c| c.line_size = 128 * 1024),
            ("vssd_bytes", |c| c.vssd_bytes = 4096),
            ("destage_low_pct", |c| {
                c.destage_low_pct = c.destage_high_pct
            }),
            ("destage_high_pct", |c| c.destage_high_pct = 101),
            ("min_replicas", |c| c.min_replicas = 2),
            ("ram_cache_bytes", |c| c.ram_cache_bytes = 512),
            ("ram_cache_bytes", |c| {
                c.ram_cache_bytes = crate::ramcache::RAM_CACHE_BYTES_MAX + 1
            }),
        ];
        for (key, spoil) in cases {
            let mut c = good();
            spoil(&mut c);
            assert_eq!(key_of(check_device("t", &c).unwrap_err()), key);
        }
    }

    #[test]
    fn replicas_need_distinct_member_ids() {
        let mut c = good();
        let r = crate::config::ReplicaConfig {
            peer: "127.0.0.1:1".parse().unwrap(),
            vssd: "r1".into(),
            member: 0,
        };
        c.replicas.push(r.clone());
        assert_eq!(
            key_of(check_device("t", &c).unwrap_err()),
            "replicas[0].member"
        );
        c.replicas[0].member = 1;
        c.min_replicas = 2;
        check_device("t", &c).unwrap();
    }

    #[test]
    fn a_toml_error_names_its_line() {
        let text = "name = \"d1\"\nbacking = \"/b\"\nvssd = \"/v\"\nvssd_bytes = 1\nsize = 3\n";
        let e = parse_toml::<DeviceConfig>("f.toml", text).unwrap_err();
        let shown = e.to_string();
        assert!(shown.starts_with("f.toml: line 5:"), "{shown}");
        assert!(shown.contains("size"), "{shown}");
    }

    #[test]
    fn the_default_device_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        assert!(d.ensure_default_device().unwrap());
        let configs = d.load_devices().unwrap();
        assert_eq!(configs, [d.default_device()]);
        // Not the first start any more: a deleted dev0 stays deleted.
        d.remove_device(DEFAULT_DEVICE).unwrap();
        let again = DataDir::open(dir.path()).unwrap();
        assert!(!again.ensure_default_device().unwrap());
        assert!(again.load_devices().unwrap().is_empty());
    }
}
