//! One conformance suite of the service's operations, run against every block type that
//! can be tested here: memory, local files, S3 (moto and s3s-fs) and Azure (Azurite).
//! Each runs against a `prefect3` block and a `split` block of its type, and with the
//! table of keys that must be stored exactly as written (GCS, read-only here:
//! `gcs_read_path.rs`).

use resultstore_client::{Literal, Put, ReadOptions, Stored, Target, Want};
use resultstore_e2e::servers::{
    azure_blob_names, azure_options, azurite, moto_s3, s3_object_names, s3_options, s3s_fs,
};
use resultstore_e2e::{SERIALIZERS, TestServer, base_config, config_with_pair, key_table};
use tonic::Code;

const VALUE: &str = r#"{"a": 1, "b": [1, 2.5, "x", null, true], "t": "h\u00e9"}"#;

fn bypass() -> ReadOptions {
    ReadOptions { bypass_cache: true, ..Default::default() }
}

fn json_eq(got: Option<&str>, want: &str) {
    let got: serde_json::Value = serde_json::from_str(got.expect("a JSON value")).unwrap();
    let want: serde_json::Value = serde_json::from_str(want).unwrap();
    assert_eq!(got, want);
}

/// The whole suite against `block`.
async fn conformance(s: &TestServer, block: &str) {
    let c = &s.client;
    let loc = |key: &str| Target::Location { block: block.into(), key: key.into() };

    // Every serializer, every payload form; reads from storage, not only the cache.
    for (i, ser) in SERIALIZERS.iter().enumerate() {
        let key = format!("conf/ser/{i}");
        let stored = c.put(Put::json(VALUE).serializer(*ser).storage(block).key(&key)).await.unwrap();
        let r = stored.reference().unwrap().clone();
        assert_eq!(r.block(), block);
        let v = c.resolve(&r, Want::Json, bypass()).await.unwrap_or_else(|e| panic!("{block} {ser}: {e}"));
        json_eq(v.json.as_deref(), VALUE);
        let got = c.get(&r, bypass()).await.unwrap();
        assert_eq!(got.data.len() as u64, r.0.size);
        // The serializer bytes put back as `data` under another key read the same.
        let copy = c
            .put(Put::data(got.data.clone()).serializer(*ser).storage(block).key(format!("{key}-data")))
            .await
            .unwrap();
        assert_eq!(copy.reference().unwrap().sha256(), r.sha256(), "{block} {ser}");
        let v = c.resolve(loc(&format!("{key}-data")), Want::Json, bypass()).await.unwrap();
        json_eq(v.json.as_deref(), VALUE);
    }

    // Literals: in the reply unless a key is asked for.
    assert!(matches!(
        c.put(Put::literal(Literal::Null).storage(block).persist(true)).await.unwrap(),
        Stored::Literal(Literal::Null)
    ));
    let keyed = c.put(Put::literal(Literal::False).storage(block).key("conf/flag").serializer("json")).await.unwrap();
    let v = c.resolve(keyed.reference().unwrap(), Want::Json, bypass()).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("false"));

    // Create-only vs overwrite.
    let first = c.put(Put::json(r#""one""#).storage(block).key("conf/once").create_only()).await.unwrap();
    let err = c.put(Put::json(r#""two""#).storage(block).key("conf/once").create_only()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::AlreadyExists), "{block}: {err}");
    // The same write again (a retry whose first reply was lost) finds its own bytes there:
    // it succeeds, and nothing was replaced.
    let again = c.put(Put::json(r#""one""#).storage(block).key("conf/once").create_only()).await;
    let again = again.unwrap_or_else(|e| panic!("{block}: a retried create-only write: {e}"));
    assert_eq!(again.reference().unwrap().sha256(), first.reference().unwrap().sha256(), "{block}");
    let v = c.resolve(first.reference().unwrap(), Want::Json, bypass()).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("\"one\""));
    c.put(Put::json(r#""two""#).storage(block).key("conf/once")).await.unwrap();
    let v = c.resolve(loc("conf/once"), Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("\"two\""), "{block}: an overwrite through this replica is seen at once");
    let err = c.resolve(first.reference().unwrap(), Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{block}: the old reference no longer matches");

    // Expiry.
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let old = c.put(Put::json("1").storage(block).key("conf/old").expires_at(past)).await.unwrap();
    let err = c.resolve(old.reference().unwrap(), Want::Json, bypass()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    let ok = c
        .resolve(
            old.reference().unwrap(),
            Want::Json,
            ReadOptions { allow_expired: true, bypass_cache: true, ..Default::default() },
        )
        .await;
    assert_eq!(ok.unwrap().json.as_deref(), Some("1"));

    // Listing, paginated and ordered.
    let mut want = Vec::new();
    for i in (0..12).rev() {
        let key = format!("conf/list/{i:02}");
        c.put(Put::json("0").storage(block).key(&key)).await.unwrap();
        want.push(key);
    }
    want.sort();
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = c.list(block, "conf/list/", 5, &token).await.unwrap();
        pages += 1;
        seen.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, want, "{block}");
    assert_eq!(pages, 3);

    // Exists, delete, missing keys.
    assert!(c.exists(block, "conf/list/00").await.unwrap());
    c.delete(block, "conf/list/00").await.unwrap();
    assert!(!c.exists(block, "conf/list/00").await.unwrap());
    assert_eq!(c.delete(block, "conf/list/00").await.unwrap_err().code(), Some(Code::NotFound));
    assert_eq!(c.resolve(loc("conf/list/00"), Want::Raw, bypass()).await.unwrap_err().code(), Some(Code::NotFound));
}

/// Lists the object names under a prefix in a block's real storage.
type StorageNames<'a> = &'a dyn Fn(&str) -> Vec<String>;

/// Every key of [`key_table`] is stored under exactly its name, and every surface agrees
/// on it: List returns the keys as put, each listed key reads, exists and deletes as it
/// is, and the reference's URI ends in it. `stored(prefix)` lists the object names under
/// `prefix` in the block's real storage, read without object_store (None: a memory block,
/// whose only view is the service's).
async fn keys_as_written(s: &TestServer, block: &str, stored: Option<StorageNames<'_>>) {
    let c = &s.client;
    let loc = |key: &str| Target::Location { block: block.into(), key: key.into() };
    let mut want = key_table();
    want.sort();
    for key in &want {
        let value = serde_json::to_string(key).unwrap();
        let r = c.put(Put::json(&value).serializer("json").storage(block).key(key)).await;
        let r = r.unwrap_or_else(|e| panic!("{block} {key:?}: {e}")).reference().unwrap().clone();
        assert_eq!(r.0.key, *key);
        assert!(r.0.uri.ends_with(&format!("/{key}")), "{block}: {} does not name {key:?}", r.0.uri);
        if let Some(path) = r.0.uri.strip_prefix("file://") {
            assert!(std::path::Path::new(path).is_file(), "{block}: the URI {} names no file", r.0.uri);
        }
    }
    let listed: Vec<String> = c.list_all(block, "keys/").await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(listed, want, "{block}: List returns the keys as they were put");
    if let Some(stored) = stored {
        assert_eq!(stored("keys/"), want, "{block}: the objects in storage are named by the keys");
    }
    for key in &listed {
        let v = c.resolve(loc(key), Want::Json, bypass()).await.unwrap_or_else(|e| panic!("{block} {key:?}: {e}"));
        json_eq(v.json.as_deref(), &serde_json::to_string(key).unwrap());
        assert!(c.exists(block, key).await.unwrap(), "{block} {key:?}");
    }
    for key in &listed {
        c.delete(block, key).await.unwrap_or_else(|e| panic!("{block} {key:?}: {e}"));
        assert!(!c.exists(block, key).await.unwrap(), "{block} {key:?}");
    }
    assert!(c.list_all(block, "keys/").await.unwrap().is_empty(), "{block}");
    if let Some(stored) = stored {
        assert!(stored("keys/").is_empty(), "{block}: deleted objects are gone from storage");
    }
}

/// Local files under `root`, relative to it, `/`-separated.
fn files_under(root: &std::path::Path, prefix: &str) -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_str().unwrap().to_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.retain(|n| n.starts_with(prefix));
    out.sort();
    out
}

async fn both_formats(s: &TestServer, family: &str, stored: StorageNames<'_>) {
    conformance(s, &format!("{family}/p3")).await;
    conformance(s, &format!("{family}/split")).await;
    keys_as_written(s, &format!("{family}/p3"), Some(&|p: &str| strip(stored(&format!("p3/{p}")), "p3/"))).await;
    keys_as_written(s, &format!("{family}/split"), Some(&|p: &str| strip(stored(&format!("split/{p}")), "split/")))
        .await;
}

fn strip(names: Vec<String>, prefix: &str) -> Vec<String> {
    names.into_iter().map(|n| n.strip_prefix(prefix).unwrap_or(&n).to_owned()).collect()
}

#[tokio::test]
async fn memory_blocks_conform() {
    let s = TestServer::start().await;
    conformance(&s, "memory/default").await;
    conformance(&s, "memory/split").await;
    keys_as_written(&s, "memory/default", None).await;
    keys_as_written(&s, "memory/split", None).await;
}

#[tokio::test]
async fn local_file_system_blocks_conform() {
    let s = TestServer::start().await;
    conformance(&s, "local-file-system/default").await;
    conformance(&s, "local-file-system/split").await;
    let results = s.path("results");
    keys_as_written(&s, "local-file-system/default", Some(&|p: &str| files_under(&results, p))).await;
    let split = s.path("split");
    keys_as_written(&s, "local-file-system/split", Some(&|p: &str| files_under(&split, p))).await;
}

#[tokio::test]
async fn s3_blocks_on_moto_conform() {
    let moto = moto_s3("results");
    let options = s3_options(moto.port);
    let s = TestServer::start_with(|dir| config_with_pair(dir, "s3-bucket", "s3://results", &options)).await;
    both_formats(&s, "s3-bucket", &|p: &str| s3_object_names(moto.port, "results", p)).await;
    let uri =
        s.client.put(Put::json("1").storage("s3/p3").key("alias")).await.unwrap().reference().unwrap().0.uri.clone();
    assert_eq!(uri, "s3://results/p3/alias");
}

#[tokio::test]
async fn azure_blocks_on_azurite_conform() {
    let (azurite, _work) = azurite("results");
    let options = azure_options(azurite.port);
    let s = TestServer::start_with(|dir| config_with_pair(dir, "azure", "az://results", &options)).await;
    both_formats(&s, "azure-blob-storage-container", &|p: &str| azure_blob_names(azurite.port, "results", p)).await;
}

#[tokio::test]
async fn s3_blocks_on_s3s_fs_conform() {
    let (server, root) = s3s_fs("results");
    let options = s3_options(server.port);
    let s = TestServer::start_with(|dir| config_with_pair(dir, "s3-bucket", "s3://results", &options)).await;
    // s3s-fs keeps each object in a file named by its key (its listings percent-decode
    // names once more than they should, so boto3 would see `%41` as `A`): the files are
    // the storage's own view.
    let bucket = root.path().join("results");
    both_formats(&s, "s3-bucket", &|p: &str| files_under(&bucket, p)).await;
    // Signatures are checked: a wrong secret is refused.
    let bad =
        s3_options(server.port).replace(r#"aws_secret_access_key = "test""#, r#"aws_secret_access_key = "wrong""#);
    let s2 = TestServer::start_with(|dir| {
        format!("{}\n[blocks.\"s3-bucket/bad\"]\nurl = \"s3://results/bad\"\noptions = {bad}\n", base_config(dir))
    })
    .await;
    let err = s2.client.put(Put::json("1").storage("s3-bucket/bad").key("k")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
}
