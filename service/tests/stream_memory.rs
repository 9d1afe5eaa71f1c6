//! Memory stays bounded whatever a result's size: a 1 GiB result put with PutStream and
//! read back with GetStream through a `split` block never makes the service's peak RSS
//! exceed its cache capacity plus 64 MiB.
//!
//! The service runs as its own process (the `resultstore` binary, started here on
//! 127.0.0.1:0), so its peak RSS (`VmHWM` in `/proc/PID/status`) is its own and not the
//! test's. The test asserts memory, never time.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use bytes::Bytes;
use resultstore_client::{Client, Put, ReadOptions, Target};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const CACHE_CAPACITY: u64 = 64 * MIB;
const RESULT_SIZE: u64 = 1024 * MIB;

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Service {
    /// Peak resident set size of the service so far, in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).expect("/proc/PID/status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
        let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM value");
        kib * 1024
    }
}

/// Starts the service on `config` and returns it with its address.
fn start(config: &std::path::Path) -> (Service, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_resultstore"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the resultstore binary starts");
    let stdout = child.stdout.take().expect("stdout");
    let service = Service(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("the service prints its address");
    let addr = line.trim().strip_prefix("resultstore listening on ").unwrap_or_else(|| panic!("unexpected: {line}"));
    (service, format!("http://{addr}"))
}

/// The `i`th MiB of a JSON string document of `RESULT_SIZE` bytes (varied, all ASCII).
fn piece(i: u64) -> Bytes {
    let mut out = vec![b'a' + (i % 26) as u8; MIB as usize];
    for (j, b) in out.iter_mut().enumerate().step_by(4099) {
        *b = b'0' + ((i as usize + j) % 10) as u8;
    }
    if i == 0 {
        out[0] = b'"';
    }
    if i == RESULT_SIZE / MIB - 1 {
        out[MIB as usize - 1] = b'"';
    }
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_result_streams_both_ways_within_the_cache_capacity_plus_64_mib() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().display();
    let config = dir.path().join("resultstore.toml");
    std::fs::write(
        &config,
        format!(
            r#"
default_block = "local-file-system/split"
[cache]
capacity = "{CACHE_CAPACITY}"
max_entry_size = "16MiB"
[limits]
max_result_size = "64MiB"
[blocks."local-file-system/split"]
url = "file://{d}/split"
format = "split"
metadata_url = "file://{d}/split-meta"
"#
        ),
    )
    .expect("write config");
    let (service, url) = start(&config);
    let client = Client::connect(url).await.expect("connect");
    let baseline = service.peak_rss();

    let pieces = RESULT_SIZE / MIB;
    let mut expected = Sha256::new();
    for i in 0..pieces {
        expected.update(piece(i));
    }
    let expected = hex::encode(expected.finalize());
    let put = Put::data(Bytes::new()).serializer("json").key("one-gib").size(RESULT_SIZE).sha256(&expected);
    let stored = client.put_stream(put, futures::stream::iter((0..pieces).map(piece))).await.expect("PutStream");
    let reference = stored.reference().expect("a reference").clone();
    assert_eq!(reference.0.size, RESULT_SIZE);
    assert_eq!(reference.sha256(), expected);
    assert_eq!(std::fs::metadata(dir.path().join("split/one-gib")).expect("stored").len(), RESULT_SIZE);
    let after_put = service.peak_rss();

    let mut stream = client.get_stream(&reference, ReadOptions::default()).await.expect("GetStream");
    let mut got = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = stream.next_chunk().await.expect("a whole stream") {
        received += chunk.len() as u64;
        got.update(&chunk);
    }
    assert_eq!(received, RESULT_SIZE);
    assert_eq!(hex::encode(got.finalize()), expected);
    // Read again by location (no digest given): the same bytes, streamed past the cache.
    let location = Target::Location { block: String::new(), key: "one-gib".into() };
    let again = drain(client.get_stream(location, ReadOptions::default()).await.expect("GetStream")).await;
    assert_eq!(again, RESULT_SIZE);

    let peak = service.peak_rss();
    println!(
        "peak RSS: {} MiB at start, {} MiB after PutStream, {} MiB after GetStream (bound: {} MiB)",
        baseline / MIB,
        after_put / MIB,
        peak / MIB,
        (CACHE_CAPACITY + 64 * MIB) / MIB
    );
    assert!(
        peak <= CACHE_CAPACITY + 64 * MIB,
        "peak RSS {} MiB is above the cache capacity plus 64 MiB ({} MiB)",
        peak / MIB,
        (CACHE_CAPACITY + 64 * MIB) / MIB
    );
}

/// Receives a whole stream without keeping it; returns its length.
async fn drain(mut stream: resultstore_client::GetStream) -> u64 {
    let mut n = 0;
    while let Some(c) = stream.next_chunk().await.expect("a whole stream") {
        n += c.len() as u64;
    }
    n
}
