//! Following a log table: live events, optionally after a backfill of the
//! last few minutes from storage, with no gap and no duplicate at the seam.
//!
//! The seam is exact because the subscription is registered and the storage
//! snapshot taken in one step while no write is in flight
//! ([`Storage::snapshot_between_writes`]): a write that completed before is
//! in the snapshot (and was published before anyone subscribed), a write
//! that completes after is published to the new subscription (the hub
//! observes writes before they release the write gate), and none is both.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimestampNanosecondType};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tocsin_proto::v1::LogEvent;
use tocsin_storage::{Storage, TIME_COLUMN, TableSnapshot};

use crate::tail::{TailFilter, TailHub, TailItem, attributes_from_json};

pub type BatchStream = Pin<Box<dyn Stream<Item = Result<RecordBatch, String>> + Send>>;
pub type ItemStream = Pin<Box<dyn Stream<Item = Result<TailItem, String>> + Send>>;

/// Reads a pinned snapshot of a log table for a backfill: rows with
/// `ts >= from_ns` (and `service` among `services` when given), in time
/// order. The server implements it with the query engine.
pub trait TailBackfill: Send + Sync {
    fn scan(
        &self,
        db: String,
        table: String,
        snapshot: TableSnapshot,
        from_ns: i64,
        services: Vec<String>,
    ) -> BoxFuture<'static, Result<BatchStream, String>>;
}

/// The longest backfill a tail may ask for: it is sorted in memory before it
/// is sent; longer ranges are a job for SQL.
pub const MAX_SINCE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The client asked for more than [`MAX_SINCE`].
    #[error("since {0}s is longer than the {h}h a tail backfills; query older events with SQL", h = MAX_SINCE.as_secs() / 3600)]
    SinceTooLong(u64),
    #[error("this server cannot backfill a tail from storage")]
    NoBackfill,
    /// A filter over the size limits (see [`TailFilter::check`]).
    #[error("{0}")]
    Filter(String),
    #[error("backfill failed: {0}")]
    Backfill(String),
    /// `limits.max_tail_subscribers` tails are open already.
    #[error("{0} tails are open already (limits.max_tail_subscribers); close one or try again later")]
    TooManySubscribers(usize),
}

impl tocsin_storage::errors::Classify for FollowError {
    fn class(&self) -> tocsin_storage::errors::ErrorClass {
        use tocsin_storage::errors::ErrorClass;
        match self {
            FollowError::SinceTooLong(_) | FollowError::Filter(_) => ErrorClass::Invalid,
            FollowError::TooManySubscribers(_) => ErrorClass::Overloaded,
            FollowError::NoBackfill | FollowError::Backfill(_) => ErrorClass::Internal,
        }
    }
}

/// Follows the table `filter` names: first, when `since` is given, the
/// stored events of the last `since` that match, in time order; then live
/// events as they are written.
pub async fn follow(
    hub: &Arc<TailHub>,
    storage: &Storage,
    backfill: Option<&Arc<dyn TailBackfill>>,
    filter: TailFilter,
    capacity: usize,
    since: Option<Duration>,
) -> Result<ItemStream, FollowError> {
    filter.check().map_err(FollowError::Filter)?;
    let limit = hub.max_subscribers();
    if hub.subscriber_count() >= limit {
        tocsin_storage::refusals::refused("max_tail_subscribers");
        return Err(FollowError::TooManySubscribers(limit));
    }
    let Some(since) = since else {
        return Ok(live(hub.subscribe(filter, capacity)));
    };
    if since > MAX_SINCE {
        return Err(FollowError::SinceTooLong(since.as_secs()));
    }
    let backfill = Arc::clone(backfill.ok_or(FollowError::NoBackfill)?);
    let (db, table) = (filter.database.clone(), filter.table.clone());
    // Taken before the snapshot: the segments it lists stay on disk until
    // the backfill has been read.
    let reader = storage.reader();
    let (sub, snapshot) =
        storage.snapshot_between_writes(&db, &table, || hub.subscribe(filter.clone(), capacity)).await;
    let Some(snapshot) = snapshot else {
        // The table does not exist yet: nothing to backfill.
        return Ok(live(sub));
    };
    let from = crate::now_ns().saturating_sub(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX));
    let batches =
        backfill.scan(db, table, snapshot, from, filter.services.clone()).await.map_err(FollowError::Backfill)?;
    let metrics_hub = Arc::clone(hub);
    let past = batches.flat_map(move |b| {
        let _reading = &reader;
        let items: Vec<Result<TailItem, String>> = match b {
            Ok(b) => events_from_batch(&b)
                .into_iter()
                .filter(|e| filter.matches(e))
                .map(|e| Ok(TailItem::Event(e)))
                .collect(),
            Err(e) => vec![Err(format!("backfill failed: {e}"))],
        };
        let events = items.iter().filter(|i| matches!(i, Ok(TailItem::Event(_)))).count() as u64;
        metrics_hub.metrics.delivered.fetch_add(events, Ordering::Relaxed);
        futures::stream::iter(items)
    });
    Ok(Box::pin(past.chain(live(sub))))
}

fn live(sub: crate::tail::Subscription) -> ItemStream {
    Box::pin(futures::stream::unfold(sub, |sub| async move { Some((Ok(sub.next().await), sub)) }))
}

/// The log events of stored rows: `ts`, tags `service`/`host`/`level`,
/// fields `message`/`trace_id`/`span_id`, `attributes` as a JSON object.
/// Columns the batch lacks are empty.
pub fn events_from_batch(batch: &RecordBatch) -> Vec<LogEvent> {
    let text = |name: &str| -> Option<arrow::array::StringArray> {
        let c = batch.column_by_name(name)?;
        let c = arrow::compute::cast(c, &DataType::Utf8).ok()?;
        Some(c.as_string::<i32>().clone())
    };
    let Some(ts) = batch.column_by_name(TIME_COLUMN) else { return Vec::new() };
    let Some(ts) = ts.as_primitive_opt::<TimestampNanosecondType>() else { return Vec::new() };
    let cols = ["service", "host", "level", "message", "trace_id", "span_id", "attributes"].map(text);
    let get = |c: &Option<arrow::array::StringArray>, i: usize| -> String {
        c.as_ref().filter(|a| a.is_valid(i)).map(|a| a.value(i).to_string()).unwrap_or_default()
    };
    (0..batch.num_rows())
        .map(|i| LogEvent {
            timestamp: ts.value(i),
            service: get(&cols[0], i),
            host: get(&cols[1], i),
            level: get(&cols[2], i),
            message: get(&cols[3], i),
            trace_id: get(&cols[4], i),
            span_id: get(&cols[5], i),
            attributes: attributes_from_json(&get(&cols[6], i)),
        })
        .collect()
}

/// Ends a tail with an error once its caller's token is revoked or has
/// expired: nothing more is delivered to it.
pub fn while_current<S, T>(items: S, who: tocsin_auth::Principal) -> impl Stream<Item = Result<T, String>>
where
    S: Stream<Item = Result<T, String>>,
{
    items.scan(false, move |ended, item| {
        if *ended {
            return futures::future::ready(None);
        }
        if !who.is_current() {
            *ended = true;
            return futures::future::ready(Some(Err("the token was revoked or has expired".to_string())));
        }
        futures::future::ready(Some(item))
    })
}
