//! How an [`Envelope`] travels as STOMP headers and body (see `docs/wire-format-stomp.md`).
//!
//! The body is the payload, always sent with `content-length` (ActiveMQ then keeps it as
//! bytes rather than text). The envelope's fields, and tidings' own `tidings-*` headers, are
//! items of one header, `tidings` (`id=..;ts=..;event=..`, see [`FrameBuilder::items`]);
//! application headers are sent as `h-<name>`, so they can never collide with the driver's
//! own, the broker's (`destination`, `ack`, `expires`, ...) or STOMP's. Header values are
//! escaped by STOMP 1.2 (`\n`, `\r`, `:`, `\\`), so any string round-trips.
//!
//! Every header costs the broker a parse on the way in, a property to keep and a render on the
//! way out, whatever its length: hence one header for all fields. What the frame already says
//! stays out of it: the routing key when the destination is the key's topic (decoded from
//! `destination`, or ActiveMQ's `original-destination` for a Virtual Topic consumer queue),
//! the content type when it is tidings' default (postcard), the attempt when it is the first.
//! Frames of earlier versions, one `tidings-<field>` header per field, decode the same.
//!
//! Decoding never fails: a missing or malformed field becomes an empty or default value, and
//! the core then dead-letters the message as undecodable instead of the driver panicking.

use std::collections::BTreeMap;
use std::time::Duration;

use tidings_core::codec::POSTCARD;
use tidings_core::envelope::headers;
use tidings_core::Envelope;

use crate::frame::{items, unescape, unescape_item, FrameBuilder, RawMessage};

/// The one header that carries the envelope's fields (and tidings' own `tidings-*` headers)
/// as `name=value` items.
const PACK: &str = "tidings";
const ID: &str = "id";
const KEY: &str = "key";
const EVENT: &str = "event";
const CONTENT_TYPE: &str = "content-type";
const TIMESTAMP: &str = "ts";
const TTL: &str = "ttl-ms";
const CORRELATION: &str = "correlation-id";
const REPLY_TO: &str = "reply-to";
const EMITTER: &str = "emitter";
const ATTEMPT: &str = "attempt";
/// Every envelope field, by its item name. Earlier versions sent each as its own header,
/// `tidings-<name>`; those are still read.
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

/// The content type a tidings message without `content-type` has.
const DEFAULT_CONTENT_TYPE: &str = POSTCARD;

/// Where a frame's routing key is when it has no `key` item: the destination a
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
    {
        let mut pack = frame.items(PACK);
        pack.text(ID, &envelope.id);
        pack.number(TIMESTAMP, envelope.timestamp_ms);
        if !envelope.event.is_empty() {
            pack.text(EVENT, &envelope.event);
        }
        if !envelope.emitter.is_empty() {
            pack.text(EMITTER, &envelope.emitter);
        }
        if !topics.states(destination, &envelope.routing_key) {
            pack.text(KEY, &envelope.routing_key);
        }
        if envelope.content_type != DEFAULT_CONTENT_TYPE {
            pack.text(CONTENT_TYPE, &envelope.content_type);
        }
        if let Some(ttl) = envelope.ttl {
            pack.number(TTL, u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        }
        if let Some(c) = &envelope.correlation_id {
            pack.text(CORRELATION, c);
        }
        if let Some(r) = &envelope.reply_to {
            pack.text(REPLY_TO, r);
        }
        if envelope.attempt != 1 {
            pack.number(ATTEMPT, u64::from(envelope.attempt));
        }
        for (name, value) in envelope.headers.iter().filter(|(name, _)| is_own(name)) {
            pack.any(name, value);
        }
    }
    let mut name = String::new();
    for (key, value) in &envelope.headers {
        if is_own(key) {
            continue;
        }
        name.clear();
        name.push_str(USER_PREFIX);
        name.push_str(key);
        frame.any_header(&name, value);
    }
}

/// Whether `header` is one of tidings' own (`tidings-*`: RPC status, dead-letter reason, ...),
/// which travel in the pack rather than as application headers.
fn is_own(header: &str) -> bool {
    header.starts_with(headers::RESERVED_PREFIX)
}

/// The envelope carried by a MESSAGE's headers and body. The first of repeated headers wins,
/// as STOMP 1.2 says. Only the headers the envelope uses are unescaped (and copied).
///
/// A frame without an `id` is not from tidings: its content type stays empty when it
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
    // STOMP's own RPC headers, which plain STOMP callers set (see `plain_rpc_headers`).
    let (mut reply_to, mut correlation) = (None, None);
    for (name, value) in message.headers() {
        if let Some(user) = name.strip_prefix(USER_PREFIX.as_bytes()) {
            // The first of repeated headers wins.
            envelope
                .headers
                .entry(unescape(user))
                .or_insert_with(|| unescape(value));
            continue;
        }
        match name {
            _ if name == PACK.as_bytes() => {
                for (name, value) in items(value) {
                    if name.starts_with(headers::RESERVED_PREFIX.as_bytes()) {
                        envelope
                            .headers
                            .entry(unescape_item(name))
                            .or_insert_with(|| unescape_item(value));
                    } else {
                        set_field(&mut envelope, &mut seen, name, || unescape_item(value));
                    }
                }
            }
            b"redelivered" => redelivered |= value == b"true",
            b"reply-to" => reply_to = reply_to.or(Some(value)),
            b"correlation-id" => correlation = correlation.or(Some(value)),
            b"destination" => destination = destination.or(Some(value)),
            // ActiveMQ's Virtual Topic consumer queues deliver with `destination` naming the
            // queue, and the topic published to here.
            b"original-destination" => original = original.or(Some(value)),
            // Earlier versions' one header per field; the broker's own headers are skipped
            // after one comparison.
            _ => {
                if let Some(field) = name.strip_prefix(headers::RESERVED_PREFIX.as_bytes()) {
                    set_field(&mut envelope, &mut seen, field, || unescape(value));
                }
            }
        }
    }
    plain_rpc_headers(&mut envelope, &mut seen, reply_to, correlation);
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

/// Takes `reply_to` and `correlation_id` from STOMP's own `reply-to` and `correlation-id`
/// headers when the frame's `tidings` header has no such item: a plain STOMP caller sets them
/// there, as STOMP RPC does. Only the `reply-to` header can name a caller's temporary queue:
/// the broker puts an address anyone can send to in its place (RabbitMQ `/reply-queue/..`,
/// ActiveMQ `/remote-temp-queue/..`). tidings itself never sets these headers (ActiveMQ maps
/// them onto JMS properties), so its frames read the same as before.
fn plain_rpc_headers(
    envelope: &mut Envelope,
    seen: &mut u16,
    reply_to: Option<&[u8]>,
    correlation: Option<&[u8]>,
) {
    if let Some(value) = reply_to {
        set_field(envelope, seen, REPLY_TO.as_bytes(), || unescape(value));
    }
    if let Some(value) = correlation {
        set_field(envelope, seen, CORRELATION.as_bytes(), || unescape(value));
    }
}

/// Sets the field named `name` from `text` unless it was already set (the first wins).
fn set_field(envelope: &mut Envelope, seen: &mut u16, name: &[u8], text: impl FnOnce() -> String) {
    let Some(field) = FIELDS.iter().position(|f| f.as_bytes() == name) else {
        return;
    };
    if *seen & (1 << field) != 0 {
        return;
    }
    *seen |= 1 << field;
    let text = text();
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
        e.event = "Ev;=%3B".into();
        e.headers
            .insert("tidings-dead-reason".into(), "x:\n\\\r;=%25%".into());
        e.headers.insert("tidings-status".into(), String::new());
        e.headers.insert("user".into(), String::new());
        e.headers.insert("odd:name\\;".into(), "\\c;%".into());
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
        e.correlation_id = Some(String::new());
        assert_eq!(round_trip(&e, "/topic/ns.a.b"), e);
        e.content_type = "".into();
        assert_eq!(round_trip(&e, "/topic/ns.a.b"), e);
    }

    #[test]
    fn the_fields_travel_in_one_header() {
        let mut e = Envelope::new("a.b", POSTCARD, Bytes::from_static(b"x"));
        e.id = "i-1".into();
        e.timestamp_ms = 5;
        e.event = "Ev".into();
        e.emitter = "h.t.1".into();
        e.correlation_id = Some("c;1".into());
        e.headers.insert("tidings-status".into(), "ok".into());
        e.headers.insert("user".into(), "u".into());
        let head = sent(&e, "/topic/ns.a.b");
        assert_eq!(
            head,
            "destination:/topic/ns.a.b\n\
             tidings:id=i-1;ts=5;event=Ev;emitter=h.t.1;correlation-id=c%3B1;tidings-status=ok\n\
             h-user:u\n\
             content-length:1\n"
        );
    }

    #[test]
    fn what_the_frame_says_stays_off_the_wire() {
        let e = Envelope::new("a.b", POSTCARD, Bytes::from_static(b"x"));
        let head = sent(&e, "/topic/ns.a.b");
        for field in [KEY, CONTENT_TYPE, ATTEMPT] {
            assert!(!head.contains(&format!(";{field}=")), "{head}");
        }
        // Anywhere else (a queue, another namespace) the key is in the pack.
        for destination in ["/amq/queue/q", "/topic/other.a.b", "/topic/ns.a"] {
            assert!(
                sent(&e, destination).contains(";key=a.b"),
                "to {destination}"
            );
        }
    }

    #[test]
    fn earlier_versions_frames_decode_the_same() {
        let old = "tidings-id:1\ntidings-ts:5\ntidings-key:a.b\ntidings-event:E\\c\n\
                   tidings-content-type:application/json\ntidings-ttl-ms:10\n\
                   tidings-correlation-id:c\ntidings-reply-to:r\ntidings-emitter:e\n\
                   tidings-attempt:2\nh-tidings-status:ok\n";
        let e = decode(&delivered(old, b"{}"), &topics());
        let mut want = Envelope::new("a.b", "application/json", Bytes::from_static(b"{}"));
        want.id = "1".into();
        want.timestamp_ms = 5;
        want.event = "E:".into();
        want.ttl = Some(Duration::from_millis(10));
        want.correlation_id = Some("c".into());
        want.reply_to = Some("r".into());
        want.emitter = "e".into();
        want.attempt = 2;
        want.headers.insert("tidings-status".into(), "ok".into());
        assert_eq!(e, want);
        // Without `tidings-content-type` an earlier frame is postcard too.
        let e = decode(&delivered("tidings-id:1\n", b""), &topics());
        assert_eq!(e.content_type, POSTCARD);
    }

    #[test]
    fn the_key_is_read_from_the_topic_delivered_from() {
        let ids = "tidings:id=1;ts=5\n";
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
        // A key in the pack wins; a destination elsewhere says nothing.
        let header = "destination:/topic/ns.a.b\ntidings:id=1;ts=5;key=x.y\n";
        assert_eq!(
            decode(&delivered(header, b""), &topics()).routing_key,
            "x.y"
        );
        let elsewhere = decode(
            &delivered(&format!("destination:/queue/q\n{ids}"), b""),
            &topics(),
        );
        assert_eq!(elsewhere.routing_key, "");
    }

    #[test]
    fn a_plain_stomp_callers_reply_to_and_correlation_id_headers_are_read() {
        // As a broker delivers a plain client's request (RabbitMQ rewrote `/temp-queue/r`).
        let plain = "destination:/topic/ns.svc\nreply-to:/reply-queue/amq.gen-a\\cb\n\
                     correlation-id:c\\c1\ntidings:id=1;ts=5;content-type=application/json\n";
        let e = decode(&delivered(plain, b"{}"), &topics());
        assert_eq!(e.reply_to.as_deref(), Some("/reply-queue/amq.gen-a:b"));
        assert_eq!(e.correlation_id.as_deref(), Some("c:1"));
        assert_eq!(e.routing_key, "svc");
        // The items win over the headers.
        let both = "reply-to:/queue/h\ncorrelation-id:h\n\
                    tidings:id=1;reply-to=/queue/i;correlation-id=i\n";
        let e = decode(&delivered(both, b""), &topics());
        assert_eq!(e.reply_to.as_deref(), Some("/queue/i"));
        assert_eq!(e.correlation_id.as_deref(), Some("i"));
        // Neither: no RPC fields.
        let e = decode(&delivered("tidings:id=1\n", b""), &topics());
        assert_eq!((e.reply_to, e.correlation_id), (None, None));
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
            "tidings:attempt=x;=;;noeq;ts=-1;id=%3;key=\\q\\;%;attempt=7;tidings-=%2\n\
             tidings-attempt:7\ntidings:\n",
            b"",
        );
        let e = decode(&m, &topics());
        assert_eq!(e.attempt, 1);
        assert_eq!(e.timestamp_ms, 0);
        assert_eq!(e.id, "%3");
        assert_eq!(e.routing_key, "\\q\\");
        assert_eq!(e.headers["tidings-"], "%2");
    }

    #[test]
    fn redelivered_counts_as_an_attempt() {
        let e = decode(
            &delivered("redelivered:true\ntidings:attempt=2\r\n", b"x"),
            &topics(),
        );
        assert_eq!(e.attempt, 3);
        assert_eq!(&e.body[..], b"x");
    }
}
