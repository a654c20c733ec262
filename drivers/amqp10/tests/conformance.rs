//! The shared conformance suite against a real AMQP 1.0 broker (RabbitMQ with the
//! `rabbitmq_amqp1_0` and `rabbitmq_management` plugins). Each case runs in its own exchange;
//! cleanup deletes that exchange and its queues through the management API.
//!
//! Broker: `TIDINGS_AMQP10_URL`, default `amqp10://guest:guest@127.0.0.1:5672/`.

use std::process::ExitCode;

use tidings_conformance::{BoxFuture, Harness};
use tidings_core::{Bus, Capabilities, Result};

struct RabbitMqAmqp10 {
    base: String,
}

impl RabbitMqAmqp10 {
    /// The broker URL with the case's namespace as the exchange.
    fn url(&self, namespace: &str) -> String {
        let separator = if self.base.contains('?') { '&' } else { '?' };
        format!("{}{separator}exchange={namespace}", self.base)
    }
}

impl Harness for RabbitMqAmqp10 {
    fn name(&self) -> String {
        "amqp10-rabbitmq".into()
    }

    fn capabilities(&self) -> Capabilities {
        tidings_amqp10::capabilities()
    }

    fn connect<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Bus>> {
        Box::pin(async move {
            Ok(Bus::new(
                tidings_amqp10::connect(&self.url(namespace)).await?,
            ))
        })
    }

    fn cleanup<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = tidings_amqp10::delete_topology(&self.url(namespace)).await {
                eprintln!("cleanup of {namespace} failed: {e}");
            }
        })
    }
}

fn main() -> ExitCode {
    let base = std::env::var("TIDINGS_AMQP10_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "amqp10://guest:guest@127.0.0.1:5672/".to_owned());
    tidings_conformance::run_main(RabbitMqAmqp10 { base })
}
