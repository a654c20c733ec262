//! RabbitMQ 3.x with the `rabbitmq_amqp1_0` plugin.
//!
//! Addresses: `/exchange/X` publishes into the topic exchange X with the message subject as
//! routing key; `/amq/queue/Q` sends into or consumes from an existing queue Q. RabbitMQ 3.x
//! cannot declare a durable queue or bind it to a pattern over AMQP 1.0 (`/queue/Q` declares a
//! non-durable queue without arguments and fails against an existing one, ending the whole
//! session), so queues, bindings and the exchange are declared through the management HTTP API
//! (`rabbitmq_management`), and consumed as `/amq/queue/Q`. The same API tells whether a routing
//! key is bound anywhere, for mandatory publishes.
//!
//! On a cluster the API of the node the connection is on is used (`?management=` lists one API
//! per node, in the nodes' order; without it, `http://<node's host>:15672`), and another node's
//! when that one cannot be reached. Durable groups and dead-letter queues are quorum queues
//! with `?queue-type=quorum` (the default for a URL of several nodes), with RabbitMQ's own
//! delivery limit declared out of reach: attempts and dead letters are tidings' policy.

mod management;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fe2o3_amqp::types::messaging::Header;
use tidings_core::broker_url::{bracketed, Node};
use tidings_core::{Error, ErrorKind, Pattern, Result};

use self::management::{segment, Management};
use super::{Dialect, QueueSpec};
use crate::config::Config;
use tidings_plumbing::queue_type::{QueueType, DELIVERY_LIMIT};

/// How long a positive "this key is routed" answer is trusted before asking again.
const ROUTE_CACHE: Duration = Duration::from_secs(2);

/// The RabbitMQ dialect for one connection.
#[derive(Debug)]
pub(crate) struct RabbitMq {
    exchange: String,
    vhost: String,
    queue_type: QueueType,
    /// The URL's nodes, to find the management API of the one in use.
    nodes: Vec<Node>,
    api: Management,
    routed: Mutex<HashMap<String, Instant>>,
}

impl RabbitMq {
    pub(crate) fn new(config: &Config) -> Result<Self> {
        // One API per node, paired by position; one given for all; or each node's host on
        // the management API's default port.
        let bases = if config.management.is_empty() {
            config
                .nodes
                .iter()
                .map(|node| format!("http://{}:15672", bracketed(node.host())))
                .collect()
        } else {
            config.management.clone()
        };
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
            queue_type: config.queue_type,
            nodes: config.nodes.clone(),
            api: Management::new(bases, &user, &pass),
            routed: Mutex::new(HashMap::new()),
        })
    }
}

impl RabbitMq {
    /// The declaration's arguments: a lasting queue of a quorum URL is a quorum queue whose
    /// delivery limit is set explicitly out of reach.
    fn arguments(&self, queue: &QueueSpec) -> serde_json::Value {
        if queue.lasting && self.queue_type == QueueType::Quorum {
            serde_json::json!({"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT})
        } else {
            serde_json::json!({})
        }
    }

    /// The type a queue is declared as.
    fn type_of(&self, queue: &QueueSpec) -> QueueType {
        if queue.lasting {
            self.queue_type
        } else {
            QueueType::Classic
        }
    }
}

#[async_trait]
impl Dialect for RabbitMq {
    fn use_node(&self, node: &Node) {
        // Paired by position when there is one API per node; a single API serves them all.
        if let Some(index) = self.nodes.iter().position(|n| n == node) {
            self.api.prefer(index);
        }
    }

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
        let body = serde_json::json!({
            "durable": queue.durable,
            "auto_delete": queue.auto_delete,
            "arguments": self.arguments(queue),
        })
        .to_string();
        let (status, text) = self
            .api
            .call("PUT", format!("/api/queues/{vhost}/{name}"), Some(body))
            .await?;
        if !(200..300).contains(&status) {
            let wanted = self.type_of(queue).name();
            let hint = self
                .type_of(queue)
                .mismatch(&text, &queue.name)
                .unwrap_or_else(|| {
                    "if it exists with other settings, delete it or use another group name"
                        .to_owned()
                });
            return Err(Error::new(
                ErrorKind::Subscribe,
                format!(
                    "cannot declare queue {:?} (durable={}, auto_delete={}, {wanted}): the \
                     management API at {} answered {status}: {}; {hint}",
                    queue.name,
                    queue.durable,
                    queue.auto_delete,
                    self.api.preferred(),
                    text.trim()
                ),
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect(url: &str) -> RabbitMq {
        RabbitMq::new(&Config::parse(url).unwrap()).unwrap()
    }

    fn queue(lasting: bool) -> QueueSpec {
        QueueSpec {
            name: "q".to_owned(),
            durable: lasting,
            auto_delete: !lasting,
            lasting,
            binding: None,
        }
    }

    #[test]
    fn lasting_queues_of_a_cluster_are_quorum_queues_with_an_explicit_delivery_limit() {
        let cluster = dialect("amqp10://h1,h2,h3");
        let args = cluster.arguments(&queue(true));
        assert_eq!(args["x-queue-type"], "quorum");
        assert_eq!(args["x-delivery-limit"], i64::from(i32::MAX));
        assert_eq!(cluster.arguments(&queue(false)), serde_json::json!({}));
        assert_eq!(cluster.type_of(&queue(false)), QueueType::Classic);
        let classic = dialect("amqp10://h1,h2/?queue-type=classic");
        assert_eq!(classic.arguments(&queue(true)), serde_json::json!({}));
        let single = dialect("amqp10://h1");
        assert_eq!(single.arguments(&queue(true)), serde_json::json!({}));
    }

    #[test]
    fn the_management_api_follows_the_node_in_use() {
        let paired = dialect(
            "amqp10://127.0.0.1:5682,127.0.0.1:5683/?management=http://127.0.0.1:15682,http://127.0.0.1:15683/",
        );
        assert_eq!(paired.api.preferred(), "http://127.0.0.1:15682");
        paired.use_node(&paired.nodes[1].clone());
        assert_eq!(paired.api.preferred(), "http://127.0.0.1:15683");
        let derived = dialect("amqp10://a:5672,[::1]:5673");
        derived.use_node(&derived.nodes[1].clone());
        assert_eq!(derived.api.preferred(), "http://[::1]:15672");
        let one = dialect("amqp10://a,b/?management=http://m:1");
        one.use_node(&one.nodes[1].clone());
        assert_eq!(one.api.preferred(), "http://m:1");
    }
}
