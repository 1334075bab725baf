//! Writing files so that a crash or a power loss leaves either the old
//! content or the new, never a mix: the one helper behind the manifest, the
//! segments and the alerting state.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// The temporary name `path` is written under: `<name>.tmp` beside it
/// (start-up removes leftovers of this form).
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` atomically: `write` fills a new temporary file
/// ([`temp_path`]), which is then fsynced, renamed over `path`, and the
/// directory fsynced. Before the rename, any failure removes the temporary
/// file and leaves `path` as it was; `io_err` turns the helper's own I/O
/// errors into the caller's. A failed directory fsync is returned with the
/// new file already in place: the caller decides whether to remove it (a
/// segment nothing lists yet) or not (a manifest).
pub fn write_atomic<T, E>(
    path: &Path,
    io_err: impl Fn(io::Error) -> E,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp).map_err(&io_err)?;
        let out = write(&mut file)?;
        file.sync_all().map_err(&io_err)?;
        drop(file);
        fs::rename(&tmp, path).map_err(&io_err)?;
        Ok(out)
    })();
    match written {
        Ok(out) => {
            sync_dir(dir).map_err(&io_err)?;
            Ok(out)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Fsyncs a directory, so that the entries created, renamed or removed in
/// it survive a power loss.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents below `root`, fsyncing the parent
/// of each folder created so that the new entries survive a power loss.
pub fn create_dir_durable(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && parent != root
        && parent.starts_with(root)
    {
        create_dir_durable(root, parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_write_replaces_the_file_whole_or_not_at_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, |e| e, |f| f.write_all(b"old")).expect("write");
        assert_eq!(fs::read(&path).expect("read"), b"old");
        assert_eq!(temp_path(&path), dir.path().join("state.json.tmp"));

        // A writer that fails halfway leaves the old file and no temporary.
        let failed = write_atomic(
            &path,
            |e| e.to_string(),
            |f| {
                f.write_all(b"half").map_err(|e| e.to_string())?;
                Err::<(), _>("encoder failed".to_string())
            },
        );
        assert_eq!(failed, Err("encoder failed".to_string()));
        assert_eq!(fs::read(&path).expect("read"), b"old");
        assert!(!temp_path(&path).exists());

        let n = write_atomic(&path, |e| e, |f| f.write_all(b"new").map(|()| 3)).expect("write");
        assert_eq!((n, fs::read(&path).expect("read")), (3, b"new".to_vec()));
    }

    #[test]
    fn a_missing_directory_is_an_error_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent/state.json");
        let err = write_atomic(&path, |e| e, |f| f.write_all(b"x")).expect_err("no directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!dir.path().join("absent").exists());
    }

    #[test]
    fn nested_directories_are_created_below_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("segments/public/t");
        create_dir_durable(dir.path(), &deep).expect("create");
        assert!(deep.is_dir());
        create_dir_durable(dir.path(), &deep).expect("again");
    }
}
