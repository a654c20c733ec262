//! Deleting what tests leave on the brokers. STOMP itself cannot delete a queue, so:
//!
//! - RabbitMQ: the management HTTP API (`TIDINGS_RABBITMQ_MANAGEMENT`, default
//!   `http://127.0.0.1:15672`, with the STOMP url's login) lists the queues whose names start
//!   with `<namespace>.` and deletes them.
//! - ActiveMQ: the Debian broker runs without JMX or a web console, so `AmqPurge.java` (next to
//!   this file) deletes the namespace's queues and topics over OpenWire
//!   (`TIDINGS_ACTIVEMQ_OPENWIRE`, default `tcp://127.0.0.1:61616`) with the client jars Debian
//!   ships (`TIDINGS_ACTIVEMQ_LIB`, default `/usr/share/activemq/lib`). One JVM start costs
//!   about two seconds, so callers collect namespaces and purge them in one go.
//!
//! Cleanup never fails a test: what cannot be deleted is reported on stderr.

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
    let stomp = url::Url::parse(&broker.url()).map_err(|e| e.to_string())?;
    let base = std::env::var("TIDINGS_RABBITMQ_MANAGEMENT")
        .unwrap_or_else(|_| "http://127.0.0.1:15672".to_owned());
    let vhost = match stomp.path() {
        "" | "/" => "%2F".to_owned(),
        p => p[1..].to_owned(),
    };
    let auth = format!(
        "Basic {}",
        base64(&format!(
            "{}:{}",
            stomp.username(),
            stomp.password().unwrap_or("")
        ))
    );
    let list = ureq::get(&format!("{base}/api/queues/{vhost}?columns=name,consumers"))
        .header("Authorization", &auth)
        .call()
        .map_err(|e| format!("listing queues at {base}: {e}"))?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let queues: Vec<serde_json::Value> = serde_json::from_str(&list).map_err(|e| e.to_string())?;
    for queue in queues {
        let Some(name) = queue["name"].as_str() else {
            continue;
        };
        let ours = names.iter().any(|n| {
            if raw_prefix {
                name.starts_with(n.as_str())
            } else {
                name.strip_prefix(n.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
            }
        });
        // A sweep of old leftovers never touches a queue somebody consumes.
        if !ours || (raw_prefix && queue["consumers"].as_u64() != Some(0)) {
            continue;
        }
        let encoded: String = url::form_urlencoded::byte_serialize(name.as_bytes()).collect();
        ureq::delete(&format!("{base}/api/queues/{vhost}/{encoded}"))
            .header("Authorization", &auth)
            .call()
            .map_err(|e| format!("deleting queue {name}: {e}"))?;
    }
    Ok(())
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

/// Standard base64 with padding, for the Basic authorization header.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
