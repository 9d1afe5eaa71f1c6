//! The tier's scenarios (issue 18): replicas that fill from each other and sidecars backed
//! by them, read by clients that do not route (the generated stubs, each call to the next
//! replica in turn), against the same processes without `[tier]` in the same run.
//!
//! Every server here is a real `resultstore serve` process (the binary built beside this
//! one) over one local-files block; storage reads are read off each process's own
//! `/metrics`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use resultstore_client::routing::rendezvous_order;
use resultstore_proto::v1 as pb;
use resultstore_proto::v1::result_store_client::ResultStoreClient;
use tonic::transport::Channel;

use crate::Row;
use crate::load::closed_loop;

const BLOCK: &str = "local-file-system/default";
type Stub = ResultStoreClient<Channel>;

/// A `resultstore serve` process, killed when dropped.
struct Node {
    child: Option<Child>,
    port: u16,
    metrics_port: u16,
    args: Vec<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    fn start(dir: &Path, name: &str, config: &str, port: u16, advertise: bool) -> anyhow::Result<Node> {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, config)?;
        let mut args: Vec<String> = ["serve", "--config", &path.display().to_string()].map(String::from).to_vec();
        args.extend(["--listen".into(), format!("127.0.0.1:{port}"), "--metrics-listen".into(), "127.0.0.1:0".into()]);
        if advertise {
            args.extend(["--advertise".into(), format!("127.0.0.1:{port}")]);
        }
        let mut node = Node { child: None, port, metrics_port: 0, args };
        node.spawn()?;
        Ok(node)
    }

    /// Starts the process and waits for the two lines it prints once it listens.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = std::env::current_exe()?.with_file_name("resultstore");
        let mut child = Command::new(&bin)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let port_of = |line: Option<std::io::Result<String>>| -> anyhow::Result<u16> {
            let line = line.context("the server exited before listening")??;
            let port = line.trim_end_matches("/metrics").rsplit_once(':').and_then(|(_, p)| p.parse().ok());
            port.with_context(|| format!("unexpected line {line:?}"))
        };
        self.port = port_of(lines.next())?;
        self.metrics_port = port_of(lines.next())?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn id(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn stub(&self) -> anyhow::Result<Stub> {
        Ok(ResultStoreClient::connect(format!("http://{}", self.id())).await?)
    }

    /// The sum of this process's series named `prefix` whose labels contain `label`.
    fn metric(&self, prefix: &str, label: &str) -> u64 {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else { return 0 };
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(label))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .map(|v| v as u64)
            .sum()
    }

    fn storage_gets(&self) -> u64 {
        self.metric("resultstore_storage_operations_total{", "operation=\"get\"")
    }
}

fn block_config(dir: &Path, extra: &str) -> String {
    format!("default_block = \"{BLOCK}\"\n[blocks.\"{BLOCK}\"]\nurl = \"file://{}/results\"\n{extra}\n", dir.display())
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners: Vec<_> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Three replicas over `dir`'s block: a tier (`tier` set: the `[tier]` table's extra lines)
/// or three servers on their own (`None`).
fn replicas(dir: &Path, name: &str, cache: &str, tier: Option<&str>) -> anyhow::Result<Vec<Node>> {
    let ports = free_ports(3)?;
    let peers: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
    let table = match tier {
        Some(extra) => format!("[tier]\npeers = \"{}\"\n{extra}\n", peers.join(",")),
        None => String::new(),
    };
    let config = block_config(dir, &format!("{cache}\n{table}"));
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| Node::start(dir, &format!("{name}{i}"), &config, *p, tier.is_some()))
        .collect()
}

fn gets(nodes: &[Node]) -> u64 {
    nodes.iter().filter(|n| n.child.is_some()).map(Node::storage_gets).sum()
}

async fn stubs(nodes: &[Node]) -> anyhow::Result<Vec<Stub>> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.stub().await?);
    }
    Ok(out)
}

fn put_json(key: &str, json: String) -> pb::PutRequest {
    pb::PutRequest {
        payload: Some(pb::put_request::Payload::Json(json)),
        task: Some(pb::ResultSettings {
            result_serializer: Some(pb::Serializer { r#type: "json".into(), config_json: String::new() }),
            ..Default::default()
        }),
        key: key.to_owned(),
        ..Default::default()
    }
}

fn by_location(key: &str) -> pb::ResolveRequest {
    pb::ResolveRequest {
        target: Some(pb::resolve_request::Target::Location(pb::Location { block: BLOCK.into(), key: key.into() })),
        want: pb::Want::Raw as i32,
        ..Default::default()
    }
}

/// Writes `n` results of `size` bytes through a server of their own, so every cache of
/// the servers measured starts empty.
async fn write(dir: &Path, prefix: &str, n: usize, size: usize) -> anyhow::Result<Vec<String>> {
    let writer =
        Node::start(dir, &format!("writer-{}", prefix.trim_end_matches('/')), &block_config(dir, ""), 0, false)?;
    let mut stub = writer.stub().await?;
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i:05}")).collect();
    for key in &keys {
        stub.put(put_json(key, format!("\"{}\"", "x".repeat(size - 2)))).await?;
    }
    Ok(keys)
}

/// Reads every key once, call `i` through `stubs[(start + i) % len]`.
async fn pass(stubs: &mut [Stub], keys: &[String], start: usize) -> anyhow::Result<()> {
    let n = stubs.len();
    for (i, key) in keys.iter().enumerate() {
        stubs[(start + i) % n].resolve(by_location(key)).await.with_context(|| key.clone())?;
    }
    Ok(())
}

/// The tier's rows (see the module docs).
pub async fn scenarios(quick: bool, secs: Duration, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    fills(dir, quick, rows).await?;
    working_set(dir, rows).await?;
    sidecars(dir, quick, rows).await?;
    hops(dir, secs, rows).await?;
    hot_key(dir, secs, rows).await?;
    kill(dir, quick, rows).await?;
    Ok(())
}

/// 1,000 distinct results read twice, each call to the next replica.
async fn fills(dir: &Path, quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = if quick { 200 } else { 1000 };
    let keys = write(dir, "fill/", n, 1024).await?;
    let mut measured = Vec::new();
    for tier in [Some(""), None] {
        let nodes = replicas(dir, "fill", "", tier)?;
        let mut s = stubs(&nodes).await?;
        pass(&mut s, &keys, 0).await?;
        pass(&mut s, &keys, 1).await?;
        measured.push(gets(&nodes));
    }
    rows.push(
        Row::new(
            format!("tier: 3 replicas, clients that do not route read {n} results twice (round-robin)"),
            format!("{} storage GETs", measured[0]),
            format!("3 replicas without [tier]: {} storage GETs", measured[1]),
        )
        .target(format!("GETs = {n}"), measured[0] == n as u64),
    );
    Ok(())
}

/// A working set of 2.5× one replica's cache, read twice round-robin.
async fn working_set(dir: &Path, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let capacity = 1 << 20;
    let size = 4096;
    let n = (2.5 * capacity as f64 / (size + 512) as f64) as usize;
    let keys = write(dir, "set/", n, size).await?;
    let cache = format!("[cache]\ncapacity = {capacity}\nmax_entry_size = \"64KiB\"");
    let mut second = Vec::new();
    for tier in [Some(""), None] {
        let nodes = replicas(dir, "set", &cache, tier)?;
        let mut s = stubs(&nodes).await?;
        pass(&mut s, &keys, 0).await?;
        let after_first = gets(&nodes);
        pass(&mut s, &keys, 2).await?;
        second.push(gets(&nodes) - after_first);
    }
    rows.push(
        Row::new(
            format!("tier: working set 2.5× one replica's cache ({n} × 4 KiB, 1 MiB each), second pass"),
            format!("{} storage GETs ({:.1}% of reads)", second[0], 100.0 * second[0] as f64 / n as f64),
            format!("without [tier]: {} storage GETs", second[1]),
        )
        .target("≤ 2% of reads", (second[0] as f64) <= 0.02 * n as f64),
    );
    Ok(())
}

/// Two sidecars whose upstream is the tier: the second's first reads.
async fn sidecars(dir: &Path, quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = if quick { 100 } else { 500 };
    let keys = write(dir, "side/", n, 1024).await?;
    let tier = replicas(dir, "side-tier", "", Some(""))?;
    let urls: Vec<String> = tier.iter().map(|n| format!("http://{}", n.id())).collect();
    let mut measured = Vec::new();
    for upstream in [true, false] {
        let config = if upstream {
            block_config(dir, &format!("[tier]\nupstream = \"{}\"\n", urls.join(",")))
        } else {
            block_config(dir, "")
        };
        let first = Node::start(dir, "sidecar-a", &config, 0, false)?;
        let second = Node::start(dir, "sidecar-b", &config, 0, false)?;
        pass(&mut [first.stub().await?], &keys, 0).await?;
        let before = gets(&tier) + first.storage_gets() + second.storage_gets();
        pass(&mut [second.stub().await?], &keys, 0).await?;
        measured.push(gets(&tier) + first.storage_gets() + second.storage_gets() - before);
    }
    rows.push(
        Row::new(
            format!("tier: two sidecars backed by the tier; the second sidecar's first reads of {n} results"),
            format!("{} storage GETs", measured[0]),
            format!("two sidecars on their own: {} storage GETs", measured[1]),
        )
        .target("GETs = 0", measured[0] == 0),
    );
    Ok(())
}

/// A cache hit through a replica that does not own the key (one hop) against the owner.
async fn hops(dir: &Path, secs: Duration, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let nodes = replicas(dir, "hop", "", Some("copies = 0"))?;
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let key = (0..).map(|i| format!("hop/{i}")).find(|k| rendezvous_order(&refs, k)[0] == refs[0]).context("a key")?;
    nodes[0].stub().await?.put(put_json(&key, format!("\"{}\"", "h".repeat(1022)))).await?;
    for concurrency in [1, 64] {
        let owner = vec![nodes[0].stub().await?; 4];
        let other = vec![nodes[1].stub().await?; 4];
        let read = |key: String| {
            move |mut c: Stub, _n: u64| {
                let key = key.clone();
                async move {
                    Ok(c.resolve(by_location(&key)).await?.get_ref().reference.as_ref().map_or(0, |r| r.size as usize))
                }
            }
        };
        let direct = closed_loop(&owner, concurrency, secs, read(key.clone())).await;
        let hop = closed_loop(&other, concurrency, secs, read(key.clone())).await;
        rows.push(
            Row::new(
                format!("tier: 1 KiB hit through a non-owner (one hop), {concurrency} in flight"),
                hop.summary(),
                format!("through the owner: {}", direct.summary()),
            )
            .ratio(hop.rps() / direct.rps()),
        );
    }
    Ok(())
}

/// One key read by 64 callers through the two replicas that do not own it.
async fn hot_key(dir: &Path, secs: Duration, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut measured = Vec::new();
    for copies in ["", "copies = 0"] {
        let nodes = replicas(dir, "hot", "", Some(copies))?;
        let ids: Vec<String> = nodes.iter().map(Node::id).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let key =
            (0..).map(|i| format!("hot/{i}")).find(|k| rendezvous_order(&refs, k)[0] == refs[0]).context("a key")?;
        nodes[0].stub().await?.put(put_json(&key, format!("\"{}\"", "h".repeat(1022)))).await?;
        let others = vec![nodes[1].stub().await?, nodes[2].stub().await?];
        let before = nodes[0].metric("resultstore_rpc_requests_total{", "method=\"Resolve\"");
        let k = key.clone();
        let stats = closed_loop(&others, 64, secs, move |mut c: Stub, _n| {
            let key = k.clone();
            async move {
                Ok(c.resolve(by_location(&key)).await?.get_ref().reference.as_ref().map_or(0, |r| r.size as usize))
            }
        })
        .await;
        let at_owner = nodes[0].metric("resultstore_rpc_requests_total{", "method=\"Resolve\"") - before;
        measured.push((stats, at_owner));
    }
    let [(with, owner_with), (without, owner_without)] = [measured[0].clone(), measured[1].clone()];
    rows.push(
        Row::new(
            "tier: one hot key, 64 callers through the 2 non-owners".to_owned(),
            format!("{}; the owner answered {owner_with} of them", with.summary()),
            format!("no copies: {}; the owner answered {owner_without}", without.summary()),
        )
        .ratio(with.rps() / without.rps()),
    );
    Ok(())
}

/// A replica killed under read load, then restarted.
async fn kill(dir: &Path, quick: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let n = if quick { 60 } else { 300 };
    let keys = write(dir, "kill/", n, 1024).await?;
    let mut nodes = replicas(dir, "kill", "", Some("copies = 0\nbackoff = \"1s\""))?;
    let ids: Vec<String> = nodes.iter().map(Node::id).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let victims: Vec<String> = keys.iter().filter(|k| rendezvous_order(&refs, k)[0] == refs[2]).cloned().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    // When each of the killed replica's keys was last answered (ms since the start).
    let started = Instant::now();
    let answered: Arc<Vec<AtomicU64>> = Arc::new(victims.iter().map(|_| AtomicU64::new(0)).collect());
    let mut load = Vec::new();
    for stub in stubs(&nodes[..2]).await? {
        for task in 0..4 {
            let (mut stub, keys, victims) = (stub.clone(), keys.clone(), victims.clone());
            let (stop, failed, answered) = (stop.clone(), failed.clone(), answered.clone());
            load.push(tokio::spawn(async move {
                let mut i = task;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[i % keys.len()];
                    i += 4;
                    match stub.resolve(by_location(key)).await {
                        Ok(_) => {
                            if let Some(v) = victims.iter().position(|k| k == key) {
                                answered[v].store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
    }
    let settle = Duration::from_millis(if quick { 300 } else { 1000 });
    tokio::time::sleep(settle).await;
    let killed_at = started.elapsed().as_millis() as u64;
    nodes[2].kill();
    tokio::time::sleep(settle).await;
    // Every one of its keys answered again after the kill: the longest wait.
    let back = answered.iter().map(|a| a.load(Ordering::Relaxed)).min().unwrap_or(0);
    let all_back = back > killed_at;
    let restarted = Instant::now();
    nodes[2].spawn()?;
    let mut served_again = None;
    while restarted.elapsed() < Duration::from_secs(10) {
        if nodes[2].metric("resultstore_rpc_requests_total{", "method=\"Resolve\"") > 0 {
            served_again = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    let failed = failed.load(Ordering::Relaxed);
    let fallbacks: u64 = nodes[..2].iter().map(|n| n.metric("resultstore_tier_fallbacks_total{", "")).sum();
    let Some(served_again) = served_again else { bail!("the restarted replica was never asked for its keys") };
    rows.push(
        Row::new(
            format!("tier: a replica killed under read load (8 callers through the other two, {n} keys)"),
            format!(
                "{failed} failed calls; its {} keys answered by their next replica at once ({fallbacks} calls); \
                 restarted, it served its keys again after {} ms",
                victims.len(),
                served_again.as_millis()
            ),
            "-",
        )
        .target("0 failed calls", failed == 0 && all_back),
    );
    Ok(())
}
