//! Results over HTTP: a JSON API, gRPC-Web, and the results console, on the gRPC listener.
//!
//! **One implementation.** Every HTTP endpoint is transcoded to the gRPC call it means and
//! handed to the same [`ResultStoreService`] a gRPC client reaches: the same admission
//! (draining, tokens, `max_concurrent_requests`), the same tier (a key another replica owns
//! is served there), the same rules, metrics (`resultstore_rpc_requests_total` by method)
//! and logs. What this module adds is only the mapping: paths and query parameters to
//! requests, replies to bodies and headers, and gRPC codes to HTTP statuses ([`http_status`],
//! the one table; the body of an error also names the gRPC code).
//!
//! **Endpoints** (`docs/http.md` has each with a curl example; `service/src/wire/openapi.json` is the
//! contract, served at `/openapi.json` and checked against the running server in CI):
//!
//! ```text
//! GET    /v1/blocks                                         ListBlocks
//! GET    /v1/blocks/{type}/{name}/results?prefix=&page_size=&page_token=   List
//! DELETE /v1/blocks/{type}/{name}/results?prefix=P | ?all=true              DeletePrefix
//! GET    /v1/blocks/{type}/{name}/results/{key}?want=json|raw|stored       Resolve / GetStream
//! HEAD   /v1/blocks/{type}/{name}/results/{key}             Exists
//! PUT    /v1/blocks/{type}/{name}/results/{key}?serializer=&mode=&expiration=   Put
//! DELETE /v1/blocks/{type}/{name}/results/{key}             Delete
//! POST   /v1/resolve?want=json|raw&block=                   Resolve a reference or Prefect document
//! GET    /v1/stats                                          cache figures
//! GET    /openapi.json, /console                            the contract, the console
//! ```
//!
//! **Reads.** `want=json` (the default) answers the value as JSON (JSON results as they
//! are, plain-data pickles transcoded; anything else 412 with `FAILED_PRECONDITION`),
//! `want=raw` the value bytes (`Range: bytes=a-b` honoured), `want=stored` the object as
//! stored. The ETag is the result's sha256 (`If-None-Match` answers 304); the reference
//! travels in the `resultstore-reference` header (one JSON line, as the CLI prints it).
//! Results up to the unary message limit are read with Resolve; larger ones (and every
//! `want=stored`) stream from GetStream, so memory stays bounded by the stream's pieces
//! whatever the size. A stream that fails after its headers were sent is cut off (the
//! client sees a body shorter than its Content-Length, or a broken chunked encoding), never
//! ended as if whole.
//!
//! **Writes.** The body is the serializer bytes: `application/json` bodies are JSON text
//! (serializer `json` unless `?serializer=` names another, into which the JSON is
//! encoded as Put does), `application/octet-stream` bodies are a serializer's bytes and need
//! `?serializer=`. A body is read only after its length was taken from the same budget
//! unary gRPC requests take from (`limits.max_request_bytes_in_flight`), and at most
//! `limits.max_message_size` of it (413 beyond).
//!
//! **Tokens** are the `Authorization: Bearer` header, passed to the call as its metadata,
//! so the scopes are checked exactly as for gRPC.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use resultstore_proto::v1 as pb;
use resultstore_proto::v1::result_store_server::{ResultStore as _, ResultStoreServer};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tonic::Code;
use tonic::server::NamedService;

use crate::runtime::live::Live;
use crate::runtime::request_bytes::RequestBytes;
use crate::wire::grpc::ResultStoreService;

/// The OpenAPI document of this API (kept in the repository, served as it is).
pub const OPENAPI: &str = include_str!("openapi.json");
const CONSOLE_HTML: &str = include_str!("console/index.html");
const CONSOLE_JS: &str = include_str!("console/console.js");
const CONSOLE_CSS: &str = include_str!("console/console.css");

/// What the handlers share.
#[derive(Clone)]
pub struct Http {
    service: Arc<ResultStoreService>,
    live: Arc<Live>,
    request_bytes: Arc<RequestBytes>,
    /// Replies above this are streamed (GetStream), and bodies above it refused.
    max_message: usize,
}

/// The HTTP routes, for the gRPC listener's router.
pub fn router(
    service: Arc<ResultStoreService>,
    grpc: ResultStoreServer<ResultStoreService>,
    live: Arc<Live>,
    request_bytes: Arc<RequestBytes>,
    max_message: usize,
) -> Router {
    let state = Http { service, live, request_bytes, max_message };
    // gRPC and gRPC-Web (binary and text) on the service's own path: tonic-web passes
    // plain gRPC through and translates gRPC-Web, which browsers speak over HTTP/1.1.
    // Only this path: tonic-web refuses HTTP/1.1 requests that are not gRPC-Web, which
    // every other route here is.
    let grpc_web = tower::ServiceBuilder::new()
        .map_request(|r: axum::http::Request<Body>| r.map(tonic::body::Body::new))
        .layer(tonic_web::GrpcWebLayer::new())
        .service(grpc);
    Router::new()
        .route_service(&format!("/{}/{{*rpc}}", ResultStoreServer::<ResultStoreService>::NAME), grpc_web)
        .route("/v1/blocks", get(list_blocks))
        .route("/v1/blocks/{kind}/{name}/results", get(list).delete(delete_prefix))
        .route("/v1/blocks/{kind}/{name}/results/{*key}", get(read).head(exists).put(write).delete(delete))
        .route("/v1/resolve", post(resolve_document))
        .route("/v1/stats", get(stats))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/console", get(|| async { console(CONSOLE_HTML, "text/html; charset=utf-8") }))
        .route("/console/console.js", get(|| async { console(CONSOLE_JS, "text/javascript; charset=utf-8") }))
        .route("/console/console.css", get(|| async { console(CONSOLE_CSS, "text/css; charset=utf-8") }))
        .route("/", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/console")]) }))
        .with_state(state)
}

/// A console asset, with headers that keep the page to itself (no frames, no other
/// origins: it talks only to this server's API).
fn console(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The HTTP status of a gRPC code (the one table; `docs/http.md` shows it).
pub fn http_status(status: &tonic::Status) -> StatusCode {
    match status.code() {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        // Shedding is the server's state, not the request's size.
        Code::ResourceExhausted if status.message().starts_with("overloaded") => StatusCode::SERVICE_UNAVAILABLE,
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::Unavailable if is_storage(status) => StatusCode::BAD_GATEWAY,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Cancelled | Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn is_storage(status: &tonic::Status) -> bool {
    status.metadata().get(resultstore_proto::UNAVAILABLE_REASON).and_then(|v| v.to_str().ok())
        == Some(resultstore_proto::UNAVAILABLE_STORAGE)
}

/// An error reply: `{"error": {"code": "NOT_FOUND", "status": 404, "message": "..."}}`.
fn error(status: tonic::Status) -> Response {
    let http = http_status(&status);
    let body = json!({"error": {
        "code": resultstore_proto::code_name(status.code()),
        "status": http.as_u16(),
        "message": status.message(),
    }});
    let mut response = (http, axum::Json(body)).into_response();
    if http == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn bad_request(message: impl Into<String>) -> Response {
    error(tonic::Status::invalid_argument(message.into()))
}

/// A request's query parameters, refused with this API's JSON 400 (naming the parameter)
/// when one is unknown or malformed.
struct Params<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(Params(q)),
            Err(e) => Err(bad_request(format!("query: {}", e.body_text()))),
        }
    }
}

/// `message` as a call carrying the HTTP request's token.
fn call<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(v) = headers.get(header::AUTHORIZATION)
        && let Ok(v) = tonic::metadata::MetadataValue::try_from(v.as_bytes())
    {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

fn slug(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    #[serde(default)]
    want: Option<String>,
    #[serde(default)]
    allow_expired: bool,
    #[serde(default)]
    bypass_cache: bool,
}

/// What a read answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Json,
    Raw,
    Stored,
}

/// A query's `want`, or the message of a 400.
fn want_of(want: Option<&str>) -> Result<Want, String> {
    match want.unwrap_or("json") {
        "json" => Ok(Want::Json),
        "raw" => Ok(Want::Raw),
        "stored" => Ok(Want::Stored),
        other => Err(format!("want `{other}`: expected json, raw or stored")),
    }
}

async fn read(
    State(http): State<Http>,
    Path((kind, name, key)): Path<(String, String, String)>,
    Params(q): Params<ReadQuery>,
    headers: HeaderMap,
) -> Response {
    let want = match want_of(q.want.as_deref()) {
        Ok(w) => w,
        Err(m) => return bad_request(m),
    };
    let location = pb::Location { block: slug(&kind, &name), key };
    read_target(&http, &headers, Target::Location(location), want, q.allow_expired, q.bypass_cache).await
}

enum Target {
    Location(pb::Location),
    Reference(Box<pb::Reference>),
    Prefect(pb::PrefectReference),
}

async fn read_target(
    http: &Http,
    headers: &HeaderMap,
    target: Target,
    want: Want,
    allow_expired: bool,
    bypass_cache: bool,
) -> Response {
    let range = match headers.get(header::RANGE).map(parse_range).transpose() {
        Ok(r) => r,
        Err(m) => return bad_request(m),
    };
    if range.is_some() && want != Want::Raw {
        return bad_request("Range is served for want=raw only");
    }
    if want != Want::Stored {
        let request = pb::ResolveRequest {
            target: Some(match &target {
                Target::Location(l) => pb::resolve_request::Target::Location(l.clone()),
                Target::Reference(r) => pb::resolve_request::Target::Reference((**r).clone()),
                Target::Prefect(p) => pb::resolve_request::Target::Prefect(p.clone()),
            }),
            want: if want == Want::Json { pb::Want::Json } else { pb::Want::Raw } as i32,
            allow_expired,
            bypass_cache,
            serializer_hint: None,
        };
        match http.service.resolve(call(headers, request)).await {
            Ok(reply) => return resolved(headers, reply.into_inner(), range),
            // Above the unary message limit: stream it instead.
            Err(s) if s.code() == Code::ResourceExhausted && s.message().contains("GetStream") => {}
            Err(s) => return error(s),
        }
    }
    let request = pb::GetRequest {
        target: Some(match target {
            Target::Location(l) => pb::get_request::Target::Location(l),
            Target::Reference(r) => pb::get_request::Target::Reference(*r),
            Target::Prefect(p) => pb::get_request::Target::Prefect(p),
        }),
        allow_expired,
        bypass_cache,
        as_stored: want == Want::Stored,
        want: match want {
            Want::Json => Some(pb::Want::Json as i32),
            Want::Raw => Some(pb::Want::Raw as i32),
            Want::Stored => None,
        },
        serializer_hint: None,
    };
    match http.service.get_stream(call(headers, request)).await {
        Ok(reply) => streamed(headers, reply.into_inner(), want, range).await,
        Err(s) => error(s),
    }
}

/// A byte range `bytes=a-b`, `bytes=a-` or `bytes=-n` (one range).
#[derive(Clone, Copy)]
enum Range {
    From(u64, Option<u64>),
    Last(u64),
}

/// A `Range` header, or the message of a 400.
fn parse_range(v: &HeaderValue) -> Result<Range, String> {
    let bad = || "Range: expected one range, bytes=a-b, bytes=a- or bytes=-n".to_owned();
    let spec = v.to_str().map_err(|_| bad())?.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Ok(Range::Last(num(b)?)),
        (false, true) => Ok(Range::From(num(a)?, None)),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(bad());
            }
            Ok(Range::From(a, Some(b)))
        }
        (true, true) => Err(bad()),
    }
}

/// The first and last byte `range` covers in `len` bytes, or `None` when unsatisfiable.
fn span(range: Range, len: u64) -> Option<(u64, u64)> {
    match range {
        Range::From(a, _) if a >= len => None,
        Range::From(a, b) => Some((a, b.map_or(len - 1, |b| b.min(len - 1)))),
        Range::Last(0) => None,
        Range::Last(n) => Some((len.saturating_sub(n), len.checked_sub(1)?)),
    }
}

fn not_satisfiable(len: u64) -> Response {
    let mut r = error(tonic::Status::out_of_range(format!("the range is outside the value's {len} bytes")));
    *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
        r.headers_mut().insert(header::CONTENT_RANGE, v);
    }
    r
}

/// Headers every read answers with: the ETag and the reference.
fn read_headers(reference: Option<&pb::Reference>, value_serializer: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(r) = reference {
        let tag = if r.sha256.is_empty() { format!("W/\"{}\"", r.version) } else { format!("\"{}\"", r.sha256) };
        if let Ok(v) = HeaderValue::from_str(&tag) {
            headers.insert(header::ETAG, v);
        }
        let doc = resultstore_client::Reference(Box::new(r.clone())).to_json().to_string();
        if let Ok(v) = HeaderValue::from_str(&doc) {
            headers.insert("resultstore-reference", v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(value_serializer)
        && !value_serializer.is_empty()
    {
        headers.insert("resultstore-value-serializer", v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers
}

fn not_modified(request: &HeaderMap, reply: &HeaderMap) -> bool {
    let (Some(asked), Some(tag)) = (request.get(header::IF_NONE_MATCH), reply.get(header::ETAG)) else {
        return false;
    };
    let tag = tag.as_bytes();
    asked.to_str().is_ok_and(|a| a.split(',').map(str::trim).any(|t| t == "*" || t.as_bytes() == tag))
}

/// A Resolve reply as an HTTP response.
fn resolved(request: &HeaderMap, reply: pb::ResolveResponse, range: Option<Range>) -> Response {
    let mut headers = read_headers(reply.reference.as_ref(), &reply.value_serializer);
    if reply.cache_hit {
        headers.insert("resultstore-cache-hit", HeaderValue::from_static("true"));
    }
    if not_modified(request, &headers) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let (kind, body): (&str, Bytes) = match reply.value {
        Some(pb::resolve_response::Value::Json(j)) => ("application/json", Bytes::from(j)),
        Some(pb::resolve_response::Value::Data(d)) => ("application/octet-stream", d),
        Some(pb::resolve_response::Value::Literal(l)) => {
            let v = match pb::Literal::try_from(l) {
                Ok(pb::Literal::True) => "true",
                Ok(pb::Literal::False) => "false",
                _ => "null",
            };
            ("application/json", Bytes::from_static(v.as_bytes()))
        }
        None => ("application/json", Bytes::from_static(b"null")),
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let Some(range) = range else { return (headers, body).into_response() };
    let len = body.len() as u64;
    let Some((a, b)) = span(range, len) else { return not_satisfiable(len) };
    if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
        headers.insert(header::CONTENT_RANGE, v);
    }
    (StatusCode::PARTIAL_CONTENT, headers, body.slice(a as usize..=b as usize)).into_response()
}

/// A GetStream as an HTTP response: its header message becomes the headers, its chunks
/// the body. An error after the headers cuts the body off.
async fn streamed(
    request: &HeaderMap,
    mut messages: futures::stream::BoxStream<'static, Result<pb::GetStreamResponse, tonic::Status>>,
    want: Want,
    range: Option<Range>,
) -> Response {
    let header_message = match messages.next().await {
        Some(Ok(pb::GetStreamResponse { part: Some(pb::get_stream_response::Part::Header(h)) })) => h,
        Some(Err(s)) => return error(s),
        _ => return error(tonic::Status::internal("the stream did not start with its header")),
    };
    let mut headers = read_headers(header_message.reference.as_ref(), &header_message.value_serializer);
    if not_modified(request, &headers) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let kind = if want == Want::Json { "application/json" } else { "application/octet-stream" };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    let chunks = messages.filter_map(|m| async move {
        match m {
            Ok(pb::GetStreamResponse { part: Some(pb::get_stream_response::Part::Chunk(c)) }) => Some(Ok(c)),
            Ok(_) => None,
            Err(s) => {
                Some(Err(std::io::Error::other(format!("{}: {}", resultstore_proto::code_name(s.code()), s.message()))))
            }
        }
    });
    let mut status = StatusCode::OK;
    let body = match range {
        None => Body::from_stream(chunks),
        Some(range) => {
            // The value's length is known only from the stream's trailer, so a range here
            // is served from its start: `bytes=a-b` and `bytes=a-` (not `-n`).
            let Range::From(a, b) = range else {
                return bad_request("a suffix range (bytes=-n) is not served for streamed results");
            };
            status = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{}/*", b.map_or(String::new(), |b| b.to_string())))
            {
                headers.insert(header::CONTENT_RANGE, v);
            }
            Body::from_stream(slice_stream(chunks, a, b))
        }
    };
    // Chunked: the length of what follows is the trailer's to say (a stored object or a
    // transcoded value need not be the reference's size).
    (status, headers, body).into_response()
}

/// The bytes `a..=b` of a stream of chunks, without holding more than one chunk.
fn slice_stream(
    chunks: impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    a: u64,
    b: Option<u64>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let end = b.map_or(u64::MAX, |b| b.saturating_add(1));
    chunks
        .scan(0u64, move |offset, chunk| {
            let out = chunk.map(|c| {
                let start = *offset;
                *offset += c.len() as u64;
                let from = a.saturating_sub(start).min(c.len() as u64) as usize;
                let to = end.saturating_sub(start).min(c.len() as u64) as usize;
                if from < to { c.slice(from..to) } else { Bytes::new() }
            });
            futures::future::ready(Some(out))
        })
        .filter(|c| futures::future::ready(!matches!(c, Ok(b) if b.is_empty())))
}

async fn exists(
    State(http): State<Http>,
    Path((kind, name, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let location = Some(pb::Location { block: slug(&kind, &name), key });
    match http.service.exists(call(&headers, pb::ExistsRequest { location })).await {
        Ok(r) if r.get_ref().exists => StatusCode::OK.into_response(),
        Ok(_) => StatusCode::NOT_FOUND.into_response(),
        // HEAD has no body: the status says it all.
        Err(s) => http_status(&s).into_response(),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    #[serde(default)]
    serializer: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

async fn write(
    State(http): State<Http>,
    Path((kind, name, key)): Path<(String, String, String)>,
    Params(q): Params<WriteQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mode = match q.mode.as_deref() {
        None | Some("overwrite") => pb::WriteMode::Overwrite,
        Some("create_only") => pb::WriteMode::CreateOnly,
        Some(other) => return bad_request(format!("mode `{other}`: expected overwrite or create_only")),
    };
    let expiration = match q.expiration.as_deref().map(chrono::DateTime::parse_from_rfc3339).transpose() {
        Ok(t) => t.map(|t| prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }),
        Err(e) => return bad_request(format!("expiration is not an RFC 3339 time: {e}")),
    };
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let json_body = content_type.starts_with("application/json");
    if !json_body && !content_type.starts_with("application/octet-stream") {
        return bad_request(
            "Content-Type: application/json (JSON text) or application/octet-stream (a serializer's bytes)",
        );
    }
    let serializer = match (q.serializer, json_body) {
        (Some(s), _) => s,
        (None, true) => "json".to_owned(),
        (None, false) => return bad_request("an application/octet-stream body needs ?serializer= (pickle, ...)"),
    };
    // The body's bytes come from the unary requests' budget before they are read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(http.max_message);
    if declared > http.max_message {
        return too_large(declared, http.max_message);
    }
    let Some(_permit) = http.request_bytes.take(declared) else {
        return error(tonic::Status::resource_exhausted(
            "overloaded: requests the server is already reading fill limits.max_request_bytes_in_flight; retry with backoff",
        ));
    };
    let bytes = match axum::body::to_bytes(body, http.max_message).await {
        Ok(b) => b,
        Err(_) => return too_large(http.max_message + 1, http.max_message),
    };
    let payload = if json_body {
        match String::from_utf8(bytes.to_vec()) {
            Ok(text) => pb::put_request::Payload::Json(text),
            Err(_) => return bad_request("an application/json body must be UTF-8 JSON text"),
        }
    } else {
        pb::put_request::Payload::Data(bytes)
    };
    let request = pb::PutRequest {
        payload: Some(payload),
        task: Some(pb::ResultSettings {
            result_serializer: Some(pb::Serializer { r#type: serializer, config_json: String::new() }),
            result_storage: slug(&kind, &name),
            ..Default::default()
        }),
        key,
        expiration,
        mode: mode as i32,
        ..Default::default()
    };
    match http.service.put(call(&headers, request)).await {
        Ok(reply) => match resultstore_client::Stored::from_reply(reply.into_inner()) {
            Ok(stored) => (StatusCode::OK, axum::Json(stored.to_json())).into_response(),
            Err(e) => error(tonic::Status::internal(e.to_string())),
        },
        Err(s) => error(s),
    }
}

fn too_large(size: usize, limit: usize) -> Response {
    error(tonic::Status::resource_exhausted(format!(
        "the body ({size} bytes) is above limits.max_message_size ({limit} bytes); write large results with \
         gRPC PutStream"
    )))
}

async fn delete(
    State(http): State<Http>,
    Path((kind, name, key)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let location = Some(pb::Location { block: slug(&kind, &name), key });
    match http.service.delete(call(&headers, pb::DeleteRequest { location })).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(s) => error(s),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    page_size: u32,
    #[serde(default)]
    page_token: String,
}

async fn list(
    State(http): State<Http>,
    Path((kind, name)): Path<(String, String)>,
    Params(q): Params<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let request = pb::ListRequest {
        block: slug(&kind, &name),
        prefix: q.prefix,
        page_size: q.page_size,
        page_token: q.page_token,
    };
    match http.service.list(call(&headers, request)).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            let entries: Vec<Value> = reply
                .entries
                .iter()
                .map(|e| {
                    json!({
                        "key": e.key,
                        "size": e.size,
                        "last_modified": e.last_modified.as_ref().and_then(rfc3339),
                        "version": e.version,
                    })
                })
                .collect();
            let next = Some(reply.next_page_token).filter(|t| !t.is_empty());
            axum::Json(json!({"entries": entries, "next_page_token": next})).into_response()
        }
        Err(s) => error(s),
    }
}

fn rfc3339(ts: &prost_types::Timestamp) -> Option<String> {
    let t = chrono::DateTime::from_timestamp(ts.seconds, u32::try_from(ts.nanos).ok()?)?;
    Some(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeletePrefixQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    all: bool,
}

async fn delete_prefix(
    State(http): State<Http>,
    Path((kind, name)): Path<(String, String)>,
    Params(q): Params<DeletePrefixQuery>,
    headers: HeaderMap,
) -> Response {
    let request = pb::DeletePrefixRequest { block: slug(&kind, &name), prefix: q.prefix, all: q.all };
    match http.service.delete_prefix(call(&headers, request)).await {
        Ok(r) => axum::Json(json!({"deleted": r.get_ref().deleted, "bytes": r.get_ref().bytes})).into_response(),
        Err(s) => error(s),
    }
}

async fn list_blocks(State(http): State<Http>, headers: HeaderMap) -> Response {
    match http.service.list_blocks(call(&headers, pb::ListBlocksRequest {})).await {
        Ok(reply) => {
            let blocks: Vec<Value> = reply
                .into_inner()
                .blocks
                .iter()
                .map(|b| {
                    json!({
                        "slug": b.slug,
                        "block_type": b.block_type,
                        "format": b.format,
                        "url": b.url,
                        "is_default": b.is_default,
                    })
                })
                .collect();
            axum::Json(json!({ "blocks": blocks })).into_response()
        }
        Err(s) => error(s),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ResolveQuery {
    #[serde(default)]
    want: Option<String>,
    #[serde(default)]
    block: Option<String>,
    #[serde(default)]
    allow_expired: bool,
    #[serde(default)]
    bypass_cache: bool,
}

/// A reference document (`{"type": "reference", ...}`, as Put answers), a literal
/// (`{"type": "literal", "value": true}`), or a Prefect result document (read in `?block=`,
/// else the default block).
async fn resolve_document(
    State(http): State<Http>,
    Params(q): Params<ResolveQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let want = match want_of(q.want.as_deref()) {
        Ok(w) => w,
        Err(m) => return bad_request(m),
    };
    // A document is small: at most 1 MiB of it is read.
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return too_large((1 << 20) + 1, 1 << 20);
    };
    let Ok(text) = std::str::from_utf8(&bytes) else { return bad_request("the document is not UTF-8") };
    let doc: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("the document is not JSON: {e}")),
    };
    let target = match doc.get("type").and_then(Value::as_str) {
        Some("literal") | Some("reference") => match resultstore_client::Stored::from_json(text) {
            Ok(resultstore_client::Stored::Literal(l)) => {
                return ([(header::CONTENT_TYPE, "application/json")], l.to_json().to_string()).into_response();
            }
            Ok(resultstore_client::Stored::Reference(r)) => Target::Reference(r.0),
            Err(e) => return bad_request(e.to_string()),
        },
        _ => Target::Prefect(pb::PrefectReference { block: q.block.unwrap_or_default(), document: text.to_owned() }),
    };
    read_target(&http, &headers, target, want, q.allow_expired, q.bypass_cache).await
}

/// The cache's figures, for any caller the server lets in (they name no result).
async fn stats(State(http): State<Http>, headers: HeaderMap) -> Response {
    let generation = http.live.current();
    let token = headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
    if let Err(e) = generation.access.authenticate(token) {
        return error(crate::wire::grpc::status_of(e));
    }
    let cache = generation.store.cache();
    let c = cache.counters();
    axum::Json(json!({
        "cache": {
            "hits": c.hits,
            "misses": c.misses,
            "evictions": c.evictions,
            "bytes": cache.weighted_size(),
            "entries": cache.entry_count(),
            "capacity": generation.config.cache.capacity.0,
        },
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of docs/http.md, row by row: a change here must change the docs too.
    #[test]
    fn every_grpc_code_has_the_documented_http_status() {
        let storage = {
            let mut s = tonic::Status::unavailable("storage failed");
            s.metadata_mut().insert(
                resultstore_proto::UNAVAILABLE_REASON,
                tonic::metadata::MetadataValue::from_static(resultstore_proto::UNAVAILABLE_STORAGE),
            );
            s
        };
        let cases = [
            (tonic::Status::invalid_argument(""), 400),
            (tonic::Status::out_of_range(""), 400),
            (tonic::Status::unauthenticated(""), 401),
            (tonic::Status::permission_denied(""), 403),
            (tonic::Status::not_found(""), 404),
            (tonic::Status::already_exists(""), 409),
            (tonic::Status::aborted(""), 409),
            (tonic::Status::failed_precondition(""), 412),
            (tonic::Status::resource_exhausted("the reply is above the limit"), 413),
            (tonic::Status::resource_exhausted("overloaded: too many calls"), 503),
            (storage, 502),
            (tonic::Status::unavailable("draining"), 503),
            (tonic::Status::deadline_exceeded(""), 504),
            (tonic::Status::data_loss(""), 500),
            (tonic::Status::internal(""), 500),
            (tonic::Status::unknown(""), 500),
            (tonic::Status::unimplemented(""), 501),
        ];
        for (status, http) in cases {
            assert_eq!(http_status(&status).as_u16(), http, "{:?}", status.code());
        }
    }

    #[test]
    fn ranges_cover_what_they_say() {
        let r = |s: &str| parse_range(&HeaderValue::from_str(s).unwrap());
        assert!(matches!(r("bytes=2-5"), Ok(Range::From(2, Some(5)))));
        assert!(matches!(r("bytes=7-"), Ok(Range::From(7, None))));
        assert!(matches!(r("bytes=-3"), Ok(Range::Last(3))));
        for bad in ["bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=-", "bytes=a-b"] {
            assert!(r(bad).is_err(), "{bad}");
        }
        assert_eq!(span(Range::From(2, Some(5)), 10), Some((2, 5)));
        assert_eq!(span(Range::From(2, Some(50)), 10), Some((2, 9)));
        assert_eq!(span(Range::Last(3), 10), Some((7, 9)));
        assert_eq!(span(Range::Last(30), 10), Some((0, 9)));
        assert_eq!(span(Range::From(10, None), 10), None);
        assert_eq!(span(Range::Last(0), 10), None);
    }
}
