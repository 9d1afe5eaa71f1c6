//! Storage going away and coming back, against a real S3 server (moto).

use std::time::{Duration, Instant};

use resultstore::telemetry::{Outcome, StorageOp};
use resultstore_client::{Put, ReadOptions, Target, Want};
use resultstore_e2e::servers::{moto_s3, moto_s3_on, s3_options};
use resultstore_e2e::{TestServer, base_config};
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
