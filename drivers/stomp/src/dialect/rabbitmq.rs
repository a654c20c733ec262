//! RabbitMQ's STOMP plugin.
//!
//! Publishes go to the `amq.topic` exchange (`/topic/<namespace>.<key>`), which always exists,
//! so nothing has to be declared out of band; the namespace word keeps buses apart. Subscribing
//! to `/topic/<namespace>.<pattern>` binds a queue with AMQP `*`/`#`, which are exactly tidings'
//! semantics, so no filtering is ever needed. The queue is named with `x-queue-name`: a group
//! shares `<namespace>.group.<name>` (durable or auto-deleted), a broadcast subscription gets
//! its own auto-deleted queue. Inboxes and dead-letter queues are plain queues reached through
//! the default exchange. NACK would requeue, but marks the message `redelivered`, which the
//! driver reads as "its consumer died" (attempt + 1), so requeue sends a copy instead.

use tidings_core::driver::{Capability, Mode};
use tidings_core::{Capabilities, Pattern};

use super::{is_inbox_id, split_prefix, Dialect, GiveBack, Plan};

/// The destinations a reply may go to, as RabbitMQ's STOMP plugin names them.
const REPLY_PREFIXES: &[&str] = &[
    "/queue/",
    "/amq/queue/",
    "/reply-queue/",
    "/topic/",
    "/exchange/",
    "/temp-queue/",
];

/// The forms of [`REPLY_PREFIXES`], for errors.
const REPLY_FORMS: &[&str] = &[
    "/queue/<name>",
    "/amq/queue/<name>",
    "/reply-queue/<name> (what RabbitMQ puts in the place of a `reply-to:/temp-queue/<name>` header)",
    "/topic/<routing key>",
    "/exchange/<exchange>[/<routing key>]",
];

/// Why a `/temp-queue/` address cannot be replied to.
const TEMP_QUEUE: &str = "a /temp-queue/ destination means a queue of the connection that \
    sends to it; a caller's temporary queue is reached only through the /reply-queue/<name> \
    address RabbitMQ puts in its place when the caller gives it in STOMP's own `reply-to` \
    header (not in the `tidings` header's `reply-to` item)";

/// The RabbitMQ dialect.
#[derive(Debug, Default)]
pub(crate) struct RabbitMq {
    /// Durable groups are quorum queues (`x-queue-type:quorum`), replicated over a cluster's
    /// nodes, rather than classic queues that live on one node.
    pub(crate) quorum: bool,
}

fn queue_headers(name: &str, durable: bool) -> Vec<(String, String)> {
    vec![
        ("x-queue-name".into(), name.into()),
        ("durable".into(), durable.to_string()),
        ("auto-delete".into(), (!durable).to_string()),
    ]
}

impl RabbitMq {
    /// The SUBSCRIBE headers of a group's queue. RabbitMQ's STOMP plugin declares the queue
    /// with the `x-queue-type` header as its argument; it takes no `x-delivery-limit` (3.x
    /// quorum queues have no limit unless a policy sets one; see docs/brokers/rabbitmq-cluster.md).
    fn group_headers(&self, name: &str, durable: bool) -> Vec<(String, String)> {
        let mut headers = queue_headers(name, durable);
        if durable && self.quorum {
            headers.push(("x-queue-type".into(), "quorum".into()));
        }
        headers
    }
}

impl Dialect for RabbitMq {
    fn publish_destination(&self, namespace: &str, key: &str) -> String {
        format!("/topic/{namespace}.{key}")
    }

    fn subscription(&self, namespace: &str, pattern: &Pattern, mode: &Mode, unique: &str) -> Plan {
        let destination = format!("/topic/{namespace}.{}", pattern.as_str());
        match mode.group() {
            None => Plan {
                destination,
                headers: queue_headers(&format!("{namespace}.broadcast.{unique}"), false),
                filter: false,
                retry: GiveBack::Local,
                requeue: GiveBack::Local,
            },
            Some((name, durable)) => {
                let queue = format!("{namespace}.group.{name}");
                Plan {
                    destination,
                    headers: self.group_headers(&queue, durable),
                    filter: false,
                    retry: GiveBack::Republish(format!("/amq/queue/{queue}")),
                    requeue: GiveBack::Republish(format!("/amq/queue/{queue}")),
                }
            }
        }
    }

    fn inbox(&self, namespace: &str, unique: &str) -> (Plan, String) {
        let queue = format!("{namespace}.inbox.{unique}");
        let plan = Plan {
            destination: format!("/queue/{queue}"),
            headers: vec![
                ("durable".into(), "false".into()),
                ("auto-delete".into(), "true".into()),
            ],
            filter: false,
            retry: GiveBack::Local,
            requeue: GiveBack::Local,
        };
        // `/amq/queue/` never declares: a reply to a gone inbox is dropped by the broker.
        (plan, format!("/amq/queue/{queue}"))
    }

    fn is_inbox_address(&self, namespace: &str, address: &str) -> bool {
        address
            .strip_prefix("/amq/queue/")
            .and_then(|q| q.strip_prefix(namespace))
            .and_then(|q| q.strip_prefix(".inbox."))
            .is_some_and(is_inbox_id)
    }

    fn check_reply_address(&self, address: &str) -> Result<(), String> {
        let Some((kind, rest)) = split_prefix(address, REPLY_PREFIXES) else {
            return Err(format!(
                "RabbitMQ takes a reply at {}",
                REPLY_FORMS.join(", ")
            ));
        };
        match kind {
            "/temp-queue/" => Err(TEMP_QUEUE.into()),
            "/exchange/" => {
                let (exchange, key) = rest.split_once('/').unwrap_or((rest, ""));
                if exchange.is_empty() {
                    Err("it names no exchange (/exchange/<exchange>[/<routing key>])".into())
                } else if key.contains('/') {
                    Err("its routing key holds a `/`, which RabbitMQ refuses".into())
                } else {
                    Ok(())
                }
            }
            _ if rest.is_empty() => Err(format!("it names nothing after {kind}")),
            _ if rest.contains('/') => Err(format!(
                "the name after {kind} holds a `/`, which RabbitMQ refuses"
            )),
            "/queue/" if rest.starts_with("amq.") => Err(
                "RabbitMQ reserves queue names starting with `amq.` (a server-named queue is \
                 reached as /amq/queue/<name> or /reply-queue/<name>)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    fn dead_letters(&self, namespace: &str, name: &str) -> Plan {
        let destination = format!("/queue/{namespace}.dead.{name}");
        Plan {
            destination: destination.clone(),
            // `/queue/` declares a durable, non-auto-deleted queue on SEND and SUBSCRIBE alike.
            headers: Vec::new(),
            filter: false,
            retry: GiveBack::Republish(destination.clone()),
            requeue: GiveBack::Republish(destination),
        }
    }

    fn expiry_header(&self, remaining_ms: u64, _deadline_ms: u64) -> (&'static str, u64) {
        ("expiration", remaining_ms)
    }

    fn prefetch_header(&self) -> &'static str {
        "prefetch-count"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
            .with_max_body(16 * 1024 * 1024)
            .without(
                Capability::Mandatory,
                "RabbitMQ's STOMP plugin has no mandatory flag and returns a receipt even when no \
                 queue took the message",
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_to_every_destination_a_stomp_client_can_name() {
        for ok in [
            "/queue/replies",
            "/queue/a.b-c_d",
            "/amq/queue/amq.gen-x",
            "/reply-queue/amq.gen-HxoYNEPKjIPtRBgcru_CfQ",
            "/topic/a.b",
            "/exchange/amq.direct",
            "/exchange/amq.topic/a.b",
            "/exchange/x/",
        ] {
            assert_eq!(RabbitMq::default().check_reply_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/temp-queue/x",
            "/queue/",
            "/queue/a/b",
            "/queue/amq.x",
            "/amq/queue/",
            "/topic/a/b",
            "/exchange/",
            "/exchange//k",
            "/exchange/x/a/b",
            "/foo/bar",
            "queue",
        ] {
            let why = RabbitMq::default().check_reply_address(bad).unwrap_err();
            assert!(!why.is_empty(), "{bad}");
        }
    }

    #[test]
    fn durable_groups_are_quorum_queues_when_asked() {
        let pattern = Pattern::new("a.#").unwrap();
        let quorum = RabbitMq { quorum: true };
        let headers = |dialect: &RabbitMq, mode: &Mode| {
            dialect.subscription("ns", &pattern, mode, "u").headers
        };
        let group = |durable: bool| Mode::Group {
            name: "g".into(),
            durable,
        };
        let durable = group(true);
        let h = headers(&quorum, &durable);
        assert!(
            h.contains(&("x-queue-type".into(), "quorum".into())),
            "{h:?}"
        );
        assert!(h.contains(&("durable".into(), "true".into())), "{h:?}");
        assert!(h.contains(&("auto-delete".into(), "false".into())), "{h:?}");
        // Classic by default; never for what dies with its subscribers.
        let classic = headers(&RabbitMq::default(), &durable);
        assert!(
            !classic.iter().any(|(k, _)| k == "x-queue-type"),
            "{classic:?}"
        );
        for mode in [Mode::Broadcast, group(false)] {
            let h = headers(&quorum, &mode);
            assert!(
                !h.iter().any(|(k, _)| k == "x-queue-type"),
                "{mode:?}: {h:?}"
            );
        }
    }

    #[test]
    fn only_the_drivers_own_inboxes_are_inboxes() {
        let (_, address) = RabbitMq::default().inbox("ns", "06a4184b6f2c6e1d-5-0");
        assert!(
            RabbitMq::default().is_inbox_address("ns", &address),
            "{address}"
        );
        for other in [
            "/amq/queue/ns.inbox.",
            "/amq/queue/ns.inbox.x/y",
            "/amq/queue/ns.inbox.x.y",
            "/amq/queue/ns2.inbox.x",
            "/amq/queue/other.inbox.x",
            "/queue/ns.inbox.x",
        ] {
            assert!(
                !RabbitMq::default().is_inbox_address("ns", other),
                "{other}"
            );
        }
    }
}
