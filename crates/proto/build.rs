//! Compiles the RocketMQ v2 `.proto` files and Ferry's extensions with
//! `protox` (a pure-Rust protobuf compiler), so building Ferry never needs a
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/apache/rocketmq/v2/definition.proto",
        "proto/apache/rocketmq/v2/service.proto",
        "proto/ferry/v1/extensions.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Message bodies stay reference-counted slices of the request buffer:
        // no copy between the wire and the commit-log encoder.
        .bytes(".apache.rocketmq.v2.Message.body")
        .compile_fds(descriptors)?;
    Ok(())
}
