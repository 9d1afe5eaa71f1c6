//! The resolve cache: singleflight, hits, capacity, the per-entry cap, bypass, and
//! write-through invalidation. Storage reads are counted by the block's counting store.

use std::sync::Arc;

use resultstore_client::{Put, ReadOptions, Target, Want};
use resultstore_e2e::{TestServer, base_config};

/// A record Prefect wrote (`value` is the JSON text of the result), placed straight into the block folder so the server has never
/// seen it (no write-through entry): the first read must go to storage.
fn seed_cold_record(s: &TestServer, key: &str, value: &str) {
    let record = format!(
        r#"{{"metadata":{{"storage_key":"{key}","expiration":null,"serializer":{{"type":"json"}},"prefect_version":"3.9.1","storage_block_id":null}},"result":{}}}"#,
        serde_json::to_string(value).unwrap()
    );
    std::fs::write(s.path("results").join(key), record).unwrap();
}

#[tokio::test]
async fn sixty_four_concurrent_resolves_of_a_cold_key_make_one_storage_read() {
    let s = TestServer::start().await;
    seed_cold_record(&s, "cold", r#"{"big": [1, 2, 3]}"#);
    let before = s.storage_gets("local-file-system/default");
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let client = s.client.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let target = Target::Location { block: String::new(), key: "cold".into() };
            client.resolve(target, Want::Json, ReadOptions::default()).await.unwrap()
        }));
    }
    let mut hits = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.json.as_deref(), Some(r#"{"big": [1, 2, 3]}"#));
        hits += r.cache_hit as u32;
    }
    assert_eq!(s.storage_gets("local-file-system/default") - before, 1, "exactly one storage read");
    let c = s.store().cache().counters();
    assert_eq!(c.hits + c.misses, 64);
    assert_eq!(c.hits, hits as u64);

    // Later reads are hits and touch no storage.
    let r = s
        .client
        .resolve(Target::Location { block: String::new(), key: "cold".into() }, Want::Raw, ReadOptions::default())
        .await
        .unwrap();
    assert!(r.cache_hit);
    assert_eq!(s.storage_gets("local-file-system/default") - before, 1);

    // A bypass reads storage again.
    let bypass = ReadOptions { bypass_cache: true, ..Default::default() };
    let r = s
        .client
        .resolve(Target::Location { block: String::new(), key: "cold".into() }, Want::Raw, bypass)
        .await
        .unwrap();
    assert!(!r.cache_hit);
    assert_eq!(s.storage_gets("local-file-system/default") - before, 2);
}

#[tokio::test]
async fn a_failed_fill_reaches_every_waiter_and_is_not_cached() {
    let s = TestServer::start().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let client = s.client.clone();
        tasks.push(tokio::spawn(async move {
            let target = Target::Location { block: String::new(), key: "missing".into() };
            client.resolve(target, Want::Raw, ReadOptions::default()).await.unwrap_err().code()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(tonic::Code::NotFound));
    }
    seed_cold_record(&s, "missing", r#""now here""#);
    let r = s
        .client
        .resolve(Target::Location { block: String::new(), key: "missing".into() }, Want::Json, ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(r.json.as_deref(), Some("\"now here\""));
}

#[tokio::test]
async fn capacity_is_respected_and_large_results_stream_past_the_cache() {
    let s = TestServer::start_with(|dir| {
        format!("{}\n[cache]\ncapacity = \"256KiB\"\nmax_entry_size = \"64KiB\"\n", base_config(dir))
    })
    .await;
    let payload = format!("\"{}\"", "y".repeat(8 * 1024));
    for i in 0..100 {
        seed_cold_record(&s, &format!("k{i}"), &payload[1..payload.len() - 1]);
        let target = Target::Location { block: String::new(), key: format!("k{i}") };
        s.client.resolve(target, Want::Raw, ReadOptions::default()).await.unwrap();
    }
    let store = s.store();
    let cache = store.cache();
    cache.settle().await;
    assert!(cache.weighted_size() <= 256 * 1024, "weighted size {} over capacity", cache.weighted_size());
    assert!(cache.entry_count() > 10, "the cache holds what fits ({} entries)", cache.entry_count());
    assert!(cache.counters().evictions > 0);

    // A 100 KiB result is above the per-entry cap: served every time, never cached.
    seed_cold_record(&s, "huge", &"z".repeat(100 * 1024));
    let before = s.storage_gets("local-file-system/default");
    for _ in 0..3 {
        let target = Target::Location { block: String::new(), key: "huge".into() };
        let r = s.client.resolve(target, Want::Raw, ReadOptions::default()).await.unwrap();
        assert!(!r.cache_hit);
        assert_eq!(r.data.unwrap().len(), 100 * 1024);
    }
    assert_eq!(s.storage_gets("local-file-system/default") - before, 3);
    assert_eq!(cache.counters().bypassed_too_large, 3);
}

#[tokio::test]
async fn overwrites_and_deletes_through_this_replica_are_seen_at_once() {
    let s = TestServer::start().await;
    let loc = || Target::Location { block: String::new(), key: "k".into() };
    s.client.put(Put::json(r#""v1""#).serializer("json").key("k")).await.unwrap();
    let r = s.client.resolve(loc(), Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(r.json.as_deref(), Some("\"v1\""));
    assert!(r.cache_hit, "a Put fills the cache (write-through)");
    s.client.put(Put::json(r#""v2""#).serializer("json").key("k")).await.unwrap();
    let r = s.client.resolve(loc(), Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(r.json.as_deref(), Some("\"v2\""));
    s.client.delete("", "k").await.unwrap();
    let err = s.client.resolve(loc(), Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::NotFound));
}

/// A fill holds its share of the fill budget while it reads and decodes; reading a Prefect
/// split record's metadata document must not need a second share. A payload as large as
/// the whole budget, with its metadata document beside it, once waited forever for that
/// second share.
#[tokio::test]
async fn a_fill_the_size_of_the_whole_budget_still_reads_its_metadata_document() {
    let s = TestServer::start_with(|d| {
        format!(
            "{}\n[blocks.\"local-file-system/p3meta\"]\nurl = \"file://{}/p3meta\"\nmetadata_url = \"file://{}/p3meta-meta\"\n\
             [cache]\ncapacity = \"8MiB\"\nmax_entry_size = \"2MiB\"\nfill_budget = \"1MiB\"\n[limits]\nmax_result_size = \"1MiB\"\n",
            base_config(d),
            d.display(),
            d.display()
        )
    })
    .await;
    let mut payload = vec![b'a'; 1 << 20];
    payload[0] = b'"';
    payload[(1 << 20) - 1] = b'"';
    std::fs::create_dir_all(s.path("p3meta")).unwrap();
    std::fs::create_dir_all(s.path("p3meta-meta")).unwrap();
    std::fs::write(s.path("p3meta/big"), &payload).unwrap();
    std::fs::write(
        s.path("p3meta-meta/big"),
        r#"{"storage_key":"big","expiration":null,"serializer":{"type":"json"},"prefect_version":"3.9.1","storage_block_id":null}"#,
    )
    .unwrap();
    let target = Target::Location { block: "local-file-system/p3meta".into(), key: "big".into() };
    let read = s.client.resolve(target, Want::Raw, ReadOptions::default());
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), read)
        .await
        .expect("the read finished (it waited for fill budget it already held)")
        .unwrap();
    assert_eq!(got.data.unwrap().len(), 1 << 20);
    assert_eq!(got.reference.unwrap().0.format, "split");
}
