//! The AMQP 1.0 driver's envelope decoding, on messages as fe2o3 deserializes them from a
//! transfer's bytes (serde_amqp), and on what the driver itself sends for any envelope (which
//! must decode to that envelope again).
#![no_main]

mod wire;

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;
use libfuzzer_sys::fuzz_target;
use tidings_amqp10::fuzzing;
use tidings_core::Envelope;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// A message's bytes as a transfer carries them; the flag says redelivered.
    Wire(bool, &'a [u8]),
    /// An envelope.
    RoundTrip(Fields, bool),
}

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
    ttl_ms: Option<u64>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    emitter: String,
    attempt: u32,
}

/// The application property names the driver uses for envelope fields.
const FIELDS: [&str; 4] = [
    "tidings-event",
    "tidings-emitter",
    "tidings-attempt",
    "tidings-ttl-ms",
];

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
            // The creation time is a signed 64-bit count of milliseconds.
            timestamp_ms: self.timestamp_ms.min(i64::MAX as u64),
            ttl: self.ttl_ms.map(Duration::from_millis),
            correlation_id: self.correlation_id,
            reply_to: self.reply_to,
            emitter: self.emitter,
            attempt: self.attempt.max(1),
        }
    }
}

/// Whether `bytes` may declare a 32-bit binary, string or symbol longer than all of `bytes`.
/// serde_amqp allocates (zeroed) the declared length before it reads: 25 bytes can ask for 4 GB.
/// That is serde_amqp's to fix (fe2o3's receiver reads deliveries the same way), so such inputs
/// are skipped rather than reported again and again. In an array the elements' lengths follow
/// one constructor, so an array that may hold such elements is skipped whole.
fn declares_too_long(bytes: &[u8]) -> bool {
    let long = |b: &u8| matches!(b, 0xb0 | 0xb1 | 0xb3);
    bytes
        .windows(5)
        .any(|w| long(&w[0]) && u32::from_be_bytes([w[1], w[2], w[3], w[4]]) as usize > bytes.len())
        || bytes
            .iter()
            .enumerate()
            .any(|(i, b)| matches!(b, 0xe0 | 0xf0) && bytes[i + 1..].iter().take(16).any(long))
}

/// Deserializes `bytes` as fe2o3's receiver does and decodes the envelope. On a thread with a
/// large stack: serde_amqp has no depth limit, and a few kB of nested lists or maps (in the body
/// or the annotations, which fe2o3 reads whatever the body type) overflow an ordinary stack.
/// That is serde_amqp's to fix; here it would stop the target at once.
fn decode(bytes: &[u8], redelivered: bool) -> Option<Envelope> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn_scoped(scope, || {
                let Deserializable(message) =
                    serde_amqp::from_slice::<Deserializable<Message<Body<Value>>>>(bytes).ok()?;
                Some(fuzzing::decode(message, redelivered))
            })
            .expect("a thread")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fuzz_target!(|input: Input<'_>| match input {
    Input::Wire(redelivered, bytes) => {
        if declares_too_long(bytes) {
            return;
        }
        if let Some(envelope) = decode(bytes, redelivered) {
            assert!(envelope.attempt >= 1);
            assert!(envelope.attempt >= 2 || !redelivered);
            for name in FIELDS {
                assert!(!envelope.headers.contains_key(name), "{name}");
            }
        }
    }
    Input::RoundTrip(fields, durable) => {
        let envelope = fields.envelope();
        let message = fuzzing::encode(envelope.clone(), durable);
        let bytes = serde_amqp::to_vec(&Serializable(message)).expect("serialize");
        let back = decode(&bytes, false).expect("what the driver sends deserializes");
        assert_eq!(back, envelope);
    }
});
