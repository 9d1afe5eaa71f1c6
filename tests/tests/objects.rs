//! Objects: Prefect's files written and read as they are (`PutRequest.object`,
//! `GetRequest.as_stored`), the path a Prefect storage block backed by the service takes.
//!
//! Every real Prefect file goes in and comes back byte for byte, from the cache and after
//! a restart; a Prefect 3 record sent to a split block is split on storage and rebuilt
//! identically; a record that could never be read back is refused and replaces nothing.

use sha2::Digest;
use std::path::PathBuf;

use bytes::Bytes;
use resultstore_client::{Put, ReadOptions, Stored, Target, Want, serializer_pb};
use resultstore_e2e::{TestServer, code_of, prefect_samples};
use tonic::Code;

/// Every file Prefect wrote in the samples (both versions), with a key for it.
fn sample_files() -> Vec<(String, PathBuf)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let root = prefect_samples();
    let mut files = Vec::new();
    for version in ["v3.9.1", "v2.20.25"] {
        walk(&root.join(version), &mut files);
    }
    files
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            // Notes and API dumps beside the results, and hand-made probes, are not Prefect's result files.
            !name.contains("handcrafted") && !name.ends_with(".txt") && !name.ends_with("api-db-dump.json")
        })
        .map(|p| {
            let key = p.strip_prefix(&root).expect("under root").to_string_lossy().replace(['.'], "_");
            (key, p)
        })
        .collect()
}

fn as_stored() -> ReadOptions {
    ReadOptions { as_stored: true, allow_expired: true, ..Default::default() }
}

async fn put_object(s: &TestServer, block: &str, key: &str, bytes: Vec<u8>) -> resultstore_client::Result<Stored> {
    s.client.put(Put::object(bytes).storage(block).key(key)).await
}

async fn read_stored(s: &TestServer, block: &str, key: &str) -> Bytes {
    let target = Target::Location { block: block.into(), key: key.into() };
    s.client.get(target, as_stored()).await.unwrap_or_else(|e| panic!("{block} {key}: {e}")).data
}

#[tokio::test]
async fn every_prefect_file_comes_back_byte_for_byte() {
    let mut s = TestServer::start().await;
    let files = sample_files();
    assert!(files.len() >= 25, "expected the sample set, found {} files", files.len());
    for block in ["local-file-system/default", "local-file-system/split", "memory/split"] {
        for (key, path) in &files {
            let original = std::fs::read(path).expect("sample");
            put_object(&s, block, key, original.clone()).await.unwrap_or_else(|e| panic!("{block} {key}: {e}"));
            assert_eq!(read_stored(&s, block, key).await, original, "{block} {key} (from the cache)");
        }
    }
    // A prefect3 block holds exactly Prefect's bytes on disk.
    for (key, path) in &files {
        let on_disk = std::fs::read(s.path("results").join(key)).expect("written");
        assert_eq!(on_disk, std::fs::read(path).expect("sample"), "{key} on disk");
    }
    s.restart().await;
    for block in ["local-file-system/default", "local-file-system/split"] {
        for (key, path) in &files {
            assert_eq!(
                read_stored(&s, block, key).await,
                std::fs::read(path).expect("sample"),
                "{block} {key} (storage)"
            );
        }
    }
}

#[tokio::test]
async fn a_record_sent_to_a_split_block_is_split_and_resolves() {
    let s = TestServer::start().await;
    let record = std::fs::read(prefect_samples().join("v3.9.1/resultstore-api/compressed-pickle")).expect("sample");
    let Stored::Reference(r) = put_object(&s, "local-file-system/split", "cp", record.clone()).await.expect("put")
    else {
        panic!("a record is never a literal")
    };
    assert_eq!(r.0.format, "split");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.0.serializer.as_ref().unwrap().config_json).unwrap()["type"],
        "compressed/pickle"
    );
    // Payload alone at the key, Prefect's metadata document beside it.
    let doc: serde_json::Value = serde_json::from_slice(&record).expect("record");
    let payload = std::fs::read(s.path("split/cp")).expect("payload");
    assert_eq!(payload, doc["result"].as_str().expect("string").as_bytes());
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("split-meta/cp")).expect("metadata")).expect("json");
    // Prefect's fields as they were, and the payload's digest (see the service's `split`).
    let digest = meta.as_object_mut().unwrap().remove("resultstore_payload_sha256");
    assert_eq!(digest.as_ref().and_then(|d| d.as_str()), Some(hex::encode(sha2::Sha256::digest(&payload)).as_str()));
    assert_eq!(meta, doc["metadata"]);
    // And the value is there for any client: [1, 2, 3], pickled by cloudpickle.
    let target = Target::Location { block: "local-file-system/split".into(), key: "cp".into() };
    let resolved = s.client.resolve(target, Want::Json, ReadOptions::default()).await.expect("resolve");
    assert_eq!(resolved.json.as_deref(), Some("[1, 2, 3]"));
}

#[tokio::test]
async fn bare_objects_need_no_serializer_to_be_read_as_stored() {
    let s = TestServer::start().await;
    // A Prefect 3 flow result: bare JSON text; the default serializer here is pickle.
    let flow_result = std::fs::read(prefect_samples().join("v3.9.1/flow-saved-block/c720451d88d3404eabd1259bad9f0525"))
        .expect("sample");
    let Stored::Reference(r) =
        put_object(&s, "local-file-system/default", "flow", flow_result.clone()).await.expect("put")
    else {
        panic!("an object is never a literal")
    };
    assert_eq!(r.0.format, "bare");
    assert_eq!(r.0.serializer.as_ref().unwrap().r#type, "opaque");
    assert_eq!(read_stored(&s, "local-file-system/default", "flow").await, flow_result);
    // Read as a result, it takes the serializer the reader names; the opaque entry does not stand in.
    let target = Target::Location { block: "local-file-system/default".into(), key: "flow".into() };
    let opts = ReadOptions { serializer_hint: Some(serializer_pb("json")), ..Default::default() };
    let resolved = s.client.resolve(target.clone(), Want::Json, opts).await.expect("resolve with hint");
    assert_eq!(resolved.value_serializer, "json");
    assert!(resolved.json.expect("json").starts_with('{'));
    // With no hint the block's default (pickle) is only a guess: the bytes say JSON text,
    // and that is how they read (was DATA_LOSS, though nothing was damaged).
    let bypass = ReadOptions { bypass_cache: true, ..Default::default() };
    let resolved = s.client.resolve(target.clone(), Want::Json, bypass).await.expect("resolve without hint");
    assert_eq!(resolved.value_serializer, "json");
    // Named wrongly, the serializer is the reader's word: JSON text is not a pickle.
    let opts = ReadOptions { serializer_hint: Some(serializer_pb("pickle")), ..Default::default() };
    assert_eq!(code_of(s.client.resolve(target, Want::Json, opts).await), Code::DataLoss);
    // Still the same object as stored afterwards.
    assert_eq!(read_stored(&s, "local-file-system/default", "flow").await, flow_result);
}

#[tokio::test]
async fn objects_that_could_not_be_read_back_are_refused_and_replace_nothing() {
    let s = TestServer::start().await;
    let good = std::fs::read(prefect_samples().join("v3.9.1/resultstore-api/pickle-int")).expect("sample");
    put_object(&s, "local-file-system/default", "k", good.clone()).await.expect("put");
    let text = String::from_utf8(good.clone()).expect("utf-8");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated record", good[..good.len() / 2].to_vec()),
        ("pickle that is not base64", text.replace("gA", "!!").into_bytes()),
        ("unreadable serializer", br#"{"metadata":{"serializer":5},"result":"x"}"#.to_vec()),
        (
            "expiration that is not a time",
            br#"{"metadata":{"serializer":{"type":"json"},"expiration":"soon"},"result":"1"}"#.to_vec(),
        ),
        (
            "compressed bytes that do not decompress",
            br#"{"metadata":{"serializer":{"type":"compressed/json"}},"result":"AAAA\n"}"#.to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let code = code_of(put_object(&s, "local-file-system/default", "k", bytes).await);
        assert_eq!(code, Code::InvalidArgument, "{what}");
    }
    // Options that contradict an object are refused too.
    let no_persist = Put::object(good.clone()).storage("local-file-system/default").key("k").persist(false);
    assert_eq!(code_of(s.client.put(no_persist).await), Code::InvalidArgument);
    let with_expiration = Put::object(good.clone())
        .storage("local-file-system/default")
        .key("k")
        .expires_in(std::time::Duration::from_secs(3600));
    assert_eq!(code_of(s.client.put(with_expiration).await), Code::InvalidArgument);
    let other = std::fs::read(prefect_samples().join("v3.9.1/resultstore-api/json-dict")).expect("sample");
    let create_only = Put::object(other).storage("local-file-system/default").key("k").create_only();
    assert_eq!(code_of(s.client.put(create_only).await), Code::AlreadyExists);
    // The very same bytes create-only: a retry of the write that stored them, which succeeds.
    let retried = Put::object(good.clone()).storage("local-file-system/default").key("k").create_only();
    s.client.put(retried).await.expect("a create-only retry of the same object");
    // Nothing was replaced.
    assert_eq!(std::fs::read(s.path("results/k")).expect("file"), good);
    assert_eq!(read_stored(&s, "local-file-system/default", "k").await, good);
}

#[tokio::test]
async fn expired_objects_read_as_stored_only_when_allowed() {
    let s = TestServer::start().await;
    let record = br#"{"metadata":{"storage_key":"old","expiration":"2020-01-01T00:00:00Z","serializer":{"type":"json"},"prefect_version":"3.9.1","storage_block_id":null},"result":"1"}"#;
    put_object(&s, "local-file-system/default", "old", record.to_vec()).await.expect("put");
    let target = Target::Location { block: "local-file-system/default".into(), key: "old".into() };
    let strict = ReadOptions { as_stored: true, ..Default::default() };
    assert_eq!(code_of(s.client.get(target.clone(), strict).await), Code::FailedPrecondition);
    assert_eq!(s.client.get(target, as_stored()).await.expect("allowed").data, &record[..]);
}
