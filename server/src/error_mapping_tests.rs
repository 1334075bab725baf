//! Every interface reports each class of failure the same way: one table
//! per class, checked against the HTTP API's answer, each write protocol's
//! answer, gRPC's status and Flight SQL's status.

use std::time::Duration;

use axum::response::IntoResponse;
use datafusion::error::DataFusionError;
use tocsin_alerting::EngineError;
use tocsin_auth::AuthError;
use tocsin_ingest::IngestError;
use tocsin_ingest::follow::FollowError;
use tocsin_query::QueryError;
use tocsin_storage::StorageError;
use tocsin_storage::errors::{Classify, ErrorClass};
use tocsin_storage::write::WriteError;
use tonic::Code;

use crate::http::ApiError;

/// The one table: the class, its HTTP status, its gRPC (and Flight SQL) code.
const TABLE: [(ErrorClass, u16, Code); 10] = [
    (ErrorClass::Invalid, 400, Code::InvalidArgument),
    (ErrorClass::Unauthenticated, 401, Code::Unauthenticated),
    (ErrorClass::PermissionDenied, 403, Code::PermissionDenied),
    (ErrorClass::NotFound, 404, Code::NotFound),
    (ErrorClass::TooLarge, 413, Code::ResourceExhausted),
    (ErrorClass::RateLimited, 429, Code::ResourceExhausted),
    (ErrorClass::Overloaded, 503, Code::ResourceExhausted),
    (ErrorClass::Timeout, 503, Code::DeadlineExceeded),
    (ErrorClass::Unavailable, 503, Code::Unavailable),
    (ErrorClass::Internal, 500, Code::Internal),
];

fn expected(class: ErrorClass) -> (u16, Code) {
    let (_, http, grpc) = TABLE.iter().find(|(c, _, _)| *c == class).copied().expect("every class is in the table");
    (http, grpc)
}

fn full() -> StorageError {
    StorageError::BufferFull { buffered: 2, limit: 1 }
}

fn query_errors() -> Vec<(QueryError, ErrorClass)> {
    let timeout = QueryError::Timeout { after: Duration::from_secs(1) };
    vec![
        (QueryError::StatementNotAllowed { statement: "COPY".into() }, ErrorClass::Invalid),
        (QueryError::DataFusion(DataFusionError::Plan("no column x".into())), ErrorClass::Invalid),
        (QueryError::Write(WriteError::EmptySeries), ErrorClass::Invalid),
        (QueryError::Auth(AuthError::Unauthenticated("no token".into())), ErrorClass::Unauthenticated),
        (QueryError::Auth(AuthError::Forbidden("table t".into())), ErrorClass::PermissionDenied),
        // The statement is refused as invalid (its own bound, `max_sql_bytes`);
        // 413 is for bodies over `limits.max_request_bytes`.
        (QueryError::SqlTooLong { bytes: 2, limit: 1 }, ErrorClass::Invalid),
        (QueryError::Storage(full()), ErrorClass::Overloaded),
        (QueryError::TooManyQueries { limit: 64 }, ErrorClass::Overloaded),
        (
            QueryError::RateLimited(tocsin_storage::errors::OverRate {
                caller: "token:a".into(),
                rate: 10,
                retry_after: Duration::from_secs(3),
            }),
            ErrorClass::RateLimited,
        ),
        (QueryError::DataFusion(DataFusionError::ResourcesExhausted("memory".into())), ErrorClass::Overloaded),
        (QueryError::DataFusion(DataFusionError::External(Box::new(timeout))), ErrorClass::Timeout),
        (QueryError::Timeout { after: Duration::from_secs(1) }, ErrorClass::Timeout),
        (QueryError::Storage(StorageError::ShuttingDown), ErrorClass::Unavailable),
        (QueryError::Storage(StorageError::Task("panicked".into())), ErrorClass::Internal),
    ]
}

fn ingest_errors() -> Vec<(IngestError, ErrorClass)> {
    vec![
        (IngestError::Empty("series"), ErrorClass::Invalid),
        (IngestError::Storage(StorageError::Database(WriteError::EmptySeries)), ErrorClass::Invalid),
        (IngestError::Auth(AuthError::Unauthenticated("no token".into())), ErrorClass::Unauthenticated),
        (IngestError::Auth(AuthError::Forbidden("table t".into())), ErrorClass::PermissionDenied),
        (
            IngestError::RateLimited(tocsin_storage::errors::OverRate {
                caller: "token:a".into(),
                rate: 10,
                retry_after: Duration::from_secs(3),
            }),
            ErrorClass::RateLimited,
        ),
        (IngestError::Storage(full()), ErrorClass::Overloaded),
        (IngestError::Storage(StorageError::ShuttingDown), ErrorClass::Unavailable),
        (IngestError::Storage(StorageError::Task("panicked".into())), ErrorClass::Internal),
    ]
}

#[test]
fn the_table_has_every_class_once() {
    for class in ErrorClass::ALL {
        assert_eq!(TABLE.iter().filter(|(c, _, _)| *c == class).count(), 1, "{class:?}");
        let (http, grpc) = expected(class);
        assert_eq!(class.http_status(), http, "{class:?}");
        assert_eq!(tocsin_ingest::errors::grpc_code(class), grpc, "{class:?}");
    }
}

#[test]
fn sql_errors_over_http_and_flight_sql() {
    let over_flight = query_errors();
    for ((e, class), (again, _)) in query_errors().into_iter().zip(over_flight) {
        let message = e.to_string();
        assert_eq!(e.class(), class, "{message}");
        let (http, grpc) = expected(class);
        assert_eq!(crate::flight::status(again).code(), grpc, "Flight SQL: {message}");
        let response = ApiError::from(e).into_response();
        assert_eq!(response.status().as_u16(), http, "HTTP: {message}");
        assert_eq!(response.headers().contains_key("retry-after"), http == 503 || http == 429, "{message}");
    }
}

#[test]
fn write_errors_over_http_protocols_and_grpc() {
    for (i, (e, class)) in ingest_errors().into_iter().enumerate() {
        let message = e.to_string();
        assert_eq!(e.class(), class, "{message}");
        let (http, grpc) = expected(class);
        for dialect in crate::protocols::DIALECTS {
            let response = crate::protocols::ingest_error(dialect, ingest_errors().swap_remove(i).0);
            assert_eq!(response.status().as_u16(), http, "{dialect:?}: {message}");
            assert_eq!(response.headers().contains_key("retry-after"), class.retry_after(), "{dialect:?}: {message}");
        }
        assert_eq!(tonic::Status::from(e).code(), grpc, "gRPC: {message}");
    }
}

#[test]
fn other_errors_keep_their_class_on_every_interface() {
    let auth = [
        (AuthError::Invalid("role".into()), ErrorClass::Invalid),
        (AuthError::NotFound("token".into()), ErrorClass::NotFound),
        (AuthError::Random("entropy".into()), ErrorClass::Internal),
    ];
    for (e, class) in auth {
        let (http, grpc) = expected(class);
        assert_eq!(e.class(), class);
        assert_eq!(tocsin_ingest::errors::grpc_status(&e).code(), grpc, "{e}");
        assert_eq!(crate::guard::auth_error(e).status().as_u16(), http);
    }
    let follow = [
        (FollowError::SinceTooLong(1), ErrorClass::Invalid),
        (FollowError::TooManySubscribers(1), ErrorClass::Overloaded),
        (FollowError::Backfill("io".into()), ErrorClass::Internal),
    ];
    for (e, class) in follow {
        let (http, grpc) = expected(class);
        assert_eq!(tocsin_ingest::errors::grpc_status(&e).code(), grpc, "{e}");
        assert_eq!(ApiError::from(e).into_response().status().as_u16(), http);
    }
    let engine = [
        (EngineError::BadRequest("x".into()), ErrorClass::Invalid),
        (EngineError::NoSuchAlert("a".into()), ErrorClass::NotFound),
        (EngineError::StateIo { path: "s".into(), source: std::io::Error::other("disk") }, ErrorClass::Internal),
    ];
    for (e, class) in engine {
        assert_eq!(e.class(), class);
        assert_eq!(ApiError::from(e).into_response().status().as_u16(), expected(class).0);
    }
}
