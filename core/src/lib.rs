//! Transport-free core of [tidings](https://docs.rs/tidings): typed events, routing keys and
//! patterns, envelopes, codecs, the [`Bus`] that applications hold, and (in [`driver`]) the
//! contract that transport drivers implement.
//!
//! Drivers depend on this crate only. Applications use the `tidings` facade, which re-exports
//! everything here and adds `connect(url)`.

pub mod barrier;
pub mod broker_url;
pub mod bus;
pub mod codec;
pub mod dead_letter;
pub mod driver;
pub mod envelope;
pub mod error;
pub mod event;
pub mod interceptor;
pub mod layer;
mod message;
#[cfg(any(feature = "otel", feature = "metrics"))]
pub mod observe;
mod receive;
mod reply_inbox;
pub mod routing;
pub mod rpc;
mod send;
pub mod subscribe;

pub use broker_url::BrokerUrl;
pub use bus::{Bus, Emit};
pub use codec::Codec;
pub use dead_letter::{DeadLetter, DeadLetters};
pub use driver::{Capabilities, Status};
pub use envelope::Envelope;
pub use error::{Error, ErrorKind, Result};
pub use event::Event;
pub use interceptor::Interceptor;
pub use layer::Layer;
pub use message::{HandlerError, HandlerResult, Message, Payload};
pub use routing::{Pattern, RoutingKey, Segment};
pub use rpc::{Call, Decline, Serve};
pub use subscribe::{SubscribeBuilder, Subscription};

pub use async_trait::async_trait;
pub use bytes::Bytes;
