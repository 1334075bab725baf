//! One classification of failures, so that every interface reports the
//! same failure the same way. Each error type of the crates says which
//! [`ErrorClass`] each of its variants is ([`Classify`]); each interface
//! maps a class to its own code in one place: [`ErrorClass::http_status`]
//! here (HTTP API, write protocols), `tocsin_ingest::errors::grpc_code`
//! (gRPC ingest, OTLP, Flight SQL).
//!
//! | class | HTTP | gRPC / Flight SQL | the client should |
//! |---|---|---|---|
//! | invalid | 400 | `INVALID_ARGUMENT` | fix the request |
//! | unauthenticated | 401 | `UNAUTHENTICATED` | present credentials |
//! | permission denied | 403 | `PERMISSION_DENIED` | use another role |
//! | not found | 404 | `NOT_FOUND` | check the name or id |
//! | too large | 413 | `RESOURCE_EXHAUSTED` | send less at once |
//! | rate limited | 429 + `Retry-After` | `RESOURCE_EXHAUSTED` | slow down |
//! | overloaded | 503 + `Retry-After` | `RESOURCE_EXHAUSTED` | retry later |
//! | timeout | 503 | `DEADLINE_EXCEEDED` | narrow the query |
//! | unavailable | 503 + `Retry-After` | `UNAVAILABLE` | retry elsewhere or later |
//! | internal | 500 | `INTERNAL` | report it |

/// What kind of failure an error is, whatever the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The request is wrong (bad SQL, bad name, type conflict).
    Invalid,
    /// No credentials, or ones that prove nothing.
    Unauthenticated,
    /// Proven identity, not allowed.
    PermissionDenied,
    /// No such object (alert, silence, token, prepared statement).
    NotFound,
    /// Over a size bound.
    TooLarge,
    /// Over the caller's rate.
    RateLimited,
    /// The server is busy (write buffer full, too many queries or tails).
    Overloaded,
    /// Over a time bound.
    Timeout,
    /// The server is shutting down.
    Unavailable,
    /// The server's fault (I/O, a corrupt file, a failed task).
    Internal,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 10] = [
        ErrorClass::Invalid,
        ErrorClass::Unauthenticated,
        ErrorClass::PermissionDenied,
        ErrorClass::NotFound,
        ErrorClass::TooLarge,
        ErrorClass::RateLimited,
        ErrorClass::Overloaded,
        ErrorClass::Timeout,
        ErrorClass::Unavailable,
        ErrorClass::Internal,
    ];

    /// The HTTP status of the class.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::Invalid => 400,
            ErrorClass::Unauthenticated => 401,
            ErrorClass::PermissionDenied => 403,
            ErrorClass::NotFound => 404,
            ErrorClass::TooLarge => 413,
            ErrorClass::RateLimited => 429,
            ErrorClass::Overloaded | ErrorClass::Timeout | ErrorClass::Unavailable => 503,
            ErrorClass::Internal => 500,
        }
    }

    /// Whether HTTP answers carry `Retry-After` (the client may retry the
    /// same request).
    pub fn retry_after(self) -> bool {
        matches!(self, ErrorClass::RateLimited | ErrorClass::Overloaded | ErrorClass::Unavailable)
    }

    /// The name used in logs, metrics and audit entries.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Invalid => "invalid",
            ErrorClass::Unauthenticated => "unauthenticated",
            ErrorClass::PermissionDenied => "permission_denied",
            ErrorClass::NotFound => "not_found",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::Overloaded => "overloaded",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Unavailable => "unavailable",
            ErrorClass::Internal => "internal",
        }
    }
}

/// An error that knows its class.
pub trait Classify: std::fmt::Display {
    fn class(&self) -> ErrorClass;
}

impl Classify for crate::StorageError {
    fn class(&self) -> ErrorClass {
        use crate::StorageError::*;
        match self {
            Database(_) | Delete(_) => ErrorClass::Invalid,
            BufferFull { .. } => ErrorClass::Overloaded,
            ShuttingDown => ErrorClass::Unavailable,
            // A reader's bucket did not give a file now.
            SegmentFetch { .. } => ErrorClass::Unavailable,
            // Sent to the wrong server: another one (the writer) accepts it.
            ReadOnly(_) => ErrorClass::PermissionDenied,
            // Another server holds the data now: retry there.
            Fenced(_) => ErrorClass::Unavailable,
            // The bucket does not take the WAL now: try again later.
            Wal(crate::wal::WalError::NotShipped(_) | crate::wal::WalError::ShipBacklog { .. }) => {
                ErrorClass::Unavailable
            }
            Wal(_)
            | Manifest(_)
            | Segment(_)
            | Arrow(_)
            | Io { .. }
            | ManifestMissing { .. }
            | SegmentUnreadable { .. }
            | SegmentNotInCopy { .. }
            | SegmentsInBucket { .. }
            | SegmentMismatch { .. }
            | Locked { .. }
            | RestoreIncomplete { .. }
            | Task(_) => ErrorClass::Internal,
        }
    }
}

/// Every refusal of a write is the request's: a name, a type, a bound on
/// the shape of the data.
impl Classify for crate::write::WriteError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_one_http_status_and_only_client_errors_are_4xx() {
        for c in ErrorClass::ALL {
            let s = c.http_status();
            assert!((400..600).contains(&s), "{c:?}");
            let client = !matches!(
                c,
                ErrorClass::Overloaded | ErrorClass::Timeout | ErrorClass::Unavailable | ErrorClass::Internal
            );
            assert_eq!(s < 500, client, "{c:?}");
        }
        assert!(crate::StorageError::ShuttingDown.class() == ErrorClass::Unavailable);
        let full = crate::StorageError::BufferFull { buffered: 2, limit: 1 };
        assert_eq!(full.class(), ErrorClass::Overloaded);
    }
}

/// A caller over `limits.ingest_rows_per_second`, whichever protocol it
/// wrote with (the ingest protocols and SQL `INSERT` share one bucket per
/// caller, and one message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{caller} is over its ingest rate of {rate} rows a second (limits.ingest_rows_per_second); retry in {retry_after:?}"
)]
pub struct OverRate {
    pub caller: String,
    pub rate: u64,
    pub retry_after: std::time::Duration,
}

impl OverRate {
    /// The wait for `Retry-After`: whole seconds, at least one.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}
