//! What handlers receive: the [`Payload`] a subscription decodes (any [`Event`], or the raw
//! [`Envelope`]) and the [`Message`] around it with its metadata.

use std::ops::Deref;
use std::sync::Arc;

use crate::codec::Codec;
use crate::envelope::Envelope;
use crate::error::Result;
use crate::event::Event;

/// The error a handler returns. Anything convertible with `?` or `.into()` works: I/O errors,
/// `String`, `&str`, `anyhow::Error`.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// What a handler returns.
pub type HandlerResult = Result<(), HandlerError>;

/// A payload a subscription can hand to its handler: any [`Event`], decoded by the content type,
/// or the raw [`Envelope`] for tools that relay messages they have no type for.
pub trait Payload: Sized + Send + 'static {
    /// The event name expected in envelopes, or `""` to accept any.
    fn expected_event() -> &'static str;
    /// Decodes the payload of `envelope`.
    fn from_envelope(envelope: &Envelope) -> Result<Self>;
}

impl<E: Event> Payload for E {
    fn expected_event() -> &'static str {
        E::NAME
    }

    fn from_envelope(envelope: &Envelope) -> Result<Self> {
        Codec::decode(&envelope.content_type, &envelope.body)
    }
}

impl Payload for Envelope {
    fn expected_event() -> &'static str {
        ""
    }

    fn from_envelope(envelope: &Envelope) -> Result<Self> {
        Ok(envelope.clone())
    }
}

/// A received event with its metadata. Derefs to the event.
#[derive(Debug)]
pub struct Message<E> {
    event: E,
    envelope: Arc<Envelope>,
}

impl<E> Message<E> {
    pub(crate) fn new(event: E, envelope: Arc<Envelope>) -> Self {
        Self { event, envelope }
    }

    /// The event.
    pub fn event(&self) -> &E {
        &self.event
    }

    /// The event, by value.
    pub fn into_event(self) -> E {
        self.event
    }

    /// The routing key it was published under.
    pub fn routing_key(&self) -> &str {
        &self.envelope.routing_key
    }

    /// Who published it: `host.kind.id`.
    pub fn emitter(&self) -> &str {
        &self.envelope.emitter
    }

    /// An application header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.envelope.headers.get(name).map(String::as_str)
    }

    /// Which delivery attempt this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.envelope.attempt
    }

    /// The whole envelope (body included).
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }
}

impl<E> Deref for Message<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.event
    }
}

/// Decodes a payload, or says why it cannot be.
pub(crate) fn decode<E: Payload>(envelope: &Envelope) -> std::result::Result<E, String> {
    let expected = E::expected_event();
    if !expected.is_empty() && !envelope.event.is_empty() && envelope.event != expected {
        return Err(format!(
            "expected event {expected:?} but the message carries {:?}",
            envelope.event
        ));
    }
    E::from_envelope(envelope).map_err(|e| e.to_string())
}
