//! resultstore-bench: resultstore's scenarios against baselines measured in the same run.
//!
//! `scripts/bench` builds this in release mode and runs it; `--quick` (what CI runs) gives
//! each scenario about a second, so the suite cannot rot, and its figures are not judged.
//!
//! Everything runs on this machine, on 127.0.0.1: resultstore (in this process, on its own
//! two-thread runtime), the bare tonic server (same, on its own runtime), the load
//! generator (a third runtime), moto for S3, and Prefect in Python subprocesses. Server and
//! load share the cores, as in `../shared/STACK-NOTES.md`'s baselines. Baselines:
//! - **bare tonic**: the same service definition answering from memory ([`bare`]);
//! - **object_store**: direct reads and writes of the same objects, no gRPC;
//! - **Prefect**: `ResultStore.read` in Python against the same files
//!   (`bench/prefect_read.py`, with `.test-env/prefect`).
//!
//! The many-clients scenario re-runs this binary as `reader` subprocesses; the tier's
//! scenarios ([`tier`]) run `resultstore serve` processes (the binary built beside it).

mod bare;
mod h2load;
mod load;
mod tier;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use load::{closed_loop, human, repeat};
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, WriteMultipart};
use resultstore::formats::record::{RecordFormat, ResultRecord};
use resultstore::formats::serializer::SerializerConfig;
use resultstore::wire::server::ServerHandle;
use resultstore::{Config, ResultStore};
use resultstore_client::{Client, Put, ReadOptions, Target, Want};

const MIB: usize = 1 << 20;
/// Client and server message limit here: large enough for the 64 MiB unary Resolve.
const MAX_MESSAGE: usize = 128 << 20;
/// HTTP/2 connections the load generator spreads its tasks over.
const CONNECTIONS: usize = 4;

#[derive(Debug, Parser)]
#[command(name = "resultstore-bench", about = "resultstore's benchmark suite")]
struct Cli {
    /// About a second per scenario and smaller sizes (CI); figures are not judged.
    #[arg(long)]
    quick: bool,
    /// Also write the table (markdown) to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run only the scenario groups whose name contains this (`hit`, `put`, `cold`,
    /// `streams`, `stampede`, `many`, `prefect`, `tier`, `memory`), e.g. to profile one.
    #[arg(long)]
    only: Option<String>,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// One client process of the many-clients scenario: resolves `count` keys once each.
    Reader {
        #[arg(long)]
        url: String,
        #[arg(long)]
        block: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
    },
    /// The bare tonic server as its own process (for `h2load`): prints `bare listening on
    /// ADDR` and serves until killed.
    Bare,
}

/// One line of the table.
pub(crate) struct Row {
    scenario: String,
    ours: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(scenario: impl Into<String>, ours: impl Into<String>, baseline: impl Into<String>) -> Self {
        Row {
            scenario: scenario.into(),
            ours: ours.into(),
            baseline: baseline.into(),
            ratio: None,
            target: "-".into(),
            met: None,
        }
    }
    fn ratio(mut self, r: f64) -> Self {
        self.ratio = Some(r);
        self
    }
    fn target(mut self, t: impl Into<String>, met: bool) -> Self {
        self.target = t.into();
        self.met = Some(met);
        self
    }
}

/// The suite's shared parts.
struct Bench {
    quick: bool,
    only: Option<String>,
    dir: PathBuf,
    ours: Vec<Client>,
    bare: Vec<Client>,
    store: Arc<ResultStore>,
    url: String,
}

impl Bench {
    fn secs(&self) -> Duration {
        if self.quick { Duration::from_millis(800) } else { Duration::from_secs(4) }
    }
    fn gets(&self, block: &str) -> u64 {
        self.store.blocks().get(block).map(|b| b.counters.snapshot().get).unwrap_or(0)
    }
}

fn config(dir: &Path, quick: bool) -> String {
    let d = dir.display();
    let _ = quick;
    format!(
        r#"
default_block = "local-file-system/bench"
[cache]
capacity = "512MiB"
max_entry_size = "32MiB"
fill_budget = "256MiB"
[limits]
max_message_size = "{MAX_MESSAGE}"
[blocks."local-file-system/bench"]
url = "file://{d}/local"
[blocks."local-file-system/split"]
url = "file://{d}/split"
format = "split"
metadata_url = "file://{d}/split-meta"
[blocks."memory/bench"]
url = "memory://"
"#
    )
}

/// A JSON document of exactly `len` bytes (a string), as `json` serializer bytes.
fn json_doc(len: usize, seed: u8) -> Bytes {
    let mut v = vec![b'a' + seed % 26; len.max(2)];
    v[0] = b'"';
    let last = v.len() - 1;
    v[last] = b'"';
    Bytes::from(v)
}

/// A JSON string document of about `size` bytes as 1 MiB pieces that share one buffer, so
/// a large payload costs 1 MiB of the load generator's memory.
fn json_doc_pieces(size: usize, seed: u8) -> Vec<Bytes> {
    let piece = json_doc(MIB, seed).slice(1..MIB - 1);
    let mut v = vec![Bytes::from_static(b"\"")];
    v.extend(std::iter::repeat_n(piece, size / MIB));
    v.push(Bytes::from_static(b"\""));
    v
}

/// object_store reads of `{prefix}{i % n}` from `concurrency` tasks: the storage's ceiling.
async fn direct_gets(
    store: Arc<dyn object_store::ObjectStore>,
    prefix: &'static str,
    n: u64,
    concurrency: usize,
    secs: Duration,
) -> load::Stats {
    closed_loop(&[store], concurrency, secs, move |s, i| async move {
        Ok(s.get(&StorePath::from(format!("{prefix}{}", i % n))).await?.bytes().await?.len())
    })
    .await
}

/// The large cold result: 64 MiB, 8 MiB in quick mode.
fn cold_size(quick: bool) -> usize {
    if quick { 8 * MIB } else { 64 * MIB }
}

fn size_name(n: usize) -> String {
    if n >= MIB { format!("{} MiB", n / MIB) } else { format!("{} KiB", n / 1024) }
}

fn loc(block: &str, key: &str) -> Target {
    Target::Location { block: block.into(), key: key.into() }
}

fn main() -> anyhow::Result<()> {
    resultstore::runtime::memory::bound_allocator_arenas();
    let cli = Cli::parse();
    match cli.command {
        Some(Sub::Reader { url, block, prefix, count }) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            return rt.block_on(reader(url, block, prefix, count));
        }
        Some(Sub::Bare) => {
            // The runtime `resultstore serve` has: a worker per core.
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            return rt.block_on(async {
                let addr = bare::serve(hit_values(), MAX_MESSAGE).await?;
                println!("bare listening on {addr}");
                std::future::pending::<anyhow::Result<()>>().await
            });
        }
        None => {}
    }
    // The logging `resultstore serve` runs with, so the server here pays for its spans too.
    resultstore::telemetry::init_logging();
    let dir = tempfile::tempdir()?;
    let config = Config::from_toml(&config(dir.path(), cli.quick))?;

    let server_rt = runtime("server")?;
    let handle: ServerHandle = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        anyhow::Ok(resultstore::wire::server::start(&config, listener, std::future::pending()).await?)
    })?;
    let mut values = hit_values();
    values.insert("cold/big".into(), json_doc(cold_size(cli.quick), 2));
    let bare_rt = runtime("bare")?;
    let bare_addr = bare_rt.block_on(bare::serve(values.clone(), MAX_MESSAGE))?;

    let load_rt = runtime("load")?;
    let started = Instant::now();
    let rows = load_rt.block_on(async {
        let url = format!("http://{}", handle.local_addr);
        let b = Bench {
            quick: cli.quick,
            only: cli.only.clone(),
            dir: dir.path().to_owned(),
            ours: connections(&url).await?,
            bare: connections(&format!("http://{bare_addr}")).await?,
            store: handle.store(),
            url,
        };
        run_all(&b, &values).await
    })?;
    let table = render(&rows, cli.quick, started.elapsed());
    println!("{table}");
    if let Some(out) = cli.out {
        std::fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    }
    drop(load_rt);
    drop(bare_rt);
    drop(server_rt);
    let failed = load::FAILED.load(std::sync::atomic::Ordering::Relaxed);
    if failed > 0 {
        bail!("{failed} benchmark requests failed (see the first error of each scenario above)");
    }
    Ok(())
}

/// The cache-hit scenarios' values, `hit/{size}`: the same in every process.
fn hit_values() -> HashMap<String, Bytes> {
    [1024, 64 * 1024, MIB].iter().map(|&n| (format!("hit/{n}"), json_doc(n, 0))).collect()
}

fn runtime(name: &str) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name(name).enable_all().build()?)
}

async fn connections(url: &str) -> anyhow::Result<Vec<Client>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(Client::connect_with_limit(url.to_owned(), MAX_MESSAGE).await?);
    }
    Ok(out)
}

async fn run_all(b: &Bench, values: &HashMap<String, Bytes>) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let on = |group: &str| {
        let run = b.only.as_deref().is_none_or(|o| group.contains(o));
        if run {
            eprintln!("bench: {group}");
        }
        run
    };
    if on("hit: cache-hit Resolve") {
        cache_hits(b, values, &mut rows).await?;
    }
    if on("h2load: separate processes, nghttp2's generator") {
        h2load_scenarios(b, values, &mut rows).await?;
    }
    if on("put: Put") {
        puts(b, &mut rows).await?;
        json_validation(b, &mut rows).await?;
    }
    if on("cold: cold Resolve") {
        cold_local(b, &mut rows).await?;
        cold_s3(b, &mut rows).await?;
    }
    if on("streams: GetStream and PutStream") {
        streams(b, &mut rows).await?;
    }
    if on("stampede") {
        stampede(b, &mut rows).await?;
    }
    if on("many clients") {
        many_clients(b, &mut rows).await?;
    }
    if on("prefect: Prefect's read path") {
        prefect_read_path(b, &mut rows).await?;
        python_client(b, &mut rows).await?;
    }
    if on("tier: one cache for every client (replicas, sidecars)") {
        tier::scenarios(b.quick, b.secs(), &mut rows).await?;
    }
    if on("memory: stream memory") {
        stream_memory(b, &mut rows).await?;
    }
    Ok(rows)
}

/// Measures `a` and `b` in alternating rounds (a, b, a, b) and keeps each one's better
/// round, so neither pays alone for whatever else the machine was doing at the time.
async fn alternate<FA, FB, A, B>(a: FA, b: FB) -> (load::Stats, load::Stats)
where
    FA: Fn() -> A,
    FB: Fn() -> B,
    A: Future<Output = load::Stats>,
    B: Future<Output = load::Stats>,
{
    let (a1, b1) = (a().await, b().await);
    let (a2, b2) = (a().await, b().await);
    let best = |x: load::Stats, y: load::Stats| if x.rps() >= y.rps() { x } else { y };
    (best(a1, a2), best(b1, b2))
}

async fn resolve_raw(c: Client, block: &'static str, key: String, bypass: bool) -> anyhow::Result<usize> {
    let opts = ReadOptions { bypass_cache: bypass, ..Default::default() };
    let r = c.resolve(loc(block, &key), Want::Raw, opts).await?;
    Ok(r.data.map_or(0, |d| d.len()))
}

/// Resolve of cached results against the bare server returning the same bytes.
async fn cache_hits(b: &Bench, values: &HashMap<String, Bytes>, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    for &size in &[1024usize, 64 * 1024, MIB] {
        let key = format!("hit/{size}");
        let put = Put::data(values[&key].clone()).serializer("json").storage("local-file-system/bench").key(&key);
        b.ours[0].put(put.persist(true)).await?;
        for &c in &[1usize, 64] {
            let (ko, kb) = (key.clone(), key.clone());
            let (ours, bare) = alternate(
                || {
                    let k = ko.clone();
                    closed_loop(&b.ours, c, b.secs() / 2, move |cl, _| {
                        resolve_raw(cl, "local-file-system/bench", k.clone(), false)
                    })
                },
                || {
                    let k = kb.clone();
                    closed_loop(&b.bare, c, b.secs() / 2, move |cl, _| {
                        resolve_raw(cl, "memory/default", k.clone(), false)
                    })
                },
            )
            .await;
            let ratio = ours.rps() / bare.rps();
            let p99 = ours.p_ms(0.99) / bare.p_ms(0.99);
            let mut row = Row::new(
                format!("Resolve hit {}, concurrency {c}", size_name(size)),
                ours.summary(),
                format!("bare tonic: {}", bare.summary()),
            )
            .ratio(ratio);
            if size <= 64 * 1024 {
                row = row.target(format!("≥0.95× req/s and p99 ≤1.2× (p99 {p99:.2}×)"), ratio >= 0.95 && p99 <= 1.2);
            }
            rows.push(row);
        }
    }
    Ok(())
}

/// Cache-hit Resolve and Put 1 KiB, `resultstore serve` and the bare server each as its
/// own process, driven by `h2load` (see `h2load.rs`).
async fn h2load_scenarios(b: &Bench, values: &HashMap<String, Bytes>, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    use resultstore_proto::v1 as pb;
    if !h2load::available() {
        bail!("h2load is not installed (Debian's nghttp2-client; scripts/test-env installs it)");
    }
    let config = b.dir.join("h2load.toml");
    std::fs::create_dir_all(b.dir.join("h2load"))?;
    std::fs::write(&config, self::config(&b.dir.join("h2load"), b.quick))?;
    let (ours, bare) = (h2load::resultstore(&config)?, h2load::bare()?);
    let client = Client::connect_with_limit(format!("http://{}", ours.addr), MAX_MESSAGE).await?;
    let secs = b.secs();
    let dir = b.dir.clone();
    // Alternating rounds (ours, bare, ours, bare), the better of each, as `alternate`.
    let measure = |method: &'static str, body: PathBuf, clients: usize, streams: usize, min: u64| {
        let (a, z, secs) = (ours.addr.clone(), bare.addr.clone(), secs / 2);
        tokio::task::spawn_blocking(move || -> anyhow::Result<(load::Stats, load::Stats)> {
            let best = |x: load::Stats, y: load::Stats| if x.rps() >= y.rps() { x } else { y };
            let o1 = h2load::run(&a, method, &body, clients, streams, secs, min)?;
            let b1 = h2load::run(&z, method, &body, clients, streams, secs, min)?;
            let o2 = h2load::run(&a, method, &body, clients, streams, secs, min)?;
            let b2 = h2load::run(&z, method, &body, clients, streams, secs, min)?;
            Ok((best(o1, o2), best(b1, b2)))
        })
    };
    for size in [1024usize, 64 * 1024] {
        let key = format!("hit/{size}");
        let put = Put::data(values[&key].clone()).serializer("json").storage("memory/bench").key(&key);
        client.put(put.persist(true)).await?;
        resolve_raw(client.clone(), "memory/bench", key.clone(), false).await?;
        let body = dir.join(format!("resolve-{size}.bin"));
        let request = pb::ResolveRequest {
            target: Some(pb::resolve_request::Target::Location(pb::Location { block: "memory/bench".into(), key })),
            want: pb::Want::Raw as i32,
            ..Default::default()
        };
        h2load::body(&body, &request)?;
        for (clients, streams) in [(1, 1), (4, 16)] {
            let (o, z) = measure("Resolve", body.clone(), clients, streams, size as u64).await??;
            let (ratio, p99) = (o.rps() / z.rps(), o.p_ms(0.99) / z.p_ms(0.99));
            rows.push(
                Row::new(
                    format!("h2load: Resolve hit {}, {} in flight", size_name(size), clients * streams),
                    o.summary(),
                    format!("bare tonic process: {}", z.summary()),
                )
                .ratio(ratio)
                .target(format!("≥0.95× req/s and p99 ≤1.2× (p99 {p99:.2}×)"), ratio >= 0.95 && p99 <= 1.2),
            );
        }
    }
    // The HTTP API (issue 19): a cached 1 KiB result read as JSON over HTTP, against the
    // gRPC Resolve of the same result as JSON, same process, same run.
    let key = "hit/1024".to_owned();
    let body = dir.join("resolve-json-1024.bin");
    let request = pb::ResolveRequest {
        target: Some(pb::resolve_request::Target::Location(pb::Location { block: "memory/bench".into(), key })),
        want: pb::Want::Json as i32,
        ..Default::default()
    };
    h2load::body(&body, &request)?;
    let path = "/v1/blocks/memory/bench/results/hit/1024?want=json";
    for (clients, streams, h1) in [(1, 1, false), (4, 16, false), (1, 1, true), (16, 1, true)] {
        let (a, log, body, secs) = (ours.addr.clone(), dir.join("http.log.tsv"), body.clone(), secs / 2);
        let (http, grpc) = tokio::task::spawn_blocking(move || -> anyhow::Result<(load::Stats, load::Stats)> {
            let best = |x: load::Stats, y: load::Stats| if x.rps() >= y.rps() { x } else { y };
            let h1_ = h2load::get(&a, path, h1, &log, clients, streams, secs, 1024)?;
            let g1 = h2load::run(&a, "Resolve", &body, clients, streams, secs, 1024)?;
            let h2_ = h2load::get(&a, path, h1, &log, clients, streams, secs, 1024)?;
            let g2 = h2load::run(&a, "Resolve", &body, clients, streams, secs, 1024)?;
            Ok((best(h1_, h2_), best(g1, g2)))
        })
        .await??;
        rows.push(
            Row::new(
                format!(
                    "h2load: HTTP GET JSON of a cached 1 KiB result ({}), {} in flight",
                    if h1 { "HTTP/1.1" } else { "HTTP/2" },
                    clients * streams
                ),
                http.summary(),
                format!("gRPC Resolve (JSON), same server: {}", grpc.summary()),
            )
            .ratio(http.rps() / grpc.rps()),
        );
    }
    // Put 1 KiB of JSON for the server to serialize (validation included), a new key each.
    let body = dir.join("put-1024.bin");
    let doc = String::from_utf8(json_doc(1024, 1).to_vec())?;
    let request = pb::PutRequest {
        payload: Some(pb::put_request::Payload::Json(doc)),
        task: Some(pb::ResultSettings {
            persist_result: Some(true),
            result_storage: "memory/bench".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    h2load::body(&body, &request)?;
    let (o, z) = measure("Put", body, 4, 16, 100).await??;
    let ratio = o.rps() / z.rps();
    rows.push(
        Row::new(
            "h2load: Put 1 KiB JSON to memory, 64 in flight",
            o.summary(),
            format!("bare tonic process: {}", z.summary()),
        )
        .ratio(ratio)
        .target("≥0.6× req/s", ratio >= 0.6),
    );
    Ok(())
}

async fn put_one(c: Client, block: &'static str, data: Bytes, n: u64) -> anyhow::Result<usize> {
    put_as(c, block, "json", data, n).await
}

async fn put_as(c: Client, block: &'static str, serializer: &str, data: Bytes, n: u64) -> anyhow::Result<usize> {
    let len = data.len();
    let put = Put::data(data).serializer(serializer).storage(block).persist(true).key(format!("put/{}", n % 64));
    c.put(put).await?;
    Ok(len)
}

/// A serializer the server knows nothing of: its bytes are stored unchecked, so a Put of
/// the same JSON text under it is the Put path without the JSON validation.
const UNCHECKED_SERIALIZER: &str = r#"{"type":"bench.unchecked"}"#;

/// What JSON validation costs on the Put path: the same JSON bytes put with the `json`
/// serializer (checked by the streaming validator before anything is replaced) and with a
/// serializer the server does not know (not checked), alternating; and the validator
/// alone against SHA-256 of the same bytes (which every Put computes), in this process.
async fn json_validation(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    for (size, c) in [(1024usize, 64usize), (MIB, 8)] {
        let data = json_doc(size, 1);
        let (checked, unchecked) = alternate(
            || {
                let d = data.clone();
                closed_loop(&b.ours, c, b.secs() / 2, move |cl, n| put_as(cl, "memory/bench", "json", d.clone(), n))
            },
            || {
                let d = data.clone();
                closed_loop(&b.ours, c, b.secs() / 2, move |cl, n| {
                    put_as(cl, "memory/bench", UNCHECKED_SERIALIZER, d.clone(), n)
                })
            },
        )
        .await;
        rows.push(
            Row::new(
                format!("Put {} JSON to memory/bench with validation, concurrency {c}", size_name(size)),
                checked.summary(),
                format!("the same bytes unchecked (unknown serializer): {}", unchecked.summary()),
            )
            .ratio(checked.rps() / unchecked.rps()),
        );
    }
    let text = json_doc(if b.quick { 8 * MIB } else { 64 * MIB }, 3);
    let rate = |f: &dyn Fn()| {
        let started = Instant::now();
        let mut rounds = 0u32;
        while started.elapsed() < b.secs() / 4 || rounds < 3 {
            f();
            rounds += 1;
        }
        (text.len() as f64 * f64::from(rounds)) / started.elapsed().as_secs_f64() / MIB as f64
    };
    let validator = rate(&|| {
        resultstore::formats::serializer::json_check::check_json(&text).expect("the bench's JSON is JSON");
    });
    let sha = rate(&|| {
        std::hint::black_box(<sha2::Sha256 as sha2::Digest>::digest(&text));
    });
    rows.push(
        Row::new(
            format!("JSON validator alone on {} of JSON text", size_name(text.len())),
            format!("{validator:.0} MiB/s"),
            format!("SHA-256 of the same bytes: {sha:.0} MiB/s"),
        )
        .ratio(validator / sha),
    );
    Ok(())
}

/// Put to memory and local files against the bare server's Put of the same payload.
async fn puts(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    for (size, c) in [(1024usize, 64usize), (MIB, 8)] {
        let data = json_doc(size, 1);
        for block in ["memory/bench", "local-file-system/bench"] {
            let (ours, bare) = alternate(
                || {
                    let d = data.clone();
                    closed_loop(&b.ours, c, b.secs() / 2, move |cl, n| put_one(cl, block, d.clone(), n))
                },
                || {
                    let d = data.clone();
                    closed_loop(&b.bare, c, b.secs() / 2, move |cl, n| put_one(cl, "memory/default", d.clone(), n))
                },
            )
            .await;
            let ratio = ours.rps() / bare.rps();
            let mut baseline = format!("bare tonic: {}", bare.summary());
            let mut row = Row::new(format!("Put {} to {block}, concurrency {c}", size_name(size)), ours.summary(), "");
            if block.starts_with("local") {
                // What the storage itself takes: object_store writing the same records to
                // the same number of keys at the same concurrency (no gRPC, no encoding).
                let json = SerializerConfig::from_type("json")?;
                let record = ResultRecord::new(RecordFormat::Prefect3, "put/0", json, None, data.clone());
                let record = Bytes::from(record.encode_prefect3().context("a UTF-8 record")?);
                std::fs::create_dir_all(b.dir.join("direct"))?;
                let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(b.dir.join("direct"))?);
                let direct = closed_loop(&[store], c, b.secs() / 2, move |s, n| {
                    let r = record.clone();
                    async move {
                        let len = r.len();
                        s.put(&StorePath::from(format!("put/{}", n % 64)), r.into()).await?;
                        Ok(len)
                    }
                })
                .await;
                let to_store = ours.rps() / direct.rps();
                baseline = format!("object_store put of the record: {}; {baseline}", direct.summary());
                row = row.ratio(to_store);
                if size == 1024 {
                    row = row.target("≥0.8× object_store's req/s", to_store >= 0.8);
                }
            } else {
                row = row.ratio(ratio);
                if size == 1024 {
                    row = row.target("≥0.6× req/s", ratio >= 0.6);
                }
            }
            row.baseline = baseline;
            rows.push(row);
        }
    }
    Ok(())
}

/// Cold Resolve (every request reads storage) of a large result in local files, against
/// object_store reading the same file.
async fn cold_local(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let size = cold_size(b.quick);
    let data = json_doc(size, 2);
    let put = Put::data(Bytes::new()).serializer("json").storage("local-file-system/split").key("cold/big");
    b.ours[0].put_stream(put, futures::stream::iter([data.clone()])).await?;
    let ours =
        repeat(b.secs(), || resolve_raw(b.ours[0].clone(), "local-file-system/split", "cold/big".into(), true)).await;
    let store = object_store::local::LocalFileSystem::new_with_prefix(b.dir.join("split"))?;
    let path = StorePath::from("cold/big");
    let direct = repeat(b.secs(), || async { Ok(store.get(&path).await?.bytes().await?.len()) }).await;
    // The transport's own ceiling for a reply this size: the bare server sends the same bytes.
    let bare = repeat(b.secs(), || resolve_raw(b.bare[0].clone(), "memory/default", "cold/big".into(), false)).await;
    let ratio = ours.mib_s() / direct.mib_s();
    rows.push(
        Row::new(
            format!("cold Resolve {} from local-file-system (split), concurrency 1", size_name(size)),
            ours.summary(),
            format!(
                "object_store get: {}; bare tonic reply of the same bytes from memory: {}",
                direct.summary(),
                bare.summary()
            ),
        )
        .ratio(ratio)
        .target("≥0.7× MiB/s", ratio >= 0.7),
    );
    // Many small cold reads.
    let n = 200;
    for i in 0..n {
        let put = Put::data(json_doc(64 * 1024, 3)).serializer("json").storage("local-file-system/bench");
        b.ours[0].put(put.persist(true).key(format!("cold/small/{i}"))).await?;
    }
    let ours = closed_loop(&b.ours, 16, b.secs(), move |cl, i| {
        resolve_raw(cl, "local-file-system/bench", format!("cold/small/{}", i % n), true)
    })
    .await;
    let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(b.dir.join("local"))?);
    let direct = direct_gets(store, "cold/small/", n, 16, b.secs()).await;
    // The transport's ceiling for a 64 KiB reply at this concurrency: the bare server.
    let bare =
        closed_loop(&b.bare, 16, b.secs(), |cl, _| resolve_raw(cl, "memory/default", "hit/65536".into(), false)).await;
    let ratio = ours.rps() / direct.rps();
    rows.push(
        Row::new(
            "cold Resolve 64 KiB records from local-file-system (prefect3), concurrency 16",
            ours.summary(),
            format!(
                "object_store get of the record: {}; bare tonic reply of 64 KiB from memory: {}",
                direct.summary(),
                bare.summary()
            ),
        )
        .ratio(ratio)
        .target("≥0.5× object_store's req/s", ratio >= 0.5),
    );
    Ok(())
}

/// Cold Resolve from the S3 test server (moto), against object_store reading it directly.
async fn cold_s3(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let moto = resultstore_e2e::servers::moto_s3("bench");
    let options = resultstore_e2e::servers::s3_options(moto.port);
    let dir = tempfile::tempdir()?;
    let cfg = format!(
        "{}\n[blocks.\"s3-bucket/bench\"]\nurl = \"s3://bench/r\"\noptions = {options}\n",
        config(dir.path(), b.quick)
    );
    let config = Config::from_toml(&cfg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let handle = resultstore::wire::server::start(&config, listener, std::future::pending()).await?;
    let client = Client::connect_with_limit(format!("http://{}", handle.local_addr), MAX_MESSAGE).await?;
    let n = 32;
    for i in 0..n {
        let put = Put::data(json_doc(MIB, 4)).serializer("json").storage("s3-bucket/bench").persist(true);
        client.put(put.key(format!("cold/{i}"))).await?;
    }
    let ours = closed_loop(&[client], 8, b.secs(), move |cl, i| {
        resolve_raw(cl, "s3-bucket/bench", format!("cold/{}", i % n), true)
    })
    .await;
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(format!("http://127.0.0.1:{}", moto.port))
        .with_allow_http(true)
        .with_bucket_name("bench")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()?;
    let direct = direct_gets(Arc::new(s3), "r/cold/", n, 8, b.secs()).await;
    rows.push(
        Row::new(
            "cold Resolve 1 MiB records from S3 (moto), concurrency 8",
            ours.summary(),
            format!("object_store get of the record: {}", direct.summary()),
        )
        .ratio(ours.mib_s() / direct.mib_s()),
    );
    handle.shutdown().await?;
    Ok(())
}

/// GetStream and PutStream of a large result (local split block), against object_store's
/// own get and multipart put of the same bytes.
async fn streams(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let size = if b.quick { 32 * MIB } else { 256 * MIB };
    let pieces = move || futures::stream::iter(json_doc_pieces(size, 5));
    let c = b.ours[0].clone();
    let put = || Put::data(Bytes::new()).serializer("json").storage("local-file-system/split").key("stream/big");
    let ours_put = repeat(b.secs(), || async {
        let stored = c.put_stream(put(), pieces()).await?;
        Ok(stored.reference().map_or(0, |r| r.0.size as usize))
    })
    .await;
    let store = object_store::local::LocalFileSystem::new_with_prefix(b.dir.join("split"))?;
    let direct_put = repeat(b.secs(), || async {
        let upload = store.put_multipart(&StorePath::from("stream/direct")).await?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, 8 * MIB);
        let mut s = pieces();
        let mut n = 0;
        while let Some(p) = s.next().await {
            w.wait_for_capacity(2).await?;
            n += p.len();
            w.write(&p);
        }
        w.finish().await?;
        Ok(n)
    })
    .await;
    rows.push(
        Row::new(
            format!("PutStream {} to local-file-system (split)", size_name(size)),
            ours_put.summary(),
            format!("object_store multipart put: {}", direct_put.summary()),
        )
        .ratio(ours_put.mib_s() / direct_put.mib_s()),
    );
    let ours_get = repeat(b.secs(), || async {
        let mut s = c.get_stream(loc("local-file-system/split", "stream/big"), ReadOptions::default()).await?;
        let mut n = 0;
        while let Some(chunk) = s.next_chunk().await? {
            n += chunk.len();
        }
        Ok(n)
    })
    .await;
    let path = StorePath::from("stream/big");
    let direct_get = repeat(b.secs(), || async { Ok(store.get(&path).await?.bytes().await?.len()) }).await;
    let gib_s = ours_get.mib_s() / 1024.0;
    let base_gib_s = direct_get.mib_s() / 1024.0;
    let target =
        if base_gib_s >= 1.5 { Some(("≥1 GiB/s (baseline ≥1.5 GiB/s)".to_owned(), gib_s >= 1.0)) } else { None };
    let mut row = Row::new(
        format!("GetStream {} from local-file-system (split)", size_name(size)),
        ours_get.summary(),
        format!("object_store get: {}", direct_get.summary()),
    )
    .ratio(ours_get.mib_s() / direct_get.mib_s());
    match target {
        Some((t, met)) => row = row.target(t, met),
        None => row.target = format!("≥1 GiB/s applies when the baseline reads ≥1.5 GiB/s (here {base_gib_s:.2})"),
    }
    rows.push(row);
    Ok(())
}

/// Writes a prefect3 record of `data` (json serializer) straight into the local block, so
/// the service has never seen it.
fn write_cold_record(b: &Bench, key: &str, data: Bytes) -> anyhow::Result<()> {
    let json = SerializerConfig::from_type("json")?;
    let record = ResultRecord::new(RecordFormat::Prefect3, key, json, None, data);
    let path = b.dir.join("local").join(key);
    std::fs::create_dir_all(path.parent().context("a parent")?)?;
    std::fs::write(&path, record.encode_prefect3().context("a UTF-8 record")?)?;
    Ok(())
}

/// 64 clients resolve one cold key at once: one storage read serves them all.
async fn stampede(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mut reads = Vec::new();
    for round in 0..3 {
        let key = format!("stampede/{round}");
        write_cold_record(b, &key, json_doc(MIB, 6))?;
        let before = b.gets("local-file-system/bench");
        let barrier = Arc::new(tokio::sync::Barrier::new(64));
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let (c, key, barrier) = (b.ours[i % CONNECTIONS].clone(), key.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    resolve_raw(c, "local-file-system/bench", key, false).await
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        reads.push(b.gets("local-file-system/bench") - before);
    }
    let max = reads.iter().copied().max().unwrap_or(0);
    rows.push(
        Row::new(
            "stampede: 64 clients resolve one cold 1 MiB key (3 rounds)",
            format!("storage GETs per round: {reads:?}"),
            "without singleflight: up to 64",
        )
        .target("exactly one storage read", reads.iter().all(|&r| r == 1) && max == 1),
    );
    Ok(())
}

/// The Python that has Prefect (`.test-env/prefect`, or `RESULTSTORE_BENCH_PYTHON`).
fn prefect_python() -> Option<PathBuf> {
    let p = std::env::var_os("RESULTSTORE_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-env/prefect/bin/python"));
    p.exists().then_some(p)
}

fn prefect_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prefect_read.py")
}

/// Runs the Prefect reader; returns its JSON report.
fn run_prefect(python: &Path, args: &[String]) -> anyhow::Result<std::process::Child> {
    let home = std::env::temp_dir().join("resultstore-bench-prefect-home");
    Ok(Command::new(python)
        .arg(prefect_script())
        .args(args)
        .env("PREFECT_HOME", home)
        .env_remove("PREFECT_API_URL")
        .env("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?)
}

fn report(child: std::process::Child) -> anyhow::Result<serde_json::Value> {
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("a benchmark subprocess failed ({})", out.status);
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// 8 client processes each read the same results once: resultstore reads storage once
/// per result; Prefect's direct path once per client and result.
async fn many_clients(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let count = if b.quick { 100 } else { 1000 };
    let clients = 8;
    for i in 0..count {
        write_cold_record(b, &format!("many/{i}"), json_doc(1024, 7))?;
    }
    let before = b.gets("local-file-system/bench");
    let started = Instant::now();
    let exe = std::env::current_exe()?;
    let children: Vec<_> = (0..clients)
        .map(|_| {
            Command::new(&exe)
                .args(["reader", "--url", &b.url, "--block", "local-file-system/bench", "--prefix", "many/"])
                .args(["--count", &count.to_string()])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    for c in children {
        report(c)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let ours = b.gets("local-file-system/bench") - before;
    let (baseline, prefect_gets) = match prefect_python() {
        Some(py) => {
            let started = Instant::now();
            let args: Vec<String> = ["many", "--dir", &b.dir.join("local").display().to_string(), "--prefix", "many/"]
                .iter()
                .map(|s| s.to_string())
                .chain(["--count".into(), count.to_string()])
                .collect();
            let children: Vec<_> = (0..clients).map(|_| run_prefect(&py, &args)).collect::<Result<_, _>>()?;
            let mut reads = 0;
            for c in children {
                reads += report(c)?["reads"].as_u64().unwrap_or(0);
            }
            let psecs = started.elapsed().as_secs_f64();
            (
                format!(
                    "Prefect ResultStore.read, 8 processes: {reads} storage reads, {} reads/s overall",
                    human((clients * count) as f64 / psecs)
                ),
                Some(reads),
            )
        }
        None => ("Prefect is not installed (.test-env/prefect): run scripts/test-env".to_owned(), None),
    };
    let expected = count as u64;
    let met = ours == expected && prefect_gets.is_none_or(|p| p == expected * clients as u64);
    rows.push(
        Row::new(
            format!("many clients: 8 processes read the same {count} results"),
            format!("{ours} storage GETs, {} reads/s overall", human((clients * count) as f64 / secs)),
            baseline,
        )
        .target(format!("GETs = {expected} (Prefect: {})", expected * clients as u64), met),
    );
    Ok(())
}

async fn reader(url: String, block: String, prefix: String, count: usize) -> anyhow::Result<()> {
    let client = Client::connect_with_limit(url, MAX_MESSAGE).await?;
    let block: &'static str = Box::leak(block.into_boxed_str());
    let results = futures::stream::iter(0..count)
        .map(|i| resolve_raw(client.clone(), block, format!("{prefix}{i}"), false))
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let errors = results.iter().filter(|r| r.is_err()).count();
    println!("{{\"reads\": {count}, \"errors\": {errors}}}");
    if errors > 0 {
        bail!("{errors} reads failed");
    }
    Ok(())
}

/// Requests per second of a Python measurement (`requests`, `secs`, `p50_ms`, `p99_ms`).
fn python_rate(p: &serde_json::Value) -> f64 {
    p["requests"].as_f64().unwrap_or(0.0) / p["secs"].as_f64().unwrap_or(1.0)
}

/// A Python measurement as the table shows it.
fn python_summary(p: &serde_json::Value) -> String {
    format!(
        "{} req/s, p50 {:.3} / p99 {:.3} ms",
        human(python_rate(p)),
        p["p50_ms"].as_f64().unwrap_or(f64::NAN),
        p["p99_ms"].as_f64().unwrap_or(f64::NAN)
    )
}

/// Prefect's own read path (`ResultStore.read` of the same record files, one process,
/// sequential) against resultstore's Resolve of them at concurrency 1.
async fn prefect_read_path(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Some(py) = prefect_python() else {
        rows.push(Row::new(
            "Prefect ResultStore.read",
            "-",
            "Prefect is not installed (.test-env/prefect): run scripts/test-env",
        ));
        return Ok(());
    };
    for &size in &[1024usize, 64 * 1024, MIB] {
        let key = format!("prefect/{size}");
        write_cold_record(b, &key, json_doc(size, 8))?;
        let k = key.clone();
        let ours = closed_loop(&b.ours, 1, b.secs(), move |cl, _| {
            resolve_raw(cl, "local-file-system/bench", k.clone(), false)
        })
        .await;
        let args: Vec<String> = vec![
            "latency".into(),
            "--dir".into(),
            b.dir.join("local").display().to_string(),
            "--key".into(),
            key.clone(),
            "--seconds".into(),
            format!("{}", b.secs().as_secs_f64()),
        ];
        let storage = report(run_prefect(&py, &args)?)?;
        let mut args = args;
        args.push("--memory-cache".into());
        let memory = report(run_prefect(&py, &args)?)?;
        let (rps, show) = (python_rate, python_summary);
        rows.push(
            Row::new(
                format!("read {} record, concurrency 1 (resultstore: Resolve hit)", size_name(size)),
                ours.summary(),
                format!(
                    "Prefect ResultStore.read from storage: {}; from its in-process LRU: {}",
                    show(&storage),
                    show(&memory)
                ),
            )
            .ratio(ours.rps() / rps(&storage)),
        );
    }
    Ok(())
}

/// The Python client's read of a cached 1 KiB result against grpcio's bare stub call of
/// the same request, and its second read of a reference (served from its local copies)
/// against Prefect's in-process LRU (`bench/python_client.py`).
async fn python_client(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let Some(py) = prefect_python() else {
        rows.push(Row::new(
            "Python client",
            "-",
            "Prefect's venv is missing (.test-env/prefect): run scripts/test-env",
        ));
        return Ok(());
    };
    let secs = format!("{}", b.secs().as_secs_f64());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python_client.py");
    let ours = report(
        Command::new(&py)
            .arg(script)
            .args(["--url", &b.url, "--block", "memory/bench", "--size", "1024", "--seconds", &secs])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    )?;
    // Prefect's LRU in the same run (the record `prefect_read_path` wrote).
    let key = "prefect/1024";
    write_cold_record(b, key, json_doc(1024, 8))?;
    let dir = b.dir.join("local").display().to_string();
    let args: Vec<String> =
        ["latency", "--dir", &dir, "--key", key, "--seconds", &secs, "--memory-cache"].map(String::from).to_vec();
    let prefect = report(run_prefect(&py, &args)?)?;
    let (rps, show) = (python_rate, python_summary);
    let ratio = rps(&ours["client"]) / rps(&ours["grpcio"]);
    rows.push(
        Row::new(
            "Python ResultStoreClient.get of a cached 1 KiB result, sequential (local copies off: a Resolve per read)",
            show(&ours["client"]),
            format!(
                "grpcio stub Resolve of the same request: {}; the same and json.loads of its bytes: {}",
                show(&ours["grpcio"]),
                show(&ours["grpcio_loads"])
            ),
        )
        .ratio(ratio)
        .target("≥0.9× req/s", ratio >= 0.9),
    );
    let calls = ours["local_calls"].as_u64().unwrap_or(u64::MAX);
    let ratio = rps(&ours["local"]) / rps(&prefect);
    rows.push(
        Row::new(
            "Python ResultStoreClient.get, repeated reads of one reference (local copy)",
            format!("{}; calls made: {calls}", show(&ours["local"])),
            format!("Prefect ResultStore.read from its in-process LRU: {}", show(&prefect)),
        )
        .ratio(ratio)
        .target("≥1× req/s, one call", ratio >= 1.0 && calls == 1),
    );
    Ok(())
}

/// Peak RSS of the `resultstore` binary (a separate process) while a large result streams
/// in and out through a split block.
async fn stream_memory(b: &Bench, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let size = if b.quick { 128 * MIB } else { 1024 * MIB };
    let capacity = 64 * MIB;
    let exe = std::env::current_exe()?.with_file_name("resultstore");
    if !exe.exists() {
        bail!("{} is missing: build the resultstore binary with the bench (scripts/bench does)", exe.display());
    }
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "default_block = \"local-file-system/s\"\n[cache]\ncapacity = \"{capacity}\"\nmax_entry_size = \"16MiB\"\n\
             [limits]\nmax_result_size = \"64MiB\"\n[blocks.\"local-file-system/s\"]\nurl = \"file://{d}/s\"\n\
             format = \"split\"\nmetadata_url = \"file://{d}/m\"\n"
        ),
    )?;
    let mut child = Command::new(&exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let stdout = child.stdout.take().context("stdout")?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let addr = line.trim().strip_prefix("resultstore listening on ").context("the service's address")?.to_owned();
    let measured = async {
        let c = Client::connect(format!("http://{addr}")).await?;
        let t0 = Instant::now();
        let pieces = futures::stream::iter(json_doc_pieces(size, 9));
        c.put_stream(Put::data(Bytes::new()).serializer("json").key("big"), pieces).await?;
        let put_s = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let mut s = c.get_stream(loc("", "big"), ReadOptions::default()).await?;
        while s.next_chunk().await?.is_some() {}
        let get_s = t0.elapsed().as_secs_f64();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmHWM")?;
        anyhow::Ok((kib * 1024, put_s, get_s))
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let (peak, put_s, get_s) = measured?;
    let bound = capacity + 64 * MIB;
    rows.push(
        Row::new(
            format!("{} PutStream + GetStream, peak RSS of the service (cache capacity 64 MiB)", size_name(size)),
            format!(
                "peak RSS {} MiB (put {} MiB/s, get {} MiB/s)",
                peak / MIB as u64,
                human(size as f64 / MIB as f64 / put_s),
                human(size as f64 / MIB as f64 / get_s)
            ),
            "-",
        )
        .target(format!("≤ {} MiB", bound / MIB), peak <= bound as u64),
    );
    Ok(())
}

fn render(rows: &[Row], quick: bool, took: Duration) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut out = format!(
        "Machine: {cores} cores ({cpu}); mode: {}; took {:.0} s.\n\n| scenario | resultstore | baseline (same run) | ratio | target | met |\n| --- | --- | --- | --- | --- | --- |\n",
        if quick { "quick (figures not judged)" } else { "full" },
        took.as_secs_f64()
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.ours,
            r.baseline,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}×")),
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        ));
    }
    out
}
