//! The write path: validation, the WAL, the buffer, and the observers that
//! see each acknowledged write.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;

use super::{
    Chunk, Rejection, SYSTEM_DATABASE, Seen, State, Storage, StorageError, TableSnapshot, TableState, WriteObserver,
    WriteOutcome,
};
use crate::batch::{batch_bytes, blocks_to_batch, ts_range};
use crate::schema::ColumnKind;
use crate::wal::codec;
use crate::write::{
    TableWrite, WriteError, WriteLimits, block_columns, check_block_shape, check_database_name, check_table_name,
    series_hash,
};

impl Storage {
    /// Validates, logs durably and buffers `writes` into database `db`.
    ///
    /// Items (series blocks) are accepted or rejected one by one; the
    /// accepted ones are committed in one WAL record and are durable and
    /// visible to queries when this returns.
    pub async fn write(&self, db: &str, writes: Vec<TableWrite>) -> Result<WriteOutcome, StorageError> {
        check_database_name(db).map_err(StorageError::Database)?;
        self.write_to(db, writes).await
    }

    /// Writes into the reserved database [`SYSTEM_DATABASE`] (alert history,
    /// notification log), which clients cannot write to; same durability as
    /// [`Storage::write`].
    pub async fn write_system(&self, writes: Vec<TableWrite>) -> Result<WriteOutcome, StorageError> {
        self.write_to(SYSTEM_DATABASE, writes).await
    }

    async fn write_to(&self, db: &str, writes: Vec<TableWrite>) -> Result<WriteOutcome, StorageError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(StorageError::ShuttingDown);
        }
        self.writable("writes")?;
        if let Some(why) = self.fenced() {
            return Err(StorageError::Fenced(why));
        }
        {
            let st = self.state.read();
            let buffered = st.buffer_bytes + st.persisting_bytes;
            if buffered > self.config.max_buffer_bytes {
                crate::refusals::refused("max_buffer_mb");
                return Err(StorageError::BufferFull { buffered, limit: self.config.max_buffer_bytes });
            }
        }
        let (writes, mut rejected) = check_shapes(writes, &self.config.limits);
        let gate = self.gate.read().await;
        let (accepted, rejected) = {
            let mut st = self.state.write();
            let (accepted, more) =
                validate(&mut st, db, writes, &self.config.limits, self.clock.unix_secs(), self.last_write());
            rejected.extend(more);
            (accepted, rejected)
        };
        let mut outcome = WriteOutcome { accepted_rows: 0, rejected };
        self.metrics.rejected_items.fetch_add(outcome.rejected.len() as u64, Ordering::Relaxed);
        for r in &outcome.rejected {
            if let Some(limit) = r.error.limit() {
                crate::refusals::refused(limit);
            }
        }
        if accepted.is_empty() {
            return Ok(outcome);
        }
        let mut chunks = Vec::with_capacity(accepted.len());
        for (w, schema) in &accepted {
            let batch = blocks_to_batch(schema, &w.blocks)?;
            let (min_ts, max_ts) = ts_range(&w.blocks);
            outcome.accepted_rows += batch.num_rows() as u64;
            chunks.push(Chunk { batch, min_ts, max_ts });
        }
        let newest: Vec<(RecordBatch, SchemaRef)> =
            chunks.iter().zip(&accepted).map(|(c, (_, schema))| (c.batch.clone(), Arc::clone(schema))).collect();
        let writes: Vec<TableWrite> = accepted.into_iter().map(|(w, _)| w).collect();
        let mut payload = Vec::new();
        codec::encode(db, &writes, &mut payload);
        let wal = self.writable("writes")?;
        let seq = wal.append(&payload)?;
        wal.wait_durable(seq).await?;
        // The lease may have gone while the WAL synced (the process was
        // paused): what is not acknowledged by then is not acknowledged.
        if let Some(why) = self.fenced() {
            return Err(StorageError::Fenced(why));
        }
        let last_wins: Vec<bool> = {
            let mut st = self.state.write();
            apply(&mut st, db, self.clock.monotonic(), writes.iter().map(|w| w.table.as_str()).zip(chunks))?;
            let tables = st.dbs.get(db);
            writes
                .iter()
                .map(|w| {
                    let events = tables.and_then(|t| t.get(&w.table)).is_some_and(|t| t.holds_events());
                    super::keeps_last_write(self.config.deduplicate, db, events)
                })
                .collect()
        };
        for ((w, (batch, schema)), last_wins) in writes.iter().zip(&newest).zip(last_wins) {
            if let Err(e) = self.last.observe(db, &w.table, &w.blocks, batch, schema, last_wins) {
                tracing::warn!(db, table = %w.table, "last-row cache dropped: {e}");
                self.last.invalidate(db, &w.table);
            }
        }
        self.metrics.writes.fetch_add(1, Ordering::Relaxed);
        self.metrics.rows_written.fetch_add(outcome.accepted_rows, Ordering::Relaxed);
        let observers = Arc::clone(&self.observers.read());
        for o in observers.iter() {
            o.written(db, &writes);
        }
        // `object-store-sync`: acknowledged once the bucket holds it too.
        // Waited for outside the gate: a push's checkpoint (which the
        // shipper may be waiting for) and persists go on meanwhile. The
        // write is applied already, as it is durable here and its record
        // stays queued for the bucket until it is taken: refused now, it is
        // still shipped later (its outcome is unknown to the client, as
        // after a timeout).
        drop(gate);
        wal.wait_shipped(seq).await?;
        if let Some(why) = self.fenced() {
            return Err(StorageError::Fenced(why));
        }
        Ok(outcome)
    }

    /// Tells `observer` about every acknowledged write (alerting rules that
    /// evaluate on the ingest path, live tail). It runs on the writer's
    /// task: it must return quickly.
    pub fn add_write_observer(&self, observer: Arc<dyn WriteObserver>) {
        let mut list = self.observers.write();
        let mut next = Vec::clone(&list);
        next.push(observer);
        *list = Arc::new(next);
    }

    /// Runs `between` while no write is in flight, then takes a snapshot of
    /// `db.table`: every write is either in the snapshot or seen by the
    /// observers after `between` returned, never both and never neither.
    /// Live tail uses it to backfill from storage without a gap or a
    /// duplicate at the seam. Writes wait while it runs: `between` must be
    /// quick.
    pub async fn snapshot_between_writes<T>(
        &self,
        db: &str,
        table: &str,
        between: impl FnOnce() -> T,
    ) -> (T, Option<TableSnapshot>) {
        let _gate = self.gate.write().await;
        let out = between();
        (out, self.snapshot(db, table))
    }

    /// Makes sure `db.table` exists with at least `columns` (creating or
    /// extending it), without writing rows; used by SQL `INSERT` to plan
    /// against a table it is about to create.
    pub fn ensure_table(
        &self,
        db: &str,
        table: &str,
        columns: &[(String, ColumnKind)],
    ) -> Result<SchemaRef, WriteError> {
        check_database_name(db)?;
        check_table_name(table)?;
        let mut st = self.state.write();
        check_new_table(&st, db, table, &self.config.limits)?;
        let t = st.dbs.entry(db.to_string()).or_default().entry(table.to_string()).or_default();
        let mut new = Vec::new();
        for (name, kind) in columns {
            crate::write::check_column_name(name)?;
            match t.schema.get(name) {
                Some(existing) if existing != *kind => {
                    return Err(WriteError::KindConflict {
                        table: table.into(),
                        column: name.clone(),
                        existing,
                        new: *kind,
                    });
                }
                Some(_) => {}
                None => new.push((name, *kind)),
            }
        }
        for (name, kind) in new {
            t.add_column(name, kind);
            t.provisional.push(name.clone());
        }
        t.decide_kind();
        Ok(t.arrow_schema())
    }

    /// Removes the columns [`Storage::ensure_table`] added to `db.table` that
    /// no accepted write has used since, and the table itself if nothing is
    /// left of it (an INSERT that created it failed).
    pub fn discard_provisional(&self, db: &str, table: &str) {
        let mut st = self.state.write();
        let Some(tables) = st.dbs.get_mut(db) else { return };
        let Some(t) = tables.get_mut(table) else { return };
        if t.provisional.is_empty() {
            return;
        }
        let gone = std::mem::take(&mut t.provisional);
        t.schema.columns.retain(|c| !gone.contains(&c.name));
        t.arrow = None;
        if t.schema.columns.is_empty() && t.buffer.is_empty() && t.persisting.is_empty() && t.segments.is_empty() {
            tables.remove(table);
            if tables.is_empty() {
                st.dbs.remove(db);
            }
        }
    }
}

/// Refuses a table or database that does not exist yet when there are as
/// many as the limits allow.
fn check_new_table(st: &State, db: &str, table: &str, limits: &WriteLimits) -> Result<(), WriteError> {
    match st.dbs.get(db) {
        Some(tables) if tables.contains_key(table) => return Ok(()),
        Some(_) => {}
        None if st.dbs.len() >= limits.max_databases => {
            return Err(WriteError::TooManyDatabases {
                database: db.to_string(),
                count: st.dbs.len() + 1,
                limit: limits.max_databases,
            });
        }
        None => {}
    }
    let tables: usize = st.dbs.values().map(|t| t.len()).sum();
    if tables >= limits.max_tables {
        return Err(WriteError::TooManyTables {
            table: table.to_string(),
            count: tables + 1,
            limit: limits.max_tables,
        });
    }
    Ok(())
}

/// Checks each block on its own (table and column names, lengths, value
/// sizes, column count): nothing here needs the state, so writers run it
/// before taking the lock, in time linear in the request.
pub(crate) fn check_shapes(writes: Vec<TableWrite>, limits: &WriteLimits) -> (Vec<TableWrite>, Vec<Rejection>) {
    let mut ok = Vec::with_capacity(writes.len());
    let mut rejected = Vec::new();
    for mut w in writes {
        if let Err(error) = check_table_name(&w.table) {
            rejected.extend(w.blocks.iter().map(|b| Rejection { item: b.item, error: error.clone() }));
            continue;
        }
        let table = w.table.as_str();
        w.blocks.retain(|b| match check_block_shape(table, b, limits) {
            Ok(()) => true,
            Err(error) => {
                rejected.push(Rejection { item: b.item, error });
                false
            }
        });
        if !w.blocks.is_empty() {
            ok.push(w);
        }
    }
    (ok, rejected)
}

/// Checks each block against its table's schema, extending the schema with
/// the new columns of accepted blocks. Returns the accepted writes with the
/// Arrow schema to build their batch with, and the rejections.
///
/// `last_write` is the partition width when tables keep the last write of
/// a series and time (`StorageConfig::deduplicate`): the partitions where
/// an accepted block may repeat a series and time already written are
/// marked in the table's `dirty_buffer`.
pub(crate) fn validate(
    st: &mut State,
    db: &str,
    writes: Vec<TableWrite>,
    limits: &WriteLimits,
    now_s: u64,
    last_write: Option<i64>,
) -> (Vec<(TableWrite, SchemaRef)>, Vec<Rejection>) {
    let mut accepted = Vec::with_capacity(writes.len());
    let mut rejected = Vec::new();
    for w in writes {
        if let Err(error) = check_new_table(st, db, &w.table, limits) {
            rejected.extend(w.blocks.iter().map(|b| Rejection { item: b.item, error: error.clone() }));
            continue;
        }
        let mut ok_blocks = Vec::with_capacity(w.blocks.len());
        let tables = st.dbs.entry(db.to_string()).or_default();
        let existed = tables.contains_key(&w.table);
        let t = tables.entry(w.table.clone()).or_default();
        for block in w.blocks {
            let result = (|| {
                let mut new_cols = Vec::new();
                let mut retyped = Vec::new();
                for (name, kind) in block_columns(&block) {
                    match (t.schema.get(name), kind) {
                        (Some(existing), kind) if existing == kind => {}
                        (Some(_), kind) if t.provisional.iter().any(|p| p == name) => retyped.push((name, kind)),
                        (Some(ColumnKind::Field(existing)), ColumnKind::Field(new)) => {
                            return Err(WriteError::TypeConflict {
                                table: w.table.clone(),
                                column: name.into(),
                                existing,
                                new,
                            });
                        }
                        (Some(existing), new) => {
                            return Err(WriteError::KindConflict {
                                table: w.table.clone(),
                                column: name.into(),
                                existing,
                                new,
                            });
                        }
                        (None, kind) => new_cols.push((name, kind)),
                    }
                }
                let count = t.schema.columns.len() + new_cols.len() + 1;
                if count > limits.max_columns {
                    return Err(WriteError::TooManyColumns {
                        table: w.table.clone(),
                        count,
                        limit: limits.max_columns,
                    });
                }
                let series = series_hash(block.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                if !t.active.contains_key(&series) && t.active.len() >= limits.max_series_per_table {
                    return Err(WriteError::TooManySeries {
                        table: w.table.clone(),
                        limit: limits.max_series_per_table,
                        window_secs: limits.series_window.as_secs(),
                    });
                }
                for (name, kind) in new_cols {
                    t.add_column(name, kind);
                }
                for (name, kind) in retyped {
                    t.retype_provisional(name, kind);
                }
                t.decide_kind();
                let lww = last_write.filter(|_| super::keeps_last_write(true, db, t.holds_events()));
                note_times(t, series, now_s, &block.timestamps, lww);
                if !t.provisional.is_empty() {
                    t.provisional.retain(|p| block_columns(&block).all(|(name, _)| name != p));
                }
                Ok(())
            })();
            match result {
                Ok(()) => ok_blocks.push(block),
                Err(error) => rejected.push(Rejection { item: block.item, error }),
            }
        }
        if ok_blocks.is_empty() {
            if !existed && t.schema.columns.is_empty() {
                tables.remove(&w.table);
                if tables.is_empty() {
                    st.dbs.remove(db);
                }
            }
            continue;
        }
        let schema = t.arrow_schema();
        accepted.push((TableWrite { table: w.table, blocks: ok_blocks }, schema));
    }
    (accepted, rejected)
}

/// Records that series `series` of `t` was written at `now_s` with
/// `timestamps`; with `last_write` (the partition width), marks the
/// partitions of the rows that may repeat a time the series was written
/// at before (at or before its newest time; every row of a block whose
/// times do not strictly increase) in `t.dirty_buffer`. A series the table
/// does not remember may have rows up to the table's newest time. Nearly
/// every write is in order, and costs one pass over its times.
fn note_times(t: &mut TableState, series: u64, now_s: u64, timestamps: &[i64], last_write: Option<i64>) {
    let table_newest = t.newest_ts;
    let seen = t.active.entry(series).or_insert(Seen { at: now_s, newest: table_newest });
    seen.at = now_s;
    let before = seen.newest;
    let (mut lo, mut hi, mut increasing, mut prev) = (i64::MAX, i64::MIN, true, i64::MIN);
    for &ts in timestamps {
        lo = lo.min(ts);
        hi = hi.max(ts);
        increasing &= ts > prev;
        prev = ts;
    }
    seen.newest = before.max(hi);
    t.newest_ts = table_newest.max(hi);
    let Some(partition_ns) = last_write else { return };
    if increasing && lo > before {
        return;
    }
    let upto = if increasing { before } else { i64::MAX };
    let mut last = None;
    for &ts in timestamps.iter().filter(|&&ts| ts <= upto) {
        let p = ts.div_euclid(partition_ns).saturating_mul(partition_ns);
        if last != Some(p) {
            t.dirty_buffer.insert(p);
            last = Some(p);
        }
    }
}

/// Adds durable chunks to their tables' buffers.
pub(crate) fn apply<'a>(
    st: &mut State,
    db: &str,
    now: Duration,
    chunks: impl Iterator<Item = (&'a str, Chunk)>,
) -> Result<(), ArrowError> {
    let mut added = 0;
    for (table, chunk) in chunks {
        added += batch_bytes(&chunk.batch);
        let t = st.dbs.entry(db.to_string()).or_default().entry(table.to_string()).or_default();
        t.push(chunk)?;
    }
    st.buffer_bytes += added;
    st.oldest_write.get_or_insert(now);
    Ok(())
}
