//! Typed Rust client for resultstore.
//!
//! ```no_run
//! # async fn demo() -> Result<(), resultstore_client::ClientError> {
//! use resultstore_client::{Client, Put, Stored, Want};
//! let client = Client::connect("http://127.0.0.1:50051").await?;
//! let stored = client.put(Put::json(r#"{"a": 1}"#).serializer("json")).await?;
//! if let Stored::Reference(reference) = stored {
//!     let value = reference.resolve(&client, Want::Json).await?;
//!     assert_eq!(value.json.as_deref(), Some(r#"{"a": 1}"#));
//! }
//! # Ok(()) }
//! ```
//!
//! Given several servers (`http://a:50051,http://b:50051`, or `dns://name:port` for every
//! address a headless Service's name resolves to), a [`Client`] sends each key to one of
//! them by rendezvous hashing and fails over to the next when one is unavailable: see
//! [`routing`].
//!
//! References and literals serialize to one JSON object (`{"type": "reference", ...}` or
//! `{"type": "literal", "value": true}`, the vocabulary of Prefect's result documents),
//! which is what the CLI prints and reads back.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use resultstore_proto::v1 as pb;
use resultstore_proto::v1::result_store_client::ResultStoreClient;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub use resultstore_proto::v1 as proto;

pub mod routing;
mod stream;
use routing::Router;
pub use routing::{DEFAULT_DNS_REFRESH, DEFAULT_REPLICA_BACKOFF, Endpoints};
pub use stream::{GetStream, STREAM_CHUNK};

/// A client error: a gRPC status from the server, a transport failure, or a malformed
/// reference document.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    #[error("cannot connect: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("invalid reference document: {0}")]
    Document(String),
    /// A stream that did not end whole (no trailer, or bytes that do not match it).
    #[error("incomplete stream: {0}")]
    Stream(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Which servers to use could not be worked out (a malformed list, a name that does
    /// not resolve).
    #[error("cannot find the servers: {0}")]
    Discovery(String),
}

// Not `#[from]`: that would also make the status the error's `source`, and error
// reports would print its message twice.
impl From<tonic::Status> for ClientError {
    fn from(s: tonic::Status) -> Self {
        ClientError::Status(s)
    }
}

impl ClientError {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub use resultstore_proto::code_name;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The generated client this crate wraps: a channel whose every call carries the
/// connection's token.
pub type RawClient = ResultStoreClient<InterceptedService<Channel, Credentials>>;

/// A connection to one server, or to a set of replicas that it routes keys across
/// ([`routing`]). Cheap to clone; clones share the HTTP/2 connections.
#[derive(Debug, Clone)]
pub struct Client {
    router: Arc<Router>,
}

/// How to reach a server: message limit, TLS, token.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Both gRPC message limits; set it to the server's `limits.max_message_size`.
    pub max_message_size: usize,
    /// Bearer token sent with every call (`authorization: Bearer ...`).
    pub token: Option<String>,
    /// TLS, for `https://` URLs.
    pub tls: Option<TlsOptions>,
    /// For `dns://` endpoints: how often the name is looked up again.
    pub dns_refresh: Duration,
    /// For several replicas: how long one that failed is tried only after the others.
    pub replica_backoff: Duration,
    /// How long connecting to a server may take before the call fails (and, with several
    /// replicas, goes on to the next). Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            token: None,
            tls: None,
            dns_refresh: DEFAULT_DNS_REFRESH,
            replica_backoff: DEFAULT_REPLICA_BACKOFF,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// TLS settings of a connection, as PEM text.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// The CA that signed the server's certificate (this crate trusts no system roots).
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and key, for servers that require mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name to verify the server's certificate against, when it differs from the URL's host.
    pub domain: Option<String>,
}

impl TlsOptions {
    /// Reads the CA, and the client certificate and key when given, from PEM files.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| ClientError::Io(io_context(e, p)));
        Ok(TlsOptions {
            ca_pem: read(ca)?,
            identity: identity.map(|(c, k)| Ok::<_, ClientError>((read(c)?, read(k)?))).transpose()?,
            domain: None,
        })
    }
}

fn io_context(e: std::io::Error, p: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// Adds the connection's token to every call.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.authorization {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// How long connecting may take, unless set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default message limit, matching the server's default `limits.max_message_size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;

impl Client {
    /// Connects to `url`: `http://host:port`, or several replicas ([`Endpoints::parse`]).
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::connect_with_limit(url, DEFAULT_MAX_MESSAGE_SIZE).await
    }

    /// Connects with both gRPC message limits set to `max_message_size`.
    pub async fn connect_with_limit(url: impl Into<String>, max_message_size: usize) -> Result<Self> {
        Self::connect_with(url, ConnectOptions { max_message_size, ..Default::default() }).await
    }

    /// Connects with TLS, a token, another message limit, or routing settings. `url` is
    /// one server or several ([`Endpoints::parse`]).
    pub async fn connect_with(url: impl Into<String>, options: ConnectOptions) -> Result<Self> {
        Self::connect_to(Endpoints::parse(&url.into())?, options).await
    }

    /// Connects to the replicas `endpoints` names.
    pub async fn connect_to(endpoints: Endpoints, options: ConnectOptions) -> Result<Self> {
        Ok(Client { router: Router::connect(endpoints, options).await? })
    }

    /// The generated client of the first replica, for what this API does not cover (with
    /// one server: that server).
    pub fn raw(&self) -> RawClient {
        self.router.first().client.clone()
    }

    /// The replicas' ids (`host:port`), as the client knows them now.
    pub fn replicas(&self) -> Vec<String> {
        self.router.replica_ids()
    }

    /// The replica a call for `key` would go to now (its owner, unless set aside).
    pub fn replica_for(&self, key: &str) -> String {
        self.router.order(key)[0].id.clone()
    }

    /// Runs a unary call on the replicas in `key`'s order, going on to the next while one
    /// answers UNAVAILABLE.
    async fn routed<T, F, Fut>(&self, key: &str, mut call: F) -> Result<T>
    where
        F: FnMut(RawClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = None;
        for replica in self.router.order(key) {
            match call(replica.client.clone()).await {
                Ok(reply) => {
                    self.router.outcome(&replica, None);
                    return Ok(reply.into_inner());
                }
                Err(status) => {
                    if !self.router.outcome(&replica, Some(&status)) {
                        return Err(status.into());
                    }
                    last = Some(status);
                }
            }
        }
        Err(last.map_or_else(|| ClientError::Discovery("no replica to call".into()), ClientError::from))
    }

    /// Stores one result.
    pub async fn put(&self, put: Put) -> Result<Stored> {
        let mut request = put.request;
        name_new_key(&mut request.new_key, &request.key, request.task.as_ref());
        let reply = self
            .routed(put_key(&request.key, request.task.as_ref(), &request.new_key), |mut c| {
                let r = request.clone();
                async move { c.put(r).await }
            })
            .await?;
        Stored::from_reply(reply)
    }

    /// Reads a stored record (serializer bytes and metadata).
    pub async fn get(&self, target: impl Into<Target>, opts: ReadOptions) -> Result<pb::GetResponse> {
        let target = target.into();
        let key = target.route_key();
        let request = get_request(target, opts);
        self.routed(&key, |mut c| {
            let r = request.clone();
            async move { c.get(r).await }
        })
        .await
    }

    /// Resolves a target to its value.
    pub async fn resolve(&self, target: impl Into<Target>, want: Want, opts: ReadOptions) -> Result<Resolved> {
        let target = target.into();
        let key = target.route_key();
        let target = match target {
            Target::Reference(r) => pb::resolve_request::Target::Reference(*r.0),
            Target::Location { block, key } => pb::resolve_request::Target::Location(pb::Location { block, key }),
            Target::Prefect { block, document } => {
                pb::resolve_request::Target::Prefect(pb::PrefectReference { block, document })
            }
        };
        let req = pb::ResolveRequest {
            target: Some(target),
            want: want_pb(want) as i32,
            allow_expired: opts.allow_expired,
            serializer_hint: opts.serializer_hint,
            bypass_cache: opts.bypass_cache,
        };
        let reply = self
            .routed(&key, |mut c| {
                let r = req.clone();
                async move { c.resolve(r).await }
            })
            .await?;
        let mut out = Resolved {
            reference: reply.reference.map(|r| Reference(Box::new(r))),
            data: None,
            json: None,
            literal: None,
            value_serializer: reply.value_serializer,
            cache_hit: reply.cache_hit,
        };
        match reply.value {
            Some(pb::resolve_response::Value::Data(d)) => out.data = Some(d),
            Some(pb::resolve_response::Value::Json(j)) => out.json = Some(j),
            Some(pb::resolve_response::Value::Literal(l)) => out.literal = Some(Literal::from_pb(l)?),
            None => {}
        }
        Ok(out)
    }

    pub async fn exists(&self, block: &str, key: &str) -> Result<bool> {
        let req = pb::ExistsRequest { location: Some(pb::Location { block: block.into(), key: key.into() }) };
        Ok(self
            .routed(key, |mut c| {
                let r = req.clone();
                async move { c.exists(r).await }
            })
            .await?
            .exists)
    }

    pub async fn delete(&self, block: &str, key: &str) -> Result<()> {
        let req = pb::DeleteRequest { location: Some(pb::Location { block: block.into(), key: key.into() }) };
        self.routed(key, |mut c| {
            let r = req.clone();
            async move { c.delete(r).await }
        })
        .await?;
        Ok(())
    }

    /// Deletes every result under `prefix` (a string prefix) in `block`; the whole block
    /// only with an empty prefix and `all`. Routed by the prefix, as `list` is.
    pub async fn delete_prefix(&self, block: &str, prefix: &str, all: bool) -> Result<pb::DeletePrefixResponse> {
        let req = pb::DeletePrefixRequest { block: block.into(), prefix: prefix.into(), all };
        self.routed(prefix, |mut c| {
            let r = req.clone();
            async move { c.delete_prefix(r).await }
        })
        .await
    }

    /// Sweeps `block` for expired results (see the `Sweep` RPC): progress messages, the
    /// last with `done`.
    pub async fn sweep(
        &self,
        block: &str,
        prefix: &str,
        older_than: Option<std::time::Duration>,
        dry_run: bool,
    ) -> Result<tonic::Streaming<pb::SweepProgress>> {
        let older_than = older_than
            .map(prost_types::Duration::try_from)
            .transpose()
            .map_err(|e| ClientError::Status(tonic::Status::invalid_argument(format!("older_than: {e}"))))?;
        let req = pb::SweepRequest { block: block.into(), prefix: prefix.into(), older_than, dry_run };
        self.routed(prefix, |mut c| {
            let r = req.clone();
            async move { c.sweep(r).await }
        })
        .await
    }

    /// One page of keys under `prefix`.
    pub async fn list(&self, block: &str, prefix: &str, page_size: u32, page_token: &str) -> Result<pb::ListResponse> {
        let req =
            pb::ListRequest { block: block.into(), prefix: prefix.into(), page_size, page_token: page_token.into() };
        self.routed(prefix, |mut c| {
            let r = req.clone();
            async move { c.list(r).await }
        })
        .await
    }

    /// Every key under `prefix`, following pages.
    pub async fn list_all(&self, block: &str, prefix: &str) -> Result<Vec<pb::ListEntry>> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.list(block, prefix, 0, &token).await?;
            all.extend(page.entries);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    pub async fn list_blocks(&self) -> Result<Vec<pb::BlockInfo>> {
        Ok(self.routed("", |mut c| async move { c.list_blocks(pb::ListBlocksRequest {}).await }).await?.blocks)
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub enum Target {
    Reference(Reference),
    /// An empty block means the server's default block.
    Location {
        block: String,
        key: String,
    },
    /// A Prefect 3 metadata document or Prefect 2 result document, read in `block`.
    Prefect {
        block: String,
        document: String,
    },
}

impl Target {
    /// The key a call for this target is routed by ([`routing`]): the storage key, or for
    /// a Prefect document its `storage_key` (the document itself when it names none).
    fn route_key(&self) -> String {
        match self {
            Target::Reference(r) => r.key().to_owned(),
            Target::Location { key, .. } => key.clone(),
            Target::Prefect { document, .. } => routing::document_key(document),
        }
    }
}

/// The key a Put is stored (and routed) under: its key, else its cache key, else the new
/// key [`name_new_key`] made.
pub fn put_key<'a>(key: &'a str, task: Option<&'a pb::ResultSettings>, new_key: &'a str) -> &'a str {
    let cache_key = task.map_or("", |t| t.cache_key.as_str());
    [key, cache_key].into_iter().find(|k| !k.is_empty()).unwrap_or(new_key)
}

/// Names the key of a Put that names none (no key, no cache key), as the server would
/// (a uuid4 hex), so that the Put goes to the replica that will serve its reads.
pub fn name_new_key(new_key: &mut String, key: &str, task: Option<&pb::ResultSettings>) {
    if key.is_empty() && task.is_none_or(|t| t.cache_key.is_empty()) && new_key.is_empty() {
        *new_key = uuid::Uuid::new_v4().simple().to_string();
    }
}

/// An endpoint with the connection's settings.
pub(crate) fn endpoint(url: &str, options: &ConnectOptions) -> Result<Endpoint> {
    // Flow-control windows large enough for streams of megabyte chunks (see the server's).
    let mut endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(options.connect_timeout)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20));
    if let Some(tls) = &options.tls {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(config)?;
    }
    Ok(endpoint)
}

/// The generated client on `channel`, with the token and message limits.
pub(crate) fn raw_client(channel: Channel, options: &ConnectOptions) -> Result<RawClient> {
    let authorization = options
        .token
        .as_deref()
        .map(|t| {
            format!("Bearer {}", t.trim())
                .parse::<MetadataValue<Ascii>>()
                .map_err(|_| ClientError::Document("the token holds characters a header cannot carry".into()))
        })
        .transpose()?;
    Ok(ResultStoreClient::with_interceptor(channel, Credentials { authorization })
        .max_decoding_message_size(options.max_message_size)
        .max_encoding_message_size(options.max_message_size))
}

impl From<Reference> for Target {
    fn from(r: Reference) -> Self {
        Target::Reference(r)
    }
}

impl From<&Reference> for Target {
    fn from(r: &Reference) -> Self {
        Target::Reference(r.clone())
    }
}

/// What form Resolve returns the value in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Want {
    #[default]
    Raw,
    Json,
}

fn want_pb(want: Want) -> pb::Want {
    match want {
        Want::Raw => pb::Want::Raw,
        Want::Json => pb::Want::Json,
    }
}

/// Read options.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub allow_expired: bool,
    pub bypass_cache: bool,
    pub serializer_hint: Option<pb::Serializer>,
    /// Get only: the object as stored (a storage block's `read_path`), not the serializer bytes.
    pub as_stored: bool,
    /// GetStream only: stream the value as Resolve gives it (value bytes, or JSON) instead
    /// of the serializer bytes, at any size.
    pub want: Option<Want>,
}

/// A resolved value.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub reference: Option<Reference>,
    /// The value bytes (`Want::Raw`).
    pub data: Option<bytes::Bytes>,
    /// The value as JSON (`Want::Json`).
    pub json: Option<String>,
    /// A Prefect 2 literal document's value.
    pub literal: Option<Literal>,
    pub value_serializer: String,
    pub cache_hit: bool,
}

/// `true`, `false` or `null`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Literal {
    True,
    False,
    Null,
}

impl Literal {
    fn from_pb(l: i32) -> Result<Self> {
        match pb::Literal::try_from(l) {
            Ok(pb::Literal::True) => Ok(Literal::True),
            Ok(pb::Literal::False) => Ok(Literal::False),
            Ok(pb::Literal::Null) => Ok(Literal::Null),
            _ => Err(ClientError::Document(format!("unknown literal {l}"))),
        }
    }

    fn to_pb(self) -> i32 {
        match self {
            Literal::True => pb::Literal::True as i32,
            Literal::False => pb::Literal::False as i32,
            Literal::Null => pb::Literal::Null as i32,
        }
    }

    pub fn to_json(self) -> Value {
        match self {
            Literal::True => Value::Bool(true),
            Literal::False => Value::Bool(false),
            Literal::Null => Value::Null,
        }
    }
}

/// What a Put returned.
#[derive(Debug, Clone)]
pub enum Stored {
    Literal(Literal),
    Reference(Reference),
}

impl Stored {
    /// What a Put's reply says was stored.
    pub fn from_reply(reply: pb::PutResponse) -> Result<Self> {
        match reply.result {
            Some(pb::put_response::Result::Literal(l)) => Ok(Stored::Literal(Literal::from_pb(l)?)),
            Some(pb::put_response::Result::Reference(r)) => Ok(Stored::Reference(Reference(Box::new(r)))),
            None => Err(ClientError::Document("the server's reply holds no result".into())),
        }
    }

    /// `{"type": "literal", "value": ...}` or `{"type": "reference", ...}`.
    pub fn to_json(&self) -> Value {
        match self {
            Stored::Literal(l) => serde_json::json!({"type": "literal", "value": l.to_json()}),
            Stored::Reference(r) => r.to_json(),
        }
    }

    /// Parses what [`Stored::to_json`] wrote.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| ClientError::Document(e.to_string()))?;
        match v.get("type").and_then(Value::as_str) {
            Some("literal") => Ok(Stored::Literal(match v.get("value") {
                Some(Value::Bool(true)) => Literal::True,
                Some(Value::Bool(false)) => Literal::False,
                Some(Value::Null) | None => Literal::Null,
                Some(other) => {
                    return Err(ClientError::Document(format!("literal value {other} is not true/false/null")));
                }
            })),
            _ => Reference::from_json_value(v).map(Stored::Reference),
        }
    }

    pub fn reference(&self) -> Option<&Reference> {
        match self {
            Stored::Reference(r) => Some(r),
            Stored::Literal(_) => None,
        }
    }
}

/// A reference to a stored result. Resolves itself through a [`Client`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reference(pub Box<pb::Reference>);

#[derive(Serialize, Deserialize)]
struct ReferenceJson {
    #[serde(rename = "type")]
    kind: String,
    block: String,
    key: String,
    #[serde(default)]
    serializer: Option<Value>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    sha256: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
    #[serde(default = "yes")]
    persisted: bool,
    #[serde(default)]
    uri: String,
    #[serde(default)]
    format: String,
}

fn yes() -> bool {
    true
}

fn ts_to_string(ts: &prost_types::Timestamp) -> Option<String> {
    DateTime::<Utc>::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

fn ts_from_str(s: &str) -> Result<prost_types::Timestamp> {
    let t = DateTime::parse_from_rfc3339(s).map_err(|e| ClientError::Document(format!("`{s}` is not a time: {e}")))?;
    Ok(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

impl Reference {
    pub fn block(&self) -> &str {
        &self.0.block
    }
    pub fn key(&self) -> &str {
        &self.0.key
    }
    pub fn sha256(&self) -> &str {
        &self.0.sha256
    }
    pub fn persisted(&self) -> bool {
        self.0.persisted.unwrap_or(true)
    }

    /// Fetches this reference's value.
    pub async fn resolve(&self, client: &Client, want: Want) -> Result<Resolved> {
        client.resolve(self, want, ReadOptions::default()).await
    }

    /// The reference as one JSON object.
    pub fn to_json(&self) -> Value {
        let r = &self.0;
        let serializer = r.serializer.as_ref().and_then(|s| {
            serde_json::from_str::<Value>(&s.config_json).ok().or_else(|| Some(Value::String(s.r#type.clone())))
        });
        let doc = ReferenceJson {
            kind: "reference".into(),
            block: r.block.clone(),
            key: r.key.clone(),
            serializer,
            size: r.size,
            sha256: r.sha256.clone(),
            version: Some(r.version.clone()).filter(|v| !v.is_empty()),
            created: r.created.as_ref().and_then(ts_to_string),
            expiration: r.expiration.as_ref().and_then(ts_to_string),
            persisted: self.persisted(),
            uri: r.uri.clone(),
            format: r.format.clone(),
        };
        serde_json::to_value(doc).unwrap_or(Value::Null)
    }

    /// Parses what [`Reference::to_json`] wrote.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| ClientError::Document(e.to_string()))?;
        Self::from_json_value(v)
    }

    fn from_json_value(v: Value) -> Result<Self> {
        let doc: ReferenceJson = serde_json::from_value(v).map_err(|e| ClientError::Document(e.to_string()))?;
        if doc.kind != "reference" {
            return Err(ClientError::Document(format!("type is `{}`, not `reference`", doc.kind)));
        }
        let serializer = doc.serializer.map(|s| match s {
            Value::String(t) => pb::Serializer { r#type: t, config_json: String::new() },
            other => pb::Serializer {
                r#type: other.get("type").and_then(Value::as_str).unwrap_or_default().to_owned(),
                config_json: other.to_string(),
            },
        });
        Ok(Reference(Box::new(pb::Reference {
            block: doc.block,
            key: doc.key,
            serializer,
            size: doc.size,
            sha256: doc.sha256,
            version: doc.version.unwrap_or_default(),
            created: doc.created.as_deref().map(ts_from_str).transpose()?,
            expiration: doc.expiration.as_deref().map(ts_from_str).transpose()?,
            persisted: Some(doc.persisted),
            uri: doc.uri,
            format: doc.format,
        })))
    }
}

fn get_request(target: Target, opts: ReadOptions) -> pb::GetRequest {
    let target = match target {
        Target::Reference(r) => pb::get_request::Target::Reference(*r.0),
        Target::Location { block, key } => pb::get_request::Target::Location(pb::Location { block, key }),
        Target::Prefect { block, document } => {
            pb::get_request::Target::Prefect(pb::PrefectReference { block, document })
        }
    };
    pb::GetRequest {
        target: Some(target),
        allow_expired: opts.allow_expired,
        serializer_hint: opts.serializer_hint,
        bypass_cache: opts.bypass_cache,
        as_stored: opts.as_stored,
        want: opts.want.map(|w| want_pb(w) as i32),
    }
}

/// Result settings of a task or a flow (Prefect's names).
#[derive(Debug, Clone, Default)]
pub struct Settings(pub pb::ResultSettings);

impl Settings {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn persist(mut self, persist: bool) -> Self {
        self.0.persist_result = Some(persist);
        self
    }
    pub fn storage(mut self, block: impl Into<String>) -> Self {
        self.0.result_storage = block.into();
        self
    }
    /// A serializer type (`json`, `compressed/pickle`) or a JSON config object.
    pub fn serializer(mut self, serializer: impl AsRef<str>) -> Self {
        self.0.result_serializer = Some(serializer_pb(serializer.as_ref()));
        self
    }
    pub fn retries(mut self, retries: u32) -> Self {
        self.0.retries = retries;
        self
    }
    pub fn cache_key(mut self, key: impl Into<String>) -> Self {
        self.0.cache_key = key.into();
        self
    }
}

/// A type name, or a JSON object config (anything starting with `{`).
pub fn serializer_pb(s: &str) -> pb::Serializer {
    if s.trim_start().starts_with('{') {
        pb::Serializer { r#type: String::new(), config_json: s.to_owned() }
    } else {
        pb::Serializer { r#type: s.to_owned(), config_json: String::new() }
    }
}

/// A Put being built. The result settings set directly are the task's.
#[derive(Debug, Clone)]
pub struct Put {
    request: pb::PutRequest,
    /// For streams: the size and sha256 announced in the header.
    stream_size: Option<u64>,
    stream_sha256: String,
}

impl Put {
    fn with(payload: pb::put_request::Payload) -> Self {
        Put {
            request: pb::PutRequest { payload: Some(payload), ..Default::default() },
            stream_size: None,
            stream_sha256: String::new(),
        }
    }
    /// A JSON document, serialized by the server with the chosen serializer.
    pub fn json(doc: impl Into<String>) -> Self {
        Self::with(pb::put_request::Payload::Json(doc.into()))
    }
    /// Serializer bytes exactly as the serializer produced them.
    pub fn data(bytes: impl Into<bytes::Bytes>) -> Self {
        Self::with(pb::put_request::Payload::Data(bytes.into()))
    }
    /// An object as a Prefect storage block's `write_path` receives it, stored as is
    /// (see `PutRequest.object`).
    pub fn object(bytes: impl Into<bytes::Bytes>) -> Self {
        Self::with(pb::put_request::Payload::Object(bytes.into()))
    }

    pub fn literal(l: Literal) -> Self {
        Self::with(pb::put_request::Payload::Literal(l.to_pb()))
    }
    fn task(&mut self) -> &mut pb::ResultSettings {
        self.request.task.get_or_insert_with(Default::default)
    }
    pub fn serializer(mut self, s: impl AsRef<str>) -> Self {
        self.task().result_serializer = Some(serializer_pb(s.as_ref()));
        self
    }
    pub fn storage(mut self, block: impl Into<String>) -> Self {
        self.task().result_storage = block.into();
        self
    }
    pub fn persist(mut self, persist: bool) -> Self {
        self.task().persist_result = Some(persist);
        self
    }
    pub fn retries(mut self, retries: u32) -> Self {
        self.task().retries = retries;
        self
    }
    pub fn cache_key(mut self, key: impl Into<String>) -> Self {
        self.task().cache_key = key.into();
        self
    }
    /// Replaces the task's settings wholesale.
    pub fn task_settings(mut self, s: Settings) -> Self {
        self.request.task = Some(s.0);
        self
    }
    /// The enclosing flow's settings.
    pub fn flow(mut self, s: Settings) -> Self {
        self.request.flow = Some(s.0);
        self
    }
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.request.key = key.into();
        self
    }
    pub fn expires_at(mut self, t: DateTime<Utc>) -> Self {
        self.request.expiration =
            Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 });
        self
    }
    pub fn expires_in(self, d: Duration) -> Self {
        let at = Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
        self.expires_at(at)
    }
    pub fn create_only(mut self) -> Self {
        self.request.mode = pb::WriteMode::CreateOnly as i32;
        self
    }
    /// For [`Client::put_stream`]: the payload's total size, which the server checks (and
    /// refuses up front when it is above a limit).
    pub fn size(mut self, size: u64) -> Self {
        self.stream_size = Some(size);
        self
    }
    /// For [`Client::put_stream`]: the payload's sha256 (lowercase hex), which the server
    /// checks before the result becomes visible.
    pub fn sha256(mut self, sha256: impl Into<String>) -> Self {
        self.stream_sha256 = sha256.into();
        self
    }
    /// The request as it will be sent.
    pub fn into_request(self) -> pb::PutRequest {
        self.request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_round_trip_through_json() {
        let r = Reference(Box::new(pb::Reference {
            block: "memory/default".into(),
            key: "k".into(),
            serializer: Some(pb::Serializer {
                r#type: "json".into(),
                config_json: r#"{"type":"json","jsonlib":"json"}"#.into(),
            }),
            size: 3,
            sha256: "ab".into(),
            version: "v1".into(),
            created: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5_000 }),
            expiration: None,
            persisted: Some(true),
            uri: "memory:///k".into(),
            format: "prefect3".into(),
        }));
        let text = r.to_json().to_string();
        assert_eq!(Reference::from_json(&text).unwrap(), r);
        assert!(matches!(
            Stored::from_json(r#"{"type":"literal","value":false}"#).unwrap(),
            Stored::Literal(Literal::False)
        ));
    }
}
