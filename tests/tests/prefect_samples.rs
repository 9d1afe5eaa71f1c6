//! Every real Prefect file in `../shared/prefect-samples` decodes and resolves, and
//! Prefect 3 records re-encode to the identical bytes.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use resultstore::formats::record::{RecordFormat, ResultRecord};
use resultstore::formats::serializer::SerializerConfig;
use resultstore_client::{ReadOptions, Target, Want, serializer_pb};
use resultstore_e2e::{TestServer, copy_tree, prefect_samples};
use serde_json::{Value, json};
use tonic::Code;

/// A server whose blocks are rooted in a copy of the samples.
async fn samples_server() -> (TestServer, PathBuf) {
    let samples = prefect_samples();
    let s = TestServer::start_with(|dir| {
        let copy = dir.join("samples");
        copy_tree(&samples, &copy);
        let v3 = copy.join("v3.9.1");
        let v3 = v3.display();
        let v2 = copy.join("v2.20.25");
        let v2 = v2.display();
        format!(
            r#"{base}
[blocks."local-file-system/p3"]
url = "file://{v3}"
[blocks."local-file-system/p3-saved"]
url = "file://{v3}/flow-saved-block"
[blocks."local-file-system/p3-failed"]
url = "file://{v3}/flow-failed-task"
[blocks."local-file-system/p3-api"]
url = "file://{v3}/resultstore-api"
[blocks."local-file-system/p3-api-split"]
url = "file://{v3}/resultstore-api/results-only"
format = "split"
metadata_url = "file://{v3}/resultstore-api/metadata"
[blocks."local-file-system/p3-default-storage"]
url = "file://{v3}/flow-default-storage/default-storage"
metadata_url = "file://{v3}/flow-default-storage/cache-keys"
[blocks."local-file-system/p2"]
url = "file://{v2}"
[blocks."local-file-system/p2-saved"]
url = "file://{v2}/flow-saved-block"
"#,
            base = resultstore_e2e::base_config(dir)
        )
    })
    .await;
    let copy = s.path("samples");
    (s, copy)
}

fn opts(hint: Option<&str>) -> ReadOptions {
    ReadOptions { allow_expired: true, serializer_hint: hint.map(serializer_pb), ..Default::default() }
}

async fn resolve_json(s: &TestServer, block: &str, key: &str, hint: Option<&str>) -> (Value, String) {
    let target = Target::Location { block: block.into(), key: key.into() };
    let r = s.client.resolve(target, Want::Json, opts(hint)).await.unwrap_or_else(|e| panic!("{block} {key}: {e}"));
    let v = serde_json::from_str(r.json.as_deref().unwrap()).unwrap();
    (v, r.reference.unwrap().0.format)
}

#[tokio::test]
async fn prefect_3_samples_resolve_to_their_values() {
    let (s, _) = samples_server().await;
    let date = json!({"__class__": "datetime.date", "data": "2024-01-02"});
    let cases: Vec<(&str, &str, Option<&str>, Value, &str)> = vec![
        ("p3", "resultstore-api/json-dict", None, json!({"a": 1, "b": [1, 2.5, "x"], "c": null}), "prefect3"),
        ("p3", "resultstore-api/json-orjson", None, json!({"a": 1, "t": "hé"}), "prefect3"),
        ("p3", "resultstore-api/pickle-int", None, json!(42), "prefect3"),
        ("p3", "resultstore-api/compressed-json", None, json!({"x": 1}), "prefect3"),
        ("p3", "resultstore-api/compressed-pickle", None, json!([1, 2, 3]), "prefect3"),
        ("p3", "resultstore-api/compressed-json-bz2", None, json!("hi"), "prefect3"),
        ("p3", "resultstore-api/json-with-expiration", None, json!("expiring"), "prefect3"),
        ("p3", "resultstore-api/4d3f145d957c4aecb08fdb63cae206c2", None, json!("auto-key"), "prefect3"),
        ("p3-api-split", "split-key", None, json!({"split": true}), "split"),
        (
            "p3",
            "flow-saved-block/c720451d88d3404eabd1259bad9f0525",
            Some("json"),
            json!({"a": {"x": 3, "when": date}, "b": 6, "c": [3, null, true], "d": "val-3", "e": true}),
            "bare",
        ),
        ("p3", "flow-saved-block/6337fd946e3b104268e7eebedaaaff12", None, json!({"x": 3, "when": date}), "prefect3"),
        ("p3", "flow-saved-block/custom/26c5447c-2fbb-4635-a2f2-cc9917eb20c0/3.json", None, json!(6), "prefect3"),
        ("p3", "flow-saved-block/7d78ce48829b5b75ea7f1af281c1eb07", None, json!(true), "prefect3"),
        ("p3", "flow-saved-block/e57009febfe3f2eb9627ddeedb7eeef0", None, json!("val-3"), "prefect3"),
        ("p3", "flow-default-storage/default-storage/73a88858a8713a68f7e97e14e35d31cd", None, json!(106), "prefect3"),
        ("p3-default-storage", "fbb7556e3c4711e526284c89a74030f9", None, json!({"meta": 5}), "split"),
        (
            "p3",
            "flow-default-storage/default-storage/fbb7556e3c4711e526284c89a74030f9",
            Some("json"),
            json!({"meta": 5}),
            "bare",
        ),
        (
            "p3",
            "flow-default-storage-INPUTS-key-collision/default-storage/fbb7556e3c4711e526284c89a74030f9",
            None,
            json!(105),
            "prefect3",
        ),
        (
            "p3",
            "flow-failed-task/6046b30647fa46b799b00292c0bff800",
            None,
            json!({"__exc_type__": "builtins.ValueError", "message": "boom 1"}),
            "prefect3",
        ),
        ("p3", "flow-failed-task/67a74b4895e34dcd8b6b5b4096b1a029", Some("json"), json!("done"), "bare"),
        ("p3", "handcrafted-reader-probes/minimal", None, json!([1, 2]), "prefect3"),
        ("p3", "handcrafted-reader-probes/nested", None, json!({"a": 1, "d": date}), "prefect3"),
        ("p3", "handcrafted-reader-probes/expired", None, json!(1), "prefect3"),
        ("p3", "handcrafted-reader-probes/rawpickle_nonl", None, json!(42), "bare"),
    ];
    for (block, key, hint, want, format) in cases {
        let (got, got_format) = resolve_json(&s, &format!("local-file-system/{block}"), key, hint).await;
        assert_eq!(got, want, "{block} {key}");
        assert_eq!(got_format, format, "{block} {key}");
    }

    // The flow result of flow-default-storage is a bare cloudpickle of plain data.
    let (v, _) = resolve_json(
        &s,
        "local-file-system/p3",
        "flow-default-storage/default-storage/21104d9ee422478f91e1d34160ea1b78",
        None,
    )
    .await;
    assert_eq!(v["a"], json!({"meta": 5}));
    assert_eq!(v["b"], json!(106));
    assert!(v["c_state_data"].as_str().unwrap().starts_with("ResultRecord(metadata="));

    // JSON results with Prefect's __class__ wrappers come back as they are.
    let (v, _) = resolve_json(
        &s,
        "local-file-system/p3",
        "flow-default-storage/default-storage/25f3b279f1d6c5f0d37a92f916534acc",
        None,
    )
    .await;
    assert_eq!(v["uuid"], json!({"__class__": "uuid.UUID", "data": "00000000-0000-0000-0000-000000000001"}));
    assert_eq!(v["exc"], json!({"__exc_type__": "builtins.ValueError", "message": "boom"}));
}

#[tokio::test]
async fn expiry_unknown_serializers_and_missing_files_in_the_samples() {
    let (s, _) = samples_server().await;
    let loc = |key: &str| Target::Location { block: "local-file-system/p3".into(), key: key.into() };
    let err = s
        .client
        .resolve(loc("handcrafted-reader-probes/expired"), Want::Json, ReadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));
    assert!(err.to_string().contains("expired"), "{err}");

    let unknown = loc("handcrafted-reader-probes/unknownser");
    let got = s.client.get(unknown.clone(), ReadOptions::default()).await.unwrap();
    assert_eq!(got.data, &b"x"[..]);
    assert_eq!(got.reference.unwrap().serializer.unwrap().config_json, r#"{"type":"my.custom"}"#);
    let raw = s.client.resolve(unknown.clone(), Want::Raw, ReadOptions::default()).await.unwrap();
    assert_eq!(raw.data.as_deref(), Some(&b"x"[..]));
    let err = s.client.resolve(unknown, Want::Json, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition));

    // A result Prefect's API names but never wrote (a NO_CACHE task).
    let err = s
        .client
        .get(loc("flow-saved-block/a7f2d827bfae4c20adc58fce34fe09b1"), ReadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));

    // json-with-expiration expired on 2026-11-21T06:22:08Z, a date in the past on any
    // day this test runs: refused without `allow_expired` (the clock is not read here).
    let err = s
        .client
        .resolve(loc("resultstore-api/json-with-expiration"), Want::Json, ReadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
}

#[tokio::test]
async fn prefect_2_samples_resolve() {
    let (s, _) = samples_server().await;
    let dt = json!({"__class__": "datetime.datetime", "data": "2024-01-02T03:04:05Z"});
    let date = json!({"__class__": "datetime.date", "data": "2024-01-02"});
    let cases: Vec<(&str, Value)> = vec![
        ("resultfactory-api/json-dict", json!({"a": 1, "b": [1, 2.5, "x"], "c": null, "d": dt})),
        ("resultfactory-api/json-orjson", json!({"a": 1, "t": "hé"})),
        ("resultfactory-api/pickle-int", json!(42)),
        ("resultfactory-api/compressed-json", json!({"x": 1})),
        ("resultfactory-api/compressed-pickle", json!([1, 2, 3])),
        ("resultfactory-api/dbe74df8ce584af1a7d2be7e5ed59fa2", json!("auto")),
        (
            "flow-saved-block/103d3800b4c14ac48b78fbcafe8b41eb",
            json!({"a": {"x": 3, "when": date}, "b": 6, "d": "val-3", "e": true, "f": null}),
        ),
        ("flow-saved-block/c3be3aa3dd694b6e821c0b7a25036c3e", json!({"x": 3, "when": date})),
        ("flow-saved-block/custom/4059d44f-9d6c-421e-bcd6-feb153c9b3b8/3.json", json!(6)),
        ("flow-saved-block/058e960606324d57a4a6f46dd62826fa", json!("val-3")),
    ];
    for (key, want) in cases {
        let (got, format) = resolve_json(&s, "local-file-system/p2", key, None).await;
        assert_eq!(got, want, "{key}");
        assert_eq!(format, "prefect2", "{key}");
    }
    let (crashed, _) =
        resolve_json(&s, "local-file-system/p2", "flow-crashed/8c4904d9bbf04bfd94f07e29791b8bb5", None).await;
    assert_eq!(crashed["__exc_type__"], "builtins.TypeError");
}

/// The result documents Prefect's API stored (the API DB dumps) resolve as Prefect
/// references: Prefect 2 references and literals, Prefect 3 metadata documents.
#[tokio::test]
async fn prefect_api_documents_resolve() {
    let (s, copy) = samples_server().await;
    let dump = |p: &str| -> Value { serde_json::from_slice(&std::fs::read(copy.join(p)).unwrap()).unwrap() };
    let prefect = |block: &str, doc: &Value| Target::Prefect { block: block.into(), document: doc.to_string() };

    let v2 = dump("v2.20.25/flow-saved-block.api-db-dump.json");
    let mut resolved = 0;
    for artifact in v2["artifact"].as_array().unwrap() {
        let doc = &artifact["data"];
        let r = s
            .client
            .resolve(prefect("local-file-system/p2-saved", doc), Want::Json, ReadOptions::default())
            .await
            .unwrap();
        match doc["type"].as_str().unwrap() {
            "literal" => assert_eq!(r.literal.unwrap().to_json(), doc["value"]),
            _ => assert!(r.json.is_some()),
        }
        resolved += 1;
    }
    assert_eq!(resolved, 6);

    let mut expiring = Vec::new();
    for (dump_file, block) in [
        ("v3.9.1/flow-saved-block.api-db-dump.json", "local-file-system/p3-saved"),
        ("v3.9.1/flow-failed-task.api-db-dump.json", "local-file-system/p3-failed"),
    ] {
        let d = dump(dump_file);
        let states = d["task_run_state"].as_array().unwrap().iter().map(|t| &t["data"]);
        let artifacts = d["artifact"].as_array().unwrap().iter().map(|a| &a["data"]);
        for doc in states.chain(artifacts) {
            let key = doc["storage_key"].as_str().unwrap();
            let written = copy
                .join(Path::new(dump_file).parent().unwrap())
                .join(dump_file.rsplit('/').next().unwrap().trim_end_matches(".api-db-dump.json"))
                .join(key)
                .exists();
            // Expiry is checked below on its own; the records here are read whatever the date.
            let r = s.client.resolve(prefect(block, doc), Want::Json, opts(None)).await;
            if written {
                let r = r.unwrap_or_else(|e| panic!("{dump_file} {key}: {e}"));
                let expiration = r.reference.and_then(|r| r.0.expiration).map(|t| t.seconds);
                let named = doc["expiration"].as_str().map(chrono_seconds);
                assert_eq!(expiration, named, "{key}: the record's expiration is the document's");
                if let Some(exp) = expiration {
                    expiring.push((block, doc.clone(), exp));
                }
            } else {
                assert_eq!(r.unwrap_err().code(), Some(Code::NotFound), "{key} was never written");
            }
        }
    }

    // The sample with `cache_expiration=1 day` expired on a fixed date in the past, so
    // without `allow_expired` it is refused, on any day this test runs (no reading of the
    // clock: the date is the sample's).
    assert_eq!(expiring.len(), 1, "the cache_expiration sample's task state");
    for (block, doc, exp) in expiring {
        assert_eq!(exp, chrono_seconds("2026-11-22T05:22:37.267013Z"));
        let err = s.client.resolve(prefect(block, &doc), Want::Json, ReadOptions::default()).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
        assert!(err.to_string().contains("expired"), "{err}");
    }

    // Prefect 3 records absolute paths for unsaved blocks: one under the block's root
    // resolves, one elsewhere is refused rather than read.
    let inside = json!({"storage_key": copy.join("v3.9.1/resultstore-api/json-dict").canonicalize().unwrap(), "serializer": {"type": "json"}});
    let r = s
        .client
        .resolve(prefect("local-file-system/p3-api", &inside), Want::Json, ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(r.json.as_deref(), Some(r#"{"a": 1, "b": [1, 2.5, "x"], "c": null}"#));
    let d = dump("v3.9.1/flow-default-storage.api-db-dump.json");
    let outside = &d["task_run_state"][0]["data"];
    assert!(outside["storage_key"].as_str().unwrap().starts_with("/data/"));
    let err = s
        .client
        .resolve(prefect("local-file-system/p3-default-storage", outside), Want::Json, ReadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument));
    assert!(err.to_string().contains("outside block"), "{err}");
}

/// Every file under v3.9.1 decodes, and every Prefect 3 record re-encodes to the
/// identical bytes.
#[test]
fn prefect_3_records_re_encode_byte_for_byte() {
    let samples = prefect_samples().join("v3.9.1");
    let hint = SerializerConfig::from_type("pickle").unwrap();
    let mut files = Vec::new();
    collect(&samples, &mut files);
    let mut records = 0;
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy();
        if name.ends_with(".json") && name.contains("api-db-dump") || name.ends_with(".txt") {
            continue;
        }
        let bytes = std::fs::read(&file).unwrap();
        let rec = ResultRecord::decode(Bytes::from(bytes.clone()), &hint, "k")
            .unwrap_or_else(|e| panic!("{} does not decode: {e}", file.display()));
        if rec.format == RecordFormat::Prefect3 {
            records += 1;
            let again = rec.encode_prefect3().unwrap();
            assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&bytes), "{}", file.display());
        }
    }
    assert!(records >= 20, "only {records} Prefect 3 records found");
}

/// Seconds since the epoch of an RFC 3339 time.
fn chrono_seconds(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { collect(&p, out) } else { out.push(p) }
    }
}
