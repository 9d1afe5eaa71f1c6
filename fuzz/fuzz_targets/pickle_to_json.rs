//! The safe pickle reader and the pickle→JSON transcoder, on any bytes: they refuse or
//! transcode, never panic, and never run anything (there is nothing to run: only
//! plain-data opcodes are read). What they read writes back as a pickle that reads to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resultstore_formats::serializer::{json, pickle};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = pickle::read(data, 1 << 20) else {
        return;
    };
    let _ = json::write_strict(&value);
    let _ = json::write_python(&value, json::PythonJsonStyle::Stdlib);
    if let Ok(bytes) = pickle::write(&value) {
        let again = pickle::read(&bytes, 64 << 20).expect("a pickle we wrote reads back");
        assert_eq!(format!("{again:?}"), format!("{value:?}"));
    }
});
