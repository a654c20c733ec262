//! `tidings topology check`: what RabbitMQ has that differs from what a system file needs —
//! read through the management HTTP API, since no messaging protocol lists queues or bindings.
//!
//! The names are the drivers' (docs/wire-format-amqp091.md, docs/brokers/rabbitmq.md): group
//! `g` is the queue `<exchange>.group.g`, dead letters of `d` are `<exchange>.dead.d`. Over
//! AMQP 0.9.1 and 1.0 a group is bound to the topic exchange `<exchange>` with its pattern;
//! over STOMP to `amq.topic` with `<exchange>.<pattern>`.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};
use tidings::system::{System, Topology};
use tidings::BrokerUrl;
use tidings_conformance::rabbitmq::Management;

use crate::failure::Failure;

const AMQP: &[&str] = &["amqp", "amqps", "amqp10", "amqp10s"];
const STOMP: &[&str] = &["stomp", "stomp+ssl"];

/// What the file needs on the broker, in RabbitMQ's names.
#[derive(Debug, Default)]
struct Expected {
    /// The topic exchange that must exist (none over STOMP: it uses `amq.topic`).
    exchange: Option<String>,
    /// Queue name, what it is for, and the arguments it is declared with.
    queues: Vec<(String, String, Map<String, Value>)>,
    /// (source exchange, queue, routing key).
    bindings: BTreeSet<(String, String, String)>,
    /// Queues named so are durable groups: those not in the file are reported.
    group_prefix: String,
    /// The exchange groups are bound to.
    source: String,
}

/// What the broker has.
#[derive(Debug, Default)]
struct Observed {
    queues: Vec<Queue>,
    bindings: BTreeSet<(String, String, String)>,
    /// (name, type, durable).
    exchanges: Vec<(String, String, bool)>,
}

#[derive(Debug)]
struct Queue {
    name: String,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: Map<String, Value>,
}

pub(super) async fn run(
    url: &str,
    system: &System,
    management: Option<&str>,
) -> Result<(), Failure> {
    let expected = expected(url, &system.topology())?;
    let api_url = with_management(url, management);
    let observed = tokio::task::spawn_blocking(move || observe(&api_url))
        .await
        .map_err(|e| Failure::runtime(format!("reading the broker failed: {e}")))?
        .map_err(|e| {
            Failure::runtime(format!(
                "cannot read the broker's topology: {e}; `topology check` reads RabbitMQ's \
                 management API (other brokers cannot be checked)"
            ))
        })?;
    let differences = diff(&expected, &observed);
    for line in &differences {
        println!("{line}");
    }
    let shown = tidings::redact(url);
    if differences.is_empty() {
        println!(
            "tidings: the broker at {shown} has what {} needs ({}, {})",
            system.file(),
            super::plural(expected.queues.len(), "queue"),
            super::plural(expected.bindings.len(), "binding")
        );
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "{} between {} and the broker at {shown}",
            super::plural(differences.len(), "difference"),
            system.file()
        )))
    }
}

/// The names and settings the drivers of `url`'s scheme give the topology's groups.
fn expected(url: &str, topology: &Topology) -> Result<Expected, Failure> {
    if url.starts_with("memory:") {
        return Err(Failure::usage(
            "memory:// is an embedded broker inside each process: there is no broker to check \
             from outside; `topology check` checks RabbitMQ (amqp://, amqp10://, stomp://)",
        ));
    }
    let schemes: Vec<&str> = AMQP.iter().chain(STOMP).copied().collect();
    let mut parsed = BrokerUrl::parse(url, "topology check", &schemes)?;
    let exchange = parsed.exchange().to_owned();
    let stomp = STOMP.contains(&parsed.scheme());
    // The arguments each driver declares (drivers/amqp091/src/topology.rs,
    // drivers/amqp10/src/dialect/rabbitmq/mod.rs, drivers/stomp/src/dialect/rabbitmq.rs): on a
    // quorum URL (`?queue-type=quorum`, or a host list without the option) durable groups are
    // quorum queues, over AMQP with a delivery limit out of reach, and so are AMQP's dead-letter
    // queues; STOMP's dead-letter queues are plain `/queue/`s. Otherwise: no arguments.
    let quorum = match parsed.take("queue-type").as_deref() {
        Some("quorum") => true,
        Some(_) => false,
        None => parsed.nodes().len() > 1,
    };
    let (group_arguments, dead_arguments) = match (quorum, stomp) {
        (false, _) => (json!({}), json!({})),
        (true, true) => (json!({"x-queue-type": "quorum"}), json!({})),
        (true, false) => {
            let lasting = json!({"x-queue-type": "quorum", "x-delivery-limit": i32::MAX});
            (lasting.clone(), lasting)
        }
    };
    let object = |v: Value| v.as_object().cloned().unwrap_or_default();
    let (group_arguments, dead_arguments) = (object(group_arguments), object(dead_arguments));
    let mut expected = Expected {
        exchange: (!stomp).then(|| exchange.clone()),
        group_prefix: format!("{exchange}.group."),
        source: if stomp {
            "amq.topic".into()
        } else {
            exchange.clone()
        },
        ..Expected::default()
    };
    let mut dead = BTreeSet::new();
    for group in topology.groups() {
        let queue = format!("{exchange}.group.{}", group.name);
        let by: Vec<&str> = group.components.iter().map(String::as_str).collect();
        let what = format!("group {:?} of {}", group.name, by.join(", "));
        expected
            .queues
            .push((queue.clone(), what, group_arguments.clone()));
        for pattern in &group.patterns {
            let key = match stomp {
                true => format!("{exchange}.{pattern}"),
                false => pattern.clone(),
            };
            expected
                .bindings
                .insert((expected.source.clone(), queue.clone(), key));
        }
        dead.extend(group.dead_letter_queues.iter().cloned());
    }
    for name in dead {
        let what = format!("dead letters of {name:?}");
        expected.queues.push((
            format!("{exchange}.dead.{name}"),
            what,
            dead_arguments.clone(),
        ));
    }
    Ok(expected)
}

/// `url` with `?management=` set to `management`, when given (the flag beats the url).
fn with_management(url: &str, management: Option<&str>) -> String {
    let Some(management) = management else {
        return url.to_owned();
    };
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("management="))
        .collect();
    let value: String = url::form_urlencoded::byte_serialize(management.as_bytes()).collect();
    let pair = format!("management={value}");
    pairs.push(&pair);
    format!("{base}?{}", pairs.join("&"))
}

/// Reads the vhost's queues, bindings and exchanges (blocking).
fn observe(url: &str) -> Result<Observed, String> {
    let api = Management::for_broker(url)?;
    let queues = api
        .queue_details()?
        .into_iter()
        .map(|q| Queue {
            name: q.name,
            durable: q.durable,
            auto_delete: q.auto_delete,
            exclusive: q.exclusive,
            arguments: q.arguments,
        })
        .collect();
    let bindings = api
        .bindings()?
        .into_iter()
        .filter(|b| b.destination_type == "queue")
        .map(|b| (b.source, b.destination, b.routing_key))
        .collect();
    let exchanges = api
        .exchanges()?
        .into_iter()
        .map(|e| (e.name, e.kind, e.durable))
        .collect();
    Ok(Observed {
        queues,
        bindings,
        exchanges,
    })
}

/// `x-queue-type = classic` is what a queue without the argument is.
fn normalised(arguments: &Map<String, Value>) -> Map<String, Value> {
    let mut arguments = arguments.clone();
    if arguments.get("x-queue-type").and_then(Value::as_str) == Some("classic") {
        arguments.remove("x-queue-type");
    }
    arguments
}

/// One line per difference: missing or wrong exchange, missing queues, queues with other
/// settings or arguments, missing and extra bindings, durable group queues not in the file.
fn diff(expected: &Expected, observed: &Observed) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(name) = &expected.exchange {
        match observed.exchanges.iter().find(|(n, _, _)| n == name) {
            None => lines.push(format!("missing exchange {name} (topic, durable)")),
            Some((_, kind, durable)) if kind != "topic" || !durable => lines.push(format!(
                "wrong exchange {name}: type {kind}, durable {durable}; tidings needs a durable topic exchange"
            )),
            Some(_) => {}
        }
    }
    for (name, what, arguments) in &expected.queues {
        let Some(queue) = observed.queues.iter().find(|q| &q.name == name) else {
            lines.push(format!("missing queue {name} ({what})"));
            continue;
        };
        if !queue.durable || queue.auto_delete || queue.exclusive {
            lines.push(format!(
                "wrong settings of queue {name} ({what}): durable={}, auto_delete={}, \
                 exclusive={}; it must be durable, not auto-delete, not exclusive",
                queue.durable, queue.auto_delete, queue.exclusive
            ));
        }
        if normalised(&queue.arguments) != normalised(arguments) {
            lines.push(format!(
                "wrong arguments of queue {name} ({what}): has {}, the url needs {}",
                Value::Object(queue.arguments.clone()),
                Value::Object(arguments.clone())
            ));
        }
    }
    for (source, queue, key) in expected.bindings.difference(&observed.bindings) {
        lines.push(format!("missing binding {source} → {queue} with {key:?}"));
    }
    let groups: BTreeSet<&str> = expected.queues.iter().map(|(n, _, _)| n.as_str()).collect();
    for (source, queue, key) in observed.bindings.difference(&expected.bindings) {
        if source == &expected.source && groups.contains(queue.as_str()) {
            lines.push(format!(
                "extra binding {source} → {queue} with {key:?}: not in the file"
            ));
        }
    }
    for queue in &observed.queues {
        let lasting = queue.durable && !queue.auto_delete && !queue.exclusive;
        if lasting
            && queue.name.starts_with(&expected.group_prefix)
            && !groups.contains(queue.name.as_str())
        {
            lines.push(format!(
                "extra queue {}: a durable group not in the file",
                queue.name
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests;
