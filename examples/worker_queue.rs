//! Worker queue: competing workers share jobs; a failing job is retried, then dead-lettered
//! with its reason; an operator reads the dead letters back and replays one; a worker that runs
//! out of disk stops taking uploads (active-when) and the others take over; shutdown is
//! graceful.
//!
//!     cargo run --example worker_queue

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidings::Event;

#[derive(Debug, Serialize, Deserialize)]
struct Encrypt {
    file: String,
}

impl Event for Encrypt {
    const NAME: &'static str = "encrypt";
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    let url = std::env::var(tidings::URL_VAR).unwrap_or_else(|_| "memory://worker_queue".into());
    let disk_full = Arc::new(AtomicBool::new(true));

    // Worker 1 has a full disk: it takes nothing until the guard says it may.
    let worker1 = tidings::connect(&url)
        .await?
        .with_identity("host1.encryptor.1")?;
    let full = disk_full.clone();
    worker1
        .subscribe::<Encrypt>("file.encrypt")
        .group("encryptors")
        .active_when(move || !full.load(Ordering::SeqCst))
        .handle(|job| async move {
            println!("worker 1 encrypted {}", job.file);
            Ok(())
        })
        .await?;

    // Worker 2 refuses files named *.bad; they are retried 3 times, then dead-lettered.
    let worker2 = tidings::connect(&url)
        .await?
        .with_identity("host2.encryptor.1")?;
    worker2
        .subscribe::<Encrypt>("file.encrypt")
        .group("encryptors")
        .max_attempts(3)
        .retry_delay(Duration::from_millis(50))
        .handle_message(|job| async move {
            if job.file.ends_with(".bad") {
                println!("worker 2 failed {} (attempt {})", job.file, job.attempt());
                return Err(format!("cannot encrypt {}: corrupt header", job.file).into());
            }
            println!("worker 2 encrypted {}", job.file);
            Ok(())
        })
        .await?;

    let client = tidings::connect(&url).await?;
    for file in ["a.txt", "b.txt", "c.bad"] {
        client
            .cast("file.encrypt", &Encrypt { file: file.into() })
            .await?;
    }

    // The operator reads the dead letter back.
    let mut dead = client.dead_letters("encryptors").await?;
    let letter = tokio::time::timeout(Duration::from_secs(5), dead.next())
        .await
        .expect("a dead letter within 5 s")
        .expect("reader open");
    println!(
        "dead letter: key {} after {} attempts, reason: {}",
        letter.routing_key(),
        letter.attempts(),
        letter.reason()
    );

    // Disk space is back on worker 1; worker 2 leaves; the replayed job goes to worker 1.
    disk_full.store(false, Ordering::SeqCst);
    worker2.shutdown().await?;
    letter.replay().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    worker1.shutdown().await?;
    client.shutdown().await?;
    Ok(())
}
