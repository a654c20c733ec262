//! The message as it travels: payload bytes plus everything a driver must carry.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// Header names tidings itself uses. They all start with `tidings-`, which user headers may not
/// use, so the two never collide.
pub mod headers {
    /// The prefix reserved for tidings' own headers.
    pub const RESERVED_PREFIX: &str = "tidings-";
    /// Why a message was dead-lettered.
    pub const DEAD_REASON: &str = "tidings-dead-reason";
    /// When a message was dead-lettered, in milliseconds since the Unix epoch.
    pub const DEAD_AT: &str = "tidings-dead-at";
    /// The subscription (group) a dead letter came from.
    pub const DEAD_FROM: &str = "tidings-dead-from";
    /// RPC reply status: `ok` or `error`.
    pub const REPLY_STATUS: &str = "tidings-status";
    /// The servers that declined an RPC request, on the copy given back to the service's group
    /// and on a reply saying every server declined: a JSON array of
    /// `{"server": <instance id>, "emitter": <host.kind.id>, "reason": <text>}`, oldest first
    /// (see [`Decline`](crate::rpc::Decline)).
    pub const DECLINED_BY: &str = "tidings-declined-by";

    use crate::error::{Error, ErrorKind, Result};

    /// Rejects a header name a user may not set: empty, or starting (in any case) with the
    /// reserved prefix.
    pub fn check_user_name(name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::new(ErrorKind::InvalidConfig, "header name is empty"));
        }
        if name.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "header name {name:?} starts with the reserved prefix {RESERVED_PREFIX:?}; \
                     choose another name"
                ),
            ));
        }
        Ok(())
    }
}

/// A message with its metadata. Drivers map every field onto their transport (see
/// `docs/wire-format.md`) and must give back exactly what was published.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id of this message, kept across redeliveries.
    pub id: String,
    /// The routing key it was published under.
    pub routing_key: String,
    /// The event name ([`crate::Event::NAME`]), empty when the sender did not say. A `Cow` so the
    /// usual `&'static` name costs no allocation per message.
    pub event: Cow<'static, str>,
    /// Application headers; names starting with `tidings-` are reserved.
    pub headers: BTreeMap<String, String>,
    /// MIME type of the body, which selects the codec on receipt (`Cow` for the same reason).
    pub content_type: Cow<'static, str>,
    /// The encoded payload.
    pub body: Bytes,
    /// When it was first published, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// How long it may wait in a queue before it expires.
    pub ttl: Option<Duration>,
    /// Pairs an RPC reply with its request.
    pub correlation_id: Option<String>,
    /// Where an RPC reply should be sent (a driver-specific inbox address).
    pub reply_to: Option<String>,
    /// Who published it: `host.type.id`.
    pub emitter: String,
    /// Which delivery attempt this is, starting at 1.
    pub attempt: u32,
}

impl Envelope {
    /// A new envelope with a fresh id, the current time and attempt 1.
    pub fn new(
        routing_key: impl Into<String>,
        content_type: impl Into<Cow<'static, str>>,
        body: Bytes,
    ) -> Self {
        Self {
            id: new_id(),
            routing_key: routing_key.into(),
            event: Cow::Borrowed(""),
            headers: BTreeMap::new(),
            content_type: content_type.into(),
            body,
            timestamp_ms: now_ms(),
            ttl: None,
            correlation_id: None,
            reply_to: None,
            emitter: String::new(),
            attempt: 1,
        }
    }

    /// Whether the TTL has run out at `now_ms`.
    pub fn is_expired_at(&self, now_ms: u64) -> bool {
        match self.ttl {
            Some(ttl) => now_ms >= self.timestamp_ms.saturating_add(ttl.as_millis() as u64),
            None => false,
        }
    }

    /// Turns this envelope into its dead letter: the same message with the reason, the time
    /// and the subscription it failed in added as headers. Routing key, id and attempt count
    /// are kept, so the dead letter can be read back and replayed.
    #[must_use]
    pub fn into_dead_letter(mut self, reason: &str, from: &str) -> Self {
        self.headers
            .insert(headers::DEAD_REASON.into(), reason.to_owned());
        self.headers
            .insert(headers::DEAD_AT.into(), now_ms().to_string());
        self.headers
            .insert(headers::DEAD_FROM.into(), from.to_owned());
        self.ttl = None;
        self
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process-unique, globally unlikely-to-collide id: a random 64-bit prefix fixed per process
/// plus a counter. Cheaper than a random UUID per message and just as unique in practice.
pub fn new_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| format!("{:016x}-", random_u64()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Hand-rolled hex: this runs once per message, and `format!` is several times slower.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    let mut id = String::with_capacity(prefix.len() + digits as usize);
    id.push_str(prefix);
    for shift in (0..digits).rev() {
        id.push(HEX[(n >> (shift * 4)) as usize & 0xf] as char);
    }
    id
}

/// 64 random bits from the standard library's randomly seeded hasher (no extra dependency).
fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_hex() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        let (prefix, counter) = a.split_once('-').unwrap();
        assert_eq!(prefix.len(), 16);
        assert!(u64::from_str_radix(prefix, 16).is_ok());
        // Other tests mint ids concurrently, so `b` is later than `a` but not always next.
        assert!(
            u64::from_str_radix(counter, 16).unwrap()
                < u64::from_str_radix(b.split_once('-').unwrap().1, 16).unwrap()
        );
    }

    #[test]
    fn ttl_expiry_is_relative_to_publish_time() {
        let mut e = Envelope::new("a", "x", Bytes::new());
        e.timestamp_ms = 1000;
        e.ttl = Some(Duration::from_millis(500));
        assert!(!e.is_expired_at(1499));
        assert!(e.is_expired_at(1500));
    }
}
