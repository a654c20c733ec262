//! The one way out: every message a bus sends — emit, cast, RPC request, RPC reply, replayed
//! dead letter — leaves through [`Bus::send`], which runs the handle's layers and then hands
//! the message to the driver: [`Provider::request`] for an RPC request, [`Provider::reply`] for
//! a reply, [`Provider::publish`] for everything else.

use std::sync::Arc;

use crate::bus::Bus;
use crate::driver::{Completion, Provider, PublishOptions};
use crate::envelope::Envelope;
use crate::error::Result;
use crate::layer::{Inner, Kind, Next, Outgoing};

impl Bus {
    /// Sends `envelope` as a `kind` message through this handle's layers: published to the
    /// topic space under its routing key (an RPC request with the connection's inbox as its
    /// `reply_to`), or, for an RPC reply, sent to `address`. For a request, `address` is the
    /// inbox's, which layers see as [`Outgoing::reply_to`]; the driver sets it.
    ///
    /// Without layers the driver's completion is returned as it is: no allocation is added.
    #[inline]
    pub(crate) fn send<'a>(
        &'a self,
        envelope: Envelope,
        kind: Kind,
        options: &'a PublishOptions,
        address: Option<String>,
    ) -> Completion<'a, Result<()>> {
        if self.layers.is_empty() {
            return transmit(&self.shared.provider, envelope, kind, options, address);
        }
        self.send_through_layers(envelope, kind, options, address)
    }

    /// [`send`](Self::send) when the handle has layers: they run around the driver's part.
    /// Apart, so that `send` stays small enough to inline into every emit.
    fn send_through_layers<'a>(
        &'a self,
        envelope: Envelope,
        kind: Kind,
        options: &'a PublishOptions,
        address: Option<String>,
    ) -> Completion<'a, Result<()>> {
        let provider = &self.shared.provider;
        Completion::later(async move {
            // Where it goes follows what it is as the bus sent it, whatever a layer did to
            // `kind`.
            let inner = move |message: Outgoing| {
                let (envelope, address) = message.into_parts();
                Box::pin(transmit(provider, envelope, kind, options, address)) as _
            };
            let inner: &Inner<'_, Outgoing> = &inner;
            Next::chain(&self.layers, inner)
                .run(Outgoing::new(envelope, kind, provider.system(), address))
                .await
        })
    }
}

/// Hands a message to the driver: each kind to its operation.
#[inline]
fn transmit<'a>(
    provider: &'a Arc<dyn Provider>,
    envelope: Envelope,
    kind: Kind,
    options: &'a PublishOptions,
    address: Option<String>,
) -> Completion<'a, Result<()>> {
    match (kind, address) {
        // The driver sets `reply_to`: the address seen by layers was for them only.
        (Kind::Request, _) => provider.request(envelope, options),
        (Kind::Reply, Some(address)) => {
            Completion::later(async move { provider.reply(&address, envelope).await })
        }
        _ => provider.publish(envelope, options),
    }
}
