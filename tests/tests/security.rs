//! Tokens, TLS and mutual TLS, load shedding, timeouts, health and metrics, against a
//! real server on 127.0.0.1:0 with certificates made by the test.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use resultstore::config::auth::token_hash;
use resultstore_client::proto as pb;
use resultstore_client::{Client, ConnectOptions, Put, ReadOptions, Stored, Target, TlsOptions, Want};
use resultstore_e2e::pki::Pki;
use resultstore_e2e::{TestServer, base_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const READER: &str = "reader-token-7f3a";
const WRITER: &str = "writer-token-91c2";
const MEMORY_ONLY: &str = "memory-token-5d10";

/// [`base_config`] with three tokens: read-only on every block, full on every block, and
/// read+write on `memory/*` only.
fn config_with_tokens(dir: &std::path::Path) -> String {
    format!(
        "{}\n[auth]\n\
         [[auth.tokens]]\nname = \"reader\"\nsha256 = \"{}\"\nscopes = {{ \"*\" = [\"read\"] }}\n\
         [[auth.tokens]]\nname = \"writer\"\nsha256 = \"{}\"\nscopes = {{ \"*\" = [\"read\", \"write\", \"delete\"] }}\n\
         [[auth.tokens]]\nname = \"memory\"\nsha256 = \"{}\"\nscopes = {{ \"memory/*\" = [\"read\", \"write\"] }}\n",
        base_config(dir),
        token_hash(READER),
        token_hash(WRITER),
        token_hash(MEMORY_ONLY)
    )
}

async fn connect(url: &str, token: Option<&str>) -> Client {
    let options = ConnectOptions { token: token.map(str::to_owned), ..Default::default() };
    Client::connect_with(url.to_owned(), options).await.expect("connects")
}

fn code<T>(r: &resultstore_client::Result<T>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(e) => e.code().unwrap_or_else(|| panic!("not a status: {e}")),
    }
}

#[tokio::test]
async fn every_token_kind_against_every_operation() {
    let s = TestServer::start_with(config_with_tokens).await;
    let writer = connect(&s.url, Some(WRITER)).await;
    let Stored::Reference(seeded) = writer.put(Put::json("[1, 2]").serializer("json").key("seeded")).await.unwrap()
    else {
        panic!("a reference")
    };

    let cases: [(&str, Option<&str>, [Code; 7]); 4] = [
        ("no token", None, [Code::Unauthenticated; 7]),
        ("wrong token", Some("not-a-token"), [Code::Unauthenticated; 7]),
        (
            "read-only token",
            Some(READER),
            [
                Code::PermissionDenied,
                Code::Ok,
                Code::Ok,
                Code::PermissionDenied,
                Code::Ok,
                Code::PermissionDenied,
                Code::PermissionDenied,
            ],
        ),
        ("full token", Some(WRITER), [Code::Ok; 7]),
    ];
    for (who, token, expected) in cases {
        let c = connect(&s.url, token).await;
        let put = c.put(Put::json("[3]").serializer("json").key(format!("by-{who}").replace(' ', "-"))).await;
        let get = c.get(&seeded, ReadOptions::default()).await;
        let resolve = c.resolve(&seeded, Want::Json, ReadOptions::default()).await;
        let list = c.list("local-file-system/default", "", 0, "").await;
        // Delete last, and of a key of its own, so the seeded result stays for the next caller.
        let delete = c.delete("local-file-system/default", &format!("by-{who}").replace(' ', "-")).await;
        // Bulk deletes and sweeps take a delete scope, as Delete does.
        let delete_prefix = c.delete_prefix("local-file-system/default", "by-nobody/", false).await;
        let sweep = match c.sweep("local-file-system/default", "by-nobody/", None, true).await {
            Ok(mut progress) => {
                let mut done = false;
                while let Some(p) = progress.message().await.expect("sweep progress") {
                    done |= p.done;
                }
                assert!(done, "{who}: the sweep's last message has its totals");
                Ok(())
            }
            Err(e) => Err(e),
        };
        let got =
            [code(&put), code(&get), code(&resolve), code(&delete), code(&list), code(&delete_prefix), code(&sweep)];
        assert_eq!(got, expected, "{who}: put, get, resolve, delete, list, delete_prefix, sweep");
        if let Err(e) = &put
            && e.code() == Some(Code::PermissionDenied)
        {
            assert_eq!(
                e.to_string(),
                "PERMISSION_DENIED: token `reader` may not write in block `local-file-system/default`"
            );
        }
        if token.is_none() {
            assert!(put.unwrap_err().to_string().contains("authorization: Bearer"), "says how to authenticate");
        }
    }
    // The seeded result is still whole.
    let back = writer.resolve(&seeded, Want::Json, ReadOptions::default()).await.unwrap();
    assert_eq!(back.json.as_deref(), Some("[1, 2]"));
}

#[tokio::test]
async fn a_refusal_never_tells_whether_the_key_exists() {
    let s = TestServer::start_with(config_with_tokens).await;
    let writer = connect(&s.url, Some(WRITER)).await;
    writer.put(Put::json("1").serializer("json").key("present")).await.unwrap();
    let memory = connect(&s.url, Some(MEMORY_ONLY)).await;
    let at = |key: &str| Target::Location { block: "local-file-system/default".into(), key: key.into() };
    for read in [
        memory.get(at("present"), ReadOptions::default()).await.map(drop),
        memory.get(at("absent"), ReadOptions::default()).await.map(drop),
    ] {
        assert_eq!(
            read.unwrap_err().to_string(),
            "PERMISSION_DENIED: token `memory` may not read in block `local-file-system/default`"
        );
    }
    for exists in [
        memory.exists("local-file-system/default", "present").await,
        memory.exists("local-file-system/default", "absent").await,
    ] {
        assert_eq!(code(&exists), Code::PermissionDenied);
    }
    // An unknown block inside its scope is NOT_FOUND, naming only blocks it may see.
    let e = memory.get(Target::Location { block: "memory/nope".into(), key: "k".into() }, ReadOptions::default());
    let e = e.await.unwrap_err().to_string();
    assert!(e.starts_with("NOT_FOUND") && e.contains("memory/default") && !e.contains("local-file-system"), "{e}");
    // Through the default block, by alias, and by a Prefect document: the same rule.
    let e = memory.put(Put::json("[1]").serializer("json")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    let doc = r#"{"storage_key": "present", "serializer": {"type": "json"}, "storage_block_id": null}"#;
    let e = memory
        .get(
            Target::Prefect { block: "local-file-system/default".into(), document: doc.into() },
            ReadOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    // Inside its scope it works.
    let Stored::Reference(r) = memory.put(Put::json("[5]").serializer("json").storage("memory/default")).await.unwrap()
    else {
        panic!("a reference")
    };
    assert_eq!(memory.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap().json.as_deref(), Some("[5]"));
}

#[tokio::test]
async fn list_blocks_shows_only_what_the_token_may_touch() {
    let s = TestServer::start_with(config_with_tokens).await;
    let slugs =
        |c: Client| async move { c.list_blocks().await.unwrap().into_iter().map(|b| b.slug).collect::<Vec<_>>() };
    assert_eq!(slugs(connect(&s.url, Some(MEMORY_ONLY)).await).await, ["memory/default", "memory/split"]);
    assert_eq!(slugs(connect(&s.url, Some(READER)).await).await.len(), 5);
    let e = connect(&s.url, None).await.list_blocks().await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated));
}

#[tokio::test]
async fn anonymous_calls_get_only_the_anonymous_scopes() {
    let s = TestServer::start_with(|d| {
        format!(
            "{}\n[auth]\nanonymous = {{ \"memory/default\" = [\"read\", \"write\"] }}\n[[auth.tokens]]\nname = \
             \"w\"\nsha256 = \"{}\"\nscopes = {{ \"*\" = [\"read\", \"write\", \"delete\"] }}\n",
            base_config(d),
            token_hash(WRITER)
        )
    })
    .await;
    let anon = connect(&s.url, None).await;
    anon.put(Put::json("[1]").serializer("json").storage("memory/default")).await.unwrap();
    let e = anon.put(Put::json("[1]").serializer("json")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "PERMISSION_DENIED: a call without a token may not write in block `local-file-system/default`"
    );
    // A token the server does not know is refused even where anonymous calls may go.
    let stranger = connect(&s.url, Some("stale-token")).await;
    let e = stranger.put(Put::json("[1]").serializer("json").storage("memory/default")).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::Unauthenticated));
}

#[tokio::test]
async fn a_plaintext_token_in_the_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[auth]\n[[auth.tokens]]\nname = \"oops\"\nsha256 = \"{WRITER}\"\nscopes = {{ \"*\" = [\"read\"] }}\n",
        base_config(dir.path())
    );
    let e = resultstore::Config::from_toml(&text).unwrap_err().to_string();
    assert!(e.contains("64 hex digits") && e.contains("token hash"), "{e}");
}

fn tls_client_options(pki: &Pki, identity: bool) -> ConnectOptions {
    let id = identity.then_some((pki.client_cert.as_path(), pki.client_key.as_path()));
    ConnectOptions { tls: Some(TlsOptions::from_files(&pki.ca, id).unwrap()), ..Default::default() }
}

async fn round_trip(c: &Client) {
    let Stored::Reference(r) = c.put(Put::json("[42]").serializer("json")).await.unwrap() else { panic!() };
    assert_eq!(c.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap().json.as_deref(), Some("[42]"));
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_ca_and_refuses_plaintext() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(pki_dir.path(), "a");
    let table = pki.tls_table(false);
    let s = TestServer::start_with(|d| format!("{}\n{table}", base_config(d))).await;
    let https = s.url.replace("http://", "https://");
    let c =
        Client::connect_with(https.replace("127.0.0.1", "localhost"), tls_client_options(&pki, false)).await.unwrap();
    round_trip(&c).await;
    let c = Client::connect_with(https.clone(), tls_client_options(&pki, false)).await.unwrap();
    round_trip(&c).await;
    // Plaintext to a TLS port: the call fails, nothing is stored.
    let plain = Client::connect(s.url.clone()).await;
    if let Ok(plain) = plain {
        assert!(plain.put(Put::json("[1]").serializer("json")).await.is_err());
    }
    // A client that trusts another CA refuses the server.
    let other = Pki::generate(pki_dir.path(), "other");
    let r = Client::connect_with(https, tls_client_options(&other, false)).await;
    if let Ok(c) = r {
        assert!(c.put(Put::json("[1]").serializer("json")).await.is_err());
    }
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(pki_dir.path(), "a");
    let table = pki.tls_table(true);
    let s = TestServer::start_with(|d| format!("{}\n{table}", base_config(d))).await;
    let https = s.url.replace("http://", "https://");
    round_trip(&Client::connect_with(https.clone(), tls_client_options(&pki, true)).await.unwrap()).await;

    let refused = |r: resultstore_client::Result<Client>| async move {
        match r {
            Err(_) => {}
            Ok(c) => {
                // The handshake fails; how the client reports it is the client's business.
                c.list_blocks().await.expect_err("a client the CA did not sign is refused");
            }
        }
    };
    refused(Client::connect_with(https.clone(), tls_client_options(&pki, false)).await).await;
    // A client certificate from another CA, with the server's CA trusted.
    let other = Pki::generate(pki_dir.path(), "other");
    let mut opts = tls_client_options(&pki, false);
    opts.tls.as_mut().unwrap().identity =
        Some((std::fs::read(&other.client_cert).unwrap(), std::fs::read(&other.client_key).unwrap()));
    refused(Client::connect_with(https, opts).await).await;
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_connections() {
    let pki_dir = tempfile::tempdir().unwrap();
    let (a, b) = (Pki::generate(pki_dir.path(), "a"), Pki::generate(pki_dir.path(), "b"));
    let table_a = a.tls_table(false);
    let s = TestServer::start_with(|d| format!("{}\n{table_a}", base_config(d))).await;
    let https = s.url.replace("http://", "https://");
    let old = Client::connect_with(https.clone(), tls_client_options(&a, false)).await.unwrap();
    round_trip(&old).await;

    // A config naming a missing key is refused; the old certificate keeps serving.
    let broken = format!(
        "{}\n[tls]\ncert = \"{}\"\nkey = \"/nonexistent.key\"\n",
        base_config(s.dir.path()),
        b.server_cert.display()
    );
    let e = s.handle().reload(resultstore::Config::from_toml(&broken).unwrap()).unwrap_err().to_string();
    assert!(e.contains("/nonexistent.key"), "{e}");
    round_trip(&Client::connect_with(https.clone(), tls_client_options(&a, false)).await.unwrap()).await;

    let table_b = b.tls_table(false);
    s.handle()
        .reload(resultstore::Config::from_toml(&format!("{}\n{table_b}", base_config(s.dir.path()))).unwrap())
        .unwrap();
    round_trip(&Client::connect_with(https.clone(), tls_client_options(&b, false)).await.unwrap()).await;
    // New connections that trust only the old CA now fail; the open one keeps working.
    if let Ok(c) = Client::connect_with(https, tls_client_options(&a, false)).await {
        assert!(c.list_blocks().await.is_err());
    }
    round_trip(&old).await;
    // Turning TLS off is a restart, not a reload.
    let e = s.handle().reload(resultstore::Config::from_toml(&base_config(s.dir.path())).unwrap()).unwrap_err();
    assert!(e.to_string().contains("restart"), "{e}");
}

#[tokio::test]
async fn a_reload_changes_tokens_and_keeps_blocks_and_memory() {
    let s = TestServer::start_with(config_with_tokens).await;
    let writer = connect(&s.url, Some(WRITER)).await;
    let Stored::Reference(r) =
        writer.put(Put::json("[7]").serializer("json").storage("memory/default").persist(true)).await.unwrap()
    else {
        panic!()
    };
    // The writer token is revoked, the reader may now write.
    let next = config_with_tokens(s.dir.path())
        .replace(&token_hash(WRITER), &token_hash("brand-new-token"))
        .replace("scopes = { \"*\" = [\"read\"] }", "scopes = { \"*\" = [\"read\", \"write\"] }");
    s.handle().reload(resultstore::Config::from_toml(&next).unwrap()).unwrap();
    assert_eq!(writer.list_blocks().await.unwrap_err().code(), Some(Code::Unauthenticated));
    let reader = connect(&s.url, Some(READER)).await;
    reader.put(Put::json("[8]").serializer("json")).await.unwrap();
    // The memory block was kept as it was: its result is still there.
    assert_eq!(reader.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap().json.as_deref(), Some("[7]"));
}

type Upload = futures::channel::mpsc::Sender<pb::PutStreamRequest>;

fn chunk(bytes: &'static [u8]) -> pb::PutStreamRequest {
    pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::Chunk(Bytes::from_static(bytes))) }
}

fn end() -> pb::PutStreamRequest {
    pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::End(pb::PutStreamEnd {})) }
}

/// The header of [`open_put_stream`]'s stream: JSON, persisted, at `held-open`.
fn open_put_stream_header() -> pb::PutStreamRequest {
    pb::PutStreamRequest {
        part: Some(pb::put_stream_request::Part::Header(pb::PutStreamHeader {
            payload: pb::StreamPayload::Data as i32,
            task: Some(pb::ResultSettings {
                result_serializer: Some(resultstore_client::serializer_pb("json")),
                persist_result: Some(true),
                ..Default::default()
            }),
            key: "held-open".into(),
            ..Default::default()
        })),
    }
}

/// Opens a PutStream with its header and one chunk and keeps it open: a call in flight.
async fn open_put_stream(
    c: &Client,
) -> (Upload, tokio::task::JoinHandle<Result<tonic::Response<pb::PutResponse>, tonic::Status>>) {
    let (mut tx, rx) = futures::channel::mpsc::channel(4);
    tx.send(open_put_stream_header()).await.unwrap();
    tx.send(chunk(b"[1, ")).await.unwrap();
    let mut raw = c.raw();
    let call = tokio::spawn(async move { raw.put_stream(rx).await });
    (tx, call)
}

/// Reads `resultstore_rpc_in_flight` until it is `n`: the server has admitted the calls.
async fn wait_in_flight(s: &TestServer, n: u64) {
    for _ in 0..1000 {
        if s.handle().metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed) == n {
            return;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never {n} calls in flight");
}

#[tokio::test]
async fn calls_beyond_the_limit_are_shed_not_queued() {
    let s = TestServer::start_with(|d| {
        format!("{}\n[limits]\nmax_concurrent_requests = 1\nmax_concurrent_streams = 1\n", base_config(d))
    })
    .await;
    let (mut tx, call) = open_put_stream(&s.client).await;
    wait_in_flight(&s, 1).await;
    // A second stream is shed at once, naming the limit...
    let (mut tx2, rx2) = futures::channel::mpsc::channel(4);
    tx2.send(open_put_stream_header()).await.unwrap();
    drop(tx2);
    let e = s.client.raw().put_stream(rx2).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("limits.max_concurrent_streams"), "{e}");
    // ...while unary calls keep their own places: a stream never locks them out.
    s.client.list_blocks().await.expect("a unary call beside a stream in flight");
    tx.send(chunk(b"2]")).await.unwrap();
    tx.send(end()).await.unwrap();
    drop(tx);
    call.await.unwrap().expect("the admitted stream completes");
    // Its place is free again.
    let (mut tx3, call3) = open_put_stream(&s.client).await;
    tx3.send(chunk(b"2]")).await.unwrap();
    tx3.send(end()).await.unwrap();
    drop(tx3);
    call3.await.unwrap().expect("a stream after the first one ended");
    assert_eq!(s.handle().metrics.shed.load(std::sync::atomic::Ordering::Relaxed), 1);
    let at = Target::Location { block: String::new(), key: "held-open".into() };
    assert_eq!(s.client.resolve(at, Want::Json, ReadOptions::default()).await.unwrap().json.as_deref(), Some("[1, 2]"));
}

#[tokio::test]
async fn a_silent_stream_times_out_and_stores_nothing() {
    let s = TestServer::start_with(|d| format!("{}\n[limits]\nstream_idle_timeout = \"1s\"\n", base_config(d))).await;
    let (tx, call) = open_put_stream(&s.client).await;
    let status = call.await.unwrap().expect_err("a stream silent past stream_idle_timeout fails");
    drop(tx);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("limits.stream_idle_timeout"), "{status:?}");
    assert!(!s.client.exists("local-file-system/default", "held-open").await.unwrap());
}

async fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn metrics_count_calls_cache_and_storage() {
    let s = TestServer::start_with(|d| format!("{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n", base_config(d))).await;
    let addr = s.handle().metrics_addr.expect("metrics listener");
    let Stored::Reference(r) = s.client.put(Put::json("[1]").serializer("json").persist(true)).await.unwrap() else {
        panic!()
    };
    s.client.resolve(&r, Want::Json, ReadOptions::default()).await.unwrap();
    s.client.resolve(&r, Want::Json, ReadOptions { bypass_cache: true, ..Default::default() }).await.unwrap();
    let missing = Target::Location { block: String::new(), key: "missing".into() };
    s.client.get(missing, ReadOptions::default()).await.unwrap_err();
    s.store().cache().settle().await;
    let text = scrape(addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    for line in [
        "resultstore_rpc_requests_total{method=\"Put\",code=\"OK\"} 1",
        "resultstore_rpc_requests_total{method=\"Resolve\",code=\"OK\"} 2",
        "resultstore_rpc_requests_total{method=\"Get\",code=\"NOT_FOUND\"} 1",
        "resultstore_rpc_duration_seconds_count{method=\"Resolve\"} 2",
        "resultstore_rpc_duration_seconds_bucket{method=\"Resolve\",le=\"+Inf\"} 2",
        "resultstore_cache_hits_total 1",
        "resultstore_cache_entries 1",
        "resultstore_storage_operations_total{block=\"local-file-system/default\",operation=\"put\",outcome=\"ok\"} 1",
        "resultstore_storage_operations_total{block=\"local-file-system/default\",operation=\"get\",outcome=\"ok\"} 1",
        "resultstore_storage_operations_total{block=\"local-file-system/default\",operation=\"get\",outcome=\"not_found\"} 1",
        "resultstore_storage_duration_seconds_count{block=\"local-file-system/default\",operation=\"get\"} 2",
        "resultstore_rpc_in_flight 0",
        "resultstore_draining 0",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
    assert!(scrape(addr, "/healthz").await.ends_with("ok\n"));
    assert!(scrape(addr, "/nope").await.starts_with("HTTP/1.1 404"));
}

async fn health(url: &str, service: &str) -> Result<i32, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    Ok(h.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await?.into_inner().status)
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_refuses_new_calls_and_finishes_those_in_flight() {
    let mut s = TestServer::start_with(|d| format!("shutdown_grace_period = \"30s\"\n{}", base_config(d))).await;
    const SERVING: i32 = 1;
    const NOT_SERVING: i32 = 2;
    assert_eq!(health(&s.url, "").await.unwrap(), SERVING);
    assert_eq!(health(&s.url, "resultstore.v1.ResultStore").await.unwrap(), SERVING);
    let channel = tonic::transport::Endpoint::from_shared(s.url.clone()).unwrap().connect().await.unwrap();
    let mut watch = tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest { service: "resultstore.v1.ResultStore".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, SERVING);

    let (mut tx, call) = open_put_stream(&s.client).await;
    wait_in_flight(&s, 1).await;
    let handle = s.take_handle();
    let stopping = tokio::spawn(handle.shutdown());
    assert_eq!(watch.next().await.unwrap().unwrap().status, NOT_SERVING, "health turns NOT_SERVING first");
    drop(watch);
    // New calls are refused: on the open connection (GOAWAY; the client reports it as
    // it likes) and on a new one (nothing listens any more).
    s.client.list_blocks().await.expect_err("no new call on the draining connection");
    assert_eq!(health(&s.url, "").await.unwrap_err().code(), Code::Unavailable);
    // The call in flight finishes, and then the server ends.
    tx.send(chunk(b"2]")).await.unwrap();
    tx.send(end()).await.unwrap();
    drop(tx);
    call.await.unwrap().expect("the call in flight completes during the drain");
    stopping.await.unwrap().expect("clean shutdown");
    s.restart().await;
    let at = Target::Location { block: String::new(), key: "held-open".into() };
    assert_eq!(s.client.resolve(at, Want::Json, ReadOptions::default()).await.unwrap().json.as_deref(), Some("[1, 2]"));
}
