//! The `resultstore serve` process as an operator meets it: JSON logs with one span per
//! call (and never a payload or a token), SIGTERM draining to exit status 0, SIGHUP
//! reloading the config (and keeping the old one when the new one is invalid), and a
//! service restarted under load losing nothing it acknowledged.

use std::collections::HashSet;

use futures::StreamExt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resultstore_client::{Client, ClientError, ConnectOptions, Put, ReadOptions, Reference, Stored, Target, Want};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const BIN: &str = env!("CARGO_BIN_EXE_resultstore");

/// A spawned `resultstore serve`, killed if the test ends before it stopped.
struct Service {
    child: Child,
    url: String,
    metrics: Option<String>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Starts `serve` in `dir` on `config.toml`, listening on `listen`; stderr goes to `log`.
    fn start(dir: &Path, listen: &str, log: Option<&Path>, env: &[(&str, &str)]) -> Service {
        let stderr = match log {
            Some(p) => Stdio::from(std::fs::File::create(p).expect("log file")),
            None => Stdio::null(),
        };
        let mut child = Command::new(BIN)
            .args(["serve", "--config", "config.toml", "--listen", listen])
            .current_dir(dir)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start resultstore serve");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("the address line");
        let addr =
            line.trim().strip_prefix("resultstore listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
        let mut metrics = None;
        if std::fs::read_to_string(dir.join("config.toml")).unwrap_or_default().contains("[metrics]") {
            line.clear();
            out.read_line(&mut line).expect("the metrics line");
            metrics = Some(
                line.trim()
                    .strip_prefix("resultstore metrics on http://")
                    .and_then(|l| l.strip_suffix("/metrics"))
                    .unwrap_or_else(|| panic!("{line:?}"))
                    .to_owned(),
            );
        }
        Service { child, url: format!("http://{addr}"), metrics }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid this test spawned and still owns.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// Sends SIGTERM and waits for the process to end, off the runtime's thread: the
    /// test's clients must keep answering the server's GOAWAY while it drains.
    async fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        tokio::task::spawn_blocking(move || self.child.wait().expect("wait")).await.expect("waiter")
    }

    async fn scrape(&self) -> String {
        let addr = self.metrics.as_deref().expect("a metrics listener");
        let mut conn = tokio::net::TcpStream::connect(addr).await.expect("metrics connect");
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).await.unwrap();
        text
    }

    /// Scrapes until `line` appears (the server has acted on a signal), for at most 20 s.
    async fn wait_for_metric(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.scrape().await.contains(line) {
            assert!(Instant::now() < deadline, "`{line}` never appeared in /metrics");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn hash(token: &str) -> String {
    resultstore::config::auth::token_hash(token)
}

fn config(dir: &Path, tokens: &[(&str, &str)]) -> PathBuf {
    let mut text = String::from(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[blocks.\"local-file-system/default\"]\nurl = \"file://results\"\n",
    );
    if !tokens.is_empty() {
        text.push_str("[auth]\n");
        for (name, token) in tokens {
            text.push_str(&format!(
                "[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = {{ \"*\" = [\"read\", \"write\", \"delete\"] }}\n",
                hash(token)
            ));
        }
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn client(url: &str, token: &str) -> Client {
    let options = ConnectOptions { token: Some(token.into()), ..Default::default() };
    Client::connect_with(url.to_owned(), options).await.expect("connects")
}

const PAYLOAD_MARK: &str = "payload-bytes-that-must-never-be-logged";
const TOKEN: &str = "token-text-that-must-never-be-logged";

#[tokio::test]
async fn json_logs_hold_one_span_per_call_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), &[("ci", TOKEN)]);
    let log = dir.path().join("stderr.log");
    let service = Service::start(
        dir.path(),
        "127.0.0.1:0",
        Some(&log),
        &[("RESULTSTORE_LOG_FORMAT", "json"), ("RUST_LOG", "resultstore=debug,info")],
    );
    let c = client(&service.url, TOKEN).await;
    let put = Put::json(format!("\"{PAYLOAD_MARK}\"")).serializer("json").key("logged/key");
    let Stored::Reference(r) = c.put(put).await.unwrap() else { panic!("a reference") };
    c.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap();
    let anonymous = Client::connect(service.url.clone()).await.unwrap();
    anonymous.list_blocks().await.unwrap_err();
    assert!(service.terminate().await.success(), "SIGTERM ends the service with status 0");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(PAYLOAD_MARK), "a payload reached the log:\n{text}");
    assert!(!text.contains(TOKEN), "a token reached the log:\n{text}");
    let lines: Vec<Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let call = |method: &str| {
        lines
            .iter()
            .find(|l| l["span"]["name"] == "rpc" && l["span"]["method"] == method)
            .unwrap_or_else(|| panic!("no log line of a {method} call in\n{text}"))
    };
    let put = &call("Put")["span"];
    assert_eq!(
        (&put["code"], &put["block"], &put["key"], &put["caller"]),
        (&"OK".into(), &"local-file-system/default".into(), &"logged/key".into(), &"ci".into())
    );
    assert!(put["duration_ms"].as_f64().is_some() && put["size"].as_u64().is_some(), "{put}");
    assert_eq!(call("Resolve")["span"]["code"], "OK");
    let refused = call("ListBlocks");
    assert_eq!(refused["span"]["code"], "UNAUTHENTICATED");
    assert_eq!(refused["level"], "INFO");
    assert!(lines.iter().any(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("draining"))), "{text}");
}

#[tokio::test]
async fn sighup_reloads_tokens_and_an_invalid_config_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    config(dir.path(), &[("old", "old-token")]);
    let log = dir.path().join("stderr.log");
    let service = Service::start(dir.path(), "127.0.0.1:0", Some(&log), &[]);
    let old = client(&service.url, "old-token").await;
    old.put(Put::json("[1]").serializer("json").key("before")).await.unwrap();

    config(dir.path(), &[("new", "new-token")]);
    service.signal(libc::SIGHUP);
    service.wait_for_metric("resultstore_config_reloads_total{outcome=\"applied\"} 1").await;
    assert_eq!(old.list_blocks().await.unwrap_err().code(), Some(Code::Unauthenticated));
    let new = client(&service.url, "new-token").await;
    let at = Target::Location { block: String::new(), key: "before".into() };
    assert_eq!(new.resolve(at.clone(), Want::Json, ReadOptions::default()).await.unwrap().json.as_deref(), Some("[1]"));

    std::fs::write(dir.path().join("config.toml"), "[blocks.\"local-file-system/default\"]\nurl = \"memory://\"\n")
        .unwrap();
    service.signal(libc::SIGHUP);
    service.wait_for_metric("resultstore_config_reloads_total{outcome=\"refused\"} 1").await;
    // The old generation (the new token, the file block) keeps serving.
    assert_eq!(new.resolve(at, Want::Json, ReadOptions::default()).await.unwrap().json.as_deref(), Some("[1]"));
    assert!(service.terminate().await.success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("configuration reload refused") && text.contains("does not fit the block type"), "{text}");
}

/// What one writer was told: acknowledged references, and keys whose Put failed (they may
/// or may not have been stored, but if stored they must be whole).
#[derive(Default)]
struct Ledger {
    acknowledged: Vec<(Reference, String)>,
    uncertain: Vec<(String, String)>,
    wrong_values: Vec<String>,
    resolves: u64,
}

#[tokio::test]
async fn thirty_seconds_of_load_across_sigterm_restarts_lose_no_acknowledged_put() {
    const CLIENTS: usize = 32;
    const RUN: Duration = Duration::from_secs(30);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "shutdown_grace_period = \"10s\"\n[blocks.\"local-file-system/default\"]\nurl = \"file://results\"\n",
    )
    .unwrap();
    let first = Service::start(dir.path(), "127.0.0.1:0", None, &[]);
    let url = first.url.clone();
    let listen = url.trim_start_matches("http://").to_owned();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();

    let mut clients = Vec::new();
    for w in 0..CLIENTS {
        let (url, ledger) = (url.clone(), ledger.clone());
        clients.push(tokio::spawn(async move {
            let client = loop {
                if let Ok(c) = Client::connect(url.clone()).await {
                    break c;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let mut mine: Vec<(Reference, String)> = Vec::new();
            let mut i = 0u64;
            while started.elapsed() < RUN {
                i += 1;
                let key = format!("w{w}/{i}");
                let value = format!("[{w}, {i}, \"{}\"]", "v".repeat((i as usize * 37) % 900));
                match client.put(Put::json(value.clone()).serializer("json").key(key.clone())).await {
                    Ok(Stored::Reference(r)) => {
                        mine.push((r.clone(), value.clone()));
                        ledger.lock().unwrap().acknowledged.push((r, value));
                    }
                    Ok(Stored::Literal(_)) => unreachable!("a list is never a literal"),
                    Err(_) => {
                        ledger.lock().unwrap().uncertain.push((key, value));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
                // Read back one of this writer's earlier results: it is what was put, or an error.
                let (r, expected) = &mine[(i as usize * 7919) % mine.len()];
                if let Ok(got) = client.resolve(r, Want::Json, ReadOptions::default()).await {
                    let mut l = ledger.lock().unwrap();
                    l.resolves += 1;
                    if got.json.as_deref() != Some(expected.as_str()) {
                        l.wrong_values.push(format!("{}: {:?} != {expected}", r.key(), got.json));
                    }
                }
            }
        }));
    }

    // Restart under load: SIGTERM, exit 0, start again on the same port, three times.
    let mut service = first;
    let mut restarts = 0;
    while started.elapsed() + Duration::from_secs(8) < RUN {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let status = service.terminate().await;
        assert!(status.success(), "SIGTERM under load exits 0, not {status}");
        let (dir, listen) = (dir.path().to_owned(), listen.clone());
        service = tokio::task::spawn_blocking(move || Service::start(&dir, &listen, None, &[])).await.unwrap();
        restarts += 1;
    }
    for c in clients {
        c.await.unwrap();
    }
    assert!(restarts >= 3, "{restarts} restarts");

    let client = Client::connect(service.url.clone()).await.unwrap();
    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert!(ledger.wrong_values.is_empty(), "clients saw wrong values: {:?}", ledger.wrong_values);
    assert!(
        ledger.acknowledged.len() > 1000 && ledger.resolves > 1000,
        "{} puts, {} resolves",
        ledger.acknowledged.len(),
        ledger.resolves
    );
    // Every acknowledged Put reads back, checked against its digest (a Resolve by reference does).
    let checks = ledger.acknowledged.iter().map(|(r, value)| {
        let client = client.clone();
        async move {
            let got = client.resolve(r, Want::Json, ReadOptions { bypass_cache: true, ..Default::default() }).await;
            let got = got.unwrap_or_else(|e| panic!("acknowledged {} is lost: {e}", r.key()));
            assert_eq!(got.json.as_deref(), Some(value.as_str()), "{}", r.key());
        }
    });
    futures::stream::iter(checks).buffer_unordered(64).collect::<Vec<()>>().await;
    let by_key: HashSet<&str> = ledger.acknowledged.iter().map(|(r, _)| r.key()).collect();
    // A Put that failed left nothing, or the whole value.
    for (key, value) in &ledger.uncertain {
        if by_key.contains(key.as_str()) {
            continue;
        }
        let at = Target::Location { block: String::new(), key: key.clone() };
        match client.resolve(at, Want::Json, ReadOptions::default()).await {
            Ok(got) => assert_eq!(got.json.as_deref(), Some(value.as_str()), "{key}"),
            Err(ClientError::Status(s)) if s.code() == Code::NotFound => {}
            Err(e) => panic!("{key}: {e}"),
        }
    }
    eprintln!(
        "{} acknowledged puts, {} failed during restarts, {} resolves, {restarts} restarts",
        ledger.acknowledged.len(),
        ledger.uncertain.len(),
        ledger.resolves
    );
    assert!(service.terminate().await.success());
}

/// The config of the hostile-client tests: tight connection and stream bounds, a token
/// that may write and one that may only read.
fn hostile_config(dir: &Path, extra: &str) {
    let text = format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[blocks.\"local-file-system/default\"]\nurl = \"file://results\"\n\
         [limits]\nmax_connections = 40\nconnection_preface_timeout = \"1s\"\nstream_idle_timeout = \"1s\"\n\
         max_concurrent_streams = 2\nmax_concurrent_requests = 4\n{extra}\
         [auth]\n[[auth.tokens]]\nname = \"writer\"\nsha256 = \"{}\"\nscopes = {{ \"*\" = [\"read\", \"write\", \"delete\"] }}\n\
         [[auth.tokens]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = {{ \"*\" = [\"read\"] }}\n",
        hash(TOKEN),
        hash("reader-token")
    );
    std::fs::write(dir.join("config.toml"), text).unwrap();
}

/// Sockets the process has open (its file descriptors that are sockets).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:")))
                .count()
        })
        .unwrap_or(0)
}

/// CPU seconds the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("comm").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Silent connections are closed after `connection_preface_timeout`, at most
/// `max_connections` are ever open, and a client that comes after them gets in.
#[tokio::test]
async fn silent_connections_are_closed_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    hostile_config(dir.path(), "");
    let service = Service::start(dir.path(), "127.0.0.1:0", None, &[]);
    let addr = service.url.trim_start_matches("http://").to_owned();
    let pid = service.child.id();
    let base = open_sockets(pid);
    let mut silent = Vec::new();
    for _ in 0..100 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.expect("connect"));
    }
    // The server holds at most max_connections of them; the others it accepts and closes
    // at once (one may be between the two when counted, hence the short wait).
    let deadline = Instant::now() + Duration::from_secs(1);
    while open_sockets(pid) - base > 40 {
        assert!(Instant::now() < deadline, "{} connections held open (max_connections = 40)", open_sockets(pid) - base);
        tokio::task::yield_now().await;
    }
    // Each is closed by the server once it stayed silent past the preface timeout.
    let started = Instant::now();
    for conn in &mut silent {
        // The server's SETTINGS frame may come first; then the end of the connection.
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "a silent connection was not closed within 10 s");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "closing took {:?}", started.elapsed());
    drop(silent);
    // Not locked out: a real client's calls go through.
    let c = client(&service.url, TOKEN).await;
    c.put(Put::json("1").key("after")).await.expect("a client after the silent ones");
    assert!(open_sockets(pid) - base <= 2, "connections left open: {}", open_sockets(pid) - base);
}

/// Streams that stall take neither the unary calls' places nor longer than
/// `stream_idle_timeout`; a read-only token's PutStream is refused before it takes a place.
#[tokio::test]
async fn stalled_streams_neither_lock_out_unary_calls_nor_outlive_their_idle_limit() {
    use resultstore_client::proto as pb;
    let dir = tempfile::tempdir().unwrap();
    hostile_config(dir.path(), "");
    let service = Service::start(dir.path(), "127.0.0.1:0", None, &[]);
    let writer = client(&service.url, TOKEN).await;
    let reader = client(&service.url, "reader-token").await;
    let header = || pb::PutStreamRequest {
        part: Some(pb::put_stream_request::Part::Header(pb::PutStreamHeader {
            key: "stalled".into(),
            task: Some(pb::ResultSettings {
                result_serializer: Some(resultstore_client::serializer_pb("json")),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    // Header, then silence: each stalled stream keeps its sender open.
    let mut senders = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..2 {
        let (mut tx, rx) = futures::channel::mpsc::channel(1);
        futures::SinkExt::send(&mut tx, header()).await.unwrap();
        let mut raw = writer.raw();
        calls.push(tokio::spawn(async move { raw.put_stream(rx).await }));
        senders.push(tx);
    }
    service.wait_for_metric("resultstore_rpc_in_flight 2").await;
    let started = Instant::now();
    // Unary calls still get in (max_concurrent_requests = 4, apart from streams).
    for i in 0..8 {
        writer.put(Put::json("1").key(format!("unary/{i}"))).await.expect("a unary call beside stalled streams");
    }
    // A third stream is shed; a reader's stream is refused for its scope first.
    let (mut tx, rx) = futures::channel::mpsc::channel(2);
    futures::SinkExt::send(&mut tx, header()).await.unwrap();
    drop(tx);
    let third = writer.raw().put_stream(rx).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third}");
    let (mut tx, rx) = futures::channel::mpsc::channel(2);
    futures::SinkExt::send(&mut tx, header()).await.unwrap();
    drop(tx);
    let refused = reader.raw().put_stream(rx).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    // The stalled ones end by themselves, DEADLINE_EXCEEDED naming the setting.
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
        assert!(err.message().contains("limits.stream_idle_timeout"), "{err}");
    }
    assert!(started.elapsed() < Duration::from_secs(5), "stalled streams lasted {:?}", started.elapsed());
    drop(senders);
}

/// Connections that sent the HTTP/2 preface and nothing more do not hold up SIGTERM, and
/// the accept loops (gRPC and metrics) at the open-file limit back off instead of spinning.
#[tokio::test]
async fn idle_connections_do_not_hold_up_sigterm_and_accept_errors_back_off() {
    let dir = tempfile::tempdir().unwrap();
    // More connections allowed than file descriptors: accept itself fails (EMFILE).
    hostile_config(dir.path(), "");
    let text = std::fs::read_to_string(dir.path().join("config.toml")).unwrap();
    std::fs::write(dir.path().join("config.toml"), text.replace("max_connections = 40", "max_connections = 1000"))
        .unwrap();
    let service = Service::start(dir.path(), "127.0.0.1:0", None, &[]);
    let pid = service.child.id();
    let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
    // SAFETY: prlimit(2) on the child this test spawned, with a valid rlimit.
    let set = unsafe { libc::prlimit(pid as libc::pid_t, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit");
    let addr = service.url.trim_start_matches("http://").to_owned();
    let mut conns = Vec::new();
    for _ in 0..100 {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        conns.push(conn);
    }
    // The metrics listener too (its accept failed the same way, and its loop spun).
    for _ in 0..5 {
        conns.push(tokio::net::TcpStream::connect(service.metrics.as_deref().unwrap()).await.expect("connect"));
    }
    // At the limit, accept fails over and over: the loops back off (a spinning loop
    // burns a whole core).
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(pid) - before;
    assert!(used < 0.5, "the accept loop used {used:.2} s of CPU in 2 s at the open-file limit");
    let started = Instant::now();
    let status = service.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "SIGTERM took {:?} with idle connections", started.elapsed());
    drop(conns);
}

/// The process's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM");
    kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
}

/// 200 concurrent 8 MiB Puts over 4 connections: the server's peak memory stays under the
/// formula of `docs/operations.md` (cache + fill budget + 3 × request bytes in flight +
/// 64 MiB for the process), every Put ends OK or RESOURCE_EXHAUSTED, and the refusals are
/// counted. With a budget too large to matter (4GiB) the peak was 1355 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversize_unary_requests_are_admitted_by_their_bytes() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[blocks.\"local-file-system/default\"]\nurl = \"file://results\"\n\
         [cache]\ncapacity = \"64MiB\"\nfill_budget = \"64MiB\"\n\
         [limits]\nmax_result_size = \"64MiB\"\nmax_request_bytes_in_flight = \"64MiB\"\n",
    )
    .unwrap();
    let service = Service::start(dir.path(), "127.0.0.1:0", None, &[]);
    let pid = service.child.id();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect_with_limit(service.url.clone(), 16 << 20).await.unwrap());
    }
    let payload = Arc::new(format!("\"{}\"", "x".repeat(8 << 20)));
    let mut puts = Vec::new();
    for i in 0..200 {
        let (c, payload) = (clients[i % clients.len()].clone(), payload.clone());
        puts.push(tokio::spawn(async move {
            c.put(Put::json(payload.as_str()).serializer("json").key(format!("big/{i}"))).await
        }));
    }
    let mut ok = 0;
    for p in puts {
        match p.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}"),
        }
    }
    assert!(ok > 0, "no Put got through");
    let peak = peak_rss(pid);
    let bound = 64 * MIB + 64 * MIB + 3 * 64 * MIB + 64 * MIB;
    eprintln!("peak RSS {} MiB, bound {} MiB, {ok} of 200 stored", peak / MIB, bound / MIB);
    assert!(peak < bound, "peak RSS {} MiB above the formula's {} MiB", peak / MIB, bound / MIB);
    let metrics = service.scrape().await;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("resultstore_request_bytes_refused_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the refusals counter");
    assert_eq!(refused, 200 - ok, "every Put not stored was refused by the byte budget");
}

/// GetStreams whose clients stop reading hold their places for at most
/// `stream_idle_timeout`: then they end with DEADLINE_EXCEEDED and a new stream gets in.
/// Before, each held its place until its client read on or went away.
#[tokio::test]
async fn get_streams_whose_clients_stop_reading_free_their_places() {
    let dir = tempfile::tempdir().unwrap();
    hostile_config(dir.path(), "max_message_size = \"4MiB\"\n");
    let service = Service::start(dir.path(), "127.0.0.1:0", None, &[]);
    let writer = client(&service.url, TOKEN).await;
    // 40 MiB: more than the HTTP/2 windows and the server's buffers hold.
    let payload = bytes::Bytes::from(format!("\"{}\"", "x".repeat(40 << 20)));
    let pieces: Vec<bytes::Bytes> =
        (0..payload.len()).step_by(1 << 20).map(|at| payload.slice(at..payload.len().min(at + (1 << 20)))).collect();
    let put = Put::data(bytes::Bytes::new()).serializer("json").key("big");
    writer.put_stream(put, futures::stream::iter(pieces)).await.expect("stored");
    let target = || Target::Location { block: String::new(), key: "big".into() };
    // max_concurrent_streams = 2: two clients open a stream each, read one piece, stop.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let c = client(&service.url, TOKEN).await;
        let mut stream = c.get_stream(target(), ReadOptions::default()).await.expect("a stream");
        stream.next_chunk().await.expect("a piece").expect("a piece");
        stalled.push((c, stream));
    }
    let started = Instant::now();
    // While they hold the places, a third is shed; once their idle limit passed, one gets in.
    let third = client(&service.url, TOKEN).await;
    let shed = third.get_stream(target(), ReadOptions::default()).await.err().expect("shed while both stall");
    assert_eq!(shed.code(), Some(Code::ResourceExhausted), "{shed}");
    let mut admitted = None;
    while started.elapsed() < Duration::from_secs(5) {
        match third.get_stream(target(), ReadOptions::default()).await {
            Ok(s) => {
                admitted = Some(s);
                break;
            }
            Err(e) => assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut fresh = admitted.expect("no place freed within 5 s of the stalls (stream_idle_timeout = 1s)");
    let mut read = 0;
    while let Some(chunk) = fresh.next_chunk().await.expect("the fresh stream reads whole") {
        read += chunk.len();
    }
    assert_eq!(read, payload.len());
    // The stalled ones, read on, end with DEADLINE_EXCEEDED naming the setting.
    for (_c, mut stream) in stalled {
        let err = loop {
            match stream.next_chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("a stalled stream ended whole"),
                Err(e) => break e,
            }
        };
        assert_eq!(err.code(), Some(Code::DeadlineExceeded), "{err}");
        assert!(err.to_string().contains("limits.stream_idle_timeout"), "{err}");
    }
}
