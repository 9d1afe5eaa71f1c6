//! The seed's three quiz cases, end to end, plus literals.

use resultstore_client::{Literal, Put, ReadOptions, Settings, Stored, Want};
use resultstore_e2e::{TestServer, code_of};
use tonic::Code;

fn files_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default()
}

/// 1. A task with no settings under a flow with `persist_result=True,
///    result_storage=<block>` is persisted to that block.
#[tokio::test]
async fn task_without_settings_inherits_the_flows_persistence_and_block() {
    let s = TestServer::start().await;
    let flow = Settings::new().persist(true).storage("local-file-system/other");
    let stored = s.client.put(Put::json(r#"{"n": 1}"#).flow(flow)).await.unwrap();
    let r = stored.reference().expect("a reference").clone();
    assert!(r.persisted());
    assert_eq!(r.block(), "local-file-system/other");
    let on_disk = std::fs::read(s.path("other").join(r.key())).expect("the record is in the flow's block");
    assert!(on_disk.starts_with(br#"{"metadata":{"storage_key":""#));
    assert!(files_in(&s.path("results")).is_empty(), "nothing went to the default block");
    let v = r.resolve(&s.client, Want::Json).await.unwrap();
    assert_eq!(v.json.as_deref(), Some(r#"{"n": 1}"#));
}

/// 2. A task with `persist_result=False, retries=3` is never persisted; reading it after
///    it left memory fails with FAILED_PRECONDITION naming the cause; a cache key with
///    `persist_result=False` is refused.
#[tokio::test]
async fn explicit_false_beats_retries_and_a_retry_read_fails_clearly() {
    let mut s = TestServer::start().await;
    let task = Settings::new().persist(false).retries(3);
    let flow = Settings::new().persist(true);
    let stored = s.client.put(Put::json(r#"[1, 2]"#).task_settings(task).flow(flow)).await.unwrap();
    let r = stored.reference().expect("a reference").clone();
    assert!(!r.persisted());
    assert!(r.0.uri.is_empty());
    assert!(files_in(&s.path("results")).is_empty(), "nothing was written");

    // While this replica holds it, it reads, by reference and by block and key alike, and
    // a read by key does not push it out of memory.
    let loc = resultstore_client::Target::Location { block: r.block().into(), key: r.key().into() };
    let v = s.client.resolve(loc, Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("[1, 2]"));
    let v = r.resolve(&s.client, Want::Json).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("[1, 2]"));

    // After a restart (as a retry landing after the worker's replica went away) it is gone.
    s.restart().await;
    let err = r.resolve(&s.client, Want::Json).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert!(err.to_string().contains("not persisted"), "{err}");

    let keyed = Settings::new().persist(false).cache_key("abc");
    let err = s.client.put(Put::json("1").task_settings(keyed)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("cache key"), "{err}");
    assert!(files_in(&s.path("results")).is_empty());
}

/// 2b. "Left memory" by eviction, not only by restart.
#[tokio::test]
async fn an_unpersisted_result_evicted_from_memory_fails_clearly() {
    let s = TestServer::start_with(|dir| {
        format!("{}\n[cache]\ncapacity = \"64KiB\"\nmax_entry_size = \"16KiB\"\n", resultstore_e2e::base_config(dir))
    })
    .await;
    let stored = s.client.put(Put::json(r#""ephemeral""#).persist(false)).await.unwrap();
    let r = stored.reference().unwrap().clone();
    let filler = format!("\"{}\"", "x".repeat(2000));
    for _ in 0..100 {
        s.client.put(Put::json(filler.clone()).storage("memory/default").persist(true)).await.unwrap();
    }
    s.store().cache().settle().await;
    assert!(s.store().cache().counters().evictions > 0);
    let err = r.resolve(&s.client, Want::Raw).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("not persisted"), "{err}");
}

/// 3. Under a flow with only `retries=2`, the flow's result is persisted to the default
///    block with the default serializer, and a plain task's is not.
#[tokio::test]
async fn flow_retries_persist_the_flow_result_only() {
    let s = TestServer::start().await;
    let flow = Settings::new().retries(2);
    // The flow's own result: its settings are the "task" level of the Put.
    let stored = s.client.put(Put::json(r#"{"flow": true}"#).task_settings(flow.clone())).await.unwrap();
    let r = stored.reference().unwrap().clone();
    assert!(r.persisted());
    assert_eq!(r.block(), "local-file-system/default");
    let ser = r.0.serializer.as_ref().unwrap();
    assert_eq!(ser.r#type, "pickle");
    assert_eq!(ser.config_json, r#"{"type":"pickle","picklelib":"cloudpickle","picklelib_version":null}"#);
    assert!(s.path("results").join(r.key()).is_file());

    let task = s.client.put(Put::json(r#"{"task": 1}"#).flow(flow)).await.unwrap();
    let t = task.reference().unwrap();
    assert!(!t.persisted());
    assert!(!s.path("results").join(t.key()).exists());
    assert_eq!(std::fs::read_dir(s.path("results")).unwrap().count(), 1);
}

#[tokio::test]
async fn literals_come_back_in_the_reply_and_write_nothing() {
    let s = TestServer::start().await;
    let cases = [
        (Put::literal(Literal::True), Literal::True),
        (Put::literal(Literal::False), Literal::False),
        (Put::literal(Literal::Null), Literal::Null),
        (Put::json("true"), Literal::True),
        (Put::json(" false "), Literal::False),
        (Put::json("null").persist(true).retries(2), Literal::Null),
    ];
    for (put, want) in cases {
        match s.client.put(put.persist(true)).await.unwrap() {
            Stored::Literal(l) => assert_eq!(l, want),
            other => panic!("expected a literal, got {other:?}"),
        }
    }
    assert!(files_in(&s.path("results")).is_empty());
    assert_eq!(s.store().blocks().get("").unwrap().counters.snapshot().put, 0);

    // A literal that must be findable by key is stored like any result.
    let stored = s.client.put(Put::json("true").serializer("json").key("flag")).await.unwrap();
    let r = stored.reference().expect("keyed literals are stored").clone();
    assert_eq!(
        std::fs::read_to_string(s.path("results/flag")).unwrap().rsplit_once("\"result\":").unwrap().1,
        "\"true\"}"
    );
    let v = s.client.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(v.json.as_deref(), Some("true"));
    // An unspecified literal is refused.
    let mut bad = Put::json("1").into_request();
    bad.payload = Some(resultstore_client::proto::put_request::Payload::Literal(0));
    let err = s.client.raw().put(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let _ = code_of::<()>(Err(resultstore_client::ClientError::Status(err)));
}
