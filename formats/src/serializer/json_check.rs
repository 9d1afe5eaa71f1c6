//! Checking that bytes are JSON text, as Python's `json.loads` reads it, without building
//! anything: a push parser that takes the text in chunks of any size and keeps only its
//! state (a few bytes, plus one byte per open container).
//!
//! Why our own: the serializer contract is that a result's bytes are what its serializer
//! produced, and Prefect's JSON serializer reads with Python's `json`, whose grammar is
//! RFC 8259 plus `NaN`, `Infinity` and `-Infinity`. serde_json (`IgnoredAny`) refuses those
//! and needs the whole text in one slice; the incremental JSON crates build events or
//! values. A streamed Put must check gigabytes in the memory of one chunk, so this is a
//! small state machine, checked against serde_json by a test and by the fuzzer.
//!
//! What it accepts is what Python's `json.loads` accepts from UTF-8 text (UTF-8 itself is
//! checked apart, by the caller): one value with `' '`, `\t`, `\n`, `\r` around it;
//! strings without raw control characters, with the escapes `\" \\ \/ \b \f \n \r \t
//! \uXXXX` (any code unit, lone surrogates included, as Python takes them); numbers as
//! RFC 8259 writes them; the three non-finite names. Nesting deeper than
//! [`MAX_CHECK_DEPTH`] is refused: Python's reader stops at its recursion limit long
//! before, so such text could never be read back anyway.

/// Deepest nesting accepted. Python's `json` gives up near 1,000 levels (its recursion
/// limit); a little more is allowed so the Rust and Go readers' limits are not the rule.
pub const MAX_CHECK_DEPTH: usize = 2048;

/// Why the text is not JSON, and where (byte offset in the whole text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {offset}")]
pub struct JsonSyntaxError {
    pub offset: u64,
    pub what: &'static str,
}

/// What the next byte may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A value must start (after `:`, `,` in an array, or at the top).
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// After a key: `:`.
    Colon,
    /// After a value: `,`, the container's end, or (at the top) only whitespace.
    AfterValue,
    /// Inside a string (a key when `key`).
    Str {
        key: bool,
    },
    /// After `\` in a string.
    Escape {
        key: bool,
    },
    /// Inside `\uXXXX`, with `left` hex digits to come.
    Unicode {
        key: bool,
        left: u8,
    },
    /// After a leading `-`: a digit or `Infinity`.
    Minus,
    /// After an integer part of `0`.
    Zero,
    /// In the integer part after its first nonzero digit.
    Int,
    /// After `.`: a digit.
    FracFirst,
    Frac,
    /// After `e`/`E`: a sign or a digit.
    ExpFirst,
    /// After the exponent's sign: a digit.
    ExpSign,
    Exp,
    /// Inside a name (`true`, `NaN`, ...): `rest` are the bytes still to come.
    Name {
        rest: &'static [u8],
    },
    /// The top-level value ended: only whitespace may follow.
    Done,
}

/// A JSON text checked as it arrives (see the module docs).
#[derive(Debug, Clone)]
pub struct JsonCheck {
    state: State,
    /// Open containers, innermost last: `b'['` or `b'{'`.
    open: Vec<u8>,
    /// Bytes seen before the current chunk.
    offset: u64,
}

impl Default for JsonCheck {
    fn default() -> Self {
        JsonCheck { state: State::Value, open: Vec::new(), offset: 0 }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Checks a whole text at once.
pub fn check_json(text: &[u8]) -> Result<(), JsonSyntaxError> {
    let mut check = JsonCheck::default();
    check.update(text)?;
    check.finish()
}

impl JsonCheck {
    /// Checks the next bytes of the text.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), JsonSyntaxError> {
        let mut i = 0;
        while i < chunk.len() {
            // Strings are most of most texts: skip their plain bytes in one scan.
            if let State::Str { key } = self.state {
                match chunk[i..].iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20) {
                    None => break,
                    Some(n) => {
                        i += n;
                        let b = chunk[i];
                        self.state = match b {
                            b'"' if key => State::Colon,
                            b'"' => State::AfterValue,
                            b'\\' => State::Escape { key },
                            _ => return Err(self.err(i, "a control character inside a string")),
                        };
                        self.after_value_at_top();
                        i += 1;
                        continue;
                    }
                }
            }
            if self.step(chunk[i]).map_err(|what| self.err(i, what))? {
                i += 1;
            }
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    /// Checks the end of the text.
    pub fn finish(&self) -> Result<(), JsonSyntaxError> {
        let at = |what| Err(JsonSyntaxError { offset: self.offset, what });
        match self.state {
            State::Done => Ok(()),
            // A number at the top ends with the text.
            State::Zero | State::Int | State::Frac | State::Exp if self.open.is_empty() => Ok(()),
            State::Value if self.open.is_empty() => at("no JSON value (the text is empty or only whitespace)"),
            _ => at("the text ends inside a JSON value"),
        }
    }

    fn err(&self, at: usize, what: &'static str) -> JsonSyntaxError {
        JsonSyntaxError { offset: self.offset + at as u64, what }
    }

    /// A value just ended: at the top, nothing but whitespace may follow.
    fn after_value_at_top(&mut self) {
        if self.state == State::AfterValue && self.open.is_empty() {
            self.state = State::Done;
        }
    }

    fn push(&mut self, container: u8) -> Result<(), &'static str> {
        if self.open.len() >= MAX_CHECK_DEPTH {
            return Err("JSON nested deeper than 2048 levels");
        }
        self.open.push(container);
        Ok(())
    }

    /// A value ends: the byte after it is looked at again in `AfterValue`.
    fn end_value(&mut self) {
        self.state = State::AfterValue;
        self.after_value_at_top();
    }

    /// Takes one byte; `Ok(false)` when the byte ended a number and must be read again
    /// in the state that follows.
    fn step(&mut self, b: u8) -> Result<bool, &'static str> {
        use State::*;
        match self.state {
            Value | ArrayFirst | ObjectFirst | Key | Colon | AfterValue | Done if is_ws(b) => {}
            Value | ArrayFirst => match b {
                b']' if self.state == ArrayFirst => {
                    self.open.pop();
                    self.end_value();
                }
                b'{' => {
                    self.push(b'{')?;
                    self.state = ObjectFirst;
                }
                b'[' => {
                    self.push(b'[')?;
                    self.state = ArrayFirst;
                }
                b'"' => self.state = Str { key: false },
                b'-' => self.state = Minus,
                b'0' => self.state = Zero,
                b'1'..=b'9' => self.state = Int,
                b't' => self.state = Name { rest: b"rue" },
                b'f' => self.state = Name { rest: b"alse" },
                b'n' => self.state = Name { rest: b"ull" },
                b'N' => self.state = Name { rest: b"aN" },
                b'I' => self.state = Name { rest: b"nfinity" },
                _ => return Err("expected a JSON value"),
            },
            ObjectFirst | Key => match b {
                b'}' if self.state == ObjectFirst => {
                    self.open.pop();
                    self.end_value();
                }
                b'"' => self.state = Str { key: true },
                _ => return Err("expected a string key"),
            },
            Colon => match b {
                b':' => self.state = Value,
                _ => return Err("expected `:` after a key"),
            },
            AfterValue => match (b, self.open.last()) {
                (b',', Some(b'[')) => self.state = Value,
                (b',', Some(_)) => self.state = Key,
                (b']', Some(b'[')) | (b'}', Some(b'{')) => {
                    self.open.pop();
                    self.end_value();
                }
                _ => return Err("expected `,` or the end of the container"),
            },
            Done => return Err("trailing characters after the JSON value"),
            Str { .. } => unreachable!("strings are scanned in update"),
            Escape { key } => match b {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.state = Str { key },
                b'u' => self.state = Unicode { key, left: 4 },
                _ => return Err("an invalid escape in a string"),
            },
            Unicode { key, left } => {
                if !b.is_ascii_hexdigit() {
                    return Err("a `\\u` escape without four hex digits");
                }
                self.state = if left == 1 { Str { key } } else { Unicode { key, left: left - 1 } };
            }
            Minus => match b {
                b'0' => self.state = Zero,
                b'1'..=b'9' => self.state = Int,
                b'I' => self.state = Name { rest: b"nfinity" },
                _ => return Err("expected a digit after `-`"),
            },
            Zero | Int => match b {
                b'0'..=b'9' if self.state == Int => {}
                b'.' => self.state = FracFirst,
                b'e' | b'E' => self.state = ExpFirst,
                _ => {
                    self.end_value();
                    return Ok(false);
                }
            },
            FracFirst => match b {
                b'0'..=b'9' => self.state = Frac,
                _ => return Err("expected a digit after `.`"),
            },
            Frac => match b {
                b'0'..=b'9' => {}
                b'e' | b'E' => self.state = ExpFirst,
                _ => {
                    self.end_value();
                    return Ok(false);
                }
            },
            ExpFirst => match b {
                b'+' | b'-' => self.state = ExpSign,
                b'0'..=b'9' => self.state = Exp,
                _ => return Err("expected a digit in the exponent"),
            },
            ExpSign => match b {
                b'0'..=b'9' => self.state = Exp,
                _ => return Err("expected a digit in the exponent"),
            },
            Exp => match b {
                b'0'..=b'9' => {}
                _ => {
                    self.end_value();
                    return Ok(false);
                }
            },
            Name { rest } => {
                if rest.first() != Some(&b) {
                    return Err("an unknown name (JSON has true, false, null; Python adds NaN and Infinity)");
                }
                if rest.len() == 1 {
                    self.end_value();
                } else {
                    self.state = Name { rest: &rest[1..] };
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[&str] = &[
        "0",
        "-0",
        " 1 ",
        "1.5e-3",
        "-12.0E+10",
        "true",
        "null",
        "NaN",
        "-Infinity",
        "[Infinity, -Infinity, NaN]",
        "\"\"",
        "\"a\\u00e9\\ud800\\n\\\"\"",
        "\"é 結果\"",
        "{}",
        "[]",
        "[[], {}, [1, {\"a\": [null]}]]",
        "{\"a\": 1, \"b\": [1, 2.5, \"x\"], \"c\": null}",
        "\n\t{ \"k\" : \"v\" }\r\n",
    ];

    const BAD: &[&str] = &[
        "",
        "   ",
        "{not json",
        "{",
        "[1,]",
        "[1 2]",
        "{\"a\" 1}",
        "{\"a\": 1,}",
        "{1: 2}",
        "01",
        "1.",
        ".5",
        "1e",
        "+1",
        "-",
        "tru",
        "truex",
        "nan",
        "infinity",
        "\"abc",
        "\"a\nb\"",
        "\"\\x\"",
        "\"\\u12g4\"",
        "1 2",
        "[1]]",
        "]",
        "{\"a\": 1]",
        "\u{feff}1",
        "'a'",
    ];

    #[test]
    fn accepts_python_json_and_refuses_the_rest() {
        for text in GOOD {
            check_json(text.as_bytes()).unwrap_or_else(|e| panic!("{text:?} refused: {e}"));
        }
        for text in BAD {
            assert!(check_json(text.as_bytes()).is_err(), "{text:?} accepted");
        }
    }

    /// Every split of every sample into two chunks gives the answer of the whole text.
    #[test]
    fn chunk_boundaries_do_not_matter() {
        for text in GOOD.iter().chain(BAD) {
            let bytes = text.as_bytes();
            let whole = check_json(bytes).is_ok();
            for cut in 0..=bytes.len() {
                let mut c = JsonCheck::default();
                let split = c.update(&bytes[..cut]).and_then(|()| c.update(&bytes[cut..])).and_then(|()| c.finish());
                assert_eq!(split.is_ok(), whole, "{text:?} cut at {cut}");
            }
        }
    }

    /// Agrees with serde_json on RFC 8259 text (serde_json refuses the Python names and
    /// lone surrogates, which Python reads).
    #[test]
    fn agrees_with_serde_json() {
        let python_only = |t: &&&str| t.contains("NaN") || t.contains("Infinity") || t.contains("\\ud800");
        for text in GOOD.iter().chain(BAD).filter(|t| !python_only(t)) {
            let ours = check_json(text.as_bytes()).is_ok();
            let theirs = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            assert_eq!(ours, theirs, "{text:?}");
        }
    }

    #[test]
    fn depth_is_bounded_and_errors_say_where() {
        let deep = "[".repeat(MAX_CHECK_DEPTH + 1);
        let e = check_json(deep.as_bytes()).unwrap_err();
        assert_eq!(e.offset, MAX_CHECK_DEPTH as u64);
        let ok = format!("{}{}", "[".repeat(MAX_CHECK_DEPTH), "]".repeat(MAX_CHECK_DEPTH));
        check_json(ok.as_bytes()).unwrap();
        assert_eq!(check_json(b"[1, x]").unwrap_err(), JsonSyntaxError { offset: 4, what: "expected a JSON value" });
    }
}
