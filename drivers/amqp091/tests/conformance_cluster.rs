//! The shared conformance suite against the 3-node RabbitMQ cluster that scripts/cluster.sh
//! starts (`TIDINGS_AMQP091_CLUSTER_URL`, default its three nodes on 127.0.0.1:5682–5684), with
//! one URL that lists every node: connections spread over the nodes, and durable groups and
//! dead letters are quorum queues (the default for a host list).

mod support;

use std::process::ExitCode;

use tidings_conformance::{rabbitmq, BoxFuture, Harness};
use tidings_core::{Bus, Capabilities, Result};

/// The cluster's nodes, as scripts/cluster.sh starts them.
const CLUSTER_URL: &str = "amqp://guest:guest@127.0.0.1:5682,127.0.0.1:5683,127.0.0.1:5684/%2f";
/// The management API of the cluster's first node (any node answers for the whole cluster).
const CLUSTER_MANAGEMENT: &str = "http://127.0.0.1:15682";

fn cluster_url() -> String {
    std::env::var("TIDINGS_AMQP091_CLUSTER_URL").unwrap_or_else(|_| CLUSTER_URL.to_owned())
}

struct Cluster;

impl Harness for Cluster {
    fn name(&self) -> String {
        "rabbitmq-cluster-amqp091".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn connect<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Bus>> {
        Box::pin(async move {
            let url = format!("{}?exchange={namespace}", cluster_url());
            Ok(Bus::new(tidings_amqp091::connect(&url).await?))
        })
    }

    fn cleanup<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, ()> {
        let name = namespace.to_owned();
        Box::pin(async move {
            let outcome = tokio::task::spawn_blocking(move || {
                rabbitmq::Management::for_broker(&cluster_url())?.delete_namespace(&name)
            })
            .await;
            if let Ok(Err(e)) = outcome {
                eprintln!("cleanup of {namespace}: {e}");
            }
        })
    }
}

fn main() -> ExitCode {
    if std::env::var_os(rabbitmq::MANAGEMENT_ENV).is_none() {
        // Before any thread starts: the cluster's management API is not on the default port.
        std::env::set_var(rabbitmq::MANAGEMENT_ENV, CLUSTER_MANAGEMENT);
    }
    tidings_conformance::run_main(Cluster)
}
