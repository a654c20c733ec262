//! The AMQP 0.9.1 driver's envelope decoding, on the basic properties (and headers table) of a
//! content header frame as lapin parses them from the wire (amq-protocol's parser).
//!
//! Input: a flags byte (bit 0: redelivered), a routing key length byte and the key, then the
//! properties as on the wire; what the parser leaves is the body.
#![no_main]

use bytes::Bytes;
use lapin::protocol::basic::parse_properties;
use libfuzzer_sys::fuzz_target;
use tidings_amqp091::fuzzing;

fuzz_target!(|data: &[u8]| {
    let [flags, key_len, rest @ ..] = data else {
        return;
    };
    let key_len = usize::from(*key_len).min(rest.len());
    let (key, wire) = rest.split_at(key_len);
    let key = String::from_utf8_lossy(key);
    let Ok((body, properties)) = parse_properties(wire) else {
        return;
    };
    let redelivered = flags & 1 != 0;
    let envelope = fuzzing::decode(&properties, &key, redelivered, Bytes::copy_from_slice(body));
    assert!(envelope.attempt >= 1);
    assert!(envelope.attempt >= 2 || !redelivered);
    assert_eq!(&envelope.body[..], body);
    for name in [
        "tidings-attempt",
        "tidings-timestamp-ms",
        "tidings-ttl-ns",
        "tidings-routing-key",
    ] {
        assert!(!envelope.headers.contains_key(name), "{name}");
    }
});
