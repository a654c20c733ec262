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

use tidings_core::driver::{Capability, Mode};
use tidings_core::{Capabilities, Pattern, Segment};

use super::{is_inbox_id, split_prefix, Dialect, GiveBack, Plan};

/// The destinations a reply may go to, as ActiveMQ's STOMP connector names them.
const REPLY_PREFIXES: &[&str] = &[
    "/queue/",
    "/topic/",
    "/remote-temp-queue/",
    "/remote-temp-topic/",
    "/temp-queue/",
    "/temp-topic/",
];

/// The forms of [`REPLY_PREFIXES`], for errors.
const REPLY_FORMS: &[&str] = &[
    "/queue/<name>",
    "/topic/<name>",
    "/remote-temp-queue/<id> and /remote-temp-topic/<id> (what ActiveMQ puts in the place of a \
     `reply-to:/temp-queue/<name>` header)",
];

/// Why a `/temp-queue/` or `/temp-topic/` address cannot be replied to.
const TEMP_DESTINATION: &str = "a /temp-queue/ or /temp-topic/ destination means one of the \
    connection that sends to it; a caller's temporary destination is reached only through the \
    /remote-temp-queue/<id> address ActiveMQ puts in its place when the caller gives it in \
    STOMP's own `reply-to` header (not in the `tidings` header's `reply-to` item)";

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
        match mode.group() {
            None => Plan {
                destination: format!("/topic/VirtualTopic.{namespace}.{native}"),
                headers: Vec::new(),
                filter,
                retry: GiveBack::Local,
                requeue: GiveBack::Local,
            },
            Some((name, _)) => {
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
            .and_then(|q| q.strip_prefix(".inbox."))
            .is_some_and(is_inbox_id)
    }

    fn check_reply_address(&self, address: &str) -> Result<(), String> {
        let Some((kind, rest)) = split_prefix(address, REPLY_PREFIXES) else {
            return Err(format!(
                "ActiveMQ takes a reply at {}",
                REPLY_FORMS.join(", ")
            ));
        };
        if kind.starts_with("/temp-") {
            return Err(TEMP_DESTINATION.into());
        }
        if rest.is_empty() {
            return Err(format!("it names nothing after {kind}"));
        }
        if rest.contains(['*', '>', ',']) {
            return Err(
                "it holds a wildcard (`*`, `>`) or a list (`,`): ActiveMQ would send the reply \
                 to every destination it matches"
                    .into(),
            );
        }
        if rest.starts_with("ActiveMQ.") {
            return Err(
                "names starting with `ActiveMQ.` are the broker's own (advisories, DLQ)".into(),
            );
        }
        Ok(())
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
        Capabilities::default()
            .with_max_body(16 * 1024 * 1024)
            .without(
                Capability::Mandatory,
                "ActiveMQ acknowledges a SEND to a topic nobody subscribes to; STOMP cannot tell",
            )
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

    #[test]
    fn replies_go_to_every_destination_a_stomp_client_can_name() {
        for ok in [
            "/queue/replies",
            "/queue/a.b-c_d",
            "/topic/a.b",
            "/topic/VirtualTopic.ns.a",
            "/remote-temp-queue/ID:vm-45307-1796518805719-3:21:1",
            "/remote-temp-topic/ID:vm-45307-1796518805719-3:23:1",
        ] {
            assert_eq!(ActiveMq.check_reply_address(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/temp-queue/x",
            "/temp-topic/x",
            "/queue/",
            "/queue/>",
            "/queue/a.*",
            "/queue/a,b",
            "/topic/a.>",
            "/queue/ActiveMQ.DLQ",
            "/topic/ActiveMQ.Advisory.Connection",
            "/foo/bar",
            "queue",
        ] {
            let why = ActiveMq.check_reply_address(bad).unwrap_err();
            assert!(!why.is_empty(), "{bad}");
        }
    }

    #[test]
    fn only_the_drivers_own_inboxes_are_inboxes() {
        let (_, address) = ActiveMq.inbox("ns", "06a4184b6f2c6e1d-5-0");
        assert!(ActiveMq.is_inbox_address("ns", &address), "{address}");
        for other in [
            "/queue/tidings-private.ns.inbox.",
            "/queue/tidings-private.ns.inbox.>",
            "/queue/tidings-private.ns.inbox.a,b",
            "/queue/tidings-private.ns.inbox.a.b",
            "/queue/tidings-private.ns2.inbox.x",
            "/queue/ns.inbox.x",
        ] {
            assert!(!ActiveMq.is_inbox_address("ns", other), "{other}");
        }
    }
}
