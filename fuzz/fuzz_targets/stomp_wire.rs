//! The STOMP driver's envelope decoding from a MESSAGE frame's headers and body: on any header
//! lines, and on the frames the driver itself sends for any envelope (which must decode to that
//! envelope again).
#![no_main]

mod wire;

use std::time::Duration;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidings_core::Envelope;
use tidings_stomp::fuzzing::{self, Frame};

const TOPIC: &str = "/topic/tidings.";

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// Header lines (and a body after a blank line) of a MESSAGE frame.
    Head(&'a [u8]),
    /// An envelope, sent to its key's topic or to a queue.
    RoundTrip(Fields, bool, String),
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

impl Fields {
    /// The envelope, with what the core guarantees of one that is sent.
    fn envelope(self) -> Envelope {
        let map = wire::sent_headers(self.headers, &[]);
        Envelope {
            id: self.id,
            routing_key: self.routing_key,
            event: self.event.into(),
            headers: map,
            content_type: self.content_type.into(),
            body: Bytes::from(self.body),
            timestamp_ms: self.timestamp_ms,
            ttl: self.ttl_ms.map(Duration::from_millis),
            correlation_id: self.correlation_id,
            reply_to: self.reply_to,
            emitter: self.emitter,
            attempt: self.attempt.max(1),
        }
    }
}

fn messages(bytes: &[u8]) -> Vec<Envelope> {
    let (frames, error) = fuzzing::read([bytes], TOPIC);
    assert!(error.is_none(), "{error:?}");
    frames
        .into_iter()
        .filter_map(|frame| match frame {
            Frame::Message { envelope, .. } => Some(*envelope),
            _ => None,
        })
        .collect()
}

fuzz_target!(|input: Input<'_>| match input {
    Input::Head(head) => {
        // NUL ends a frame without content-length; keep it to one frame.
        let head: Vec<u8> = head
            .iter()
            .map(|b| if *b == 0 { b' ' } else { *b })
            .collect();
        let mut frame = b"MESSAGE\n".to_vec();
        frame.extend_from_slice(&head);
        frame.extend_from_slice(b"\n\n\0");
        // A malformed content-length is an error, anything else a message.
        let (frames, _) = fuzzing::read([&frame[..]], TOPIC);
        for frame in frames {
            if let Frame::Message { envelope, .. } = frame {
                assert!(envelope.attempt >= 1);
            }
        }
    }
    Input::RoundTrip(fields, to_topic, queue) => {
        let envelope = fields.envelope();
        let destination = if to_topic {
            format!("{TOPIC}{}", envelope.routing_key)
        } else {
            format!("/queue/{queue}")
        };
        let frame = fuzzing::message_for(&envelope, &destination, TOPIC);
        assert_eq!(messages(&frame), [envelope], "to {destination:?}");
    }
});
