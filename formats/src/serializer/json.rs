//! JSON as Python writes and reads it.
//!
//! - [`parse`] reads JSON text into a [`PlainValue`], accepting Python's `NaN`,
//!   `Infinity` and `-Infinity`, keeping key order and integers of any size, and
//!   refusing nesting deeper than [`MAX_DEPTH`].
//! - [`write_python`] writes what Python's `json.dumps(obj)` writes (`", "` and `": "`
//!   separators, `ensure_ascii`, `repr` floats), or what `orjson.dumps` writes (compact,
//!   UTF-8), so records written by the server are the bytes Prefect writes.
//! - [`write_strict`] writes RFC 8259 JSON for JSON clients: non-finite floats become
//!   `null` (as orjson writes them), and the Python-only types use Prefect's own JSON
//!   vocabulary (`{"__class__": "builtins.set", "data": [...]}`).

use super::plain::PlainValue;

/// Deepest nesting accepted, as serde_json's default.
pub const MAX_DEPTH: usize = 128;

/// Parses JSON text (Python dialect). Errors say where and why.
pub fn parse(text: &[u8]) -> Result<PlainValue, String> {
    let mut p = Parser { s: text, i: 0 };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("trailing characters after the JSON value"));
    }
    Ok(v)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }
    fn value(&mut self, depth: usize) -> Result<PlainValue, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("JSON nested deeper than 128 levels"));
        }
        match self.s.get(self.i) {
            None => Err(self.err("unexpected end of JSON")),
            Some(b'{') => {
                self.i += 1;
                let mut items: Vec<(PlainValue, PlainValue)> = Vec::new();
                let mut index: std::collections::HashMap<String, usize> = Default::default();
                self.ws();
                if self.eat("}") {
                    return Ok(PlainValue::Dict(items));
                }
                loop {
                    self.ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return Err(self.err("expected a string key"));
                    }
                    let key = self.string()?;
                    self.ws();
                    if !self.eat(":") {
                        return Err(self.err("expected `:`"));
                    }
                    self.ws();
                    let v = self.value(depth + 1)?;
                    // Python keeps the last value of a repeated key, in the first position.
                    match index.get(&key) {
                        Some(&at) => items[at].1 = v,
                        None => {
                            index.insert(key.clone(), items.len());
                            items.push((PlainValue::Str(key), v));
                        }
                    }
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Ok(PlainValue::Dict(items));
                    }
                    return Err(self.err("expected `,` or `}`"));
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat("]") {
                    return Ok(PlainValue::List(items));
                }
                loop {
                    self.ws();
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Ok(PlainValue::List(items));
                    }
                    return Err(self.err("expected `,` or `]`"));
                }
            }
            Some(b'"') => Ok(PlainValue::Str(self.string()?)),
            Some(b't') if self.eat("true") => Ok(PlainValue::Bool(true)),
            Some(b'f') if self.eat("false") => Ok(PlainValue::Bool(false)),
            Some(b'n') if self.eat("null") => Ok(PlainValue::None),
            Some(b'N') if self.eat("NaN") => Ok(PlainValue::Float(f64::NAN)),
            Some(b'I') if self.eat("Infinity") => Ok(PlainValue::Float(f64::INFINITY)),
            Some(b'-') if self.s[self.i..].starts_with(b"-Infinity") => {
                self.i += 9;
                Ok(PlainValue::Float(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
        }
    }
    fn number(&mut self) -> Result<PlainValue, String> {
        let start = self.i;
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        let digits = |p: &mut Self| {
            let s = p.i;
            while p.i < p.s.len() && p.s[p.i].is_ascii_digit() {
                p.i += 1;
            }
            p.i - s
        };
        let int_digits = digits(self);
        if int_digits == 0 {
            return Err(self.err("expected digits"));
        }
        if int_digits > 1 && self.s[self.i - int_digits] == b'0' {
            return Err(self.err("leading zero in a number"));
        }
        let mut is_float = false;
        if self.s.get(self.i) == Some(&b'.') {
            self.i += 1;
            is_float = true;
            if digits(self) == 0 {
                return Err(self.err("expected digits after `.`"));
            }
        }
        if matches!(self.s.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            is_float = true;
            if matches!(self.s.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("expected exponent digits"));
            }
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("bad number"))?;
        if is_float {
            text.parse::<f64>().map(PlainValue::Float).map_err(|_| self.err("bad number"))
        } else {
            Ok(match text.parse::<i64>() {
                Ok(n) => PlainValue::Int(n),
                Err(_) => PlainValue::BigInt(text.to_owned()),
            })
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let h = self.s.get(self.i..self.i + 4).ok_or_else(|| self.err("truncated \\u escape"))?;
        let h = std::str::from_utf8(h).map_err(|_| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(h, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.i += 4;
        Ok(v)
    }
    fn string(&mut self) -> Result<String, String> {
        self.i += 1; // opening quote
        let mut out = Vec::new();
        loop {
            // A run of plain bytes is copied at once (most strings are one run).
            let rest = &self.s[self.i.min(self.s.len())..];
            let run = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(rest.len());
            out.extend_from_slice(&rest[..run]);
            self.i += run;
            let Some(&c) = self.s.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let Some(&e) = self.s.get(self.i) else {
                        return Err(self.err("unterminated escape"));
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) && self.s[self.i..].starts_with(b"\\u") {
                                let save = self.i;
                                self.i += 2;
                                let lo = self.hex4()?;
                                if (0xDC00..0xE000).contains(&lo) {
                                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                                } else {
                                    self.i = save;
                                    hi
                                }
                            } else {
                                hi
                            };
                            // A lone surrogate (which Python allows) becomes U+FFFD.
                            char::from_u32(code).unwrap_or('\u{FFFD}')
                        }
                        _ => return Err(self.err("unknown escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.err("control character in a string")),
                _ => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not UTF-8"))
    }
}

/// How [`write_python`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PythonJsonStyle {
    /// `json.dumps(obj)`: `", "`, `": "`, non-ASCII escaped.
    Stdlib,
    /// `orjson.dumps(obj)`: compact, UTF-8.
    Orjson,
}

/// Writes `v` as Python's `json.dumps` (or orjson) would. Fails on values JSON cannot
/// hold (bytes, sets, non-string keys other than int/float/bool/None).
pub fn write_python(v: &PlainValue, style: PythonJsonStyle) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let w = Writer {
        item_sep: if style == PythonJsonStyle::Stdlib { ", " } else { "," },
        key_sep: if style == PythonJsonStyle::Stdlib { ": " } else { ":" },
        ascii: style == PythonJsonStyle::Stdlib,
        strict: style == PythonJsonStyle::Orjson,
        prefect_vocabulary: false,
    };
    w.write(v, &mut out)?;
    Ok(out)
}

/// Writes RFC 8259 JSON (Python separators) for JSON clients; see the module docs.
pub fn write_strict(v: &PlainValue) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let w = Writer { item_sep: ", ", key_sep: ": ", ascii: false, strict: true, prefect_vocabulary: true };
    w.write(v, &mut out)?;
    Ok(out)
}

struct Writer {
    item_sep: &'static str,
    key_sep: &'static str,
    ascii: bool,
    /// Non-finite floats become `null` instead of `NaN`/`Infinity`.
    strict: bool,
    /// Sets, frozensets and bytes use Prefect's `{"__class__": ..., "data": ...}` form.
    prefect_vocabulary: bool,
}

impl Writer {
    fn write(&self, v: &PlainValue, out: &mut Vec<u8>) -> Result<(), String> {
        match v {
            PlainValue::None => out.extend_from_slice(b"null"),
            PlainValue::Bool(true) => out.extend_from_slice(b"true"),
            PlainValue::Bool(false) => out.extend_from_slice(b"false"),
            PlainValue::Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
            PlainValue::BigInt(s) => out.extend_from_slice(s.as_bytes()),
            PlainValue::Float(f) => self.float(*f, out),
            PlainValue::Str(s) => self.string(s, out),
            PlainValue::List(items) | PlainValue::Tuple(items) => self.array(items, out)?,
            PlainValue::Dict(items) => {
                out.push(b'{');
                for (n, (k, v)) in items.iter().enumerate() {
                    if n > 0 {
                        out.extend_from_slice(self.item_sep.as_bytes());
                    }
                    self.key(k, out)?;
                    out.extend_from_slice(self.key_sep.as_bytes());
                    self.write(v, out)?;
                }
                out.push(b'}');
            }
            PlainValue::Set(items) | PlainValue::FrozenSet(items) if self.prefect_vocabulary => {
                let class = if matches!(v, PlainValue::Set(_)) { "builtins.set" } else { "builtins.frozenset" };
                self.wrapper(class, |w, out| w.array(items, out), out)?;
            }
            PlainValue::Bytes(b) if self.prefect_vocabulary => {
                let s = std::str::from_utf8(b).map_err(
                    |_| "bytes that are not UTF-8 have no JSON form (Prefect's JSON cannot hold them either)",
                )?;
                self.wrapper(
                    "builtins.bytes",
                    |w, out| {
                        w.string(s, out);
                        Ok(())
                    },
                    out,
                )?;
            }
            PlainValue::Set(_) | PlainValue::FrozenSet(_) => {
                return Err("a set has no JSON form".into());
            }
            PlainValue::Bytes(_) => return Err("bytes have no JSON form".into()),
        }
        Ok(())
    }
    fn array(&self, items: &[PlainValue], out: &mut Vec<u8>) -> Result<(), String> {
        out.push(b'[');
        for (n, item) in items.iter().enumerate() {
            if n > 0 {
                out.extend_from_slice(self.item_sep.as_bytes());
            }
            self.write(item, out)?;
        }
        out.push(b']');
        Ok(())
    }
    fn wrapper(
        &self,
        class: &str,
        data: impl FnOnce(&Self, &mut Vec<u8>) -> Result<(), String>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        out.push(b'{');
        self.string("__class__", out);
        out.extend_from_slice(self.key_sep.as_bytes());
        self.string(class, out);
        out.extend_from_slice(self.item_sep.as_bytes());
        self.string("data", out);
        out.extend_from_slice(self.key_sep.as_bytes());
        data(self, out)?;
        out.push(b'}');
        Ok(())
    }
    /// Dict keys as `json.dumps` writes them: strings as they are, numbers, booleans and
    /// `None` as their JSON text in quotes.
    fn key(&self, k: &PlainValue, out: &mut Vec<u8>) -> Result<(), String> {
        match k {
            PlainValue::Str(s) => self.string(s, out),
            PlainValue::Int(n) => self.string(&n.to_string(), out),
            PlainValue::BigInt(s) => self.string(s, out),
            PlainValue::Float(f) => {
                let mut b = Vec::new();
                Writer { strict: false, ..*self }.float(*f, &mut b);
                self.string(&String::from_utf8_lossy(&b), out)
            }
            PlainValue::Bool(b) => self.string(if *b { "true" } else { "false" }, out),
            PlainValue::None => self.string("null", out),
            _ => {
                return Err("a dict key that is not a str, int, float, bool or None has no JSON form".into());
            }
        }
        Ok(())
    }
    fn float(&self, f: f64, out: &mut Vec<u8>) {
        if !f.is_finite() {
            let text: &[u8] = if self.strict {
                b"null"
            } else if f.is_nan() {
                b"NaN"
            } else if f > 0.0 {
                b"Infinity"
            } else {
                b"-Infinity"
            };
            out.extend_from_slice(text);
            return;
        }
        out.extend_from_slice(python_float_repr(f).as_bytes());
    }
    fn string(&self, s: &str, out: &mut Vec<u8>) {
        out.push(b'"');
        for ch in s.chars() {
            match ch {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{8}' => out.extend_from_slice(b"\\b"),
                '\u{c}' => out.extend_from_slice(b"\\f"),
                c if (c as u32) < 0x20 || (self.ascii && (c as u32) >= 0x7f) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
                    }
                }
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        out.push(b'"');
    }
}

/// Python's `repr(float)`: the shortest round-tripping digits, fixed notation for
/// exponents in [-4, 16), otherwise `1e+16` / `1e-05` style.
pub fn python_float_repr(f: f64) -> String {
    // Rust's `{:?}` gives the shortest round-trip digits and switches to exponent form at
    // the same thresholds as Python; only the exponent's spelling differs.
    let s = format!("{f:?}");
    match s.split_once('e') {
        None => s,
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(text: &str) -> String {
        String::from_utf8(write_python(&parse(text.as_bytes()).unwrap(), PythonJsonStyle::Stdlib).unwrap()).unwrap()
    }

    #[test]
    fn writes_what_python_json_dumps_writes() {
        // The bytes of ../shared/prefect-samples/v3.9.1/resultstore-api/json-dict's result.
        assert_eq!(py(r#"{"a":1,"b":[1,2.5,"x"],"c":null}"#), r#"{"a": 1, "b": [1, 2.5, "x"], "c": null}"#);
        assert_eq!(py(r#""hé""#), r#""h\u00e9""#);
        assert_eq!(py(r#""😀""#), r#""\ud83d\ude00""#);
        assert_eq!(
            py("[1e16, 1e-5, 1.0, 0.1, 123456.789, -0.0, 1e15]"),
            "[1e+16, 1e-05, 1.0, 0.1, 123456.789, -0.0, 1000000000000000.0]"
        );
        assert_eq!(py("[NaN, Infinity, -Infinity]"), "[NaN, Infinity, -Infinity]");
        assert_eq!(py("1180591620717411303424"), "1180591620717411303424");
        assert_eq!(py(r#"{"a": 1, "a": 2, "b": 3}"#), r#"{"a": 2, "b": 3}"#);
        let orjson =
            write_python(&parse(r#"{"a": 1, "t": "hé"}"#.as_bytes()).unwrap(), PythonJsonStyle::Orjson).unwrap();
        assert_eq!(String::from_utf8(orjson).unwrap(), r#"{"a":1,"t":"hé"}"#);
    }

    #[test]
    fn strict_output_has_no_nan_and_uses_prefect_wrappers() {
        let v = PlainValue::List(vec![
            PlainValue::Float(f64::NAN),
            PlainValue::Set(vec![PlainValue::Int(1)]),
            PlainValue::Bytes(b"ab".to_vec()),
        ]);
        assert_eq!(
            String::from_utf8(write_strict(&v).unwrap()).unwrap(),
            r#"[null, {"__class__": "builtins.set", "data": [1]}, {"__class__": "builtins.bytes", "data": "ab"}]"#
        );
    }

    #[test]
    fn refuses_bad_and_deep_json() {
        for bad in ["", "{", "[1,]", "01", "\"\\x\"", "nul", "{1: 2}", "[1] x"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?} accepted");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse(deep.as_bytes()).unwrap_err().contains("deeper"));
    }
}
