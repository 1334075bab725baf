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
    // The descriptors themselves, for protobuf's JSON mapping at run time
    // (OTLP/HTTP with JSON bodies).
    std::fs::write(out.join("descriptors.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
