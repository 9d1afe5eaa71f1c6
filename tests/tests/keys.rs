//! Keys outside the key table's happy path: results that earlier versions stored under
//! percent-encoded names still read and delete, keys a block cannot hold are refused at
//! Put naming why, and bare payloads whose serializer nobody named are not called damaged.

use resultstore_client::{Put, ReadOptions, Target, Want};
use resultstore_e2e::TestServer;
use tonic::Code;

fn loc(block: &str, key: &str) -> Target {
    Target::Location { block: block.into(), key: key.into() }
}

/// A result stored by 0.1 under object_store's `Path::from` name reads by its key,
/// through Resolve, Get and GetStream, and a delete removes it.
#[tokio::test]
async fn results_under_pre_0_2_encoded_names_still_read_and_delete() {
    let s = TestServer::start().await;
    let c = &s.client;
    let key = "legacy/résultat[1]";
    // What 0.1 wrote for that key: the same record, under the encoded name.
    let encoded = s.path("results/legacy/r%C3%A9sultat%5B1%5D");
    std::fs::create_dir_all(encoded.parent().unwrap()).unwrap();
    std::fs::write(&encoded, r#"{"metadata":{"serializer":{"type":"json"}},"result":"[1, 2]"}"#).unwrap();

    let block = "local-file-system/default";
    let r = c.resolve(loc(block, key), Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(r.json.as_deref(), Some("[1, 2]"));
    assert!(c.exists(block, key).await.unwrap());
    let streamed = c.get_stream(loc(block, key), ReadOptions { bypass_cache: true, ..Default::default() }).await;
    assert!(streamed.is_ok(), "GetStream finds the old name too");
    // Listed under its stored name, which is itself a key that reads it.
    let listed: Vec<String> = c.list_all(block, "legacy/").await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(listed, vec!["legacy/r%C3%A9sultat%5B1%5D".to_owned()]);
    let r = c.resolve(loc(block, &listed[0]), Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(r.json.as_deref(), Some("[1, 2]"));

    c.delete(block, key).await.unwrap();
    assert!(!encoded.exists(), "the delete removed the old name");
    assert!(!c.exists(block, key).await.unwrap());

    // A new write goes under the key itself, and is what reads find from then on.
    std::fs::write(&encoded, r#"{"metadata":{"serializer":{"type":"json"}},"result":"\"old\""}"#).unwrap();
    c.put(Put::json(r#""new""#).serializer("json").storage(block).key(key)).await.unwrap();
    assert!(s.path("results/legacy/résultat[1]").is_file());
    let r = c.resolve(loc(block, key), Want::Json, ReadOptions { bypass_cache: true, ..Default::default() }).await;
    assert_eq!(r.unwrap().json.as_deref(), Some(r#""new""#));
}

#[tokio::test]
async fn keys_no_block_can_hold_are_refused_naming_why() {
    let s = TestServer::start().await;
    let c = &s.client;
    for block in ["local-file-system/default", "memory/default"] {
        for (key, why) in [
            (format!("a/{}", "s".repeat(241)), "longer than 240 bytes"),
            ("a#1".to_owned(), "`#`"),
            ("a\u{7}b".to_owned(), "control character"),
        ] {
            let err = c.put(Put::json("1").storage(block).key(&key)).await.unwrap_err();
            assert_eq!(err.code(), Some(Code::InvalidArgument), "{block} {key:?}: {err}");
            assert!(err.to_string().contains(why), "{block}: {err}");
        }
    }
    // A 240-byte segment is a file name like any other.
    let key = format!("a/{}", "s".repeat(240));
    c.put(Put::json("1").storage("local-file-system/default").key(&key)).await.unwrap();
}

/// A bare payload (a Prefect 3 flow result) read with no serializer hint: its bytes say
/// JSON or pickle, or the answer is FAILED_PRECONDITION naming `serializer_hint`, never
/// DATA_LOSS, which means damaged bytes.
#[tokio::test]
async fn bare_payloads_without_a_hint_are_told_by_their_bytes_or_asked_for() {
    let s = TestServer::start().await;
    let c = &s.client;
    let block = "local-file-system/default";
    std::fs::write(s.path("results/bare-json"), br#"{"a": [1, 2.5]}"#).unwrap();
    // base64 of pickle.dumps(42, protocol=5), as Prefect's pickle serializer writes it.
    std::fs::write(s.path("results/bare-pickle"), b"gAVLKi4=\n").unwrap();
    std::fs::write(s.path("results/bare-other"), b"opaque bytes, no serializer says").unwrap();

    let r = c.resolve(loc(block, "bare-json"), Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(r.json.as_deref(), Some(r#"{"a": [1, 2.5]}"#));
    let r = c.resolve(loc(block, "bare-pickle"), Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(r.json.as_deref(), Some("42"));
    let err = c.resolve(loc(block, "bare-other"), Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("serializer_hint"), "{err}");
    // Named, the serializer is the caller's word: bytes it cannot read are damaged.
    let hint = ReadOptions { serializer_hint: Some(resultstore_client::serializer_pb("pickle")), ..Default::default() };
    let err = c.resolve(loc(block, "bare-other"), Want::Json, hint).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
}
