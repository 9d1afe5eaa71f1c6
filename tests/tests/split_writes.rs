//! Split records (payload + metadata document) are seen whole or not at all: racing
//! writers never leave one's payload under the other's document, a write cut between its
//! two objects leaves the old result, and what a crash leaves staged is read and finished.
//! (The SIGKILL loop over every block format is `service/tests/chaos.rs`.)

use std::collections::HashMap;

use resultstore_client::{Put, ReadOptions, Reference, Target, Want};
use resultstore_e2e::{SmallDisk, TestServer, base_config};
use sha2::{Digest, Sha256};
use tonic::Code;

fn bypass() -> ReadOptions {
    ReadOptions { bypass_cache: true, ..Default::default() }
}

fn at(block: &str, key: &str) -> Target {
    Target::Location { block: block.into(), key: key.into() }
}

fn serializer_of(r: &Reference) -> String {
    r.0.serializer.as_ref().map(|s| s.r#type.clone()).unwrap_or_default()
}

/// 200 rounds of two writes racing on one key, with different serializers: afterwards the
/// key reads as one of them whole, and each acknowledged reference resolves to exactly its
/// own value and serializer, or fails. Before writes were staged and locked, rounds tore
/// (the JSON payload under the pickle document, or the reverse).
#[tokio::test]
async fn racing_writes_to_a_split_key_never_tear() {
    let s = TestServer::start().await;
    for block in ["local-file-system/split", "memory/split"] {
        for round in 0..200 {
            let key = format!("race/{}", round % 4);
            let a = format!("\"a-{round}\"");
            let b = format!("\"b-{round}\"");
            let put_a = s.client.put(Put::json(&a).serializer("json").storage(block).key(&key));
            let put_b = s.client.put(Put::json(&b).serializer("pickle").storage(block).key(&key));
            let (ra, rb) = tokio::join!(put_a, put_b);
            let written = [(ra.unwrap(), &a, "json"), (rb.unwrap(), &b, "pickle")];
            let held = s.client.resolve(at(block, &key), Want::Json, bypass()).await;
            let held = held.unwrap_or_else(|e| panic!("{block} round {round}: the key does not read: {e}"));
            let held_ser = serializer_of(held.reference.as_ref().unwrap());
            assert!(
                written.iter().any(|(_, v, ser)| held.json.as_deref() == Some(v.as_str()) && held_ser == *ser),
                "{block} round {round}: the key holds {:?} ({held_ser}), neither write whole",
                held.json
            );
            for (stored, value, ser) in &written {
                let r = stored.reference().unwrap();
                match s.client.resolve(r, Want::Json, bypass()).await {
                    Ok(got) => {
                        assert_eq!(got.json.as_deref(), Some(value.as_str()), "{block} round {round}");
                        assert_eq!(serializer_of(got.reference.as_ref().unwrap()), *ser, "{block} round {round}");
                    }
                    Err(e) => assert_eq!(e.code(), Some(Code::DataLoss), "{block} round {round}: {e}"),
                }
            }
        }
    }
}

/// A split write whose metadata document cannot be written (its disk is full: a 1 MiB
/// tmpfs mounted for the test) fails and leaves the key's old result whole, and a new key
/// nothing listed. Before payloads were staged, the new payload sat under the old document
/// (a pickle read as JSON: DATA_LOSS) and the new key was listed, reading DATA_LOSS.
#[tokio::test]
async fn a_split_write_cut_before_its_document_leaves_the_old_result() {
    let disk = SmallDisk::mount();
    let mount = disk.path.clone();
    let m = mount.display().to_string();
    let s = TestServer::start_with(|dir| {
        format!(
            "{}\n[blocks.\"local-file-system/cut\"]\nurl = \"file://{}/cut\"\nformat = \"split\"\nmetadata_url = \"file://{m}\"\n",
            base_config(dir),
            dir.display()
        )
    })
    .await;
    let block = "local-file-system/cut";
    let old = s.client.put(Put::json(r#""old""#).serializer("json").storage(block).key("k")).await.unwrap();
    // Fill the metadata disk.
    let filler = std::fs::File::create(mount.join("filler")).unwrap();
    let mut filler = std::io::BufWriter::new(filler);
    while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    drop(filler);

    let err = s.client.put(Put::json(r#""new""#).serializer("pickle").storage(block).key("k")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    let held = s.client.resolve(at(block, "k"), Want::Json, bypass()).await.unwrap();
    assert_eq!(held.json.as_deref(), Some(r#""old""#));
    let r = s.client.resolve(old.reference().unwrap(), Want::Json, bypass()).await.unwrap();
    assert_eq!(serializer_of(r.reference.as_ref().unwrap()), "json");

    let err = s.client.put(Put::json(r#""fresh""#).serializer("json").storage(block).key("fresh")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    let listed: Vec<String> = s.client.list_all(block, "").await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(listed, ["k"], "only the readable result is listed");
    let err = s.client.resolve(at(block, "fresh"), Want::Json, bypass()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a crash between a split write's document and its move leaves (the document
/// naming a payload still staged) reads as the new result, exists, streams, and is finished
/// by the sweep (staged payload moved to the key, its folders removed); a staged payload
/// nothing names is removed; and a payload that never matches its document is DATA_LOSS.
#[tokio::test]
async fn a_write_cut_before_its_move_is_read_from_staging_and_finished_by_the_sweep() {
    let s = TestServer::start().await;
    let block = "local-file-system/split";
    s.client.put(Put::json(r#""old""#).serializer("json").storage(block).key("a/k")).await.unwrap();
    let doc_path = s.path("split-meta/a/k");
    let old_doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&doc_path).unwrap()).unwrap();
    let old_sha = old_doc["resultstore_payload_sha256"].as_str().expect("the document names its payload").to_owned();
    assert_eq!(old_sha, sha256_hex(&std::fs::read(s.path("split/a/k")).unwrap()));

    // The state a crash after step 2 leaves: the new payload staged, the document naming it.
    let new_payload = br#""new""#;
    let new_sha = sha256_hex(new_payload);
    let staged = s.path(&format!("split/.resultstore-staging/split/{new_sha}/a/k"));
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, new_payload).unwrap();
    let mut doc = old_doc.clone();
    doc["resultstore_payload_sha256"] = new_sha.clone().into();
    std::fs::write(&doc_path, serde_json::to_vec(&doc).unwrap()).unwrap();

    let held = s.client.resolve(at(block, "a/k"), Want::Json, bypass()).await.unwrap();
    assert_eq!(held.json.as_deref(), Some(r#""new""#));
    assert_eq!(held.reference.as_ref().unwrap().sha256(), new_sha);
    // An unreferenced staged payload (a crash before step 2), and an old one.
    let orphan = s.path("split/.resultstore-staging/split/0000/b");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"\"orphan\"").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3700);
    for file in [&staged, &orphan] {
        std::fs::File::options().write(true).open(file).unwrap().set_modified(an_hour_ago).unwrap();
    }
    let store = s.store();
    let b = store.blocks().get(block).unwrap();
    assert_eq!(store.sweep_staging(&b).await.unwrap(), 2);
    assert_eq!(std::fs::read(s.path("split/a/k")).unwrap(), new_payload, "the cut write was finished");
    assert!(!orphan.exists(), "the orphan is gone");
    assert!(!s.path(&format!("split/.resultstore-staging/split/{new_sha}")).exists(), "the staged folders are gone");
    let held = s.client.resolve(at(block, "a/k"), Want::Json, bypass()).await.unwrap();
    assert_eq!(held.json.as_deref(), Some(r#""new""#));

    // A payload replaced by something that does not write split records whole.
    std::fs::write(s.path("split/a/k"), br#""tampered""#).unwrap();
    let err = s.client.resolve(at(block, "a/k"), Want::Json, bypass()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    assert!(err.to_string().contains("metadata document"), "{err}");
}

/// A new key whose write was cut before its move exists and reads before the sweep (it is
/// listed once the sweep moved it); Delete removes the staged payload too.
#[tokio::test]
async fn a_new_key_cut_before_its_move_exists_and_deletes() {
    let s = TestServer::start().await;
    let block = "local-file-system/split";
    let payload = br#"{"n": 1}"#;
    let sha = sha256_hex(payload);
    let staged = s.path(&format!("split/.resultstore-staging/split/{sha}/n"));
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, payload).unwrap();
    let doc = serde_json::json!({"storage_key": "n", "expiration": null, "serializer": {"type": "json"},
        "prefect_version": "3.9.1", "storage_block_id": null, "resultstore_payload_sha256": sha});
    std::fs::create_dir_all(s.path("split-meta")).unwrap();
    std::fs::write(s.path("split-meta/n"), serde_json::to_vec(&doc).unwrap()).unwrap();
    assert!(s.client.exists(block, "n").await.unwrap());
    let held = s.client.resolve(at(block, "n"), Want::Json, bypass()).await.unwrap();
    assert_eq!(held.json.as_deref(), Some(r#"{"n": 1}"#));
    s.client.delete(block, "n").await.unwrap();
    assert!(!staged.exists(), "the staged payload went with the result");
    assert!(!s.path("split-meta/n").exists());
    assert!(!s.client.exists(block, "n").await.unwrap());
    let err = s.client.delete(block, "n").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
}

/// Prefect reads what a split block writes (its `ResultRecordMetadata` ignores the digest
/// field), checked at the documents' level here and with Prefect itself in the Python
/// interop tests. A retried create-only split write whose reply was lost succeeds.
#[tokio::test]
async fn split_documents_keep_prefects_fields_and_create_only_retries_succeed() {
    let s = TestServer::start().await;
    let block = "local-file-system/split";
    let put = || Put::json(r#"[1, 2]"#).serializer("json").storage(block).key("c").create_only();
    let first = s.client.put(put()).await.unwrap();
    let again = s.client.put(put()).await.unwrap();
    assert_eq!(first.reference().unwrap().sha256(), again.reference().unwrap().sha256());
    let err = s.client.put(Put::json("[3]").serializer("json").storage(block).key("c").create_only()).await;
    assert_eq!(err.unwrap_err().code(), Some(Code::AlreadyExists));
    let doc: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(s.path("split-meta/c")).unwrap()).unwrap();
    for field in ["storage_key", "expiration", "serializer", "prefect_version", "storage_block_id"] {
        assert!(doc.contains_key(field), "{field} missing from {doc:?}");
    }
    // Nothing is left staged by writes that completed.
    let staging = s.path("split/.resultstore-staging");
    let left: Vec<_> = walk(&staging);
    assert!(left.is_empty(), "left staged: {left:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries.flatten().flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

/// object_store's own staged uploads (`NAME#N`) that a kill left in a local block's folder
/// are removed by the sweep once stale; a fresh one (a write in progress) is kept.
#[tokio::test]
async fn the_sweep_removes_stale_staged_uploads_of_local_blocks() {
    let s = TestServer::start().await;
    std::fs::create_dir_all(s.path("results/a")).unwrap();
    let stale = s.path("results/a/k#3");
    let fresh = s.path("results/a/k#4");
    std::fs::write(&stale, b"half a record").unwrap();
    std::fs::write(&fresh, b"a write in progress").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3700);
    std::fs::File::options().write(true).open(&stale).unwrap().set_modified(an_hour_ago).unwrap();
    s.store().sweep().await;
    assert!(!stale.exists(), "the stale upload is still there");
    assert!(fresh.exists(), "the sweep removed a write in progress");
}
