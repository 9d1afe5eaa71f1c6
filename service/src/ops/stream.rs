//! Streams: results larger than one gRPC message, moved in pieces in bounded memory.
//!
//! **PutStream** ([`ResultStore::put_stream`]). A stream whose payload fits in one
//! `limits.stream_chunk_size` piece is stored exactly as a unary Put stores it (full
//! checks, write-through to the cache). Larger payloads go to an object-store multipart
//! upload, `stream_chunk_size` per part with at most two parts in flight, so a stream holds
//! about three pieces whatever its size:
//! - serializer bytes (`data`) in a `split` block are uploaded as they are to a staging
//!   object, then committed whole ([`crate::ops::split`]: document, then the move to the key);
//! - in a `prefect3` block they are wrapped into the record on the fly (the record's prefix,
//!   the bytes escaped as a JSON string, the suffix), byte-identical to a record written
//!   whole. Records are read back in one piece, so a record above `limits.max_result_size`
//!   is refused (RESOURCE_EXHAUSTED, naming split blocks) and its upload aborted;
//! - an object (a storage block's `write_path`) that is a Prefect record is buffered up to
//!   `max_result_size` and stored as Put stores objects; any other object is a bare
//!   payload and is uploaded as it is.
//!
//! A stream commits only when it is whole: it ended with its `end` message, or sent
//! exactly the size its header announced (`Body`).
//!
//! Streamed bytes are checked as they pass ([`StreamCheck`]: UTF-8 and JSON syntax for
//! JSON, base64 for pickles), against the header's optional size and sha256, and a
//! multipart upload only
//! becomes visible when it completes: a stream that fails, breaks or lies leaves whatever
//! the key held before. Create-only streams are uploaded under the reserved
//! `.resultstore-staging/` prefix and moved to their key with the store's conditional
//! copy; stores without one (S3 unless configured otherwise) are checked just before the
//! copy instead, which leaves a window in which a concurrent writer's result can be
//! replaced. One whose header names its sha256 and finds exactly its own bytes there (a
//! retry whose reply was lost) succeeds. Split payloads are always staged, and committed
//! as [`crate::ops::split`] says. A streamed result is not put in the cache (its bytes were not kept); the
//! entry of the key is dropped, and the next read fills it.
//!
//! **GetStream** ([`ResultStore::read_stream`]). Results up to the cache's
//! `max_entry_size` are read through the cache as Get reads them, then sent in pieces.
//! Larger ones stream past the cache in ranged reads of `stream_chunk_size` (one read
//! ahead), each pinned to the object's etag so a concurrent overwrite ends the stream with
//! ABORTED instead of mixing two versions. Which layout a large object has is found
//! without reading it whole: `split` blocks look for the metadata document first; in
//! `prefect3` blocks an object that starts like a JSON object is read whole (it may be a
//! record; records are read in one piece, up to `max_result_size`), anything else streams
//! as a split payload (when a metadata document exists) or a bare payload. The sha256 of
//! what was sent ends the stream; a reference's digest that does not match makes the
//! stream end with DATA_LOSS, so a client keeps the bytes only when the stream ends well.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::config::BlockFormat;
use crate::config::auth::{Access, Operation};
use crate::config::keys::{RESERVED_STAGING_PREFIX, validate_key};
use crate::error::{Error, Result};
use crate::formats::record::{PREFECT3_SUFFIX, RecordError, RecordFormat, ResultRecord, escape_json_chunk};
use crate::formats::reference::{LiteralValue, ResultReference};
use crate::formats::serializer::{SerializerConfig, StreamCheck, Utf8Stream};
use crate::ops::objects::sha256_hex;
use crate::ops::settings::{self, ResultSettings};
use crate::ops::store::{
    Located, Payload, PutInput, PutOutcome, ReadOptions, ReadOutcome, ReadTarget, ResultStore, WriteMode,
    check_not_expired, object_key, object_serializer, reference_of,
};
use crate::storage::blocks::Block;
use crate::storage::cache::LoadedResult;
use crate::storage::object_names::object_path;

/// What a PutStream's chunks carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPayload {
    /// Serializer bytes (Put's `data`).
    Data,
    /// An object as a storage block's `write_path` receives it (Put's `object`).
    Object,
}

/// The first message of a PutStream: a Put without its payload.
#[derive(Debug, Clone)]
pub struct PutStreamHeader {
    pub payload: StreamPayload,
    pub task: ResultSettings,
    pub flow: Option<ResultSettings>,
    pub key: Option<String>,
    /// As [`PutInput::new_key`].
    pub new_key: Option<String>,
    pub expiration: Option<DateTime<Utc>>,
    pub mode: WriteMode,
    /// The payload size the client announced, checked at the end.
    pub size: Option<u64>,
    /// The payload's lowercase hex sha256 the client announced, checked at the end.
    pub sha256: Option<String>,
}

/// One message of a PutStream's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadPart {
    Chunk(Bytes),
    /// The client sent the whole payload; nothing may follow.
    End,
}

/// The body of a PutStream, as the transport delivers it.
pub type ChunkStream = BoxStream<'static, Result<UploadPart>>;

/// A PutStream's payload, read so that only a whole stream ends well: one that said
/// [`UploadPart::End`], or whose header announced a size (checked at the end). Any other
/// end (a cancelled, crashed or disconnected client, which HTTP/2 may deliver as a normal
/// end of stream) is an error, so nothing is committed.
struct Body {
    parts: ChunkStream,
    announced: bool,
    ended: bool,
}

impl Body {
    async fn next(&mut self) -> Option<Result<Bytes>> {
        if self.ended {
            return None;
        }
        match self.parts.next().await {
            Some(Ok(UploadPart::Chunk(chunk))) => Some(Ok(chunk)),
            Some(Ok(UploadPart::End)) => {
                self.ended = true;
                match self.parts.next().await {
                    None => None,
                    Some(Err(e)) => Some(Err(e)),
                    Some(Ok(_)) => Some(Err(Error::InvalidRequest(
                        "a PutStream message came after `end`; nothing was stored".into(),
                    ))),
                }
            }
            Some(Err(e)) => Some(Err(e)),
            None if self.announced => None,
            None => Some(Err(Error::InvalidRequest(
                "the PutStream ended without its `end` message and its header announced no `size`, so it may be \
                 cut short; nothing was stored"
                    .into(),
            ))),
        }
    }
}

/// One item of a GetStream's body.
#[derive(Debug, Clone)]
pub enum StreamPart {
    Chunk(Bytes),
    /// The end of a whole stream: what was sent.
    End {
        size: u64,
        sha256: String,
    },
}

/// What a GetStream sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamContent {
    /// The serializer bytes (or, with `as_stored`, the object as stored): streamed past
    /// the cache when large.
    #[default]
    Stored,
    /// The value bytes, as Resolve's `WANT_RAW`: the result is read whole.
    Value,
    /// The value as JSON, as Resolve's `WANT_JSON`: the result is read whole.
    Json,
}

/// A GetStream: what the header says, then the body.
pub struct ReadStream {
    pub reference: ResultReference,
    pub metadata_json: String,
    /// With [`StreamContent::Value`] and [`StreamContent::Json`]: the serializer of the
    /// value bytes (`json`, `pickle`, ...).
    pub value_serializer: Option<String>,
    pub parts: BoxStream<'static, Result<StreamPart>>,
}

/// What a GetStream found.
pub enum StreamOutcome {
    /// A Prefect 2 literal document: nothing stored to stream.
    Literal(LiteralValue),
    Stream(Box<ReadStream>),
}

/// The largest piece of a stream in one message: under every gRPC client's default 4 MiB
/// receive limit, so clients that never set their limit can still stream.
pub const MESSAGE_CHUNK: usize = 1 << 20;

/// Multipart parts uploading at once, beside the one being filled.
const PARTS_IN_FLIGHT: usize = 2;

/// Whether bytes start like a Prefect record (3 or 2), as Prefect writes them.
fn starts_like_record(head: &[u8]) -> bool {
    let start = head.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(head.len());
    let head = &head[start..];
    head.starts_with(b"{\"metadata\"") || head.starts_with(b"{\"serializer\"")
}

/// Whether bytes start like a JSON object (after whitespace).
fn starts_like_object(head: &[u8]) -> bool {
    head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

impl ResultStore {
    /// Stores one result sent in pieces (see the module docs).
    /// The settings and block of a PutStream, once `access` may write there: checked
    /// before the stream takes a place among those in flight (see `grpc`), and again as
    /// the stream starts.
    pub fn put_stream_block(
        &self,
        header: &PutStreamHeader,
        access: &Access,
    ) -> Result<(settings::EffectiveSettings, Arc<Block>)> {
        let object = header.payload == StreamPayload::Object;
        let explicit_key = object || header.key.as_deref().is_some_and(|k| !k.is_empty());
        let eff = settings::resolve(&header.task, header.flow.as_ref(), &self.defaults, explicit_key)?;
        let block = self.block_for(&eff.storage, access, Operation::Write)?;
        Ok((eff, block))
    }

    pub async fn put_stream(&self, header: PutStreamHeader, parts: ChunkStream, access: &Access) -> Result<PutOutcome> {
        let mut chunks = Body { parts, announced: header.size.is_some(), ended: false };
        let object = header.payload == StreamPayload::Object;
        let (eff, block) = self.put_stream_block(&header, access)?;
        // A result that is not persisted lives only in the cache: it must fit an entry.
        let memory_only = !eff.persist && !object;
        let in_memory = if memory_only { self.cache.max_entry() } else { self.stream_chunk as u64 };
        let not_persisted_too_large = |size| Error::TooLarge {
            what: "a result that is not persisted (it lives only in the cache)".into(),
            size,
            limit: in_memory,
        };
        if let Some(size) = header.size
            && memory_only
            && size > in_memory
        {
            return Err(not_persisted_too_large(size));
        }
        // Serializer bytes in a prefect3 block become a record, which is read in one piece.
        let prefect3 = !object && block.format != BlockFormat::Split;
        if prefect3 && header.size.is_some_and(|s| s > self.max_result_size) {
            return Err(self.record_too_large(header.size.unwrap_or_default()));
        }

        // Read the first piece; a stream that ends within it is a plain Put.
        let mut head = BytesMut::new();
        let mut ended = false;
        while head.len() as u64 <= in_memory {
            match chunks.next().await {
                Some(chunk) => head.extend_from_slice(&chunk?),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        let record_object = object && starts_like_record(&head);
        if record_object && !ended {
            // Records are stored (and read) in one piece.
            self.buffer_rest(&mut head, &mut chunks).await?;
            ended = true;
        }
        if ended {
            let head = head.freeze();
            check_announced(&header, head.len() as u64, || sha256_hex(&head))?;
            let payload = if object { Payload::Object(head) } else { Payload::Data(head) };
            let input = PutInput {
                payload,
                task: header.task,
                flow: header.flow,
                key: header.key,
                new_key: header.new_key,
                expiration: header.expiration,
                mode: header.mode,
            };
            return self.put(input, access).await;
        }
        if memory_only {
            return Err(not_persisted_too_large(head.len() as u64));
        }
        if object && header.expiration.is_some() {
            return Err(Error::InvalidRequest(
                "an object carries its own expiration (in its record); leave `expiration` unset".into(),
            ));
        }

        let key = object_key(header.key.clone(), eff.cache_key.clone(), header.new_key.clone());
        validate_key(&key)?;
        let (serializer, format) = if object {
            (object_serializer(&header.task, header.flow.as_ref()), RecordFormat::Bare)
        } else if prefect3 {
            (eff.serializer, RecordFormat::Prefect3)
        } else {
            (eff.serializer, RecordFormat::Split)
        };
        let mut check = StreamCheck::new(&serializer)?;
        let record = ResultRecord::new(format, &key, serializer, header.expiration, Bytes::new());

        // Split payloads are staged until their digest is known (see `split`).
        let staged = header.mode == WriteMode::CreateOnly || format == RecordFormat::Split;
        // A create-only stream is refused at once when its key is taken, unless its header
        // names its digest: then it may be a retry whose reply was lost, found out at the end.
        let refuse_taken = header.mode == WriteMode::CreateOnly && header.sha256.is_none();
        let mut upload = Upload::begin(&block, &key, refuse_taken, staged, self.stream_chunk).await?;
        let prefix = prefect3.then(|| record.prefect3_prefix());
        let sent = self.upload_body(&mut upload, head.freeze(), &mut chunks, &header, &mut check, prefix).await;
        let (size, sha256) = match sent {
            Ok(s) => s,
            Err(e) => {
                upload.abort().await;
                return Err(e);
            }
        };
        let (version, staging) = upload.finish().await?;
        let _lock = self.writes.lock(&block.slug, &key).await;
        let version = match staging {
            None => version,
            Some(upload) => match (format, &block.metadata_store) {
                (RecordFormat::Split, Some(meta)) => {
                    self.split().commit_split_upload(&block, meta, &key, &record, &upload, &sha256, header.mode).await?
                }
                _ => crate::ops::split::move_into_place(&block, &key, &upload, header.mode).await?,
            },
        };
        self.cache.invalidate(&block.cache_key(key.as_str())).await;
        let mut reference = reference_of(&block, &key, &record, version, Utc::now(), true);
        reference.size = size;
        reference.sha256 = sha256;
        Ok(PutOutcome::Stored(Box::new(reference)))
    }

    /// Uploads a stream's payload (`first`, then the rest of `chunks`), checking it as it
    /// passes and against what the header announced; wrapped into a `prefect3` record when
    /// `prefix` holds the record's prefix. Returns the payload's size and sha256.
    async fn upload_body(
        &self,
        upload: &mut Upload,
        first: Bytes,
        chunks: &mut Body,
        header: &PutStreamHeader,
        check: &mut StreamCheck,
        prefix: Option<Vec<u8>>,
    ) -> Result<(u64, String)> {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut written = 0u64;
        let mut escaped = Vec::new();
        if let Some(prefix) = &prefix {
            written += prefix.len() as u64;
            upload.write(prefix).await?;
        }
        let mut next = Some(first);
        loop {
            let chunk = match next.take() {
                Some(c) => c,
                None => match chunks.next().await {
                    Some(c) => c?,
                    None => break,
                },
            };
            size += chunk.len() as u64;
            if header.size.is_some_and(|s| size > s) {
                return Err(Error::InvalidRequest(format!(
                    "the stream sent more than the {} bytes its header announced; nothing was stored",
                    header.size.unwrap_or_default()
                )));
            }
            hasher.update(&chunk);
            check.update(&chunk)?;
            if prefix.is_some() {
                for piece in chunk.chunks(MESSAGE_CHUNK) {
                    escaped.clear();
                    escape_json_chunk(piece, &mut escaped);
                    written += escaped.len() as u64;
                    if written > self.max_result_size {
                        return Err(self.record_too_large(written));
                    }
                    upload.write(&escaped).await?;
                }
            } else {
                upload.write(&chunk).await?;
            }
        }
        check.finish()?;
        let sha256 = hex::encode(hasher.finalize());
        check_announced(header, size, || sha256.clone())?;
        if prefix.is_some() {
            upload.write(PREFECT3_SUFFIX).await?;
        }
        Ok((size, sha256))
    }

    /// Reads the rest of a stream into `buf`, up to `max_result_size`.
    async fn buffer_rest(&self, buf: &mut BytesMut, chunks: &mut Body) -> Result<()> {
        while let Some(chunk) = chunks.next().await {
            buf.extend_from_slice(&chunk?);
            if buf.len() as u64 > self.max_result_size {
                return Err(Error::TooLarge {
                    what: "a Prefect record sent as an object (records are stored and read in one piece)".into(),
                    size: buf.len() as u64,
                    limit: self.max_result_size,
                });
            }
        }
        Ok(())
    }

    fn record_too_large(&self, size: u64) -> Error {
        Error::TooLarge {
            what: "the prefect3 record (records are read in one piece; stream larger results into a block with \
                   format = \"split\")"
                .into(),
            size,
            limit: self.max_result_size,
        }
    }

    /// Reads one result in pieces (see the module docs).
    pub async fn read_stream(
        &self,
        target: ReadTarget,
        opts: ReadOptions,
        content: StreamContent,
        access: &Access,
    ) -> Result<StreamOutcome> {
        if content != StreamContent::Stored {
            return self.stream_through_cache(target, opts, content, access).await;
        }
        let (block, key, expect, hint, doc_expiration) = match self.locate(target.clone(), &opts, access)? {
            Located::Literal(l) => return Ok(StreamOutcome::Literal(l)),
            Located::At { block, key, expect, hint, doc_expiration } => (block, key, expect, hint, doc_expiration),
        };
        if !expect.persisted {
            return self.stream_through_cache(target, opts, content, access).await;
        }
        let at_key = object_path(&key)?;
        let map = |e| block.storage_error(&key, e);
        let split_store = block.metadata_store.as_ref().filter(|_| block.format == BlockFormat::Split);
        let head = match block.store.head(&at_key).await {
            Ok(meta) if meta.size <= self.cache.max_entry() => {
                return self.stream_through_cache(target, opts, content, access).await;
            }
            Ok(meta) => Some(meta),
            // A split write between its document and its move is read from staging.
            Err(object_store::Error::NotFound { .. }) if split_store.is_some() => None,
            Err(e) => return Err(map(e)),
        };

        // A large object (or a staged split payload): find its layout from its metadata
        // document or its first bytes.
        let mut metadata = None;
        let mut path = at_key.clone();
        let mut document_sha256 = None;
        if let Some(store) = split_store {
            metadata = self.objects.get_optional(&block, store.as_ref(), &at_key, &key).await?;
            document_sha256 = metadata.as_deref().and_then(crate::ops::split::payload_sha256);
            if let Some(sha) = &document_sha256 {
                path = self.split().split_payload_path(&block, &key, sha).await?;
            }
        }
        let meta = match head {
            Some(meta) if path == at_key => meta,
            _ => block.store.head(&path).await.map_err(map)?,
        };
        if meta.size <= self.cache.max_entry() {
            return self.stream_through_cache(target, opts, content, access).await;
        }
        if metadata.is_none() {
            let head = block.store.get_range(&path, 0..meta.size.min(64)).await.map_err(map)?;
            if starts_like_object(&head) {
                if starts_like_record(&head) && meta.size > self.max_result_size {
                    return Err(self.record_too_large(meta.size));
                }
                if meta.size <= self.max_result_size {
                    return self.stream_through_cache(target, opts, content, access).await;
                }
            }
            if block.format != BlockFormat::Split
                && let Some(store) = &block.metadata_store
            {
                metadata = self.objects.get_optional(&block, store.as_ref(), &at_key, &key).await?;
            }
        }
        let corrupt = |e: RecordError| Error::corrupt_because(&block.slug, &key, e);
        let record = match metadata {
            Some(doc) => ResultRecord::decode_split(&doc, Bytes::new()).map_err(corrupt)?,
            None => {
                let serializer = hint
                    .or_else(|| opts.as_stored.then(SerializerConfig::opaque))
                    .unwrap_or_else(|| block.default_serializer.clone());
                ResultRecord::bare(Bytes::new(), serializer, &key, None)
            }
        };
        let expiration = record.expiration.or(doc_expiration);
        check_not_expired(&block, &key, expiration, Some(meta.last_modified), opts.allow_expired)?;
        let version = meta.e_tag.clone().or(meta.version.clone());
        let mut reference = reference_of(&block, &key, &record, version, meta.last_modified, true);
        reference.size = meta.size;
        reference.sha256 = String::new();
        let metadata_json = String::from_utf8_lossy(&record.metadata_json()).into_owned();

        // The bytes as stored, or for `as_stored` of a split result, the record they make.
        let wrap = (opts.as_stored && record.format == RecordFormat::Split).then(|| record.prefect3_prefix());
        let expected = expect.sha256.clone();
        let ranges =
            ranged_reads(block.clone(), key.clone(), path.clone(), meta.size, meta.e_tag.clone(), self.stream_chunk);
        let (tx, rx) = mpsc::channel::<Result<StreamPart>>(2);
        let slug = block.slug.clone();
        let split_store = split_store.cloned();
        tokio::spawn(async move {
            let sent = send_ranges(ranges, wrap, &tx).await;
            let last = match sent {
                Err(e) => Err(e),
                Ok((_, _, payload_sha)) if expected.as_ref().is_some_and(|e| *e != payload_sha) => {
                    let expected = expected.unwrap_or_default();
                    Err(Error::IntegrityMismatch { block: slug, key, expected, actual: payload_sha })
                }
                Ok((_, _, payload_sha)) if document_sha256.as_ref().is_some_and(|d| *d != payload_sha) => {
                    // Replaced since the document was read (a new document now), or damaged.
                    let now = match &split_store {
                        Some(store) => store.get(&at_key).await.ok().map(|g| g.bytes()),
                        None => None,
                    };
                    let now = match now {
                        Some(bytes) => bytes.await.ok().as_deref().and_then(crate::ops::split::payload_sha256),
                        None => None,
                    };
                    if now == document_sha256 {
                        Err(Error::corrupt(
                            &slug,
                            &key,
                            format!("its payload (sha256 {payload_sha}) is not the one its metadata document names"),
                        ))
                    } else {
                        Err(Error::ChangedWhileReading { block: slug, key })
                    }
                }
                Ok((size, sha256, _)) => Ok(StreamPart::End { size, sha256 }),
            };
            let _ = tx.send(last).await;
        });
        Ok(StreamOutcome::Stream(Box::new(ReadStream {
            reference,
            metadata_json,
            value_serializer: None,
            parts: ReceiverStream::new(rx).boxed(),
        })))
    }

    /// A result read as Get or Resolve reads it (through the cache), sent in pieces.
    async fn stream_through_cache(
        &self,
        target: ReadTarget,
        opts: ReadOptions,
        content: StreamContent,
        access: &Access,
    ) -> Result<StreamOutcome> {
        let as_stored = opts.as_stored;
        let result: Arc<LoadedResult> = match self.read(target, opts, access).await? {
            ReadOutcome::Literal(l) => return Ok(StreamOutcome::Literal(l)),
            ReadOutcome::Loaded { result, .. } => result,
        };
        let (bytes, sha256) = match content {
            StreamContent::Stored if as_stored => {
                let bytes = self.stored_object(&result)?;
                let sha256 = sha256_hex(&bytes);
                (bytes, sha256)
            }
            StreamContent::Stored => (result.record.data.clone(), result.reference.sha256.clone()),
            StreamContent::Value => (result.value.bytes.clone(), sha256_hex(&result.value.bytes)),
            StreamContent::Json => {
                let json = self.to_json(&result)?;
                let sha256 = sha256_hex(&json);
                (json, sha256)
            }
        };
        let value_serializer = (content != StreamContent::Stored).then(|| result.value.kind.name().to_owned());
        let size = bytes.len() as u64;
        let pieces: Vec<Result<StreamPart>> = (0..bytes.len())
            .step_by(MESSAGE_CHUNK)
            .map(|at| Ok(StreamPart::Chunk(bytes.slice(at..bytes.len().min(at + MESSAGE_CHUNK)))))
            .chain(std::iter::once(Ok(StreamPart::End { size, sha256 })))
            .collect();
        Ok(StreamOutcome::Stream(Box::new(ReadStream {
            reference: result.reference.clone(),
            metadata_json: String::from_utf8_lossy(&result.record.metadata_json()).into_owned(),
            value_serializer,
            parts: futures::stream::iter(pieces).boxed(),
        })))
    }
}

/// Checks a finished upload against what its header announced (`sha256` is asked for only
/// when the header announced one).
fn check_announced(header: &PutStreamHeader, size: u64, sha256: impl FnOnce() -> String) -> Result<()> {
    if let Some(expected) = header.size
        && expected != size
    {
        return Err(Error::InvalidRequest(format!(
            "the stream sent {size} bytes but its header announced {expected}; nothing was stored"
        )));
    }
    if let Some(expected) = &header.sha256 {
        let sha256 = sha256();
        if !expected.eq_ignore_ascii_case(&sha256) {
            return Err(Error::UploadMismatch(format!("its sha256 is {sha256}, the header announced {expected}")));
        }
    }
    Ok(())
}

/// Ranged reads of a whole object, one read ahead, each pinned to `etag` when the store
/// gives one.
fn ranged_reads(
    block: Arc<Block>,
    key: String,
    path: Path,
    size: u64,
    etag: Option<String>,
    chunk: usize,
) -> BoxStream<'static, Result<Bytes>> {
    let starts = (0..size).step_by(chunk.max(1));
    futures::stream::iter(starts)
        .map(move |start| {
            let (block, key, path, etag) = (block.clone(), key.clone(), path.clone(), etag.clone());
            async move {
                let map = |e| match e {
                    object_store::Error::Precondition { .. } => {
                        Error::ChangedWhileReading { block: block.slug.clone(), key: key.clone() }
                    }
                    e => block.storage_error(&key, e),
                };
                let range = start..size.min(start + chunk as u64);
                let opts = GetOptions { range: Some(range.into()), if_match: etag, ..Default::default() };
                let got = block.store.get_opts(&path, opts).await.map_err(map)?;
                got.bytes().await.map_err(map)
            }
        })
        .buffered(2)
        .boxed()
}

/// Sends the ranges in message-sized pieces (wrapped into a record when `wrap` holds the
/// record's prefix). Returns the size and sha256 of what was sent, and the sha256 of the
/// payload read.
async fn send_ranges(
    mut ranges: BoxStream<'static, Result<Bytes>>,
    wrap: Option<Vec<u8>>,
    tx: &mpsc::Sender<Result<StreamPart>>,
) -> Result<(u64, String, String)> {
    let mut sent = Sha256::new();
    let mut payload = Sha256::new();
    let mut size = 0u64;
    let mut utf8 = wrap.as_ref().map(|_| Utf8Stream::default());
    let not_utf8 = || {
        Error::CannotTranscode(
            "the serializer bytes are not UTF-8, which a Prefect 3 record cannot hold; read them without `as_stored`"
                .into(),
        )
    };
    let send = async |bytes: Bytes, sent: &mut Sha256, size: &mut u64| -> Result<bool> {
        for at in (0..bytes.len()).step_by(MESSAGE_CHUNK) {
            let piece = bytes.slice(at..bytes.len().min(at + MESSAGE_CHUNK));
            sent.update(&piece);
            *size += piece.len() as u64;
            if tx.send(Ok(StreamPart::Chunk(piece))).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    };
    if let Some(prefix) = &wrap
        && !send(Bytes::from(prefix.clone()), &mut sent, &mut size).await?
    {
        return Ok((size, String::new(), String::new()));
    }
    let mut escaped = Vec::new();
    while let Some(bytes) = ranges.try_next().await? {
        // Unwrapped, what is sent is the payload: hash it once (below).
        if wrap.is_some() {
            payload.update(&bytes);
        }
        let out = match &mut utf8 {
            Some(check) => {
                check.update(&bytes).map_err(|_| not_utf8())?;
                escaped.clear();
                escape_json_chunk(&bytes, &mut escaped);
                Bytes::from(std::mem::take(&mut escaped))
            }
            None => bytes,
        };
        if !send(out, &mut sent, &mut size).await? {
            // The client went away.
            return Ok((size, String::new(), String::new()));
        }
    }
    if let Some(check) = &utf8 {
        if !check.is_complete() {
            return Err(not_utf8());
        }
        send(Bytes::from_static(PREFECT3_SUFFIX), &mut sent, &mut size).await?;
    }
    let sent = hex::encode(sent.finalize());
    let payload = if wrap.is_some() { hex::encode(payload.finalize()) } else { sent.clone() };
    Ok((size, sent, payload))
}

/// A multipart upload to a key, or to a staging object the caller moves into place
/// (create-only writes, split payloads).
struct Upload {
    writer: WriteMultipart,
    block: Arc<Block>,
    key: String,
    staging: Option<Path>,
    part: usize,
}

impl Upload {
    async fn begin(block: &Arc<Block>, key: &str, refuse_taken: bool, staged: bool, part: usize) -> Result<Self> {
        let map = |e| block.storage_error(key, e);
        let target = object_path(key)?;
        if refuse_taken {
            // Refuse early when the key is taken; the move into place checks again.
            match block.store.head(&target).await {
                Ok(_) => return Err(Error::AlreadyExists { block: block.slug.clone(), key: key.to_owned() }),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map(e)),
            }
        }
        let staging =
            staged.then(|| Path::from(format!("{RESERVED_STAGING_PREFIX}/{}", uuid::Uuid::new_v4().simple())));
        let upload = block.store.put_multipart(staging.as_ref().unwrap_or(&target)).await.map_err(map)?;
        Ok(Upload {
            writer: WriteMultipart::new_with_chunk_size(upload, part),
            block: block.clone(),
            key: key.to_owned(),
            staging,
            part,
        })
    }

    fn map(&self, e: object_store::Error) -> Error {
        self.block.storage_error(&self.key, e)
    }

    /// Buffers `data`, waiting while [`PARTS_IN_FLIGHT`] parts upload.
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        for piece in data.chunks(self.part) {
            self.writer.wait_for_capacity(PARTS_IN_FLIGHT).await.map_err(|e| self.map(e))?;
            self.writer.write(piece);
        }
        Ok(())
    }

    async fn abort(self) {
        let (block, key) = (self.block.slug.clone(), self.key.clone());
        if let Err(e) = self.writer.abort().await {
            tracing::warn!(block, key, error = %e, "aborting a multipart upload failed; the store may keep its parts");
        }
    }

    /// Completes the upload: the version written, and where it is staged when it was.
    async fn finish(self) -> Result<(Option<String>, Option<Path>)> {
        let Upload { writer, block, key, staging, .. } = self;
        let put = writer.finish().await.map_err(|e| block.storage_error(&key, e))?;
        Ok((put.e_tag.or(put.version), staging))
    }
}
