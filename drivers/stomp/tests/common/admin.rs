//! Deleting what tests leave on the brokers. STOMP itself cannot delete a queue, so:
//!
//! - RabbitMQ: the management HTTP API (`tidings_conformance::rabbitmq`: at
//!   `TIDINGS_RABBITMQ_MANAGEMENT`, default `http://<host>:15672`, with the STOMP url's login
//!   and vhost) lists the queues whose names start with `<namespace>.` and deletes them.
//! - ActiveMQ: the Debian broker runs without JMX or a web console, so `AmqPurge.java` (next to
//!   this file) deletes the namespace's queues and topics over OpenWire
//!   (`TIDINGS_ACTIVEMQ_OPENWIRE`, default `tcp://127.0.0.1:61616`) with the client jars Debian
//!   ships (`TIDINGS_ACTIVEMQ_LIB`, default `/usr/share/activemq/lib`). One JVM start costs
//!   about two seconds, so callers collect namespaces and purge them in one go.
//!
//! Cleanup never fails a test: what cannot be deleted is reported on stderr.

use tidings_conformance::rabbitmq::Management;

use super::Broker;

/// Deletes every queue of `namespaces` on `broker`.
pub fn purge(broker: Broker, namespaces: &[String]) {
    if namespaces.is_empty() {
        return;
    }
    let result = match broker {
        Broker::RabbitMq => purge_rabbitmq(broker, namespaces, false),
        Broker::ActiveMq => purge_activemq(namespaces, false),
    };
    if let Err(e) = result {
        eprintln!("cleanup on {}: {e}", broker.label());
    }
}

/// Deletes the idle queues whose names start with `prefix` (leftovers of earlier runs).
pub fn purge_prefix(broker: Broker, prefix: &str) -> Result<(), String> {
    let prefix = vec![prefix.to_owned()];
    match broker {
        Broker::RabbitMq => purge_rabbitmq(broker, &prefix, true),
        Broker::ActiveMq => purge_activemq(&prefix, true),
    }
}

fn purge_rabbitmq(broker: Broker, names: &[String], raw_prefix: bool) -> Result<(), String> {
    let api = Management::for_broker(&broker.url())?;
    let mut failures = Vec::new();
    for name in names {
        // A namespace owns the queues `<namespace>.*`; a raw prefix is a sweep of old
        // leftovers, which never touches a queue somebody consumes.
        let (prefix, only_idle) = if raw_prefix {
            (name.clone(), true)
        } else {
            (format!("{name}."), false)
        };
        if let Err(e) = api.delete_queues_with_prefix(&prefix, only_idle) {
            failures.push(e);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn purge_activemq(names: &[String], prefix: bool) -> Result<(), String> {
    let openwire = std::env::var("TIDINGS_ACTIVEMQ_OPENWIRE")
        .unwrap_or_else(|_| "tcp://127.0.0.1:61616".to_owned());
    let lib = std::env::var("TIDINGS_ACTIVEMQ_LIB")
        .unwrap_or_else(|_| "/usr/share/activemq/lib".to_owned());
    let classpath = [
        "activemq-client.jar",
        "geronimo-jms_1.1_spec.jar",
        "geronimo-j2ee-management-1.1-spec.jar",
        "hawtbuf.jar",
        "slf4j-api.jar",
    ]
    .map(|jar| format!("{lib}/{jar}"))
    .join(":");
    let source = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/AmqPurge.java");
    let mut command = std::process::Command::new("java");
    command.args(["-cp", &classpath, source, &openwire]);
    if prefix {
        command.arg("--prefix");
    }
    let output = command
        .args(names)
        .output()
        .map_err(|e| format!("cannot run java for AmqPurge.java: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("SLF4J")).collect();
    if !output.status.success() || !problems.is_empty() {
        return Err(format!(
            "AmqPurge.java ({}): {}",
            output.status,
            problems.join("; ")
        ));
    }
    Ok(())
}
