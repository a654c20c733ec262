//! Typed events.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A type that travels on the bus: a serde type with a stable name.
///
/// The name is written into every envelope, so a receiver expecting another event type on the
/// same routing key dead-letters the message with a clear reason instead of misreading it.
///
/// # Examples
/// ```
/// use serde::{Deserialize, Serialize};
/// use tidings_core::Event;
///
/// #[derive(Serialize, Deserialize)]
/// struct LogEntry { level: String, text: String }
///
/// impl Event for LogEntry {
///     const NAME: &'static str = "log_entry";
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// A stable name for this event type, independent of the Rust type's path.
    const NAME: &'static str;
}

/// The empty event: for RPC calls that take or return nothing.
impl Event for () {
    const NAME: &'static str = "unit";
}

impl Event for String {
    const NAME: &'static str = "string";
}

impl Event for Vec<u8> {
    const NAME: &'static str = "bytes";
}

/// Any JSON value: for tools (like a command line) that handle events they have no type for.
impl Event for serde_json::Value {
    const NAME: &'static str = "";
}

macro_rules! primitive_events {
    ($($t:ty => $name:literal),* $(,)?) => {
        $(
            #[doc = concat!("A bare `", stringify!($t), "`, for small RPC requests and replies.")]
            impl Event for $t {
                const NAME: &'static str = $name;
            }
        )*
    };
}

primitive_events!(bool => "bool", u32 => "u32", u64 => "u64", i32 => "i32", i64 => "i64", f64 => "f64");
