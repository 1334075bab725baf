//! The engine's persisted state: saved atomically after each round that
//! changed it, loaded (or moved aside when corrupt) at start.

use super::*;

impl AlertEngine {
    // -- persistence -------------------------------------------------------

    pub(super) fn state_path(&self) -> PathBuf {
        self.opts.state_dir.join("state.json")
    }

    pub(super) fn save_if_dirty(&self) -> Result<(), EngineError> {
        if !self.inner.lock().dirty {
            return Ok(());
        }
        self.save()
    }

    /// Writes the state atomically (temporary file, fsync, rename, fsync of
    /// the directory).
    pub fn save(&self) -> Result<(), EngineError> {
        let _one_writer = self.save_lock.lock();
        let started = Instant::now();
        let bytes = {
            let mut inner = self.inner.lock();
            inner.dirty = false;
            let state = PersistedState {
                version: STATE_VERSION,
                instances: inner.rules.values().flat_map(|m| m.values().cloned()).collect(),
                dispatcher: inner.dispatcher.clone(),
                silences: inner.silences.iter().map(|(s, _)| s.clone()).collect(),
                outbox: inner.outbox.values().cloned().collect(),
                next_id: inner.next_id,
            };
            (serde_json::to_vec(&state).map_err(|e| EngineError::BadRequest(e.to_string()))?, state.outbox.len())
        };
        let (bytes, outbox) = bytes;
        let path = self.state_path();
        // The fsyncs block: on a multi-threaded runtime, tell it so that the
        // worker's other tasks move elsewhere meanwhile.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let written = if multi_thread {
            tokio::task::block_in_place(|| write_atomic(&path, &bytes))
        } else {
            write_atomic(&path, &bytes)
        };
        if written.is_ok() {
            self.metrics.outbox_saved.store(outbox as u64, Ordering::Relaxed);
            let micros = started.elapsed().as_micros() as u64;
            self.metrics.state_saves.fetch_add(1, Ordering::Relaxed);
            self.metrics.state_save_micros.fetch_add(micros, Ordering::Relaxed);
            self.metrics.state_save_last_micros.store(micros, Ordering::Relaxed);
            self.metrics.state_bytes.store(bytes.len() as u64, Ordering::Relaxed);
        } else {
            // Not saved: the next round must try again (clearing the flag
            // before writing and not setting it back lost a failed save's
            // changes until something else changed).
            self.inner.lock().dirty = true;
        }
        written.map_err(|source| EngineError::StateIo { path, source })
    }
}

pub(super) fn load_state(dir: &Path) -> Result<PersistedState, EngineError> {
    let path = dir.join("state.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(PersistedState::default()),
        Err(source) => return Err(EngineError::StateIo { path, source }),
    };
    match serde_json::from_slice::<PersistedState>(&bytes) {
        Ok(s) if s.version == STATE_VERSION => Ok(s),
        Ok(s) => Err(EngineError::BadRequest(format!(
            "{} has version {}, this build reads version {STATE_VERSION}",
            path.display(),
            s.version
        ))),
        Err(e) => {
            let aside = dir.join(format!("state.json.corrupt-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
            tracing::error!(
                "alerting state {} is corrupt ({e}); moved to {} and starting with no alert state",
                path.display(),
                aside.display()
            );
            std::fs::rename(&path, &aside).map_err(|source| EngineError::StateIo { path, source })?;
            Ok(PersistedState::default())
        }
    }
}

pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    tocsin_storage::durable::write_atomic(path, |e| e, |f| f.write_all(bytes))
}
