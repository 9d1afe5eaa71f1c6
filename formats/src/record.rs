//! On-storage formats: what a key holds, read and written.
//!
//! - `prefect3`: one compact JSON record, byte-compatible with Prefect 3.9.1's
//!   `ResultRecord.serialize()`: `{"metadata":{"storage_key","expiration","serializer",
//!   "prefect_version","storage_block_id"},"result":"<serializer bytes>"}`. A record read
//!   and encoded again gives the identical bytes (key order and escapes are kept).
//! - `split`: the serializer bytes alone at the key, and the metadata document alone at
//!   the same key in the block's metadata location (Prefect's `metadata_storage`).
//! - `prefect2` (read only): Prefect 2's `{"serializer","data","prefect_version"}` blob.
//! - `bare` (read only): serializer bytes with no record around them (Prefect 3 flow
//!   results); the serializer comes from the request, else the block's default.
//!
//! Detection: a JSON object with `metadata` and `result` is `prefect3`; one with
//! `serializer` and `data` is `prefect2`; anything else is `bare`. Bytes that *start*
//! like a record but do not parse are a corrupt record, not a bare payload, so a
//! truncated record is reported as `DATA_LOSS` rather than misread.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use crate::serializer::{SerializerConfig, SerializerError};

/// The field a `split` record's metadata document holds its payload's lowercase hex
/// sha256 in (see `crate::ops::split`); not part of the record's Prefect metadata.
pub const PAYLOAD_SHA256: &str = "resultstore_payload_sha256";

/// The Prefect version whose format this service writes into `prefect_version`.
pub const PREFECT_VERSION: &str = "3.9.1";

/// Which format a record was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    Prefect3,
    Split,
    Prefect2,
    Bare,
}

impl RecordFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordFormat::Prefect3 => "prefect3",
            RecordFormat::Split => "split",
            RecordFormat::Prefect2 => "prefect2",
            RecordFormat::Bare => "bare",
        }
    }
}

/// One stored result: its metadata and its serializer bytes.
#[derive(Debug, Clone)]
pub struct ResultRecord {
    pub format: RecordFormat,
    /// The metadata as a Prefect 3 `ResultRecordMetadata` document (as read, key order kept).
    pub metadata: Map<String, Value>,
    pub serializer: SerializerConfig,
    pub expiration: Option<DateTime<Utc>>,
    /// The serializer bytes.
    pub data: Bytes,
    /// A `prefect3` record whose `result` was a JSON value rather than a string (Prefect
    /// reads that as the value itself).
    nested_result: bool,
}

/// Formats a time as Prefect writes it: `2026-11-22T05:22:37.267013Z`.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Why stored bytes are not a readable record. Callers decide what that means where the
/// bytes came from (DATA_LOSS for what storage holds, INVALID_ARGUMENT for what a client sent).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record does not parse as JSON ({0}); it may be truncated")]
    Truncated(#[source] serde_json::Error),
    #[error("the metadata document does not parse: {0}")]
    Document(#[source] serde_json::Error),
    #[error("`metadata` is not an object")]
    MetadataNotObject,
    #[error("the record has no result")]
    NoResult,
    #[error("the record's result is JSON that cannot be written back: {0}")]
    NestedResult(#[source] serde_json::Error),
    #[error("the Prefect 2 blob's `data` is not a string")]
    DataNotString,
    #[error("the metadata has no serializer")]
    NoSerializer,
    #[error("invalid serializer: {0}")]
    Serializer(#[source] SerializerError),
    #[error("expiration `{value}` is not a time{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Expiration { value: String, reason: Option<chrono::ParseError> },
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    &b[start..]
}

fn parse_time(v: Option<&Value>) -> Result<Option<DateTime<Utc>>, RecordError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .or_else(|_| DateTime::parse_from_str(&format!("{s}+00:00"), "%Y-%m-%dT%H:%M:%S%.f%:z"))
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| RecordError::Expiration { value: s.clone(), reason: Some(e) }),
        Some(other) => Err(RecordError::Expiration { value: other.to_string(), reason: None }),
    }
}

fn serializer_of(v: Option<&Value>) -> Result<SerializerConfig, RecordError> {
    let v = v.ok_or(RecordError::NoSerializer)?;
    SerializerConfig::from_value(v.clone()).map_err(RecordError::Serializer)
}

impl ResultRecord {
    /// A new record as this service writes it.
    pub fn new(
        format: RecordFormat,
        key: &str,
        serializer: SerializerConfig,
        expiration: Option<DateTime<Utc>>,
        data: Bytes,
    ) -> Self {
        let mut metadata = Map::new();
        metadata.insert("storage_key".into(), key.into());
        metadata.insert("expiration".into(), expiration.as_ref().map(format_time).map_or(Value::Null, Value::String));
        metadata.insert("serializer".into(), serializer.to_value());
        metadata.insert("prefect_version".into(), PREFECT_VERSION.into());
        metadata.insert("storage_block_id".into(), Value::Null);
        ResultRecord { format, metadata, serializer, expiration, data, nested_result: false }
    }

    /// Decodes what a key holds. `hint` is the serializer assumed for bare payloads.
    pub fn decode(bytes: Bytes, hint: &SerializerConfig, key: &str) -> Result<Self, RecordError> {
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
        if bytes.get(start) == Some(&b'{') {
            if let Some(record) = Self::decode_prefect3_fast(&bytes) {
                return record;
            }
            match serde_json::from_slice::<Map<String, Value>>(&bytes) {
                Ok(mut obj) => {
                    if obj.contains_key("metadata") && obj.contains_key("result") {
                        return Self::decode_prefect3(obj);
                    }
                    if obj.contains_key("serializer") && obj.contains_key("data") {
                        return Self::decode_prefect2(&mut obj, key);
                    }
                }
                Err(e) => {
                    let head = &bytes[start..bytes.len().min(start + 16)];
                    if head.starts_with(b"{\"metadata\"") || head.starts_with(b"{\"serializer\"") {
                        return Err(RecordError::Truncated(e));
                    }
                }
            }
        }
        Ok(Self::bare(bytes, hint.clone(), key, None))
    }

    /// A `prefect3` record whose result is a string, read without building the result
    /// as a JSON value: serde_json checks the whole record and hands over the result's raw
    /// text, which [`unescape_json_string`] turns into bytes in one pass (serde_json's own
    /// string parsing copies through a scratch buffer that grows by reallocation; for a
    /// 64 KiB record this path takes a fifth fewer instructions and half the copying,
    /// `scripts/callgrind cold`). `None` for anything else
    /// (another shape, a nested result, duplicate fields, an escape it does not take),
    /// which the general path then reads exactly as before.
    fn decode_prefect3_fast(bytes: &[u8]) -> Option<Result<Self, RecordError>> {
        #[derive(serde::Deserialize)]
        struct Prefect3<'a> {
            metadata: Value,
            #[serde(borrow)]
            result: &'a serde_json::value::RawValue,
        }
        let parsed: Prefect3<'_> = serde_json::from_slice(bytes).ok()?;
        let data = unescape_json_string(parsed.result.get())?;
        let Value::Object(metadata) = parsed.metadata else {
            return Some(Err(RecordError::MetadataNotObject));
        };
        Some(Self::prefect3_from(metadata, Bytes::from(data), false))
    }

    fn decode_prefect3(mut obj: Map<String, Value>) -> Result<Self, RecordError> {
        let Some(Value::Object(metadata)) = obj.remove("metadata") else {
            return Err(RecordError::MetadataNotObject);
        };
        let (data, nested_result) = match obj.remove("result") {
            Some(Value::String(s)) => (Bytes::from(s.into_bytes()), false),
            Some(other) => (Bytes::from(serde_json::to_vec(&other).map_err(RecordError::NestedResult)?), true),
            None => return Err(RecordError::NoResult),
        };
        Self::prefect3_from(metadata, data, nested_result)
    }

    fn prefect3_from(metadata: Map<String, Value>, data: Bytes, nested_result: bool) -> Result<Self, RecordError> {
        let serializer = serializer_of(metadata.get("serializer"))?;
        let expiration = parse_time(metadata.get("expiration"))?;
        Ok(ResultRecord { format: RecordFormat::Prefect3, metadata, serializer, expiration, data, nested_result })
    }

    fn decode_prefect2(obj: &mut Map<String, Value>, key: &str) -> Result<Self, RecordError> {
        let serializer = serializer_of(obj.get("serializer"))?;
        let expiration = parse_time(obj.get("expiration"))?;
        let Some(Value::String(data)) = obj.remove("data") else {
            return Err(RecordError::DataNotString);
        };
        let mut rec = Self::bare(Bytes::from(data.into_bytes()), serializer, key, expiration);
        rec.format = RecordFormat::Prefect2;
        if let Some(v) = obj.get("prefect_version") {
            rec.metadata.insert("prefect_version".into(), v.clone());
        }
        Ok(rec)
    }

    /// Serializer bytes with no record around them, as read (no Prefect version).
    pub fn bare(data: Bytes, serializer: SerializerConfig, key: &str, expiration: Option<DateTime<Utc>>) -> Self {
        let mut rec = ResultRecord::new(RecordFormat::Bare, key, serializer, expiration, data);
        rec.metadata.insert("prefect_version".into(), Value::Null);
        rec
    }

    /// A split record: the metadata document and the payload read beside it. The payload
    /// digest this service adds to the documents it writes ([`PAYLOAD_SHA256`]) is not part of
    /// the record's metadata: a split record read `as_stored` is the record a `prefect3`
    /// block holds, byte for byte.
    pub fn decode_split(metadata: &[u8], data: Bytes) -> Result<Self, RecordError> {
        let mut metadata: Map<String, Value> = serde_json::from_slice(metadata).map_err(RecordError::Document)?;
        metadata.remove(PAYLOAD_SHA256);
        let serializer = serializer_of(metadata.get("serializer"))?;
        let expiration = parse_time(metadata.get("expiration"))?;
        Ok(ResultRecord { format: RecordFormat::Split, metadata, serializer, expiration, data, nested_result: false })
    }

    /// The expiration a `prefect3` record states, from the first bytes of the record
    /// alone: records written by Prefect and by this service begin with their metadata
    /// (`{"metadata":{...},"result":...}`), so a sweep can learn a large result's expiration
    /// without reading the result. `None` when `head` does not begin that way or ends
    /// before the metadata does (then read the whole record).
    pub fn expiration_from_head(head: &[u8]) -> Option<Result<Option<DateTime<Utc>>, RecordError>> {
        let rest = skip_ws(head).strip_prefix(b"{")?;
        let rest = skip_ws(rest).strip_prefix(b"\"metadata\"")?;
        let rest = skip_ws(rest).strip_prefix(b":")?;
        let mut de = serde_json::Deserializer::from_slice(rest);
        match serde::Deserialize::deserialize(&mut de).ok()? {
            Value::Object(metadata) => Some(parse_time(metadata.get("expiration"))),
            _ => Some(Err(RecordError::MetadataNotObject)),
        }
    }

    /// The expiration a split record's metadata document states.
    pub fn expiration_from_document(document: &[u8]) -> Result<Option<DateTime<Utc>>, RecordError> {
        let metadata: Map<String, Value> = serde_json::from_slice(document).map_err(RecordError::Document)?;
        parse_time(metadata.get("expiration"))
    }

    /// The metadata document as JSON (what `split` writes beside the payload).
    pub fn metadata_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.metadata).unwrap_or_default()
    }

    /// The `prefect3` record bytes. `None` when the serializer bytes are not UTF-8, which
    /// a JSON string cannot hold (such results need a `split` block).
    pub fn encode_prefect3(&self) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(self.data.len() + self.data.len() / 16 + 512);
        out.extend_from_slice(b"{\"metadata\":");
        serde_json::to_writer(&mut out, &self.metadata).ok()?;
        out.extend_from_slice(b",\"result\":");
        if self.nested_result {
            serde_json::to_writer(&mut out, &serde_json::from_slice::<Value>(&self.data).ok()?).ok()?;
        } else {
            // The string escaped in place, as serde_json would escape it (the same escaper
            // the streamed path uses), without first copying it into a JSON value.
            std::str::from_utf8(&self.data).ok()?;
            out.push(b'"');
            escape_json_chunk(&self.data, &mut out);
            out.push(b'"');
        }
        out.push(b'}');
        Some(out)
    }

    /// A `prefect3` record in pieces, for results streamed through in chunks: the bytes
    /// before the result string (this prefix), each chunk through [`escape_json_chunk`],
    /// then [`PREFECT3_SUFFIX`]. The pieces make exactly what [`Self::encode_prefect3`]
    /// makes of the whole (string results).
    pub fn prefect3_prefix(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(b"{\"metadata\":");
        // A map of JSON values always serializes.
        serde_json::to_writer(&mut out, &self.metadata).unwrap_or_default();
        out.extend_from_slice(b",\"result\":\"");
        out
    }
}

/// What ends a `prefect3` record written in pieces (see [`ResultRecord::prefect3_prefix`]).
pub const PREFECT3_SUFFIX: &[u8] = b"\"}";

/// Appends `chunk` to `out` escaped as serde_json escapes string contents (so a record
/// written in pieces is byte-identical to one written whole): `"` and `\`, the short
/// escapes `\b \t \n \f \r`, other control bytes as `\u00xx`; everything else, UTF-8
/// included, as is. Byte-wise escaping is exact because no escaped byte occurs inside a
/// multi-byte UTF-8 sequence; the caller checks the bytes are UTF-8.
/// The bytes of a JSON string literal that serde_json has already checked (quotes
/// included), its escapes undone. `None` when it is not a string or holds a `\u` escape
/// of a lone surrogate (serde_json refuses those: the caller's general path says so).
fn unescape_json_string(raw: &str) -> Option<Vec<u8>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?.as_bytes();
    let mut out = Vec::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..at]);
        let escape = *rest.get(at + 1)?;
        rest = &rest[at + 2..];
        let byte = match escape {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let (c, used) = unicode_escape(rest)?;
                rest = &rest[used..];
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(byte);
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The character of a `\u` escape whose `XXXX` starts `rest` (and of its low surrogate's
/// `\uXXXX` after it, for a pair), and how many bytes of `rest` it took.
fn unicode_escape(rest: &[u8]) -> Option<(char, usize)> {
    let hex = |b: &[u8]| -> Option<u32> { u32::from_str_radix(std::str::from_utf8(b.get(..4)?).ok()?, 16).ok() };
    let first = hex(rest)?;
    match first {
        0xD800..=0xDBFF => {
            let tail = rest.get(4..)?.strip_prefix(b"\\u")?;
            let low = hex(tail)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return None;
            }
            let c = 0x10000 + ((first - 0xD800) << 10) + (low - 0xDC00);
            Some((char::from_u32(c)?, 10))
        }
        0xDC00..=0xDFFF => None,
        c => Some((char::from_u32(c)?, 4)),
    }
}

pub fn escape_json_chunk(chunk: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Which bytes need an escape (`"`, `\`, control bytes), looked up rather than matched:
    // the scan between escapes is then a table load and a compare per byte.
    const NEEDS_ESCAPE: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 0x20 {
            t[i] = true;
            i += 1;
        }
        t[b'"' as usize] = true;
        t[b'\\' as usize] = true;
        t
    };
    out.reserve(chunk.len() + chunk.len() / 16);
    let mut start = 0;
    let mut i = 0;
    while i < chunk.len() {
        let b = chunk[i];
        if !NEEDS_ESCAPE[usize::from(b)] {
            i += 1;
            continue;
        }
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            _ => &[],
        };
        out.extend_from_slice(&chunk[start..i]);
        if short.is_empty() {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.extend_from_slice(short);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&chunk[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_expiration_reads_from_its_head() {
        let rec = ResultRecord::new(
            RecordFormat::Prefect3,
            "k",
            SerializerConfig::from_type("json").unwrap(),
            Some("2020-01-01T00:00:00Z".parse().unwrap()),
            Bytes::from(vec![b'1'; 100_000]),
        );
        let bytes = rec.encode_prefect3().unwrap();
        let head = &bytes[..4096];
        let got = ResultRecord::expiration_from_head(head).unwrap().unwrap();
        assert_eq!(got, rec.expiration);
        // No expiration; another shape; a head cut inside the metadata.
        let none = br#" { "metadata" : {"expiration": null, "x": 1}, "result": "..."#;
        assert_eq!(ResultRecord::expiration_from_head(none).unwrap().unwrap(), None);
        assert!(ResultRecord::expiration_from_head(br#"{"result":"1","metadata":{}}"#).is_none());
        assert!(ResultRecord::expiration_from_head(&bytes[..20]).is_none());
        assert!(ResultRecord::expiration_from_head(br#"{"metadata":[1],"result":""}"#).unwrap().is_err());
    }

    /// The one-pass reader of `prefect3` records gives what the general path gives (the
    /// record, or the same refusal), on every escape JSON has and on what JSON refuses.
    #[test]
    fn the_fast_record_path_reads_what_the_general_path_reads() {
        let results = [
            r#""plain""#,
            r#""""#,
            r#""a\"b\\c\/d\be\ff\ng\rh\ti""#,
            r#""\u0000\u001f\u00e9\u2713\uFFFF""#,
            r#""pair \ud83d\ude00 end""#,
            r#""lone high \ud83d end""#,
            r#""lone low \ude00 end""#,
            r#""high then not low \ud83d\u0041""#,
            r#""bad escape \x""#,
            r#""bad hex \u12G4""#,
            "\"raw control \u{1} char\"",
            r#""trailing backslash \""#,
            r#""é✓ not escaped""#,
            r#"{"nested":1}"#,
            r#"[1,2]"#,
        ];
        let hint = SerializerConfig::from_type("json").unwrap();
        for result in results {
            for metadata in [r#"{"serializer":{"type":"json"},"expiration":null}"#, r#"[1]"#] {
                let text = format!(r#"{{"metadata":{metadata},"result":{result}}}"#);
                let general = match serde_json::from_slice::<Map<String, Value>>(text.as_bytes()) {
                    Ok(obj) => Some(ResultRecord::decode_prefect3(obj)),
                    Err(_) => None,
                };
                let fast = ResultRecord::decode_prefect3_fast(text.as_bytes());
                match (&general, &fast) {
                    (_, None) => {}
                    (Some(Ok(g)), Some(Ok(f))) => assert!(g.data == f.data && g.metadata == f.metadata, "{text}"),
                    (Some(Err(g)), Some(Err(f))) => assert_eq!(g.to_string(), f.to_string(), "{text}"),
                    _ => panic!(
                        "{text}: general {:?}, fast {:?}",
                        general.map(|r| r.map(|r| r.data)),
                        fast.map(|r| r.map(|r| r.data))
                    ),
                }
                // And through the entry point, which tries the fast path first.
                let whole = ResultRecord::decode(Bytes::from(text.clone()), &hint, "k");
                match (&general, &whole) {
                    (Some(Ok(g)), Ok(w)) => assert!(g.data == w.data, "{text}"),
                    (Some(Err(g)), Err(w)) => assert_eq!(g.to_string(), w.to_string(), "{text}"),
                    (None, _) => {}
                    _ => panic!("{text}: the entry point disagrees with the general path"),
                }
            }
        }
        // The common case takes the fast path.
        let text = r#"{"metadata":{"serializer":{"type":"json"}},"result":"\"abc\""}"#;
        assert_eq!(ResultRecord::decode_prefect3_fast(text.as_bytes()).unwrap().unwrap().data, &b"\"abc\""[..]);
    }

    #[test]
    fn written_records_look_like_prefects() {
        let rec = ResultRecord::new(
            RecordFormat::Prefect3,
            "k",
            SerializerConfig::from_type("pickle").unwrap(),
            None,
            Bytes::from_static(b"gAVLKi4=\n"),
        );
        assert_eq!(
            String::from_utf8(rec.encode_prefect3().unwrap()).unwrap(),
            r#"{"metadata":{"storage_key":"k","expiration":null,"serializer":{"type":"pickle","picklelib":"cloudpickle","picklelib_version":null},"prefect_version":"3.9.1","storage_block_id":null},"result":"gAVLKi4=\n"}"#
        );
    }

    #[test]
    fn records_written_in_pieces_equal_records_written_whole() {
        let text: Vec<u8> = (0u8..=0x7f).chain("é✓\"\\".bytes()).collect();
        let data = Bytes::from(text.repeat(3));
        let rec = ResultRecord::new(
            RecordFormat::Prefect3,
            "k",
            SerializerConfig::from_type("json").unwrap(),
            None,
            data.clone(),
        );
        for piece in [1, 7, 1000] {
            let mut out = rec.prefect3_prefix();
            for chunk in data.chunks(piece) {
                escape_json_chunk(chunk, &mut out);
            }
            out.extend_from_slice(PREFECT3_SUFFIX);
            assert_eq!(out, rec.encode_prefect3().unwrap(), "pieces of {piece}");
        }
        // And both are what serde_json writes of the record (Prefect's bytes: the other tests).
        let mut whole = serde_json::Map::new();
        whole.insert("metadata".into(), Value::Object(rec.metadata.clone()));
        whole.insert("result".into(), Value::String(String::from_utf8(data.to_vec()).unwrap()));
        assert_eq!(rec.encode_prefect3().unwrap(), serde_json::to_vec(&whole).unwrap());
    }

    #[test]
    fn truncated_records_are_corrupt_not_bare() {
        let hint = SerializerConfig::from_type("json").unwrap();
        let err =
            ResultRecord::decode(Bytes::from_static(br#"{"metadata":{"storage_key":"x","#), &hint, "x").unwrap_err();
        assert!(matches!(err, RecordError::Truncated(_)), "{err}");
        let bare = ResultRecord::decode(Bytes::from_static(br#"{"meta": 5}"#), &hint, "x").unwrap();
        assert_eq!(bare.format, RecordFormat::Bare);
    }

    /// Found by `scripts/fuzz record_decode`: a record whose `result` is a JSON number read
    /// back one ULP off after a re-encode (serde_json's fast float parsing); the
    /// `float_roundtrip` feature makes parsing exact.
    #[test]
    fn a_numeric_result_survives_a_re_encode() {
        let input =
            include_bytes!("../../fuzz/regressions/record_decode/crash-27c4cf74dab03a0f60bccfe14d46b55aacbf07f6");
        let hint = SerializerConfig::opaque();
        let record = ResultRecord::decode(Bytes::from_static(input), &hint, "k").unwrap();
        let again = ResultRecord::decode(Bytes::from(record.encode_prefect3().unwrap()), &hint, "k").unwrap();
        assert_eq!(again.data, record.data);
    }
}
