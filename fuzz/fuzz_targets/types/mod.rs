//! Representative event types for the codec targets, and the check run on each decode.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tidings_core::{Codec, ErrorKind};

/// A log line (the examples' event).
#[derive(Debug, Serialize, Deserialize)]
struct LogEntry {
    level: String,
    text: String,
}

/// An RPC reply with bytes.
#[derive(Debug, Serialize, Deserialize)]
struct FileBytes {
    path: String,
    bytes: Vec<u8>,
}

/// Every kind of enum variant.
#[derive(Debug, Serialize, Deserialize)]
enum Command {
    Start { id: u64, args: Vec<String> },
    Stop(u32),
    Ping,
    Move(i8, f64, char),
}

/// Numbers of every width, options, maps, tuples, arrays, nested types.
#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u128,
    customer: Option<String>,
    lines: BTreeMap<String, (u32, f32)>,
    commands: Vec<Command>,
    total: i64,
    small: i16,
    note: Box<str>,
    flags: [bool; 3],
    unit: (),
    nested: Option<Box<Order>>,
}

/// A recursive type.
#[derive(Debug, Serialize, Deserialize)]
enum Tree {
    Leaf(i32),
    Node(Vec<Tree>),
}

/// Decodes `body` as `content_type` into the type `which` picks. A value that decodes encodes
/// again, and what it encodes to decodes and encodes to the same bytes.
pub fn decode(content_type: &str, which: u8, body: &[u8]) {
    match which % 7 {
        0 => check::<LogEntry>(content_type, body),
        1 => check::<FileBytes>(content_type, body),
        2 => check::<Command>(content_type, body),
        3 => check::<Order>(content_type, body),
        4 => check::<Tree>(content_type, body),
        5 => check::<(String, Vec<Option<u64>>, BTreeMap<u8, bool>)>(content_type, body),
        _ => check::<serde_json::Value>(content_type, body),
    }
}

fn check<T: Serialize + DeserializeOwned>(content_type: &str, body: &[u8]) {
    let value = match Codec::decode::<T>(content_type, body) {
        Ok(value) => value,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Decode);
            let _ = e.to_string();
            return;
        }
    };
    let codec = Codec::for_content_type(content_type).expect("a known content type");
    let Ok(bytes) = codec.encode(&value) else {
        // JSON cannot write every value it reads into these types (a map key that is not a
        // string, a float that is not finite).
        return;
    };
    let again: T = match Codec::decode(content_type, &bytes) {
        Ok(again) => again,
        // serde_json writes a float that is not finite (an f32 read from `1e39`) as `null`,
        // which it then does not read as a float.
        Err(_) if codec == Codec::Json && bytes.windows(4).any(|w| w == b"null") => return,
        Err(e) => panic!("what {content_type} wrote does not decode: {e}"),
    };
    assert_eq!(
        codec.encode(&again).expect("encodes again"),
        bytes,
        "{content_type} round trip"
    );
}
