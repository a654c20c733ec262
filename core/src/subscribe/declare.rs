//! Declaring a durable group up front: the queue, its binding and its dead-letter queue exist
//! on the broker before any member runs, so nothing sent in between is lost.
//!
//! Drivers have no "declare" operation of their own: a driver declares what a subscription
//! needs when it opens one (the group's queue and the binding of its pattern; some drivers
//! declare the dead-letter queue only on the first dead letter, some when it is first read).
//! So declaring opens the subscription and the dead-letter reader the same way a member would,
//! takes nothing from them, and cancels them at once: the durable queues stay, with their
//! bindings, on every driver.

use super::{spec_of, SubscribeBuilder};
use crate::bus::Bus;
use crate::driver::SubscribeSpec;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Payload;

impl<E: Payload> SubscribeBuilder<E> {
    /// Declares on the broker what this group subscription consumes from — the group's durable
    /// queue bound with the pattern, and its dead-letter queue — without consuming anything, so
    /// that events emitted from now on wait for the group's first member. Idempotent.
    ///
    /// Only a durable group can be declared: a broadcast subscription, or a group with
    /// `durable(false)`, keeps nothing for a subscriber that does not run yet, so declaring
    /// either is an [`ErrorKind::InvalidConfig`] error saying so. A broker whose groups keep
    /// nothing while no member runs ([`Capabilities::durable_groups`](crate::Capabilities)
    /// false) gives [`ErrorKind::Unsupported`].
    ///
    /// The queue is opened as a member with a prefetch of 1 would open it and cancelled at once;
    /// on a queue that already holds messages, a broker may have handed that member one
    /// message, which goes back to the queue unchanged (same attempt, possibly at its tail).
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
    /// // A deployment step, before the workers start: from now on the queue keeps the jobs.
    /// bus.subscribe::<String>("jobs.resize.#").group("resizers").declare().await?;
    /// # Ok(()) }
    /// ```
    pub async fn declare(&self) -> Result<()> {
        let (spec, _) = spec_of(&self.settings)?;
        declare(&self.bus, spec).await
    }
}

/// Opens and at once cancels the subscription `spec` and its dead-letter reader.
async fn declare(bus: &Bus, mut spec: SubscribeSpec) -> Result<()> {
    let subscription = spec.pattern.to_string();
    let Some((group, durable)) = spec.mode.group() else {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "cannot declare the broadcast subscription to {subscription:?}: a broadcast \
                 subscription keeps nothing for a subscriber that does not run yet; declare a \
                 group (.group(name))"
            ),
        ));
    };
    if !durable {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "cannot declare group {group:?}: with durable(false) its queue goes away with \
                 its last member, so declaring it keeps nothing"
            ),
        ));
    }
    let capabilities = bus.capabilities();
    if !capabilities.durable_groups {
        let why = capabilities
            .notes
            .iter()
            .find(|(name, _)| *name == "durable_groups")
            .map_or("", |(_, why)| *why);
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "cannot declare group {group:?}: this broker keeps no group messages while no \
                 member runs ({why})"
            ),
        ));
    }
    if bus.is_stopping() {
        return Err(Error::new(
            ErrorKind::Closed,
            "the bus is shutting down; cannot declare",
        ));
    }
    spec.prefetch = 1;
    let provider = &bus.shared.provider;
    let consumer = provider.subscribe(spec.clone()).await?;
    consumer.cancel().await?;
    let dead_letters = provider.dead_letters(&spec.dead_letter_queue).await?;
    dead_letters.cancel().await
}
