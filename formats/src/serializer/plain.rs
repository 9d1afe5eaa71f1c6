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

/// Converts little-endian two's complement (pickle's `LONG1`/`LONG4` payload) to a
/// decimal string (num-bigint does the arithmetic).
pub fn le_twos_complement_to_decimal(bytes: &[u8]) -> String {
    num_bigint::BigInt::from_signed_bytes_le(bytes).to_string()
}

/// Converts a decimal integer (optional `-`, digits only) to minimal little-endian two's
/// complement, as pickle's `LONG1` wants it (zero is no bytes at all, as Python writes
/// it). `None` when `s` is not an integer.
pub fn decimal_to_le_twos_complement(s: &str) -> Option<Vec<u8>> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: num_bigint::BigInt = s.parse().ok()?;
    if n == num_bigint::BigInt::ZERO {
        return Some(Vec::new());
    }
    Some(n.to_signed_bytes_le())
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
