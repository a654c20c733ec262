//! Frames on their way to the broker, and the codec that writes them.
//!
//! Most frames are async-stomp [`Message`]s, encoded by its [`ClientCodec`]. The two frames
//! sent once per message — SEND and ACK — are instead serialized by the caller straight into
//! bytes ([`RawFrame`]): no header vector, no `ToServer` value, and the body is written from the
//! envelope's [`Bytes`] without an intermediate `Vec`. The serialization runs in the task that
//! publishes, and a SEND re-sent after a reconnect reuses the same bytes. The link adds the
//! `receipt` header, whose id it allocates, as it queues the frame (see `link`).
//!
//! On the way in, MESSAGE frames — one per delivery — are split by the driver ([`RawMessage`]),
//! and so are RECEIPT frames (one per SEND; only their `receipt-id` is read, without a copy);
//! every other frame is left to async-stomp. async-stomp's parser is private, and the only
//! thing its codec hands out is an owned [`FromServer::Message`], built by copying every header
//! twice (once unescaped into `headers`, once raw into `extra_headers`) and the body once: with
//! the ~14 headers of a tidings message that was most of the client's decoding work. A
//! [`RawMessage`] instead keeps the frame as it was read (a `Bytes` cut from the read buffer,
//! no copy) and the envelope decoder unescapes only the headers it uses, straight into the
//! envelope's strings.

use anyhow::bail;
use async_stomp::client::{ClientCodec, Heartbeat, DEFAULT_MAX_FRAME_SIZE};
use async_stomp::{FromServer, Message, ToServer};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use memchr::memchr;
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

    /// Starts a header with one of the driver's own names (which need no escaping).
    fn name(&mut self, name: &str) {
        debug_assert!(!needs_escaping(name.as_bytes()), "{name:?}");
        self.head.put_slice(name.as_bytes());
        self.head.put_u8(b':');
    }

    /// Adds `name:value`, for one of the driver's own header names.
    pub(crate) fn header(&mut self, name: &str, value: &str) {
        self.name(name);
        escape_into(&mut self.head, value.as_bytes(), STOMP_SPECIALS);
        self.head.put_u8(b'\n');
    }

    /// Adds `name:value` for any name (an application header's).
    pub(crate) fn any_header(&mut self, name: &str, value: &str) {
        escape_into(&mut self.head, name.as_bytes(), STOMP_SPECIALS);
        self.head.put_u8(b':');
        escape_into(&mut self.head, value.as_bytes(), STOMP_SPECIALS);
        self.head.put_u8(b'\n');
    }

    /// Adds `name:<number>`.
    pub(crate) fn number(&mut self, name: &str, value: u64) {
        self.name(name);
        put_number(&mut self.head, value);
        self.head.put_u8(b'\n');
    }

    /// Starts the header `name` whose value is a list of items (see [`Items`]).
    pub(crate) fn items(&mut self, name: &str) -> Items<'_> {
        self.name(name);
        Items {
            head: &mut self.head,
            empty: true,
        }
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

/// The value of one header as `name=value` items separated by `;`: many fields in one header,
/// because brokers parse, store and render every header of every message one by one (see
/// `docs/wire-format-stomp.md`). Inside items `%` is written `%25`, `;` `%3B` and, in names,
/// `=` `%3D`, before STOMP's own escaping, so any string fits; [`items`] and
/// [`unescape_item`] read them back.
/// The header line ends when this is dropped.
#[derive(Debug)]
pub(crate) struct Items<'a> {
    head: &'a mut BytesMut,
    empty: bool,
}

impl Items<'_> {
    /// Ends the item before, if any.
    fn separate(&mut self) {
        if !self.empty {
            self.head.put_u8(b';');
        }
        self.empty = false;
    }

    /// Starts an item named by the driver (a name that needs no escaping).
    fn start(&mut self, name: &str) {
        debug_assert!(!contains_any(name.as_bytes(), NAME_SPECIALS), "{name:?}");
        self.separate();
        self.head.put_slice(name.as_bytes());
        self.head.put_u8(b'=');
    }

    /// Adds `name=value`, for one of the driver's own item names.
    pub(crate) fn text(&mut self, name: &str, value: &str) {
        self.start(name);
        escape_into(self.head, value.as_bytes(), ITEM_SPECIALS);
    }

    /// Adds `name=value` for any name.
    pub(crate) fn any(&mut self, name: &str, value: &str) {
        self.separate();
        escape_into(self.head, name.as_bytes(), NAME_SPECIALS);
        self.head.put_u8(b'=');
        escape_into(self.head, value.as_bytes(), ITEM_SPECIALS);
    }

    /// Adds `name=<number>`.
    pub(crate) fn number(&mut self, name: &str, value: u64) {
        self.start(name);
        put_number(self.head, value);
    }
}

impl Drop for Items<'_> {
    fn drop(&mut self) {
        self.head.put_u8(b'\n');
    }
}

/// The items of a header value written by [`Items`], name and value still escaped; text
/// without `=` is skipped.
pub(crate) fn items(raw: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    raw.split(|b| *b == b';').filter_map(|item| {
        let eq = find(b'=', item)?;
        Some((&item[..eq], &item[eq + 1..]))
    })
}

/// Writes `value` in decimal.
fn put_number(buffer: &mut BytesMut, value: u64) {
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
    buffer.put_slice(&digits[at..]);
}

/// The octets STOMP 1.2 escapes in headers.
const STOMP_SPECIALS: &[u8] = b"\r\n:\\";
/// Those, and the ones [`Items`] escapes in values.
const ITEM_SPECIALS: &[u8] = b"\r\n:\\;%";
/// Those, and the ones [`Items`] escapes in names.
const NAME_SPECIALS: &[u8] = b"\r\n:\\;%=";

/// Whether `text` holds an octet STOMP 1.2 escapes (`\r`, `\n`, `:`, `\`).
fn needs_escaping(text: &[u8]) -> bool {
    contains_any(text, STOMP_SPECIALS)
}

/// Whether `text` holds one of `specials`. Eight bytes at a time: every header of every SEND
/// passes through here, and almost none needs escaping.
fn contains_any(text: &[u8], specials: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Whether a byte of `word` is zero (the classic bit trick: exact, no false positives
    // once combined with `!word`).
    let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let special = |word: u64| {
        specials
            .iter()
            .any(|byte| has_zero(word ^ (ONES * u64::from(*byte))))
    };
    let mut chunks = text.chunks_exact(8);
    for chunk in &mut chunks {
        if special(u64::from_ne_bytes(chunk.try_into().unwrap_or([0; 8]))) {
            return true;
        }
    }
    // The rest, padded with zero bytes (which are not special).
    let mut last = [0u8; 8];
    let rest = chunks.remainder();
    last[..rest.len()].copy_from_slice(rest);
    special(u64::from_ne_bytes(last))
}

/// Writes `text` with the octets of `specials` escaped: STOMP 1.2 header escaping (`\r`, `\n`,
/// `:` and `\` are the only octets that need it) and, for [`Items`], `%`, `;` and `=` as
/// `%25`, `%3B` and `%3D`.
fn escape_into(buffer: &mut BytesMut, text: &[u8], specials: &[u8]) {
    if !contains_any(text, specials) {
        // The usual case: nothing to escape.
        buffer.put_slice(text);
        return;
    }
    let mut start = 0;
    for (i, byte) in text.iter().enumerate() {
        if !specials.contains(byte) {
            continue;
        }
        let escaped: &[u8] = match byte {
            b'\r' => b"\\r",
            b'\n' => b"\\n",
            b':' => b"\\c",
            b'\\' => b"\\\\",
            b'%' => b"%25",
            b';' => b"%3B",
            _ => b"%3D",
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

/// What the link writes.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame async-stomp encodes.
    Stomp(Message<ToServer>),
    /// A pre-serialized frame, with the receipt id the link gave it, if any.
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

/// What the connection task reads.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A MESSAGE frame, split by the driver.
    Message(RawMessage),
    /// A RECEIPT frame (one per confirmed SEND), split by the driver: its `receipt-id`, still
    /// escaped (the driver's ids never need escaping), or empty when it has none.
    Receipt(Bytes),
    /// Any other frame (CONNECTED, ERROR), parsed by async-stomp.
    Other(Message<FromServer>),
    /// End-of-lines and nothing more yet: a heart-beat, which proves the broker alive.
    Heartbeat,
}

/// A MESSAGE frame as it was read: its header lines, still escaped, and its body. Both share
/// the read buffer's memory.
#[derive(Debug, Clone)]
pub(crate) struct RawMessage {
    /// The header lines (without the command line and the blank line), each ending in `\n`.
    head: Bytes,
    body: Bytes,
}

impl RawMessage {
    /// A message without headers or body, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self {
            head: Bytes::new(),
            body: Bytes::new(),
        }
    }

    /// A message of `subscription` with ack id `ack`, for tests.
    #[cfg(test)]
    pub(crate) fn for_tests_on(subscription: &str, ack: &str) -> Self {
        Self {
            head: Bytes::from(format!("subscription:{subscription}\nack:{ack}\n")),
            body: Bytes::new(),
        }
    }

    /// The headers in frame order, name and value still escaped.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut rest = &self.head[..];
        std::iter::from_fn(move || loop {
            if rest.is_empty() {
                return None;
            }
            let eol = memchr(b'\n', rest).unwrap_or(rest.len());
            let line = &rest[..eol];
            rest = &rest[(eol + 1).min(rest.len())..];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(colon) = find(b':', line) {
                return Some((&line[..colon], &line[colon + 1..]));
            }
        })
    }

    /// The `subscription` and `ack` headers, unescaped, found in one pass.
    pub(crate) fn subscription_and_ack(&self) -> (Option<String>, Option<String>) {
        let (mut subscription, mut ack) = (None, None);
        for (name, value) in self.headers() {
            match name {
                b"subscription" if subscription.is_none() => subscription = Some(unescape(value)),
                b"ack" if ack.is_none() => ack = Some(unescape(value)),
                _ => continue,
            }
            if subscription.is_some() && ack.is_some() {
                break;
            }
        }
        (subscription, ack)
    }

    /// The body (empty when the frame has none).
    pub(crate) fn body(&self) -> Bytes {
        self.body.clone()
    }
}

/// The index of the first `byte` in `text`, for short texts (header names), where a plain loop
/// beats `memchr`'s setup.
fn find(byte: u8, text: &[u8]) -> Option<usize> {
    text.iter().position(|b| *b == byte)
}

/// Undoes STOMP 1.2 header escaping. An undefined escape sequence is kept as it is, as
/// async-stomp does; bytes that are not UTF-8 become U+FFFD (the envelope decoder then sees a
/// malformed value, never a panic).
pub(crate) fn unescape(raw: &[u8]) -> String {
    if !raw.contains(&b'\\') {
        return text(raw.to_vec());
    }
    unescape_slow(raw, false)
}

/// Undoes the escaping of an item of [`Items`]: STOMP's, then `%25`, `%3B` and `%3D`. Any
/// other `%` is kept as it is.
pub(crate) fn unescape_item(raw: &[u8]) -> String {
    if !raw.iter().any(|b| *b == b'\\' || *b == b'%') {
        return text(raw.to_vec());
    }
    unescape_slow(raw, true)
}

fn unescape_slow(raw: &[u8], item: bool) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter();
    while let Some(&byte) = bytes.next() {
        let rest = bytes.as_slice();
        let (unescaped, used) = match (byte, rest) {
            (b'\\', [b'r', ..]) => (b'\r', 1),
            (b'\\', [b'n', ..]) => (b'\n', 1),
            (b'\\', [b'c', ..]) => (b':', 1),
            (b'\\', [b'\\', ..]) => (b'\\', 1),
            (b'%', [b'2', b'5', ..]) if item => (b'%', 2),
            (b'%', [b'3', b'B', ..]) if item => (b';', 2),
            (b'%', [b'3', b'D', ..]) if item => (b'=', 2),
            _ => (byte, 0),
        };
        out.push(unescaped);
        for _ in 0..used {
            bytes.next();
        }
    }
    text(out)
}

/// `bytes` as text, with U+FFFD for what is not UTF-8.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Splits one MESSAGE (or RECEIPT) frame off the front of `src` (which starts at its command
/// line): `None` while it is incomplete.
fn split_message(src: &mut BytesMut, command_end: usize) -> anyhow::Result<Option<RawMessage>> {
    let head_start = command_end + 1;
    let mut at = head_start;
    let mut length: Option<usize> = None;
    // The header lines, up to the blank line.
    let (head_end, body_start) = loop {
        let Some(eol) = memchr(b'\n', &src[at..]) else {
            return Ok(None);
        };
        let line = &src[at..at + eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break (at, at + eol + 1);
        }
        // Lines are only looked into for the body length here; `headers` skips any without
        // a colon.
        if let (None, Some(value)) = (length, line.strip_prefix(b"content-length:")) {
            let value = std::str::from_utf8(value).ok();
            match value.and_then(|v| v.parse().ok()) {
                Some(n) => length = Some(n),
                None => bail!("Parse failed: a MESSAGE with a malformed content-length"),
            }
        }
        at += eol + 1;
    };
    let body_end = match length {
        Some(length) => {
            let end = body_start.saturating_add(length);
            if src.len() <= end {
                return Ok(None);
            }
            if src[end] != 0 {
                bail!("Parse failed: a MESSAGE body is not followed by NUL");
            }
            end
        }
        None => match memchr(0, &src[body_start..]) {
            Some(nul) => body_start + nul,
            None => return Ok(None),
        },
    };
    let frame = src.split_to(body_end + 1).freeze();
    Ok(Some(RawMessage {
        head: frame.slice(head_start..head_end),
        body: frame.slice(body_start..body_end),
    }))
}

impl Decoder for Codec {
    type Item = Inbound;
    type Error = anyhow::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        // Leading end-of-lines are heart-beats (or the optional EOL after a frame's NUL). They
        // are reported when no frame follows yet, so a reader waiting with a deadline for
        // signs of life sees them.
        let beats = src
            .iter()
            .take_while(|b| matches!(b, b'\n' | b'\r'))
            .count();
        src.advance(beats);
        match self.decode_frame(src)? {
            None if beats > 0 => Ok(Some(Inbound::Heartbeat)),
            frame => Ok(frame),
        }
    }
}

impl Codec {
    /// Decodes the frame at the start of `src`, if it is complete.
    fn decode_frame(&mut self, src: &mut BytesMut) -> anyhow::Result<Option<Inbound>> {
        let Some(command_end) = memchr(b'\n', src) else {
            if src.len() > DEFAULT_MAX_FRAME_SIZE {
                bail!("Frame exceeds the maximum of {DEFAULT_MAX_FRAME_SIZE} bytes");
            }
            return Ok(None);
        };
        let command = &src[..command_end];
        let command = command.strip_suffix(b"\r").unwrap_or(command);
        let receipt = match command {
            b"MESSAGE" => false,
            b"RECEIPT" => true,
            _ => return Ok(self.inner.decode(src)?.map(Inbound::Other)),
        };
        match split_message(src, command_end)? {
            Some(frame) if receipt => {
                let id = frame
                    .headers()
                    .find(|(name, _)| *name == b"receipt-id")
                    .map(|(_, value)| frame.head.slice_ref(value))
                    .unwrap_or_default();
                Ok(Some(Inbound::Receipt(id)))
            }
            Some(message) => Ok(Some(Inbound::Message(message))),
            None if src.len() > DEFAULT_MAX_FRAME_SIZE => {
                bail!("Frame exceeds the maximum of {DEFAULT_MAX_FRAME_SIZE} bytes")
            }
            None => Ok(None),
        }
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
                    escape_into(dst, id.as_bytes(), STOMP_SPECIALS);
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
        f.any_header("h-x:y", "1\n2\\3\r");
        f.number("content-length", 3);
        let bytes = encoded(f.finish(Some(Bytes::from_static(b"a\0b"))), Some("r1"));
        assert_eq!(
            bytes,
            b"SEND\ndestination:/queue/a\nh-x\\cy:1\\n2\\\\3\\r\ncontent-length:3\nreceipt:r1\n\na\0b\0"
        );
        assert_eq!(encoded(settle("ACK", "m:1"), None), b"ACK\nid:m\\c1\n\n\0");
    }

    fn read(codec: &mut Codec, buffer: &mut BytesMut) -> Option<Inbound> {
        codec.decode(buffer).unwrap()
    }

    #[test]
    fn messages_are_split_whole_and_only_when_complete() {
        let frames: &[u8] =
            b"\n\nMESSAGE\r\nsubscription:s\\c1\r\nack:a\r\ncontent-length:3\r\n\r\nx\0y\0\n\
            MESSAGE\nsubscription:s2\nh-k:v\n\nplain\0RECEIPT\nreceipt-id:r7\n\n\0";
        let mut codec = Codec::default();
        let mut buffer = BytesMut::new();
        let mut got = Vec::new();
        // Byte by byte: every prefix is incomplete until its frame's NUL arrives.
        for byte in frames {
            buffer.put_u8(*byte);
            while let Some(frame) = read(&mut codec, &mut buffer) {
                if !matches!(frame, Inbound::Heartbeat) {
                    got.push(frame);
                }
            }
        }
        assert_eq!(got.len(), 3);
        let Inbound::Message(first) = &got[0] else {
            panic!("{:?}", got[0])
        };
        assert_eq!(
            first.subscription_and_ack(),
            (Some("s:1".to_owned()), Some("a".to_owned()))
        );
        assert_eq!(&first.body()[..], b"x\0y");
        let Inbound::Message(second) = &got[1] else {
            panic!("{:?}", got[1])
        };
        let headers: Vec<_> = second.headers().collect();
        assert_eq!(
            headers,
            [(&b"subscription"[..], &b"s2"[..]), (b"h-k", b"v")]
        );
        assert_eq!(second.subscription_and_ack(), (Some("s2".to_owned()), None));
        assert_eq!(&second.body()[..], b"plain");
        assert!(matches!(&got[2], Inbound::Receipt(id) if &id[..] == b"r7"));
        assert!(buffer.is_empty());
    }

    #[test]
    fn heart_beats_are_reported_when_no_frame_follows() {
        let mut codec = Codec::default();
        let mut buffer = BytesMut::from(&b"\n\r\n"[..]);
        assert!(matches!(
            read(&mut codec, &mut buffer),
            Some(Inbound::Heartbeat)
        ));
        assert!(read(&mut codec, &mut buffer).is_none());
        // A frame right behind the end-of-lines is what is reported.
        buffer.put_slice(b"\nRECEIPT\nreceipt-id:r1\n\n\0");
        assert!(matches!(
            read(&mut codec, &mut buffer),
            Some(Inbound::Receipt(_))
        ));
        assert!(buffer.is_empty());
    }

    #[test]
    fn broken_messages_are_errors() {
        for bad in [
            &b"MESSAGE\ncontent-length:x\n\n\0"[..],
            b"MESSAGE\ncontent-length:1\n\nab\0",
        ] {
            assert!(Codec::default().decode(&mut BytesMut::from(bad)).is_err());
        }
    }

    #[test]
    fn escaping_is_found_at_every_position() {
        for len in 0..20 {
            let clean = vec![b'a'; len];
            assert!(!needs_escaping(&clean));
            for at in 0..len {
                for special in [b'\r', b'\n', b':', b'\\'] {
                    let mut text = clean.clone();
                    text[at] = special;
                    assert!(needs_escaping(&text), "{special} at {at} of {len}");
                }
            }
        }
        // Bytes next to the special ones (and high bytes, where the bit trick could misfire).
        assert!(!needs_escaping(
            b"\x0b\x0c\x0e\x09;9[]\xff\x80\xbb\x5b\x5d\x3b\x39"
        ));
    }

    #[test]
    fn item_escaping_is_found_at_every_position() {
        for len in 0..20 {
            let clean = vec![b'a'; len];
            assert!(!contains_any(&clean, ITEM_SPECIALS));
            for at in 0..len {
                for special in [b';', b'%'] {
                    let mut text = clean.clone();
                    text[at] = special;
                    assert!(
                        contains_any(&text, ITEM_SPECIALS),
                        "{special} at {at} of {len}"
                    );
                    assert!(!needs_escaping(&text));
                }
            }
        }
    }

    #[test]
    fn items_round_trip_any_text() {
        let texts = [
            "",
            "plain",
            "a;b",
            "%",
            "%3B",
            "%25;",
            "=",
            "x:\n\r\\y",
            "é;%=\\c",
        ];
        let mut f = FrameBuilder::new("X", 8);
        {
            let mut list = f.items("l");
            for (i, text) in texts.iter().enumerate() {
                list.text(&format!("n{i}"), text);
                list.any(&format!("={text}"), "");
            }
            list.number("n", 42);
        }
        f.number("after", 1);
        let frame = f.finish(None);
        let head = std::str::from_utf8(&frame.head).unwrap();
        let line = head.lines().nth(1).unwrap();
        assert_eq!(head.lines().nth(2), Some("after:1"));
        let value = line.strip_prefix("l:").unwrap().as_bytes();
        let read: Vec<(String, String)> = items(value)
            .map(|(n, v)| (unescape_item(n), unescape_item(v)))
            .collect();
        let mut want: Vec<(String, String)> = texts
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                [
                    (format!("n{i}"), (*t).to_owned()),
                    (format!("={t}"), String::new()),
                ]
            })
            .collect();
        want.push(("n".into(), "42".into()));
        assert_eq!(read, want);
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape(b"a\\c\\n\\r\\\\b"), "a:\n\r\\b");
        assert_eq!(unescape(b"C\\temp\\"), "C\\temp\\");
        assert_eq!(unescape(b"\xff"), "\u{fffd}");
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
