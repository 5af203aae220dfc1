//! Generates Rust types for proto/tempo.proto with prost. The .proto is compiled in-process
//! (protox), so no `protoc` is needed; OTLP messages map to the `opentelemetry-proto` crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/tempo.proto"], ["proto"])?;
    prost_build::Config::new()
        .extern_path(
            ".opentelemetry.proto.trace.v1",
            "::opentelemetry_proto::tonic::trace::v1",
        )
        .extern_path(
            ".opentelemetry.proto.common.v1",
            "::opentelemetry_proto::tonic::common::v1",
        )
        .compile_fds(fds)?;
    Ok(())
}
