//! The shared conformance suite against RabbitMQ (`TIDINGS_AMQP091_URL`, default the local
//! broker). Each case runs on its own exchange (the case's namespace); its exchange and queues
//! are deleted afterwards.

mod support;

use std::process::ExitCode;

use tidings_conformance::{BoxFuture, Harness};
use tidings_core::{Bus, Capabilities, Result};

struct RabbitMq;

impl Harness for RabbitMq {
    fn name(&self) -> String {
        "rabbitmq-amqp091".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn connect<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Bus>> {
        Box::pin(async move {
            let url = support::url_with(&format!("exchange={namespace}"));
            Ok(Bus::new(tidings_amqp091::connect(&url).await?))
        })
    }

    fn cleanup<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(support::cleanup(namespace))
    }
}

fn main() -> ExitCode {
    tidings_conformance::run_main(RabbitMq)
}
