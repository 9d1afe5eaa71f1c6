//! Serializer configs, compression, and the layers between a result's *serializer bytes*
//! and its *value bytes*.
//!
//! A serializer config is the JSON object Prefect writes (`{"type": "pickle",
//! "picklelib": "cloudpickle", "picklelib_version": null}`). It is kept as that object,
//! key order and all, and returned unchanged: the service only *reads* the fields it
//! needs (`type`, `jsonlib`, `compressionlib`, the nested `serializer`). A type it does
//! not know is stored and returned opaquely; only serializing and transcoding refuse it.
//!
//! Layers, as Prefect's serializers produce them:
//! - `json`: the serializer bytes are the JSON text;
//! - `pickle`: base64 (`base64.encodebytes`, 76-column lines) of the pickle;
//! - `compressed*`: base64 of the compressed serializer bytes of the inner serializer.

pub mod json;
pub mod json_check;
pub mod pickle;
pub mod plain;

use std::io::{Read, Write};

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use plain::PlainValue;

/// A `Result` whose error is, unless said otherwise, a [`SerializerError`].
pub type Result<T, E = SerializerError> = std::result::Result<T, E>;

/// Why a serializer config, or bytes a client says a serializer wrote, cannot be used: the
/// request's fault, told before anything is stored. (Damage found in stored bytes is a
/// [`DecodeError`] or a [`TranscodeError`] instead.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerializerError {
    /// The config cannot be accepted: no type, `config_json` that is not JSON, a
    /// `compressed` serializer without its inner one, a type the server cannot write.
    #[error("{0}")]
    InvalidConfig(String),
    /// Bytes sent as `serializer`'s output are not what it writes.
    #[error("`data` is not {serializer} serializer output: {reason}")]
    NotItsOutput { serializer: String, reason: String },
    /// The value cannot be written with this serializer (JSON cannot hold it, a pickle
    /// nesting too deep, compression failed).
    #[error("{0}")]
    CannotWrite(String),
}

/// Prefect 3.9.1's defaults for the JSON serializer's options.
fn json_defaults() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), "json".into());
    m.insert("jsonlib".into(), "json".into());
    m.insert("object_encoder".into(), "prefect.serializers.prefect_json_object_encoder".into());
    m.insert("object_decoder".into(), "prefect.serializers.prefect_json_object_decoder".into());
    m.insert("dumps_kwargs".into(), Value::Object(Map::new()));
    m.insert("loads_kwargs".into(), Value::Object(Map::new()));
    m
}

fn pickle_defaults() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), "pickle".into());
    m.insert("picklelib".into(), "cloudpickle".into());
    m.insert("picklelib_version".into(), Value::Null);
    m
}

fn compressed_defaults(ty: &str, inner: Map<String, Value>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), ty.into());
    m.insert("serializer".into(), Value::Object(inner));
    m.insert("compressionlib".into(), "lzma".into());
    m
}

/// A serializer config: Prefect's JSON object, kept verbatim, with its JSON text made
/// once (every reference a read hands back carries it: serializing the object on each
/// cache hit was a twentieth of a hit's instructions).
#[derive(Debug, Clone)]
pub struct SerializerConfig {
    map: Map<String, Value>,
    json: std::sync::Arc<str>,
}

impl PartialEq for SerializerConfig {
    /// The objects compared (key order aside), as before the text was kept.
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl SerializerConfig {
    fn of(map: Map<String, Value>) -> Self {
        // A map of JSON values always serializes.
        let json = serde_json::to_string(&map).unwrap_or_default().into();
        SerializerConfig { map, json }
    }
}

/// What the service understands of a config.
#[derive(Debug, Clone, PartialEq)]
pub enum SerializerKind {
    Json { jsonlib: String },
    Pickle,
    Compressed { inner: Box<SerializerConfig>, lib: Compression },
    Unknown(String),
}

/// A `compressionlib`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compression {
    /// XZ, as Python's `lzma.compress` (the default).
    Lzma,
    Bz2,
    Zlib,
    Gzip,
    Unknown(String),
}

impl Compression {
    fn parse(s: &str) -> Self {
        match s {
            "lzma" => Compression::Lzma,
            "bz2" => Compression::Bz2,
            "zlib" => Compression::Zlib,
            "gzip" => Compression::Gzip,
            other => Compression::Unknown(other.to_owned()),
        }
    }
}

impl SerializerConfig {
    /// A config from a type name, with every option Prefect 3.9.1 writes for it.
    /// Unknown types get a config holding only their type.
    pub fn from_type(ty: &str) -> Result<Self> {
        let ty = ty.trim();
        if ty.is_empty() {
            return Err(SerializerError::InvalidConfig("the serializer type is empty".into()));
        }
        Ok(SerializerConfig::of(match ty {
            "json" => json_defaults(),
            "pickle" => pickle_defaults(),
            "compressed/json" => compressed_defaults(ty, json_defaults()),
            "compressed/pickle" => compressed_defaults(ty, pickle_defaults()),
            "compressed" => {
                return Err(SerializerError::InvalidConfig(
                    "type `compressed` needs an inner serializer: give a config such as \
                     {\"type\": \"compressed\", \"serializer\": \"json\", \"compressionlib\": \"bz2\"}"
                        .into(),
                ));
            }
            other => {
                let mut m = Map::new();
                m.insert("type".into(), other.into());
                m
            }
        }))
    }

    /// `{"type": "opaque"}`: bytes the service stores and returns without reading them
    /// (bare objects written through a Prefect storage block, whose serializer the block
    /// does not know).
    pub fn opaque() -> Self {
        let mut m = Map::new();
        m.insert("type".into(), "opaque".into());
        SerializerConfig::of(m)
    }

    /// A config from JSON: an object with a `type`, or a string naming a type.
    pub fn from_value(v: Value) -> Result<Self> {
        match v {
            Value::String(ty) => Self::from_type(&ty),
            Value::Object(m) => {
                match m.get("type") {
                    Some(Value::String(t)) if !t.trim().is_empty() => {}
                    _ => {
                        return Err(SerializerError::InvalidConfig(
                            "a serializer config must be a JSON object with a string `type`".into(),
                        ));
                    }
                }
                let config = SerializerConfig::of(m);
                config.check()?;
                Ok(config)
            }
            other => Err(SerializerError::InvalidConfig(format!(
                "a serializer config must be a JSON object or a type name, not `{other}`"
            ))),
        }
    }

    /// A config from a request: `config_json` when given (its type must agree with `ty`
    /// when both are given), else the type's defaults.
    pub fn from_request(ty: &str, config_json: &str) -> Result<Self> {
        if config_json.trim().is_empty() {
            return Self::from_type(ty);
        }
        let v: Value = serde_json::from_str(config_json)
            .map_err(|e| SerializerError::InvalidConfig(format!("config_json is not JSON: {e}")))?;
        let config = Self::from_value(v)?;
        if !ty.is_empty() && ty != config.type_name() {
            return Err(SerializerError::InvalidConfig(format!(
                "type `{ty}` disagrees with config_json's type `{}`",
                config.type_name()
            )));
        }
        Ok(config)
    }

    /// Structural checks of known types (a nested serializer must itself be valid).
    fn check(&self) -> Result<()> {
        if let SerializerKind::Compressed { inner, .. } = self.kind()? {
            inner.check()?;
        }
        Ok(())
    }

    pub fn type_name(&self) -> &str {
        self.map.get("type").and_then(Value::as_str).unwrap_or("")
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }

    pub fn to_value(&self) -> Value {
        Value::Object(self.map.clone())
    }

    pub fn to_json_string(&self) -> String {
        self.json.to_string()
    }

    /// What the service understands of this config.
    pub fn kind(&self) -> Result<SerializerKind> {
        let ty = self.type_name();
        Ok(match ty {
            "json" => SerializerKind::Json {
                jsonlib: self.map.get("jsonlib").and_then(Value::as_str).unwrap_or("json").to_owned(),
            },
            "pickle" => SerializerKind::Pickle,
            "compressed" | "compressed/json" | "compressed/pickle" => {
                let inner = match self.map.get("serializer") {
                    Some(v) => SerializerConfig::from_value(v.clone())?,
                    None if ty == "compressed/json" => SerializerConfig::of(json_defaults()),
                    None if ty == "compressed/pickle" => SerializerConfig::of(pickle_defaults()),
                    None => {
                        return Err(SerializerError::InvalidConfig(
                            "a `compressed` serializer config needs a nested `serializer`".into(),
                        ));
                    }
                };
                let lib = Compression::parse(self.map.get("compressionlib").and_then(Value::as_str).unwrap_or("lzma"));
                SerializerKind::Compressed { inner: Box::new(inner), lib }
            }
            other => SerializerKind::Unknown(other.to_owned()),
        })
    }
}

/// The value bytes of a result and the serializer that reads them.
#[derive(Debug, Clone)]
pub struct DecodedValue {
    /// Raw pickle, JSON text, or the serializer bytes for unknown serializers.
    pub bytes: Bytes,
    /// What the bytes are.
    pub kind: ValueKind,
}

/// What value bytes are once every layer the service can remove (base64, compression) is
/// removed: what can be done with them follows from it (only `Json` and `Pickle` can be
/// read as JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    Json,
    Pickle,
    /// A serializer (or a compression library) the service does not know, by its name:
    /// the bytes are returned as they are.
    Opaque(String),
}

impl ValueKind {
    /// The name clients see (`value_serializer`): `json`, `pickle`, or the unknown name.
    pub fn name(&self) -> &str {
        match self {
            ValueKind::Json => "json",
            ValueKind::Pickle => "pickle",
            ValueKind::Opaque(name) => name,
        }
    }
}

/// Why stored serializer bytes could not be decoded to value bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are damaged (bad base64, a broken compressed stream).
    #[error("{0}")]
    Corrupt(String),
    /// Decompressed, they would exceed `limit` bytes.
    #[error("the decompressed value is {size} bytes, above the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
}

/// Removes every layer the service can remove: base64, compression.
pub fn decode_value(config: &SerializerConfig, data: &Bytes, limit: u64) -> Result<DecodedValue, DecodeError> {
    let kind = config.kind().map_err(|e| DecodeError::Corrupt(e.to_string()))?;
    match kind {
        SerializerKind::Json { .. } => Ok(DecodedValue { bytes: data.clone(), kind: ValueKind::Json }),
        SerializerKind::Pickle => Ok(DecodedValue {
            bytes: Bytes::from(b64_decode(data).map_err(DecodeError::Corrupt)?),
            kind: ValueKind::Pickle,
        }),
        SerializerKind::Compressed { inner, lib } => {
            if let Compression::Unknown(name) = &lib {
                return Ok(DecodedValue {
                    bytes: data.clone(),
                    kind: ValueKind::Opaque(format!("compressed ({name})")),
                });
            }
            let compressed = b64_decode(data).map_err(DecodeError::Corrupt)?;
            let inner_bytes = decompress(&lib, &compressed, limit)?;
            decode_value(&inner, &Bytes::from(inner_bytes), limit)
        }
        SerializerKind::Unknown(ty) => Ok(DecodedValue { bytes: data.clone(), kind: ValueKind::Opaque(ty) }),
    }
}

/// The serializer of a bare payload nobody named, when its bytes tell it safely: JSON
/// text is the JSON serializer's; base64 whose first bytes are a pickle's protocol mark
/// (`0x80`, protocol 2 and later, which no JSON text starts with) is the pickle
/// serializer's; base64 whose first bytes are the magic number of `preferred`'s
/// compression, when `preferred` (the block's default) is a compressed serializer, is
/// its. `preferred` is returned whenever it is of the kind found, so its options
/// (`jsonlib`, `picklelib`) are kept. `None`: the bytes do not say.
pub fn sniff(data: &[u8], preferred: &SerializerConfig) -> Option<SerializerConfig> {
    let kind = preferred.kind().ok();
    let prefer =
        |ty: &str, same: bool| if same { Some(preferred.clone()) } else { SerializerConfig::from_type(ty).ok() };
    if std::str::from_utf8(data).is_ok() && json_check::check_json(data).is_ok() {
        return prefer("json", matches!(kind, Some(SerializerKind::Json { .. })));
    }
    // The first four base64 symbols are the first three bytes.
    let start = data.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(data.len());
    let head = b64_decode(data.get(start..start + 4)?).ok()?;
    if head.first() == Some(&0x80) {
        return prefer("pickle", matches!(kind, Some(SerializerKind::Pickle)));
    }
    let magic: &[u8] = match kind {
        Some(SerializerKind::Compressed { lib: Compression::Lzma, .. }) => &[0xfd, 0x37, 0x7a],
        Some(SerializerKind::Compressed { lib: Compression::Bz2, .. }) => b"BZh",
        Some(SerializerKind::Compressed { lib: Compression::Gzip, .. }) => &[0x1f, 0x8b],
        Some(SerializerKind::Compressed { lib: Compression::Zlib, .. }) => &[0x78],
        _ => return None,
    };
    head.starts_with(magic).then(|| preferred.clone())
}

/// Serializes a plain value with `config`, as the named Prefect serializer would.
pub fn encode_plain(config: &SerializerConfig, value: &PlainValue) -> Result<Bytes> {
    encode_value(config, value).map(|e| e.data)
}

/// A value serialized by the server: the serializer bytes, and the value bytes under them
/// (what decoding them gives back, known here without decoding).
#[derive(Debug, Clone)]
pub struct Encoded {
    pub data: Bytes,
    /// For JSON, the same buffer as `data` (one allocation, counted once by the cache).
    pub value: DecodedValue,
}

/// [`encode_plain`], keeping the value bytes of each layer: a Put of JSON needs both, and
/// decoding what was just encoded would only find them again.
pub fn encode_value(config: &SerializerConfig, value: &PlainValue) -> Result<Encoded> {
    match config.kind()? {
        SerializerKind::Json { jsonlib } => {
            if let Some(Value::Object(kw)) = config.as_map().get("dumps_kwargs")
                && !kw.is_empty()
            {
                return Err(SerializerError::InvalidConfig(
                    "the server serializes JSON with Python's json.dumps defaults and cannot apply dumps_kwargs; \
                     serialize on the client and send `data`"
                        .into(),
                ));
            }
            let style = match jsonlib.as_str() {
                "json" => json::PythonJsonStyle::Stdlib,
                "orjson" => json::PythonJsonStyle::Orjson,
                other => {
                    return Err(SerializerError::InvalidConfig(format!(
                        "jsonlib `{other}` is not one the server can write (json, orjson)"
                    )));
                }
            };
            let data = Bytes::from(json::write_python(value, style).map_err(SerializerError::CannotWrite)?);
            let value = DecodedValue { bytes: data.clone(), kind: ValueKind::Json };
            Ok(Encoded { data, value })
        }
        SerializerKind::Pickle => {
            let p = pickle::write(value).map_err(SerializerError::CannotWrite)?;
            let data = Bytes::from(b64_encodebytes(&p));
            Ok(Encoded { data, value: DecodedValue { bytes: Bytes::from(p), kind: ValueKind::Pickle } })
        }
        SerializerKind::Compressed { inner, lib } => {
            let inner = encode_value(&inner, value)?;
            let compressed = compress(&lib, &inner.data)?;
            Ok(Encoded { data: Bytes::from(b64_encodebytes(&compressed)), value: inner.value })
        }
        SerializerKind::Unknown(ty) => Err(SerializerError::InvalidConfig(format!(
            "the server cannot serialize with `{ty}`; serialize on the client and send `data`"
        ))),
    }
}

/// Checks that client-supplied serializer bytes can be what `config` produces, so a
/// record that could never be read is refused before it overwrites anything.
pub fn check_data(config: &SerializerConfig, data: &[u8]) -> Result<()> {
    let bad = |reason: String| Err(SerializerError::NotItsOutput { serializer: config.type_name().to_owned(), reason });
    match config.kind()? {
        SerializerKind::Json { .. } => {
            if let Err(e) = std::str::from_utf8(data) {
                return bad(format!("JSON text must be UTF-8 ({e})"));
            }
            // Text Python's `json` could not read would replace a result with one that
            // reads as DATA_LOSS: checked here, without building a value.
            if let Err(e) = json_check::check_json(data) {
                return bad(format!("it is not JSON text ({e})"));
            }
        }
        SerializerKind::Pickle | SerializerKind::Compressed { .. } => {
            if let Err(e) = b64_decode(data) {
                return bad(e);
            }
        }
        SerializerKind::Unknown(_) => {}
    }
    Ok(())
}

/// [`check_data`] for serializer bytes that arrive in chunks (streamed puts), in constant
/// memory. It checks what can be checked without holding the whole payload: JSON text is
/// UTF-8 and JSON ([`json_check::JsonCheck`]); pickle and compressed payloads are base64 (standard alphabet and whitespace, `=`
/// only at the end, a length that is a multiple of four). Whether the pickle or the
/// compressed stream inside is whole is not checked: reading it needs all of it at once.
#[derive(Debug)]
pub struct StreamCheck {
    kind: StreamCheckKind,
    type_name: String,
    utf8: Utf8Stream,
    json: json_check::JsonCheck,
    /// Base64 symbols seen, and whether padding has begun.
    symbols: u64,
    padding: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamCheckKind {
    Json,
    Base64,
    None,
}

impl StreamCheck {
    pub fn new(config: &SerializerConfig) -> Result<Self> {
        let kind = match config.kind()? {
            SerializerKind::Json { .. } => StreamCheckKind::Json,
            SerializerKind::Pickle | SerializerKind::Compressed { .. } => StreamCheckKind::Base64,
            SerializerKind::Unknown(_) => StreamCheckKind::None,
        };
        Ok(StreamCheck {
            kind,
            type_name: config.type_name().to_owned(),
            utf8: Utf8Stream::default(),
            json: json_check::JsonCheck::default(),
            symbols: 0,
            padding: 0,
        })
    }

    fn bad(&self, reason: String) -> SerializerError {
        SerializerError::NotItsOutput { serializer: self.type_name.clone(), reason }
    }

    /// Checks the next chunk.
    pub fn update(&mut self, chunk: &[u8]) -> Result<()> {
        match self.kind {
            StreamCheckKind::None => Ok(()),
            StreamCheckKind::Json => {
                if let Err(at) = self.utf8.update(chunk) {
                    return Err(self.bad(format!("JSON text must be UTF-8 (invalid byte near offset {at})")));
                }
                self.json.update(chunk).map_err(|e| self.bad(format!("it is not JSON text ({e})")))
            }
            StreamCheckKind::Base64 => {
                for &b in chunk {
                    match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' if self.padding == 0 => self.symbols += 1,
                        b'=' if self.padding < 2 => self.padding += 1,
                        b if b.is_ascii_whitespace() => {}
                        _ => {
                            return Err(self.bad(format!(
                                "invalid base64 (byte {b:#04x} after {} symbols)",
                                self.symbols + self.padding
                            )));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// Checks the end of the payload.
    pub fn finish(&self) -> Result<()> {
        match self.kind {
            StreamCheckKind::Json if !self.utf8.is_complete() => {
                Err(self.bad("JSON text must be UTF-8 (it ends inside a character)".into()))
            }
            StreamCheckKind::Json => self.json.finish().map_err(|e| self.bad(format!("it is not JSON text ({e})"))),
            StreamCheckKind::Base64 if !(self.symbols + self.padding).is_multiple_of(4) => {
                Err(self.bad("invalid base64 (its length is not a multiple of four)".into()))
            }
            _ => Ok(()),
        }
    }
}

/// UTF-8 validation of bytes that arrive in chunks, in constant memory: a character split
/// between chunks is carried over (at most three bytes).
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
    seen: u64,
}

impl Utf8Stream {
    /// Checks the next chunk; the error is the offset of the bad byte in the whole stream.
    pub fn update(&mut self, mut chunk: &[u8]) -> std::result::Result<(), u64> {
        while !self.carry.is_empty() {
            let Some((&b, rest)) = chunk.split_first() else {
                return Ok(());
            };
            self.carry.push(b);
            chunk = rest;
            self.seen += 1;
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_none() => {}
                Err(_) => return Err(self.seen),
            }
        }
        let start = self.seen;
        self.seen += chunk.len() as u64;
        match std::str::from_utf8(chunk) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                self.carry.extend_from_slice(&chunk[e.valid_up_to()..]);
                Ok(())
            }
            Err(e) => Err(start + e.valid_up_to() as u64),
        }
    }

    /// Whether the stream so far ends on a character boundary.
    pub fn is_complete(&self) -> bool {
        self.carry.is_empty()
    }
}

/// `base64.encodebytes`: standard alphabet, a newline after every 76 characters and at the end.
pub fn b64_encodebytes(data: &[u8]) -> Vec<u8> {
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(text.len() + text.len() / 76 + 1);
    for line in text.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// `base64.decodebytes`: standard alphabet, whitespace ignored.
pub fn b64_decode(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let clean: Vec<u8> = data.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(&clean).map_err(|e| format!("invalid base64 ({e})"))
}

fn compress(lib: &Compression, data: &[u8]) -> Result<Vec<u8>> {
    let io = |e: std::io::Error| SerializerError::CannotWrite(format!("compression failed: {e}"));
    match lib {
        // Python's lzma.compress: XZ container, CRC64, preset 6.
        Compression::Lzma => {
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 6);
            enc.write_all(data).map_err(io)?;
            enc.finish().map_err(io)
        }
        // bz2.compress: level 9.
        Compression::Bz2 => {
            let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
            enc.write_all(data).map_err(io)?;
            enc.finish().map_err(io)
        }
        // zlib.compress: level 6 (Z_DEFAULT_COMPRESSION).
        Compression::Zlib => {
            let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
            enc.write_all(data).map_err(io)?;
            enc.finish().map_err(io)
        }
        // gzip.compress: level 9.
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(data).map_err(io)?;
            enc.finish().map_err(io)
        }
        Compression::Unknown(name) => Err(SerializerError::InvalidConfig(format!(
            "compressionlib `{name}` is not one the server can write (lzma, bz2, zlib, gzip)"
        ))),
    }
}

/// Decompresses, reading at most `limit` bytes of output (a decompression bomb stops there).
fn decompress(lib: &Compression, data: &[u8], limit: u64) -> Result<Vec<u8>, DecodeError> {
    let reader: Box<dyn Read + '_> = match lib {
        Compression::Lzma => {
            // FORMAT_AUTO, as lzma.decompress: XZ or legacy .lzma, concatenated streams.
            let stream = liblzma::stream::Stream::new_auto_decoder(u64::MAX, liblzma::stream::CONCATENATED)
                .map_err(|e| DecodeError::Corrupt(format!("lzma: {e}")))?;
            Box::new(liblzma::read::XzDecoder::new_stream(data, stream))
        }
        Compression::Bz2 => Box::new(bzip2::read::MultiBzDecoder::new(data)),
        Compression::Zlib => Box::new(flate2::read::ZlibDecoder::new(data)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(data)),
        Compression::Unknown(name) => {
            return Err(DecodeError::Corrupt(format!("unknown compressionlib `{name}`")));
        }
    };
    let mut out = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Corrupt(format!("cannot decompress: {e}")))?;
    if out.len() as u64 > limit {
        return Err(DecodeError::TooLarge { size: out.len() as u64, limit });
    }
    Ok(out)
}

/// Why a value could not be turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    /// The value is not plain data, or the serializer is not one JSON can come from.
    #[error("{0}")]
    Unsupported(String),
    /// The value bytes are broken.
    #[error("{0}")]
    Corrupt(String),
    /// The value would take more than the budget's bytes (a pickle that expands).
    #[error("the value expands past {limit} bytes")]
    TooLarge { limit: usize },
}

/// Turns value bytes into strict JSON: JSON results as they are (rewritten only when
/// they hold Python's `NaN`/`Infinity`), plain-data pickles transcoded.
/// `max_bytes` bounds the memory (and so the work) of the value built from a pickle.
pub fn to_json(value: &DecodedValue, max_bytes: usize) -> Result<Bytes, TranscodeError> {
    match &value.kind {
        ValueKind::Json => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&value.bytes).is_ok() {
                return Ok(value.bytes.clone());
            }
            let v = json::parse(&value.bytes)
                .map_err(|e| TranscodeError::Corrupt(format!("the JSON result does not parse: {e}")))?;
            json::write_strict(&v).map(Bytes::from).map_err(TranscodeError::Unsupported)
        }
        ValueKind::Pickle => {
            let v = pickle::read(&value.bytes, max_bytes).map_err(|e| match e {
                pickle::PickleError::NotPlainData(m) => TranscodeError::Unsupported(format!(
                    "{m}; only pickles of builtin plain data (dict, list, tuple, set, str, bytes, int, float, bool, None) \
                     can be transcoded, and no pickle is ever executed"
                )),
                pickle::PickleError::Malformed(m) => TranscodeError::Corrupt(format!("malformed pickle: {m}")),
                pickle::PickleError::TooLarge { limit } => TranscodeError::TooLarge { limit },
            })?;
            json::write_strict(&v).map(Bytes::from).map_err(TranscodeError::Unsupported)
        }
        ValueKind::Opaque(other) => {
            Err(TranscodeError::Unsupported(format!("results serialized with `{other}` can be read raw only")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: &str) -> SerializerConfig {
        SerializerConfig::from_value(serde_json::from_str(v).unwrap()).unwrap()
    }

    #[test]
    fn type_names_expand_to_prefects_defaults_and_objects_stay_verbatim() {
        assert_eq!(
            SerializerConfig::from_type("pickle").unwrap().to_json_string(),
            r#"{"type":"pickle","picklelib":"cloudpickle","picklelib_version":null}"#
        );
        let custom = r#"{"type":"compressed","serializer":"json","compressionlib":"bz2","extra":[1]}"#;
        assert_eq!(cfg(custom).to_json_string(), custom);
        assert!(SerializerConfig::from_type("compressed").is_err());
        assert!(SerializerConfig::from_value(serde_json::json!({"type": 3})).is_err());
        assert_eq!(
            SerializerConfig::from_type("my.custom").unwrap().kind().unwrap(),
            SerializerKind::Unknown("my.custom".into())
        );
    }

    #[test]
    fn decodes_prefect_samples() {
        // v3.9.1/resultstore-api/compressed-pickle -> [1, 2, 3]
        let c = SerializerConfig::from_type("compressed/pickle").unwrap();
        let data = Bytes::from_static(b"/Td6WFoAAATm1rRGAgAhARYAAAB0L+WjAQAgZ0FXVkN3QUFBQUFBQUFCZGxDaExBVXNDU3dObExn\nPT0KAAAAAKrKE6xp9A6yAAE5Ic8oa2IftvN9AQAAAAAEWVo=\n");
        let v = decode_value(&c, &data, 1 << 20).unwrap();
        assert_eq!(v.kind, ValueKind::Pickle);
        assert_eq!(&to_json(&v, 1000).unwrap()[..], b"[1, 2, 3]");
        // v3.9.1/resultstore-api/compressed-json-bz2 -> "hi"
        let c = cfg(r#"{"type":"compressed","serializer":{"type":"json"},"compressionlib":"bz2"}"#);
        let v = decode_value(
            &c,
            &Bytes::from_static(b"QlpoOTFBWSZTWYXmzN4AAACRABAAAGAgACGYGYTMLuSKcKEhC82ZvA==\n"),
            1 << 20,
        )
        .unwrap();
        assert_eq!(&v.bytes[..], b"\"hi\"");
    }

    #[test]
    fn every_compression_round_trips_and_bombs_stop_at_the_limit() {
        let value = json::parse(br#"{"a": [1, 2.5, "x", null, true]}"#).unwrap();
        for lib in ["lzma", "bz2", "zlib", "gzip"] {
            for inner in ["json", "pickle"] {
                let c = cfg(&format!(r#"{{"type":"compressed","serializer":"{inner}","compressionlib":"{lib}"}}"#));
                let data = encode_plain(&c, &value).unwrap();
                let v = decode_value(&c, &data, 1 << 20).unwrap();
                assert_eq!(&to_json(&v, 1000).unwrap()[..], br#"{"a": [1, 2.5, "x", null, true]}"#, "{lib}/{inner}");
            }
        }
        let zeros = PlainValue::Str("0".repeat(1 << 20));
        let c = SerializerConfig::from_type("compressed/json").unwrap();
        let data = encode_plain(&c, &zeros).unwrap();
        assert!(data.len() < 10_000);
        assert!(matches!(decode_value(&c, &data, 1000), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn bare_payloads_are_told_by_their_bytes_or_not_at_all() {
        let ty = |t: &str| SerializerConfig::from_type(t).unwrap();
        let pickle = ty("pickle");
        let json = ty("json");
        assert_eq!(sniff(b"{\"a\": [1, NaN]}", &pickle), Some(json.clone()));
        assert_eq!(sniff(b"\"text\"", &json), Some(json.clone()));
        // base64 of pickle protocol 4 and 5 (`\x80\x04`, `\x80\x05`).
        assert_eq!(sniff(b"gASVBQAAAAAAAACMAXiULg==\n", &json), Some(pickle.clone()));
        assert_eq!(sniff(b"gAWVBQAAAAAAAACMAXiULg==\n", &pickle), Some(pickle.clone()));
        let xz = ty("compressed/pickle");
        let compressed = encode_plain(&xz, &PlainValue::Int(7)).unwrap();
        assert_eq!(sniff(&compressed, &xz), Some(xz.clone()));
        assert_eq!(sniff(&compressed, &pickle), None);
        for unknown in [&b"{not json"[..], b"", b"abc", b"\xff\xfe"] {
            assert_eq!(sniff(unknown, &pickle), None, "{unknown:?}");
        }
    }

    #[test]
    fn json_with_nan_becomes_strict() {
        let v = DecodedValue { bytes: Bytes::from_static(b"{\"nan\": NaN, \"x\": 1}"), kind: ValueKind::Json };
        assert_eq!(&to_json(&v, 100).unwrap()[..], b"{\"nan\": null, \"x\": 1}");
    }
}
