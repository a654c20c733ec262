//! The AMQP 0.9.1 driver's envelope decoding, on the basic properties (and headers table) of a
//! content header frame as lapin parses them from the wire (amq-protocol's parser), and on what
//! the driver itself sends for any envelope (which must decode to that envelope again).
//!
//! Input: a first byte whose low bit picks the mode. Wire mode: a flags byte (bit 0:
//! redelivered), a routing key length byte and the key, then the properties as on the wire;
//! what the parser leaves is the body. Round-trip mode: an envelope, built by `arbitrary`.
#![no_main]

mod wire;

use std::time::Duration;

use amq_protocol::frame::WriteContext;
use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use lapin::protocol::basic::{gen_properties, parse_properties};
use libfuzzer_sys::fuzz_target;
use tidings_amqp091::fuzzing;
use tidings_core::Envelope;

/// The header names the driver uses for envelope fields.
const FIELDS: [&str; 4] = [
    "tidings-attempt",
    "tidings-timestamp-ms",
    "tidings-ttl-ns",
    "tidings-routing-key",
];

#[derive(Arbitrary, Debug)]
struct Fields {
    id: String,
    routing_key: String,
    event: String,
    /// (tidings' own header, name, value)
    headers: Vec<(bool, String, String)>,
    content_type: String,
    body: Vec<u8>,
    timestamp_ms: u64,
    ttl_ns: Option<u64>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    emitter: String,
    attempt: u32,
    direct: bool,
}

impl Fields {
    /// The envelope, with what the core guarantees of one that is sent.
    fn envelope(self) -> Envelope {
        let map = wire::sent_headers(self.headers, &FIELDS);
        Envelope {
            id: self.id,
            routing_key: self.routing_key,
            event: self.event.into(),
            headers: map,
            content_type: self.content_type.into(),
            body: Bytes::from(self.body),
            // Both travel as signed 64-bit numbers.
            timestamp_ms: self.timestamp_ms.min(i64::MAX as u64),
            ttl: self
                .ttl_ns
                .map(|ns| Duration::from_nanos(ns.min(i64::MAX as u64))),
            correlation_id: self.correlation_id,
            reply_to: self.reply_to,
            emitter: self.emitter,
            attempt: self.attempt.max(1),
        }
    }
}

fn wire(data: &[u8]) {
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
    for name in FIELDS {
        assert!(!envelope.headers.contains_key(name), "{name}");
    }
}

fn round_trip(fields: Fields) {
    let direct = fields.direct;
    let envelope = fields.envelope();
    // Fields longer than AMQP's short strings are an encoding error, not a message.
    let Ok(properties) = fuzzing::encode(&envelope, direct) else {
        return;
    };
    let written = gen_properties(&properties)(WriteContext::from(Vec::new()))
        .expect("properties serialize")
        .write;
    let (rest, read) = parse_properties(&written[..]).expect("properties parse");
    assert!(rest.is_empty());
    let key = if direct {
        "some.queue"
    } else {
        &envelope.routing_key
    };
    let back = fuzzing::decode(&read, key, false, envelope.body.clone());
    assert_eq!(back, envelope);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        wire(rest);
    } else if let Ok(fields) = Fields::arbitrary_take_rest(Unstructured::new(rest)) {
        round_trip(fields);
    }
});
