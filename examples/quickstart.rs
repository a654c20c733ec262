//! Quickstart: events, a worker group and RPC in one program.
//!
//! Runs on the embedded broker with no setup:
//!     cargo run --example quickstart
//! or on any broker, unchanged:
//!     TIDINGS_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example quickstart --features amqp091

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::Event;

/// A log line some daemon emitted.
#[derive(Debug, Serialize, Deserialize)]
struct LogEntry {
    level: String,
    text: String,
}

impl Event for LogEntry {
    const NAME: &'static str = "log_entry";
}

/// Ask a file server for a file.
#[derive(Debug, Serialize, Deserialize)]
struct FileGet {
    path: String,
}

impl Event for FileGet {
    const NAME: &'static str = "file_get";
}

/// The file server's answer.
#[derive(Debug, Serialize, Deserialize)]
struct FileBytes {
    path: String,
    bytes: Vec<u8>,
}

impl Event for FileBytes {
    const NAME: &'static str = "file_bytes";
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    // memory:// unless TIDINGS_URL names another broker.
    let bus = tidings::connect_from_env("memory://quickstart").await?;
    let bus = bus.as_participant("quickstart", "1");
    println!("connected as {}", bus.identity());

    // Every subscriber of a pattern gets every matching event.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    bus.subscribe::<LogEntry>("log.#")
        .handle_message(move |entry| {
            let done = done_tx.clone();
            async move {
                println!(
                    "log  [{}] {} (from {}, key {})",
                    entry.level,
                    entry.text,
                    entry.emitter(),
                    entry.routing_key()
                );
                done.send(())?;
                Ok(())
            }
        })
        .await?;

    // An RPC server. Servers of one name form a group: each request is handled once.
    bus.serve("quickstart.file.get", |req: FileGet| async move {
        if req.path.contains("..") {
            return Err(format!("refusing path {:?}", req.path).into());
        }
        Ok(FileBytes {
            bytes: format!("contents of {}", req.path).into_bytes(),
            path: req.path,
        })
    })
    .await?;

    let key = format!("log.{}.error", bus.identity());
    bus.emit(
        &key,
        &LogEntry {
            level: "error".into(),
            text: "disk almost full".into(),
        },
    )
    .await?;
    bus.emit(
        "log.quickstart.info",
        &LogEntry {
            level: "info".into(),
            text: "started".into(),
        },
    )
    .await?;
    for _ in 0..2 {
        done_rx.recv().await;
    }

    let file: FileBytes = bus
        .call(
            "quickstart.file.get",
            &FileGet {
                path: "/etc/motd".into(),
            },
        )
        .timeout(Duration::from_secs(5))
        .await?;
    println!(
        "call file.get -> {} bytes: {:?}",
        file.bytes.len(),
        String::from_utf8_lossy(&file.bytes)
    );

    let refused: tidings::Result<FileBytes> = bus
        .call(
            "quickstart.file.get",
            &FileGet {
                path: "../secret".into(),
            },
        )
        .timeout(Duration::from_secs(5))
        .await;
    println!("call file.get ../secret -> {}", refused.unwrap_err());

    bus.shutdown().await?;
    println!("done");
    Ok(())
}
