//! How an [`Envelope`] maps onto an AMQP 0.9.1 message (see `docs/wire-format-amqp091.md`).
//!
//! Native properties carry what AMQP has a slot for (message id, type, content type, timestamp
//! in seconds, expiration, correlation id, reply-to, app id); the headers table carries the
//! application headers and the fields AMQP cannot hold exactly (`tidings-attempt`,
//! `tidings-timestamp-ms`, `tidings-ttl-ns`, and `tidings-routing-key` when a copy travels
//! through the default exchange). Decoding never fails and never panics: what is missing or
//! malformed becomes an empty or default field, and the bus dead-letters the message when its
//! payload does not decode.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use tidings_core::envelope::{headers, now_ms};
use tidings_core::{Envelope, Error, ErrorKind, Result};

/// Which delivery attempt this is; bumped by a retry.
pub(crate) const ATTEMPT: &str = "tidings-attempt";
/// The publish time in milliseconds (the AMQP timestamp property has whole seconds only).
pub(crate) const TIMESTAMP_MS: &str = "tidings-timestamp-ms";
/// The exact TTL in nanoseconds (the expiration property has milliseconds and, on a retried
/// copy, holds the time left rather than the original TTL).
pub(crate) const TTL_NS: &str = "tidings-ttl-ns";
/// The original routing key of a copy sent straight to a queue through the default exchange
/// (retries, requeues, dead letters, RPC replies), whose AMQP routing key is the queue name.
pub(crate) const ROUTING_KEY: &str = "tidings-routing-key";

/// Set by a RabbitMQ quorum queue on a redelivered message: how many times it was delivered
/// and not settled before.
const DELIVERY_COUNT: &str = "x-delivery-count";

/// AMQP delivery mode 2: the broker writes the message to disk in durable queues.
const PERSISTENT: u8 = 2;
/// AMQP delivery mode 1: kept in memory only.
const TRANSIENT: u8 = 1;

fn short(field: &str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| {
        Error::new(
            ErrorKind::Encode,
            format!(
                "the {field} is {} bytes long; AMQP 0.9.1 limits it to 255 bytes",
                value.len()
            ),
        )
    })
}

/// The AMQP properties for `envelope`. `direct` is true when it is sent to a queue through the
/// default exchange, so the routing key must travel in a header.
pub(crate) fn encode(envelope: &Envelope, direct: bool) -> Result<BasicProperties> {
    let mut headers = FieldTable::default();
    for (name, value) in &envelope.headers {
        let key = short("header name", name)?;
        headers.insert(
            key,
            AMQPValue::LongString(LongString::from(value.as_bytes())),
        );
    }
    // Fields at their default stay off the wire (the broker parses every header of a message
    // it must look into, such as an RPC request): no attempt means 1.
    if envelope.attempt > 1 {
        headers.insert(ATTEMPT.into(), AMQPValue::LongUInt(envelope.attempt));
    }
    headers.insert(
        TIMESTAMP_MS.into(),
        AMQPValue::LongLongInt(envelope.timestamp_ms.min(i64::MAX as u64) as i64),
    );
    // RPC requests (they carry a reply-to) and replies (sent straight to an inbox) are
    // transient: a direct reply-to address dies with the caller's channel, so neither could be
    // of use after a broker restart, and skipping the disk keeps calls fast. Dead letters always
    // persist.
    let rpc = envelope.reply_to.is_some() || (direct && envelope.correlation_id.is_some());
    let transient = rpc && !envelope.headers.contains_key(headers::DEAD_REASON);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(if transient { TRANSIENT } else { PERSISTENT })
        .with_message_id(short("message id", &envelope.id)?)
        .with_timestamp(envelope.timestamp_ms / 1000);
    if let Some(ttl) = envelope.ttl {
        let left_ms = expiration_ms(envelope, ttl);
        // The exact TTL travels only when the expiration does not already say it.
        if Duration::from_millis(left_ms) != ttl {
            headers.insert(
                TTL_NS.into(),
                AMQPValue::LongLongInt(ttl.as_nanos().min(i64::MAX as u128) as i64),
            );
        }
        properties = properties.with_expiration(left_ms.to_string().into());
    }
    if direct {
        headers.insert(
            ROUTING_KEY.into(),
            AMQPValue::LongString(LongString::from(envelope.routing_key.as_bytes())),
        );
    }
    if !envelope.event.is_empty() {
        properties = properties.with_type(short("event name", &envelope.event)?);
    }
    if !envelope.content_type.is_empty() {
        properties = properties.with_content_type(short("content type", &envelope.content_type)?);
    }
    if let Some(id) = &envelope.correlation_id {
        properties = properties.with_correlation_id(short("correlation id", id)?);
    }
    if let Some(reply_to) = &envelope.reply_to {
        properties = properties.with_reply_to(short("reply-to address", reply_to)?);
    }
    if !envelope.emitter.is_empty() {
        properties = properties.with_app_id(short("emitter", &envelope.emitter)?);
    }
    Ok(properties.with_headers(headers))
}

/// The expiration property: the milliseconds the message has left, counted from its original
/// publish time, so a retried copy does not live longer than the original would have.
fn expiration_ms(envelope: &Envelope, ttl: Duration) -> u64 {
    let ttl_ms = ttl.as_nanos().div_ceil(1_000_000).min(u64::MAX as u128) as u64;
    let expires_at = envelope.timestamp_ms.saturating_add(ttl_ms);
    let now = now_ms();
    // A fresh publish uses the whole TTL even if the clock moved a little since `timestamp_ms`.
    if envelope.attempt <= 1 && now.saturating_sub(envelope.timestamp_ms) < 1000 {
        ttl_ms
    } else {
        expires_at.saturating_sub(now)
    }
}

/// The envelope of a received message. `redelivered` (the broker's flag: the message was
/// delivered before to a consumer that went away without settling it) counts as one attempt;
/// a quorum queue's `x-delivery-count` (how many times it was) counts as that many, so a
/// message that keeps crashing its consumers reaches its attempt limit.
pub(crate) fn decode(
    properties: &BasicProperties,
    routing_key: &str,
    redelivered: bool,
    body: Bytes,
) -> Envelope {
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    let mut headers = BTreeMap::new();
    let mut attempt: u32 = 1;
    let mut timestamp_ms = properties.timestamp().map_or(0, |s| s.saturating_mul(1000));
    let mut ttl = properties
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut key = routing_key.to_owned();
    let mut redeliveries = 0u32;
    if let Some(table) = properties.headers() {
        for (name, value) in table {
            match name.as_str() {
                ATTEMPT => {
                    if let Some(n) = as_u64(value) {
                        attempt = n.clamp(1, u32::MAX as u64) as u32;
                    }
                }
                TIMESTAMP_MS => {
                    if let Some(n) = as_u64(value) {
                        timestamp_ms = n;
                    }
                }
                TTL_NS => {
                    if let Some(n) = as_u64(value) {
                        ttl = Some(Duration::from_nanos(n));
                    }
                }
                ROUTING_KEY => key = as_text(value),
                DELIVERY_COUNT => {
                    if let Some(n) = as_u64(value) {
                        redeliveries = n.min(u32::MAX as u64) as u32;
                    }
                }
                other => {
                    headers.insert(other.to_owned(), as_text(value));
                }
            }
        }
    }
    attempt = attempt.saturating_add(redeliveries.max(u32::from(redelivered)));
    Envelope {
        id: text(properties.message_id()).unwrap_or_default(),
        routing_key: key,
        event: text(properties.kind()).unwrap_or_default().into(),
        headers,
        content_type: text(properties.content_type()).unwrap_or_default().into(),
        body,
        timestamp_ms,
        ttl,
        correlation_id: text(properties.correlation_id()),
        reply_to: text(properties.reply_to()),
        emitter: text(properties.app_id()).unwrap_or_default(),
        attempt,
    }
}

/// A header value as a number, accepting every integer type and decimal text (other clients
/// may write the attempt counter differently).
fn as_u64(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok(),
        _ => None,
    }
}

/// A header value as text: strings as they are (invalid UTF-8 replaced), numbers and booleans
/// in decimal, anything else in a readable debug form.
fn as_text(value: &AMQPValue) -> String {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Envelope {
        let mut e = Envelope::new(
            "orders.created",
            "application/json",
            Bytes::from_static(b"{}"),
        );
        e.event = "order_created".into();
        e.headers.insert("trace".into(), "abc".into());
        e.headers
            .insert("tidings-dead-reason".into(), "boom".into());
        e.ttl = Some(Duration::from_nanos(1_500_000_001));
        e.correlation_id = Some(String::new());
        e.reply_to = Some("ex.inbox.1".into());
        e.emitter = "host.svc.1".into();
        e.attempt = 3;
        e
    }

    #[test]
    fn every_field_round_trips() {
        let e = full();
        let props = encode(&e, false).unwrap();
        assert_eq!(decode(&props, &e.routing_key, false, e.body.clone()), e);
        let props = encode(&e, true).unwrap();
        assert_eq!(decode(&props, "queue.name", false, e.body.clone()), e);
    }

    #[test]
    fn defaults_stay_off_the_wire() {
        let mut e = Envelope::new("a.b", "application/json", Bytes::from_static(b"1"));
        e.ttl = Some(Duration::from_secs(30));
        let props = encode(&e, false).unwrap();
        let table = props.headers().as_ref().unwrap();
        assert!(!table.contains_key(ATTEMPT), "attempt 1 is the default");
        assert!(
            !table.contains_key(TTL_NS),
            "the expiration says 30000 ms exactly"
        );
        assert_eq!(props.expiration().as_ref().unwrap().as_str(), "30000");
        assert_eq!(decode(&props, "a.b", false, e.body.clone()), e);
        // What earlier versions sent decodes the same.
        let mut table = table.clone();
        table.insert(ATTEMPT.into(), AMQPValue::LongUInt(1));
        table.insert(TTL_NS.into(), AMQPValue::LongLongInt(30_000_000_000));
        let old = props.with_headers(table);
        assert_eq!(decode(&old, "a.b", false, e.body.clone()), e);
    }

    #[test]
    fn empty_fields_round_trip() {
        let mut e = Envelope::new("a", "", Bytes::new());
        e.id = String::new();
        let props = encode(&e, false).unwrap();
        assert_eq!(decode(&props, "a", false, Bytes::new()), e);
    }

    #[test]
    fn redelivery_counts_an_attempt() {
        let e = full();
        let props = encode(&e, false).unwrap();
        assert_eq!(decode(&props, "k", true, Bytes::new()).attempt, 4);
    }

    #[test]
    fn garbage_never_panics() {
        let mut table = FieldTable::default();
        table.insert(ATTEMPT.into(), AMQPValue::LongString("x".into()));
        table.insert(TIMESTAMP_MS.into(), AMQPValue::LongLongInt(-5));
        table.insert("bin".into(), AMQPValue::LongString(vec![0xff, 0xfe].into()));
        let props = BasicProperties::default()
            .with_headers(table)
            .with_expiration("soon".into());
        let e = decode(&props, "k", false, Bytes::new());
        assert_eq!(e.attempt, 1);
        assert_eq!(e.ttl, None);
        assert_eq!(e.headers["bin"], "\u{fffd}\u{fffd}");
    }

    #[test]
    fn oversized_fields_are_an_error_not_a_panic() {
        let mut e = full();
        e.event = "x".repeat(300).into();
        assert_eq!(encode(&e, false).unwrap_err().kind(), ErrorKind::Encode);
        let mut e = full();
        e.headers.insert("h".repeat(300), "v".into());
        assert!(encode(&e, false).is_err());
    }
}
