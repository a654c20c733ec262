//! The one way out: every message a bus sends — emit, cast, RPC request, RPC reply, replayed
//! dead letter — leaves through [`Bus::send`], which runs the handle's layers and then hands
//! the message to the driver.

use std::sync::Arc;

use crate::bus::Bus;
use crate::driver::{Completion, Provider, PublishOptions};
use crate::envelope::Envelope;
use crate::error::Result;
use crate::layer::{Inner, Kind, Next, Outgoing};

impl Bus {
    /// Sends `envelope` as a `kind` message through this handle's layers: published to the
    /// topic space under its routing key, or, for an RPC reply, sent to `reply_address`.
    ///
    /// Without layers the driver's completion is returned as it is: no allocation is added.
    pub(crate) fn send<'a>(
        &'a self,
        envelope: Envelope,
        kind: Kind,
        options: &'a PublishOptions,
        reply_address: Option<String>,
    ) -> Completion<'a, Result<()>> {
        let provider = &self.shared.provider;
        if self.layers.is_empty() {
            return transmit(provider, envelope, options, reply_address);
        }
        Completion::later(async move {
            let inner = |message: Outgoing| {
                let (envelope, reply_address) = message.into_parts();
                Box::pin(transmit(provider, envelope, options, reply_address)) as _
            };
            let inner: &Inner<'_, Outgoing> = &inner;
            Next::chain(&self.layers, inner)
                .run(Outgoing::new(
                    envelope,
                    kind,
                    provider.system(),
                    reply_address,
                ))
                .await
        })
    }
}

/// Hands a message to the driver.
fn transmit<'a>(
    provider: &'a Arc<dyn Provider>,
    envelope: Envelope,
    options: &'a PublishOptions,
    reply_address: Option<String>,
) -> Completion<'a, Result<()>> {
    match reply_address {
        None => provider.publish(envelope, options),
        Some(address) => {
            Completion::later(async move { provider.send_to(&address, envelope).await })
        }
    }
}
