//! RabbitMQ 3.x with the `rabbitmq_amqp1_0` plugin.
//!
//! Addresses: `/exchange/X` publishes into the topic exchange X with the message subject as
//! routing key; `/amq/queue/Q` sends into or consumes from an existing queue Q. RabbitMQ 3.x
//! cannot declare a durable queue or bind it to a pattern over AMQP 1.0 (`/queue/Q` declares a
//! non-durable queue without arguments and fails against an existing one, ending the whole
//! session), so queues, bindings and the exchange are declared through the management HTTP API
//! (`rabbitmq_management`), and consumed as `/amq/queue/Q`. The same API tells whether a routing
//! key is bound anywhere, for mandatory publishes.

mod management;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fe2o3_amqp::types::messaging::Header;
use tidings_core::broker_url::bracketed;
use tidings_core::{ErrorKind, Pattern, Result};

use self::management::{segment, Management};
use super::{Dialect, QueueSpec};
use crate::config::Config;

/// How long a positive "this key is routed" answer is trusted before asking again.
const ROUTE_CACHE: Duration = Duration::from_secs(2);

/// The RabbitMQ dialect for one connection.
#[derive(Debug)]
pub(crate) struct RabbitMq {
    exchange: String,
    vhost: String,
    api: Management,
    routed: Mutex<HashMap<String, Instant>>,
}

impl RabbitMq {
    pub(crate) fn new(config: &Config) -> Result<Self> {
        let base = config
            .management
            .clone()
            .unwrap_or_else(|| format!("http://{}:15672", bracketed(&config.host)));
        let user = config
            .username
            .clone()
            .unwrap_or_else(|| "guest".to_owned());
        let pass = config
            .password
            .clone()
            .unwrap_or_else(|| "guest".to_owned());
        Ok(Self {
            exchange: config.exchange.clone(),
            vhost: config.vhost.clone(),
            api: Management::new(&base, &user, &pass),
            routed: Mutex::new(HashMap::new()),
        })
    }
}

#[async_trait]
impl Dialect for RabbitMq {
    fn open_hostname(&self) -> Option<String> {
        Some(format!("vhost:{}", self.vhost))
    }

    /// RabbitMQ leaves `delivery-count` at 0 and marks a redelivery with
    /// `first-acquirer = false` instead (it sends the header on every delivery).
    fn was_redelivered(&self, header: Option<&Header>) -> bool {
        header.is_some_and(|h| h.delivery_count > 0 || !h.first_acquirer)
    }

    fn topic_address(&self) -> String {
        format!("/exchange/{}", self.exchange)
    }

    fn queue_address(&self, name: &str) -> String {
        format!("/amq/queue/{name}")
    }

    fn group_queue(&self, group: &str) -> String {
        format!("{}.group.{group}", self.exchange)
    }

    fn dead_letter_queue(&self, name: &str) -> String {
        format!("{}.dead.{name}", self.exchange)
    }

    fn private_queue(&self, kind: &str, unique: &str) -> String {
        format!("{}.{kind}.{unique}", self.exchange)
    }

    async fn declare_topic_space(&self) -> Result<()> {
        let body = serde_json::json!({"type": "topic", "durable": true}).to_string();
        self.api
            .expect_ok(
                ErrorKind::Connection,
                &format!("declaring topic exchange {:?}", self.exchange),
                "PUT",
                format!(
                    "/api/exchanges/{}/{}",
                    segment(&self.vhost),
                    segment(&self.exchange)
                ),
                Some(body),
            )
            .await
            .map(drop)
    }

    async fn declare_queue(&self, queue: &QueueSpec) -> Result<()> {
        let vhost = segment(&self.vhost);
        let name = segment(&queue.name);
        let body = serde_json::json!({"durable": queue.durable, "auto_delete": queue.auto_delete, "arguments": {}}).to_string();
        self.api
            .expect_ok(
                ErrorKind::Subscribe,
                &format!("declaring queue {:?} (durable={}, auto_delete={}); if it exists with other settings, delete it or use another group name", queue.name, queue.durable, queue.auto_delete),
                "PUT",
                format!("/api/queues/{vhost}/{name}"),
                Some(body),
            )
            .await?;
        if let Some(pattern) = &queue.binding {
            let body =
                serde_json::json!({"routing_key": pattern.as_str(), "arguments": {}}).to_string();
            self.api
                .expect_ok(
                    ErrorKind::Subscribe,
                    &format!(
                        "binding queue {:?} to {:?} with {:?}",
                        queue.name,
                        self.exchange,
                        pattern.as_str()
                    ),
                    "POST",
                    format!(
                        "/api/bindings/{vhost}/e/{}/q/{name}",
                        segment(&self.exchange)
                    ),
                    Some(body),
                )
                .await?;
        }
        Ok(())
    }

    async fn is_routed(&self, routing_key: &str) -> Result<Option<bool>> {
        {
            let cache = self.routed.lock().unwrap_or_else(|p| p.into_inner());
            if cache
                .get(routing_key)
                .is_some_and(|at| at.elapsed() < ROUTE_CACHE)
            {
                return Ok(Some(true));
            }
        }
        let text = self
            .api
            .expect_ok(
                ErrorKind::Publish,
                "listing bindings for a mandatory publish",
                "GET",
                format!(
                    "/api/exchanges/{}/{}/bindings/source",
                    segment(&self.vhost),
                    segment(&self.exchange)
                ),
                None,
            )
            .await?;
        let bindings: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        let routed = bindings.as_array().is_some_and(|all| {
            all.iter().any(|b| {
                b.get("routing_key")
                    .and_then(|k| k.as_str())
                    .and_then(|k| Pattern::new(k).ok())
                    .is_some_and(|p| p.matches(routing_key))
            })
        });
        if routed {
            let mut cache = self.routed.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(routing_key.to_owned(), Instant::now());
        }
        Ok(Some(routed))
    }
}
