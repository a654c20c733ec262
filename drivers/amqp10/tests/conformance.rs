//! The shared conformance suite against a real AMQP 1.0 broker (RabbitMQ with the
//! `rabbitmq_amqp1_0` and `rabbitmq_management` plugins). Each case runs in its own exchange;
//! cleanup deletes that exchange and its queues through the management API.
//!
//! Broker: `TIDINGS_AMQP10_URL`, default `amqp10://guest:guest@127.0.0.1:5672/`.

use std::process::ExitCode;

use tidings_conformance::rabbitmq::Management;
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
        Capabilities::default()
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
            let url = self.url(namespace);
            match tokio::task::spawn_blocking(move || Management::delete_namespace_of(&url)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("cleanup of {namespace} failed: {e}"),
                Err(e) => eprintln!("cleanup of {namespace} did not finish: {e}"),
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
