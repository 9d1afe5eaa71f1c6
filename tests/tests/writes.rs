//! Writes and what protects them: create-only vs overwrite, both formats, digests,
//! corrupt and truncated records, expiry, listing, exists and delete.

use resultstore_client::{Put, ReadOptions, Stored, Target, Want};
use resultstore_e2e::{TestServer, python};
use tonic::Code;

fn reference(s: Stored) -> resultstore_client::Reference {
    s.reference().expect("a reference").clone()
}

#[tokio::test]
async fn create_only_never_replaces_and_overwrite_does() {
    let s = TestServer::start().await;
    let first = reference(s.client.put(Put::json(r#""first""#).key("k").create_only()).await.unwrap());
    let err = s.client.put(Put::json(r#""second""#).key("k").create_only()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::AlreadyExists), "{err}");
    let bypass = ReadOptions { bypass_cache: true, ..Default::default() };
    let r = s.client.resolve(&first, Want::Json, bypass.clone()).await.unwrap();
    assert_eq!(r.json.as_deref(), Some("\"first\""), "the refused write changed nothing");

    let second = reference(s.client.put(Put::json(r#""second""#).key("k")).await.unwrap());
    assert_ne!(first.sha256(), second.sha256());
    let r = s.client.resolve(&second, Want::Json, bypass).await.unwrap();
    assert_eq!(r.json.as_deref(), Some("\"second\""));
    // The first reference no longer matches what the key holds: never the wrong value.
    let err = s.client.resolve(&first, Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    assert!(err.to_string().contains("overwritten"), "{err}");
}

#[tokio::test]
async fn prefect3_blocks_write_one_record_and_split_blocks_two_documents() {
    let s = TestServer::start().await;
    let p3 = reference(s.client.put(Put::json(r#"{"x": 1}"#).serializer("json").key("a/b")).await.unwrap());
    assert_eq!(p3.0.format, "prefect3");
    let record = std::fs::read_to_string(s.path("results/a/b")).unwrap();
    assert!(record.starts_with(
        r#"{"metadata":{"storage_key":"a/b","expiration":null,"serializer":{"type":"json","jsonlib":"json""#
    ));
    assert!(
        record.ends_with(r#""prefect_version":"3.9.1","storage_block_id":null},"result":"{\"x\": 1}"}"#),
        "{record}"
    );
    assert!(p3.0.uri.starts_with("file:///") && p3.0.uri.ends_with("/results/a/b"), "{}", p3.0.uri);

    let split = reference(
        s.client
            .put(Put::json(r#"{"x": 2}"#).serializer("pickle").storage("local-file-system/split").key("c"))
            .await
            .unwrap(),
    );
    assert_eq!(split.0.format, "split");
    let payload = std::fs::read(s.path("split/c")).unwrap();
    let metadata: serde_json::Value = serde_json::from_slice(&std::fs::read(s.path("split-meta/c")).unwrap()).unwrap();
    assert_eq!(metadata["storage_key"], "c");
    assert_eq!(metadata["serializer"]["type"], "pickle");
    // The payload alone is what pickle's base64 serializer wrote, and Python reads it.
    let out = python(
        "import base64,pickle,sys;print(pickle.loads(base64.decodebytes(open(sys.argv[1],'rb').read())))",
        &[s.path("split/c").to_str().unwrap()],
    );
    assert_eq!(out.trim(), "{'x': 2}");
    assert_eq!(payload.len() as u64, split.0.size);
    let r =
        s.client.resolve(&split, Want::Json, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
    assert_eq!(r.json.as_deref(), Some(r#"{"x": 2}"#));
    s.client.delete("local-file-system/split", "c").await.unwrap();
    assert!(!s.path("split/c").exists() && !s.path("split-meta/c").exists());

    // A split block without metadata_url keeps metadata under its reserved prefix, which
    // listings hide and keys cannot name.
    let m =
        reference(s.client.put(Put::json("[7]").serializer("json").storage("memory/split").key("m")).await.unwrap());
    assert_eq!(m.0.format, "split");
    let listed = s.client.list_all("memory/split", "").await.unwrap();
    assert_eq!(listed.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["m"]);
    let r = s.client.resolve(&m, Want::Json, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
    assert_eq!(r.json.as_deref(), Some("[7]"));
    assert_eq!(r.reference.unwrap().0.format, "split");
    let hidden = Target::Location { block: "memory/split".into(), key: ".resultstore-metadata/m".into() };
    let err = s.client.get(hidden, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
}

#[tokio::test]
async fn altered_and_truncated_records_are_data_loss_never_wrong_data() {
    let mut s = TestServer::start().await;
    let r = reference(s.client.put(Put::json(r#"{"amount": 100}"#).serializer("json").key("pay")).await.unwrap());
    let pickled = reference(s.client.put(Put::json("[1, 2, 3]").serializer("pickle").key("pk")).await.unwrap());
    s.restart().await; // a fresh replica: nothing cached

    // Someone edits the stored value; the record is still well-formed.
    let path = s.path("results/pay");
    let text = std::fs::read_to_string(&path).unwrap().replace("100", "999");
    std::fs::write(&path, text).unwrap();
    let err = s.client.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    // Read by location (no digest to hold it to), the record is what storage has.
    let loc = Target::Location { block: String::new(), key: "pay".into() };
    assert_eq!(
        s.client.resolve(loc, Want::Json, ReadOptions::default()).await.unwrap().json.as_deref(),
        Some(r#"{"amount": 999}"#)
    );

    // Truncated records and broken payloads.
    let path = s.path("results/pk");
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() / 2]).unwrap();
    let err = s.client.resolve(&pickled, Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    let loc = Target::Location { block: String::new(), key: "pk".into() };
    let err = s.client.resolve(loc, Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    assert!(err.to_string().contains("truncated"), "{err}");

    std::fs::write(
        s.path("results/badb64"),
        r#"{"metadata":{"serializer":{"type":"pickle"}},"result":"%%%not base64"}"#,
    )
    .unwrap();
    let loc = Target::Location { block: String::new(), key: "badb64".into() };
    assert_eq!(
        s.client.resolve(loc, Want::Raw, ReadOptions::default()).await.unwrap_err().code(),
        Some(Code::DataLoss)
    );
    std::fs::write(
        s.path("results/badpickle"),
        "{\"metadata\":{\"serializer\":{\"type\":\"pickle\"}},\"result\":\"gAVdlChLAQ==\\n\"}",
    )
    .unwrap();
    let loc = Target::Location { block: String::new(), key: "badpickle".into() };
    assert_eq!(
        s.client.resolve(loc, Want::Json, ReadOptions::default()).await.unwrap_err().code(),
        Some(Code::DataLoss)
    );
}

#[tokio::test]
async fn expired_results_fail_unless_asked_to_read_anyway() {
    let s = TestServer::start().await;
    let past = chrono::Utc::now() - chrono::Duration::seconds(5);
    let r = reference(s.client.put(Put::json(r#""old""#).persist(true).expires_at(past)).await.unwrap());
    let err = s.client.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert!(err.to_string().contains("expired"), "{err}");
    let ok = s.client.resolve(&r, Want::Json, ReadOptions { allow_expired: true, ..Default::default() }).await.unwrap();
    assert_eq!(ok.json.as_deref(), Some("\"old\""));
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("results").join(r.key())).unwrap()).unwrap();
    let written = on_disk["metadata"]["expiration"].as_str().unwrap();
    assert!(written.ends_with('Z') && written.len() == "2026-11-22T05:22:37.267013Z".len(), "{written}");

    let future = chrono::Utc::now() + chrono::Duration::hours(1);
    let r = reference(s.client.put(Put::json(r#""fresh""#).persist(true).expires_at(future)).await.unwrap());
    assert!(s.client.resolve(&r, Want::Json, ReadOptions::default()).await.is_ok());
}

#[tokio::test]
async fn list_pages_in_key_order_with_string_prefixes_and_exists_and_delete() {
    let s = TestServer::start().await;
    let mut keys: Vec<String> = (0..25).map(|i| format!("runs/r{i:02}/out.json")).collect();
    keys.push("runs-other".into());
    keys.push("top".into());
    for k in &keys {
        s.client.put(Put::json("1").key(k.clone())).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = s.client.list("", "runs/r", 10, &token).await.unwrap();
        pages += 1;
        assert!(page.entries.len() <= 10);
        seen.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut want: Vec<String> = keys.iter().filter(|k| k.starts_with("runs/r")).cloned().collect();
    want.sort();
    assert_eq!(seen, want);
    assert_eq!(pages, 3);
    let all = s.client.list_all("", "runs").await.unwrap();
    assert_eq!(all.len(), 26, "`runs` matches `runs/...` and `runs-other`");

    assert!(s.client.exists("", "top").await.unwrap());
    assert!(!s.client.exists("", "nope").await.unwrap());
    s.client.delete("", "top").await.unwrap();
    assert!(!s.client.exists("", "top").await.unwrap());
    assert_eq!(s.client.delete("", "top").await.unwrap_err().code(), Some(Code::NotFound));
    let blocks = s.client.list_blocks().await.unwrap();
    assert_eq!(blocks.iter().filter(|b| b.is_default).count(), 1);
    assert!(blocks.iter().any(|b| b.slug == "local-file-system/split" && b.format == "split"));
}
