//! The server's side: [`Bus::serve`], the [`Serve`] builder, and what a server does with one
//! request.

use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::bus::Bus;
use crate::codec::Codec;
use crate::driver::PublishOptions;
use crate::envelope::{headers, new_id, Envelope};
use crate::error::Result;
use crate::event::Event;
use crate::layer::Kind;
use crate::message::{decode, HandlerError};
use crate::rpc::decline::{self, Decline, Declined};
use crate::subscribe::handler::{panic_text, Done, Failure, RawHandler};
use crate::subscribe::{settings_methods, start, Settings, Subscription};

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
        Box::pin(async move {
            start(&self.bus, self.settings, Kind::Request, move |e| handler(e)).await
        })
    }
}

impl Bus {
    /// Serves the RPC `name` with `handler`. A handler error goes back to the caller as
    /// [`ErrorKind::Remote`](crate::ErrorKind::Remote); so does a panic. A handler that
    /// returns [`Decline`] passes the request to another server of the group (see there). Requests sent with [`cast`](Bus::cast) are handled
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
        // This server instance, as the requests it declines record it.
        let server: Arc<str> = Arc::from(new_id());
        let raw: RawHandler = Arc::new(move |request: Arc<Envelope>| {
            let bus = bus.clone();
            let handler = handler.clone();
            let server = server.clone();
            async move { serve_one::<Req, Resp, F, Fut>(&bus, &server, &*handler, request).await }
                .boxed()
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
    server: &str,
    handler: &F,
    request: Arc<Envelope>,
) -> Result<Done, Failure>
where
    Req: Event,
    Resp: Event,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Result<Resp, HandlerError>>,
{
    let mut declined = decline::declined(&request);
    if declined.iter().any(|d| d.server == server) {
        // Back at a server that declined it: every server it reaches has had its turn.
        return every_server_declined(bus, &request, &declined).await;
    }
    let (result, poison) = match decode::<Req>(&request) {
        Err(reason) => (Err(reason.clone()), Some(reason)),
        Ok(req) => match AssertUnwindSafe(handler(req)).catch_unwind().await {
            Ok(Ok(resp)) => (Ok(resp), None),
            Ok(Err(e)) => match e.downcast::<Decline>() {
                Ok(decline) => {
                    declined.push(Declined {
                        server: server.to_owned(),
                        emitter: bus.identity.to_string(),
                        reason: decline.reason().to_owned(),
                    });
                    let value = decline::header_value(&declined);
                    let headers = BTreeMap::from([(headers::DECLINED_BY.to_owned(), value)]);
                    return Err(Failure::Decline(headers));
                }
                Err(e) => (Err(e.to_string()), None),
            },
            Err(panic) => (
                Err(format!("handler panicked: {}", panic_text(&panic))),
                None,
            ),
        },
    };
    let is_call = request.reply_to.is_some();
    let replied = if is_call {
        // Reply in the caller's codec, so a JSON caller (another language, the command line)
        // can read the reply of a server that sends postcard by default.
        let codec = Codec::for_content_type(&request.content_type).unwrap_or(bus.codec);
        let encoded = match &result {
            Ok(resp) => codec
                .encode(resp)
                .map_err(|e| format!("server could not encode its reply: {e}")),
            Err(text) => Err(text.clone()),
        };
        let reply = match encoded {
            Ok(body) => {
                let mut e = Envelope::new(&request.routing_key, codec.content_type(), body);
                e.event = Resp::NAME.into();
                e.headers.insert(headers::REPLY_STATUS.into(), "ok".into());
                e
            }
            Err(text) => error_reply(&request, text),
        };
        send_reply(bus, &request, reply).await
    } else {
        false
    };
    match (poison, result) {
        (Some(reason), _) => Err(Failure::Poison(reason)),
        // A cast: nobody waits for the reply, so a failure follows the retry policy.
        (None, Err(text)) if !is_call => Err(Failure::Handler(text)),
        (None, result) => Ok(Done {
            replied,
            error: result.err(),
        }),
    }
}

/// A request back at a server that declined it: the caller is told so, a cast is
/// dead-lettered; it goes round no more.
async fn every_server_declined(
    bus: &Bus,
    request: &Envelope,
    declined: &[Declined],
) -> Result<Done, Failure> {
    let text = decline::every_server_declined(&request.routing_key, declined);
    if request.reply_to.is_none() {
        return Err(Failure::Poison(text));
    }
    let mut reply = error_reply(request, text.clone());
    reply
        .headers
        .insert(headers::DECLINED_BY.into(), decline::header_value(declined));
    let replied = send_reply(bus, request, reply).await;
    Ok(Done {
        replied,
        error: Some(text),
    })
}

/// A reply carrying the server's error `text`.
fn error_reply(request: &Envelope, text: String) -> Envelope {
    let mut e = Envelope::new(
        &request.routing_key,
        "text/plain; charset=utf-8",
        bytes::Bytes::from(text),
    );
    e.headers
        .insert(headers::REPLY_STATUS.into(), "error".into());
    e
}

/// Sends `reply` to the request's `reply_to`; whether it went out.
async fn send_reply(bus: &Bus, request: &Envelope, mut reply: Envelope) -> bool {
    let Some(address) = request.reply_to.clone() else {
        return false;
    };
    reply.correlation_id = request.correlation_id.clone();
    reply.emitter = bus.identity.to_string();
    let sent = bus
        .send(
            reply,
            Kind::Reply,
            &PublishOptions::DEFAULT,
            Some(address.clone()),
        )
        .await;
    if let Err(e) = &sent {
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
    sent.is_ok()
}
