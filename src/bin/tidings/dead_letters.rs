//! `dead-letters`: list a group's dead letters with reason, attempts, original key and time;
//! replay or purge them. Without a flag they stay where they are.

use std::time::Duration;

use tidings::Bus;

use crate::args::DeadLetterArgs;
use crate::failure::Failure;
use crate::show;

/// How long to wait for one more dead letter before deciding the queue is drained.
const IDLE: Duration = Duration::from_millis(1500);

pub(crate) async fn run(bus: &Bus, args: DeadLetterArgs) -> Result<(), Failure> {
    let mut reader = bus.dead_letters(&args.group).await?;
    let mut kept = Vec::new();
    let mut count = 0usize;
    while let Ok(Some(letter)) = tokio::time::timeout(IDLE, reader.next()).await {
        count += 1;
        println!(
            "{}  {}  attempts={}  key={}  reason={}  payload={}",
            letter
                .dead_at_ms()
                .map_or_else(|| "--:--:--.---".into(), show::clock),
            letter.envelope().id,
            letter.attempts(),
            letter.routing_key(),
            letter.reason(),
            show::payload(letter.envelope())
        );
        if args.replay {
            letter.replay().await?;
        } else if args.purge {
            letter.purge().await?;
        } else {
            // Held unsettled until the reader closes, then they go back: listing changes nothing.
            kept.push(letter);
        }
    }
    let verb = if args.replay {
        "replayed"
    } else if args.purge {
        "purged"
    } else {
        "listed (kept)"
    };
    eprintln!("{count} dead letters in {:?} {verb}", args.group);
    drop(kept);
    reader.close().await?;
    bus.shutdown().await?;
    Ok(())
}
