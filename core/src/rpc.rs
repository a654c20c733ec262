//! Request/reply over the bus: [`Bus::call`] and [`Bus::serve`].
//!
//! A call publishes the request under the service name with a fresh correlation id and this
//! bus's inbox address as `reply_to`. Servers form a group named after the service, so each
//! request is handled once. The reply travels straight to the caller's inbox. All concurrent
//! calls of a bus share one inbox; whichever call is waiting reads it and hands each reply to
//! its call by correlation id (no task in between for a caller making one call at a time), and
//! quietly drops replies nobody waits for any more (they came after a timeout).

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::oneshot;

use crate::bus::Bus;
use crate::codec::Codec;
use crate::driver::{Consumer, Outcome, PublishOptions};
use crate::envelope::{headers, new_id, Envelope};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::interceptor::Interceptor;
use crate::subscribe::{
    decode, panic_text, settings_methods, start, Failure, HandlerError, RawHandler, Settings,
    Subscription,
};

/// The default time a call waits for its reply.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

type Waiters = Mutex<HashMap<String, oneshot::Sender<Arc<Envelope>>>>;

/// The caller side: one inbox per bus, shared by all calls.
///
/// No task reads the inbox. A waiting call takes the inbox and reads replies for every call
/// until its own arrives, then hands the inbox to the next waiting call. A caller making one
/// call at a time so reads its reply itself, without a hop through another task.
pub(crate) struct RpcClient {
    address: String,
    waiters: Waiters,
    inbox: tokio::sync::Mutex<Box<dyn Consumer>>,
    interceptors: Arc<[Arc<dyn Interceptor>]>,
}

impl RpcClient {
    async fn open(bus: &Bus) -> Result<Self> {
        let inbox = bus.shared.provider.open_inbox().await?;
        Ok(Self {
            address: inbox.address,
            waiters: Mutex::default(),
            inbox: tokio::sync::Mutex::new(inbox.consumer),
            interceptors: bus.interceptors.clone(),
        })
    }

    /// Registers a call; its reply will arrive on the returned receiver.
    fn expect(&self, correlation_id: &str) -> oneshot::Receiver<Arc<Envelope>> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("poisoned")
            .insert(correlation_id.to_owned(), tx);
        rx
    }

    /// Gives up on a call (it failed or timed out); a late reply is then dropped.
    fn forget(&self, correlation_id: &str) {
        self.waiters
            .lock()
            .expect("poisoned")
            .remove(correlation_id);
    }

    /// Waits for the reply `rx` announces, reading the inbox for everybody while no other call
    /// does. `None`: the bus closed.
    async fn reply(&self, rx: oneshot::Receiver<Arc<Envelope>>) -> Option<Arc<Envelope>> {
        tokio::pin!(rx);
        let mut inbox = tokio::select! {
            biased;
            reply = &mut rx => return reply.ok(),
            inbox = self.inbox.lock() => inbox,
        };
        loop {
            // Ours may have been read by the call that held the inbox before.
            if let Ok(reply) = rx.try_recv() {
                return Some(reply);
            }
            let delivery = inbox.next().await?;
            let (mut envelope, settle) = delivery.into_parts();
            let _ = settle.settle(Outcome::Ack).await;
            for interceptor in self.interceptors.iter() {
                interceptor.on_receive(Arc::make_mut(&mut envelope));
            }
            let waiter = envelope
                .correlation_id
                .as_ref()
                .and_then(|id| self.waiters.lock().expect("poisoned").remove(id));
            match waiter {
                Some(tx) => {
                    let _ = tx.send(envelope);
                }
                None => tracing::debug!(
                    correlation_id = ?envelope.correlation_id,
                    "dropping a reply nobody waits for (late, after a timeout)"
                ),
            }
        }
    }
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

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
        let rpc = self
            .bus
            .shared
            .rpc
            .get_or_try_init(|| RpcClient::open(self.bus))
            .await?;
        let mut envelope = self.bus.envelope(self.name, self.request)?;
        let correlation_id = new_id();
        envelope.correlation_id = Some(correlation_id.clone());
        envelope.reply_to = Some(rpc.address.clone());
        envelope.ttl = Some(self.timeout);
        let rx = rpc.expect(&correlation_id);
        // The request's confirm and the reply are awaited together: a call costs one round trip
        // to the server, not a confirm round trip first. A reply that comes before the confirm
        // proves the request was delivered, so the confirm no longer matters.
        let published = self.bus.publish(envelope, &PublishOptions::MANDATORY);
        let replied = tokio::time::timeout(self.timeout, rpc.reply(rx));
        tokio::pin!(replied);
        let reply = tokio::select! {
            biased;
            sent = published => match sent {
                Ok(()) => replied.await,
                Err(e) => {
                    rpc.forget(&correlation_id);
                    return Err(e);
                }
            },
            early = &mut replied => early,
        };
        let reply = match reply {
            Ok(Some(reply)) => reply,
            Ok(None) => {
                return Err(Error::new(
                    ErrorKind::Closed,
                    "the bus closed while waiting for a reply",
                ))
            }
            Err(_) => {
                rpc.forget(&correlation_id);
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("no reply to call {:?} within {:?}", self.name, self.timeout),
                ));
            }
        };
        if reply.headers.get(headers::REPLY_STATUS).map(String::as_str) == Some("error") {
            return Err(Error::new(
                ErrorKind::Remote,
                format!(
                    "{} (from {} serving {:?})",
                    String::from_utf8_lossy(&reply.body),
                    reply.emitter,
                    self.name
                ),
            ));
        }
        decode::<Resp>(&reply).map_err(|reason| Error::new(ErrorKind::Decode, reason))
    }
}

impl<'a, Req: Event, Resp: Event> IntoFuture for Call<'a, Req, Resp> {
    type Output = Result<Resp>;
    type IntoFuture = BoxFuture<'a, Result<Resp>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// An RPC server being configured; await it to start serving. Made by [`Bus::serve`].
///
/// By default the servers of one name form a group of that name, so each request is handled by
/// exactly one of them.
#[must_use = "a server does nothing until awaited"]
pub struct Serve<Req, Resp> {
    bus: Bus,
    settings: Settings,
    handler: RawHandler,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> fmt::Debug for Serve<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<Req: Event, Resp: Event> Serve<Req, Resp> {
    settings_methods!();
}

impl<Req: Event, Resp: Event> IntoFuture for Serve<Req, Resp> {
    type Output = Result<Subscription>;
    type IntoFuture = BoxFuture<'static, Result<Subscription>>;

    fn into_future(self) -> Self::IntoFuture {
        let handler = self.handler;
        Box::pin(async move { start(&self.bus, self.settings, move |e| handler(e)).await })
    }
}

impl Bus {
    /// Calls the service `name` and waits for its reply.
    ///
    /// Errors: [`ErrorKind::NoResponders`] when no server is bound (where the broker can
    /// tell), [`ErrorKind::Timeout`], [`ErrorKind::Remote`] with the server's error text.
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

    /// Serves the RPC `name` with `handler`. A handler error goes back to the caller as
    /// [`ErrorKind::Remote`]; so does a panic. Requests sent with [`cast`](Bus::cast) are handled
    /// the same way, with the reply dropped. A reply that cannot be sent (the driver or the
    /// broker refuses its `reply_to`) is logged and dropped; the request is never run again for
    /// it.
    pub fn serve<Req, Resp, F, Fut>(&self, name: &str, handler: F) -> Serve<Req, Resp>
    where
        Req: Event,
        Resp: Event,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, HandlerError>> + Send + 'static,
    {
        let bus = self.clone();
        let handler = Arc::new(handler);
        let raw: RawHandler = Arc::new(move |request: Arc<Envelope>| {
            let bus = bus.clone();
            let handler = handler.clone();
            async move { serve_one::<Req, Resp, F, Fut>(&bus, &*handler, request).await }.boxed()
        });
        let mut settings = Settings::new(name);
        settings.group = Some(name.to_owned());
        Serve {
            bus: self.clone(),
            settings,
            handler: raw,
            _types: PhantomData,
        }
    }
}

async fn serve_one<Req, Resp, F, Fut>(
    bus: &Bus,
    handler: &F,
    request: Arc<Envelope>,
) -> Result<(), Failure>
where
    Req: Event,
    Resp: Event,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Result<Resp, HandlerError>>,
{
    let reply_to = request.reply_to.clone();
    let correlation_id = request.correlation_id.clone();
    let (result, poison) = match decode::<Req>(&request) {
        Err(reason) => (Err(reason.clone()), Some(reason)),
        Ok(req) => match AssertUnwindSafe(handler(req)).catch_unwind().await {
            Ok(Ok(resp)) => (Ok(resp), None),
            Ok(Err(e)) => (Err(e.to_string()), None),
            Err(panic) => (
                Err(format!("handler panicked: {}", panic_text(&panic))),
                None,
            ),
        },
    };
    let replied = reply_to.is_some();
    if let Some(address) = reply_to {
        // Reply in the caller's codec, so a JSON caller (another language, the command line)
        // can read the reply of a server that sends postcard by default.
        let codec = Codec::for_content_type(&request.content_type).unwrap_or(bus.codec);
        let encoded = match &result {
            Ok(resp) => codec
                .encode(resp)
                .map_err(|e| format!("server could not encode its reply: {e}")),
            Err(text) => Err(text.clone()),
        };
        let mut reply = match encoded {
            Ok(body) => {
                let mut e = Envelope::new(&request.routing_key, codec.content_type(), body);
                e.event = Resp::NAME.into();
                e.headers.insert(headers::REPLY_STATUS.into(), "ok".into());
                e
            }
            Err(text) => {
                let mut e = Envelope::new(
                    &request.routing_key,
                    "text/plain; charset=utf-8",
                    bytes::Bytes::from(text),
                );
                e.headers
                    .insert(headers::REPLY_STATUS.into(), "error".into());
                e
            }
        };
        reply.correlation_id = correlation_id;
        reply.emitter = bus.identity.to_string();
        for interceptor in bus.interceptors.iter() {
            interceptor.on_send(&mut reply);
        }
        if let Err(e) = bus.shared.provider.send_to(&address, reply).await {
            // The handler has run: running it again would not make the address reachable (a
            // refused address stays refused), so the reply is dropped and the request settled.
            tracing::warn!(
                reply_to = %address,
                correlation_id = ?request.correlation_id,
                service = %request.routing_key,
                error = %e,
                "could not send an RPC reply; dropped it (the request is not retried)"
            );
        }
    }
    match (poison, result) {
        (Some(reason), _) => Err(Failure::Poison(reason)),
        // A cast: nobody waits for the reply, so a failure follows the retry policy.
        (None, Err(text)) if !replied => Err(Failure::Handler(text)),
        _ => Ok(()),
    }
}
