//! The bytes of unary requests in flight, bounded before they are buffered.
//!
//! tonic reads a unary request whole before its handler runs, so the handler's admission
//! (`limits.max_concurrent_requests`) comes after the memory is spent: 200 concurrent 8 MiB
//! Puts held 1.6 GiB whatever the limit said. This layer sits in front of tonic: it reads
//! only the gRPC frame header (the first 5 bytes: a flag and the message length), takes the
//! message's length from a process-wide budget (`limits.max_request_bytes_in_flight`), and
//! only then lets tonic read the message. A request that finds the budget spent is refused
//! at once with RESOURCE_EXHAUSTED, as calls beyond `limits.max_concurrent_requests` are
//! (load shedding: a queue would keep the waiting requests' bytes in their HTTP/2 windows,
//! up to 16 MiB per connection, which is the memory this bounds; refused, the stream is
//! reset and its buffered bytes dropped). Clients retry with backoff. The bytes go back to
//! the budget when the reply is ready (the request's buffers are gone by then).
//!
//! Requests of at most [`SMALL_REQUEST`] bytes, streams (`PutStream`, `GetStream`: bounded
//! by `limits.max_concurrent_streams` pieces) and the health and reflection services pass
//! without taking from the budget: they cannot add up to much, and a cache hit should not
//! pay for a semaphore. A message above `limits.max_message_size` takes at most that much
//! (tonic refuses it from its header without reading it).
//!
//! Own code because no tower layer knows gRPC framing; it is one header read and a
//! semaphore.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tonic::body::Body;

use crate::config::Config;
use crate::runtime::metrics::Metrics;

/// Requests up to this many bytes take nothing from the budget.
pub const SMALL_REQUEST: usize = 64 << 10;

/// The budget's unit: permits are KiB, so budgets up to 4 TiB fit a semaphore.
const UNIT: usize = 1024;

/// The process-wide budget of unary request bytes (see the module docs).
#[derive(Debug)]
pub struct RequestBytes {
    budget: Arc<Semaphore>,
    total_kib: u32,
    max_message: usize,
    /// Where refusals are counted (`resultstore_request_bytes_refused_total`).
    metrics: Arc<Metrics>,
}

impl RequestBytes {
    /// The budget `config`'s limits set (`max_request_bytes_in_flight`, read at start).
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let limits = &config.limits;
        let total_kib = u32::try_from(limits.max_request_bytes_in_flight.0 / UNIT as u64).unwrap_or(u32::MAX).max(1);
        RequestBytes {
            budget: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            max_message: usize::try_from(limits.max_message_size.0).unwrap_or(usize::MAX),
            metrics,
        }
    }
}

/// Whether a call's path is a unary `resultstore.v1` method (streams are bounded apart).
fn is_unary_call(path: &str) -> bool {
    path.strip_prefix("/resultstore.v1.ResultStore/").is_some_and(|m| m != "PutStream" && m != "GetStream")
}

/// The tower layer (see the module docs).
#[derive(Clone)]
pub struct RequestBytesLayer(pub Arc<RequestBytes>);

impl<S> tower::Layer<S> for RequestBytesLayer {
    type Service = RequestBytesService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestBytesService { inner, bytes: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct RequestBytesService<S> {
    inner: S,
    bytes: Arc<RequestBytes>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for RequestBytesService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone is ready too (tower's pattern: take the service that was polled).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !is_unary_call(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let bytes = self.bytes.clone();
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            // The frame header: the first 5 bytes of the body (almost always in its first
            // DATA frame, kept as it is: no copy).
            let mut head = Bytes::new();
            let mut trailers = None;
            while head.len() < 5 {
                match body.frame().await {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if head.is_empty() => head = data,
                        Ok(data) => {
                            let mut joined = BytesMut::from(&head[..]);
                            joined.extend_from_slice(&data);
                            head = joined.freeze();
                        }
                        Err(frame) => {
                            trailers = Some(frame);
                            break;
                        }
                    },
                    // A broken body: let tonic report it as it does.
                    Some(Err(_)) | None => break,
                }
            }
            let length =
                if head.len() >= 5 { u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize } else { 0 };
            let body = Body::new(Prefixed { head: Some(head), trailers, rest: body });
            let request = http::Request::from_parts(parts, body);
            if length <= SMALL_REQUEST {
                return inner.call(request).await;
            }
            let kib = u32::try_from(length.min(bytes.max_message).div_ceil(UNIT))
                .unwrap_or(u32::MAX)
                .clamp(1, bytes.total_kib);
            let Ok(permit) = bytes.budget.clone().try_acquire_many_owned(kib) else {
                bytes.metrics.request_bytes_refused.fetch_add(1, Ordering::Relaxed);
                let status = tonic::Status::resource_exhausted(format!(
                    "overloaded: requests the server is already reading fill limits.max_request_bytes_in_flight, \
                     so this {length}-byte request was not read; retry with backoff, or stream large results \
                     with PutStream"
                ));
                return Ok(status.into_http());
            };
            let response = inner.call(request).await;
            drop(permit);
            response
        })
    }
}

impl RequestBytes {
    /// `len` bytes of the budget for a request read outside gRPC (an HTTP body), or `None`
    /// when the budget is spent (the caller refuses the request as overloaded). Requests
    /// up to [`SMALL_REQUEST`] take nothing, as for gRPC.
    pub fn take(&self, len: usize) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
        if len <= SMALL_REQUEST {
            return Some(None);
        }
        let kib = u32::try_from(len.min(self.max_message).div_ceil(UNIT)).unwrap_or(u32::MAX).clamp(1, self.total_kib);
        match self.budget.clone().try_acquire_many_owned(kib) {
            Ok(p) => Some(Some(p)),
            Err(_) => {
                self.metrics.request_bytes_refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// A body whose first bytes were already read: those, then the rest.
struct Prefixed {
    head: Option<Bytes>,
    trailers: Option<Frame<Bytes>>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Some(head) = self.head.take()
            && head.has_remaining()
        {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.as_ref().is_none_or(|h| !h.has_remaining()) && self.trailers.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        hint.set_lower(hint.lower() + head);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}
