//! Every serializer, written by the server and read back by the server and by Python.

use base64::Engine;
use resultstore_client::{Put, ReadOptions, Want, proto};
use resultstore_e2e::{SERIALIZERS, TestServer, python};
use tonic::Code;

const DOC: &str =
    r#"{"a": 1, "b": [1, 2.5, "x", null, true], "h\u00e9": {"n": -7, "big": 1180591620717411303424, "f": 1e-05}}"#;

/// Python reads a record the server wrote, the way Prefect's serializers would, and
/// compares the value with the JSON document that was put.
const PY_READ: &str = r#"
import base64, bz2, gzip, json, lzma, pickle, sys, zlib
record = json.load(open(sys.argv[1]))
expected = json.loads(sys.argv[2])
def loads(config, blob):
    t = config["type"] if isinstance(config, dict) else config
    if t == "json":
        return json.loads(blob.decode())
    if t == "pickle":
        return pickle.loads(base64.decodebytes(blob))
    inner = config.get("serializer") or ("json" if t == "compressed/json" else "pickle")
    lib = {"lzma": lzma, "bz2": bz2, "zlib": zlib, "gzip": gzip}[config.get("compressionlib", "lzma")]
    return loads(inner, lib.decompress(base64.decodebytes(blob)))
value = loads(record["metadata"]["serializer"], record["result"].encode())
assert value == expected, (value, expected)
if record["metadata"]["serializer"]["type"] == "json":
    # Byte for byte what Python's json.dumps writes.
    assert record["result"] == json.dumps(expected), (record["result"], json.dumps(expected))
print("ok")
"#;

#[tokio::test]
async fn every_serializer_round_trips_through_the_server_and_python() {
    let s = TestServer::start().await;
    for ser in SERIALIZERS {
        let key = format!("k-{}", SERIALIZERS.iter().position(|x| x == ser).unwrap());
        let stored = s.client.put(Put::json(DOC).serializer(ser).key(&key)).await.unwrap();
        let r = stored.reference().unwrap().clone();
        let v = r.resolve(&s.client, Want::Json).await.unwrap();
        let got: serde_json::Value = serde_json::from_str(v.json.as_deref().unwrap()).unwrap();
        let want: serde_json::Value = serde_json::from_str(DOC).unwrap();
        assert_eq!(got, want, "{ser}");
        let expected_inner = if ser.contains("json") { "json" } else { "pickle" };
        assert_eq!(v.value_serializer, expected_inner, "{ser}");
        let path = s.path("results").join(&key);
        assert_eq!(python(PY_READ, &[path.to_str().unwrap(), DOC]).trim(), "ok", "{ser}");
    }
}

#[tokio::test]
async fn get_returns_the_serializer_bytes_and_resolve_the_value_bytes() {
    let s = TestServer::start().await;
    let stored = s.client.put(Put::json("[1, 2, 3]").serializer("pickle")).await.unwrap();
    let r = stored.reference().unwrap().clone();
    let got = s.client.get(&r, ReadOptions::default()).await.unwrap();
    // Serializer bytes: base64 of the pickle, 76-column lines, as base64.encodebytes.
    assert!(got.data.ends_with(b"\n"));
    let pickle = base64::engine::general_purpose::STANDARD.decode(got.data.trim_ascii_end()).unwrap();
    assert_eq!(&pickle[..2], b"\x80\x05");
    let raw = r.resolve(&s.client, Want::Raw).await.unwrap();
    assert_eq!(raw.data.unwrap(), pickle);
    let meta: serde_json::Value = serde_json::from_str(&got.metadata_json).unwrap();
    assert_eq!(meta["storage_key"], r.key());
    assert_eq!(meta["serializer"]["picklelib"], "cloudpickle");

    // Data put as bytes comes back byte for byte, with its config unchanged.
    let config = r#"{"type":"pickle","picklelib":"pickle","picklelib_version":"3.1.2","extra":{"kept":[1,2]}}"#;
    let stored = s.client.put(Put::data(got.data.clone()).serializer(config)).await.unwrap();
    let r2 = stored.reference().unwrap().clone();
    let again = s.client.get(&r2, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
    assert_eq!(again.data, got.data);
    assert_eq!(again.reference.unwrap().serializer.unwrap().config_json, config);
}

#[tokio::test]
async fn unknown_serializers_are_stored_opaquely_and_only_transcoding_refuses_them() {
    let s = TestServer::start().await;
    let config = r#"{"type":"my.custom","level":3}"#;
    let stored = s.client.put(Put::data(b"opaque bytes".to_vec()).serializer(config)).await.unwrap();
    let r = stored.reference().unwrap().clone();
    let got = s.client.get(&r, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
    assert_eq!(got.data, &b"opaque bytes"[..]);
    assert_eq!(got.reference.unwrap().serializer.unwrap().config_json, config);
    let raw = r.resolve(&s.client, Want::Raw).await.unwrap();
    assert_eq!(raw.data.as_deref(), Some(&b"opaque bytes"[..]));
    assert_eq!(raw.value_serializer, "my.custom");
    let err = r.resolve(&s.client, Want::Json).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    // The server cannot serialize a JSON document with it.
    let err = s.client.put(Put::json("1").serializer(config)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
}

#[tokio::test]
async fn pickles_that_name_classes_are_refused_and_never_run() {
    let s = TestServer::start().await;
    // pickle.dumps of os.system("touch PWNED"), protocol 0 style: GLOBAL + REDUCE.
    let marker = s.path("PWNED");
    let evil = format!("cos\nsystem\n(Vtouch {}\ntR.", marker.display());
    let data = base64::engine::general_purpose::STANDARD.encode(evil.as_bytes());
    let stored = s.client.put(Put::data(data.into_bytes()).serializer("pickle")).await.unwrap();
    let r = stored.reference().unwrap().clone();
    let err = r.resolve(&s.client, Want::Json).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("os.system"), "{err}");
    assert!(!marker.exists());
    // Raw reads still hand the bytes to a client that chooses to unpickle them itself.
    assert!(r.resolve(&s.client, Want::Raw).await.unwrap().data.is_some());

    // A real cloudpickle of a datetime names `datetime.datetime`: refused the same way.
    let py = python(
        "import pickle,base64,datetime;print(base64.b64encode(pickle.dumps(datetime.date(2024,1,2),5)).decode())",
        &[],
    );
    let stored = s.client.put(Put::data(py.trim().as_bytes().to_vec()).serializer("pickle")).await.unwrap();
    let err = stored.reference().unwrap().resolve(&s.client, Want::Json).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
}

#[tokio::test]
async fn python_plain_data_pickles_of_every_protocol_transcode() {
    let s = TestServer::start().await;
    let value = r#"{"a": [1, 2.5, "x", null, true, false], "t": [1, 2], "s": {"__class__": "builtins.set", "data": [3]}, "big": -1180591620717411303424, "u": "h\u00e9"}"#;
    for proto in 2..=5 {
        let code = format!(
            "import pickle,base64;v={{'a':[1,2.5,'x',None,True,False],'t':(1,2),'s':{{3}},'big':-1180591620717411303424,'u':'hé'}};\
             print(base64.encodebytes(pickle.dumps(v,{proto})).decode(),end='')"
        );
        let data = python(&code, &[]);
        let stored = s.client.put(Put::data(data.into_bytes()).serializer("pickle")).await.unwrap();
        let v = stored.reference().unwrap().resolve(&s.client, Want::Json).await.unwrap();
        let got: serde_json::Value = serde_json::from_str(v.json.as_deref().unwrap()).unwrap();
        let want: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(got, want, "protocol {proto}");
    }
    let _ = proto::Want::Json;
}
