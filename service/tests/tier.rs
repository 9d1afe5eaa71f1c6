//! One cache for every client: real `resultstore serve` processes on 127.0.0.1 forming a
//! tier (`[tier] peers`), and sidecars backed by it (`[tier] upstream`), read by clients
//! that do not route (the generated stubs, each call to the next replica in turn).
//!
//! Storage reads are counted from each process's own `/metrics`
//! (`resultstore_storage_operations_total{operation="get"}`), so every count here is what
//! the servers did, not what a client believes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use resultstore_client::routing::rendezvous_order;
use resultstore_proto::v1 as pb;
use resultstore_proto::v1::result_store_client::ResultStoreClient;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_resultstore");
const BLOCK: &str = "local-file-system/default";

/// A `resultstore serve` process, killed when dropped.
struct Node {
    child: Option<Child>,
    port: u16,
    metrics_port: u16,
    args: Vec<String>,
    dir: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    /// Starts `resultstore serve` with `config` on `port` (0: any), waiting for the lines
    /// it prints once it listens (no sleep).
    fn start(dir: &Path, name: &str, config: &str, port: u16, advertise: bool) -> Node {
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config).expect("write config");
        let mut args = vec![
            "serve".to_owned(),
            "--config".to_owned(),
            config_path.display().to_string(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--metrics-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        if advertise {
            args.extend(["--advertise".to_owned(), format!("127.0.0.1:{port}")]);
        }
        let mut node = Node { child: None, port, metrics_port: 0, args, dir: dir.to_owned() };
        node.spawn(name);
        node
    }

    fn spawn(&mut self, name: &str) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let mut child = Command::new(BIN)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start resultstore serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = || lines.next().expect("a line").expect("utf-8");
        let listening = next();
        let addr = listening.strip_prefix("resultstore listening on ").unwrap_or_else(|| panic!("{listening:?}"));
        self.port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("port");
        let metrics = next();
        let m = metrics.strip_prefix("resultstore metrics on http://").unwrap_or_else(|| panic!("{metrics:?}"));
        self.metrics_port = m.trim_end_matches("/metrics").rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, as a crashed pod.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn id(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn stub(&self) -> ResultStoreClient<Channel> {
        ResultStoreClient::connect(self.url()).await.expect("connect")
    }

    /// The process's own metrics, by series (name and labels) as printed.
    fn metrics(&self) -> BTreeMap<String, f64> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port)).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
            .collect()
    }

    /// Storage GETs this process made (every block).
    fn storage_gets(&self) -> u64 {
        sum(&self.metrics(), "resultstore_storage_operations_total{", "operation=\"get\"")
    }
}

/// The sum of the series named `prefix` whose labels contain `label`.
fn sum(metrics: &BTreeMap<String, f64>, prefix: &str, label: &str) -> u64 {
    metrics.iter().filter(|(k, _)| k.starts_with(prefix) && k.contains(label)).map(|(_, v)| *v as u64).sum()
}

fn block_config(dir: &Path, extra: &str) -> String {
    format!("default_block = \"{BLOCK}\"\n[blocks.\"{BLOCK}\"]\nurl = \"file://{}/results\"\n{extra}\n", dir.display())
}

/// Free ports for `n` replicas on which `keys` split evenly enough (no replica owns more
/// than `max_share` of them), so a test that fills caches to a fraction of their capacity
/// is not at the mercy of which ports the system handed out.
fn ports_for(n: usize, keys: &[String], max_share: f64) -> Vec<u16> {
    loop {
        let ports: Vec<u16> =
            (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
        let ids: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut owned = vec![0usize; n];
        for key in keys {
            let owner = rendezvous_order(&refs, key)[0];
            owned[refs.iter().position(|id| *id == owner).unwrap()] += 1;
        }
        let distinct = ports.iter().collect::<std::collections::BTreeSet<_>>().len() == n;
        if distinct && owned.iter().all(|&o| (o as f64) <= max_share * keys.len() as f64) {
            return ports;
        }
    }
}

struct Tier {
    nodes: Vec<Node>,
}

impl Tier {
    /// `ports.len()` replicas over the block in `dir`, each with `extra` in its config and
    /// `tier_extra` in its `[tier]` table.
    fn start(dir: &Path, ports: &[u16], extra: &str, tier_extra: &str) -> Tier {
        let peers: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let config = block_config(dir, &format!("{extra}\n[tier]\npeers = \"{}\"\n{tier_extra}\n", peers.join(",")));
        let nodes = ports
            .iter()
            .enumerate()
            .map(|(i, p)| Node::start(dir, &format!("replica{i}"), &config, *p, true))
            .collect();
        Tier { nodes }
    }

    fn storage_gets(&self) -> u64 {
        self.nodes.iter().filter(|n| n.child.is_some()).map(Node::storage_gets).sum()
    }

    fn urls(&self) -> String {
        self.nodes.iter().map(Node::url).collect::<Vec<_>>().join(",")
    }

    fn owner_of(&self, key: &str) -> usize {
        let ids: Vec<String> = self.nodes.iter().map(Node::id).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let owner = rendezvous_order(&refs, key)[0];
        refs.iter().position(|id| *id == owner).unwrap()
    }
}

/// Writes `keys` (JSON values of `size` bytes) through a server outside the tier, so the
/// tier's caches start empty and every first read is a storage read.
async fn write_outside(dir: &Path, keys: &[String], size: usize) {
    let writer = Node::start(dir, "writer", &block_config(dir, ""), 0, false);
    let mut stub = writer.stub().await;
    for key in keys {
        stub.put(put_json(key, &json_of(key, size))).await.expect("put");
    }
}

fn json_of(key: &str, size: usize) -> String {
    format!("\"{key}:{}\"", "x".repeat(size.saturating_sub(key.len() + 3)))
}

fn put_json(key: &str, json: &str) -> pb::PutRequest {
    pb::PutRequest {
        payload: Some(pb::put_request::Payload::Json(json.to_owned())),
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
        want: pb::Want::Json as i32,
        ..Default::default()
    }
}

fn json(reply: &pb::ResolveResponse) -> &str {
    match &reply.value {
        Some(pb::resolve_response::Value::Json(j)) => j,
        other => panic!("no JSON value: {other:?}"),
    }
}

/// Reads every key once, each call through the next stub in turn; returns the values.
async fn read_round_robin(stubs: &mut [ResultStoreClient<Channel>], keys: &[String], start: usize) -> Vec<String> {
    let mut values = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let n = stubs.len();
        let reply = stubs[(start + i) % n].resolve(by_location(key)).await.unwrap_or_else(|s| panic!("{key}: {s}"));
        values.push(json(reply.get_ref()).to_owned());
    }
    values
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}/result-{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_route_fill_each_result_from_storage_once() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys("fill", 300);
    write_outside(dir.path(), &keys, 1024).await;
    let tier = Tier::start(dir.path(), &ports_for(3, &keys, 0.5), "", "");
    let mut stubs = Vec::new();
    for node in &tier.nodes {
        stubs.push(node.stub().await);
    }
    // Two passes, each call to the next replica: every key is read through two replicas.
    let first = read_round_robin(&mut stubs, &keys, 0).await;
    let second = read_round_robin(&mut stubs, &keys, 1).await;
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(first[i], json_of(key, 1024));
        assert_eq!(second[i], first[i]);
    }
    // Each result filled once, by its owner: without the tier, 600.
    assert_eq!(tier.storage_gets(), keys.len() as u64);
    let forwarded: u64 =
        tier.nodes.iter().map(|n| sum(&n.metrics(), "resultstore_tier_forwarded_total{", "method=\"Resolve\"")).sum();
    assert!(forwarded >= keys.len() as u64, "calls that landed off their owner went to it: {forwarded}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_set_larger_than_one_replica_is_served_from_the_tiers_caches() {
    let dir = tempfile::tempdir().unwrap();
    // 1 MiB per replica; 2.5 MiB of entries (4 KiB results, each weighing its bytes
    // plus 512 bytes of overhead).
    let n = (2.5 * (1 << 20) as f64 / (4096.0 + 512.0)) as usize;
    let keys = keys("set", n);
    write_outside(dir.path(), &keys, 4096).await;
    let tier = Tier::start(
        dir.path(),
        &ports_for(3, &keys, 0.36),
        "[cache]\ncapacity = \"1MiB\"\nmax_entry_size = \"64KiB\"",
        "",
    );
    let mut stubs = Vec::new();
    for node in &tier.nodes {
        stubs.push(node.stub().await);
    }
    read_round_robin(&mut stubs, &keys, 0).await;
    let after_first = tier.storage_gets();
    assert_eq!(after_first, keys.len() as u64);
    read_round_robin(&mut stubs, &keys, 2).await;
    assert_eq!(tier.storage_gets(), after_first, "the second pass was served from the three caches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_replica_are_seen_at_once_through_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys("overwrite", 30);
    let ports = ports_for(3, &keys, 1.0);
    // No copies: every read by location goes to the owner.
    let tier = Tier::start(dir.path(), &ports, "", "copies = 0");
    let mut stubs = Vec::new();
    for node in &tier.nodes {
        stubs.push(node.stub().await);
    }
    for (i, key) in keys.iter().enumerate() {
        let writer = i % 3;
        stubs[writer].put(put_json(key, "\"one\"")).await.expect("put");
        for s in stubs.iter_mut() {
            assert_eq!(json(s.resolve(by_location(key)).await.expect("read").get_ref()), "\"one\"");
        }
        // Overwritten through another replica: every replica answers the new value at once.
        stubs[(writer + 1) % 3].put(put_json(key, "\"two\"")).await.expect("overwrite");
        for (n, s) in stubs.iter_mut().enumerate() {
            assert_eq!(json(s.resolve(by_location(key)).await.expect("read").get_ref()), "\"two\"", "{key} via {n}");
        }
        // Deleted through a third: gone everywhere.
        let location = Some(pb::Location { block: BLOCK.into(), key: key.clone() });
        stubs[(writer + 2) % 3].delete(pb::DeleteRequest { location: location.clone() }).await.expect("delete");
        for s in stubs.iter_mut() {
            let status = s.resolve(by_location(key)).await.expect_err("deleted");
            assert_eq!(status.code(), tonic::Code::NotFound);
            assert!(!s.exists(pb::ExistsRequest { location: location.clone() }).await.unwrap().get_ref().exists);
        }
    }
    // A result kept only in memory lives on its owner and is read through any replica.
    let mut memory_only = put_json("", "\"in memory\"");
    memory_only.task.as_mut().unwrap().persist_result = Some(false);
    let reply = stubs[0].put(memory_only).await.expect("put").into_inner();
    let Some(pb::put_response::Result::Reference(reference)) = reply.result else { panic!("{reply:?}") };
    assert_eq!(reference.persisted, Some(false));
    for s in stubs.iter_mut() {
        let read = s
            .resolve(pb::ResolveRequest {
                target: Some(pb::resolve_request::Target::Reference(reference.clone())),
                want: pb::Want::Json as i32,
                ..Default::default()
            })
            .await
            .expect("a result kept in its owner's memory");
        assert_eq!(json(read.get_ref()), "\"in memory\"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_prefix_through_one_replica_empties_every_replicas_cache() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys("bulk", 40);
    let tier = Tier::start(dir.path(), &ports_for(3, &keys, 1.0), "", "");
    let mut stubs = Vec::new();
    for node in &tier.nodes {
        stubs.push(node.stub().await);
    }
    for key in &keys {
        stubs[0].put(put_json(key, "\"cached\"")).await.expect("put");
    }
    read_round_robin(&mut stubs, &keys, 0).await;
    let reply = stubs[1]
        .delete_prefix(pb::DeletePrefixRequest { block: BLOCK.into(), prefix: "bulk/".into(), all: false })
        .await
        .expect("delete prefix");
    assert_eq!(reply.get_ref().deleted, keys.len() as u64);
    for (i, key) in keys.iter().enumerate() {
        let status = stubs[i % 3].resolve(by_location(key)).await.expect_err("deleted");
        assert_eq!(status.code(), tonic::Code::NotFound, "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_keys_are_copied_on_non_owners_and_lag_at_most_their_time_to_live() {
    let dir = tempfile::tempdir().unwrap();
    let key = "hot/one".to_owned();
    // Long enough that 50 reads on a busy machine fit in one copy's life.
    let ttl = Duration::from_millis(1500);
    let tier = Tier::start(
        dir.path(),
        &ports_for(3, &[], 1.0),
        "",
        &format!("copy_time_to_live = \"{}ms\"\ncopy_after_reads = 3", ttl.as_millis()),
    );
    let owner = tier.owner_of(&key);
    let other = (owner + 1) % 3;
    let mut via_other = tier.nodes[other].stub().await;
    let mut via_owner = tier.nodes[owner].stub().await;
    via_owner.put(put_json(&key, "\"v1\"")).await.expect("put");
    let owner_resolves =
        |t: &Tier| sum(&t.nodes[owner].metrics(), "resultstore_rpc_requests_total{", "method=\"Resolve\"");
    let before = owner_resolves(&tier);
    for _ in 0..50 {
        assert_eq!(json(via_other.resolve(by_location(&key)).await.unwrap().get_ref()), "\"v1\"");
    }
    let reached_owner = owner_resolves(&tier) - before;
    // The third read made the copy; the 47 after it were served from it, unless the copy
    // aged out in between (then one more read reaches the owner per time_to_live).
    assert!(reached_owner < 10, "50 reads of a hot key reached its owner {reached_owner} times");
    let hits = sum(&tier.nodes[other].metrics(), "resultstore_tier_copy_hits_total", "");
    assert_eq!(hits + reached_owner, 50);

    // Overwritten through the owner: the copy serves the old value at most `ttl` more.
    let put = via_owner.put(put_json(&key, "\"v2\"")).await.expect("overwrite").into_inner();
    let overwritten = Instant::now();
    loop {
        // When the read was asked: a copy taken before the overwrite is older than that.
        let asked = overwritten.elapsed();
        let value = json(via_other.resolve(by_location(&key)).await.unwrap().get_ref()).to_owned();
        if value == "\"v2\"" {
            break;
        }
        assert_eq!(value, "\"v1\"");
        assert!(asked < ttl, "a copy served past its time to live ({asked:?})");
    }
    // By reference, the new result is served at once, and the old reference never gets
    // the new bytes.
    let Some(pb::put_response::Result::Reference(new_ref)) = put.result else { panic!() };
    let read = via_other
        .resolve(pb::ResolveRequest {
            target: Some(pb::resolve_request::Target::Reference(new_ref)),
            want: pb::Want::Json as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(json(read.get_ref()), "\"v2\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_fill_from_the_tier_and_write_through_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys("side", 100);
    write_outside(dir.path(), &keys, 512).await;
    let tier = Tier::start(dir.path(), &ports_for(3, &keys, 0.5), "", "");
    let ttl = Duration::from_millis(400);
    let sidecar_config = block_config(
        dir.path(),
        &format!("[tier]\nupstream = \"{}\"\ncopy_time_to_live = \"{}ms\"\n", tier.urls(), ttl.as_millis()),
    );
    let first = Node::start(dir.path(), "sidecar1", &sidecar_config, 0, false);
    let second = Node::start(dir.path(), "sidecar2", &sidecar_config, 0, false);
    let mut one = vec![first.stub().await];
    let mut two = vec![second.stub().await];

    read_round_robin(&mut one, &keys, 0).await;
    assert_eq!(tier.storage_gets(), keys.len() as u64, "the first sidecar's reads filled the tier");
    let values = read_round_robin(&mut two, &keys, 0).await;
    assert_eq!(values[7], json_of(&keys[7], 512));
    assert_eq!(tier.storage_gets(), keys.len() as u64, "the second sidecar's first reads made no storage read");
    assert_eq!(first.storage_gets() + second.storage_gets(), 0, "sidecars read through the tier, not storage");
    // Read again: the second sidecar's first level answers, the tier sees nothing.
    let tier_resolves = |t: &Tier| -> u64 {
        t.nodes.iter().map(|n| sum(&n.metrics(), "resultstore_rpc_requests_total{", "method=\"Resolve\"")).sum()
    };
    // The last keys read, read again at once (well within the copies' time to live).
    let before = tier_resolves(&tier);
    read_round_robin(&mut two, &keys[keys.len() - 10..], 0).await;
    assert_eq!(tier_resolves(&tier), before, "repeated reads served by the sidecar's first level");

    // A write through a sidecar lands in the tier (at the key's owner) and in storage.
    let key = "side/written-by-a-sidecar";
    two[0].put(put_json(key, "\"from the sidecar\"")).await.expect("put");
    let owner = tier.owner_of(key);
    let mut at_owner = tier.nodes[owner].stub().await;
    let read = at_owner.resolve(by_location(key)).await.unwrap();
    assert_eq!(json(read.get_ref()), "\"from the sidecar\"");
    assert!(read.get_ref().cache_hit, "the owner's cache took the write");
    assert!(dir.path().join("results").join(key).is_file());

    // Overwritten through the tier: the other sidecar's copy lags at most its time to live.
    assert_eq!(json(one[0].resolve(by_location(key)).await.unwrap().get_ref()), "\"from the sidecar\"");
    at_owner.put(put_json(key, "\"from the tier\"")).await.expect("overwrite");
    let overwritten = Instant::now();
    loop {
        let asked = overwritten.elapsed();
        let value = json(one[0].resolve(by_location(key)).await.unwrap().get_ref()).to_owned();
        if value == "\"from the tier\"" {
            break;
        }
        assert!(asked < ttl, "a first-level copy outlived its time to live ({asked:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_and_restarted_under_load_moves_only_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let keys = keys("kill", 60);
    write_outside(dir.path(), &keys, 256).await;
    // No copies: every read of a killed replica's key goes looking for its owner.
    let mut tier = Tier::start(dir.path(), &ports_for(3, &keys, 0.5), "", "backoff = \"500ms\"\ncopies = 0");
    let victim = 2;
    let victims_keys: Vec<&String> = keys.iter().filter(|k| tier.owner_of(k) == victim).collect();
    assert!(!victims_keys.is_empty());
    let mut stubs = vec![tier.nodes[0].stub().await, tier.nodes[1].stub().await];
    read_round_robin(&mut stubs, &keys, 0).await;

    // Load: the two replicas that stay, every key, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    // Ends the load however the test ends (a failed assertion too), before the nodes go.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_on_drop = StopOnDrop(stop.clone());
    let (calls, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for s in &stubs {
        let (mut s, keys, stop, calls, failures) =
            (s.clone(), keys.clone(), stop.clone(), calls.clone(), failures.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for key in &keys {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                    match s.resolve(by_location(key)).await {
                        Ok(r) if json(r.get_ref()) == json_of(key, 256) => {}
                        Ok(r) => panic!("{key}: wrong value {:?}", r.get_ref().value),
                        Err(status) => {
                            eprintln!("{key}: {status}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    wait_for_calls(calls.clone(), 200).await;
    let staying_gets = |t: &Tier| t.nodes[..2].iter().map(Node::storage_gets).sum::<u64>();
    let gets_before_kill = staying_gets(&tier);
    tier.nodes[victim].kill();
    wait_for_calls(calls.clone(), 600).await;
    // The killed replica's keys were served by the replicas that stayed: each read from
    // storage once more there (its next replica's cache), the others not at all.
    let moved = staying_gets(&tier) - gets_before_kill;
    assert!(
        moved >= victims_keys.len() as u64 && moved <= 2 * victims_keys.len() as u64,
        "{moved} storage reads for {} moved keys",
        victims_keys.len()
    );
    let fallbacks: u64 =
        tier.nodes[..2].iter().map(|n| sum(&n.metrics(), "resultstore_tier_fallbacks_total{", "")).sum();
    assert!(fallbacks > 0, "the replicas said they served the killed replica's keys themselves");

    // Restarted on its port: its keys go back to it.
    tier.nodes[victim].spawn("replica2-again");
    let forwarded_to_victim =
        || sum(&tier.nodes[victim].metrics(), "resultstore_rpc_requests_total{", "method=\"Resolve\"");
    let started = Instant::now();
    while forwarded_to_victim() == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the restarted replica was never asked for its keys");
        wait_for_calls(calls.clone(), 60).await;
    }
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "calls to the replicas that stayed failed");
}

/// Returns once `more` calls were made after this one was: progress of the load, which is
/// what the steps of the kill test wait for (not time).
async fn wait_for_calls(calls: Arc<AtomicU64>, more: u64) {
    let target = calls.load(Ordering::Relaxed) + more;
    while calls.load(Ordering::Relaxed) < target {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn stream_header(key: &str, size: u64) -> pb::PutStreamRequest {
    pb::PutStreamRequest {
        part: Some(pb::put_stream_request::Part::Header(pb::PutStreamHeader {
            payload: pb::StreamPayload::Data as i32,
            task: Some(pb::ResultSettings {
                result_serializer: Some(pb::Serializer { r#type: "json".into(), config_json: String::new() }),
                ..Default::default()
            }),
            key: key.to_owned(),
            size: Some(size),
            ..Default::default()
        })),
    }
}

fn chunk(bytes: &[u8]) -> pb::PutStreamRequest {
    pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::Chunk(bytes.to_vec().into())) }
}

/// GetStream through `stub`: the bytes of its chunks.
async fn get_stream(stub: &mut ResultStoreClient<Channel>, key: &str) -> Vec<u8> {
    let request = pb::GetRequest {
        target: Some(pb::get_request::Target::Location(pb::Location { block: BLOCK.into(), key: key.into() })),
        ..Default::default()
    };
    let mut messages = stub.get_stream(request).await.expect("get stream").into_inner();
    let mut bytes = Vec::new();
    let mut trailer = false;
    while let Some(m) = messages.message().await.expect("message") {
        match m.part {
            Some(pb::get_stream_response::Part::Chunk(c)) => bytes.extend_from_slice(&c),
            Some(pb::get_stream_response::Part::Trailer(_)) => trailer = true,
            _ => {}
        }
    }
    assert!(trailer, "a whole stream ends with its trailer");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_go_through_the_owner_and_an_unfinished_one_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = "streams/big".to_owned();
    let mut tier = Tier::start(dir.path(), &ports_for(3, &[], 1.0), "", "");
    let owner = tier.owner_of(&key);
    let (other, third) = ((owner + 1) % 3, (owner + 2) % 3);
    let mut via_other = tier.nodes[other].stub().await;
    let payload = format!("\"{}\"", "y".repeat(200_000)).into_bytes();
    let messages =
        vec![stream_header(&key, payload.len() as u64), chunk(&payload[..100_000]), chunk(&payload[100_000..])];
    via_other.put_stream(futures::stream::iter(messages)).await.expect("put stream");
    let count = |n: &Node, name: &str, method: &str| sum(&n.metrics(), name, &format!("method=\"{method}\""));
    assert_eq!(count(&tier.nodes[owner], "resultstore_rpc_requests_total{", "PutStream"), 1, "the owner took it");
    assert_eq!(count(&tier.nodes[other], "resultstore_tier_forwarded_total{", "PutStream"), 1);
    assert_eq!(get_stream(&mut via_other, &key).await, payload);
    assert_eq!(count(&tier.nodes[owner], "resultstore_rpc_requests_total{", "GetStream"), 1, "read at the owner");

    // A stream that stops half-way (its client goes away) stores nothing, through a
    // forward too: the key keeps its value.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(stream_header(&key, payload.len() as u64)).await.unwrap();
    tx.send(chunk(b"\"half")).await.unwrap();
    let mut stub = via_other.clone();
    let call = tokio::spawn(async move { stub.put_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    // Until the owner has the stream open (its in-flight gauge), then the client goes.
    let owner_node = &tier.nodes[owner];
    while sum(&owner_node.metrics(), "resultstore_rpc_in_flight", "") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.abort();
    drop(tx);
    let _ = call.await;
    while sum(&owner_node.metrics(), "resultstore_rpc_in_flight", "") > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(get_stream(&mut via_other, &key).await, payload, "the unfinished stream changed nothing");

    // With the owner gone, a stream goes to the key's next replica (no chunk was taken).
    tier.nodes[owner].kill();
    let next = rendezvous_order(&[&tier.nodes[other].id(), &tier.nodes[third].id()], &key)[0].to_owned();
    let mut via_third = tier.nodes[third].stub().await;
    let again = format!("\"{}\"", "z".repeat(50_000)).into_bytes();
    let messages = vec![stream_header(&key, again.len() as u64), chunk(&again)];
    via_third.put_stream(futures::stream::iter(messages)).await.expect("put stream with the owner gone");
    assert_eq!(get_stream(&mut via_other, &key).await, again);
    let served_by = if next == tier.nodes[third].id() { third } else { other };
    assert!(
        count(&tier.nodes[served_by], "resultstore_rpc_requests_total{", "PutStream") >= 1,
        "the key's next replica took the stream"
    );
    let fell_back: u64 =
        [other, third].iter().map(|&n| count(&tier.nodes[n], "resultstore_tier_fallbacks_total{", "PutStream")).sum();
    assert!(fell_back >= 1, "answered without the owner, and said so");
}

/// A replica whose peers' DNS name has no address yet (a headless Service lists ready pods
/// only, and none is ready while the first one starts) starts, serves every call itself,
/// and keeps looking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_peers_are_not_in_dns_yet_serves_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = block_config(dir.path(), "[tier]\npeers = \"dns://no-such-replicas.invalid:50051\"\n");
    let node = Node::start(dir.path(), "alone", &config, 0, true);
    let mut stub = node.stub().await;
    stub.put(put_json("alone/key", "\"here\"")).await.expect("put");
    let read = stub.resolve(by_location("alone/key")).await.expect("read");
    assert_eq!(json(read.get_ref()), "\"here\"");
    assert!(read.get_ref().cache_hit);
}
