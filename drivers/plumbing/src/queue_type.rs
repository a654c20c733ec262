//! RabbitMQ's queue types for the queues that outlive their subscribers (durable groups, and on
//! AMQP dead letters), chosen the same way on every driver: `?queue-type=classic|quorum`, and
//! quorum by default on a URL that lists several nodes.

use tidings_core::broker_url::Node;
use tidings_core::{BrokerUrl, Error, ErrorKind, Result};

/// The URL option.
pub const OPTION: &str = "queue-type";

/// The delivery limit declared on quorum queues: out of reach, so RabbitMQ never drops or
/// dead-letters a message on its own (attempts and dead letters are tidings' policy). The
/// largest value its 32-bit argument takes; `-1`, which RabbitMQ 4 reads as "no limit", is not
/// understood so by RabbitMQ 3.
pub const DELIVERY_LIMIT: i32 = i32::MAX;

/// The type of a queue that outlives its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Lives on one node: out of reach (until that node returns) when the node dies.
    Classic,
    /// Replicated over the cluster's nodes (Raft): survives the loss of a minority of them.
    Quorum,
}

impl QueueType {
    /// Takes `?queue-type=` out of `url`: `None` when the URL does not say.
    pub fn take(url: &mut BrokerUrl, driver: &str) -> Result<Option<Self>> {
        match url.take(OPTION).as_deref() {
            None => Ok(None),
            Some("classic") => Ok(Some(Self::Classic)),
            Some("quorum") => Ok(Some(Self::Quorum)),
            Some(other) => Err(Error::new(
                ErrorKind::InvalidUrl,
                format!("{OPTION}={other:?}: the {driver} driver knows `classic` and `quorum`"),
            )),
        }
    }

    /// The type used when the URL does not say: quorum for a cluster (a durable group must
    /// survive the loss of a node), classic for one node (replication buys nothing there and
    /// costs a Raft write per message).
    pub fn default_for(nodes: &[Node]) -> Self {
        if nodes.len() > 1 {
            Self::Quorum
        } else {
            Self::Classic
        }
    }

    /// The `x-queue-type` argument's value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }

    /// What to say when the broker refused to declare a queue of this type because it exists
    /// with another (`refusal` is the broker's text); `None` when that is not why.
    pub fn mismatch(self, refusal: &str, queue: &str) -> Option<String> {
        let existing = existing_type(refusal)?;
        Some(format!(
            "the queue {queue} already exists as a {existing} queue and this url declares {} \
             queues: use ?{OPTION}={existing}, or move its messages and delete it",
            self.name()
        ))
    }
}

/// The type of an existing queue, from RabbitMQ's refusal of a declaration of another type:
/// `inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received the value 'quorum' of
/// type 'longstr' but current is none` (no argument: classic).
fn existing_type(refusal: &str) -> Option<String> {
    let (_, about_type) = refusal.split_once("inequivalent arg 'x-queue-type'")?;
    let (_, current) = about_type.split_once("but current is ")?;
    if current.starts_with("none") {
        return Some(QueueType::Classic.name().to_owned());
    }
    current.split('\'').nth(1).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> BrokerUrl {
        BrokerUrl::parse(text, "t", &["amqp"]).unwrap()
    }

    #[test]
    fn quorum_is_the_default_on_a_host_list_and_the_url_can_say_otherwise() {
        let mut one = url("amqp://h1");
        assert_eq!(QueueType::take(&mut one, "t").unwrap(), None);
        assert_eq!(QueueType::default_for(one.nodes()), QueueType::Classic);
        let cluster = url("amqp://h1,h2");
        assert_eq!(QueueType::default_for(cluster.nodes()), QueueType::Quorum);
        let mut said = url("amqp://h1,h2/?queue-type=classic&x=1");
        assert_eq!(
            QueueType::take(&mut said, "t").unwrap(),
            Some(QueueType::Classic)
        );
        assert!(said.reject_unknown(&["x"]).is_ok(), "the option was taken");
        let e = QueueType::take(&mut url("amqp://h/?queue-type=stream"), "amqp091").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUrl);
        assert!(
            e.to_string()
                .contains("the amqp091 driver knows `classic` and `quorum`"),
            "{e}"
        );
    }

    #[test]
    fn a_refusal_for_another_type_names_both() {
        let classic = "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in \
                       vhost '/': received the value 'quorum' of type 'longstr' but current is none";
        let said = QueueType::Quorum.mismatch(classic, "q").unwrap();
        assert!(
            said.contains("exists as a classic queue and this url declares quorum queues")
                && said.contains("?queue-type=classic"),
            "{said}"
        );
        let quorum = "inequivalent arg 'x-queue-type' for queue 'q' in vhost '/': received none \
                      but current is the value 'quorum' of type 'longstr'";
        assert!(QueueType::Classic
            .mismatch(quorum, "q")
            .unwrap()
            .contains("exists as a quorum queue"));
        assert_eq!(
            QueueType::Quorum.mismatch("inequivalent arg 'durable'", "q"),
            None
        );
    }
}
