//! Storage going away and coming back, against a real S3 server (moto).

use std::time::{Duration, Instant};

use resultstore::telemetry::{Outcome, StorageOp};
use resultstore_client::{Put, ReadOptions, Target, Want};
use resultstore_e2e::servers::{moto_s3, moto_s3_on, s3_options};
use resultstore_e2e::{SmallDisk, TestServer, base_config};
use tonic::Code;

#[tokio::test]
async fn an_outage_fails_fast_keeps_cached_results_and_recovers_without_restart() {
    let mut moto = moto_s3("results");
    let port = moto.port;
    let options = s3_options(port);
    let s = TestServer::start_with(|dir| {
        format!(
            "{}\n[blocks.\"s3-bucket/prod\"]\nurl = \"s3://results/prod\"\noptions = {options}\nrequest_timeout = \"2s\"\nconnect_timeout = \"1s\"\nretry = {{ max_retries = 1, retry_timeout = \"2s\", initial_backoff = \"50ms\", max_backoff = \"200ms\" }}\n",
            base_config(dir)
        )
    })
    .await;
    let cached = s.client.put(Put::json(r#""cached""#).storage("s3-bucket/prod").key("warm")).await.unwrap();
    let cached = cached.reference().unwrap().clone();

    moto.kill();
    let start = Instant::now();
    let err = s.client.put(Put::json("1").storage("s3-bucket/prod").key("during")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    let cold = Target::Location { block: "s3-bucket/prod".into(), key: "never-cached".into() };
    let err = s.client.resolve(cold, Want::Raw, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(start.elapsed() < Duration::from_secs(15), "failures took {:?}", start.elapsed());
    // The cache keeps serving what it holds.
    let v = s.client.resolve(&cached, Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("\"cached\""));
    assert!(v.cache_hit);

    // Storage returns (moto's state is in memory: a new, empty bucket); the same
    // service writes and reads again.
    let _moto = moto_s3_on(port, "results");
    s.client.put(Put::json(r#""back""#).storage("s3-bucket/prod").key("after")).await.unwrap();
    let after = Target::Location { block: "s3-bucket/prod".into(), key: "after".into() };
    let v =
        s.client.resolve(after, Want::Json, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("\"back\""));
    let counters = s.store().blocks().get("s3-bucket/prod").unwrap().counters.snapshot();
    assert!(counters.errors >= 2, "{counters:?}");
    assert!(counters.count(StorageOp::Put, Outcome::Failed) >= 1, "{counters:?}");
    assert!(counters.count(StorageOp::Get, Outcome::Failed) >= 1, "{counters:?}");
    assert_eq!(counters.count(StorageOp::Put, Outcome::Ok), 2, "{counters:?}");
    assert_eq!(counters.count(StorageOp::Get, Outcome::Ok), 1, "{counters:?}");
}

/// A backend that accepts connections and never answers: calls fail within the block's
/// timeouts, never hang, and the error names no secret.
#[tokio::test]
async fn a_hung_backend_fails_within_the_timeout_and_secrets_stay_out_of_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(64) {
            held.push(conn); // accepted, never answered
        }
    });
    let options = s3_options(port)
        .replace(r#"aws_secret_access_key = "test""#, r#"aws_secret_access_key = "SUPERSECRET-abc123""#);
    let s = TestServer::start_with(|dir| {
        format!(
            "{}\n[blocks.\"s3-bucket/slow\"]\nurl = \"s3://results/slow\"\noptions = {options}\nrequest_timeout = \"1s\"\nretry = {{ max_retries = 0 }}\n",
            base_config(dir)
        )
    })
    .await;
    let start = Instant::now();
    let err = s.client.put(Put::json("1").storage("s3-bucket/slow").key("k")).await.unwrap_err();
    assert!(matches!(err.code(), Some(Code::Unavailable | Code::DeadlineExceeded)), "{err}");
    let target = Target::Location { block: "s3-bucket/slow".into(), key: "k".into() };
    let err2 = s.client.resolve(target, Want::Raw, ReadOptions::default()).await.unwrap_err();
    assert!(matches!(err2.code(), Some(Code::Unavailable | Code::DeadlineExceeded)), "{err2}");
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());
    for e in [err.to_string(), err2.to_string()] {
        assert!(!e.contains("SUPERSECRET"), "a secret leaked: {e}");
    }
    let blocks = s.client.list_blocks().await.unwrap();
    assert!(blocks.iter().all(|b| !b.url.contains("SUPERSECRET")));
}

#[tokio::test]
async fn records_altered_or_truncated_in_the_bucket_are_data_loss() {
    let moto = moto_s3("results");
    let options = s3_options(moto.port);
    let mut s = TestServer::start_with(|dir| {
        format!("{}\n[blocks.\"s3-bucket/prod\"]\nurl = \"s3://results/prod\"\noptions = {options}\n", base_config(dir))
    })
    .await;
    let stored = s
        .client
        .put(Put::json(r#"{"amount": 100}"#).serializer("json").storage("s3-bucket/prod").key("pay"))
        .await
        .unwrap();
    let r = stored.reference().unwrap().clone();
    s.client.put(Put::json("[1, 2, 3]").serializer("pickle").storage("s3-bucket/prod").key("pk")).await.unwrap();
    s.restart().await; // nothing cached

    // moto wants an Authorization header but does not check its signature.
    let auth = [(
        "Authorization",
        "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
    )];
    // Someone else rewrites the object: still a well-formed record, another value.
    let altered = br#"{"metadata":{"storage_key":"pay","expiration":null,"serializer":{"type":"json"},"prefect_version":"3.9.1","storage_block_id":null},"result":"{\"amount\": 999}"}"#;
    assert_eq!(resultstore_e2e::servers::http(moto.port, "PUT", "/results/prod/pay", &auth, altered), 200);
    let err = s.client.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");

    // Someone else truncates one.
    let truncated = br#"{"metadata":{"storage_key":"pk","expiration":null,"seri"#;
    assert_eq!(resultstore_e2e::servers::http(moto.port, "PUT", "/results/prod/pk", &auth, truncated), 200);
    let loc = Target::Location { block: "s3-bucket/prod".into(), key: "pk".into() };
    let err = s.client.resolve(loc, Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
}

/// Client mistakes that a filesystem reports as I/O errors are the caller's to fix, with a
/// precise status, never UNAVAILABLE (which clients retry and routers fail over on), and
/// no message shows the server's paths.
#[tokio::test]
async fn local_key_conflicts_are_the_callers_mistakes_not_outages() {
    let s = TestServer::start().await;
    let c = &s.client;
    let dir = s.dir.path().to_str().unwrap().to_owned();
    let block = "local-file-system/default";
    c.put(Put::json("1").storage(block).key("f")).await.unwrap();
    c.put(Put::json("1").storage(block).key("dd/a")).await.unwrap();
    let loc = |key: &str| Target::Location { block: block.into(), key: key.into() };
    for (what, err) in [
        ("a key under a result", c.put(Put::json("2").storage(block).key("f/x")).await.unwrap_err()),
        ("a result where a folder of results is", c.put(Put::json("2").storage(block).key("dd")).await.unwrap_err()),
        ("reading under a result", c.resolve(loc("f/x"), Want::Raw, ReadOptions::default()).await.unwrap_err()),
    ] {
        assert!(
            matches!(err.code(), Some(Code::FailedPrecondition | Code::NotFound)),
            "{what}: {err} (UNAVAILABLE would send clients to retry)"
        );
        assert!(!err.to_string().contains(&dir), "{what}: the message shows a server path: {err}");
    }
    let long = format!("a/{}", "s".repeat(300));
    assert_eq!(c.put(Put::json("1").storage(block).key(&long)).await.unwrap_err().code(), Some(Code::InvalidArgument));
    // Nothing stored was touched.
    let v = c.resolve(loc("f"), Want::Json, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("1"));
}

/// A block whose root folder was replaced by a file is an outage for every operation,
/// List included (it used to answer OK and empty), and says so without the path.
#[tokio::test]
async fn a_block_whose_root_is_not_a_folder_is_unavailable_for_every_call() {
    let s = TestServer::start().await;
    let c = &s.client;
    let block = "local-file-system/other";
    c.put(Put::json("1").storage(block).key("k")).await.unwrap();
    let root = s.path("other");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, b"not a folder").unwrap();
    let dir = s.dir.path().to_str().unwrap().to_owned();
    let loc = Target::Location { block: block.into(), key: "k2".into() };
    for (what, err) in [
        ("list", c.list(block, "", 10, "").await.unwrap_err()),
        ("put", c.put(Put::json("1").storage(block).key("k2")).await.unwrap_err()),
        (
            "resolve",
            c.resolve(loc, Want::Raw, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap_err(),
        ),
    ] {
        assert_eq!(err.code(), Some(Code::Unavailable), "{what}: {err}");
        assert!(!err.to_string().contains(&dir), "{what}: the message shows a server path: {err}");
    }
}

/// A full disk answers RESOURCE_EXHAUSTED (what to do: free space), not UNAVAILABLE, and
/// loses nothing: a 1 MiB tmpfs mounted for the test holds the block.
#[tokio::test]
async fn a_full_disk_is_resource_exhausted_and_loses_nothing() {
    let disk = SmallDisk::mount();
    let m = disk.path.display().to_string();
    let s = TestServer::start_with(|dir| {
        format!("{}\n[blocks.\"local-file-system/small\"]\nurl = \"file://{m}\"\n", base_config(dir))
    })
    .await;
    let c = &s.client;
    let block = "local-file-system/small";
    c.put(Put::json(r#""kept""#).storage(block).key("kept")).await.unwrap();
    let big = format!("\"{}\"", "x".repeat(400 << 10));
    let mut full = None;
    for i in 0..8 {
        if let Err(e) = c.put(Put::json(&big).serializer("json").storage(block).key(format!("fill/{i}"))).await {
            full = Some(e);
            break;
        }
    }
    let err = full.expect("a 1 MiB disk fills up");
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(!err.to_string().contains(&m), "the message shows a server path: {err}");
    let v = c.resolve(Target::Location { block: block.into(), key: "kept".into() }, Want::Json, ReadOptions::default());
    assert_eq!(v.await.unwrap().json.as_deref(), Some(r#""kept""#));
}

/// Symbolic links planted in a local block's folder lead nowhere: no call reads, writes,
/// lists or deletes through one, and a link loop does not break List.
#[tokio::test]
async fn local_blocks_never_follow_a_symbolic_link_out_of_their_folder() {
    let s = TestServer::start().await;
    let c = &s.client;
    let block = "local-file-system/default";
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    let record = r#"{"metadata":{"serializer":{"type":"json"}},"result":"\"outside\""}"#;
    std::fs::write(&secret, record).unwrap();
    std::fs::create_dir(outside.path().join("tree")).unwrap();
    std::fs::write(outside.path().join("tree/deep"), record).unwrap();
    let root = s.path("results");
    c.put(Put::json(r#""inside""#).storage(block).key("ok")).await.unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
    std::os::unix::fs::symlink(&secret, root.join("file-link")).unwrap();
    std::fs::create_dir(root.join("a")).unwrap();
    std::os::unix::fs::symlink("..", root.join("a/loop")).unwrap();

    let loc = |key: &str| Target::Location { block: block.into(), key: key.into() };
    let bypass = || ReadOptions { bypass_cache: true, ..Default::default() };
    for key in ["out/secret", "out/tree/deep", "file-link"] {
        let err = c.resolve(loc(key), Want::Json, bypass()).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "resolve {key}: {err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(c.get(loc(key), bypass()).await.is_err(), "get {key}");
        assert!(c.exists(block, key).await.is_err(), "exists {key}");
        let err = c.delete(block, key).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "delete {key}: {err}");
    }
    for key in ["out/planted", "file-link", "a/loop/x"] {
        let err = c.put(Put::json("1").storage(block).key(key)).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "put {key}: {err}");
    }
    // Outside is untouched, and the listing holds only what is inside, loop or not.
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), record);
    assert!(!outside.path().join("planted").exists());
    assert!(outside.path().join("tree/deep").exists());
    let listed: Vec<String> = c.list_all(block, "").await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(listed, vec!["ok".to_owned()]);
    // List and a read agree on the version of what is inside.
    let entry = c.list(block, "ok", 10, "").await.unwrap().entries.remove(0);
    let read = c.resolve(loc("ok"), Want::Json, bypass()).await.unwrap();
    assert_eq!(entry.version, read.reference.unwrap().0.version);
}
