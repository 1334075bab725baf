//! The gRPC side of [`tocsin_storage::errors`]: one code per error class,
//! for every gRPC service (ingest, OTLP, Flight SQL).

use tocsin_storage::errors::{Classify, ErrorClass};
use tonic::{Code, Status};

/// The gRPC code of a class (the table in [`tocsin_storage::errors`]).
pub fn grpc_code(class: ErrorClass) -> Code {
    match class {
        ErrorClass::Invalid => Code::InvalidArgument,
        ErrorClass::Unauthenticated => Code::Unauthenticated,
        ErrorClass::PermissionDenied => Code::PermissionDenied,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::TooLarge | ErrorClass::RateLimited | ErrorClass::Overloaded => Code::ResourceExhausted,
        ErrorClass::Timeout => Code::DeadlineExceeded,
        ErrorClass::Unavailable => Code::Unavailable,
        ErrorClass::Internal => Code::Internal,
    }
}

/// The status of an error: its class's code and its message.
pub fn grpc_status(e: &impl Classify) -> Status {
    Status::new(grpc_code(e.class()), e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tocsin_storage::StorageError;

    #[test]
    fn each_class_has_its_code_and_errors_keep_their_messages() {
        let table = [
            (ErrorClass::Invalid, Code::InvalidArgument),
            (ErrorClass::Unauthenticated, Code::Unauthenticated),
            (ErrorClass::PermissionDenied, Code::PermissionDenied),
            (ErrorClass::NotFound, Code::NotFound),
            (ErrorClass::TooLarge, Code::ResourceExhausted),
            (ErrorClass::RateLimited, Code::ResourceExhausted),
            (ErrorClass::Overloaded, Code::ResourceExhausted),
            (ErrorClass::Timeout, Code::DeadlineExceeded),
            (ErrorClass::Unavailable, Code::Unavailable),
            (ErrorClass::Internal, Code::Internal),
        ];
        assert_eq!(table.len(), ErrorClass::ALL.len());
        for (class, code) in table {
            assert_eq!(grpc_code(class), code, "{class:?}");
        }
        let s = grpc_status(&StorageError::ShuttingDown);
        assert_eq!((s.code(), s.message()), (Code::Unavailable, "server is shutting down; write refused"));
    }
}
