//! The envelope on the wire: which AMQP 1.0 section and field carries which envelope field.
//! See `docs/wire-format-amqp10.md`. Decoding never fails: a missing or malformed field from
//! the wire becomes an empty or default value, which the bus then treats as a decode failure
//! of the payload (dead-lettered) instead of a panic here.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Header, Message, MessageId, Properties,
};
use fe2o3_amqp::types::primitives::{Binary, OrderedMap, SimpleValue, Symbol, Timestamp, Value};
use tidings_core::Envelope;

/// The message type this driver receives: any body, decoded as AMQP values.
pub(crate) type AmqpMessage = Message<Body<Value>>;
/// The body this driver sends: always exactly one data section. On the wire the same as a
/// `Body::Data` of one section, without the `Vec` of sections (an allocation per message).
pub(crate) type OutgoingBody = Data;
/// The message type this driver sends.
pub(crate) type OutgoingMessage = Message<OutgoingBody>;

/// Application property carrying [`Envelope::event`].
pub(crate) const EVENT: &str = "tidings-event";
/// Application property carrying [`Envelope::emitter`].
pub(crate) const EMITTER: &str = "tidings-emitter";
/// Application property carrying [`Envelope::attempt`].
pub(crate) const ATTEMPT: &str = "tidings-attempt";
/// Application property carrying [`Envelope::ttl`] in milliseconds, exact where
/// `header.ttl` (a 32-bit millisecond count) cannot be.
pub(crate) const TTL_MS: &str = "tidings-ttl-ms";

/// Builds the AMQP message for `envelope`. `durable` asks the broker to keep it on disk.
/// Takes the envelope by value: its strings and body move into the message, uncopied.
pub(crate) fn encode(envelope: Envelope, durable: bool) -> OutgoingMessage {
    let Envelope {
        id,
        routing_key,
        event,
        headers,
        content_type,
        body,
        timestamp_ms,
        ttl,
        correlation_id,
        reply_to,
        emitter,
        attempt,
    } = envelope;
    let ttl_ms = ttl.map(|t| t.as_millis().min(u64::MAX as u128) as u64);
    let header = Header {
        durable,
        ttl: ttl_ms.map(|ms| ms.min(u32::MAX as u64) as u32),
        ..Header::default()
    };
    let properties = Properties {
        message_id: Some(MessageId::String(id)),
        subject: Some(routing_key),
        reply_to,
        correlation_id: correlation_id.map(MessageId::String),
        content_type: (!content_type.is_empty()).then(|| Symbol::from(content_type.into_owned())),
        creation_time: Some(Timestamp::from_milliseconds(
            timestamp_ms.min(i64::MAX as u64) as i64,
        )),
        ..Properties::default()
    };
    // Every entry costs fe2o3 a string key and a value to encode, and the receiver to decode
    // and hash: an entry whose value is the default (empty, attempt 1) is left out, and
    // decoding restores the default.
    let first_attempt = attempt <= 1;
    let entries = headers.len()
        + usize::from(!event.is_empty())
        + usize::from(!emitter.is_empty())
        + usize::from(!first_attempt)
        + usize::from(ttl_ms.is_some());
    let application_properties = (entries > 0).then(|| {
        let mut map = OrderedMap::with_capacity(entries);
        for (name, value) in headers {
            map.insert(name, SimpleValue::String(value));
        }
        if !event.is_empty() {
            map.insert(EVENT.to_owned(), SimpleValue::String(event.into_owned()));
        }
        if !emitter.is_empty() {
            map.insert(EMITTER.to_owned(), SimpleValue::String(emitter));
        }
        if !first_attempt {
            map.insert(ATTEMPT.to_owned(), SimpleValue::Uint(attempt));
        }
        if let Some(ms) = ttl_ms {
            map.insert(TTL_MS.to_owned(), SimpleValue::Ulong(ms));
        }
        ApplicationProperties(map)
    });
    Message {
        header: Some(header),
        delivery_annotations: None,
        message_annotations: None,
        properties: Some(properties),
        application_properties,
        // Bytes into Vec reuses the buffer when this is its only owner (the usual case).
        body: Data(Binary::from(Vec::from(body))),
        footer: None,
    }
}

/// Reads an envelope back from `message`. `redelivered` says the broker handed this message
/// out before without it being settled (its consumer died), which counts as one more attempt.
pub(crate) fn decode(message: AmqpMessage, redelivered: bool) -> Envelope {
    let Message {
        header,
        properties,
        application_properties,
        body,
        ..
    } = message;
    let properties = properties.unwrap_or_default();
    let mut headers = BTreeMap::new();
    let mut event = String::new();
    let mut emitter = String::new();
    let mut attempt = 1u32;
    let mut ttl_ms = None;
    if let Some(ApplicationProperties(map)) = application_properties {
        for (name, value) in map.into_inner() {
            match name.as_str() {
                EVENT => event = simple_text(value),
                EMITTER => emitter = simple_text(value),
                ATTEMPT => {
                    attempt = simple_u64(&value).map_or(1, |n| n.clamp(1, u32::MAX as u64) as u32)
                }
                TTL_MS => ttl_ms = simple_u64(&value),
                _ => {
                    headers.insert(name, simple_text(value));
                }
            }
        }
    }
    if redelivered {
        attempt = attempt.saturating_add(1);
    }
    let ttl_ms = ttl_ms.or_else(|| header.as_ref().and_then(|h| h.ttl).map(u64::from));
    Envelope {
        id: properties
            .message_id
            .map(message_id_text)
            .unwrap_or_default(),
        routing_key: properties.subject.unwrap_or_default(),
        event: event.into(),
        headers,
        content_type: properties
            .content_type
            .map(|s| s.0)
            .unwrap_or_default()
            .into(),
        body: body_bytes(body),
        timestamp_ms: properties
            .creation_time
            .map_or(0, |t| t.milliseconds().max(0) as u64),
        ttl: ttl_ms.map(Duration::from_millis),
        correlation_id: properties.correlation_id.map(message_id_text),
        reply_to: properties.reply_to,
        emitter,
        attempt,
    }
}

fn message_id_text(id: MessageId) -> String {
    match id {
        MessageId::String(s) => s,
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => format!("{u:?}"),
        MessageId::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
    }
}

fn simple_text(value: SimpleValue) -> String {
    match value {
        SimpleValue::String(s) => s,
        SimpleValue::Symbol(s) => s.0,
        SimpleValue::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
        SimpleValue::Bool(b) => b.to_string(),
        other => simple_u64(&other)
            .map(|n| n.to_string())
            .unwrap_or_default(),
    }
}

fn simple_u64(value: &SimpleValue) -> Option<u64> {
    match value {
        SimpleValue::Ubyte(n) => Some(u64::from(*n)),
        SimpleValue::Ushort(n) => Some(u64::from(*n)),
        SimpleValue::Uint(n) => Some(u64::from(*n)),
        SimpleValue::Ulong(n) => Some(*n),
        SimpleValue::Byte(n) => u64::try_from(*n).ok(),
        SimpleValue::Short(n) => u64::try_from(*n).ok(),
        SimpleValue::Int(n) => u64::try_from(*n).ok(),
        SimpleValue::Long(n) => u64::try_from(*n).ok(),
        SimpleValue::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The payload bytes: data sections concatenated; a binary or string amqp-value as its bytes;
/// anything else (sequences, structured values) as nothing, which fails to decode upstream.
fn body_bytes(body: Body<Value>) -> Bytes {
    match body {
        Body::Data(batch) => {
            let mut sections = batch.into_inner();
            if sections.len() == 1 {
                let Data(bin) = sections.remove(0);
                return Bytes::from(bin.into_vec());
            }
            let mut all = Vec::new();
            for Data(bin) in sections {
                all.extend_from_slice(&bin);
            }
            Bytes::from(all)
        }
        Body::Value(value) => match value.0 {
            Value::Binary(b) => Bytes::from(b.into_vec()),
            Value::String(s) => Bytes::from(s),
            _ => Bytes::new(),
        },
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};

    /// The bytes fe2o3 puts on the wire for `message`.
    fn bytes<B: fe2o3_amqp::types::messaging::SerializableBody>(message: Message<B>) -> Vec<u8> {
        serde_amqp::to_vec(&Serializable(message)).expect("serialize")
    }

    /// What a receiver of this driver reads back from what it sends.
    fn wire(message: OutgoingMessage) -> AmqpMessage {
        let Deserializable(back) =
            serde_amqp::from_slice::<Deserializable<AmqpMessage>>(&bytes(message))
                .expect("deserialize");
        back
    }

    fn sample() -> Envelope {
        let mut e = Envelope::new(
            "orders.created",
            "application/json",
            Bytes::from_static(b"{\"a\":1}"),
        );
        e.event = "order".into();
        e.headers.insert("tenant".into(), "acme".into());
        e.headers.insert("tidings-status".into(), "ok".into());
        e.ttl = Some(Duration::from_millis(1500));
        e.correlation_id = Some("c-1".into());
        e.reply_to = Some("/amq/queue/x.inbox.1".into());
        e.emitter = "host.svc.1".into();
        e.attempt = 3;
        e
    }

    #[test]
    fn every_field_round_trips() {
        let e = sample();
        assert_eq!(decode(wire(encode(e.clone(), true)), false), e);
        let mut bare = Envelope::new("k", "", Bytes::new());
        bare.timestamp_ms = 0;
        assert_eq!(decode(wire(encode(bare.clone(), false)), false), bare);
    }

    #[test]
    fn defaults_stay_off_the_wire() {
        let mut first = sample();
        first.attempt = 1;
        let message = encode(first.clone(), true);
        let map = &message.application_properties.as_ref().unwrap().0;
        assert!(map.get(ATTEMPT).is_none());
        assert_eq!(decode(wire(message), false), first);

        let mut bare = Envelope::new("k", "", Bytes::new());
        bare.timestamp_ms = 0;
        let message = encode(bare.clone(), false);
        assert!(message.application_properties.is_none());
        assert!(message.properties.as_ref().unwrap().content_type.is_none());
        assert_eq!(decode(wire(message), true).attempt, 2);

        // What earlier versions sent: every entry, attempt 1 included.
        let mut old = wire(encode(sample(), true));
        let map = &mut old.application_properties.as_mut().unwrap().0;
        map.insert(ATTEMPT.to_owned(), SimpleValue::Uint(1));
        assert_eq!(decode(old, false).attempt, 1);
    }

    #[test]
    fn the_data_body_is_the_same_on_the_wire() {
        // Earlier versions sent `Body::Data` with one section; readers see no difference.
        let message = encode(sample(), true);
        let as_before = Message {
            header: message.header.clone(),
            delivery_annotations: None,
            message_annotations: None,
            properties: message.properties.clone(),
            application_properties: message.application_properties.clone(),
            body: Body::<Value>::Data(vec![message.body.clone()].into()),
            footer: None,
        };
        assert_eq!(bytes(message), bytes(as_before));
    }

    #[test]
    fn redelivery_counts_as_an_attempt() {
        assert_eq!(decode(wire(encode(sample(), false)), true).attempt, 4);
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut map = OrderedMap::new();
        map.insert(ATTEMPT.to_owned(), SimpleValue::String("lots".into()));
        map.insert(EVENT.to_owned(), SimpleValue::Double(1.5.into()));
        map.insert(
            "x".to_owned(),
            SimpleValue::Timestamp(Timestamp::from_milliseconds(-5)),
        );
        let message = Message {
            header: None,
            delivery_annotations: None,
            message_annotations: None,
            properties: Some(Properties {
                creation_time: Some(Timestamp::from_milliseconds(-1)),
                message_id: Some(MessageId::Ulong(7)),
                ..Properties::default()
            }),
            application_properties: Some(ApplicationProperties(map)),
            body: Body::Value(fe2o3_amqp::types::messaging::AmqpValue(Value::List(vec![]))),
            footer: None,
        };
        let e = decode(message, false);
        assert_eq!(e.attempt, 1);
        assert_eq!(e.id, "7");
        assert_eq!(e.timestamp_ms, 0);
        assert!(e.body.is_empty());
    }
}
