//! The operations' conformance suite, in process: [`ResultStore`] called directly, with
//! no gRPC, no client and no server process, object_store's way: one function
//! ([`conformance`]) that every block type runs, `prefect3` and `split` alike. Memory and
//! local files are the fast tier; S3 (moto) and Azure (Azurite) start their servers and
//! run the same function. `conformance.rs` holds the same promises through gRPC.

use std::sync::Arc;

use bytes::Bytes;
use resultstore::config::auth::Access;
use resultstore::formats::reference::{Expectation, LiteralValue, ResultReference};
use resultstore::formats::serializer::SerializerConfig;
use resultstore::ops::lifecycle::{SweepOptions, SweepReport};
use resultstore::ops::settings::ResultSettings;
use resultstore::ops::store::{Payload, PutInput, PutOutcome, ReadOptions, ReadOutcome, ReadTarget, WriteMode};
use resultstore::storage::cache::LoadedResult;
use resultstore::{Config, Error, ResultStore};
use resultstore_e2e::servers::{azure_options, azurite, moto_s3, s3_options};
use resultstore_e2e::{SERIALIZERS, base_config, config_with_pair, key_table};

const VALUE: &str = r#"{"a": 1, "b": [1, 2.5, "x", null, true], "t": "h\u00e9"}"#;

fn store_for(config: &str) -> ResultStore {
    ResultStore::new(&Config::from_toml(config).expect("config")).expect("store")
}

fn put(block: &str, key: &str, payload: Payload, serializer: &str) -> PutInput {
    let serializer = match serializer.starts_with('{') {
        true => SerializerConfig::from_value(serde_json::from_str(serializer).unwrap()).unwrap(),
        false => SerializerConfig::from_type(serializer).unwrap(),
    };
    PutInput {
        payload,
        task: ResultSettings {
            persist_result: Some(true),
            result_storage: Some(block.to_owned()),
            result_serializer: Some(serializer),
            ..Default::default()
        },
        flow: None,
        key: Some(key.to_owned()),
        new_key: None,
        expiration: None,
        mode: WriteMode::Overwrite,
    }
}

fn reference(outcome: PutOutcome) -> ResultReference {
    match outcome {
        PutOutcome::Stored(r) => *r,
        PutOutcome::Literal(l) => panic!("a literal ({l:?}) where a result was stored"),
    }
}

fn by_reference(r: &ResultReference) -> ReadTarget {
    ReadTarget::Reference {
        block: r.block.clone(),
        key: r.key.clone(),
        expect: Expectation { sha256: Some(r.sha256.clone()), version: r.version.clone(), persisted: true },
        serializer: Some(r.serializer.clone()),
    }
}

fn at(block: &str, key: &str) -> ReadTarget {
    ReadTarget::Location { block: block.to_owned(), key: key.to_owned() }
}

/// Reads from storage, never the cache: what the block holds is what is checked.
fn from_storage() -> ReadOptions {
    ReadOptions { bypass_cache: true, ..Default::default() }
}

async fn read(store: &ResultStore, target: ReadTarget) -> Result<Arc<LoadedResult>, Error> {
    match store.read(target, from_storage(), &Access::Open).await? {
        ReadOutcome::Loaded { result, .. } => Ok(result),
        ReadOutcome::Literal(l) => panic!("a literal ({l:?}) where a result was stored"),
    }
}

async fn json_of(store: &ResultStore, target: ReadTarget) -> serde_json::Value {
    let result = read(store, target).await.expect("a stored result");
    serde_json::from_slice(&store.to_json(&result).expect("JSON")).expect("strict JSON")
}

async fn keys_under(store: &ResultStore, block: &str, prefix: &str) -> Vec<String> {
    let (mut keys, mut token) = (Vec::new(), String::new());
    loop {
        let page = store.list(block, prefix, 7, &token, &Access::Open).await.expect("list");
        keys.extend(page.entries.into_iter().map(|e| e.location.to_string()));
        match page.next_page_token {
            Some(next) => token = next,
            None => break,
        }
    }
    keys.sort();
    keys
}

/// Every promise of the operations, against `block`.
async fn conformance(store: &ResultStore, block: &str) {
    let open = &Access::Open;
    let want: serde_json::Value = serde_json::from_str(VALUE).unwrap();

    // Every serializer: the value reads back as JSON by reference and by location, and
    // its serializer bytes put back as `data` are the same result.
    let mut written = Vec::new();
    for (i, ser) in SERIALIZERS.iter().enumerate() {
        let key = format!("conf/ser/{i}");
        let r = reference(store.put(put(block, &key, Payload::Json(VALUE.into()), ser), open).await.unwrap());
        assert_eq!((r.block.as_str(), r.key.as_str()), (block, key.as_str()));
        assert_eq!(json_of(store, by_reference(&r)).await, want, "{block} {ser}");
        assert_eq!(json_of(store, at(block, &key)).await, want, "{block} {ser}");
        let data = read(store, by_reference(&r)).await.unwrap().record.data.clone();
        assert_eq!(data.len() as u64, r.size);
        let copy = format!("{key}-data");
        let again = reference(store.put(put(block, &copy, Payload::Data(data), ser), open).await.unwrap());
        assert_eq!(again.sha256, r.sha256, "{block} {ser}");
        written.extend([key, copy]);
    }
    written.sort();
    assert_eq!(keys_under(store, block, "conf/ser/").await, written, "List returns what Put wrote, paged");

    // Literals stay in the reply unless a key is asked for.
    let mut literal = put(block, "unused", Payload::Literal(LiteralValue::Null), "json");
    literal.key = None;
    assert!(matches!(store.put(literal, open).await.unwrap(), PutOutcome::Literal(LiteralValue::Null)));

    // Create-only: refused over another result (which stays), accepted again for the
    // same bytes (a retry whose reply was lost); overwrite replaces, and the old reference
    // no longer reads (the reference names its bytes).
    let first = reference(store.put(put(block, "conf/mode", Payload::Json("1".into()), "json"), open).await.unwrap());
    let mut create = put(block, "conf/mode", Payload::Json("2".into()), "json");
    create.mode = WriteMode::CreateOnly;
    let err = store.put(create.clone(), open).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{block}: {err}");
    assert_eq!(json_of(store, at(block, "conf/mode")).await, serde_json::json!(1));
    let mut retry = put(block, "conf/mode", Payload::Json("1".into()), "json");
    retry.mode = WriteMode::CreateOnly;
    assert_eq!(reference(store.put(retry, open).await.unwrap()).sha256, first.sha256, "{block}");
    create.mode = WriteMode::Overwrite;
    store.put(create, open).await.unwrap();
    assert_eq!(json_of(store, at(block, "conf/mode")).await, serde_json::json!(2));
    let err = read(store, by_reference(&first)).await.unwrap_err();
    assert!(matches!(err, Error::IntegrityMismatch { .. }), "{block}: {err}");

    // Expiry: refused unless the caller allows it.
    let mut expiring = put(block, "conf/expired", Payload::Json("3".into()), "json");
    expiring.expiration = Some(chrono::Utc::now() - chrono::Duration::seconds(5));
    store.put(expiring, open).await.unwrap();
    let err = read(store, at(block, "conf/expired")).await.unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{block}: {err}");
    let allowed = ReadOptions { allow_expired: true, ..from_storage() };
    assert!(store.read(at(block, "conf/expired"), allowed, open).await.is_ok());

    // Exists and Delete: gone means gone, and a second delete is NOT_FOUND.
    assert!(store.exists(block, "conf/mode", open).await.unwrap());
    store.delete(block, "conf/mode", open).await.unwrap();
    assert!(!store.exists(block, "conf/mode", open).await.unwrap());
    assert!(matches!(read(store, at(block, "conf/mode")).await.unwrap_err(), Error::NotFound { .. }));
    assert!(matches!(store.delete(block, "conf/mode", open).await.unwrap_err(), Error::NotFound { .. }));

    // Keys as Prefect's templates make them are stored, listed and read as written.
    let table = key_table();
    for (i, key) in table.iter().enumerate() {
        let stored = format!("conf/keys/{key}");
        store.put(put(block, &stored, Payload::Json(i.to_string()), "json"), open).await.unwrap();
        assert_eq!(json_of(store, at(block, &stored)).await, serde_json::json!(i), "{block} {key:?}");
    }
    let mut expected: Vec<String> = table.iter().map(|k| format!("conf/keys/{k}")).collect();
    expected.sort();
    assert_eq!(keys_under(store, block, "conf/keys/").await, expected, "{block}");

    // Bytes that could never be read back are refused before anything is replaced.
    store.put(put(block, "conf/kept", Payload::Json("4".into()), "json"), open).await.unwrap();
    let bad = put(block, "conf/kept", Payload::Data(Bytes::from_static(b"{not json")), "json");
    assert!(matches!(store.put(bad, open).await.unwrap_err(), Error::InvalidRequest(_)));
    assert_eq!(json_of(store, at(block, "conf/kept")).await, serde_json::json!(4));
}

/// Puts `value` (JSON) at `key` with `expiration`.
async fn put_expiring(store: &ResultStore, block: &str, key: &str, expiration: Option<chrono::DateTime<chrono::Utc>>) {
    let mut input = put(block, key, Payload::Json("1".into()), "json");
    input.expiration = expiration;
    store.put(input, &Access::Open).await.unwrap();
}

fn sweep(prefix: &str, now: chrono::DateTime<chrono::Utc>, retention: Option<std::time::Duration>) -> SweepOptions {
    SweepOptions {
        prefix: prefix.into(),
        retention,
        dry_run: false,
        calls_per_second: std::num::NonZeroU32::new(100_000).unwrap(),
        now,
    }
}

/// The expiry sweep and bulk deletes (`ops::lifecycle`), against `block`; `bulk` keys in
/// the bulk delete.
async fn lifecycle(store: &ResultStore, block: &str, bulk: usize) {
    let open = &Access::Open;
    let (now, hour) = (chrono::Utc::now(), chrono::Duration::hours(1));
    let h = std::time::Duration::from_secs(3600);
    put_expiring(store, block, "life/past", Some(now - hour)).await;
    put_expiring(store, block, "life/future", Some(now + hour)).await;
    put_expiring(store, block, "life/none", None).await;
    put_expiring(store, block, "lifeless", Some(now - hour)).await; // not under "life/"
    let mut garbage = put(block, "life/garbage", Payload::Object(Bytes::from_static(b"\x00\x01 not a record")), "json");
    garbage.task.result_serializer = None;
    store.put(garbage, open).await.unwrap();
    let all = ["life/future", "life/garbage", "life/none", "life/past"].map(String::from).to_vec();

    // A dry run counts and deletes nothing.
    let dry = SweepOptions { dry_run: true, ..sweep("life/", now, None) };
    let report = store.sweep_expired(block, &dry, open, |_| {}).await.unwrap();
    assert_eq!((report.scanned, report.expired, report.deleted), (4, 1, 0), "{block}: {report:?}");
    assert_eq!(keys_under(store, block, "life/").await, all, "{block}");

    // The table: (judged at, retention) -> what is left.
    let table: [(chrono::DateTime<chrono::Utc>, Option<std::time::Duration>, &[&str]); 3] = [
        // Now, no retention: the record that expired goes; no expiration and unreadable stay.
        (now, None, &["life/future", "life/garbage", "life/none"]),
        // Half an hour on, a retention of an hour: nothing is old enough, nothing expired.
        (now + hour / 2, Some(h), &["life/future", "life/garbage", "life/none"]),
        // Two hours on: everything is older than its retention, readable or not.
        (now + hour * 2, Some(h), &[]),
    ];
    for (at, retention, left) in table {
        let report = store.sweep_expired(block, &sweep("life/", at, retention), open, |_| {}).await.unwrap();
        let left: Vec<String> = left.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            keys_under(store, block, "life/").await,
            left,
            "{block} at {at} retention {retention:?}: {report:?}"
        );
        assert_eq!(report.deleted, report.expired, "{block}: {report:?}");
    }
    assert_eq!(keys_under(store, block, "lifeless").await, ["lifeless"], "{block}: outside the prefix");
    store.delete(block, "lifeless", open).await.unwrap();

    // A split delete cut short between payload and document leaves nothing readable, and
    // the next sweep removes the document.
    let handle = store.blocks().get(block).unwrap();
    if let (Some(documents), resultstore::config::BlockFormat::Split) = (&handle.metadata_store, handle.format) {
        put_expiring(store, block, "life/cut", None).await;
        let path = object_store::path::Path::from("life/cut");
        object_store::ObjectStoreExt::delete(handle.store.as_ref(), &path).await.unwrap();
        assert!(!store.exists(block, "life/cut", open).await.unwrap(), "{block}");
        assert!(matches!(read(store, at(block, "life/cut")).await.unwrap_err(), Error::NotFound { .. }), "{block}");
        let report = store.sweep_expired(block, &sweep("life/", now, None), open, |_| {}).await.unwrap();
        assert_eq!(report.orphaned_documents, 1, "{block}: {report:?}");
        let left = object_store::ObjectStoreExt::head(documents.as_ref(), &path).await;
        assert!(matches!(left, Err(object_store::Error::NotFound { .. })), "{block}: {left:?}");
    }

    // A sweep stopped half-way (its future dropped, as a killed process stops) and run again
    // deletes exactly the expired results.
    for i in 0..40 {
        let expiration = if i % 2 == 0 { now - hour } else { now + hour };
        put_expiring(store, block, &format!("cut/{i:02}"), Some(expiration)).await;
    }
    let slow = SweepOptions { calls_per_second: std::num::NonZeroU32::new(40).unwrap(), ..sweep("cut/", now, None) };
    let mut heard = SweepReport::default();
    let stopped = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        store.sweep_expired(block, &slow, open, |r| heard = *r),
    )
    .await;
    assert!(stopped.is_err(), "{block}: the paced sweep was meant to be stopped before it finished");
    let left_after_stop = keys_under(store, block, "cut/").await;
    assert!(left_after_stop.len() > 20, "{block}: {left_after_stop:?}");
    let report = store.sweep_expired(block, &sweep("cut/", now, None), open, |_| {}).await.unwrap();
    let odd: Vec<String> = (0..40).filter(|i| i % 2 == 1).map(|i| format!("cut/{i:02}")).collect();
    assert_eq!(keys_under(store, block, "cut/").await, odd, "{block}: {report:?}");

    // Two sweeps at once (two replicas of a tier): between them, each expired result is
    // deleted once and nothing else.
    for i in 0..30 {
        let expiration = if i % 3 == 0 { now - hour } else { now + hour };
        put_expiring(store, block, &format!("twice/{i:02}"), Some(expiration)).await;
    }
    let both = sweep("twice/", now, None);
    let (a, b) =
        tokio::join!(store.sweep_expired(block, &both, open, |_| {}), store.sweep_expired(block, &both, open, |_| {}),);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.deleted + b.deleted, 10, "{block}: {a:?} {b:?}");
    let kept: Vec<String> = (0..30).filter(|i| i % 3 != 0).map(|i| format!("twice/{i:02}")).collect();
    assert_eq!(keys_under(store, block, "twice/").await, kept, "{block}");
    store.delete_prefix(block, "twice/", false, open).await.unwrap();

    // Bad prefixes are refused as List refuses them.
    for bad in ["../x", "/abs", "a\u{1}b"] {
        let err = store.delete_prefix(block, bad, false, open).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{block} {bad:?}: {err}");
        let err = store.sweep_expired(block, &sweep(bad, now, None), open, |_| {}).await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{block} {bad:?}: {err}");
    }

    // Bulk delete: the whole block only when asked for by name; a prefix is a string
    // prefix; cached copies go with the results.
    let err = store.delete_prefix(block, "", false, open).await.unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{block}: {err}");
    for i in 0..bulk {
        store.put(put(block, &format!("bulk/{i:05}"), Payload::Json(i.to_string()), "json"), open).await.unwrap();
    }
    store.put(put(block, "bulkhead", Payload::Json("0".into()), "json"), open).await.unwrap();
    let cached = store.read(at(block, "bulk/00000"), ReadOptions::default(), open).await;
    assert!(cached.is_ok(), "{block}");
    let report = store.delete_prefix(block, "bulk/", false, open).await.unwrap();
    assert_eq!((report.scanned, report.deleted), (bulk as u64, bulk as u64), "{block}");
    assert!(keys_under(store, block, "bulk/").await.is_empty(), "{block}");
    let gone = store.read(at(block, "bulk/00000"), ReadOptions::default(), open).await.err();
    assert!(matches!(gone, Some(Error::NotFound { .. })), "{block}: the cached copy went too: {gone:?}");
    assert_eq!(keys_under(store, block, "bulkhead").await, ["bulkhead"], "{block}");
    assert_eq!(store.delete_prefix(block, "bulk/", false, open).await.unwrap().deleted, 0);
}

#[tokio::test]
async fn memory_and_local_blocks_conform_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_for(&base_config(dir.path()));
    for block in ["memory/default", "memory/split", "local-file-system/default", "local-file-system/split"] {
        conformance(&store, block).await;
        lifecycle(&store, block, 2000).await;
    }
}

#[tokio::test]
async fn s3_blocks_on_moto_conform_in_process() {
    let moto = moto_s3("results");
    let dir = tempfile::tempdir().unwrap();
    let store = store_for(&config_with_pair(dir.path(), "s3-bucket", "s3://results", &s3_options(moto.port)));
    conformance(&store, "s3-bucket/p3").await;
    conformance(&store, "s3-bucket/split").await;
    lifecycle(&store, "s3-bucket/p3", 300).await;
    lifecycle(&store, "s3-bucket/split", 300).await;
}

#[tokio::test]
async fn azure_blocks_on_azurite_conform_in_process() {
    let (azurite, _work) = azurite("results");
    let dir = tempfile::tempdir().unwrap();
    let options = azure_options(azurite.port);
    let store = store_for(&config_with_pair(dir.path(), "azure-blob-storage-container", "az://results", &options));
    conformance(&store, "azure-blob-storage-container/p3").await;
    conformance(&store, "azure-blob-storage-container/split").await;
    lifecycle(&store, "azure-blob-storage-container/p3", 300).await;
    lifecycle(&store, "azure-blob-storage-container/split", 300).await;
}

/// A read's future is what every cache hit carries and moves (into the handler's box, the
/// timeout, the tonic service): the storage read it may start is boxed, only on a miss, so
/// the hit's future stays small. It was 14 KB when the load rode inline, and memcpy of it
/// was a third of a hit's instructions (`BENCHMARKS.md`).
#[tokio::test]
async fn a_reads_future_does_not_carry_the_storage_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_for(&base_config(dir.path()));
    let read = store.read(at("memory/default", "k"), from_storage(), &Access::Open);
    let size = std::mem::size_of_val(&read);
    assert!(size <= 4096, "a read's future is {size} bytes");
}

/// A block's `retention` expires results written longer ago, on read (refused unless
/// allowed, cached or not) and for the sweep the block's config asks for. The file's
/// modification time is set back instead of waiting.
#[tokio::test]
async fn a_blocks_retention_expires_old_results() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}\n[blocks.\"local-file-system/kept\"]\nurl = \"file://{}/kept\"\nretention = \"1h\"\n",
        base_config(dir.path()),
        dir.path().display()
    );
    let store = store_for(&config);
    let (block, open) = ("local-file-system/kept", &Access::Open);
    for key in ["old", "young"] {
        store.put(put(block, key, Payload::Json("1".into()), "json"), open).await.unwrap();
    }
    // Cached by the put; its file now says it was written two hours ago.
    let file = std::fs::File::options().write(true).open(dir.path().join("kept/old")).unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200)).unwrap();
    let err = read(&store, at(block, "old")).await.unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    assert!(read(&store, at(block, "young")).await.is_ok());
    let allowed = ReadOptions { allow_expired: true, ..from_storage() };
    assert!(store.read(at(block, "old"), allowed, open).await.is_ok());

    let opts = store.sweep_options(block, "", None, false, open).unwrap();
    assert_eq!(opts.retention, Some(std::time::Duration::from_secs(3600)));
    let report = store.sweep_expired(block, &opts, open, |_| {}).await.unwrap();
    assert_eq!((report.scanned, report.expired, report.deleted), (2, 1, 1), "{report:?}");
    assert_eq!(keys_under(&store, block, "").await, ["young"]);
    // An age given for one sweep takes the retention's place; zero would mean everything.
    let err = store.sweep_options(block, "", Some(std::time::Duration::ZERO), false, open).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
}

/// A result larger than `limits.max_result_size` (which no unary read would load) is swept
/// by its record's expiration all the same: the sweep reads only the record's head.
#[tokio::test]
async fn a_result_too_large_to_load_is_swept_by_its_expiration() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}\n[limits]\nmax_result_size = \"64KiB\"\n", base_config(dir.path()));
    let store = store_for(&config);
    let (block, open) = ("local-file-system/default", &Access::Open);
    let json = SerializerConfig::from_type("json").unwrap();
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    let big = Bytes::from(format!("\"{}\"", "x".repeat(300 << 10)));
    for (key, expiration) in [("big/expired", Some(past)), ("big/kept", None)] {
        let record = resultstore::formats::record::ResultRecord::new(
            resultstore::formats::record::RecordFormat::Prefect3,
            key,
            json.clone(),
            expiration,
            big.clone(),
        );
        std::fs::create_dir_all(dir.path().join("results/big")).unwrap();
        std::fs::write(dir.path().join("results").join(key), record.encode_prefect3().unwrap()).unwrap();
    }
    let err = read(&store, at(block, "big/expired")).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "a whole read is refused: {err}");
    let report = store.sweep_expired(block, &sweep("big/", chrono::Utc::now(), None), open, |_| {}).await.unwrap();
    assert_eq!((report.expired, report.deleted, report.unreadable), (1, 1, 0), "{report:?}");
    assert_eq!(keys_under(&store, block, "big/").await, ["big/kept"]);
}

/// A sweep paces its storage calls, and a listing counts one call per 1000 entries it
/// lists, under the prefix or not: keys outside a prefix that shares their directory cost
/// nothing each. Time is tokio's paused clock (it moves only when every task waits), so
/// the pacing shows as elapsed virtual seconds, the same on any machine.
#[tokio::test(start_paused = true)]
async fn a_sweep_pays_for_listing_pages_not_for_skipped_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_for(&base_config(dir.path()));
    let (block, open) = ("memory/default", &Access::Open);
    for i in 0..50 {
        store.put(put(block, &format!("other{i:02}"), Payload::Json("1".into()), "json"), open).await.unwrap();
    }
    put_expiring(&store, block, "target", Some(chrono::Utc::now() - chrono::Duration::hours(1))).await;
    // 5 calls per second: 200 ms a call. The prefix "t" lists the block's root (51 entries).
    let opts = SweepOptions {
        calls_per_second: std::num::NonZeroU32::new(5).unwrap(),
        ..sweep("t", chrono::Utc::now(), None)
    };
    let started = tokio::time::Instant::now();
    let report = store.sweep_expired(block, &opts, open, |_| {}).await.unwrap();
    assert_eq!((report.scanned, report.deleted), (1, 1), "{report:?}");
    // The listing's page, the record's read, the HEAD and the DELETE: 4 calls, the first
    // at once. Paying per skipped entry was 50 more (10 s).
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_secs(1), "{elapsed:?}");
}
