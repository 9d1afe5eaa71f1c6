//! Key routing across three replicas that share one storage, as a shared cache tier runs.
//!
//! Three real servers on 127.0.0.1 read one local-file-system folder; a fourth (the
//! writer) stored the results there, so the replicas' caches start empty and every first
//! read is a storage read. One client is given the three URLs and routes by key. The
//! servers run in the test's process, so the counts read here (storage GETs, cache
//! entries) are the servers' own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use resultstore::wire::server::{ServerHandle, start};
use resultstore::{Config, ResultStore};
use resultstore_client::routing::rendezvous_order;
use resultstore_client::{Client, ConnectOptions, Put, ReadOptions, Target, Want};
use tokio::net::TcpListener;

const BLOCK: &str = "local-file-system/default";

fn config(dir: &Path, cache: &str) -> Config {
    Config::from_toml(&format!(
        "default_block = \"{BLOCK}\"\n[blocks.\"{BLOCK}\"]\nurl = \"file://{}/results\"\n{cache}",
        dir.display()
    ))
    .expect("valid config")
}

async fn start_on(config: &Config, addr: SocketAddr) -> ServerHandle {
    let listener = TcpListener::bind(addr).await.expect("bind");
    start(config, listener, std::future::pending()).await.expect("server starts")
}

/// Storage GETs the replica's block made so far.
fn storage_gets(store: &ResultStore) -> u64 {
    store.blocks().get(BLOCK).expect("block").counters.snapshot().get
}

/// Whether the replica's cache holds `key` now.
async fn caches(store: &ResultStore, key: &str) -> bool {
    let block = store.blocks().get(BLOCK).expect("block");
    store.cache().peek(&block.cache_key(key)).await.is_some()
}

/// Writes `keys` through a server that is not one of the replicas.
async fn write_through_another_server(config: &Config, keys: &[String], value: &str) {
    let writer = start_on(config, "127.0.0.1:0".parse().unwrap()).await;
    let client = Client::connect(format!("http://{}", writer.local_addr)).await.expect("writer");
    for key in keys {
        client.put(Put::json(value).serializer("json").key(key.clone())).await.expect("put");
    }
    writer.shutdown().await.expect("writer stops");
}

/// Resolves every key through the routed client; returns each key's cache_hit.
async fn read_all(client: &Client, keys: &[String]) -> Vec<bool> {
    let mut hits = Vec::new();
    for key in keys {
        let target = Target::Location { block: BLOCK.into(), key: key.clone() };
        let got = client.resolve(target, Want::Json, ReadOptions::default()).await.expect("resolve");
        assert!(got.json.is_some(), "{key}: a value");
        hits.push(got.cache_hit);
    }
    hits
}

struct Tier {
    handles: Vec<Option<ServerHandle>>,
    addrs: Vec<SocketAddr>,
    ids: Vec<String>,
}

impl Tier {
    async fn start(config: &Config, n: usize) -> Tier {
        let mut handles = Vec::new();
        for _ in 0..n {
            handles.push(Some(start_on(config, "127.0.0.1:0".parse().unwrap()).await));
        }
        let addrs: Vec<SocketAddr> = handles.iter().map(|h| h.as_ref().unwrap().local_addr).collect();
        let ids = addrs.iter().map(|a| a.to_string()).collect();
        Tier { handles, addrs, ids }
    }

    fn urls(&self) -> String {
        self.addrs.iter().map(|a| format!("http://{a}")).collect::<Vec<_>>().join(",")
    }

    fn store(&self, i: usize) -> Arc<ResultStore> {
        self.handles[i].as_ref().expect("running").store()
    }

    fn index(&self, id: &str) -> usize {
        self.ids.iter().position(|i| i == id).expect("a replica of the tier")
    }

    /// The replica index owning each key, among `alive` ids.
    fn owners(&self, keys: &[String], alive: &[&str]) -> Vec<usize> {
        keys.iter().map(|k| self.index(rendezvous_order(alive, k)[0])).collect()
    }
}

fn count(owners: &[usize], replica: usize) -> u64 {
    owners.iter().filter(|&&o| o == replica).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_key_is_read_on_one_replica_and_a_stopped_replica_moves_only_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let keys: Vec<String> = (0..120).map(|i| format!("task-{i:03}")).collect();
    write_through_another_server(&config, &keys, r#"{"rows": [1, 2, 3]}"#).await;

    let mut tier = Tier::start(&config, 3).await;
    // No back-off, so a replica that comes back gets its keys at the next call.
    let options = ConnectOptions { replica_backoff: std::time::Duration::ZERO, ..Default::default() };
    let client = Client::connect_with(tier.urls(), options).await.expect("routed client");
    let mut ids_sorted = tier.ids.clone();
    ids_sorted.sort();
    let mut known = client.replicas();
    known.sort();
    assert_eq!(known, ids_sorted);

    let all: Vec<&str> = tier.ids.iter().map(String::as_str).collect();
    let owners = tier.owners(&keys, &all);
    for r in 0..3 {
        assert!(count(&owners, r) >= 20, "rendezvous spreads 120 keys over 3 replicas: {owners:?}");
    }
    for (key, &owner) in keys.iter().zip(&owners) {
        assert_eq!(client.replica_for(key), tier.ids[owner], "{key}");
    }

    // First pass: every read misses, on the key's owner only.
    assert!(read_all(&client, &keys).await.iter().all(|hit| !hit), "the caches start empty");
    for r in 0..3 {
        assert_eq!(storage_gets(&tier.store(r)), count(&owners, r), "replica {r} read exactly its own keys");
    }
    // Second pass: every read is a hit; no replica read storage again.
    assert!(read_all(&client, &keys).await.iter().all(|hit| *hit), "second reads hit");
    for r in 0..3 {
        assert_eq!(storage_gets(&tier.store(r)), count(&owners, r), "replica {r}: no storage read on a hit");
    }
    // Each key is cached on its owner and nowhere else.
    for (key, &owner) in keys.iter().zip(&owners) {
        for r in 0..3 {
            assert_eq!(caches(&tier.store(r), key).await, r == owner, "{key} on replica {r} (owner {owner})");
        }
    }

    // Stop the replica owning the most keys: only its keys move, each to its second choice.
    let stopped = (0..3).max_by_key(|&r| count(&owners, r)).unwrap();
    let before: Vec<u64> = (0..3).map(|r| storage_gets(&tier.store(r))).collect();
    tier.handles[stopped].take().unwrap().shutdown().await.expect("clean stop");
    let alive: Vec<&str> = all.iter().copied().filter(|id| *id != tier.ids[stopped]).collect();
    let after = tier.owners(&keys, &alive);
    let hits = read_all(&client, &keys).await;
    for (i, key) in keys.iter().enumerate() {
        if owners[i] == stopped {
            assert_eq!(after[i], tier.index(rendezvous_order(&all, key)[1]), "{key} moves to its second choice");
            assert!(!hits[i], "{key} moved: first read on its new replica misses");
        } else {
            assert_eq!(after[i], owners[i], "{key} stays");
            assert!(hits[i], "{key} did not move: still a hit");
        }
    }
    let moved: BTreeMap<usize, u64> = (0..3)
        .filter(|&r| r != stopped)
        .map(|r| (r, (0..keys.len()).filter(|&i| owners[i] == stopped && after[i] == r).count() as u64))
        .collect();
    for (&r, &n) in &moved {
        assert_eq!(storage_gets(&tier.store(r)) - before[r], n, "replica {r} read only the keys it took over");
    }

    // The stopped replica comes back on its address: its keys return to it (cold: one
    // storage read each), nothing else moves.
    tier.handles[stopped] = Some(start_on(&config, tier.addrs[stopped]).await);
    let hits = read_all(&client, &keys).await;
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(client.replica_for(key), tier.ids[owners[i]], "{key} is back on its owner");
        assert_eq!(hits[i], owners[i] != stopped, "{key}: only the returning replica's keys miss");
    }
    assert_eq!(storage_gets(&tier.store(stopped)), count(&owners, stopped));

    for h in tier.handles.into_iter().flatten() {
        h.shutdown().await.expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_routed_replicas_cache_about_three_times_what_one_holds() {
    // Each cache holds 1 MiB; the working set is about 4 MiB, more than all three hold.
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "[cache]\ncapacity = \"1MiB\"\nmax_entry_size = \"256KiB\"\n");
    let keys: Vec<String> = (0..160).map(|i| format!("frame-{i:03}")).collect();
    let value = format!("\"{}\"", "x".repeat(26 * 1024));
    write_through_another_server(&config, &keys, &value).await;

    // One replica alone, given every key.
    let lone = start_on(&config, "127.0.0.1:0".parse().unwrap()).await;
    let lone_client = Client::connect(format!("http://{}", lone.local_addr)).await.unwrap();
    read_all(&lone_client, &keys).await;
    let lone_store = lone.store();
    lone_store.cache().settle().await;
    let lone_bytes = lone_store.cache().weighted_size();
    let lone_entries = lone_store.cache().entry_count();

    let tier = Tier::start(&config, 3).await;
    let client = Client::connect(tier.urls()).await.unwrap();
    // (Which replica each key lands on is the first test's; this one measures capacity.)
    read_all(&client, &keys).await;
    let mut tier_bytes = 0;
    let mut per_replica = Vec::new();
    for r in 0..3 {
        let store = tier.store(r);
        store.cache().settle().await;
        tier_bytes += store.cache().weighted_size();
        per_replica.push(store.cache().entry_count());
    }
    // No key is cached twice: the tier's bytes are all distinct results.
    let mut cached_somewhere = 0;
    for key in &keys {
        let mut on = 0;
        for r in 0..3 {
            on += u32::from(caches(&tier.store(r), key).await);
        }
        assert!(on <= 1, "{key} is cached on {on} replicas");
        cached_somewhere += on;
    }
    let ratio = tier_bytes as f64 / lone_bytes as f64;
    eprintln!(
        "one replica alone: {lone_entries} entries, {lone_bytes} bytes; three routed: {per_replica:?} entries \
         ({cached_somewhere} distinct), {tier_bytes} bytes; ratio {ratio:.2}"
    );
    assert!(lone_bytes <= 1 << 20 && lone_entries < keys.len() as u64 / 2, "one cache cannot hold the working set");
    assert!((2.5..=3.2).contains(&ratio), "three routed caches hold about three times one: {ratio:.2}");
    assert_eq!(u64::from(cached_somewhere), per_replica.iter().sum::<u64>());

    lone.shutdown().await.unwrap();
    for h in tier.handles.into_iter().flatten() {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_dns_name_routes_to_every_address_it_resolves_to() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let server = start_on(&config, "127.0.0.1:0".parse().unwrap()).await;
    let port = server.local_addr.port();
    // `localhost` resolves (through the system's resolver) to 127.0.0.1 on this machine,
    // and perhaps ::1 too, where nothing listens on this port: calls fail over to it.
    let client = Client::connect(format!("dns://localhost:{port}")).await.expect("resolves");
    assert!(client.replicas().contains(&format!("127.0.0.1:{port}")), "{:?}", client.replicas());
    for i in 0..20 {
        let key = format!("dns-{i}");
        client.put(Put::json("[1]").serializer("json").key(key.clone())).await.expect("put");
        let got = client.resolve(Target::Location { block: String::new(), key }, Want::Json, ReadOptions::default());
        assert_eq!(got.await.expect("resolve").json.as_deref(), Some("[1]"));
    }
    assert!(Client::connect("dns://no-such-host.invalid:1").await.is_err(), "a name that does not resolve");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_that_are_not_persisted_are_read_on_the_replica_that_holds_them() {
    // A result that is not persisted lives in one replica's memory. The routed client
    // names its key (new_key) and sends the Put to that key's owner, where reads go too.
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let tier = Tier::start(&config, 3).await;
    let client = Client::connect(tier.urls()).await.unwrap();
    let mut held = [0u32; 3];
    for i in 0..30 {
        let stored = client.put(Put::json(format!("[{i}]")).serializer("json").persist(false)).await.unwrap();
        let reference = stored.reference().expect("a reference").clone();
        assert!(!reference.persisted());
        held[tier.index(&client.replica_for(reference.key()))] += 1;
        let got = client.resolve(&reference, Want::Json, ReadOptions::default()).await.expect("read back");
        assert_eq!(got.json.as_deref(), Some(format!("[{i}]").as_str()));
    }
    assert!(held.iter().all(|&n| n > 0), "the Puts spread over the replicas: {held:?}");
    for h in tier.handles.into_iter().flatten() {
        h.shutdown().await.unwrap();
    }
}
