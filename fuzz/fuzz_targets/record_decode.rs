//! Whatever bytes a key holds, decoding them as a record (Prefect 3, Prefect 2 blob, or
//! a bare payload) never panics; a Prefect 3 record that decodes re-encodes to a record
//! that decodes to the same result bytes and serializer.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use resultstore_formats::record::{RecordFormat, ResultRecord};
use resultstore_formats::serializer::SerializerConfig;

fuzz_target!(|data: &[u8]| {
    let hint = SerializerConfig::from_type("pickle").expect("pickle is a serializer");
    let Ok(record) = ResultRecord::decode(Bytes::copy_from_slice(data), &hint, "fuzz/key") else {
        return;
    };
    if record.format == RecordFormat::Prefect3
        && let Some(encoded) = record.encode_prefect3()
    {
        let again = ResultRecord::decode(Bytes::from(encoded), &hint, "fuzz/key").expect("a record we wrote decodes");
        assert_eq!(again.data, record.data);
        assert_eq!(again.serializer, record.serializer);
    }
});
