//! Declining a request: a server that cannot answer gives the request back to its group for
//! another server, without it counting as an attempt; when every server declined, the caller
//! hears so at once and a cast is dead-lettered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidings_core::interceptor::on_receive;
use tidings_core::{Decline, ErrorKind};

use super::Outcome;
use crate::ensure;
use crate::support::{Ctx, QUIET, SOON};

/// How many servers serve the service.
const SERVERS: u64 = 3;
/// Keys `0..HELD` are held by server `HOLDER` alone; any other key by nobody.
const HELD: u64 = 9;
/// The server that holds keys `0..HELD`.
const HOLDER: u64 = 2;

/// Three servers of one service; one holds the keys asked for, the two others decline them.
/// Every call for a held key is answered by its holder, once, at the first attempt, and
/// declined by each other server at most once; a key nobody holds is declined by each server
/// once and the caller gets `Declined` long before its timeout; a cast nobody takes is
/// dead-lettered as declined by every server — the only dead letter.
pub(super) async fn rpc_declined_requests_go_to_the_server_that_holds_them(
    ctx: Arc<Ctx>,
) -> Outcome {
    let name = ctx.name("fetch");
    // (server, key) of every handler run, and the attempt of every request a server received.
    let runs = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let attempts = Arc::new(Mutex::new(Vec::<u32>::new()));
    for server in 0..SERVERS {
        let seen = attempts.clone();
        let bus = ctx
            .bus()
            .await?
            .with_interceptor(on_receive(move |e| seen.lock().unwrap().push(e.attempt)));
        let runs = runs.clone();
        bus.serve(&name, move |key: u64| {
            runs.lock().unwrap().push((server, key));
            async move {
                if key < HELD && server == HOLDER {
                    Ok(key * 10 + server)
                } else {
                    Err(Decline::new(format!("key {key} is not on server {server}")).into())
                }
            }
        })
        .await?;
    }
    let client = ctx.bus().await?;
    // One call at a time: which server gets a request given back is the broker's choice, and
    // with one request in flight every broker hands it to the group's servers in turn.
    for key in 0..HELD {
        let got: u64 = client
            .call(&name, &key)
            .timeout(SOON)
            .await
            .map_err(|e| format!("call for held key {key}: {e}"))?;
        ensure!(
            got == key * 10 + HOLDER,
            "call for key {key} got {got}, not the answer of server {HOLDER}"
        );
    }
    {
        let runs = runs.lock().unwrap();
        ensure!(
            runs.len() > HELD as usize,
            "{} handler runs for {HELD} calls: no server declined any",
            runs.len()
        );
        for key in 0..HELD {
            for server in 0..SERVERS {
                let n = runs.iter().filter(|r| **r == (server, key)).count();
                let holder = server == HOLDER;
                ensure!(
                    if holder { n == 1 } else { n <= 1 },
                    "server {server} ran key {key} {n} times ({}: at most once)",
                    if holder {
                        "its holder: exactly once"
                    } else {
                        "not its holder"
                    }
                );
            }
        }
    }

    // A key nobody holds: each server declines it once, then the caller is told.
    let nobody = 1_000u64;
    let started = Instant::now();
    let result: tidings_core::Result<u64> = client.call(&name, &nobody).timeout(SOON).await;
    let took = started.elapsed();
    let err = result.err().ok_or("a key nobody holds got an answer")?;
    ensure!(
        err.kind() == ErrorKind::Declined,
        "expected a Declined error, got {err}"
    );
    ensure!(
        took < Duration::from_secs(5),
        "the declined error came after {took:?} (the call's timeout is {SOON:?})"
    );
    let text = err.to_string();
    ensure!(
        text.contains("3 servers"),
        "the error does not say 3 servers declined: {text}"
    );
    for server in 0..SERVERS {
        let reason = format!("key {nobody} is not on server {server}");
        ensure!(
            text.contains(&reason),
            "the error lacks server {server}'s reason {reason:?}: {text}"
        );
    }
    let declines = |key: u64| runs.lock().unwrap().iter().filter(|r| r.1 == key).count();
    ensure!(
        declines(nobody) == SERVERS as usize,
        "the handlers ran {} times for a key nobody holds, expected once per server ({SERVERS})",
        declines(nobody)
    );

    // A cast nobody takes is dead-lettered, at its first attempt.
    let cast = 2_000u64;
    client.cast(&name, &cast).await?;
    let mut dead = client.dead_letters(&name).await?;
    let letter = tokio::time::timeout(SOON, dead.next())
        .await
        .map_err(|_| "the cast every server declined was not dead-lettered")?
        .ok_or("dead-letter reader closed")?;
    ensure!(
        letter.reason().starts_with("declined by every server"),
        "dead letter reason {:?}",
        letter.reason()
    );
    ensure!(
        letter.attempts() == 1,
        "the declined cast's dead letter records {} attempts, expected 1",
        letter.attempts()
    );
    let payload: u64 =
        tidings_core::Codec::decode(&letter.envelope().content_type, &letter.envelope().body)?;
    ensure!(
        payload == cast,
        "dead letter carries {payload}, not the cast"
    );
    letter.purge().await?;
    // Nothing else was dead-lettered: no declined call, no held key.
    if let Ok(Some(other)) = tokio::time::timeout(QUIET, dead.next()).await {
        return Err(format!(
            "an unexpected dead letter ({:?}, reason {:?})",
            other.routing_key(),
            other.reason()
        )
        .into());
    }
    ensure!(
        declines(cast) == SERVERS as usize,
        "the handlers ran {} times for the cast, expected once per server ({SERVERS})",
        declines(cast)
    );
    let attempts = attempts.lock().unwrap();
    ensure!(
        attempts.iter().all(|a| *a == 1),
        "a declined request counted as an attempt: attempts seen {attempts:?}"
    );
    // Every handler run was a delivery, and the requests given back to a server that had
    // declined them were deliveries without a run (one per all-declined request).
    let total_runs = runs.lock().unwrap().len();
    ensure!(
        attempts.len() == total_runs + 2,
        "{} deliveries to servers for {total_runs} handler runs, expected {}",
        attempts.len(),
        total_runs + 2
    );
    Ok(())
}
