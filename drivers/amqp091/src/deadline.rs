//! Publish deadlines without a timer per publish.
//!
//! Every publish must give up `publish_timeout` after it started. A tokio timer per publish
//! (`timeout_at`) costs about 1,800 instructions — registered in the timer wheel, polled,
//! cleared — on a path whose whole budget is a few tens of thousands. Since every publish of a
//! connection has the same timeout, their deadlines arrive in the order the publishes started:
//! consecutive publishes share one deadline, rounded up by at most `granularity`, and one
//! timer per shared deadline wakes all the publishes still waiting on it. A publish therefore
//! gives up no earlier than its timeout and at most `granularity` later.

#[cfg(test)]
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest a publish may outlive its timeout.
const MAX_GRANULARITY: Duration = Duration::from_millis(100);

/// The shared deadlines of one connection's publishes.
#[derive(Debug)]
pub(crate) struct Deadlines {
    timeout: Duration,
    granularity: Duration,
    /// The latest shared deadline: when it passes, and what it wakes then.
    latest: Mutex<Option<Deadline>>,
}

/// When a publish gives up, and what tells it that the moment has come.
#[derive(Debug, Clone)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    passed: Arc<Passed>,
}

/// Set and woken by the timer of a shared deadline.
#[derive(Debug, Default)]
struct Passed {
    flag: AtomicBool,
    wake: Notify,
}

impl Deadlines {
    /// Deadlines `timeout` after each publish starts, rounded up by at most
    /// `timeout / 20` (no more than 100 ms).
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            granularity: (timeout / 20).min(MAX_GRANULARITY),
            latest: Mutex::new(None),
        }
    }

    /// The deadline of a publish starting now: at least the timeout from now.
    pub(crate) fn start(&self) -> Deadline {
        let at = Instant::now() + self.timeout;
        let mut latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(deadline) = latest.as_ref().filter(|d| d.at >= at) {
            return deadline.clone();
        }
        let deadline = Deadline {
            at: at + self.granularity,
            passed: Arc::default(),
        };
        let (when, passed) = (deadline.at, deadline.passed.clone());
        // The timer of this deadline: one per `granularity` while publishes start.
        tokio::spawn(async move {
            tokio::time::sleep_until(when).await;
            passed.flag.store(true, Ordering::Release);
            passed.wake.notify_waiters();
        });
        *latest = Some(deadline.clone());
        deadline
    }
}

impl Deadline {
    /// What finishes when the deadline passes, or `None` if it has passed already. Call it
    /// before starting the work it limits, then race the two (`tokio::select!`, work first):
    /// a future that took the work as an argument would hold it twice.
    pub(crate) fn passed(&self) -> Option<Notified<'_>> {
        // Made before the flag is read, so a wake-up in between is not missed
        // (`notify_waiters` reaches every `Notified` made before it, polled or not).
        let passed = self.passed.wake.notified();
        (!self.passed.flag.load(Ordering::Acquire)).then_some(passed)
    }

    /// Runs `work` until it finishes (`Some`) or the deadline passes (`None`).
    #[cfg(test)]
    async fn run<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        let passed = self.passed()?;
        tokio::select! {
            biased;
            done = work => Some(done),
            () = passed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_deadlines_and_never_gives_up_early() {
        let timeout = Duration::from_millis(400);
        let deadlines = Deadlines::new(timeout);
        let started = Instant::now();
        let first = deadlines.start();
        assert!(first.at >= started + timeout);
        assert!(first.at <= Instant::now() + timeout + Duration::from_millis(20));
        let second = deadlines.start();
        assert!(Arc::ptr_eq(&first.passed, &second.passed), "shared");
        tokio::time::sleep(Duration::from_millis(30)).await;
        let third = deadlines.start();
        assert!(!Arc::ptr_eq(&first.passed, &third.passed), "a new one");
        let third_started = Instant::now();

        assert_eq!(first.run(async { 5 }).await, Some(5));
        assert_eq!(first.run(std::future::pending::<()>()).await, None);
        assert!(Instant::now() >= first.at);
        assert_eq!(third.run(std::future::pending::<()>()).await, None);
        let waited = Instant::now() - third_started;
        assert!(waited >= timeout, "{waited:?}");
        assert_eq!(first.run(async { 5 }).await, None, "passed already");
        let fresh = deadlines.start();
        assert_eq!(fresh.run(async { 5 }).await, Some(5));
    }
}
