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

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use tidings_core::Envelope;

use crate::frame::FrameBuilder;

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
/// as STOMP 1.2 says.
pub(crate) fn decode(headers: Vec<(String, String)>, body: Option<Vec<u8>>) -> Envelope {
    let mut envelope = Envelope {
        id: String::new(),
        routing_key: String::new(),
        event: Default::default(),
        headers: BTreeMap::new(),
        content_type: Default::default(),
        body: body.map(Bytes::from).unwrap_or_default(),
        timestamp_ms: 0,
        ttl: None,
        correlation_id: None,
        reply_to: None,
        emitter: String::new(),
        attempt: 1,
    };
    let mut seen: u16 = 0;
    let mut redelivered = false;
    for (name, value) in headers {
        if let Some(user) = name.strip_prefix(USER_PREFIX) {
            if !envelope.headers.contains_key(user) {
                envelope.headers.insert(user.to_owned(), value);
            }
            continue;
        }
        if name == "redelivered" {
            redelivered |= value == "true";
            continue;
        }
        let Some(field) = FIELDS.iter().position(|f| *f == name) else {
            continue;
        };
        if seen & (1 << field) != 0 {
            continue;
        }
        seen |= 1 << field;
        match FIELDS[field] {
            ID => envelope.id = value,
            KEY => envelope.routing_key = value,
            EVENT => envelope.event = value.into(),
            CONTENT_TYPE => envelope.content_type = value.into(),
            TIMESTAMP => envelope.timestamp_ms = value.parse().unwrap_or(0),
            TTL => envelope.ttl = value.parse().ok().map(Duration::from_millis),
            CORRELATION => envelope.correlation_id = Some(value),
            REPLY_TO => envelope.reply_to = Some(value),
            EMITTER => envelope.emitter = value,
            ATTEMPT => envelope.attempt = value.parse().unwrap_or(1).max(1),
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

    #[test]
    fn every_field_round_trips() {
        let mut e = Envelope::new("a.b", "application/json", Bytes::from_static(b"\0x\xff"));
        e.event = "Ev".into();
        e.headers
            .insert("tidings-dead-reason".into(), "x:\n\\\r".into());
        e.headers.insert("user".into(), String::new());
        e.ttl = Some(Duration::from_millis(1234));
        e.correlation_id = Some("c".into());
        e.reply_to = Some("/amq/queue/x".into());
        e.emitter = "h.t.1".into();
        e.attempt = 3;
        let back = decode(headers_of(&e), Some(e.body.to_vec()));
        assert_eq!(back, e);
        e.attempt = 1;
        let back = decode(headers_of(&e), Some(e.body.to_vec()));
        assert_eq!(back, e);
    }

    /// What the broker hands back for the headers `encode` writes (unescaped).
    fn headers_of(e: &Envelope) -> Vec<(String, String)> {
        let mut frame = FrameBuilder::new("SEND", 64);
        encode(e, &mut frame);
        let text = frame.head_text();
        let unescape = |s: &str| {
            s.replace("\\\\", "\u{0}")
                .replace("\\c", ":")
                .replace("\\n", "\n")
                .replace("\\r", "\r")
                .replace('\u{0}', "\\")
        };
        text.lines()
            .skip(1)
            .map(|line| {
                let (k, v) = line.split_once(':').unwrap();
                (unescape(k), unescape(v))
            })
            .collect()
    }

    #[test]
    fn garbage_decodes_without_panic() {
        let h = vec![
            ("tidings-attempt".to_owned(), "x".to_owned()),
            ("tidings-ts".to_owned(), "-1".to_owned()),
            ("tidings-attempt".to_owned(), "7".to_owned()),
        ];
        let e = decode(h, None);
        assert_eq!(e.attempt, 1);
        assert_eq!(e.timestamp_ms, 0);
    }
}
