//! `Codec::decode` of postcard bodies into a few representative event types.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_core::codec::POSTCARD;

mod types;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    types::decode(POSTCARD, which, body);
});
