//! RPC in the driver contract: a connection has one reply inbox, shared by every bus over it;
//! a request gets its `reply_to` from the driver (`Provider::request`), and `publish` leaves a
//! `reply_to` it is given alone.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tidings_core::driver::PublishOptions;
use tidings_core::interceptor::on_receive;
use tidings_core::layer::{BoxFuture, Layer, Next, Outgoing};
use tidings_core::{Bus, Codec, Envelope, Event, Message, Result};

use super::Outcome;
use crate::ensure;
use crate::support::{collector, Ctx, Note, SOON};

/// Records, for each request a handle sends, the inbox address it will carry and what its
/// envelope's `reply_to` held on the way out.
#[derive(Default)]
struct RequestAddresses(Mutex<Vec<(Option<String>, Option<String>)>>);

struct Record(Arc<RequestAddresses>);

impl Layer for Record {
    fn send<'a>(
        &'a self,
        message: Outgoing,
        next: Next<'a, Outgoing>,
    ) -> BoxFuture<'a, Result<()>> {
        self.0 .0.lock().unwrap().push((
            message.reply_to().map(str::to_owned),
            message.envelope.reply_to.clone(),
        ));
        next.run(message)
    }
}

/// Two `Bus::new` over one provider (one connection) call one server at the same time — the
/// first calls of both race to open the connection's inbox — and each gets exactly its own
/// replies, through its own layers.
pub(super) async fn rpc_two_buses_over_one_connection_each_get_their_own_replies(
    ctx: Arc<Ctx>,
) -> Outcome {
    const CALLS: u64 = 40;
    let name = ctx.name("tagged");
    let server = ctx.bus().await?;
    server
        .serve(&name, |n: u64| async move { Ok(n + 1) })
        .concurrency(8)
        .await?;
    let first = ctx.bus().await?;
    let second = Bus::new(first.provider().clone());
    let mut callers = Vec::new();
    for (tag, bus) in [(1u64, first), (2u64, second)] {
        let replies = Arc::new(Mutex::new(0u64));
        let counted = replies.clone();
        let addresses = Arc::new(RequestAddresses::default());
        let bus = bus
            .with_layer(Record(addresses.clone()))
            .with_interceptor(on_receive(move |_| *counted.lock().unwrap() += 1));
        callers.push((tag, bus, replies, addresses));
    }
    let name = &name;
    let calls = callers.iter().flat_map(|(tag, bus, _, _)| {
        (0..CALLS).map(move |i| {
            let request = tag * 1_000_000 + i;
            async move {
                let got: tidings_core::Result<u64> = bus.call(name, &request).timeout(SOON).await;
                (tag, request, got)
            }
        })
    });
    for (tag, request, got) in futures::future::join_all(calls).await {
        let got = got.map_err(|e| format!("bus {tag}, call {request}: {e}"))?;
        ensure!(
            got == request + 1,
            "bus {tag}, call {request} got {got}, the reply to another call"
        );
    }
    let mut inboxes = BTreeSet::new();
    for (tag, _, replies, addresses) in &callers {
        let replies = *replies.lock().unwrap();
        ensure!(
            replies == CALLS,
            "the layers of bus {tag} saw {replies} replies come in, expected its own {CALLS}"
        );
        let addresses = addresses.0.lock().unwrap();
        ensure!(
            addresses.len() == CALLS as usize,
            "the layers of bus {tag} saw {} requests go out, expected {CALLS}",
            addresses.len()
        );
        for (shown, in_envelope) in addresses.iter() {
            ensure!(
                in_envelope.is_none(),
                "bus {tag}: a request's envelope had reply_to {in_envelope:?} in the layers; the \
                 driver sets it"
            );
            match shown {
                Some(address) if !address.is_empty() => inboxes.insert(address.clone()),
                other => {
                    return Err(format!("bus {tag}: a request showed reply_to {other:?}").into())
                }
            };
        }
    }
    ensure!(
        inboxes.len() == 1,
        "the requests of one connection showed these inboxes: {inboxes:?}, expected one"
    );
    Ok(())
}

/// `publish` is not a request: a `reply_to` it is given travels as it is, and the subscriber
/// sees it unchanged.
pub(super) async fn publish_carries_a_given_reply_to_unchanged(ctx: Arc<Ctx>) -> Outcome {
    let key = "relayed.request";
    let (sink, mut got) = collector::<(Option<String>, Option<String>)>();
    let subscriber = ctx.bus().await?;
    subscriber
        .subscribe::<Note>(key)
        .handle_message(sink.recorder(|m: Message<Note>| {
            let envelope = m.envelope();
            (envelope.reply_to.clone(), envelope.correlation_id.clone())
        }))
        .await?;
    let publisher = ctx.bus().await?;
    // Open the publisher's inbox first, so a driver that recognised requests by their
    // `reply_to` would have one to confuse this with.
    let _ = publisher
        .call::<Note, Note>(&ctx.name("nobody"), &Note::new(0))
        .timeout(std::time::Duration::from_millis(200))
        .await;
    let codec = Codec::default();
    let mut envelope = Envelope::new(key, codec.content_type(), codec.encode(&Note::new(7))?);
    envelope.event = <Note as Event>::NAME.into();
    envelope.reply_to = Some(format!("{}.elsewhere", ctx.name("inbox")));
    envelope.correlation_id = Some("relayed-1".into());
    publisher
        .publish_envelope(envelope.clone(), &PublishOptions::DEFAULT)
        .await?;
    let seen = got.take(1, SOON).await?;
    ensure!(
        seen == vec![(envelope.reply_to.clone(), envelope.correlation_id.clone())],
        "the subscriber saw (reply_to, correlation_id) {seen:?}, expected them as published"
    );
    Ok(())
}
