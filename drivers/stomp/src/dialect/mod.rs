//! What differs between STOMP brokers, in one small "dialect" per broker.
//!
//! STOMP fixes the frames but not what a destination means, how a queue is shared, how a TTL
//! or prefetch is written, or what NACK does. Each dialect answers those questions for its
//! broker; everything else in the driver is broker-neutral. The dialect is picked from the
//! CONNECTED frame's `server` header, or forced with `?dialect=` in the URL. See
//! `docs/brokers/rabbitmq.md` and `docs/brokers/activemq.md`.

mod activemq;
mod rabbitmq;

use std::fmt;

use tidings_core::driver::Mode;
use tidings_core::{Capabilities, Pattern};

pub(crate) use activemq::ActiveMq;
pub(crate) use rabbitmq::RabbitMq;

/// The brokers the driver knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DialectKind {
    /// RabbitMQ's STOMP plugin.
    RabbitMq,
    /// Apache ActiveMQ 5 ("classic").
    ActiveMq,
}

impl DialectKind {
    /// From the URL's `dialect=` option.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "rabbitmq" | "rabbit" => Some(Self::RabbitMq),
            "activemq" => Some(Self::ActiveMq),
            _ => None,
        }
    }

    /// From the CONNECTED frame's `server` header, e.g. `RabbitMQ/3.10.8`, `ActiveMQ/5.17.2`.
    pub(crate) fn from_server(server: &str) -> Option<Self> {
        let product = server.split('/').next().unwrap_or("").to_ascii_lowercase();
        match product.as_str() {
            "rabbitmq" => Some(Self::RabbitMq),
            "activemq" => Some(Self::ActiveMq),
            _ => None,
        }
    }

    /// The dialect itself; `quorum`: durable groups are quorum queues (RabbitMQ only).
    pub(crate) fn dialect(self, quorum: bool) -> Box<dyn Dialect> {
        match self {
            Self::RabbitMq => Box::new(RabbitMq { quorum }),
            Self::ActiveMq => Box::new(ActiveMq),
        }
    }
}

/// How a delivery that must go back to its queue gets there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GiveBack {
    /// Send a copy straight to this queue destination (confirmed), then `ACK` the original.
    Republish(String),
    /// The queue is private to this subscription and dies with it, so `ACK` it and hand the
    /// copy to the same consumer again, in-process.
    Local,
}

/// How to open one subscription on the broker.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The SUBSCRIBE destination.
    pub(crate) destination: String,
    /// Extra SUBSCRIBE headers (queue naming and properties).
    pub(crate) headers: Vec<(String, String)>,
    /// The broker pattern is wider than the tidings one: filter with `Pattern::matches`.
    pub(crate) filter: bool,
    /// Where `Outcome::Retry` copies go.
    pub(crate) retry: GiveBack,
    /// How `Outcome::Requeue` gives a delivery back.
    pub(crate) requeue: GiveBack,
}

/// One broker's answers. Every name passed in is already validated by the core (words of
/// ASCII letters, digits, `_`, `-`, joined by dots).
pub(crate) trait Dialect: Send + Sync + fmt::Debug + 'static {
    /// The SEND destination of a publish under `key`: the same prefix for every key, then the
    /// key (the wire format leaves the key out of such a SEND and reads the key back from
    /// the destination, see `wire::KeyedTopics`).
    fn publish_destination(&self, namespace: &str, key: &str) -> String;

    /// How to subscribe to `pattern` in `mode`; `unique` is unique per subscription.
    fn subscription(&self, namespace: &str, pattern: &Pattern, mode: &Mode, unique: &str) -> Plan;

    /// How to open an RPC inbox, and the address senders use for it.
    fn inbox(&self, namespace: &str, unique: &str) -> (Plan, String);

    /// Whether `address` (from a request's `reply_to`, so from the wire) is exactly the form of
    /// an inbox the driver opens in `namespace` (see [`is_inbox_id`]). Such replies go out on
    /// the connection that serves; any other address goes through
    /// [`check_reply_address`](Dialect::check_reply_address) and a connection of its own.
    fn is_inbox_address(&self, namespace: &str, address: &str) -> bool;

    /// Whether `address`, from a request's `reply_to` that is not a tidings inbox (a plain
    /// STOMP caller's), is a destination this broker can take a reply to. `Err` says why not;
    /// [`check_address`] has passed already.
    fn check_reply_address(&self, address: &str) -> Result<(), String>;

    /// How to consume the dead-letter queue `name`; its `destination` is also where dead
    /// letters are sent.
    fn dead_letters(&self, namespace: &str, name: &str) -> Plan;

    /// The header that makes a message expire: given the time left and the absolute deadline.
    fn expiry_header(&self, remaining_ms: u64, deadline_ms: u64) -> (&'static str, u64);

    /// The SUBSCRIBE header that sets prefetch.
    fn prefetch_header(&self) -> &'static str;

    /// What this broker supports through STOMP.
    fn capabilities(&self) -> Capabilities;
}

/// The longest reply address taken from the wire. Names on both brokers are far shorter
/// (RabbitMQ: queue, exchange and routing key at most 255 bytes each).
const MAX_ADDRESS: usize = 1024;

/// What every broker needs of a reply address from the wire, before the dialect's own checks:
/// not empty (ActiveMQ drops the connection), not absurdly long, and no control characters
/// (a newline is escaped on the wire, but no broker destination holds one).
pub(crate) fn check_address(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("it is empty".into());
    }
    if address.len() > MAX_ADDRESS {
        return Err(format!(
            "it is {} bytes long (at most {MAX_ADDRESS})",
            address.len()
        ));
    }
    if let Some(c) = address.chars().find(|c| c.is_control()) {
        return Err(format!("it holds the control character {c:?}"));
    }
    Ok(())
}

/// Whether `id` has the form of the unique part of the driver's own inbox names (hex words
/// joined by `-`; anything of ASCII letters, digits and `-` passes), so that a reply to an
/// inbox address can never carry a character the broker refuses.
pub(crate) fn is_inbox_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `address` split into the first of `prefixes` it starts with and the rest.
pub(crate) fn split_prefix<'a>(
    address: &'a str,
    prefixes: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    prefixes
        .iter()
        .find_map(|p| address.strip_prefix(p).map(|rest| (*p, rest)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_addresses_are_refused_before_any_dialect_looks() {
        assert!(check_address("/queue/a").is_ok());
        assert!(check_address("/remote-temp-queue/ID:vm-1-2:3:1").is_ok());
        assert!(check_address("/queue/a b\\c:d é").is_ok());
        for bad in ["", "/queue/a\nb", "/queue/a\rb", "/queue/\0", "/queue/a\tb"] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
        assert!(check_address(&format!("/queue/{}", "x".repeat(2000))).is_err());
    }

    #[test]
    fn inbox_ids_are_the_drivers_own_form() {
        let id = format!("{}-7", tidings_core::envelope::new_id());
        assert!(is_inbox_id(&id), "{id}");
        for bad in ["", "a/b", "a.b", "a*", "a>", "a,b", "a b", "a\nb"] {
            assert!(!is_inbox_id(bad), "{bad:?}");
        }
    }
}
