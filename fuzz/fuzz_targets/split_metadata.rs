//! A split record's metadata document, whatever its bytes, decodes or is refused; it
//! never panics. The first byte splits the input into document and payload.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use resultstore_formats::record::ResultRecord;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(rest.len());
    let (metadata, payload) = rest.split_at(rest.len() - cut);
    if let Ok(record) = ResultRecord::decode_split(metadata, Bytes::copy_from_slice(payload)) {
        let _ = record.metadata_json();
        let _ = record.encode_prefect3();
    }
});
