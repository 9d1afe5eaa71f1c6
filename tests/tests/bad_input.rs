//! Bad input, table-driven: each case gets its precise status code, and afterwards every
//! result stored before still reads back intact.

use resultstore_client::proto as pb;
use resultstore_client::{Put, ReadOptions, Target, Want};
use resultstore_e2e::{TestServer, base_config};
use tonic::Code;

fn put_req(f: impl FnOnce(&mut pb::PutRequest)) -> pb::PutRequest {
    let mut r = Put::json(r#"{"ok": true}"#).into_request();
    f(&mut r);
    r
}

fn settings(f: impl FnOnce(&mut pb::ResultSettings)) -> Option<pb::ResultSettings> {
    let mut s = pb::ResultSettings { persist_result: Some(true), ..Default::default() };
    f(&mut s);
    Some(s)
}

fn ser(t: &str, config: &str) -> Option<pb::Serializer> {
    Some(pb::Serializer { r#type: t.into(), config_json: config.into() })
}

fn loc(block: &str, key: &str) -> Option<pb::resolve_request::Target> {
    Some(pb::resolve_request::Target::Location(pb::Location { block: block.into(), key: key.into() }))
}

#[tokio::test]
async fn bad_input_gets_precise_codes_and_loses_nothing() {
    let s = TestServer::start_with(|dir| format!("{}\n[limits]\nmax_result_size = \"1MiB\"\n", base_config(dir))).await;

    // Results that must survive everything below.
    let mut kept = Vec::new();
    for (i, ser) in ["json", "pickle", "compressed/pickle"].iter().enumerate() {
        let put = Put::json(format!(r#"{{"kept": {i}}}"#)).serializer(*ser).key(format!("kept/{i}"));
        kept.push((s.client.put(put).await.unwrap().reference().unwrap().clone(), format!(r#"{{"kept": {i}}}"#)));
    }
    // A stored record with a hostile pickle, one truncated, one not a pickle at all.
    let evil = "Y29zCnN5c3RlbQooVmVjaG8gcHduZWQKdFIu"; // base64 of `cos\nsystem\n(Vecho pwned\ntR.`
    std::fs::write(
        s.path("results/evil"),
        format!(r#"{{"metadata":{{"serializer":{{"type":"pickle"}}}},"result":"{evil}"}}"#),
    )
    .unwrap();
    std::fs::write(s.path("results/truncated"), r#"{"metadata":{"storage_key":"truncated","expir"#).unwrap();
    // Garbage bytes where a pickle result is expected (a bare payload that is not base64).
    std::fs::write(s.path("results/garbage"), [0u8, 159, 146, 150, 255, 1, 2]).unwrap();
    // `a = []; for _ in range(40): a = [a, a]`: 254 bytes that expand to 2^40 lists.
    let bomb = "gASV8wAAAAAAAABdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlChdlGgoZWgnZWgmZWglZWgkZWgjZWgiZWghZWggZWgfZWgeZWgdZWgcZWgbZWgaZWgZZWgYZWgXZWgWZWgVZWgUZWgTZWgSZWgRZWgQZWgPZWgOZWgNZWgMZWgLZWgKZWgJZWgIZWgHZWgGZWgFZWgEZWgDZWgCZWgBZS4=";
    std::fs::write(
        s.path("results/bomb"),
        format!(r#"{{"metadata":{{"serializer":{{"type":"pickle"}}}},"result":"{bomb}"}}"#),
    )
    .unwrap();
    // A record whose result is not the base64 its serializer says.
    std::fs::write(s.path("results/mislabelled"), r#"{"metadata":{"serializer":{"type":"pickle"}},"result":"%%%"}"#)
        .unwrap();

    let long_key = "k".repeat(1025);
    let deep = "[".repeat(300) + &"]".repeat(300);
    let big = format!("\"{}\"", "b".repeat(2 << 20));
    let puts: Vec<(&str, pb::PutRequest, Code)> = vec![
        ("no payload", put_req(|r| r.payload = None), Code::InvalidArgument),
        ("unknown block", put_req(|r| r.task = settings(|s| s.result_storage = "memory/nope".into())), Code::NotFound),
        (
            "slug without a name",
            put_req(|r| r.task = settings(|s| s.result_storage = "memory/".into())),
            Code::InvalidArgument,
        ),
        (
            "slug of an unknown type",
            put_req(|r| r.task = settings(|s| s.result_storage = "ftp/x".into())),
            Code::InvalidArgument,
        ),
        (
            "slug with no slash",
            put_req(|r| r.task = settings(|s| s.result_storage = "default".into())),
            Code::InvalidArgument,
        ),
        ("key with ..", put_req(|r| r.key = "../escape".into()), Code::InvalidArgument),
        ("key in the middle ..", put_req(|r| r.key = "a/../../b".into()), Code::InvalidArgument),
        ("absolute key", put_req(|r| r.key = "/etc/passwd".into()), Code::InvalidArgument),
        ("empty segment", put_req(|r| r.key = "a//b".into()), Code::InvalidArgument),
        ("trailing slash", put_req(|r| r.key = "a/".into()), Code::InvalidArgument),
        ("control character", put_req(|r| r.key = "a\u{7}b".into()), Code::InvalidArgument),
        ("backslash", put_req(|r| r.key = "a\\b".into()), Code::InvalidArgument),
        ("`#` in a key", put_req(|r| r.key = "a#1".into()), Code::InvalidArgument),
        ("key over 1024 bytes", put_req(|r| r.key = long_key.clone()), Code::InvalidArgument),
        (
            "cache key over 1024 bytes",
            put_req(|r| r.task = settings(|s| s.cache_key = long_key.clone())),
            Code::InvalidArgument,
        ),
        (
            "unknown serializer for json",
            put_req(|r| r.task = settings(|s| s.result_serializer = ser("my.lib", ""))),
            Code::InvalidArgument,
        ),
        (
            "serializer config not JSON",
            put_req(|r| r.task = settings(|s| s.result_serializer = ser("", "{nope"))),
            Code::InvalidArgument,
        ),
        (
            "serializer config without type",
            put_req(|r| r.task = settings(|s| s.result_serializer = ser("", r#"{"jsonlib":"json"}"#))),
            Code::InvalidArgument,
        ),
        (
            "serializer type disagrees",
            put_req(|r| r.task = settings(|s| s.result_serializer = ser("json", r#"{"type":"pickle"}"#))),
            Code::InvalidArgument,
        ),
        (
            "compressed without inner",
            put_req(|r| r.task = settings(|s| s.result_serializer = ser("compressed", ""))),
            Code::InvalidArgument,
        ),
        (
            "unknown compressionlib",
            put_req(|r| {
                r.task = settings(|s| {
                    s.result_serializer =
                        ser("", r#"{"type":"compressed","serializer":"json","compressionlib":"zstd"}"#)
                })
            }),
            Code::InvalidArgument,
        ),
        (
            "unknown jsonlib",
            put_req(|r| r.task = settings(|s| s.result_serializer = ser("", r#"{"type":"json","jsonlib":"ujson"}"#))),
            Code::InvalidArgument,
        ),
        (
            "dumps_kwargs",
            put_req(|r| {
                r.task = settings(|s| s.result_serializer = ser("", r#"{"type":"json","dumps_kwargs":{"indent":2}}"#))
            }),
            Code::InvalidArgument,
        ),
        (
            "cache key without persistence",
            put_req(|r| {
                r.task = settings(|s| {
                    s.persist_result = Some(false);
                    s.cache_key = "c".into()
                })
            }),
            Code::InvalidArgument,
        ),
        (
            "key without persistence",
            put_req(|r| {
                r.task = settings(|s| s.persist_result = Some(false));
                r.key = "k".into()
            }),
            Code::InvalidArgument,
        ),
        (
            "flow says no, task has a cache key",
            put_req(|r| {
                r.task = settings(|s| {
                    s.persist_result = None;
                    s.cache_key = "c".into()
                });
                r.flow = settings(|s| s.persist_result = Some(false))
            }),
            Code::InvalidArgument,
        ),
        (
            "json that is not JSON",
            put_req(|r| r.payload = Some(pb::put_request::Payload::Json("{'a': 1}".into()))),
            Code::InvalidArgument,
        ),
        (
            "json nested 300 deep",
            put_req(|r| r.payload = Some(pb::put_request::Payload::Json(deep.clone()))),
            Code::InvalidArgument,
        ),
        (
            "pickle data not base64",
            put_req(|r| {
                r.payload = Some(pb::put_request::Payload::Data(b"%%%".to_vec().into()));
                r.task = settings(|s| s.result_serializer = ser("pickle", ""))
            }),
            Code::InvalidArgument,
        ),
        (
            "compressed data that is not compressed",
            put_req(|r| {
                r.payload = Some(pb::put_request::Payload::Data(b"aGVsbG8=\n".to_vec().into()));
                r.task = settings(|s| s.result_serializer = ser("compressed/json", ""))
            }),
            Code::InvalidArgument,
        ),
        (
            "json data that is not JSON, over a kept result",
            put_req(|r| {
                r.key = "kept/0".into();
                r.payload = Some(pb::put_request::Payload::Data(b"{not json".to_vec().into()));
                r.task = settings(|s| s.result_serializer = ser("json", ""))
            }),
            Code::InvalidArgument,
        ),
        (
            "json data with trailing garbage",
            put_req(|r| {
                r.payload = Some(pb::put_request::Payload::Data(b"{\"a\": 1} x".to_vec().into()));
                r.task = settings(|s| s.result_serializer = ser("json", ""))
            }),
            Code::InvalidArgument,
        ),
        (
            // base64 of zlib.compress(b"{not json")
            "compressed json whose text is not JSON",
            put_req(|r| {
                r.key = "kept/0".into();
                r.payload = Some(pb::put_request::Payload::Data(b"eJyrzssvUcgqzs8DABJ6A6c=\n".to_vec().into()));
                r.task = settings(|s| {
                    s.result_serializer =
                        ser("compressed", r#"{"type":"compressed","serializer":"json","compressionlib":"zlib"}"#)
                })
            }),
            Code::InvalidArgument,
        ),
        (
            "json data not UTF-8",
            put_req(|r| {
                r.payload = Some(pb::put_request::Payload::Data(vec![0xff, 0xfe].into()));
                r.task = settings(|s| s.result_serializer = ser("json", ""))
            }),
            Code::InvalidArgument,
        ),
        (
            "opaque non-UTF-8 bytes in a prefect3 block",
            put_req(|r| {
                r.payload = Some(pb::put_request::Payload::Data(vec![0xff, 0x00].into()));
                r.task = settings(|s| s.result_serializer = ser("my.custom", ""))
            }),
            Code::InvalidArgument,
        ),
        (
            "unspecified literal",
            put_req(|r| r.payload = Some(pb::put_request::Payload::Literal(0))),
            Code::InvalidArgument,
        ),
        ("unknown write mode", put_req(|r| r.mode = 7), Code::InvalidArgument),
        (
            "result above max_result_size",
            put_req(|r| r.payload = Some(pb::put_request::Payload::Json(big.clone()))),
            Code::ResourceExhausted,
        ),
        (
            "create-only over a kept result",
            put_req(|r| {
                r.key = "kept/0".into();
                r.mode = pb::WriteMode::CreateOnly as i32
            }),
            Code::AlreadyExists,
        ),
        (
            "empty json payload",
            put_req(|r| r.payload = Some(pb::put_request::Payload::Json(String::new()))),
            Code::InvalidArgument,
        ),
        (
            "empty data for the json serializer",
            put_req(|r| {
                r.payload = Some(pb::put_request::Payload::Data(Vec::new().into()));
                r.task = settings(|s| s.result_serializer = ser("json", ""))
            }),
            Code::InvalidArgument,
        ),
        (
            "object record with a hostile pickle that is not base64",
            put_req(|r| {
                r.payload = Some(pb::put_request::Payload::Object(
                    br#"{"metadata":{"serializer":{"type":"pickle"}},"result":"cos
system"}"#
                        .to_vec()
                        .into(),
                ))
            }),
            Code::InvalidArgument,
        ),
        (
            "negative timestamp nanos",
            put_req(|r| r.expiration = Some(prost_types::Timestamp { seconds: 1, nanos: -1 })),
            Code::InvalidArgument,
        ),
    ];
    // Every case is checked and every wrong answer reported together: one case that goes
    // wrong does not hide the others.
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (what, req, code) in puts {
        match s.client.raw().put(req).await {
            Ok(_) => wrong.push(format!("{what}: accepted, expected {code:?}")),
            Err(err) if err.code() != code => {
                wrong.push(format!("{what}: {:?} ({}), expected {code:?}", err.code(), err.message()))
            }
            Err(err) if err.message().is_empty() => wrong.push(format!("{what}: an empty message")),
            Err(_) => {}
        }
        checked += 1;
    }

    let resolve = |target, want: pb::Want| pb::ResolveRequest { target, want: want as i32, ..Default::default() };
    let prefect = |doc: &str| {
        Some(pb::resolve_request::Target::Prefect(pb::PrefectReference { block: String::new(), document: doc.into() }))
    };
    let forged = |key: &str| {
        Some(pb::resolve_request::Target::Reference(pb::Reference {
            block: String::new(),
            key: key.into(),
            sha256: "00".repeat(32),
            ..Default::default()
        }))
    };
    let outside = |block: &str, key: &str| {
        Some(pb::resolve_request::Target::Reference(pb::Reference {
            block: block.into(),
            key: key.into(),
            ..Default::default()
        }))
    };
    let reads: Vec<(&str, pb::ResolveRequest, Code)> = vec![
        (
            "reference that climbs out of its block",
            resolve(outside("local-file-system/default", "../other/x"), pb::Want::Raw),
            Code::InvalidArgument,
        ),
        (
            "reference with an absolute key",
            resolve(outside("local-file-system/other", "/tmp/x"), pb::Want::Raw),
            Code::InvalidArgument,
        ),
        (
            "reference to an unknown block",
            resolve(outside("s3-bucket/elsewhere", "kept/0"), pb::Want::Raw),
            Code::NotFound,
        ),
        (
            "reference into a reserved prefix",
            resolve(outside("memory/split", ".resultstore-metadata/x"), pb::Want::Raw),
            Code::InvalidArgument,
        ),
        // No serializer named and the bytes do not tell: a question, not damage.
        (
            "garbage bare bytes, serializer unknown",
            resolve(loc("", "garbage"), pb::Want::Json),
            Code::FailedPrecondition,
        ),
        (
            "garbage bytes read as the pickle they were said to be",
            resolve(loc("", "garbage"), pb::Want::Json).tap(|r| r.serializer_hint = ser("pickle", "")),
            Code::DataLoss,
        ),
        ("record whose result is not base64", resolve(loc("", "mislabelled"), pb::Want::Raw), Code::DataLoss),
        ("no target", resolve(None, pb::Want::Raw), Code::InvalidArgument),
        ("missing key", resolve(loc("", "no/such/key"), pb::Want::Raw), Code::NotFound),
        ("unknown block", resolve(loc("memory/nope", "k"), pb::Want::Raw), Code::NotFound),
        ("bad slug", resolve(loc("nope", "k"), pb::Want::Raw), Code::InvalidArgument),
        ("traversal", resolve(loc("", "../../etc/passwd"), pb::Want::Raw), Code::InvalidArgument),
        ("absolute", resolve(loc("", "/etc/passwd"), pb::Want::Raw), Code::InvalidArgument),
        ("empty key", resolve(loc("", ""), pb::Want::Raw), Code::InvalidArgument),
        ("hostile pickle to JSON", resolve(loc("", "evil"), pb::Want::Json), Code::FailedPrecondition),
        // Transcoding is bounded by what it builds (limits.max_result_size), not by the pickle.
        ("pickle expanding 2^40 times, to JSON", resolve(loc("", "bomb"), pb::Want::Json), Code::ResourceExhausted),
        ("truncated record", resolve(loc("", "truncated"), pb::Want::Raw), Code::DataLoss),
        ("reference with a wrong digest", resolve(forged("kept/1"), pb::Want::Raw), Code::DataLoss),
        ("unknown want", resolve(loc("", "kept/0"), pb::Want::Raw).tap(|r| r.want = 9), Code::InvalidArgument),
        ("prefect document not JSON", resolve(prefect("nope"), pb::Want::Raw), Code::InvalidArgument),
        (
            "prefect document without key",
            resolve(prefect(r#"{"serializer":{"type":"json"}}"#), pb::Want::Raw),
            Code::InvalidArgument,
        ),
        (
            "prefect key outside the block",
            resolve(prefect(r#"{"storage_key":"/etc/passwd"}"#), pb::Want::Raw),
            Code::InvalidArgument,
        ),
        ("prefect key with ..", resolve(prefect(r#"{"storage_key":"../x"}"#), pb::Want::Raw), Code::InvalidArgument),
        (
            "prefect literal of another value",
            resolve(prefect(r#"{"type":"literal","value":5}"#), pb::Want::Raw),
            Code::InvalidArgument,
        ),
        (
            "bad serializer hint",
            resolve(loc("", "kept/0"), pb::Want::Raw).tap(|r| r.serializer_hint = ser("", "[1]")),
            Code::InvalidArgument,
        ),
    ];
    for (what, req, code) in reads {
        match s.client.raw().resolve(req).await {
            Ok(_) => wrong.push(format!("{what}: answered, expected {code:?}")),
            Err(err) if err.code() != code => {
                wrong.push(format!("{what}: {:?} ({}), expected {code:?}", err.code(), err.message()))
            }
            Err(_) => {}
        }
        checked += 1;
    }
    let err = s.client.raw().list(pb::ListRequest { prefix: "../".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = s
        .client
        .raw()
        .exists(pb::ExistsRequest { location: Some(pb::Location { block: String::new(), key: "a//b".into() }) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    checked += 2;
    assert!(checked >= 50, "{checked} cases");
    assert!(wrong.is_empty(), "{} of {checked} cases went wrong:\n{}", wrong.len(), wrong.join("\n"));

    // Nothing stored before was overwritten or lost.
    for (r, json) in &kept {
        let v =
            s.client.resolve(r, Want::Json, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
        assert_eq!(v.json.as_deref(), Some(json.as_str()));
    }
    assert_eq!(s.client.list_all("", "").await.unwrap().len(), 8, "the kept results and the records the cases read");
    let _ = Target::Location { block: String::new(), key: String::new() };
}

#[tokio::test]
async fn a_message_above_the_grpc_limit_is_resource_exhausted() {
    let s =
        TestServer::start_with(|dir| format!("{}\n[limits]\nmax_message_size = \"64KiB\"\n", base_config(dir))).await;
    let big = format!("\"{}\"", "b".repeat(100 * 1024));
    let err = s.client.put(Put::json(big)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(s.client.put(Put::json("1").persist(true)).await.is_ok());

    // A stored result too large for one reply is refused before the reply is sent.
    let record =
        format!(r#"{{"metadata":{{"serializer":{{"type":"json"}}}},"result":"\"{}\""}}"#, "r".repeat(100 * 1024));
    std::fs::write(s.path("results/large"), record).unwrap();
    let target = Target::Location { block: String::new(), key: "large".into() };
    let err = s.client.resolve(target.clone(), Want::Raw, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    let err = s.client.get(target, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
}

trait Tap: Sized {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}
impl<T> Tap for T {}
