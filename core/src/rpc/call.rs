//! The caller's side: [`Bus::call`] and the [`Call`] it returns.

use std::fmt;
use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::bus::Bus;
use crate::driver::{Outcome, PublishOptions};
use crate::envelope::{headers, new_id, Envelope};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::layer::{Handled, Incoming, Kind};
use crate::message::decode;
use crate::receive::receive;
use crate::reply_inbox::ReplyInbox;

/// The default time a call waits for its reply.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An RPC call being prepared; await it for the reply. Made by [`Bus::call`].
#[must_use = "a call does nothing until awaited"]
pub struct Call<'a, Req, Resp> {
    bus: &'a Bus,
    name: &'a str,
    request: &'a Req,
    timeout: Duration,
    _response: PhantomData<fn() -> Resp>,
}

impl<Req, Resp> fmt::Debug for Call<'_, Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<'a, Req: Event, Resp: Event> Call<'a, Req, Resp> {
    /// How long to wait for the reply (default 30 s). The request also expires on the broker
    /// after this long, so a server that comes up later does not work for nobody.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn send(self) -> Result<Resp> {
        let bus = self.bus;
        let provider = &bus.shared.provider;
        let inbox = ReplyInbox::of(provider.reply_slot(), provider.open_inbox()).await?;
        let mut envelope = bus.envelope(self.name, self.request)?;
        let correlation_id = new_id();
        envelope.correlation_id = Some(correlation_id.clone());
        // `reply_to` is the driver's to set (`Provider::request`); layers see the inbox's
        // address through `Outgoing::reply_to`.
        envelope.ttl = Some(self.timeout);
        let rx = inbox.expect(&correlation_id);
        // The request's confirm and the reply are awaited together: a call costs one round trip
        // to the server, not a confirm round trip first. A reply that comes before the confirm
        // proves the request was delivered, so the confirm no longer matters.
        // Only layers read the inbox address here (the driver stamps its own): no copy per call
        // for a handle without them.
        let seen_by_layers = (!bus.layers.is_empty()).then(|| inbox.address().to_owned());
        let published = bus.send(
            envelope,
            Kind::Request,
            &PublishOptions::MANDATORY,
            seen_by_layers,
        );
        let replied = tokio::time::timeout(self.timeout, inbox.reply(rx));
        tokio::pin!(replied);
        let reply = tokio::select! {
            biased;
            sent = published => match sent {
                // Watched from the confirm on: the request went out with the inbox of then or
                // an earlier one, so a renewal from now on means its reply cannot arrive.
                Ok(()) => tokio::select! {
                    biased;
                    reply = &mut replied => reply,
                    () = inbox.renewed() => {
                        inbox.forget(&correlation_id);
                        return Err(Error::new(
                            ErrorKind::Connection,
                            format!(
                                "the connection was lost while call {:?} waited for its reply, \
                                 which can no longer arrive (the request may have been handled \
                                 or not)",
                                self.name
                            ),
                        ));
                    }
                },
                Err(e) => {
                    inbox.forget(&correlation_id);
                    return Err(e);
                }
            },
            early = &mut replied => early,
        };
        match reply {
            Ok(Some(reply)) => self.receive_reply(reply).await,
            Ok(None) => Err(Error::new(
                ErrorKind::Closed,
                "the bus closed while waiting for a reply",
            )),
            Err(_) => {
                inbox.forget(&correlation_id);
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no reply to call {:?} within {:?}", self.name, self.timeout),
                ))
            }
        }
    }

    /// Takes the reply in through this handle's layers, whichever call read it from the
    /// inbox: a remote error becomes [`ErrorKind::Remote`], a layer that stops the reply fails
    /// the call with its reason.
    async fn receive_reply(&self, reply: Arc<Envelope>) -> Result<Resp> {
        if self.bus.layers.is_empty() {
            // No layer to tell: the answer alone, without building what layers see.
            return self.read_reply(&reply);
        }
        let answer = Mutex::new(None);
        let incoming = Incoming::new(
            reply,
            Kind::Reply,
            self.bus.shared.provider.system(),
            Arc::from(self.name),
            None,
        );
        let handled = receive(&self.bus.layers, incoming, |message| {
            let result = self.read_reply(&message.envelope);
            let mut handled = Handled::settled(Outcome::Ack);
            handled.error = result.as_ref().err().map(ToString::to_string);
            *answer.lock().expect("poisoned") = Some(result);
            std::future::ready(handled)
        })
        .await;
        match (handled.outcome, answer.into_inner().expect("poisoned")) {
            (Outcome::DeadLetter { reason }, _) => Err(Error::new(ErrorKind::Stopped, reason)),
            (_, Some(result)) => result,
            (outcome, None) => Err(Error::new(
                ErrorKind::Stopped,
                format!(
                    "a layer settled the reply to {:?} as {outcome:?} without passing it on",
                    self.name
                ),
            )),
        }
    }

    /// The reply's answer: the decoded response, or the server's error.
    fn read_reply(&self, reply: &Envelope) -> Result<Resp> {
        if reply.headers.get(headers::REPLY_STATUS).map(String::as_str) == Some("error") {
            // Every server declined: the reply says so, and who did.
            let kind = if reply.headers.contains_key(headers::DECLINED_BY) {
                ErrorKind::Declined
            } else {
                ErrorKind::Remote
            };
            return Err(Error::new(
                kind,
                format!(
                    "{} (from {} serving {:?})",
                    String::from_utf8_lossy(&reply.body),
                    reply.emitter,
                    self.name
                ),
            ));
        }
        decode::<Resp>(reply).map_err(|reason| Error::new(ErrorKind::Decode, reason))
    }
}

impl<'a, Req: Event, Resp: Event> IntoFuture for Call<'a, Req, Resp> {
    type Output = Result<Resp>;
    type IntoFuture = BoxFuture<'a, Result<Resp>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

impl Bus {
    /// Calls the service `name` and waits for its reply.
    ///
    /// Errors: [`ErrorKind::NoResponders`] when no server is bound (where the broker can
    /// tell), [`ErrorKind::Timeout`], [`ErrorKind::Remote`] with the server's error text,
    /// [`ErrorKind::Declined`] when every server [declined](crate::Decline) the request.
    ///
    /// # Examples
    /// ```
    /// # async fn demo(bus: tidings_core::Bus) -> tidings_core::Result<()> {
    /// let sum: u64 = bus
    ///     .call("math.add", &vec![1u8, 2])
    ///     .timeout(std::time::Duration::from_secs(5))
    ///     .await?;
    /// # let _ = sum; Ok(()) }
    /// ```
    pub fn call<'a, Req: Event, Resp: Event>(
        &'a self,
        name: &'a str,
        request: &'a Req,
    ) -> Call<'a, Req, Resp> {
        Call {
            bus: self,
            name,
            request,
            timeout: DEFAULT_CALL_TIMEOUT,
            _response: PhantomData,
        }
    }
}
