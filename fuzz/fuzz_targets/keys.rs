//! Slug and key validation, on any text: a key that passes can never leave its block
//! (no `..` or empty segment, not absolute, no control character or backslash, not
//! reserved, at most 1024 bytes); a slug that passes is canonical and passes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resultstore_formats::keys::{MAX_KEY_LEN, is_reserved, parse_slug, validate_key};

fuzz_target!(|text: &str| {
    if validate_key(text).is_ok() {
        assert!(!text.is_empty() && text.len() <= MAX_KEY_LEN, "{text:?}");
        assert!(!text.starts_with('/') && !text.contains('\\'), "{text:?}");
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{text:?}");
        assert!(!is_reserved(text), "{text:?}");
    }
    if let Ok((canonical, ty)) = parse_slug(text) {
        let (again, ty2) = parse_slug(&canonical).expect("a canonical slug parses");
        assert_eq!((again.as_str(), ty2), (canonical.as_str(), ty));
    }
});
