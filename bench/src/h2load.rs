//! Measurements with a load generator we did not write: nghttp2's `h2load` (a C HTTP/2
//! client, Debian's `nghttp2-client`, installed by `scripts/test-env`) sends the same gRPC
//! request bytes to a `resultstore serve` process and to the bare tonic server running as
//! its own process (`resultstore-bench bare`), both on 127.0.0.1. Nothing of ours runs in
//! the generator, and neither server shares its process with it.
//!
//! h2load counts an HTTP 200 as a success, and gRPC carries its errors in trailers of a
//! 200: so every run checks that each reply brought at least the value's bytes back, and
//! each scenario checks one request through the Rust client first.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use prost::Message;
use resultstore_e2e::servers::Spawned;

use crate::load::Stats;

/// A server process (killed when dropped) and its address, `127.0.0.1:PORT`.
pub struct Server {
    _process: Spawned,
    pub addr: String,
}

/// Starts `command` and waits for the line it prints once listening (`PREFIX ADDR`): the
/// readiness signal, no sleep.
fn start(mut command: Command, prefix: &str) -> anyhow::Result<Server> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("starting a server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("its stdout")?).read_line(&mut line)?;
    let addr = line.trim().strip_prefix(prefix).with_context(|| format!("expected `{prefix} ADDR`, got {line:?}"))?;
    let addr = addr.trim_start_matches("http://").to_owned();
    let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).with_context(|| format!("no port in {addr}"))?;
    Ok(Server { _process: Spawned::new(child, port), addr })
}

/// `resultstore serve` (the binary beside this one) with `config`.
pub fn resultstore(config: &Path) -> anyhow::Result<Server> {
    let binary = sibling("resultstore")?;
    let mut command = Command::new(binary);
    // Logging as `resultstore serve` runs by default (RUST_LOG unset: info), spans and all.
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(config).env_remove("RUST_LOG");
    start(command, "resultstore listening on ")
}

/// The bare tonic server as its own process (`resultstore-bench bare`).
pub fn bare() -> anyhow::Result<Server> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("bare");
    start(command, "bare listening on ")
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!("{} is not built (cargo build -p resultstore, same profile as the bench)", path.display());
    }
    Ok(path)
}

/// Whether `h2load` is on the PATH.
pub fn available() -> bool {
    Command::new("h2load").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Writes `message` as one gRPC frame (uncompressed: a zero byte, the length, the bytes).
pub fn body(path: &Path, message: &impl Message) -> anyhow::Result<()> {
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(encoded.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(encoded.len())?.to_be_bytes());
    frame.extend_from_slice(&encoded);
    std::fs::write(path, frame)?;
    Ok(())
}

/// One h2load run: `clients` connections with `streams` requests in flight each, for
/// `secs` after a warm-up of a quarter of it, every request the gRPC call `method` with
/// the body at `body`. Each reply must carry at least `min_reply` bytes of DATA.
pub fn run(
    addr: &str,
    method: &str,
    body: &Path,
    clients: usize,
    streams: usize,
    secs: Duration,
    min_reply: u64,
) -> anyhow::Result<Stats> {
    let mut command = Command::new("h2load");
    command.arg("-d").arg(body).args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    let url = format!("http://{addr}/resultstore.v1.ResultStore/{method}");
    measure(command, &url, &body.with_extension("log.tsv"), clients, streams, secs, min_reply)
}

/// As [`run`], every request an HTTP GET of `path` (the HTTP API), over HTTP/2, or
/// HTTP/1.1 when `h1` (then `streams` is the pipelining depth: keep it 1).
#[allow(clippy::too_many_arguments)]
pub fn get(
    addr: &str,
    path: &str,
    h1: bool,
    log: &Path,
    clients: usize,
    streams: usize,
    secs: Duration,
    min_reply: u64,
) -> anyhow::Result<Stats> {
    let mut command = Command::new("h2load");
    if h1 {
        command.arg("--h1");
    }
    measure(command, &format!("http://{addr}{path}"), log, clients, streams, secs, min_reply)
}

fn measure(
    mut command: Command,
    url: &str,
    log: &Path,
    clients: usize,
    streams: usize,
    secs: Duration,
    min_reply: u64,
) -> anyhow::Result<Stats> {
    let warm = (secs / 4).max(Duration::from_millis(250));
    let output = command
        .arg(format!("--duration={}ms", secs.as_millis()))
        .arg(format!("--warm-up-time={}ms", warm.as_millis()))
        .args(["-c", &clients.to_string(), "-m", &streams.to_string(), "-t", "1"])
        .arg(format!("--log-file={}", log.display()))
        .arg(url)
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("h2load failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    }
    let field = |line: &str, name: &str| -> Option<u64> {
        let at = line.find(name)?;
        line[..at].trim_end().rsplit([' ', '(', ',']).next()?.parse().ok()
    };
    let requests = text.lines().find(|l| l.starts_with("requests:")).context("h2load printed no requests line")?;
    let succeeded = field(requests, " succeeded").context("succeeded")?;
    let failed = field(requests, " failed").unwrap_or(0) + field(requests, " errored").unwrap_or(0);
    let traffic = text.lines().find(|l| l.starts_with("traffic:")).context("h2load printed no traffic line")?;
    // `traffic: 86.55MB (90756158) total, 236.25KB (241917) headers (...), 107.24MB (112453722) data`
    let data = traffic
        .rsplit_once(") data")
        .and_then(|(head, _)| head.rsplit_once('('))
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .context("the data bytes of the traffic line")?;
    let mut latencies: Vec<u32> =
        std::fs::read_to_string(log)?.lines().filter_map(|l| l.split('\t').nth(2)?.parse().ok()).collect();
    latencies.sort_unstable();
    let _ = std::fs::remove_file(log);
    if failed > 0 || succeeded == 0 {
        bail!("h2load: {succeeded} succeeded, {failed} failed or errored");
    }
    // The log holds the requests of the measured period (the warm-up's are not logged).
    let measured = latencies.len() as u64;
    if data / measured.max(1) < min_reply {
        bail!("h2load: replies averaged {} bytes, under the {min_reply} a correct reply holds", data / measured.max(1));
    }
    Ok(Stats { requests: measured, errors: 0, bytes: measured * min_reply, secs: secs.as_secs_f64(), latencies })
}
