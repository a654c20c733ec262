//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature): the driver's readers of
//! broker input, behind functions that take and return public types only. Not part of the API.

use bytes::{Bytes, BytesMut};
use tidings_core::Envelope;
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{self, Codec, FrameBuilder, Inbound, Outgoing, RawFrame};
use crate::wire::{self, KeyedTopics};

/// A frame as the driver's reader hands it on.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A MESSAGE frame, and what the driver reads from it.
    Message {
        /// Its headers in frame order, still escaped.
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        /// Its `subscription` and `ack` headers, unescaped.
        subscription_and_ack: (Option<String>, Option<String>),
        /// The envelope decoded from it (keys of the topic given to [`read`]).
        envelope: Box<Envelope>,
    },
    /// A RECEIPT frame's `receipt-id`.
    Receipt(Bytes),
    /// Any other frame, as async-stomp's `Debug` shows it.
    Other(String),
    /// A heart-beat.
    Heartbeat,
}

/// Feeds `chunks` to the driver's frame decoder one after another, as the connection's reader
/// does while bytes arrive, and decodes every MESSAGE's envelope for a driver whose keyed
/// topic is `topic`. Returns the frames and the error that ended the stream, if any.
pub fn read<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    topic: &str,
) -> (Vec<Frame>, Option<String>) {
    let topics = KeyedTopics {
        topic: topic.to_owned(),
    };
    let mut codec = Codec::default();
    let mut buffer = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buffer.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(inbound)) => frames.push(match inbound {
                    Inbound::Message(message) => Frame::Message {
                        headers: message
                            .headers()
                            .map(|(n, v)| (n.to_vec(), v.to_vec()))
                            .collect(),
                        subscription_and_ack: message.subscription_and_ack(),
                        envelope: Box::new(wire::decode(&message, &topics)),
                    },
                    Inbound::Receipt(id) => Frame::Receipt(id),
                    Inbound::Other(other) => Frame::Other(format!("{other:?}")),
                    Inbound::Heartbeat => Frame::Heartbeat,
                }),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
    }
    (frames, None)
}

/// STOMP 1.2 header unescaping, as the driver reads header values.
pub fn unescape(raw: &[u8]) -> String {
    frame::unescape(raw)
}

/// The unescaping of an item of the driver's `tidings` header.
pub fn unescape_item(raw: &[u8]) -> String {
    frame::unescape_item(raw)
}

/// The `name=value` items of the driver's `tidings` header, still escaped.
pub fn items(raw: &[u8]) -> Vec<(&[u8], &[u8])> {
    frame::items(raw).collect()
}

/// `text` escaped as the driver writes a header name or value (STOMP 1.2 escaping).
pub fn escape(text: &str) -> Vec<u8> {
    let mut frame = FrameBuilder::new("X", 16);
    frame.any_header(text, "");
    // `X\n<text>:\n\n\0`
    let bytes = encoded(frame.finish(None));
    bytes[2..bytes.len() - 4].to_vec()
}

/// `text` escaped as the driver writes an item name of its `tidings` header.
pub fn escape_item(text: &str) -> Vec<u8> {
    let mut frame = FrameBuilder::new("X", 16);
    frame.items("n").any(text, "");
    // `X\nn:<text>=\n\n\0`
    let bytes = encoded(frame.finish(None));
    bytes[4..bytes.len() - 4].to_vec()
}

fn encoded(frame: RawFrame) -> Vec<u8> {
    let mut out = BytesMut::new();
    Codec::default()
        .encode(Outgoing::Raw(frame, None), &mut out)
        .expect("a raw frame always encodes");
    out.to_vec()
}

/// The MESSAGE frame the broker would deliver for a SEND of `envelope` to `destination` by a
/// driver whose keyed topic is `topic` (the SEND's headers and body, under `MESSAGE`).
pub fn message_for(envelope: &Envelope, destination: &str, topic: &str) -> Vec<u8> {
    let topics = KeyedTopics {
        topic: topic.to_owned(),
    };
    let mut frame = FrameBuilder::new("MESSAGE", 64);
    frame.header("destination", destination);
    wire::encode(envelope, destination, &topics, &mut frame);
    frame.number("content-length", envelope.body.len() as u64);
    encoded(frame.finish(Some(envelope.body.clone())))
}
