//! Apache ActiveMQ 5 ("classic").
//!
//! Every publish goes to the Virtual Topic `VirtualTopic.<namespace>.<key>`. A broadcast
//! subscription is a plain topic subscriber of `VirtualTopic.<namespace>.<pattern>`; a group is
//! the Virtual Topic consumer queue `Consumer.<group>.VirtualTopic.<namespace>.<pattern>`, which
//! ActiveMQ fills from every matching topic and keeps while no member runs. ActiveMQ wildcards
//! are `*` (one word) and `>` (the rest, zero or more words, last position only); a `#` that is
//! not last subscribes from that point on with `>` and the driver filters with the core matcher,
//! acking what does not match. ActiveMQ's NACK moves a message to `ActiveMQ.DLQ`, so the driver
//! never NACKs: it gives messages back by sending a copy to the queue. Group names may hold
//! dots, which would break the `Consumer.*.` match, so dots become `~` there. Messages are sent
//! with `content-length`, which keeps them binary (BytesMessage); `expires` is absolute.

use tidings_core::{Capabilities, Mode, Pattern, Segment};

use super::{Dialect, GiveBack, Plan};

/// The ActiveMQ dialect.
#[derive(Debug)]
pub(crate) struct ActiveMq;

/// The narrowest native pattern for `pattern`, and whether it is wider (needs filtering).
pub(crate) fn native_pattern(pattern: &Pattern) -> (String, bool) {
    let segments = pattern.segments();
    let mut words = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Word(w) => words.push(&**w),
            Segment::One => words.push("*"),
            Segment::Many => {
                words.push(">");
                return (words.join("."), i + 1 != segments.len());
            }
        }
    }
    (words.join("."), false)
}

/// Group names may hold dots; `~` cannot appear in a name, so the mapping is one to one.
fn group_word(name: &str) -> String {
    name.replace('.', "~")
}

impl Dialect for ActiveMq {
    fn publish_destination(&self, namespace: &str, key: &str) -> String {
        format!("/topic/VirtualTopic.{namespace}.{key}")
    }

    fn subscription(&self, namespace: &str, pattern: &Pattern, mode: &Mode, _unique: &str) -> Plan {
        let (native, filter) = native_pattern(pattern);
        match mode {
            Mode::Broadcast => Plan {
                destination: format!("/topic/VirtualTopic.{namespace}.{native}"),
                headers: Vec::new(),
                filter,
                retry: GiveBack::Local,
                requeue: GiveBack::Local,
            },
            Mode::Group { name, .. } => {
                let destination = format!(
                    "/queue/Consumer.{}.VirtualTopic.{namespace}.{native}",
                    group_word(name)
                );
                Plan {
                    destination: destination.clone(),
                    headers: Vec::new(),
                    filter,
                    retry: GiveBack::Republish(destination.clone()),
                    requeue: GiveBack::Republish(destination),
                }
            }
        }
    }

    fn inbox(&self, namespace: &str, unique: &str) -> (Plan, String) {
        // `tidings-private.>` queues are garbage-collected once unused (scripts/brokers.sh).
        let destination = format!("/queue/tidings-private.{namespace}.inbox.{unique}");
        let plan = Plan {
            destination: destination.clone(),
            headers: Vec::new(),
            filter: false,
            retry: GiveBack::Local,
            requeue: GiveBack::Local,
        };
        (plan, destination)
    }

    fn is_inbox_address(&self, namespace: &str, address: &str) -> bool {
        address
            .strip_prefix("/queue/tidings-private.")
            .and_then(|q| q.strip_prefix(namespace))
            .is_some_and(|q| {
                q.starts_with(".inbox.") && !q.contains(['*', '>', ',']) && !q.contains("..")
            })
    }

    fn dead_letters(&self, namespace: &str, name: &str) -> Plan {
        let destination = format!("/queue/tidings-dead.{namespace}.{name}");
        Plan {
            destination: destination.clone(),
            headers: Vec::new(),
            filter: false,
            retry: GiveBack::Republish(destination.clone()),
            requeue: GiveBack::Republish(destination),
        }
    }

    fn expiry_header(&self, _remaining_ms: u64, deadline_ms: u64) -> (&'static str, u64) {
        ("expires", deadline_ms)
    }

    fn prefetch_header(&self) -> &'static str {
        "activemq.prefetchSize"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            mandatory: false,
            max_body: 16 * 1024 * 1024,
            notes: vec![(
                "mandatory",
                "ActiveMQ acknowledges a SEND to a topic nobody subscribes to; STOMP cannot tell",
            )],
            ..Capabilities::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(p: &str) -> (String, bool) {
        native_pattern(&Pattern::new(p).unwrap())
    }

    #[test]
    fn patterns_translate_to_the_narrowest_native_one() {
        assert_eq!(native("a.b"), ("a.b".into(), false));
        assert_eq!(native("a.*.c"), ("a.*.c".into(), false));
        assert_eq!(native("a.#"), ("a.>".into(), false));
        assert_eq!(native("#"), (">".into(), false));
        assert_eq!(native("a.#.c"), ("a.>".into(), true));
        assert_eq!(native("#.c"), (">".into(), true));
    }
}
