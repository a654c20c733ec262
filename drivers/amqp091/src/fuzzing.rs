//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature): the driver's reader of
//! broker input, behind a function that takes and returns public types only. Not part of the API.

use bytes::Bytes;
use lapin::BasicProperties;
use tidings_core::Envelope;

/// The envelope of a delivery with these properties, routing key, redelivered flag and body.
pub fn decode(
    properties: &BasicProperties,
    routing_key: &str,
    redelivered: bool,
    body: Bytes,
) -> Envelope {
    crate::wire::decode(properties, routing_key, redelivered, body)
}
