//! PutStream and GetStream: results larger than one gRPC message.
//!
//! [`Client::put_stream`] sends a header then the payload in chunks; [`Client::put_file`]
//! streams a file. [`Client::get_stream`] returns a [`GetStream`] whose chunks are checked
//! against the server's trailer (size and sha256): a stream is whole only when
//! [`GetStream::next_chunk`] has returned `Ok(None)`. [`Client::get_to_file`] writes to
//! `PATH.partial` and renames it to `PATH` only then, so a broken stream never leaves a
//! file that looks whole.

use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use resultstore_proto::v1 as pb;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Client, ClientError, Put, ReadOptions, Reference, Result, Stored, Target};

/// The chunk size the client sends and that fits every server's message limit.
pub const STREAM_CHUNK: usize = 1 << 20;

impl Client {
    /// Stores a result sent in chunks: `put`'s settings, key and mode make the header; its
    /// payload must be [`Put::data`] or [`Put::object`], whose bytes are sent first,
    /// followed by `chunks`, then the `end` message that tells the server the payload is
    /// whole. The end of `chunks` is the end of the payload; to give up without storing
    /// anything, drop the returned future (the call is cancelled and, with no `end`,
    /// nothing is committed). When `chunks` may end before the payload does (a source
    /// that can fail), also announce the size with [`Put::size`].
    pub async fn put_stream<S>(&self, put: Put, chunks: S) -> Result<Stored>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let Put { mut request, stream_size, stream_sha256 } = put;
        crate::name_new_key(&mut request.new_key, &request.key, request.task.as_ref());
        // The first replica for the key, without failover: the chunks are consumed as
        // they are sent, so they could not be sent again.
        let key = crate::put_key(&request.key, request.task.as_ref(), &request.new_key);
        let replica = self.router.order(key).remove(0);
        let (payload, first) = match request.payload {
            Some(pb::put_request::Payload::Data(d)) => (pb::StreamPayload::Data, d),
            Some(pb::put_request::Payload::Object(o)) => (pb::StreamPayload::Object, o),
            _ => return Err(ClientError::Document("PutStream carries `data` or `object` payloads".into())),
        };
        let header = pb::PutStreamHeader {
            payload: payload as i32,
            task: request.task,
            flow: request.flow,
            key: request.key,
            new_key: request.new_key,
            expiration: request.expiration,
            mode: request.mode,
            size: stream_size,
            sha256: stream_sha256,
        };
        let chunk = |c: Bytes| pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::Chunk(c)) };
        let messages = futures::stream::iter([
            pb::PutStreamRequest { part: Some(pb::put_stream_request::Part::Header(header)) },
            chunk(first),
        ])
        .chain(chunks.map(chunk))
        .chain(futures::stream::iter([pb::PutStreamRequest {
            part: Some(pb::put_stream_request::Part::End(pb::PutStreamEnd {})),
        }]));
        let reply = replica.client.clone().put_stream(messages).await;
        self.router.outcome(&replica, reply.as_ref().err());
        Stored::from_reply(reply?.into_inner())
    }

    /// Streams a file into a result (its size goes in the header, so a file that changes
    /// length while it is read is refused rather than stored short).
    pub async fn put_file(&self, put: Put, path: &Path) -> Result<Stored> {
        let file = tokio::fs::File::open(path).await?;
        let size = file.metadata().await?.len();
        let chunks = futures::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; STREAM_CHUNK];
            let mut n = 0;
            while n < buf.len() {
                match file.read(&mut buf[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    // The stream ends short; the announced size makes the server refuse it.
                    Err(_) => return None,
                }
            }
            buf.truncate(n);
            (n > 0).then(|| (Bytes::from(buf), file))
        });
        self.put_stream(put.size(size), chunks).await
    }

    /// Reads a stored record in chunks.
    pub async fn get_stream(&self, target: impl Into<Target>, opts: ReadOptions) -> Result<GetStream> {
        let target = target.into();
        let key = target.route_key();
        let request = crate::get_request(target, opts);
        // Fails over like a unary call until the first message arrived; not after.
        let (first, messages) = self
            .routed(&key, |mut c| {
                let request = request.clone();
                async move {
                    let mut messages = c.get_stream(request).await?.into_inner();
                    let first = messages.message().await?;
                    Ok(tonic::Response::new((first, messages)))
                }
            })
            .await?;
        let header = match first {
            Some(pb::GetStreamResponse { part: Some(pb::get_stream_response::Part::Header(h)) }) => h,
            _ => return Err(ClientError::Stream("the stream did not start with a header".into())),
        };
        let reference = header
            .reference
            .map(|r| Reference(Box::new(r)))
            .ok_or_else(|| ClientError::Stream("the header holds no reference".into()))?;
        Ok(GetStream {
            reference,
            metadata_json: header.metadata_json,
            value_serializer: header.value_serializer,
            messages,
            hasher: Sha256::new(),
            received: 0,
            trailer: None,
        })
    }

    /// Reads a stored record into `path`, through `PATH.partial`, renamed when whole.
    /// Returns the stream, finished (its trailer holds the size and sha256 written).
    pub async fn get_to_file(&self, target: impl Into<Target>, opts: ReadOptions, path: &Path) -> Result<GetStream> {
        let mut stream = self.get_stream(target, opts).await?;
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = std::path::PathBuf::from(partial);
        let written = async {
            let mut file = tokio::fs::File::create(&partial).await?;
            while let Some(chunk) = stream.next_chunk().await? {
                file.write_all(&chunk).await?;
            }
            file.flush().await?;
            file.sync_all().await?;
            Ok::<_, ClientError>(())
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
        tokio::fs::rename(&partial, path).await?;
        Ok(stream)
    }
}

/// A GetStream being received.
pub struct GetStream {
    /// The header's reference (`sha256` empty when the server learns it only by reading).
    pub reference: Reference,
    pub metadata_json: String,
    /// With [`ReadOptions::want`]: what the value bytes are (`json`, `pickle`, ...).
    pub value_serializer: String,
    messages: tonic::Streaming<pb::GetStreamResponse>,
    hasher: Sha256,
    received: u64,
    trailer: Option<pb::GetStreamTrailer>,
}

impl GetStream {
    /// The next chunk; `Ok(None)` once the trailer arrived and matched every byte received.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        match self.messages.message().await? {
            Some(pb::GetStreamResponse { part: Some(pb::get_stream_response::Part::Chunk(c)) }) => {
                self.hasher.update(&c);
                self.received += c.len() as u64;
                Ok(Some(c))
            }
            Some(pb::GetStreamResponse { part: Some(pb::get_stream_response::Part::Trailer(t)) }) => {
                let sha256 = hex::encode(self.hasher.clone().finalize());
                if t.size != self.received || t.sha256 != sha256 {
                    return Err(ClientError::Stream(format!(
                        "received {} bytes with sha256 {sha256}; the server sent {} bytes with sha256 {}",
                        self.received, t.size, t.sha256
                    )));
                }
                self.trailer = Some(t);
                Ok(None)
            }
            Some(_) => Err(ClientError::Stream("a second header arrived".into())),
            None => Err(ClientError::Stream("the stream ended without its trailer".into())),
        }
    }

    /// Receives the rest into memory (for results known to fit).
    pub async fn collect(mut self) -> Result<(Bytes, Self)> {
        let mut out = Vec::with_capacity(usize::try_from(self.reference.0.size).unwrap_or(0));
        while let Some(c) = self.next_chunk().await? {
            out.extend_from_slice(&c);
        }
        Ok((Bytes::from(out), self))
    }

    /// The trailer, once the stream is whole.
    pub fn trailer(&self) -> Option<&pb::GetStreamTrailer> {
        self.trailer.as_ref()
    }
}
