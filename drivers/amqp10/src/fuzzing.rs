//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature): the driver's reader of
//! broker input (and its writer, to check the two agree), behind functions that take and return
//! public types only. Not part of the API.

use fe2o3_amqp::types::messaging::{Body, Data, Message};
use fe2o3_amqp::types::primitives::Value;
use tidings_core::Envelope;

/// The envelope of a received message; `redelivered` as the broker says.
pub fn decode(message: Message<Body<Value>>, redelivered: bool) -> Envelope {
    crate::wire::decode(message, redelivered)
}

/// The message the driver sends for `envelope`.
pub fn encode(envelope: Envelope, durable: bool) -> Message<Data> {
    crate::wire::encode(envelope, durable)
}
