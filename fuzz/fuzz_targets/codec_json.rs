//! `Codec::decode` of JSON bodies into a few representative event types.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::codec::JSON;

mod types;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    types::decode(JSON, which, body);
});
