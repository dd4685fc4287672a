//! `cdev`: the cache device manager and the `cvad` server: sessions, the client
//! operations (OPEN, READ, WRITE, FLUSH, DISCARD, CLOSE, STAT), cache modes, destage.
//!
//! Renders the seed's cdev.c, the only module that creates tasks of its own. It must
//! never lose an acknowledged write.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod admin;
mod backing;
pub mod config;
pub mod datadir;
pub mod device;
pub mod devices;
pub mod error;
mod gate;
mod latency;
pub mod nbd;
pub mod nbd_server;
pub mod ramcache;
pub mod replicas;
pub mod server;
pub mod service;

pub use config::{CacheMode, DeviceConfig, DeviceSettings, ReplicaConfig, ReplicaLoss};
pub use device::{
    BLOCK_SIZE, DESTAGE_RUNS_YIELDING, Device, DeviceInfo, Extent, IO_LEN_MAX, OpenOptions,
    Recovered, Zeroing, vssd_format_params,
};
pub use error::CdevError;
pub use server::{Cvad, CvadConfig, CvadError, ServerSettings};
