//! The settings subscriptions and RPC servers share, and the builder methods that set them.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Settings shared by subscriptions and RPC servers.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) pattern: String,
    pub(crate) group: Option<String>,
    pub(crate) durable: bool,
    pub(crate) prefetch: Option<u16>,
    pub(crate) concurrency: usize,
    pub(crate) max_attempts: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) from: Option<String>,
    pub(crate) dead_letter_queue: Option<String>,
    pub(crate) active_when: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Settings {
    pub(crate) fn new(pattern: &str) -> Self {
        Self {
            pattern: pattern.to_owned(),
            group: None,
            durable: true,
            prefetch: None,
            concurrency: 1,
            max_attempts: 3,
            retry_delay: Duration::ZERO,
            from: None,
            dead_letter_queue: None,
            active_when: None,
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("pattern", &self.pattern)
            .field("group", &self.group)
            .field("durable", &self.durable)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("retry_delay", &self.retry_delay)
            .field("from", &self.from)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("active_when", &self.active_when.is_some())
            .finish()
    }
}

/// Builder methods shared by [`SubscribeBuilder`] and [`Serve`](crate::rpc::Serve).
macro_rules! settings_methods {
    () => {
        /// Joins the competing-consumer group `name`: each message goes to one member.
        pub fn group(mut self, name: &str) -> Self {
            self.settings.group = Some(name.to_owned());
            self
        }

        /// Whether the group's queue keeps messages while no member runs (default `true`).
        pub fn durable(mut self, durable: bool) -> Self {
            self.settings.durable = durable;
            self
        }

        /// How many messages the broker may hand this subscription before it settles any
        /// (default: 32, at least the concurrency).
        pub fn prefetch(mut self, prefetch: u16) -> Self {
            self.settings.prefetch = Some(prefetch.max(1));
            self
        }

        /// How many messages are handled at once (default 1, which keeps publish order).
        pub fn concurrency(mut self, concurrency: usize) -> Self {
            self.settings.concurrency = concurrency.max(1);
            self
        }

        /// How many times a message is tried before it is dead-lettered (default 3).
        pub fn max_attempts(mut self, attempts: u32) -> Self {
            self.settings.max_attempts = attempts.max(1);
            self
        }

        /// How long to wait before a failed message is retried (default none).
        pub fn retry_delay(mut self, delay: std::time::Duration) -> Self {
            self.settings.retry_delay = delay;
            self
        }

        /// Only handle messages whose emitter (`host.kind.id`) matches `pattern`; others are
        /// acked unseen.
        pub fn from(mut self, pattern: &str) -> Self {
            self.settings.from = Some(pattern.to_owned());
            self
        }

        /// Where messages that fail for good go (default: the group name, or `broadcast`).
        pub fn dead_letter_queue(mut self, name: &str) -> Self {
            self.settings.dead_letter_queue = Some(name.to_owned());
            self
        }

        /// Takes messages only while `guard` returns true — for example "accept uploads only
        /// while the disk is not full". While false, this worker takes nothing and the messages
        /// go to other members of the group. The guard is checked before every message and,
        /// while paused, every 50 ms.
        pub fn active_when<G: Fn() -> bool + Send + Sync + 'static>(mut self, guard: G) -> Self {
            self.settings.active_when = Some(std::sync::Arc::new(guard));
            self
        }
    };
}
pub(crate) use settings_methods;
