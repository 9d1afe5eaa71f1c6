//! Command-line arguments and the commands behind them.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use resultstore::config::Config;
use resultstore_client::{
    Client, ConnectOptions, Put, ReadOptions, Reference, Settings, Stored, Target, TlsOptions, Want, serializer_pb,
};

#[derive(Debug, Parser)]
#[command(name = "resultstore", version, about = "A result store and shared cache for task and flow results")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ServerArg {
    /// The server to talk to (`https://` with TLS); or replicas to route keys across:
    /// several URLs separated by commas, or `dns://name:port` (`dns+https://name:port`)
    /// for every address the name resolves to.
    #[arg(long, env = "RESULTSTORE_URL", default_value = "http://127.0.0.1:50051", global = true)]
    server: String,
    /// Bearer token for servers with `[auth]`.
    #[arg(long, env = "RESULTSTORE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// PEM CA that signed the server's certificate (TLS).
    #[arg(long, env = "RESULTSTORE_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with --tls-key).
    #[arg(long, env = "RESULTSTORE_TLS_CERT", global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM client key, for mutual TLS (with --tls-cert).
    #[arg(long, env = "RESULTSTORE_TLS_KEY", global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ServerArg {
    async fn connect(self) -> anyhow::Result<Client> {
        let tls = match &self.tls_ca {
            Some(ca) => {
                let identity = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
                Some(TlsOptions::from_files(ca, identity)?)
            }
            None if self.server.contains("https://") => {
                bail!("an https:// server needs --tls-ca (the CA that signed its certificate)")
            }
            None => None,
        };
        let options = ConnectOptions { token: self.token, tls, ..Default::default() };
        Ok(Client::connect_with(self.server, options).await?)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (embedded default config when no --config is given).
    Serve {
        /// TOML config file.
        #[arg(long, env = "RESULTSTORE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides the config's `listen`).
        #[arg(long, env = "RESULTSTORE_LISTEN")]
        listen: Option<String>,
        /// Address of the Prometheus endpoint (overrides the config's `metrics.listen`).
        #[arg(long, env = "RESULTSTORE_METRICS_LISTEN")]
        metrics_listen: Option<String>,
        /// This replica's `host:port` as its tier's peers name it (overrides the config's
        /// `tier.advertise`; in Kubernetes `$(POD_IP):50051`).
        #[arg(long, env = "RESULTSTORE_ADVERTISE")]
        advertise: Option<String>,
    },
    /// Where the results console of a server is: prints its address (open it in a
    /// browser; the page asks for a token when the server has `[auth]`).
    Open {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Make or hash bearer tokens for the config's `[auth]` table.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Store a result; prints the literal or reference as one JSON object.
    Put(PutArgs),
    /// Read a stored record: prints its reference, metadata and serializer bytes.
    Get {
        #[command(flatten)]
        server: ServerArg,
        #[command(flatten)]
        target: TargetArgs,
        /// Write the serializer bytes to this file instead of printing them. Streamed
        /// (GetStream) through `FILE.partial`, renamed only when whole.
        #[arg(long)]
        out: Option<PathBuf>,
        /// With --out: write the object as stored (the record Prefect reads) instead.
        #[arg(long, requires = "out")]
        as_stored: bool,
    },
    /// Resolve a reference to its value (raw bytes to stdout, or --json).
    Resolve {
        #[command(flatten)]
        server: ServerArg,
        #[command(flatten)]
        target: TargetArgs,
        /// Transcode the value to JSON.
        #[arg(long)]
        json: bool,
        /// Write the value to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Whether a key holds a result (exit 0 yes, 1 no).
    Exists {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, default_value = "")]
        block: String,
        key: String,
    },
    /// Delete a result, or every result under a prefix (`--prefix`), or every result of the
    /// block (`--all`). Prints what a bulk delete removed as JSON: `{"deleted", "bytes"}`.
    Delete {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, default_value = "")]
        block: String,
        #[arg(required_unless_present_any = ["prefix", "all"])]
        key: Option<String>,
        /// Every result whose key starts with this (a string prefix).
        #[arg(long, conflicts_with = "key")]
        prefix: Option<String>,
        /// Every result of the block.
        #[arg(long, conflicts_with_all = ["key", "prefix"])]
        all: bool,
    },
    /// Delete the expired results of a block (by their records' expiration, or last
    /// written longer ago than `--older-than`, else the block's `retention`), paced as the
    /// block's `sweep_calls_per_second` says. A progress line on stderr; the totals as JSON
    /// on stdout.
    Gc {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long)]
        block: String,
        /// Count what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Results last written longer ago than this (`30d`, `12h`) are expired too.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// List keys under a prefix.
    Ls {
        #[command(flatten)]
        server: ServerArg,
        #[arg(long, default_value = "")]
        block: String,
        #[arg(default_value = "")]
        prefix: String,
    },
    /// List the server's blocks.
    Blocks {
        #[command(flatten)]
        server: ServerArg,
    },
}

/// `resultstore put`: what to store and how.
#[derive(Debug, clap::Args)]
struct PutArgs {
    #[command(flatten)]
    server: ServerArg,
    /// Block slug (default: the server's default block).
    #[arg(long)]
    block: Option<String>,
    /// Storage key (default: a new uuid4 hex).
    #[arg(long)]
    key: Option<String>,
    /// Serializer type (`json`, `pickle`, `compressed/pickle`, ...) or a JSON config.
    #[arg(long)]
    serializer: Option<String>,
    /// A JSON document for the server to serialize.
    #[arg(long, conflicts_with_all = ["file", "literal"])]
    json: Option<String>,
    /// A file holding serializer bytes, stored as they are. Streamed (PutStream), so a
    /// file of any size is held a chunk at a time.
    #[arg(long, conflicts_with = "literal")]
    file: Option<PathBuf>,
    /// A literal result: true, false or null.
    #[arg(long)]
    literal: Option<String>,
    /// Expire the result after this long (`10m`, `1h`).
    #[arg(long)]
    expires_in: Option<String>,
    /// Fail instead of overwriting an existing result.
    #[arg(long)]
    create_only: bool,
    /// persist_result. Default true: a person who types `put` wants the result stored
    /// (the API itself applies Prefect's rules, where unset means "not persisted").
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    persist: bool,
    /// Task retries (a value above zero implies persistence).
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Cache key (implies persistence; the key when --key is absent).
    #[arg(long)]
    cache_key: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random token, and the sha256 line for the config.
    New,
    /// Read a token from stdin and print its sha256, as `[[auth.tokens]]` stores it.
    Hash,
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// A reference as `put` printed it (JSON); `-` or nothing reads it from stdin.
    reference: Option<String>,
    /// Read by block and key instead of a reference.
    #[arg(long)]
    block: Option<String>,
    #[arg(long)]
    key: Option<String>,
    /// A Prefect result document (Prefect 3 metadata or Prefect 2 reference), read in --block.
    #[arg(long)]
    prefect: Option<String>,
    /// Serializer assumed for bare payloads.
    #[arg(long)]
    serializer_hint: Option<String>,
    /// Read a result whose expiration has passed.
    #[arg(long)]
    allow_expired: bool,
    /// Read storage even when the cache holds the result.
    #[arg(long)]
    bypass_cache: bool,
}

impl TargetArgs {
    /// The target, and a literal when the reference document is one.
    fn target(&self) -> anyhow::Result<Result<Target, Stored>> {
        if let Some(doc) = &self.prefect {
            return Ok(Ok(Target::Prefect { block: self.block.clone().unwrap_or_default(), document: doc.clone() }));
        }
        if let Some(key) = &self.key {
            return Ok(Ok(Target::Location { block: self.block.clone().unwrap_or_default(), key: key.clone() }));
        }
        let text = match self.reference.as_deref() {
            Some("-") | None => {
                let mut s = String::new();
                std::io::stdin().read_to_string(&mut s).context("reading the reference from stdin")?;
                s
            }
            Some(text) => text.to_owned(),
        };
        match Stored::from_json(&text)? {
            Stored::Reference(r) => Ok(Ok(Target::Reference(r))),
            literal => Ok(Err(literal)),
        }
    }

    fn options(&self) -> ReadOptions {
        ReadOptions {
            allow_expired: self.allow_expired,
            bypass_cache: self.bypass_cache,
            serializer_hint: self.serializer_hint.as_deref().map(serializer_pb),
            as_stored: false,
            want: None,
        }
    }
}

/// Values up to this size (by their reference) are read with one Resolve; larger ones,
/// and every read by location, stream: the default unary limit with room to spare.
const UNARY_VALUE_LIMIT: u64 = 8 << 20;

fn print_resolved(out: &Option<PathBuf>, resolved: resultstore_client::Resolved) -> anyhow::Result<()> {
    if let Some(l) = resolved.literal {
        return output(out, format!("{}\n", l.to_json()).as_bytes());
    }
    match (resolved.json, resolved.data) {
        (Some(j), _) => output(out, format!("{j}\n").as_bytes()),
        (None, Some(d)) => output(out, &d),
        (None, None) => bail!("the server returned no value"),
    }
}

/// Where `resolve` writes a value that arrives in pieces: a file written through
/// `PATH.partial` and renamed when whole, or stdout.
enum Output {
    File { file: std::fs::File, partial: PathBuf, path: PathBuf },
    Stdout(std::io::StdoutLock<'static>),
}

impl Output {
    fn open(out: &Option<PathBuf>) -> anyhow::Result<Self> {
        Ok(match out {
            Some(path) => {
                let mut partial = path.as_os_str().to_owned();
                partial.push(".partial");
                let partial = PathBuf::from(partial);
                let file = std::fs::File::create(&partial).with_context(|| format!("writing {}", partial.display()))?;
                Output::File { file, partial, path: path.clone() }
            }
            None => Output::Stdout(std::io::stdout().lock()),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Output::File { file, .. } => file.write_all(bytes)?,
            Output::Stdout(s) => s.write_all(bytes)?,
        }
        Ok(())
    }

    /// A value that did not arrive whole leaves no file.
    fn discard(self) {
        if let Output::File { partial, .. } = self {
            let _ = std::fs::remove_file(partial);
        }
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Output::File { file, partial, path } => {
                file.sync_all()?;
                std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))
            }
            Output::Stdout(mut s) => Ok(s.flush()?),
        }
    }
}

fn output(out: &Option<PathBuf>, bytes: &[u8]) -> anyhow::Result<()> {
    match out {
        Some(path) => std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display())),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(bytes)?;
            stdout.flush()?;
            Ok(())
        }
    }
}

/// The console's address on the server `server` names (its first URL, for a list; a
/// `dns://` name's console is on any of its replicas).
fn console_url(server: &str) -> anyhow::Result<String> {
    let first = server.split(',').next().unwrap_or_default().trim().trim_end_matches('/');
    let (scheme, rest) = first.split_once("://").context("--server: expected http://host:port")?;
    let scheme = match scheme {
        "http" | "dns" | "dns+http" => "http",
        "https" | "dns+https" => "https",
        other => anyhow::bail!("--server: unknown scheme `{other}`"),
    };
    Ok(format!("{scheme}://{rest}/console"))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, listen, metrics_listen, advertise } => {
            serve(config, listen, metrics_listen, advertise).await
        }
        Command::Open { server } => {
            println!("{}", console_url(&server.server)?);
            Ok(())
        }
        Command::Token { command: TokenCommand::New } => {
            // Two v4 UUIDs: 244 random bits from the OS generator.
            let token = format!("rs_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            println!("token:  {token}");
            println!("sha256 = \"{}\"", resultstore::config::auth::token_hash(&token));
            Ok(())
        }
        Command::Token { command: TokenCommand::Hash } => {
            let mut token = String::new();
            std::io::stdin().read_to_string(&mut token)?;
            if token.trim().is_empty() {
                bail!("no token on stdin");
            }
            println!("{}", resultstore::config::auth::token_hash(&token));
            Ok(())
        }
        Command::Put(args) => put(args).await,
        Command::Get { server, target, out, as_stored } => get(server, target, out, as_stored).await,
        Command::Resolve { server, target, json, out } => resolve(server, target, json, out).await,
        Command::Exists { server, block, key } => {
            let client = server.connect().await?;
            let exists = client.exists(&block, &key).await?;
            println!("{exists}");
            if exists { Ok(()) } else { std::process::exit(1) }
        }
        Command::Delete { server, block, key, prefix, all } => {
            let client = server.connect().await?;
            if let Some(key) = key {
                client.delete(&block, &key).await?;
                return Ok(());
            }
            let done = client.delete_prefix(&block, prefix.as_deref().unwrap_or(""), all).await?;
            println!("{}", serde_json::json!({"deleted": done.deleted, "bytes": done.bytes}));
            Ok(())
        }
        Command::Gc { server, block, dry_run, older_than, prefix } => {
            let client = server.connect().await?;
            let mut progress = client.sweep(&block, &prefix, older_than, dry_run).await?;
            let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut last = None;
            while let Some(p) = progress.message().await? {
                if show && !p.done {
                    eprint!("\rgc {block}: {} listed, {} expired, {} deleted", p.scanned, p.expired, p.deleted);
                }
                last = Some(p);
            }
            if show {
                eprintln!();
            }
            let Some(p) = last.filter(|p| p.done) else { bail!("the sweep ended without its totals") };
            println!(
                "{}",
                serde_json::json!({
                    "block": block, "dry_run": dry_run, "scanned": p.scanned, "expired": p.expired,
                    "deleted": p.deleted, "bytes": p.bytes, "rewritten": p.rewritten, "unreadable": p.unreadable,
                    "orphaned_documents": p.orphaned_documents,
                })
            );
            Ok(())
        }
        Command::Ls { server, block, prefix } => {
            let client = server.connect().await?;
            for entry in client.list_all(&block, &prefix).await? {
                println!("{}\t{}", entry.key, entry.size);
            }
            Ok(())
        }
        Command::Blocks { server } => {
            let client = server.connect().await?;
            for b in client.list_blocks().await? {
                println!("{}\t{}\t{}{}", b.slug, b.format, b.url, if b.is_default { "\t(default)" } else { "" });
            }
            Ok(())
        }
    }
}

/// `resultstore put`: builds the Put the flags describe and prints its reference.
async fn put(args: PutArgs) -> anyhow::Result<()> {
    let PutArgs {
        server,
        block,
        key,
        serializer,
        json,
        file,
        literal,
        expires_in,
        create_only,
        persist,
        retries,
        cache_key,
    } = args;
    let mut put = match (&json, &file, literal) {
        (Some(doc), None, None) => Put::json(doc.clone()),
        (None, Some(_), None) => Put::data(Vec::new()),
        (None, None, Some(l)) => Put::literal(match l.as_str() {
            "true" => resultstore_client::Literal::True,
            "false" => resultstore_client::Literal::False,
            "null" | "none" | "None" => resultstore_client::Literal::Null,
            other => bail!("--literal takes true, false or null, not `{other}`"),
        }),
        _ => bail!("give the result as one of --json DOC, --file PATH or --literal VALUE"),
    };
    let mut settings = Settings::new().retries(retries);
    if let Some(b) = block {
        settings = settings.storage(b);
    }
    if let Some(s) = serializer {
        settings = settings.serializer(s);
    }
    settings = settings.persist(persist);
    if let Some(k) = cache_key {
        settings = settings.cache_key(k);
    }
    put = put.task_settings(settings);
    if let Some(k) = key {
        put = put.key(k);
    }
    if let Some(d) = expires_in {
        put = put.expires_in(humantime::parse_duration(&d).with_context(|| format!("--expires-in `{d}`"))?);
    }
    if create_only {
        put = put.create_only();
    }
    let client = server.connect().await?;
    let stored = match &file {
        Some(path) => client.put_file(put, path).await.with_context(|| format!("storing {}", path.display()))?,
        None => client.put(put).await?,
    };
    println!("{}", stored.to_json());
    Ok(())
}

/// `resultstore get`: the stored bytes (to a file, streamed, or as JSON on stdout).
async fn get(server: ServerArg, target: TargetArgs, out: Option<PathBuf>, as_stored: bool) -> anyhow::Result<()> {
    let client = server.connect().await?;
    let t = match target.target()? {
        Ok(t) => t,
        Err(literal) => bail!("{} is a literal: it has no stored record", literal.to_json()),
    };
    let opts = ReadOptions { as_stored, ..target.options() };
    if let Some(path) = &out {
        let stream = client.get_to_file(t, opts, path).await?;
        let mut reference = stream.reference.clone();
        if let Some(trailer) = stream.trailer()
            && reference.0.sha256.is_empty()
            && !as_stored
        {
            reference.0.sha256 = trailer.sha256.clone();
        }
        let doc = serde_json::json!({
            "reference": reference.to_json(),
            "metadata": serde_json::from_str::<serde_json::Value>(&stream.metadata_json).unwrap_or_default(),
            "written": {
                "path": path.display().to_string(),
                "size": stream.trailer().map(|t| t.size),
                "sha256": stream.trailer().map(|t| t.sha256.clone()),
            },
        });
        println!("{doc}");
        return Ok(());
    }
    let reply = client.get(t, opts).await?;
    let mut doc = serde_json::json!({
        "reference": reply.reference.map(|r| Reference(Box::new(r)).to_json()),
        "metadata": serde_json::from_str::<serde_json::Value>(&reply.metadata_json).unwrap_or_default(),
    });
    match std::str::from_utf8(&reply.data) {
        Ok(s) => doc["data"] = s.into(),
        Err(_) => {
            use base64::Engine;
            doc["data_base64"] = base64::engine::general_purpose::STANDARD.encode(&reply.data).into();
        }
    }
    println!("{doc}");
    Ok(())
}

/// `resultstore resolve`: the value (raw bytes or JSON), streamed when large.
async fn resolve(server: ServerArg, target: TargetArgs, json: bool, out: Option<PathBuf>) -> anyhow::Result<()> {
    let t = match target.target()? {
        Ok(t) => t,
        Err(Stored::Literal(l)) => {
            return output(&out, format!("{}\n", l.to_json()).as_bytes());
        }
        Err(Stored::Reference(_)) => unreachable!("references are targets"),
    };
    let client = server.connect().await?;
    let want = if json { Want::Json } else { Want::Raw };
    // By reference, the size says whether one message holds it; otherwise (and
    // for every size) GetStream carries the value in pieces.
    let small = matches!(&t, Target::Reference(r) if r.0.size <= UNARY_VALUE_LIMIT);
    if !small {
        let opts = ReadOptions { want: Some(want), ..target.options() };
        return match client.get_stream(t.clone(), opts).await {
            Ok(mut stream) => {
                let mut sink = Output::open(&out)?;
                let written = async {
                    while let Some(chunk) = stream.next_chunk().await? {
                        sink.write_all(&chunk)?;
                    }
                    if json {
                        sink.write_all(b"\n")?;
                    }
                    Ok::<_, anyhow::Error>(())
                }
                .await;
                match written {
                    Ok(()) => sink.finish(),
                    Err(e) => {
                        sink.discard();
                        Err(e)
                    }
                }
            }
            // A Prefect 2 literal document has no record to stream.
            Err(e) if e.code() == Some(tonic::Code::FailedPrecondition) && matches!(t, Target::Prefect { .. }) => {
                print_resolved(&out, client.resolve(t, want, target.options()).await?)
            }
            Err(e) => Err(e.into()),
        };
    }
    print_resolved(&out, client.resolve(t, want, target.options()).await?)
}

/// Serves until SIGTERM or Ctrl-C (then drains and returns, so the process exits 0);
/// SIGHUP re-reads the config file and reloads it.
async fn serve(
    path: Option<PathBuf>,
    listen: Option<String>,
    metrics_listen: Option<String>,
    advertise: Option<String>,
) -> anyhow::Result<()> {
    resultstore::telemetry::init_logging();
    let overrides = |mut config: Config| -> anyhow::Result<Config> {
        if let Some(a) = &advertise {
            let tier =
                config.tier.as_mut().context("--advertise names this replica in a [tier]; the config has none")?;
            tier.advertise = Some(a.clone());
            config.validate()?;
        }
        if let Some(m) = &metrics_listen {
            config.metrics.listen = Some(m.clone());
        }
        if let Some(l) = &listen {
            config.listen = Some(l.clone());
        }
        Ok(config)
    };
    let config = overrides(Config::load(path.as_deref())?)?;
    let addr = config.listen.clone().unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    let mut handle =
        resultstore::wire::server::start(&config, listener, resultstore::wire::server::termination_signal()).await?;
    for block in handle.store().blocks().iter() {
        tracing::info!(block = %block.slug, url = %block.url, format = block.format.as_str(), "block ready");
    }
    // Installed before the address is printed: whoever reads it may send SIGHUP at once,
    // and SIGHUP's default action ends the process.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    // Lines on stdout, so scripts and tests know the addresses (also with port 0). Written
    // without `println!`: a reader that took the lines it wanted and closed the pipe must
    // not stop the server (`println!` panics on EPIPE).
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let mut lines = format!("resultstore listening on {}\n", handle.local_addr);
    if let Some(m) = handle.metrics_addr {
        lines.push_str(&format!("resultstore metrics on http://{m}/metrics\n"));
    }
    lines.push_str(&format!("resultstore console on {scheme}://{}/console\n", handle.local_addr));
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(lines.as_bytes()).and_then(|()| stdout.flush());
    drop(stdout);
    loop {
        tokio::select! {
            ended = handle.wait() => {
                ended?;
                break;
            }
            Some(()) = hangups.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = match Config::load(path.as_deref()).map_err(anyhow::Error::from).and_then(overrides) {
                    Ok(config) => handle.reload(config),
                    Err(e) => handle.refused_reload(resultstore::Error::Config(format!("{e:#}"))),
                };
            }
        }
    }
    tracing::info!("stopped");
    Ok(())
}
