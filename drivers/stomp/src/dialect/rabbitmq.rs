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

use tidings_core::{Capabilities, Mode, Pattern};

use super::{Dialect, GiveBack, Plan};

/// The RabbitMQ dialect.
#[derive(Debug)]
pub(crate) struct RabbitMq;

fn queue_headers(name: &str, durable: bool) -> Vec<(String, String)> {
    vec![
        ("x-queue-name".into(), name.into()),
        ("durable".into(), durable.to_string()),
        ("auto-delete".into(), (!durable).to_string()),
    ]
}

impl Dialect for RabbitMq {
    fn publish_destination(&self, namespace: &str, key: &str) -> String {
        format!("/topic/{namespace}.{key}")
    }

    fn subscription(&self, namespace: &str, pattern: &Pattern, mode: &Mode, unique: &str) -> Plan {
        let destination = format!("/topic/{namespace}.{}", pattern.as_str());
        match mode {
            Mode::Broadcast => Plan {
                destination,
                headers: queue_headers(&format!("{namespace}.broadcast.{unique}"), false),
                filter: false,
                retry: GiveBack::Local,
                requeue: GiveBack::Local,
            },
            Mode::Group { name, durable } => {
                let queue = format!("{namespace}.group.{name}");
                Plan {
                    destination,
                    headers: queue_headers(&queue, *durable),
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
            .is_some_and(|q| q.starts_with(".inbox."))
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
        Capabilities {
            mandatory: false,
            max_body: 16 * 1024 * 1024,
            notes: vec![(
                "mandatory",
                "RabbitMQ's STOMP plugin has no mandatory flag and returns a receipt even when no \
                 queue took the message",
            )],
            ..Capabilities::default()
        }
    }
}
