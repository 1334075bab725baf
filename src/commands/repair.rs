//! `tocsin repair`: rebuild the manifest from the segments' own metadata
//! (docs/storage.md, "Repair"). The server must be stopped.

use std::path::PathBuf;

use anyhow::Context;
use tocsin_server::config::{FileConfig, Overrides};

#[derive(Debug, clap::Args)]
pub(crate) struct Config {
    /// Data directory to repair [default: ./tocsin-data].
    #[arg(long, env = "TOCSIN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML configuration file of the server (for its data directory and
    /// partition length).
    #[arg(long, env = "TOCSIN_CONFIG")]
    config: Option<PathBuf>,
}

pub(crate) fn run(c: Config) -> anyhow::Result<()> {
    let file = match &c.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let config = file.validate(Overrides { data_dir: c.data_dir, ..Overrides::default() })?;
    let dir = &config.storage.data_dir;
    anyhow::ensure!(dir.is_dir(), "data directory {} does not exist", dir.display());
    let partition_ns = i64::try_from(config.storage.partition.as_nanos()).unwrap_or(i64::MAX);
    let report = tocsin_storage::repair::repair(dir, partition_ns)
        .with_context(|| format!("while repairing {}", dir.display()))?;
    for p in &report.missing {
        println!("missing: {} (listed in the old manifest; its rows are gone)", p.display());
    }
    for (from, to, why) in &report.quarantined {
        println!("quarantined: {} -> {} ({why})", from.display(), to.display());
    }
    if report.already_consistent {
        println!("the manifest lists exactly the segments present: nothing to repair");
        return Ok(());
    }
    if let Some(old) = &report.old_manifest {
        println!("old manifest copied to {}", old.display());
    }
    if report.without_origin > 0 {
        println!(
            "note: {} segment(s) were written by a version that did not record their origin; if WAL files \
             older than them were never deleted, their rows may be replayed twice",
            report.without_origin
        );
    }
    for w in &report.wal_to_replay {
        println!("will replay at start: {}", w.display());
    }
    println!(
        "rebuilt {}: {} table(s), {} segment(s), {} row(s)",
        dir.join(tocsin_storage::manifest::MANIFEST_FILE).display(),
        report.tables,
        report.segments,
        report.rows
    );
    Ok(())
}
