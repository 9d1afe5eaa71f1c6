//! The plain-data value model shared by the JSON and pickle codecs: what a Python
//! `dict`/`list`/`tuple`/`set`/`str`/`bytes`/`int`/`float`/`bool`/`None` tree can hold.
//! Nothing here can name a class or a function, so nothing decoded into it can run.

/// A plain-data Python value.
#[derive(Debug, Clone, PartialEq)]
pub enum PlainValue {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside `i64`, as decimal digits with an optional leading `-`.
    BigInt(String),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PlainValue>),
    Tuple(Vec<PlainValue>),
    /// Keys in insertion order; JSON documents only produce `Str` keys.
    Dict(Vec<(PlainValue, PlainValue)>),
    Set(Vec<PlainValue>),
    FrozenSet(Vec<PlainValue>),
}

/// Converts little-endian two's-complement bytes (pickle's `LONG1`/`LONG4`) to decimal.
pub fn le_twos_complement_to_decimal(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "0".to_owned();
    }
    let negative = bytes[bytes.len() - 1] & 0x80 != 0;
    // Magnitude as little-endian bytes.
    let mut mag: Vec<u8> = bytes.to_vec();
    if negative {
        // Two's complement negate: invert and add one.
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
    }
    // Repeated division by 10 over big-endian limbs.
    let mut be: Vec<u8> = mag.into_iter().rev().collect();
    let mut digits = Vec::new();
    while be.iter().any(|&b| b != 0) {
        let mut rem = 0u16;
        for b in be.iter_mut() {
            let cur = (rem << 8) | *b as u16;
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    if negative {
        digits.push(b'-');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Converts a decimal integer (optional `-`, digits only) to minimal little-endian two's
/// complement, as pickle's `LONG1` wants it. `None` when `s` is not an integer.
pub fn decimal_to_le_twos_complement(s: &str) -> Option<Vec<u8>> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Magnitude as little-endian bytes: multiply-accumulate per digit.
    let mut mag: Vec<u8> = vec![0];
    for d in digits.bytes() {
        let mut carry = (d - b'0') as u16;
        for b in mag.iter_mut() {
            let v = *b as u16 * 10 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        if carry > 0 {
            mag.push(carry as u8);
        }
    }
    while mag.len() > 1 && mag[mag.len() - 1] == 0 {
        mag.pop();
    }
    if mag == [0] {
        return Some(Vec::new());
    }
    if negative {
        let mut carry = 1u16;
        for b in mag.iter_mut() {
            let v = (!*b) as u16 + carry;
            *b = v as u8;
            carry = v >> 8;
        }
        // Needs a sign byte unless the top bit already says negative.
        if mag[mag.len() - 1] & 0x80 == 0 {
            mag.push(0xff);
        }
    } else if mag[mag.len() - 1] & 0x80 != 0 {
        mag.push(0);
    }
    Some(mag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_integers_round_trip_through_twos_complement() {
        for n in [
            "0",
            "1",
            "-1",
            "127",
            "128",
            "-128",
            "-129",
            "255",
            "9223372036854775808",
            "-9223372036854775809",
            "1180591620717411303424",
            "-1180591620717411303424",
        ] {
            let bytes = decimal_to_le_twos_complement(n).unwrap();
            assert_eq!(le_twos_complement_to_decimal(&bytes), n, "{n} -> {bytes:?}");
        }
        // Python: (128).to_bytes(2, 'little', signed=True) == b'\x80\x00'
        assert_eq!(decimal_to_le_twos_complement("128").unwrap(), vec![0x80, 0x00]);
        assert_eq!(decimal_to_le_twos_complement("-129").unwrap(), vec![0x7f, 0xff]);
        assert_eq!(decimal_to_le_twos_complement("0").unwrap(), Vec::<u8>::new());
    }
}
