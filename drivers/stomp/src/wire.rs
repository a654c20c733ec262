//! How an [`Envelope`] travels as STOMP headers and body (see `docs/wire-format-stomp.md`).
//!
//! The body is the payload, always sent with `content-length` (ActiveMQ then keeps it as
//! bytes rather than text). Envelope fields are `tidings-*` headers; application headers are
//! sent as `h-<name>`, so they can never collide with the driver's own headers, the broker's
//! (`destination`, `ack`, `expires`, ...) or STOMP's. Header values are escaped by STOMP 1.2
//! (`\n`, `\r`, `:`, `\\`), so any string round-trips.
//!
//! Every header costs the broker a parse on the way in and a render on the way out (RabbitMQ
//! keeps each one as an AMQP header), so what the frame already says stays off: the routing
//! key when the destination is the key's topic (decoded from `destination`, or ActiveMQ's
//! `original-destination` for a Virtual Topic consumer queue), the content type when it is
//! tidings' default (postcard), the attempt when it is the first.
//!
//! Decoding never fails: a missing or malformed field becomes an empty or default value, and
//! the core then dead-letters the message as undecodable instead of the driver panicking.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::time::Duration;

use tidings_core::codec::POSTCARD;
use tidings_core::envelope::headers;
use tidings_core::Envelope;

use crate::frame::{unescape, FrameBuilder, RawMessage};

const ID: &str = "tidings-id";
const KEY: &str = "tidings-key";
const EVENT: &str = "tidings-event";
const CONTENT_TYPE: &str = "tidings-content-type";
const TIMESTAMP: &str = "tidings-ts";
const TTL: &str = "tidings-ttl-ms";
const CORRELATION: &str = "tidings-correlation-id";
const REPLY_TO: &str = "tidings-reply-to";
const EMITTER: &str = "tidings-emitter";
const ATTEMPT: &str = "tidings-attempt";
/// Every envelope field header, for decoding (the first of repeated headers wins).
const FIELDS: [&str; 10] = [
    ID,
    KEY,
    EVENT,
    CONTENT_TYPE,
    TIMESTAMP,
    TTL,
    CORRELATION,
    REPLY_TO,
    EMITTER,
    ATTEMPT,
];
/// The bit of `field` (one of [`FIELDS`]) in the decoder's set of seen fields.
fn bit(field: &str) -> u16 {
    1 << FIELDS.iter().position(|f| *f == field).unwrap_or(15)
}

/// The prefix of application headers on the wire.
const USER_PREFIX: &str = "h-";

/// The content type a tidings message without `tidings-content-type` has.
const DEFAULT_CONTENT_TYPE: &str = POSTCARD;

/// Where a frame's routing key is when it has no `tidings-key` header: the destination a
/// publish to that key goes to is `topic` followed by the key.
#[derive(Debug)]
pub(crate) struct KeyedTopics {
    /// The destination of the empty key, e.g. `/topic/<namespace>.`.
    pub(crate) topic: String,
}

impl KeyedTopics {
    /// Whether a frame to `destination` already says `key`.
    fn states(&self, destination: &str, key: &str) -> bool {
        destination.strip_prefix(self.topic.as_str()) == Some(key)
    }

    /// The key a delivery's (still escaped) destination states, if it is one of the topics.
    fn key_of(&self, destination: &[u8]) -> Option<String> {
        let key = destination.strip_prefix(self.topic.as_bytes())?;
        Some(unescape(key))
    }
}

/// Writes the headers carrying `envelope` (not the body) into a `frame` to `destination`.
/// Fields the frame already says, or at their default, are left out (see the module doc).
pub(crate) fn encode(
    envelope: &Envelope,
    destination: &str,
    topics: &KeyedTopics,
    frame: &mut FrameBuilder,
) {
    frame.header(ID, &envelope.id);
    if !topics.states(destination, &envelope.routing_key) {
        frame.header(KEY, &envelope.routing_key);
    }
    if !envelope.event.is_empty() {
        frame.header(EVENT, &envelope.event);
    }
    if envelope.content_type != DEFAULT_CONTENT_TYPE {
        frame.header(CONTENT_TYPE, &envelope.content_type);
    }
    frame.number(TIMESTAMP, envelope.timestamp_ms);
    if let Some(ttl) = envelope.ttl {
        frame.number(TTL, u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    }
    if let Some(c) = &envelope.correlation_id {
        frame.header(CORRELATION, c);
    }
    if let Some(r) = &envelope.reply_to {
        frame.header(REPLY_TO, r);
    }
    if !envelope.emitter.is_empty() {
        frame.header(EMITTER, &envelope.emitter);
    }
    if envelope.attempt != 1 {
        frame.number(ATTEMPT, u64::from(envelope.attempt));
    }
    let mut name = String::new();
    for (key, value) in &envelope.headers {
        name.clear();
        name.push_str(USER_PREFIX);
        name.push_str(key);
        frame.any_header(&name, value);
    }
}

/// The envelope carried by a MESSAGE's headers and body. The first of repeated headers wins,
/// as STOMP 1.2 says. Only the headers the envelope uses are unescaped (and copied).
///
/// A frame without `tidings-id` is not from tidings: its content type stays empty when it
/// names none (the bus then dead-letters it as undecodable rather than guessing postcard).
pub(crate) fn decode(message: &RawMessage, topics: &KeyedTopics) -> Envelope {
    let mut envelope = Envelope {
        id: String::new(),
        routing_key: String::new(),
        event: Default::default(),
        headers: BTreeMap::new(),
        content_type: Default::default(),
        body: message.body(),
        timestamp_ms: 0,
        ttl: None,
        correlation_id: None,
        reply_to: None,
        emitter: String::new(),
        attempt: 1,
    };
    let mut seen: u16 = 0;
    let mut redelivered = false;
    let (mut destination, mut original) = (None, None);
    for (name, value) in message.headers() {
        if let Some(user) = name.strip_prefix(USER_PREFIX.as_bytes()) {
            if let Entry::Vacant(slot) = envelope.headers.entry(unescape(user)) {
                slot.insert(unescape(value));
            }
            continue;
        }
        match name {
            b"redelivered" => redelivered |= value == b"true",
            b"destination" => destination = destination.or(Some(value)),
            // ActiveMQ's Virtual Topic consumer queues deliver with `destination` naming the
            // queue, and the topic published to here.
            b"original-destination" => original = original.or(Some(value)),
            _ => {}
        }
        // The broker's own headers are skipped after one comparison.
        if !name.starts_with(headers::RESERVED_PREFIX.as_bytes()) {
            continue;
        }
        let Some(field) = FIELDS.iter().position(|f| f.as_bytes() == name) else {
            continue;
        };
        if seen & (1 << field) != 0 {
            continue;
        }
        seen |= 1 << field;
        let text = unescape(value);
        match FIELDS[field] {
            ID => envelope.id = text,
            KEY => envelope.routing_key = text,
            EVENT => envelope.event = text.into(),
            CONTENT_TYPE => envelope.content_type = text.into(),
            TIMESTAMP => envelope.timestamp_ms = text.parse().unwrap_or(0),
            TTL => envelope.ttl = text.parse().ok().map(Duration::from_millis),
            CORRELATION => envelope.correlation_id = Some(text),
            REPLY_TO => envelope.reply_to = Some(text),
            EMITTER => envelope.emitter = text,
            ATTEMPT => envelope.attempt = text.parse().unwrap_or(1).max(1),
            _ => {}
        }
    }
    if seen & bit(KEY) == 0 {
        if let Some(key) = original.or(destination).and_then(|d| topics.key_of(d)) {
            envelope.routing_key = key;
        }
    }
    let tidings = seen & bit(ID) != 0;
    if tidings && seen & bit(CONTENT_TYPE) == 0 {
        envelope.content_type = DEFAULT_CONTENT_TYPE.into();
    }
    // The broker marks a message it hands out again after its consumer went away unsettled
    // (the driver itself never NACKs a message it wants back unchanged): that delivery may
    // have killed the consumer, so it counts as a new attempt, as with the memory broker.
    if redelivered {
        envelope.attempt = envelope.attempt.saturating_add(1);
    }
    envelope
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Codec, Inbound};
    use bytes::{Bytes, BytesMut};
    use tokio_util::codec::Decoder;

    /// `frame` read back as the broker would deliver it: a MESSAGE with `headers` (raw lines)
    /// in front.
    fn delivered(head: &str, body: &[u8]) -> RawMessage {
        let mut bytes = BytesMut::from(format!("\nMESSAGE\nsubscription:s\n{head}\n").as_bytes());
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(b"\0\n");
        match Codec::default().decode(&mut bytes).unwrap() {
            Some(Inbound::Message(message)) => message,
            other => panic!("not a MESSAGE: {other:?}"),
        }
    }

    fn topics() -> KeyedTopics {
        KeyedTopics {
            topic: "/topic/ns.".into(),
        }
    }

    /// The headers `encode` writes for a SEND to `destination`, as a MESSAGE the broker hands
    /// back (still escaped) would carry them.
    fn sent(e: &Envelope, destination: &str) -> String {
        let mut frame = FrameBuilder::new("SEND", 64);
        frame.header("destination", destination);
        encode(e, destination, &topics(), &mut frame);
        frame.number("content-length", e.body.len() as u64);
        let text = frame.head_text();
        text.split_once('\n').unwrap().1.to_owned()
    }

    fn round_trip(e: &Envelope, destination: &str) -> Envelope {
        decode(&delivered(&sent(e, destination), &e.body), &topics())
    }

    #[test]
    fn every_field_round_trips() {
        let mut e = Envelope::new("a.b", "application/json", Bytes::from_static(b"\0x\xff"));
        e.event = "Ev".into();
        e.headers
            .insert("tidings-dead-reason".into(), "x:\n\\\r".into());
        e.headers.insert("user".into(), String::new());
        e.headers.insert("odd:name\\".into(), "\\c".into());
        e.ttl = Some(Duration::from_millis(1234));
        e.correlation_id = Some("c".into());
        e.reply_to = Some("/amq/queue/x".into());
        e.emitter = "h.t.1".into();
        e.attempt = 3;
        for destination in ["/topic/ns.a.b", "/amq/queue/x", "/topic/ns.a"] {
            assert_eq!(round_trip(&e, destination), e, "to {destination}");
        }
        e.attempt = 1;
        e.content_type = POSTCARD.into();
        assert_eq!(round_trip(&e, "/topic/ns.a.b"), e);
        e.content_type = "".into();
        assert_eq!(round_trip(&e, "/topic/ns.a.b"), e);
    }

    #[test]
    fn what_the_frame_says_stays_off_the_wire() {
        let e = Envelope::new("a.b", POSTCARD, Bytes::from_static(b"x"));
        let head = sent(&e, "/topic/ns.a.b");
        assert!(!head.contains(KEY), "{head}");
        assert!(!head.contains(CONTENT_TYPE), "{head}");
        assert!(!head.contains(ATTEMPT), "{head}");
        // Anywhere else (a queue, another namespace) the key goes as a header.
        for destination in ["/amq/queue/q", "/topic/other.a.b", "/topic/ns.a"] {
            assert!(sent(&e, destination).contains(KEY), "to {destination}");
        }
    }

    #[test]
    fn the_key_is_read_from_the_topic_delivered_from() {
        let ids = "tidings-id:1\ntidings-ts:5\n";
        let rabbit = decode(
            &delivered(&format!("destination:/topic/ns.a.b\n{ids}"), b""),
            &topics(),
        );
        assert_eq!(rabbit.routing_key, "a.b");
        assert_eq!(rabbit.content_type, POSTCARD);
        // ActiveMQ's Virtual Topic consumer queue names the topic in `original-destination`.
        let queue = "destination:/queue/Consumer.g.ns.a.*\noriginal-destination:/topic/ns.a.c\n";
        let amq = decode(&delivered(&format!("{queue}{ids}"), b""), &topics());
        assert_eq!(amq.routing_key, "a.c");
        // An explicit header wins; a destination elsewhere says nothing.
        let header = format!("destination:/topic/ns.a.b\ntidings-key:x.y\n{ids}");
        assert_eq!(
            decode(&delivered(&header, b""), &topics()).routing_key,
            "x.y"
        );
        let elsewhere = decode(
            &delivered(&format!("destination:/queue/q\n{ids}"), b""),
            &topics(),
        );
        assert_eq!(elsewhere.routing_key, "");
    }

    #[test]
    fn a_frame_not_from_tidings_names_no_content_type() {
        let foreign = decode(&delivered("destination:/topic/ns.a.b\n", b"{}"), &topics());
        assert_eq!(foreign.routing_key, "a.b");
        assert_eq!(foreign.content_type, "");
    }

    #[test]
    fn garbage_decodes_without_panic() {
        let m = delivered(
            "tidings-attempt:x\ntidings-ts:-1\ntidings-attempt:7\ntidings-key:\\q\\\n",
            b"",
        );
        let e = decode(&m, &topics());
        assert_eq!(e.attempt, 1);
        assert_eq!(e.timestamp_ms, 0);
        assert_eq!(e.routing_key, "\\q\\");
    }

    #[test]
    fn redelivered_counts_as_an_attempt() {
        let e = decode(
            &delivered("redelivered:true\ntidings-attempt:2\r\n", b"x"),
            &topics(),
        );
        assert_eq!(e.attempt, 3);
        assert_eq!(&e.body[..], b"x");
    }
}
