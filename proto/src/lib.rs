//! Tocsin's gRPC API, package `tocsin.v1`: the `.proto` files in this folder
//! and the Rust code tonic generates from them at build time.
//!
//! ```no_run
//! use tocsin_proto::v1::{ingest_client::IngestClient, Series, WriteSeriesRequest};
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = IngestClient::connect("http://127.0.0.1:4317").await?;
//! let resp = client
//!     .write_series(WriteSeriesRequest {
//!         database: String::new(),
//!         series: vec![Series {
//!             metric: "up".into(),
//!             labels: vec![],
//!             timestamps: vec![1_700_000_000_000_000_000],
//!             values: vec![1.0],
//!         }],
//!     })
//!     .await?;
//! assert_eq!(resp.into_inner().accepted_rows, 1);
//! # Ok(()) }
//! ```

// The path (`/package.Service/Method`) of every gRPC method the `.proto`
// files here define.
include!(concat!(env!("OUT_DIR"), "/grpc_methods.rs"));

/// The encoded `FileDescriptorSet` of every `.proto` file here: what
/// protobuf's JSON mapping needs to read a message by name at run time.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

pub mod wire;

/// The messages of gRPC methods that have no wire bound.
mod unbounded {
    include!(concat!(env!("OUT_DIR"), "/unbounded.rs"));
}

pub mod v1 {
    #![allow(unreachable_pub, unused_qualifications, clippy::all)]
    tonic::include_proto!("tocsin.v1");
}

/// Prometheus remote_write v1 messages (`prometheus/remote.proto`).
pub mod prometheus {
    #![allow(unreachable_pub, unused_qualifications, clippy::all)]
    tonic::include_proto!("prometheus");
}

/// Loki's push API messages (`loki/push.proto`).
pub mod loki {
    #![allow(unreachable_pub, unused_qualifications, clippy::all)]
    tonic::include_proto!("logproto");
}

/// OpenTelemetry OTLP messages and services (`opentelemetry/proto/...`), in
/// modules that mirror their protobuf packages.
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                #![allow(unreachable_pub, unused_qualifications, clippy::all)]
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        pub mod resource {
            pub mod v1 {
                #![allow(unreachable_pub, unused_qualifications, clippy::all)]
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        pub mod metrics {
            pub mod v1 {
                #![allow(unreachable_pub, unused_qualifications, clippy::all)]
                tonic::include_proto!("opentelemetry.proto.metrics.v1");
            }
        }
        pub mod logs {
            pub mod v1 {
                #![allow(unreachable_pub, unused_qualifications, clippy::all)]
                tonic::include_proto!("opentelemetry.proto.logs.v1");
            }
        }
        pub mod trace {
            pub mod v1 {
                #![allow(unreachable_pub, unused_qualifications, clippy::all)]
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        pub mod collector {
            pub mod metrics {
                pub mod v1 {
                    #![allow(unreachable_pub, unused_qualifications, clippy::all)]
                    tonic::include_proto!("opentelemetry.proto.collector.metrics.v1");
                }
            }
            pub mod logs {
                pub mod v1 {
                    #![allow(unreachable_pub, unused_qualifications, clippy::all)]
                    tonic::include_proto!("opentelemetry.proto.collector.logs.v1");
                }
            }
            pub mod trace {
                pub mod v1 {
                    #![allow(unreachable_pub, unused_qualifications, clippy::all)]
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
        }
    }
}
