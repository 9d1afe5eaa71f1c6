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
    resultstore::auth::token_hash(token)
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
