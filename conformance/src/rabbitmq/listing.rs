//! What a vhost has, with the settings that matter for comparing it with what a system needs:
//! queues with their flags and arguments, bindings, exchanges. `tidings topology check` reads
//! these.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{segment, Management, Method};

/// A queue with the settings it was declared with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[non_exhaustive]
pub struct QueueDetails {
    /// The queue's name.
    pub name: String,
    /// Survives a broker restart.
    #[serde(default)]
    pub durable: bool,
    /// Deleted when its last consumer goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Owned by one connection.
    #[serde(default)]
    pub exclusive: bool,
    /// The `x-…` arguments it was declared with (`x-queue-type`, `x-delivery-limit`, …).
    #[serde(default)]
    pub arguments: Map<String, Value>,
}

/// A binding of a queue (or exchange) to an exchange.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Binding {
    /// The exchange it binds from (`""`: the default exchange).
    pub source: String,
    /// The queue or exchange it binds to.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// The routing key or pattern.
    pub routing_key: String,
}

/// An exchange and its type.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Exchange {
    /// The exchange's name.
    pub name: String,
    /// `topic`, `direct`, `fanout`, `headers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Survives a broker restart.
    #[serde(default)]
    pub durable: bool,
}

impl Management {
    /// Every queue of the vhost with its flags and arguments.
    pub fn queue_details(&self) -> Result<Vec<QueueDetails>, String> {
        let path = format!(
            "/api/queues/{}?columns=name,durable,auto_delete,exclusive,arguments",
            segment(self.vhost())
        );
        self.list(&path, "listing queues")
    }

    /// Every binding of the vhost.
    pub fn bindings(&self) -> Result<Vec<Binding>, String> {
        let path = format!("/api/bindings/{}", segment(self.vhost()));
        self.list(&path, "listing bindings")
    }

    /// Every exchange of the vhost.
    pub fn exchanges(&self) -> Result<Vec<Exchange>, String> {
        let path = format!(
            "/api/exchanges/{}?columns=name,type,durable",
            segment(self.vhost())
        );
        self.list(&path, "listing exchanges")
    }

    fn list<T: serde::de::DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, String> {
        let body = self.expect(Method::Get, path, None, what)?;
        serde_json::from_str(&body)
            .map_err(|e| format!("{what} at {}: unexpected answer: {e}", self.base))
    }
}
