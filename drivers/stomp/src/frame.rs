//! Frames on their way to the broker, and the codec that writes them.
//!
//! Most frames are async-stomp [`Message`]s, encoded by its [`ClientCodec`]. The two frames
//! sent once per message — SEND and ACK — are instead serialized by the caller straight into
//! bytes ([`RawFrame`]): no header vector, no `ToServer` value, and the body is written from the
//! envelope's [`Bytes`] without an intermediate `Vec`. The serialization runs in the task that
//! publishes, not in the connection task, and a SEND re-sent after a reconnect reuses the same
//! bytes. The connection task only adds the `receipt` header, whose id it allocates.

use async_stomp::client::{ClientCodec, Heartbeat};
use async_stomp::{FromServer, Message, ToServer};
use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// A frame serialized by the caller: `head` is the command line and headers (each ending in
/// `\n`), `body` follows the blank line.
#[derive(Debug, Clone)]
pub(crate) struct RawFrame {
    head: Bytes,
    body: Option<Bytes>,
}

/// Builds the head of a [`RawFrame`], escaping header values as STOMP 1.2 requires.
#[derive(Debug)]
pub(crate) struct FrameBuilder {
    head: BytesMut,
}

impl FrameBuilder {
    /// A frame for `command` (`SEND`, `ACK`, ...).
    pub(crate) fn new(command: &str, capacity: usize) -> Self {
        let mut head = BytesMut::with_capacity(capacity);
        head.put_slice(command.as_bytes());
        head.put_u8(b'\n');
        Self { head }
    }

    /// Adds `name:value`.
    pub(crate) fn header(&mut self, name: &str, value: &str) {
        escape_into(&mut self.head, name.as_bytes());
        self.head.put_u8(b':');
        escape_into(&mut self.head, value.as_bytes());
        self.head.put_u8(b'\n');
    }

    /// Adds `name:<number>`.
    pub(crate) fn number(&mut self, name: &str, value: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        escape_into(&mut self.head, name.as_bytes());
        self.head.put_u8(b':');
        self.head.put_slice(&digits[at..]);
        self.head.put_u8(b'\n');
    }

    /// The head as text, for tests.
    #[cfg(test)]
    pub(crate) fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }

    /// The finished frame.
    pub(crate) fn finish(self, body: Option<Bytes>) -> RawFrame {
        RawFrame {
            head: self.head.freeze(),
            body,
        }
    }
}

/// STOMP 1.2 header escaping: `\r`, `\n`, `:` and `\` are the only octets that need it.
fn escape_into(buffer: &mut BytesMut, text: &[u8]) {
    let mut start = 0;
    for (i, byte) in text.iter().enumerate() {
        let escaped: &[u8] = match byte {
            b'\r' => b"\\r",
            b'\n' => b"\\n",
            b':' => b"\\c",
            b'\\' => b"\\\\",
            _ => continue,
        };
        buffer.put_slice(&text[start..i]);
        buffer.put_slice(escaped);
        start = i + 1;
    }
    buffer.put_slice(&text[start..]);
}

/// The ACK (or NACK) of the message delivered with `ack:<id>`.
pub(crate) fn settle(command: &str, id: &str) -> RawFrame {
    let mut frame = FrameBuilder::new(command, command.len() + id.len() + 8);
    frame.header("id", id);
    frame.finish(None)
}

/// What the connection task writes.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame async-stomp encodes.
    Stomp(Message<ToServer>),
    /// A pre-serialized frame, with the receipt id the connection task gave it, if any.
    Raw(RawFrame, Option<String>),
    /// A heart-beat (a bare end-of-line).
    Heartbeat,
}

impl From<Message<ToServer>> for Outgoing {
    fn from(message: Message<ToServer>) -> Self {
        Outgoing::Stomp(message)
    }
}

impl Outgoing {
    /// Asks the broker to confirm this frame with a RECEIPT for `id`.
    pub(crate) fn set_receipt(&mut self, id: String) {
        match self {
            Outgoing::Stomp(message) => message
                .extra_headers
                .push((b"receipt".to_vec(), id.into_bytes())),
            Outgoing::Raw(_, receipt) => *receipt = Some(id),
            Outgoing::Heartbeat => {}
        }
    }
}

/// [`ClientCodec`] plus [`RawFrame`]s.
#[derive(Debug)]
pub(crate) struct Codec {
    inner: ClientCodec,
}

impl Default for Codec {
    fn default() -> Self {
        Self {
            inner: ClientCodec::new(),
        }
    }
}

impl Decoder for Codec {
    type Item = Message<FromServer>;
    type Error = anyhow::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        self.inner.decode(src)
    }
}

impl Encoder<Outgoing> for Codec {
    type Error = anyhow::Error;

    fn encode(&mut self, item: Outgoing, dst: &mut BytesMut) -> Result<(), Self::Error> {
        match item {
            Outgoing::Stomp(message) => self.inner.encode(message, dst),
            Outgoing::Heartbeat => self.inner.encode(Heartbeat, dst),
            Outgoing::Raw(frame, receipt) => {
                let body = frame.body.as_deref().unwrap_or_default();
                dst.reserve(frame.head.len() + body.len() + 32);
                dst.put_slice(&frame.head);
                if let Some(id) = receipt {
                    dst.put_slice(b"receipt:");
                    escape_into(dst, id.as_bytes());
                    dst.put_u8(b'\n');
                }
                dst.put_u8(b'\n');
                dst.put_slice(body);
                dst.put_u8(0);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(frame: RawFrame, receipt: Option<&str>) -> Vec<u8> {
        let mut out = BytesMut::new();
        Codec::default()
            .encode(Outgoing::Raw(frame, receipt.map(str::to_owned)), &mut out)
            .unwrap();
        out.to_vec()
    }

    #[test]
    fn raw_frames_are_escaped_and_terminated() {
        let mut f = FrameBuilder::new("SEND", 16);
        f.header("destination", "/queue/a");
        f.header("h-x:y", "1\n2\\3\r");
        f.number("content-length", 3);
        let bytes = encoded(f.finish(Some(Bytes::from_static(b"a\0b"))), Some("r1"));
        assert_eq!(
            bytes,
            b"SEND\ndestination:/queue/a\nh-x\\cy:1\\n2\\\\3\\r\ncontent-length:3\nreceipt:r1\n\na\0b\0"
        );
        assert_eq!(encoded(settle("ACK", "m:1"), None), b"ACK\nid:m\\c1\n\n\0");
    }

    #[test]
    fn numbers_are_decimal() {
        for n in [0u64, 7, 10, 1234567890, u64::MAX] {
            let mut f = FrameBuilder::new("X", 8);
            f.number("n", n);
            let frame = f.finish(None);
            assert_eq!(&frame.head[..], format!("X\nn:{n}\n").as_bytes());
        }
    }
}
