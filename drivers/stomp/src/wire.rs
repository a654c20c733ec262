//! How an [`Envelope`] travels as STOMP headers and body (see `docs/wire-format-stomp.md`).
//!
//! The body is the payload, always sent with `content-length` (ActiveMQ then keeps it as
//! bytes rather than text). Envelope fields are `tidings-*` headers; application headers are
//! sent as `h-<name>`, so they can never collide with the driver's own headers, the broker's
//! (`destination`, `ack`, `expires`, ...) or STOMP's. Header values are escaped by STOMP 1.2
//! (`\n`, `\r`, `:`, `\\`), so any string round-trips.
//!
//! Decoding never fails: a missing or malformed field becomes an empty or default value, and
//! the core then dead-letters the message as undecodable instead of the driver panicking.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::time::Duration;

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
/// The prefix of application headers on the wire.
const USER_PREFIX: &str = "h-";

/// Writes the headers carrying `envelope` (not the body) into `frame`. An attempt of 1 (the
/// first) is left out: decoding defaults to it.
pub(crate) fn encode(envelope: &Envelope, frame: &mut FrameBuilder) {
    frame.header(ID, &envelope.id);
    frame.header(KEY, &envelope.routing_key);
    if !envelope.event.is_empty() {
        frame.header(EVENT, &envelope.event);
    }
    frame.header(CONTENT_TYPE, &envelope.content_type);
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
        frame.header(&name, value);
    }
}

/// The envelope carried by a MESSAGE's headers and body. The first of repeated headers wins,
/// as STOMP 1.2 says. Only the headers the envelope uses are unescaped (and copied).
pub(crate) fn decode(message: &RawMessage) -> Envelope {
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
    for (name, value) in message.headers() {
        if let Some(user) = name.strip_prefix(USER_PREFIX.as_bytes()) {
            if let Entry::Vacant(slot) = envelope.headers.entry(unescape(user)) {
                slot.insert(unescape(value));
            }
            continue;
        }
        if name == b"redelivered" {
            redelivered |= value == b"true";
            continue;
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

    /// What the broker hands back for the headers `encode` writes (still escaped).
    fn round_trip(e: &Envelope) -> Envelope {
        let mut frame = FrameBuilder::new("SEND", 64);
        encode(e, &mut frame);
        frame.number("content-length", e.body.len() as u64);
        let text = frame.head_text();
        let head = text.split_once('\n').unwrap().1;
        decode(&delivered(head, &e.body))
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
        assert_eq!(round_trip(&e), e);
        e.attempt = 1;
        assert_eq!(round_trip(&e), e);
    }

    #[test]
    fn garbage_decodes_without_panic() {
        let m = delivered(
            "tidings-attempt:x\ntidings-ts:-1\ntidings-attempt:7\ntidings-key:\\q\\\n",
            b"",
        );
        let e = decode(&m);
        assert_eq!(e.attempt, 1);
        assert_eq!(e.timestamp_ms, 0);
        assert_eq!(e.routing_key, "\\q\\");
    }

    #[test]
    fn redelivered_counts_as_an_attempt() {
        let e = decode(&delivered("redelivered:true\ntidings-attempt:2\r\n", b"x"));
        assert_eq!(e.attempt, 3);
        assert_eq!(&e.body[..], b"x");
    }
}
