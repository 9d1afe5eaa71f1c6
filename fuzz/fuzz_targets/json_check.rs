//! The streaming JSON validator, on any bytes: its answer does not depend on where the
//! text is cut into chunks; what serde_json accepts it accepts; and what it accepts (as
//! UTF-8), the service's Python-dialect parser reads (unless that parser's depth limit
//! stops it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use resultstore_formats::serializer::json;
use resultstore_formats::serializer::json_check::{JsonCheck, check_json};

fuzz_target!(|input: (u16, &[u8])| {
    let (cut, text) = input;
    let whole = check_json(text);
    let cut = usize::from(cut) % (text.len() + 1);
    let mut check = JsonCheck::default();
    let split = check.update(&text[..cut]).and_then(|()| check.update(&text[cut..])).and_then(|()| check.finish());
    assert_eq!(whole.is_ok(), split.is_ok(), "cut at {cut}: {whole:?} vs {split:?}");
    if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() {
        assert!(whole.is_ok(), "serde_json reads it, the validator refused: {whole:?}");
    }
    // The validator leaves UTF-8 to its caller, as the service checks it apart.
    if whole.is_ok() && std::str::from_utf8(text).is_ok() {
        if let Err(e) = json::parse(text) {
            assert!(e.contains("nested deeper"), "the validator accepted what the parser refuses: {e}");
        }
    }
});
