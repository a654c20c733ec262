//! Calls in flight, as a layer sees them: a request goes out through [`Layer::send`] and its
//! reply comes back, much later, through [`Layer::receive`] — two separate calls that a layer
//! pairs by correlation id. A call whose reply never comes (a timeout, or a caller that gave up)
//! is swept out once its deadline has passed, at most once a second, by the next call.
//!
//! [`Layer::send`]: crate::Layer::send
//! [`Layer::receive`]: crate::Layer::receive

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often expired entries are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How long after its timeout a call's entry is kept, so a reply on the edge still finds it.
const GRACE: Duration = Duration::from_secs(1);

/// The default deadline of a request without a TTL (the call's own default timeout).
const DEFAULT_TIMEOUT: Duration = crate::rpc::DEFAULT_CALL_TIMEOUT;

/// Values kept per call in flight, by correlation id.
pub(crate) struct Pending<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    calls: HashMap<String, Entry<T>>,
    next_sweep: Instant,
}

/// A call in flight: when it started, when to give up on it, and the layer's value.
pub(crate) struct Entry<T> {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) started: Instant,
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) timeout: Duration,
    deadline: Instant,
    pub(crate) value: T,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                calls: HashMap::new(),
                next_sweep: Instant::now() + SWEEP_EVERY,
            }),
        }
    }
}

impl<T> Pending<T> {
    /// Keeps `value` for the call `id`, which gives up after `timeout` (`None`: the default
    /// call timeout). Returns the entries of calls whose deadline has passed.
    pub(crate) fn insert(&self, id: String, timeout: Option<Duration>, value: T) -> Vec<Entry<T>> {
        let now = Instant::now();
        let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
        let entry = Entry {
            started: now,
            timeout,
            deadline: now + timeout + GRACE,
            value,
        };
        let mut state = self.state.lock().expect("poisoned");
        state.calls.insert(id, entry);
        if now < state.next_sweep {
            return Vec::new();
        }
        state.next_sweep = now + SWEEP_EVERY;
        let expired: Vec<String> = state
            .calls
            .iter()
            .filter(|(_, entry)| entry.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .iter()
            .filter_map(|id| state.calls.remove(id))
            .collect()
    }

    /// Takes the entry of the call `id`, if it is still in flight.
    pub(crate) fn take(&self, id: &str) -> Option<Entry<T>> {
        self.state.lock().expect("poisoned").calls.remove(id)
    }

    /// How many calls are in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().expect("poisoned").calls.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_what_was_inserted_once() {
        let pending = Pending::default();
        assert!(pending.insert("a".into(), None, 1).is_empty());
        assert_eq!(pending.take("a").map(|e| e.value), Some(1));
        assert!(pending.take("a").is_none());
    }

    #[test]
    fn sweeps_expired_calls() {
        let pending = Pending::default();
        pending.insert("old".into(), Some(Duration::ZERO), 1);
        pending
            .state
            .lock()
            .unwrap()
            .calls
            .get_mut("old")
            .unwrap()
            .deadline = Instant::now();
        pending.state.lock().unwrap().next_sweep = Instant::now();
        let expired = pending.insert("new".into(), None, 2);
        assert_eq!(expired.iter().map(|e| e.value).collect::<Vec<_>>(), [1]);
        assert_eq!(pending.len(), 1);
    }
}
