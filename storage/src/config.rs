//! Storage configuration.

use std::path::PathBuf;
use std::time::Duration;

use crate::segment::SegmentOptions;
use crate::wal::FsyncPolicy;
use crate::write::WriteLimits;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Width of a time partition: one segment file per table per partition.
    pub partition: Duration,
    /// Persist the write buffer when it holds this many bytes...
    pub persist_max_bytes: usize,
    /// ...or when its oldest write is this old.
    pub persist_max_age: Duration,
    /// Refuse writes while buffered (and persisting) data exceeds this.
    pub max_buffer_bytes: usize,
    pub segments: SegmentOptions,
    pub limits: WriteLimits,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("tocsin-data"),
            fsync: FsyncPolicy::Always,
            partition: Duration::from_secs(86_400),
            persist_max_bytes: 512 * 1024 * 1024,
            persist_max_age: Duration::from_secs(600),
            max_buffer_bytes: 2 * 1024 * 1024 * 1024,
            segments: SegmentOptions::default(),
            limits: WriteLimits::default(),
        }
    }
}

impl StorageConfig {
    /// Defaults for tests: the given directory, everything else default.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self { data_dir: data_dir.into(), ..Default::default() }
    }
}
