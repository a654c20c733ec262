//! What the stomp test binaries share: broker URLs and the conformance harness.

#![allow(dead_code, unreachable_pub)]

pub mod admin;

use std::sync::{Arc, Mutex};

use tidings_conformance::{BoxFuture, Harness};
use tidings_core::driver::Capability;
use tidings_core::{Bus, Capabilities, Result};

/// The two brokers the driver is tested on.
#[derive(Debug, Clone, Copy)]
pub enum Broker {
    RabbitMq,
    ActiveMq,
}

impl Broker {
    pub fn label(self) -> &'static str {
        match self {
            Broker::RabbitMq => "rabbitmq",
            Broker::ActiveMq => "activemq",
        }
    }

    /// The broker URL from the environment, or this machine's default.
    pub fn url(self) -> String {
        let (var, default) = match self {
            Broker::RabbitMq => (
                "TIDINGS_STOMP_RABBITMQ_URL",
                "stomp://guest:guest@127.0.0.1:61613/",
            ),
            Broker::ActiveMq => (
                "TIDINGS_STOMP_ACTIVEMQ_URL",
                "stomp://admin:admin@127.0.0.1:61623/",
            ),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    /// The URL with `namespace` (and any extra options) added.
    pub fn url_in(self, namespace: &str, extra: &str) -> String {
        with_options(&self.url(), &format!("exchange={namespace}{extra}"))
    }
}

/// Adds `options` to the query of `url`.
pub fn with_options(url: &str, options: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{options}")
}

/// Runs the conformance suite on `broker` and deletes what its cases declared.
pub fn run_conformance(broker: Broker) -> std::process::ExitCode {
    let harness = StompHarness {
        broker,
        used: Arc::default(),
    };
    let used = harness.used.clone();
    let code = tidings_conformance::run_main(harness);
    let used = std::mem::take(&mut *used.lock().unwrap_or_else(|p| p.into_inner()));
    admin::purge(broker, &used);
    code
}

/// The conformance harness for one broker.
#[derive(Debug)]
pub struct StompHarness {
    pub broker: Broker,
    /// ActiveMQ namespaces to purge when the suite ends (one JVM start for all of them).
    used: Arc<Mutex<Vec<String>>>,
}

impl Harness for StompHarness {
    fn name(&self) -> String {
        format!("stomp-{}", self.broker.label())
    }

    fn capabilities(&self) -> Capabilities {
        // Same answers as the dialect gives once connected (checked by a test).
        Capabilities::default().without(
            Capability::Mandatory,
            match self.broker {
                Broker::RabbitMq => {
                    "RabbitMQ's STOMP plugin has no mandatory flag and returns a receipt even when no \
                     queue took the message"
                }
                Broker::ActiveMq => {
                    "ActiveMQ acknowledges a SEND to a topic nobody subscribes to; STOMP cannot tell"
                }
            },
        )
    }

    fn connect<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Bus>> {
        Box::pin(async move {
            let provider = tidings_stomp::connect(&self.broker.url_in(namespace, "")).await?;
            Ok(Bus::new(provider))
        })
    }

    /// RabbitMQ: deletes the case's queues now (one HTTP call each); ActiveMQ: remembers the
    /// namespace for [`run_conformance`] to purge at the end.
    fn cleanup<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match self.broker {
                Broker::RabbitMq => {
                    let namespace = vec![namespace.to_owned()];
                    let broker = self.broker;
                    let _ =
                        tokio::task::spawn_blocking(move || admin::purge(broker, &namespace)).await;
                }
                Broker::ActiveMq => self
                    .used
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(namespace.to_owned()),
            }
        })
    }
}
