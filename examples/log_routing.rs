//! Log routing: worker daemons on several hosts emit log entries under
//! `log.<host>.<type>.<id>.<severity>`; a log server takes all of them, a monitor only errors.
//! All in one program here; in production each is its own process on its own host.
//!
//!     cargo run --example log_routing

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::Event;

#[derive(Debug, Serialize, Deserialize)]
struct LogEntry {
    severity: String,
    text: String,
}

impl Event for LogEntry {
    const NAME: &'static str = "log_entry";
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    let url = std::env::var(tidings::URL_VAR).unwrap_or_else(|_| "memory://log_routing".into());

    // The log server stores every entry; two instances share the work as one group.
    let stored = Arc::new(AtomicUsize::new(0));
    for instance in 1..=2 {
        let server = tidings::connect(&url)
            .await?
            .with_identity(&format!("logs.log_server.{instance}"))?;
        let stored = stored.clone();
        server
            .subscribe::<LogEntry>("log.#")
            .group("log_server")
            .handle_message(move |entry| {
                stored.fetch_add(1, Ordering::SeqCst);
                println!(
                    "log_server {instance}: {:<40} {}",
                    entry.routing_key(),
                    entry.text
                );
                async { Ok(()) }
            })
            .await?;
    }

    // The monitor sees only errors, from any host, daemon type and instance.
    let monitor = tidings::connect(&url)
        .await?
        .with_identity("ops.monitor.1")?;
    let alerts = Arc::new(AtomicUsize::new(0));
    let counted = alerts.clone();
    monitor
        .subscribe::<LogEntry>("log.*.*.*.error")
        .handle_message(move |entry| {
            counted.fetch_add(1, Ordering::SeqCst);
            println!("MONITOR ALERT from {}: {}", entry.emitter(), entry.text);
            async { Ok(()) }
        })
        .await?;

    // Worker daemons on two hosts.
    let mut emitted = 0;
    for (host, id) in [("host1", "1"), ("host1", "2"), ("host2", "1")] {
        let daemon = tidings::connect(&url)
            .await?
            .with_identity(&format!("{host}.worker_daemon.{id}"))?;
        for (severity, text) in [
            ("info", "job started"),
            ("warning", "job slow"),
            ("error", "job failed"),
        ] {
            let key = format!("log.{}.{severity}", daemon.identity());
            daemon
                .emit(
                    &key,
                    &LogEntry {
                        severity: severity.into(),
                        text: format!("{text} on {host}/{id}"),
                    },
                )
                .await?;
            emitted += 1;
        }
    }

    // Wait until everything is through, then report.
    for _ in 0..50 {
        if stored.load(Ordering::SeqCst) == emitted && alerts.load(Ordering::SeqCst) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "log server stored {} of {emitted} entries; monitor raised {} alerts",
        stored.load(Ordering::SeqCst),
        alerts.load(Ordering::SeqCst)
    );
    Ok(())
}
