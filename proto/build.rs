//! Compiles `resultstore/v1/*.proto` with protox (pure Rust), so no `protoc` install is
//! needed anywhere, and writes the encoded descriptor set for server reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["resultstore/v1/resultstore.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["."])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("resultstore_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // `bytes` fields as `bytes::Bytes`: the server hands cached values to replies
        // without copying them.
        .bytes(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
