//! The gRPC boundary: one thin handler per RPC (convert, call [`ResultStore`], convert
//! the error), and [`status_of`], the one mapping of [`Error`] to `tonic::Status`.
//!
//! Handlers are traced with the block, key and size of the request; payload bytes are
//! never logged.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use resultstore_proto::v1 as pb;
use tokio::sync::OwnedSemaphorePermit;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::{Span, instrument};

use crate::config::auth::Access;
use crate::error::Error;
use crate::formats::reference::{Expectation, LiteralValue, ResultReference};
use crate::formats::serializer::SerializerConfig;
use crate::ops::settings::ResultSettings;
use crate::ops::store::{Payload, PutInput, PutOutcome, ReadOptions, ReadOutcome, ReadTarget, ResultStore, WriteMode};
use crate::ops::stream::{PutStreamHeader, StreamContent, StreamOutcome, StreamPart, StreamPayload, UploadPart};
use crate::runtime::live::{Generation, Live};
use crate::runtime::metrics::{Method, Metrics};
use crate::wire::tier::{Hop, Tier};

/// Maps a domain error to its gRPC status, once, here.
pub fn status_of(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::UnknownBlock { .. } | Error::NotFound { .. } => Status::not_found(msg),
        Error::InvalidSlug { .. }
        | Error::InvalidKey { .. }
        | Error::InvalidSerializer(_)
        | Error::InvalidSettings(_)
        | Error::InvalidRequest(_) => Status::invalid_argument(msg),
        Error::Expired { .. }
        | Error::NotPersisted { .. }
        | Error::CannotTranscode(_)
        | Error::SerializerUnknown { .. }
        | Error::KeyConflict { .. } => Status::failed_precondition(msg),
        Error::AlreadyExists { .. } => Status::already_exists(msg),
        Error::TooLarge { .. } | Error::StorageFull { .. } | Error::ExpandsTooFar { .. } => {
            Status::resource_exhausted(msg)
        }
        Error::IntegrityMismatch { .. } | Error::CorruptRecord { .. } | Error::UploadMismatch(_) => {
            Status::data_loss(msg)
        }
        Error::ChangedWhileReading { .. } | Error::UploadInterrupted(_) => Status::aborted(msg),
        Error::StorageUnavailable { .. } => unavailable(msg, resultstore_proto::UNAVAILABLE_STORAGE),
        Error::ShuttingDown => unavailable(msg, resultstore_proto::UNAVAILABLE_DRAINING),
        Error::Unauthenticated(_) => Status::unauthenticated(msg),
        Error::PermissionDenied { .. } => Status::permission_denied(msg),
        Error::Overloaded(_) => Status::resource_exhausted(msg),
        Error::TimedOut { .. } => Status::deadline_exceeded(msg),
        Error::Config(_) | Error::Serve(_) => Status::internal(msg),
    }
}

/// UNAVAILABLE with the trailer saying why ([`resultstore_proto::UNAVAILABLE_REASON`]).
fn unavailable(msg: String, reason: &'static str) -> Status {
    let mut status = Status::unavailable(msg);
    let value = tonic::metadata::MetadataValue::from_static(reason);
    status.metadata_mut().insert(resultstore_proto::UNAVAILABLE_REASON, value);
    status
}

/// The `resultstore.v1.ResultStore` service.
pub struct ResultStoreService {
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    max_message: usize,
    /// The other nodes of a tier, when this one is part of one.
    tier: Option<Arc<Tier>>,
}

/// What a handler gets once its call is admitted: the store of the generation in force
/// at the call's start, and the caller's access.
struct Ctx {
    store: Arc<ResultStore>,
    access: Access,
    /// What the call carries on to another node of the tier.
    hop: Hop,
    request_timeout: Duration,
    stream_idle_timeout: Duration,
}

impl Ctx {
    fn new(generation: &Generation, access: Access, hop: Hop) -> Self {
        let limits = &generation.config.limits;
        Ctx {
            store: generation.store.clone(),
            access,
            hop,
            request_timeout: limits.request_timeout,
            stream_idle_timeout: limits.stream_idle_timeout,
        }
    }
}

/// Records a call's end once: metrics by method and code, the code and duration on the
/// call's span, and one log line (OK at debug, a caller's mistake at info, a server-side
/// failure at warn). Dropped unfinished, the call counts as CANCELLED (the client went
/// away, or a stream was dropped mid-way).
struct CallEnd {
    metrics: Arc<Metrics>,
    method: Method,
    started: Instant,
    span: Span,
    done: bool,
    /// Who called, once the call's token was read.
    caller: Option<Access>,
}

impl CallEnd {
    fn start(metrics: &Arc<Metrics>, method: Method) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        CallEnd {
            metrics: metrics.clone(),
            method,
            started: Instant::now(),
            span: Span::current(),
            done: false,
            caller: None,
        }
    }

    /// The caller, named in the call's end event.
    fn admitted(&mut self, access: &Access) {
        self.caller = Some(access.clone());
    }

    fn finish(mut self, status: Option<&Status>) {
        self.record(status.map_or(Code::Ok, Status::code), status.map(Status::message));
    }

    fn record(&mut self, code: Code, message: Option<&str>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let took = self.started.elapsed();
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.finished(self.method, code, took);
        let code_name = resultstore_proto::code_name(code);
        let ms = took.as_secs_f64() * 1e3;
        self.span.record("code", code_name).record("duration_ms", ms);
        let _in = self.span.enter();
        let (method, caller) = (self.method.as_str(), self.caller.as_ref().map_or("?", Access::name));
        let error = message.unwrap_or_default();
        match code {
            Code::Ok => tracing::debug!(method, caller, code = code_name, duration_ms = ms, "call finished"),
            Code::Internal | Code::Unavailable | Code::DataLoss | Code::Unknown => {
                tracing::warn!(method, caller, code = code_name, duration_ms = ms, error, "call failed")
            }
            _ => tracing::info!(method, caller, code = code_name, duration_ms = ms, error, "call refused"),
        }
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        self.record(Code::Cancelled, Some("the call was dropped before it finished"));
    }
}

impl ResultStoreService {
    /// `max_message` is the gRPC message limit; replies above it are refused up front
    /// with a clear status instead of failing mid-stream.
    pub fn new(live: Arc<Live>, metrics: Arc<Metrics>, max_message: usize, tier: Option<Arc<Tier>>) -> Self {
        ResultStoreService { live, metrics, max_message, tier }
    }

    /// Lets a call in: not while draining, only with a known token (or where anonymous
    /// calls may go), and only while fewer than `limits.max_concurrent_requests` run.
    /// The permit is the call's place among the calls in flight: hold it to the call's end.
    fn admit(&self, metadata: &MetadataMap) -> Result<(Ctx, OwnedSemaphorePermit), Status> {
        let (generation, access) = self.enter(metadata)?;
        let permit = self.shed_unless(generation.admit())?;
        Ok((Ctx::new(&generation, access, Hop::of(metadata)), permit))
    }

    /// The generation in force and the caller's access: not while draining, only with a
    /// known token (or where anonymous calls may go). Takes no place among the calls.
    fn enter(&self, metadata: &MetadataMap) -> Result<(Arc<Generation>, Access), Status> {
        if self.live.is_draining() {
            return Err(status_of(Error::ShuttingDown));
        }
        let generation = self.live.current();
        let access =
            generation.access.authenticate(metadata.get("authorization").map(|v| v.as_bytes())).map_err(status_of)?;
        Span::current().record("caller", access.name());
        Ok((generation, access))
    }

    /// A place among the calls (or streams) in flight, counting the calls shed.
    fn shed_unless(&self, admitted: Result<OwnedSemaphorePermit, Error>) -> Result<OwnedSemaphorePermit, Status> {
        admitted.map_err(|e| {
            self.metrics.shed.fetch_add(1, Ordering::Relaxed);
            status_of(e)
        })
    }

    /// Runs a call whose reply is one message: admit, run `body` (within
    /// `limits.request_timeout` when `timed`), record the end.
    async fn call<T, R, F, Fut>(
        &self,
        method: Method,
        timed: bool,
        request: Request<T>,
        body: F,
    ) -> Result<Response<R>, Status>
    where
        F: FnOnce(Ctx, T) -> Fut,
        Fut: Future<Output = Result<R, Status>>,
    {
        let mut end = CallEnd::start(&self.metrics, method);
        let result = async {
            let (ctx, _permit) = self.admit(request.metadata())?;
            end.admitted(&ctx.access);
            let timeout = ctx.request_timeout;
            let run = body(ctx, request.into_inner());
            if !timed {
                return run.await;
            }
            tokio::time::timeout(timeout, run).await.unwrap_or_else(|_| {
                Err(status_of(timed_out(REQUEST_TIMEOUT, timeout, "the call did not finish within")))
            })
        }
        .await;
        end.finish(result.as_ref().err());
        result.map(Response::new)
    }

    /// Refuses a unary reply too large for one message, naming the RPC that streams it.
    fn check_reply_size(&self, len: usize, instead: &str) -> Result<(), Status> {
        // Room for the reference and framing around the value.
        let limit = self.max_message.saturating_sub(16 * 1024);
        if len > limit {
            return Err(status_of(Error::TooLarge {
                what: format!("the reply (above the unary message limit, limits.max_message_size; {instead})"),
                size: len as u64,
                limit: limit as u64,
            }));
        }
        Ok(())
    }
}

/// A GetStream once found: served here, or by the key's owner.
enum Opened {
    Here(Ctx, OwnedSemaphorePermit, Box<crate::ops::stream::ReadStream>),
    Forwarded(Ctx, OwnedSemaphorePermit, Box<Streaming<pb::GetStreamResponse>>),
}

/// Fails a stream that stays silent longer than `limit` (`limits.request_timeout`).
fn idle_timeout<S: futures::Stream + Send + 'static>(
    stream: S,
    limit: Duration,
    timed_out: impl Fn() -> S::Item + Send + 'static,
) -> BoxStream<'static, S::Item> {
    let stream = Box::pin(stream);
    futures::stream::unfold((stream, timed_out, false), move |(mut s, timed_out, over)| async move {
        if over {
            return None;
        }
        match tokio::time::timeout(limit, s.next()).await {
            Ok(Some(item)) => Some((item, (s, timed_out, false))),
            Ok(None) => None,
            Err(_) => Some((timed_out(), (s, timed_out, true))),
        }
    })
    .boxed()
}

fn write_mode_of(mode: i32) -> Result<WriteMode, Error> {
    match pb::WriteMode::try_from(mode) {
        Ok(pb::WriteMode::Overwrite) => Ok(WriteMode::Overwrite),
        Ok(pb::WriteMode::CreateOnly) => Ok(WriteMode::CreateOnly),
        Err(_) => Err(Error::InvalidRequest(format!("unknown write mode {mode}"))),
    }
}

fn put_stream_header(h: pb::PutStreamHeader) -> Result<PutStreamHeader, Error> {
    let payload = match pb::StreamPayload::try_from(h.payload) {
        Ok(pb::StreamPayload::Data) => StreamPayload::Data,
        Ok(pb::StreamPayload::Object) => StreamPayload::Object,
        Err(_) => return Err(Error::InvalidRequest(format!("unknown stream payload {}", h.payload))),
    };
    let sha256 = Some(h.sha256).filter(|s| !s.is_empty());
    if let Some(s) = &sha256
        && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(Error::InvalidRequest(format!("the header's sha256 `{s}` is not 64 hex digits")));
    }
    Ok(PutStreamHeader {
        payload,
        task: settings_of(h.task.as_ref())?,
        flow: h.flow.as_ref().map(|f| settings_of(Some(f))).transpose()?,
        key: Some(h.key).filter(|k| !k.is_empty()),
        new_key: Some(h.new_key).filter(|k| !k.is_empty()),
        expiration: time_of(h.expiration.as_ref())?,
        mode: write_mode_of(h.mode)?,
        size: h.size,
        sha256,
    })
}

fn time_of(ts: Option<&prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, Error> {
    ts.map(|ts| {
        let nanos =
            u32::try_from(ts.nanos).map_err(|_| Error::InvalidRequest("a timestamp has negative nanos".into()))?;
        DateTime::from_timestamp(ts.seconds, nanos)
            .ok_or_else(|| Error::InvalidRequest("a timestamp is out of range".into()))
    })
    .transpose()
}

fn timestamp(t: &DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 }
}

fn serializer_of(s: Option<&pb::Serializer>) -> Result<Option<SerializerConfig>, Error> {
    match s {
        None => Ok(None),
        Some(s) if s.r#type.is_empty() && s.config_json.trim().is_empty() => Ok(None),
        Some(s) => SerializerConfig::from_request(&s.r#type, &s.config_json).map(Some).map_err(Error::from),
    }
}

fn serializer_pb(s: &SerializerConfig) -> pb::Serializer {
    pb::Serializer { r#type: s.type_name().to_owned(), config_json: s.to_json_string() }
}

fn settings_of(s: Option<&pb::ResultSettings>) -> Result<ResultSettings, Error> {
    let Some(s) = s else {
        return Ok(ResultSettings::default());
    };
    Ok(ResultSettings {
        persist_result: s.persist_result,
        result_storage: Some(s.result_storage.clone()).filter(|v| !v.is_empty()),
        result_serializer: serializer_of(s.result_serializer.as_ref())?,
        retries: s.retries,
        cache_key: Some(s.cache_key.clone()).filter(|v| !v.is_empty()),
    })
}

fn literal_of(l: i32) -> Result<LiteralValue, Error> {
    match pb::Literal::try_from(l) {
        Ok(pb::Literal::True) => Ok(LiteralValue::True),
        Ok(pb::Literal::False) => Ok(LiteralValue::False),
        Ok(pb::Literal::Null) => Ok(LiteralValue::Null),
        _ => Err(Error::InvalidRequest(
            "the literal is unspecified; use LITERAL_TRUE, LITERAL_FALSE or LITERAL_NULL".into(),
        )),
    }
}

fn literal_pb(l: LiteralValue) -> i32 {
    match l {
        LiteralValue::True => pb::Literal::True as i32,
        LiteralValue::False => pb::Literal::False as i32,
        LiteralValue::Null => pb::Literal::Null as i32,
    }
}

/// The reference as the API shows it.
pub fn reference_pb(r: &ResultReference) -> pb::Reference {
    pb::Reference {
        block: r.block.clone(),
        key: r.key.clone(),
        serializer: Some(serializer_pb(&r.serializer)),
        size: r.size,
        sha256: r.sha256.clone(),
        version: r.version.clone().unwrap_or_default(),
        created: r.created.as_ref().map(timestamp),
        expiration: r.expiration.as_ref().map(timestamp),
        persisted: Some(r.persisted),
        uri: r.uri.clone(),
        format: r.format.as_str().to_owned(),
    }
}

fn put_input(req: pb::PutRequest) -> Result<PutInput, Error> {
    let payload = match req.payload {
        Some(pb::put_request::Payload::Data(d)) => Payload::Data(d),
        Some(pb::put_request::Payload::Json(j)) => Payload::Json(j),
        Some(pb::put_request::Payload::Literal(l)) => Payload::Literal(literal_of(l)?),
        Some(pb::put_request::Payload::Object(o)) => Payload::Object(o),
        None => {
            return Err(Error::InvalidRequest(
                "the request has no payload: set `data`, `json`, `literal` or `object`".into(),
            ));
        }
    };
    let mode = write_mode_of(req.mode)?;
    Ok(PutInput {
        payload,
        task: settings_of(req.task.as_ref())?,
        flow: req.flow.as_ref().map(|f| settings_of(Some(f))).transpose()?,
        key: Some(req.key).filter(|k| !k.is_empty()),
        new_key: Some(req.new_key).filter(|k| !k.is_empty()),
        expiration: time_of(req.expiration.as_ref())?,
        mode,
    })
}

/// A Get's or GetStream's target and options; records the target in the current span.
fn get_target_and_options(req: &pb::GetRequest) -> Result<(ReadTarget, ReadOptions), Status> {
    let target = read_target(req.target.clone().map(|t| match t {
        pb::get_request::Target::Reference(r) => Target::Reference(Box::new(r)),
        pb::get_request::Target::Location(l) => Target::Location(l),
        pb::get_request::Target::Prefect(p) => Target::Prefect(p),
    }))
    .map_err(status_of)?;
    record_target(&Span::current(), &target);
    let opts = ReadOptions {
        as_stored: req.as_stored,
        ..read_options(req.allow_expired, req.bypass_cache, req.serializer_hint.as_ref())?
    };
    Ok((target, opts))
}

/// A Put's or PutStream's reply; records the stored result in the current span.
fn put_response(outcome: PutOutcome) -> pb::PutResponse {
    let result = match outcome {
        PutOutcome::Literal(l) => pb::put_response::Result::Literal(literal_pb(l)),
        PutOutcome::Stored(r) => {
            let span = Span::current();
            span.record("block", r.block.as_str());
            span.record("key", r.key.as_str());
            span.record("size", r.size);
            pb::put_response::Result::Reference(reference_pb(&r))
        }
    };
    pb::PutResponse { result: Some(result) }
}

fn literal_has_no_record() -> Status {
    Status::failed_precondition(
        "the Prefect document is a literal: it has no stored record; use Resolve to read its value",
    )
}

/// A read target of Get or Resolve.
enum Target {
    Reference(Box<pb::Reference>),
    Location(pb::Location),
    Prefect(pb::PrefectReference),
}

fn read_target(target: Option<Target>) -> Result<ReadTarget, Error> {
    match target {
        Some(Target::Reference(r)) => Ok(ReadTarget::Reference {
            expect: Expectation {
                sha256: Some(r.sha256.to_ascii_lowercase()).filter(|s| !s.is_empty()),
                version: Some(r.version).filter(|v| !v.is_empty()),
                persisted: r.persisted.unwrap_or(true),
            },
            serializer: serializer_of(r.serializer.as_ref())?,
            block: r.block.clone(),
            key: r.key.clone(),
        }),
        Some(Target::Location(l)) => Ok(ReadTarget::Location { block: l.block, key: l.key }),
        Some(Target::Prefect(p)) => Ok(ReadTarget::Prefect { block: p.block, document: p.document }),
        None => {
            Err(Error::InvalidRequest("the request names no target: set `reference`, `location` or `prefect`".into()))
        }
    }
}

fn read_options(allow_expired: bool, bypass_cache: bool, hint: Option<&pb::Serializer>) -> Result<ReadOptions, Status> {
    Ok(ReadOptions {
        allow_expired,
        bypass_cache,
        serializer_hint: serializer_of(hint).map_err(status_of)?,
        as_stored: false,
    })
}

fn record_target(span: &Span, t: &ReadTarget) {
    match t {
        ReadTarget::Reference { block, key, .. } | ReadTarget::Location { block, key } => {
            span.record("block", block.as_str());
            span.record("key", key.as_str());
        }
        ReadTarget::Prefect { block, .. } => {
            span.record("block", block.as_str());
        }
    }
}

/// A streamed reply (GetStream, Sweep) that records its call's end when its last message
/// is sent, or its first error.
struct TrackedStream<T> {
    inner: BoxStream<'static, Result<T, Status>>,
    end: Option<CallEnd>,
}

/// Hands a server stream's messages (GetStream, Sweep) to tonic from a task that holds the stream's place among
/// those in flight: a client that takes no message for `idle` (`limits.stream_idle_timeout`;
/// it stopped reading, so its HTTP/2 window and the one-message channel are full) has its
/// stream ended with DEADLINE_EXCEEDED and the place freed at once. Without the task the
/// place would live in the reply stream, which tonic only drops when the client reads on
/// or goes away: clients that stop reading could hold every place.
fn paced<T: Send + 'static>(
    mut messages: BoxStream<'static, Result<T, Status>>,
    permit: OwnedSemaphorePermit,
    idle: Duration,
) -> BoxStream<'static, Result<T, Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let cut: Arc<std::sync::Mutex<Option<Status>>> = Arc::default();
    let cut_by_task = cut.clone();
    tokio::spawn(async move {
        let _permit = permit;
        while let Some(message) = messages.next().await {
            let last = message.is_err();
            match tokio::time::timeout(idle, tx.send(message)).await {
                Ok(Ok(())) if !last => {}
                // The end, or the client went away.
                Ok(_) => return,
                Err(_) => {
                    tracing::info!("a streaming client took nothing for limits.stream_idle_timeout; its stream ends");
                    let error = status_of(timed_out(STREAM_IDLE_TIMEOUT, idle, "the client took nothing for"));
                    if let Ok(mut slot) = cut_by_task.lock() {
                        *slot = Some(error);
                    }
                    return;
                }
            }
        }
    });
    let tail = futures::stream::once(async move { cut.lock().ok().and_then(|mut slot| slot.take()) })
        .filter_map(|cut| async move { cut.map(Err) });
    tokio_stream::wrappers::ReceiverStream::new(rx).chain(tail).boxed()
}

impl<T> futures::Stream for TrackedStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let next = self.inner.poll_next_unpin(cx);
        match &next {
            Poll::Ready(Some(Err(status))) => {
                if let Some(end) = self.end.take() {
                    end.finish(Some(status));
                }
            }
            Poll::Ready(None) => {
                if let Some(end) = self.end.take() {
                    end.finish(None);
                }
            }
            _ => {}
        }
        next
    }
}

fn sweep_progress(r: &crate::ops::lifecycle::SweepReport, done: bool) -> pb::SweepProgress {
    pb::SweepProgress {
        scanned: r.scanned,
        expired: r.expired,
        deleted: r.deleted,
        bytes: r.bytes,
        rewritten: r.rewritten,
        unreadable: r.unreadable,
        orphaned_documents: r.orphaned_documents,
        done,
    }
}

/// A call, or a stream's silence, outlasted `limit`, the value of `setting`.
fn timed_out(setting: &'static str, limit: Duration, what: &str) -> Error {
    Error::TimedOut { what: format!("{what} {}", humantime::format_duration(limit)), setting }
}

/// The settings whose time ran out.
const REQUEST_TIMEOUT: &str = "limits.request_timeout";
const STREAM_IDLE_TIMEOUT: &str = "limits.stream_idle_timeout";

#[tonic::async_trait]
impl pb::result_store_server::ResultStore for ResultStoreService {
    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "Put", block, key, size, caller, code, duration_ms)
    )]
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.call(Method::Put, true, request, |ctx, mut req| async move {
            if let Some(tier) = &self.tier
                && let Some(reply) = tier.put(&ctx.hop, &mut req).await?
            {
                return Ok(reply);
            }
            let input = put_input(req).map_err(status_of)?;
            let outcome = ctx.store.put(input, &ctx.access).await.map_err(status_of)?;
            Ok(put_response(outcome))
        })
        .await
    }

    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "Get", block, key, size, caller, code, duration_ms)
    )]
    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.call(Method::Get, true, request, |ctx, req| async move {
            let (target, opts) = get_target_and_options(&req)?;
            if let Some(tier) = &self.tier
                && let Some(reply) = tier.get(&ctx.hop, &req).await?
            {
                return Ok(reply);
            }
            match ctx.store.read(target, opts, &ctx.access).await.map_err(status_of)? {
                ReadOutcome::Literal(_) => Err(literal_has_no_record()),
                ReadOutcome::Loaded { result, .. } => {
                    Span::current().record("size", result.reference.size);
                    let data = if req.as_stored {
                        ctx.store.stored_object(&result).map_err(status_of)?
                    } else {
                        result.record.data.clone()
                    };
                    self.check_reply_size(data.len(), "read it with GetStream")?;
                    Ok(pb::GetResponse {
                        reference: Some(reference_pb(&result.reference)),
                        data,
                        metadata_json: String::from_utf8_lossy(&result.record.metadata_json()).into_owned(),
                    })
                }
            }
        })
        .await
    }

    /// Not bounded as a whole by `limits.request_timeout` (a large upload takes its
    /// time): the header, and each chunk after it, must arrive within it.
    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "PutStream", block, key, size, caller, code, duration_ms)
    )]
    async fn put_stream(
        &self,
        request: Request<Streaming<pb::PutStreamRequest>>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let mut end = CallEnd::start(&self.metrics, Method::PutStream);
        let result = async {
            // Authenticated, but no place taken yet: a stream earns one with a header
            // whose block the caller may write, sent within limits.stream_idle_timeout.
            let (generation, access) = self.enter(request.metadata())?;
            end.admitted(&access);
            let hop = Hop::of(request.metadata());
            let idle = generation.config.limits.stream_idle_timeout;
            let mut messages = request.into_inner();
            let first = tokio::time::timeout(idle, messages.message())
                .await
                .map_err(|_| status_of(timed_out(STREAM_IDLE_TIMEOUT, idle, "no PutStream header arrived within")))??;
            let header = match first {
                Some(pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::Header(h)) }) => h,
                _ => {
                    return Err(status_of(Error::InvalidRequest(
                        "a PutStream starts with one `header` message, then `chunk` messages".into(),
                    )));
                }
            };
            let mut header_pb = header;
            let mut header = put_stream_header(header_pb.clone()).map_err(status_of)?;
            if let Some(key) = &header.key {
                Span::current().record("key", key.as_str());
            }
            generation.store.put_stream_block(&header, &access).map_err(status_of)?;
            let _permit = self.shed_unless(generation.admit_stream())?;
            if let Some(tier) = &self.tier {
                let inbound = Arc::new(tokio::sync::Mutex::new(Some(messages)));
                if let Some(reply) = tier.put_stream(&hop, &mut header_pb, &inbound).await? {
                    return Ok(reply);
                }
                // No node took a chunk: the stream is whole here, with the key the tier named.
                header.new_key = Some(header_pb.new_key).filter(|k| !k.is_empty());
                messages =
                    inbound.lock().await.take().ok_or_else(|| {
                        Status::internal("the PutStream's messages were taken by a forward that failed")
                    })?;
            }
            let chunks = messages.map(|m| match m {
                Ok(pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::Chunk(c)) }) => {
                    Ok(UploadPart::Chunk(c))
                }
                Ok(pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::End(_)) }) => Ok(UploadPart::End),
                Ok(_) => Err(Error::InvalidRequest(
                    "a PutStream has one `header` message, first; then `chunk` messages, then `end`".into(),
                )),
                Err(status) => Err(Error::UploadInterrupted(status.message().to_owned())),
            });
            let chunks = idle_timeout(chunks, idle, move || {
                Err(timed_out(STREAM_IDLE_TIMEOUT, idle, "the stream sent nothing for"))
            });
            let outcome = generation.store.put_stream(header, chunks, &access).await.map_err(status_of)?;
            Ok(put_response(outcome))
        }
        .await;
        end.finish(result.as_ref().err());
        result.map(Response::new)
    }

    type GetStreamStream = BoxStream<'static, Result<pb::GetStreamResponse, Status>>;

    /// `limits.request_timeout` bounds finding the result and each storage read after
    /// it, not the whole transfer.
    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "GetStream", block, key, size, caller, code, duration_ms)
    )]
    async fn get_stream(&self, request: Request<pb::GetRequest>) -> Result<Response<Self::GetStreamStream>, Status> {
        let mut end = CallEnd::start(&self.metrics, Method::GetStream);
        let opened = async {
            let (generation, access) = self.enter(request.metadata())?;
            end.admitted(&access);
            let hop = Hop::of(request.metadata());
            let req = request.into_inner();
            let (target, opts) = get_target_and_options(&req)?;
            // The caller's scope first: a token that may not read there takes no place.
            generation.store.check_read(&target, &opts, &access).map_err(status_of)?;
            let permit = self.shed_unless(generation.admit_stream())?;
            let ctx = Ctx::new(&generation, access, hop);
            if let Some(tier) = &self.tier
                && let Some(owner) = tier.get_stream(&ctx.hop, &req).await?
            {
                return Ok(Opened::Forwarded(ctx, permit, Box::new(owner)));
            }
            let content = match req.want.map(pb::Want::try_from) {
                None => StreamContent::Stored,
                Some(Ok(pb::Want::Raw)) => StreamContent::Value,
                Some(Ok(pb::Want::Json)) => StreamContent::Json,
                Some(Err(_)) => return Err(Status::invalid_argument(format!("unknown want {:?}", req.want))),
            };
            if content != StreamContent::Stored && req.as_stored {
                return Err(Status::invalid_argument("`want` streams the value; `as_stored` the object: set one"));
            }
            let limit = ctx.request_timeout;
            let outcome = tokio::time::timeout(limit, ctx.store.read_stream(target, opts, content, &ctx.access))
                .await
                .unwrap_or_else(|_| Err(timed_out(REQUEST_TIMEOUT, limit, "the result was not found within")))
                .map_err(status_of)?;
            match outcome {
                StreamOutcome::Literal(_) => Err(literal_has_no_record()),
                StreamOutcome::Stream(s) => Ok(Opened::Here(ctx, permit, s)),
            }
        }
        .await;
        let (ctx, permit, stream) = match opened {
            Ok(Opened::Here(ctx, permit, stream)) => (ctx, permit, stream),
            Ok(Opened::Forwarded(ctx, permit, owner)) => {
                // The owner's messages as they come, paced and bounded as ours are.
                let messages = paced(owner.boxed(), permit, ctx.stream_idle_timeout);
                return Ok(Response::new(TrackedStream { inner: messages, end: Some(end) }.boxed()));
            }
            Err(status) => {
                end.finish(Some(&status));
                return Err(status);
            }
        };
        Span::current().record("size", stream.reference.size);
        let header = pb::GetStreamResponse {
            part: Some(pb::get_stream_response::Part::Header(pb::GetStreamHeader {
                reference: Some(reference_pb(&stream.reference)),
                metadata_json: stream.metadata_json,
                value_serializer: stream.value_serializer.unwrap_or_default(),
            })),
        };
        let limit = ctx.request_timeout;
        let parts = idle_timeout(stream.parts, limit, move || {
            Err(timed_out(REQUEST_TIMEOUT, limit, "storage sent nothing for"))
        });
        let body = parts.map_ok(|part| pb::GetStreamResponse {
            part: Some(match part {
                StreamPart::Chunk(c) => pb::get_stream_response::Part::Chunk(c),
                StreamPart::End { size, sha256 } => {
                    pb::get_stream_response::Part::Trailer(pb::GetStreamTrailer { size, sha256 })
                }
            }),
        });
        let messages = futures::stream::once(async { Ok(header) }).chain(body.map_err(status_of)).boxed();
        let messages = paced(messages, permit, ctx.stream_idle_timeout);
        Ok(Response::new(TrackedStream { inner: messages, end: Some(end) }.boxed()))
    }

    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "Resolve", block, key, size, caller, code, duration_ms)
    )]
    async fn resolve(&self, request: Request<pb::ResolveRequest>) -> Result<Response<pb::ResolveResponse>, Status> {
        self.call(Method::Resolve, true, request, |ctx, req| async move {
            let want = pb::Want::try_from(req.want)
                .map_err(|_| Status::invalid_argument(format!("unknown want {}", req.want)))?;
            // Checked by the owner, as it would be here.
            if let Some(tier) = &self.tier
                && let Some(reply) = tier.resolve(&ctx.hop, &req).await?
            {
                return Ok(reply);
            }
            let target = read_target(req.target.map(|t| match t {
                pb::resolve_request::Target::Reference(r) => Target::Reference(Box::new(r)),
                pb::resolve_request::Target::Location(l) => Target::Location(l),
                pb::resolve_request::Target::Prefect(p) => Target::Prefect(p),
            }))
            .map_err(status_of)?;
            record_target(&Span::current(), &target);
            let opts = read_options(req.allow_expired, req.bypass_cache, req.serializer_hint.as_ref())?;
            Ok(match ctx.store.read(target, opts, &ctx.access).await.map_err(status_of)? {
                ReadOutcome::Literal(l) => pb::ResolveResponse {
                    value: Some(pb::resolve_response::Value::Literal(literal_pb(l))),
                    ..Default::default()
                },
                ReadOutcome::Loaded { result, cache_hit } => {
                    Span::current().record("size", result.reference.size);
                    let value = match want {
                        pb::Want::Raw => {
                            self.check_reply_size(
                                result.value.bytes.len(),
                                "read its serializer bytes with GetStream",
                            )?;
                            pb::resolve_response::Value::Data(result.value.bytes.clone())
                        }
                        pb::Want::Json => {
                            let json = ctx.store.to_json(&result).map_err(status_of)?;
                            self.check_reply_size(json.len(), "read its serializer bytes with GetStream")?;
                            pb::resolve_response::Value::Json(String::from_utf8_lossy(&json).into_owned())
                        }
                    };
                    pb::ResolveResponse {
                        reference: Some(reference_pb(&result.reference)),
                        value: Some(value),
                        value_serializer: result.value.kind.name().to_owned(),
                        cache_hit,
                    }
                }
            })
        })
        .await
    }

    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "Exists", block, key, caller, code, duration_ms)
    )]
    async fn exists(&self, request: Request<pb::ExistsRequest>) -> Result<Response<pb::ExistsResponse>, Status> {
        self.call(Method::Exists, true, request, |ctx, req| async move {
            if let Some(tier) = &self.tier
                && let Some(reply) = tier.exists(&ctx.hop, &req).await?
            {
                return Ok(reply);
            }
            let loc = req.location.unwrap_or_default();
            Span::current().record("block", loc.block.as_str()).record("key", loc.key.as_str());
            let exists = ctx.store.exists(&loc.block, &loc.key, &ctx.access).await.map_err(status_of)?;
            Ok(pb::ExistsResponse { exists })
        })
        .await
    }

    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "Delete", block, key, caller, code, duration_ms)
    )]
    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        self.call(Method::Delete, true, request, |ctx, req| async move {
            if let Some(tier) = &self.tier
                && let Some(reply) = tier.delete(&ctx.hop, &req).await?
            {
                return Ok(reply);
            }
            let loc = req.location.unwrap_or_default();
            Span::current().record("block", loc.block.as_str()).record("key", loc.key.as_str());
            ctx.store.delete(&loc.block, &loc.key, &ctx.access).await.map_err(status_of)?;
            Ok(pb::DeleteResponse {})
        })
        .await
    }

    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "DeletePrefix", block, prefix, caller, code, duration_ms)
    )]
    async fn delete_prefix(
        &self,
        request: Request<pb::DeletePrefixRequest>,
    ) -> Result<Response<pb::DeletePrefixResponse>, Status> {
        // Not bounded by limits.request_timeout: a prefix may hold any number of results,
        // and each delete is a storage call of its own with its own timeout.
        self.call(Method::DeletePrefix, false, request, |ctx, req| async move {
            Span::current().record("block", req.block.as_str()).record("prefix", req.prefix.as_str());
            if let Some(tier) = &self.tier
                && let Some(reply) = tier.delete_prefix(&ctx.hop, &req).await?
            {
                return Ok(reply);
            }
            let report =
                ctx.store.delete_prefix(&req.block, &req.prefix, req.all, &ctx.access).await.map_err(status_of)?;
            let mut reply = pb::DeletePrefixResponse { deleted: report.deleted, bytes: report.bytes };
            if let Some(tier) = &self.tier {
                tier.delete_prefix_on_peers(&ctx.hop, &req, &mut reply).await;
            }
            Ok(reply)
        })
        .await
    }

    type SweepStream = BoxStream<'static, Result<pb::SweepProgress, Status>>;

    /// The sweep runs in the task that hands its progress to tonic: a caller that goes
    /// away, or takes nothing for `limits.stream_idle_timeout`, stops it at its next
    /// progress message (see `ops::lifecycle` for why stopping anywhere is safe).
    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "Sweep", block, prefix, caller, code, duration_ms)
    )]
    async fn sweep(&self, request: Request<pb::SweepRequest>) -> Result<Response<Self::SweepStream>, Status> {
        let mut end = CallEnd::start(&self.metrics, Method::Sweep);
        let opened = (|| {
            let (generation, access) = self.enter(request.metadata())?;
            end.admitted(&access);
            let req = request.into_inner();
            Span::current().record("block", req.block.as_str()).record("prefix", req.prefix.as_str());
            let older_than = match req.older_than {
                Some(d) => Some(
                    Duration::try_from(d).map_err(|_| Status::invalid_argument("older_than is a negative duration"))?,
                ),
                None => None,
            };
            let opts = generation
                .store
                .sweep_options(&req.block, &req.prefix, older_than, req.dry_run, &access)
                .map_err(status_of)?;
            let permit = self.shed_unless(generation.admit_stream())?;
            Ok((Ctx::new(&generation, access, Hop::default()), req.block, opts, permit))
        })();
        let (ctx, block, opts, permit) = match opened {
            Ok(opened) => opened,
            Err(status) => {
                end.finish(Some(&status));
                return Err(status);
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let idle = ctx.stream_idle_timeout;
        let work = async move {
            let heard = tx.clone();
            // Progress that finds the channel full is skipped: the next one says more.
            let report = ctx
                .store
                .sweep_expired(&block, &opts, &ctx.access, |r| {
                    let _ = heard.try_send(Ok(sweep_progress(r, false)));
                })
                .await;
            let _ = tx.send(report.map(|r| sweep_progress(&r, true)).map_err(status_of)).await;
        };
        let work = futures::stream::once(work).filter_map(|()| async { None });
        let messages = futures::stream::select(work, tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        // Run by `paced`'s task: a caller that goes away, or takes nothing for
        // limits.stream_idle_timeout, ends the sweep and frees its stream place.
        let messages = paced(messages, permit, idle);
        Ok(Response::new(TrackedStream { inner: messages, end: Some(end) }.boxed()))
    }

    #[instrument(
        level = "debug",
        name = "rpc",
        skip_all,
        fields(method = "List", block, prefix, caller, code, duration_ms)
    )]
    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        self.call(Method::List, true, request, |ctx, req| async move {
            Span::current().record("block", req.block.as_str()).record("prefix", req.prefix.as_str());
            let page = ctx
                .store
                .list(&req.block, &req.prefix, req.page_size as usize, &req.page_token, &ctx.access)
                .await
                .map_err(status_of)?;
            Ok(pb::ListResponse {
                entries: page
                    .entries
                    .into_iter()
                    .map(|m| pb::ListEntry {
                        key: m.location.to_string(),
                        size: m.size,
                        last_modified: Some(timestamp(&m.last_modified)),
                        version: m.e_tag.or(m.version).unwrap_or_default(),
                    })
                    .collect(),
                next_page_token: page.next_page_token.unwrap_or_default(),
            })
        })
        .await
    }

    /// Only the blocks the caller holds some operation on.
    #[instrument(level = "debug", name = "rpc", skip_all, fields(method = "ListBlocks", caller, code, duration_ms))]
    async fn list_blocks(
        &self,
        request: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksResponse>, Status> {
        self.call(Method::ListBlocks, true, request, |ctx, _req| async move {
            let registry = ctx.store.blocks();
            let blocks = registry
                .iter()
                .filter(|b| ctx.access.sees(&b.slug))
                .map(|b| pb::BlockInfo {
                    slug: b.slug.clone(),
                    block_type: b.block_type.as_str().to_owned(),
                    format: b.format.as_str().to_owned(),
                    url: b.url.clone(),
                    is_default: b.slug == registry.default_slug(),
                })
                .collect();
            Ok(pb::ListBlocksResponse { blocks })
        })
        .await
    }
}
