//! One replica's life under `tidings up`: started, restarted with exponential backoff when it
//! crashes, given up on after too many crashes in a row, stopped when `up` stops.

use std::process::ExitStatus;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::watch;
use tokio::time::Instant;

use super::output::Printer;
use super::process::{Running, Spec};

/// A process that ran this long before crashing starts its restart count again.
const STABLE: Duration = Duration::from_secs(10);
/// The longest pause between two restarts.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// What `up` asks of every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Run,
    /// SIGTERM, the drain timeout, SIGKILL.
    Stop,
    /// SIGKILL now (a second Ctrl-C).
    Kill,
}

/// How restarts and stops go.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub(super) max_restarts: usize,
    pub(super) first_delay: Duration,
    pub(super) drain: Duration,
}

impl Policy {
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(MAX_DELAY.max(self.first_delay))
            .with_factor(2.0)
            .with_max_times(self.max_restarts)
            .build()
    }
}

/// How a replica's supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// `up` stopped it.
    Stopped,
    /// It exited with status 0 by itself; not restarted.
    Finished,
    /// It crashed more times in a row than allowed.
    GaveUp,
}

/// Runs `spec` until `up` stops it, it finishes, or it has crashed too often.
pub(super) async fn supervise(
    spec: Spec,
    mut phase: watch::Receiver<Phase>,
    printer: Printer,
    policy: Policy,
) -> Ended {
    let name = spec.label.text.clone();
    let mut backoff = policy.backoff();
    let mut restarts = 0;
    loop {
        if *phase.borrow() != Phase::Run {
            return Ended::Stopped;
        }
        let started = Instant::now();
        let outcome = match Running::start(&spec, printer) {
            Err(e) => Err(format!("could not start: {e}")),
            Ok(mut running) => {
                let pid = running.pid().unwrap_or_default();
                printer.note(&format!("{name} started (pid {pid})"));
                let mut escalation = phase.clone();
                tokio::select! {
                    status = running.wait() => {
                        running.clean_up(policy.drain).await;
                        status.map_err(|e| format!("could not be waited for: {e}"))
                    }
                    _ = until(&mut phase, |p| p != Phase::Run) => {
                        let hurry = async {
                            until(&mut escalation, |p| p == Phase::Kill).await;
                        };
                        let (status, killed) = running.stop(policy.drain, hurry).await;
                        let how = match (status, killed) {
                            (_, true) => "killed (SIGKILL) after the drain timeout".to_owned(),
                            (Some(status), false) => format!("stopped: {}", describe(status)),
                            (None, false) => "stopped".to_owned(),
                        };
                        printer.note(&format!("{name} {how}"));
                        return Ended::Stopped;
                    }
                }
            }
        };
        let why = match outcome {
            Ok(status) if status.success() => {
                printer.note(&format!("{name} exited with status 0; not restarted"));
                return Ended::Finished;
            }
            Ok(status) => describe(status),
            Err(why) => why,
        };
        if started.elapsed() >= STABLE {
            backoff = policy.backoff();
            restarts = 0;
        }
        let Some(delay) = backoff.next() else {
            printer.alert(&format!(
                "{name} {why}; it crashed {} in a row: giving up",
                match restarts + 1 {
                    1 => "once".to_owned(),
                    n => format!("{n} times"),
                }
            ));
            return Ended::GaveUp;
        };
        restarts += 1;
        printer.note(&format!(
            "{name} {why}; restart {restarts} of {} in {}",
            policy.max_restarts,
            humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
        ));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = until(&mut phase, |p| p != Phase::Run) => return Ended::Stopped,
        }
    }
}

/// Waits until the phase satisfies `wanted` (forever if `up` is gone).
async fn until(phase: &mut watch::Receiver<Phase>, wanted: impl Fn(Phase) -> bool) {
    if phase.wait_for(|p| wanted(*p)).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// `exited with status 3`, `was killed by signal 9`.
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => format!("ended ({status})"),
    }
}
