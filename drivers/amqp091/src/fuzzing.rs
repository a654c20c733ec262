//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature): the driver's reader of
//! broker input (and its writer, to check the two agree), behind functions that take and return
//! public types only. Not part of the API.

use bytes::Bytes;
use lapin::BasicProperties;
use tidings_core::{Envelope, Result};

/// The envelope of a delivery with these properties, routing key, redelivered flag and body.
pub fn decode(
    properties: &BasicProperties,
    routing_key: &str,
    redelivered: bool,
    body: Bytes,
) -> Envelope {
    crate::wire::decode(properties, routing_key, redelivered, body)
}

/// The properties the driver publishes `envelope` with; `direct` when it goes straight to a
/// queue (the routing key then travels in a header).
pub fn encode(envelope: &Envelope, direct: bool) -> Result<BasicProperties> {
    crate::wire::encode(envelope, direct)
}
