//! What cases share: a context with isolated names and buses, a test event, and a collector
//! that gathers what handlers saw and asserts on it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings_core::{Bus, Event, HandlerResult};
use tokio::sync::mpsc;

use crate::Harness;

/// The event most cases send.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Note {
    /// A sequence number, to check order, loss and duplicates.
    pub n: u32,
    /// Free text.
    pub text: String,
}

impl Event for Note {
    const NAME: &'static str = "conformance_note";
}

impl Note {
    /// Note number `n`.
    pub fn new(n: u32) -> Self {
        Self {
            n,
            text: format!("note {n}"),
        }
    }
}

/// A short tag for names that must not collide: unique within this process and, very likely,
/// across processes (the second half of the process's random id prefix and a counter; the
/// first half of [`new_id`](tidings_core::envelope::new_id) alone repeats within a process).
pub fn unique_tag() -> String {
    tidings_core::envelope::new_id()[8..].replace('-', "")
}

/// A fresh namespace for `case`: unique per run, one routing-key word.
pub fn namespace(case: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let run = tidings_core::envelope::new_id();
    let run = &run[..8];
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let short: String = case.chars().take(32).collect();
    format!("tc-{run}{n}-{short}")
}

/// Fails the case with a message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+).into());
        }
    };
}

/// A case's view of the world.
#[allow(missing_debug_implementations)]
pub struct Ctx {
    harness: Arc<dyn Harness>,
    namespace: String,
    buses: Mutex<Vec<Bus>>,
}

impl Ctx {
    pub(crate) fn new(harness: Arc<dyn Harness>, namespace: String) -> Self {
        Self {
            harness,
            namespace,
            buses: Mutex::new(Vec::new()),
        }
    }

    /// A new connection in this case's namespace.
    pub async fn bus(&self) -> Result<Bus, String> {
        let bus = self
            .harness
            .connect(&self.namespace)
            .await
            .map_err(|e| format!("{} broker: cannot connect: {e}", self.harness.name()))?;
        self.buses.lock().expect("poisoned").push(bus.clone());
        Ok(bus)
    }

    /// A group, queue or service name unique to this case.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.namespace)
    }

    /// Shuts every bus of the case down.
    pub async fn finish(&self) {
        let buses = std::mem::take(&mut *self.buses.lock().expect("poisoned"));
        for bus in buses {
            let _ = tokio::time::timeout(Duration::from_secs(5), bus.shutdown()).await;
        }
    }
}

/// Where handlers put what they saw.
#[derive(Debug)]
pub struct Sink<T>(mpsc::UnboundedSender<T>);

impl<T> Clone for Sink<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: Send + 'static> Sink<T> {
    /// Records `item`.
    pub fn put(&self, item: T) {
        let _ = self.0.send(item);
    }

    /// A handler that records what `pick` takes from each message and succeeds.
    pub fn recorder<E>(
        &self,
        pick: impl Fn(E) -> T + Send + Sync + 'static,
    ) -> impl Fn(E) -> std::future::Ready<HandlerResult> + Send + Sync + 'static {
        let sink = self.clone();
        move |event| {
            sink.put(pick(event));
            std::future::ready(Ok(()))
        }
    }
}

/// What handlers saw, read by the case.
#[derive(Debug)]
pub struct Seen<T>(mpsc::UnboundedReceiver<T>);

/// A new sink and its reader.
pub fn collector<T>() -> (Sink<T>, Seen<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Sink(tx), Seen(rx))
}

impl<T> Seen<T> {
    /// Exactly `n` items within `timeout`, or a failure saying how many came.
    pub async fn take(&mut self, n: usize, timeout: Duration) -> Result<Vec<T>, String> {
        let mut items = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + timeout;
        while items.len() < n {
            match tokio::time::timeout_at(deadline, self.0.recv()).await {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => break,
            }
        }
        if items.len() < n {
            return Err(format!(
                "expected {n} deliveries within {timeout:?}, got {}",
                items.len()
            ));
        }
        Ok(items)
    }

    /// Succeeds if nothing more arrives for `quiet`; fails with how many extra came.
    pub async fn nothing_more(&mut self, quiet: Duration) -> Result<(), String> {
        let mut extra = 0;
        let deadline = tokio::time::Instant::now() + quiet;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.0.recv()).await {
            extra += 1;
        }
        if extra > 0 {
            return Err(format!(
                "expected nothing more, got {extra} extra deliveries"
            ));
        }
        Ok(())
    }

    /// Everything that arrives within `window`.
    pub async fn drain_for(&mut self, window: Duration) -> Vec<T> {
        let mut items = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(item)) = tokio::time::timeout_at(deadline, self.0.recv()).await {
            items.push(item);
        }
        items
    }
}

/// The time a broker may take to route one message in these cases.
pub const SOON: Duration = Duration::from_secs(10);
/// How long a case waits to make sure something does NOT arrive.
pub const QUIET: Duration = Duration::from_millis(400);
