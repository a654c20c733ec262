//! A start-up barrier: "start emitting only when every participant has subscribed", so no
//! participant misses the first events, even on broadcast subscriptions (which keep nothing for
//! a subscriber that does not exist yet).
//!
//! Each participant makes its subscriptions, then [`announce`](Barrier::announce)s itself; the
//! application [`wait_for`](Barrier::wait_for)s the participants it expects, in the same process
//! or any other, and fails after a timeout that names the missing ones.
//!
//! # On the wire
//! Two JSON events under the reserved `tidings.barrier.<name>` keys, so any peer that speaks the
//! wire format (docs/wire-format.md) can take part:
//! - `tidings.barrier.<name>.ready`, event `tidings_barrier_ready`, body
//!   `{"participant":"<who>"}`: a participant is ready. Sent when it announces, and again for
//!   every roll call while its announcement lives.
//! - `tidings.barrier.<name>.roll_call`, event `tidings_barrier_roll_call`, body `{}`: a waiter
//!   asks everyone ready to say so again.
//!
//! A participant subscribes to roll calls *before* it first says it is ready, and a waiter
//! subscribes to `ready` *before* it calls the roll, so whichever comes first, the waiter hears
//! every participant: either the participant's first `ready` reaches the waiter, or the roll
//! call reaches the participant.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bus::Bus;
use crate::codec::Codec;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::routing::RoutingKey;
use crate::subscribe::Subscription;

/// "I am ready": what a participant sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Ready {
    participant: String,
}

impl Event for Ready {
    const NAME: &'static str = "tidings_barrier_ready";
}

/// "Who is ready?": what a waiter sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RollCall {}

impl Event for RollCall {
    const NAME: &'static str = "tidings_barrier_roll_call";
}

/// A start-up barrier on a bus; made by [`Bus::barrier`]. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Barrier {
    /// JSON, whatever the handle's codec: peers in other languages take part.
    bus: Bus,
    name: String,
}

/// A live announcement: its participant answers roll calls until it is
/// [`withdrawn`](Self::withdraw) or the bus shuts down. Dropping it keeps it answering.
#[derive(Debug)]
#[must_use = "dropping an announcement keeps it answering until the bus shuts down"]
pub struct Announcement {
    roll_calls: Subscription,
}

impl Announcement {
    /// Stops answering roll calls.
    pub async fn withdraw(self) {
        self.roll_calls.unsubscribe().await;
    }
}

impl Barrier {
    fn key(&self, what: &str) -> String {
        format!("tidings.barrier.{}.{what}", self.name)
    }

    /// Says that `participant` is ready: call it once its subscriptions exist. It also answers
    /// every later roll call, so a waiter that starts afterwards hears it too.
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
    /// bus.subscribe::<String>("app.#").handle(|_| async { Ok(()) }).await?;
    /// let _ready = bus.barrier("app-start")?.announce("audit-plugin").await?;
    /// # Ok(()) }
    /// ```
    pub async fn announce(&self, participant: &str) -> Result<Announcement> {
        RoutingKey::validate(participant).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("barrier participant: {}", e.message()),
            )
        })?;
        let ready = Ready {
            participant: participant.to_owned(),
        };
        let (bus, key) = (self.bus.clone(), self.key("ready"));
        let answer = ready.clone();
        let roll_calls = self
            .bus
            .subscribe::<RollCall>(&self.key("roll_call"))
            .handle(move |_| {
                let (bus, key, answer) = (bus.clone(), key.clone(), answer.clone());
                async move {
                    bus.emit(&key, &answer).await?;
                    Ok(())
                }
            })
            .await?;
        self.bus.emit(&self.key("ready"), &ready).await?;
        Ok(Announcement { roll_calls })
    }

    /// Waits until every participant in `expected` has announced itself, here or in another
    /// process. Fails with [`ErrorKind::Timeout`] after `timeout`, naming the ones still missing.
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
    /// let barrier = bus.barrier("app-start")?;
    /// barrier
    ///     .wait_for(&["audit-plugin", "mailer"], std::time::Duration::from_secs(30))
    ///     .await?;
    /// bus.emit("app.started", &"now".to_string()).await?; // every plugin hears it
    /// # Ok(()) }
    /// ```
    pub async fn wait_for(&self, expected: &[&str], timeout: Duration) -> Result<()> {
        let mut missing: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let listening = self
            .bus
            .subscribe::<Ready>(&self.key("ready"))
            .handle(move |ready: Ready| {
                let _ = tx.send(ready.participant);
                async { Ok(()) }
            })
            .await?;
        let heard = async {
            self.bus.emit(&self.key("roll_call"), &RollCall {}).await?;
            while let Some(participant) = rx.recv().await {
                missing.remove(&participant);
                if missing.is_empty() {
                    return Ok(());
                }
            }
            Err(Error::new(
                ErrorKind::Closed,
                "the bus closed while waiting at a barrier",
            ))
        };
        let outcome = tokio::time::timeout(timeout, heard).await;
        listening.unsubscribe().await;
        match outcome {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "barrier {:?}: {} of {} participants did not announce within {timeout:?}: {}",
                    self.name,
                    missing.len(),
                    expected.len(),
                    missing.into_iter().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

impl Bus {
    /// The start-up barrier `name` (one routing-key word or several): participants
    /// [`announce`](Barrier::announce) themselves once subscribed, the application
    /// [`wait_for`](Barrier::wait_for)s them before it emits. Works across processes; see
    /// [`barrier`](crate::barrier).
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
    /// let barrier = bus.barrier("app-start")?;
    /// # let _ = barrier; Ok(()) }
    /// ```
    pub fn barrier(&self, name: &str) -> Result<Barrier> {
        RoutingKey::validate(name).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("barrier name: {}", e.message()),
            )
        })?;
        Ok(Barrier {
            bus: self.with_codec(Codec::Json),
            name: name.to_owned(),
        })
    }
}
