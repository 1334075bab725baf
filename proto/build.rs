//! Compiles `tocsin/v1/*.proto` (and the peer protocols Tocsin speaks) with
//! protox (pure Rust): a fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "tocsin/v1/ingest.proto",
        "prometheus/remote.proto",
        "opentelemetry/proto/collector/metrics/v1/metrics_service.proto",
        "opentelemetry/proto/collector/logs/v1/logs_service.proto",
        "opentelemetry/proto/collector/trace/v1/trace_service.proto",
        "loki/push.proto",
    ];
    println!("cargo:rerun-if-changed=opentelemetry");
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // Every gRPC method of these files, for the server's test that each one
    // declares the permission it needs.
    let mut methods = String::from("pub const GRPC_METHODS: &[&str] = &[\n");
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                methods.push_str(&format!("    \"/{}.{}/{}\",\n", file.package(), service.name(), method.name()));
            }
        }
    }
    methods.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("grpc_methods.rs"), methods)?;
    // Every message a service sends or receives goes through
    // `wire::BoundedCodec`, which needs `wire::WireBound`: the bounded
    // requests implement it by hand in wire.rs, the others here.
    const BOUNDED: [&str; 5] = [
        ".opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
        ".opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest",
        ".opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest",
        ".tocsin.v1.WriteLogsRequest",
        ".tocsin.v1.WriteRequest",
    ];
    let mut types = std::collections::BTreeSet::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                types.insert(method.input_type().to_string());
                types.insert(method.output_type().to_string());
            }
        }
    }
    let mut unbounded = String::new();
    for t in types.iter().filter(|t| !BOUNDED.contains(&t.as_str())) {
        let (package, name) = t.trim_start_matches('.').rsplit_once('.').ok_or("a message type without a package")?;
        let module = match package {
            "tocsin.v1" => "v1".to_string(),
            p if p.starts_with("opentelemetry.") => p.replace('.', "::"),
            p => return Err(format!("no Rust module for package {p}: add it to proto/build.rs").into()),
        };
        unbounded.push_str(&format!("impl crate::wire::WireBound for crate::{module}::{name} {{}}\n"));
    }
    std::fs::write(out.join("unbounded.rs"), unbounded)?;
    // The descriptors themselves, for protobuf's JSON mapping at run time
    // (OTLP/HTTP with JSON bodies).
    std::fs::write(out.join("descriptors.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::wire::BoundedCodec")
        .compile_fds(fds)?;
    Ok(())
}
