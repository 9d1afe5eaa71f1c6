//! PutStream and GetStream end to end: large results round trip on every block type that
//! runs here (multipart uploads, ranged reads past the cache), small streams behave as
//! Put, and every way a stream can go wrong leaves the stored result as it was.
//!
//! The servers here use 5 MiB stream pieces and a 1 MiB cache entry cap, so a result of a
//! dozen MiB takes the multipart path on the way in and the past-the-cache path out.

use bytes::Bytes;
use resultstore_client::proto as pb;
use resultstore_client::{Client, ClientError, Put, ReadOptions, Target, Want};
use resultstore_e2e::servers::{azure_options, azurite, moto_s3, s3_options};
use resultstore_e2e::{TestServer, base_config, code_of, config_with_pair};
use sha2::{Digest, Sha256};
use tonic::Code;

const MIB: usize = 1 << 20;

/// Small pieces and a small entry cap, so a dozen MiB exercises every streaming path.
fn streaming(config: String) -> String {
    format!(
        "{config}\n[cache]\ncapacity = \"64MiB\"\nmax_entry_size = \"1MiB\"\n[limits]\nstream_chunk_size = \"5MiB\"\n"
    )
}

/// A JSON document of `len` bytes: one string with escapes, non-ASCII text and a seed.
fn json_payload(len: usize, seed: u8) -> Bytes {
    let unit = format!("line {seed} \\\"quoted\\\" \\\\ caf\u{e9} \\n tab\\t|");
    let mut out = String::with_capacity(len);
    out.push('"');
    while out.len() + unit.len() + 1 < len {
        out.push_str(&unit);
    }
    while out.len() + 1 < len {
        out.push('x');
    }
    out.push('"');
    Bytes::from(out)
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `data` as a stream of `piece`-byte chunks.
fn chunks(data: Bytes, piece: usize) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let pieces: Vec<Bytes> =
        (0..data.len()).step_by(piece).map(|at| data.slice(at..data.len().min(at + piece))).collect();
    futures::stream::iter(pieces)
}

async fn get_all(c: &Client, target: impl Into<Target>, opts: ReadOptions) -> Result<Bytes, ClientError> {
    let stream = c.get_stream(target, opts).await?;
    Ok(stream.collect().await?.0)
}

fn loc(block: &str, key: &str) -> Target {
    Target::Location { block: block.into(), key: key.into() }
}

/// A large result put in chunks and read back in chunks, through storage, on `block`.
async fn round_trip(s: &TestServer, block: &str) {
    let c = &s.client;
    let data = json_payload(12 * MIB + 123, 1);
    let put = Put::data(Bytes::new()).serializer("json").storage(block).key("big/one").size(data.len() as u64);
    let stored = c.put_stream(put, chunks(data.clone(), MIB)).await.unwrap_or_else(|e| panic!("{block}: {e}"));
    let r = stored.reference().unwrap().clone();
    assert_eq!(r.0.size, data.len() as u64, "{block}");
    assert_eq!(r.sha256(), sha(&data), "{block}");

    let stream = c.get_stream(&r, ReadOptions::default()).await.unwrap();
    assert_eq!(stream.reference.0.size, data.len() as u64);
    let (got, stream) = stream.collect().await.unwrap();
    assert!(got == data, "{block}: the streamed bytes differ");
    assert_eq!(stream.trailer().unwrap().sha256, sha(&data));
    // Unary reads agree (the result is under the unary limit).
    let unary = c.get(loc(block, "big/one"), ReadOptions::default()).await.unwrap();
    assert!(unary.data == data, "{block}: Get differs from GetStream");

    // Overwrite in chunks of odd sizes; the new bytes are read, not the old.
    let data2 = json_payload(11 * MIB + 7, 2);
    let put = Put::data(Bytes::new()).serializer("json").storage(block).key("big/one");
    let r2 = c.put_stream(put, chunks(data2.clone(), 777_777)).await.unwrap().reference().unwrap().clone();
    assert_eq!(r2.sha256(), sha(&data2));
    assert!(get_all(c, loc(block, "big/one"), ReadOptions::default()).await.unwrap() == data2, "{block}");
    // The old reference now names other bytes: DATA_LOSS at the end of its stream.
    let err = get_all(c, &r, ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::DataLoss), "{block}: {err}");
}

#[tokio::test]
async fn large_results_round_trip_on_memory_and_local_blocks() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    for block in ["local-file-system/default", "local-file-system/split", "memory/default", "memory/split"] {
        round_trip(&s, block).await;
    }
    // A prefect3 record written in pieces is the record Prefect writes: one JSON document
    // whose `result` is the serializer bytes.
    let file = std::fs::read(s.path("results/big/one")).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&file).unwrap();
    assert_eq!(doc["result"].as_str().unwrap().as_bytes(), &json_payload(11 * MIB + 7, 2)[..]);
    assert_eq!(doc["metadata"]["storage_key"], "big/one");
    // In a split block, the payload alone and the metadata beside it.
    assert_eq!(std::fs::read(s.path("split/big/one")).unwrap(), json_payload(11 * MIB + 7, 2));
    assert!(s.path("split-meta/big/one").is_file());
    // Nothing is left of the multipart uploads.
    let leftovers: Vec<_> = walk(s.dir.path()).into_iter().filter(|p| p.contains('#')).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn large_results_round_trip_on_s3() {
    let moto = moto_s3("results");
    let options = s3_options(moto.port);
    let s = TestServer::start_with(|d| streaming(config_with_pair(d, "s3-bucket", "s3://results", &options))).await;
    round_trip(&s, "s3-bucket/p3").await;
    round_trip(&s, "s3-bucket/split").await;
}

#[tokio::test]
async fn large_results_round_trip_on_azure() {
    let (azurite, _work) = azurite("results");
    let options = azure_options(azurite.port);
    let s = TestServer::start_with(|d| streaming(config_with_pair(d, "azure", "az://results", &options))).await;
    round_trip(&s, "azure-blob-storage-container/p3").await;
    round_trip(&s, "azure-blob-storage-container/split").await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[tokio::test]
async fn small_streams_are_stored_as_put_stores_them() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let c = &s.client;
    let doc = Bytes::from_static(br#"{"a": [1, 2, 3], "b": "text"}"#);
    let unary = c.put(Put::data(doc.clone()).serializer("json").key("small/unary")).await.unwrap();
    let streamed =
        c.put_stream(Put::data(Bytes::new()).serializer("json").key("small/streamed"), chunks(doc.clone(), 5)).await;
    let (u, st) = (unary.reference().unwrap(), streamed.unwrap().reference().unwrap().clone());
    assert_eq!((st.0.size, st.sha256(), st.0.format.as_str()), (u.0.size, u.sha256(), u.0.format.as_str()));
    // Written through to the cache, as Put does.
    let v = c.resolve(&st, Want::Json, ReadOptions::default()).await.unwrap();
    assert!(v.cache_hit);
    // And checked as Put checks: bad base64 for a pickle is refused whole.
    let bad = c
        .put_stream(
            Put::data(Bytes::from_static(b"not base64!")).serializer("pickle").key("small/bad"),
            futures::stream::empty(),
        )
        .await;
    assert_eq!(code_of(bad), Code::InvalidArgument);
    // A stream of a small result that is not persisted lives in memory, as with Put.
    let mem =
        c.put_stream(Put::data(doc.clone()).serializer("json").persist(false), futures::stream::empty()).await.unwrap();
    assert!(!mem.reference().unwrap().persisted());
}

#[tokio::test]
async fn streams_that_go_wrong_leave_the_stored_result_as_it_was() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let c = &s.client;
    for block in ["local-file-system/default", "local-file-system/split"] {
        let old = json_payload(6 * MIB, 9);
        let key = "keep/me";
        let put = || Put::data(Bytes::new()).serializer("json").storage(block).key(key);
        c.put_stream(put(), chunks(old.clone(), MIB)).await.unwrap();
        let new = json_payload(12 * MIB, 3);

        // Fewer bytes than announced.
        let short = c.put_stream(put().size(new.len() as u64 + 1), chunks(new.clone(), MIB)).await;
        assert_eq!(code_of(short), Code::InvalidArgument, "{block}");
        // More bytes than announced.
        let long = c.put_stream(put().size(new.len() as u64 - 1), chunks(new.clone(), MIB)).await;
        assert_eq!(code_of(long), Code::InvalidArgument, "{block}");
        // Bytes that do not match the announced digest.
        let lie = c.put_stream(put().sha256(sha(&old)), chunks(new.clone(), MIB)).await;
        assert_eq!(code_of(lie), Code::DataLoss, "{block}");
        // Not UTF-8 past the first piece, for a JSON serializer.
        let mut broken = new.to_vec();
        broken[9 * MIB] = 0xff;
        let bad = c.put_stream(put(), chunks(Bytes::from(broken), MIB)).await;
        assert_eq!(code_of(bad), Code::InvalidArgument, "{block}");
        // A client that stops mid-stream. Its stream ends cleanly (the HTTP/2 connection
        // finishes sending what it holds), so only the announced size tells it from a
        // whole one: clients that may stop early announce it.
        let (tx, rx) = futures::channel::mpsc::channel::<Bytes>(1);
        let client = c.clone();
        let abandoned = put().size(new.len() as u64);
        let upload = tokio::spawn(async move { client.put_stream(abandoned, rx).await });
        let mut tx = tx;
        for piece in 0..7 {
            futures::SinkExt::send(&mut tx, new.slice(piece * MIB..(piece + 1) * MIB)).await.unwrap();
        }
        upload.abort();
        let _ = upload.await;
        drop(tx);

        let got = get_all(c, loc(block, key), ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
        assert!(got == old, "{block}: the old result changed");
    }
    no_multipart_leftovers(&s).await;
}

/// The abandoned uploads' parts are removed once the server sees their streams end.
async fn no_multipart_leftovers(s: &TestServer) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let leftovers: Vec<_> = walk(s.dir.path()).into_iter().filter(|p| p.contains('#')).collect();
        if leftovers.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "multipart leftovers: {leftovers:?}");
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Base64 text (valid pickle-serializer bytes to every check a stream can make as it
/// passes), `len` bytes, a multiple of four, so any prefix cut at 1 MiB is valid too.
fn b64_payload(len: usize, seed: u8) -> Bytes {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    Bytes::from((0..len).map(|i| alphabet[(i * 7 + seed as usize) % 64]).collect::<Vec<u8>>())
}

/// A client that cancels a PutStream without having announced a size: HTTP/2 hands the
/// server a RST_STREAM CANCEL, which tonic delivers as a normal end of stream, so only the
/// missing `end` message tells it from a whole one. Small (one piece, stored as a Put)
/// and large (multipart) streams alike leave the key as it was.
#[tokio::test]
async fn cancelled_streams_without_a_size_commit_nothing() {
    let mut s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let block = "local-file-system/default";
    // Base64 pickle bytes: every prefix cut at a piece passes the checks made as bytes
    // pass, so only the stream's end can tell the server it was cut short.
    let put = |key: &str| Put::data(Bytes::new()).serializer("pickle").storage(block).key(key);
    let new = b64_payload(12 * MIB, 3);
    for (key, pieces) in [("cancel/small", 1), ("cancel/large", 7)] {
        let old = b64_payload(6 * MIB, 9);
        s.client.put_stream(put(key), chunks(old.clone(), MIB)).await.unwrap();
        let (mut tx, rx) = futures::channel::mpsc::channel::<Bytes>(1);
        let client = s.client.clone();
        let abandoned = put(key);
        let upload = tokio::spawn(async move { client.put_stream(abandoned, rx).await });
        for piece in 0..pieces {
            let bytes = if pieces == 1 { new.slice(..4) } else { new.slice(piece * MIB..(piece + 1) * MIB) };
            futures::SinkExt::send(&mut tx, bytes).await.unwrap();
        }
        // The last piece was taken by the call; cancel it (the future is dropped).
        futures::SinkExt::send(&mut tx, Bytes::new()).await.unwrap();
        upload.abort();
        let _ = upload.await;
        drop(tx);
        // A graceful restart drains every call in flight: the server has finished with
        // the cancelled stream, whatever it made of it.
        s.restart().await;
        let got = get_all(&s.client, loc(block, key), ReadOptions { bypass_cache: true, ..Default::default() }).await;
        assert!(got.unwrap() == old, "{key}: a cancelled stream replaced the result");
    }
    no_multipart_leftovers(&s).await;
}

#[tokio::test]
async fn create_only_streams_never_replace_a_result() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let c = &s.client;
    for block in ["local-file-system/default", "local-file-system/split", "memory/default"] {
        let first = json_payload(7 * MIB, 1);
        let put = || Put::data(Bytes::new()).serializer("json").storage(block).key("once").create_only();
        c.put_stream(put(), chunks(first.clone(), MIB)).await.unwrap();
        let again = c.put_stream(put(), chunks(json_payload(7 * MIB, 2), MIB)).await;
        assert_eq!(code_of(again), Code::AlreadyExists, "{block}");
        assert!(get_all(c, loc(block, "once"), ReadOptions::default()).await.unwrap() == first);
        // Staged uploads are moved away and hidden from listings.
        let keys: Vec<String> = c.list_all(block, "").await.unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, vec!["once".to_owned()], "{block}");
    }
    assert!(!walk(s.dir.path()).iter().any(|p| p.contains(".resultstore-staging/")));
}

#[tokio::test]
async fn get_stream_past_the_cache_checks_the_reference() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let c = &s.client;
    let data = json_payload(12 * MIB, 4);
    let put = Put::data(Bytes::new()).serializer("json").storage("local-file-system/split").key("checked");
    let r = c.put_stream(put, chunks(data.clone(), MIB)).await.unwrap().reference().unwrap().clone();
    // The file changes behind the service's back: the reference's digest catches it, and a
    // client writing to a file keeps nothing.
    let mut altered = data.to_vec();
    altered[10 * MIB] = b'y';
    std::fs::write(s.path("split/checked"), &altered).unwrap();
    let out = s.path("out.json");
    let err = c.get_to_file(&r, ReadOptions::default(), &out).await.err().unwrap();
    assert_eq!(err.code(), Some(Code::DataLoss), "{err}");
    assert!(!out.exists() && !s.path("out.json.partial").exists());
    // By location the metadata document's digest holds it: damaged bytes, not a new result.
    let err = c.get_to_file(loc("local-file-system/split", "checked"), ReadOptions::default(), &out).await;
    assert_eq!(err.err().unwrap().code(), Some(Code::DataLoss));
    assert!(!out.exists());
}

#[tokio::test]
async fn an_overwrite_while_streaming_ends_the_stream_with_aborted() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let c = &s.client;
    let put = || Put::data(Bytes::new()).serializer("json").storage("local-file-system/split").key("moving");
    c.put_stream(put(), chunks(json_payload(60 * MIB, 1), 4 * MIB)).await.unwrap();
    let mut stream = c.get_stream(loc("local-file-system/split", "moving"), ReadOptions::default()).await.unwrap();
    stream.next_chunk().await.unwrap().unwrap();
    // The stream holds at most a few pieces ahead; the rest are read after this overwrite.
    c.put_stream(put(), chunks(json_payload(60 * MIB, 2), 4 * MIB)).await.unwrap();
    let err = loop {
        match stream.next_chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended whole across an overwrite"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some(Code::Aborted), "{err}");
}

#[tokio::test]
async fn split_results_stream_as_prefect_records_when_asked_as_stored() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let c = &s.client;
    let data = json_payload(9 * MIB, 5);
    let put = Put::data(Bytes::new()).serializer("json").storage("local-file-system/split").key("rec");
    c.put_stream(put, chunks(data.clone(), MIB)).await.unwrap();
    let opts = ReadOptions { as_stored: true, ..Default::default() };
    let record = get_all(c, loc("local-file-system/split", "rec"), opts.clone()).await.unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(doc["result"].as_str().unwrap().as_bytes(), &data[..]);
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.path("split-meta/rec")).unwrap()).unwrap();
    // The document names its payload's digest (see `split`); the record leaves it out.
    assert_eq!(meta["resultstore_payload_sha256"].as_str(), Some(sha(&data).as_str()));
    meta.as_object_mut().unwrap().remove("resultstore_payload_sha256");
    assert_eq!(doc["metadata"], meta);
    // The same record, byte for byte, as the one a prefect3 block writes.
    let put = Put::data(Bytes::new()).serializer("json").key("rec");
    c.put_stream(put, chunks(data.clone(), MIB)).await.unwrap();
    assert!(std::fs::read(s.path("results/rec")).unwrap() == record);
}

#[tokio::test]
async fn large_objects_stream_byte_for_byte() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let c = &s.client;
    // A bare payload (a Prefect flow result): stored as is, read back as stored.
    let bare: Bytes = (0..10 * MIB).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into();
    let stored = c.put_stream(Put::object(Bytes::new()).key("obj/bare"), chunks(bare.clone(), MIB)).await.unwrap();
    assert_eq!(stored.reference().unwrap().0.format, "bare");
    assert_eq!(std::fs::read(s.path("results/obj/bare")).unwrap(), bare);
    let opts = ReadOptions { as_stored: true, ..Default::default() };
    assert!(get_all(c, loc("local-file-system/default", "obj/bare"), opts.clone()).await.unwrap() == bare);
    // A Prefect record sent as an object: kept whole, as Put keeps objects.
    let record = format!(
        r#"{{"metadata":{{"storage_key":"obj/rec","expiration":null,"serializer":{{"type":"json","jsonlib":"json","object_encoder":"prefect.serializers.prefect_json_object_encoder","object_decoder":"prefect.serializers.prefect_json_object_decoder","dumps_kwargs":{{}},"loads_kwargs":{{}}}},"prefect_version":"3.9.1","storage_block_id":"0b7e3f6c-0000-4000-8000-000000000000"}},"result":{}}}"#,
        serde_json::to_string(std::str::from_utf8(&json_payload(7 * MIB, 6)).unwrap()).unwrap()
    );
    let record = Bytes::from(record);
    let stored = c.put_stream(Put::object(Bytes::new()).key("obj/rec"), chunks(record.clone(), MIB)).await.unwrap();
    assert_eq!(stored.reference().unwrap().0.format, "prefect3");
    assert_eq!(std::fs::read(s.path("results/obj/rec")).unwrap(), record);
    assert!(get_all(c, loc("local-file-system/default", "obj/rec"), opts).await.unwrap() == record);
}

#[tokio::test]
async fn limits_name_the_way_forward() {
    let s = TestServer::start_with(|d| {
        format!(
            "{}\n[cache]\nmax_entry_size = \"1MiB\"\nfill_budget = \"8MiB\"\n[limits]\nmax_message_size = \"4MiB\"\n\
             max_result_size = \"8MiB\"\nstream_chunk_size = \"5MiB\"\n",
            base_config(d)
        )
    })
    .await;
    let c = &s.client;
    // A unary Put above the message limit names PutStream.
    let err = c.put(Put::data(json_payload(5 * MIB, 1)).serializer("json").key("u")).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("PutStream"), "{err}");
    // A unary Get of a result above it names GetStream.
    let data = json_payload(6 * MIB, 1);
    let put = Put::data(Bytes::new()).serializer("json").storage("local-file-system/split").key("g");
    c.put_stream(put, chunks(data.clone(), MIB)).await.unwrap();
    let err = c.get(loc("local-file-system/split", "g"), ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
    assert!(err.to_string().contains("GetStream"), "{err}");
    assert!(get_all(c, loc("local-file-system/split", "g"), ReadOptions::default()).await.unwrap() == data);
    // A prefect3 record is read in one piece: one above max_result_size is refused, by the
    // announced size up front or on the way, naming split blocks; nothing is stored.
    let put = || Put::data(Bytes::new()).serializer("json").key("p3");
    let err = c.put_stream(put().size(9 * MIB as u64), chunks(json_payload(9 * MIB, 1), MIB)).await.unwrap_err();
    assert!(err.code() == Some(Code::ResourceExhausted) && err.to_string().contains("split"), "{err}");
    let err = c.put_stream(put(), chunks(json_payload(9 * MIB, 1), MIB)).await.unwrap_err();
    assert!(err.code() == Some(Code::ResourceExhausted) && err.to_string().contains("split"), "{err}");
    assert_eq!(code_of(c.get(loc("local-file-system/default", "p3"), ReadOptions::default()).await), Code::NotFound);
    // A result that is not persisted must fit one cache entry.
    let mem = Put::data(Bytes::new()).serializer("json").persist(false);
    let err = c.put_stream(mem, chunks(json_payload(2 * MIB, 1), MIB)).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::ResourceExhausted), "{err}");
}

#[tokio::test]
async fn malformed_streams_are_invalid_arguments() {
    let s = TestServer::start().await;
    let mut raw = s.client.raw();
    let chunk = |b: &'static [u8]| pb::PutStreamRequest {
        part: Some(pb::put_stream_request::Part::Chunk(Bytes::from_static(b))),
    };
    let header = || pb::PutStreamRequest {
        part: Some(pb::put_stream_request::Part::Header(pb::PutStreamHeader { key: "m".into(), ..Default::default() })),
    };
    let no_header = raw.put_stream(futures::stream::iter([chunk(b"1")])).await.unwrap_err();
    assert_eq!(no_header.code(), Code::InvalidArgument, "{no_header}");
    let twice = raw.put_stream(futures::stream::iter([header(), chunk(b"1"), header()])).await.unwrap_err();
    assert_eq!(twice.code(), Code::InvalidArgument, "{twice}");
    let empty = raw.put_stream(futures::stream::iter(Vec::<pb::PutStreamRequest>::new())).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty}");
    // Whole streams end with `end` (or announce their size): one that just stops is refused.
    let end = || pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::End(pb::PutStreamEnd {})) };
    // (`MQ==` is base64, as the default pickle serializer's bytes are.)
    let unended = raw.put_stream(futures::stream::iter([header(), chunk(b"MQ==")])).await.unwrap_err();
    assert_eq!(unended.code(), Code::InvalidArgument, "{unended}");
    assert!(unended.message().contains("`end`"), "{unended}");
    let after_end = raw.put_stream(futures::stream::iter([header(), chunk(b"MQ=="), end(), chunk(b"MQ==")])).await;
    assert_eq!(after_end.unwrap_err().code(), Code::InvalidArgument);
    assert!(!s.client.exists("", "m").await.unwrap(), "nothing was stored");
    raw.put_stream(futures::stream::iter([header(), chunk(b"MQ=="), end()])).await.unwrap();
    assert!(s.client.exists("", "m").await.unwrap());
    let mut bad_sha = header();
    if let Some(pb::put_stream_request::Part::Header(h)) = &mut bad_sha.part {
        h.sha256 = "abc".into();
    }
    let err = raw.put_stream(futures::stream::iter([bad_sha, chunk(b"1")])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    // A literal payload has no stream form.
    let err = s.client.put_stream(Put::json("1"), futures::stream::empty()).await.unwrap_err();
    assert!(matches!(err, ClientError::Document(_)), "{err}");
    // GetStream of nothing is NOT_FOUND before any chunk.
    let err = s.client.get_stream(loc("memory/default", "none"), ReadOptions::default()).await.err().unwrap();
    assert_eq!(err.code(), Some(Code::NotFound));
}

/// A create-only PutStream retried after its reply was lost (the same bytes, its header
/// naming their digest) succeeds, in both block formats; other bytes are ALREADY_EXISTS, and
/// a stream that names no digest is refused before it is read.
#[tokio::test]
async fn a_retried_create_only_stream_succeeds_for_its_own_bytes() {
    let s = TestServer::start_with(|d| streaming(base_config(d))).await;
    let c = &s.client;
    let data = json_payload(12 * MIB, 6);
    for block in ["local-file-system/default", "local-file-system/split"] {
        let put = |data: &Bytes| {
            Put::data(Bytes::new()).serializer("json").storage(block).key("once").create_only().sha256(sha(data))
        };
        let first = c.put_stream(put(&data), chunks(data.clone(), MIB)).await.unwrap();
        let again = c.put_stream(put(&data), chunks(data.clone(), MIB)).await.unwrap();
        assert_eq!(first.reference().unwrap().sha256(), again.reference().unwrap().sha256(), "{block}");
        let other = json_payload(12 * MIB, 7);
        let err = c.put_stream(put(&other), chunks(other.clone(), MIB)).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::AlreadyExists), "{block}: {err}");
        let unnamed = Put::data(Bytes::new()).serializer("json").storage(block).key("once").create_only();
        let err = c.put_stream(unnamed, chunks(data.clone(), MIB)).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::AlreadyExists), "{block}: {err}");
        let held = get_all(c, loc(block, "once"), ReadOptions::default()).await.unwrap();
        assert!(held == data, "{block}: the key holds other bytes");
    }
    assert!(!walk(s.dir.path()).iter().any(|p| p.contains(".resultstore-staging/")), "staged objects left");
}
