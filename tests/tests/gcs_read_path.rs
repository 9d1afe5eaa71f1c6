//! GCS blocks against fake-gcs-server: the read path only. fake-gcs-server serves
//! object_store's GCS reads but not its writes, and no other GCS server installs from the
//! registries here, so the write path of GCS blocks is not tested here (README says so).
//! Real Prefect records are seeded into the bucket and read through the service.

use resultstore_client::{ReadOptions, Target, Want};
use resultstore_e2e::servers::{fake_gcs, gcs_options, gcs_seed};
use resultstore_e2e::{TestServer, config_with_pair, key_table, prefect_samples};
use tonic::Code;

#[tokio::test]
async fn gcs_blocks_read_prefect_records_list_and_delete() {
    let gcs = fake_gcs("results");
    let samples = prefect_samples().join("v3.9.1/resultstore-api");
    for name in ["json-dict", "pickle-int", "compressed-pickle", "compressed-json-bz2"] {
        gcs_seed(gcs.port, "results", &format!("p3/{name}"), &std::fs::read(samples.join(name)).unwrap());
    }
    for i in 0..7 {
        gcs_seed(
            gcs.port,
            "results",
            &format!("p3/many/{i}"),
            format!(r#"{{"metadata":{{"serializer":{{"type":"json"}}}},"result":"{i}"}}"#).as_bytes(),
        );
    }
    // Prefect's split layout: payload and metadata document under two prefixes.
    gcs_seed(gcs.port, "results", "split/split-key", &std::fs::read(samples.join("results-only/split-key")).unwrap());
    gcs_seed(gcs.port, "results", "split-meta/split-key", &std::fs::read(samples.join("metadata/split-key")).unwrap());

    let options = gcs_options(gcs.port);
    let s = TestServer::start_with(|dir| config_with_pair(dir, "gcs", "gs://results", &options)).await;
    let c = &s.client;
    let bypass = || ReadOptions { bypass_cache: true, ..Default::default() };
    let loc = |block: &str, key: &str| Target::Location { block: block.into(), key: key.into() };
    for (key, want) in [
        ("json-dict", r#"{"a": 1, "b": [1, 2.5, "x"], "c": null}"#),
        ("pickle-int", "42"),
        ("compressed-pickle", "[1, 2, 3]"),
        ("compressed-json-bz2", r#""hi""#),
    ] {
        let r =
            c.resolve(loc("gcs-bucket/p3", key), Want::Json, bypass()).await.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(r.json.as_deref(), Some(want), "{key}");
        assert_eq!(r.reference.unwrap().0.uri, format!("gs://results/p3/{key}"));
    }
    let r = c.resolve(loc("gcs-bucket/split", "split-key"), Want::Json, bypass()).await.unwrap();
    assert_eq!(r.json.as_deref(), Some(r#"{"split": true}"#));
    assert_eq!(r.reference.unwrap().0.format, "split");

    // Listing pages through the bucket in key order.
    let (mut seen, mut token) = (Vec::new(), String::new());
    loop {
        let page = c.list("gcs-bucket/p3", "many/", 3, &token).await.unwrap();
        seen.extend(page.entries.into_iter().map(|e| e.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (0..7).map(|i| format!("many/{i}")).collect::<Vec<_>>());

    // Objects named by the key table (as Prefect's GcsBucket names them) are found under
    // exactly those names, and listed as those keys.
    for key in &key_table() {
        let record = format!(r#"{{"metadata":{{"serializer":{{"type":"json"}}}},"result":{}}}"#, json_string(key));
        gcs_seed(gcs.port, "results", &format!("p3/{key}"), record.as_bytes());
    }
    let mut want = key_table();
    want.sort();
    let listed: Vec<String> = c.list_all("gcs-bucket/p3", "keys/").await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(listed, want);
    for key in &listed {
        let r =
            c.resolve(loc("gcs-bucket/p3", key), Want::Json, bypass()).await.unwrap_or_else(|e| panic!("{key}: {e}"));
        let got: String = serde_json::from_str(r.json.as_deref().unwrap()).unwrap();
        assert_eq!(got, *key);
        assert_eq!(r.reference.unwrap().0.uri, format!("gs://results/p3/{key}"));
        c.delete("gcs-bucket/p3", key).await.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(!c.exists("gcs-bucket/p3", key).await.unwrap(), "{key}");
    }

    assert!(c.exists("gcs-bucket/p3", "json-dict").await.unwrap());
    c.delete("gcs-bucket/p3", "json-dict").await.unwrap();
    assert!(!c.exists("gcs-bucket/p3", "json-dict").await.unwrap());
    let err = c.resolve(loc("gcs-bucket/p3", "json-dict"), Want::Raw, bypass()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
}

/// `s` as a JSON string holding the JSON text of `s` (a Prefect 3 record's `result`).
fn json_string(s: &str) -> String {
    serde_json::to_string(&serde_json::to_string(s).unwrap()).unwrap()
}
