//! `tidings up FILE`: one command runs a whole system on one machine, for development and
//! single-host deployments — the topology applied first, then every replica of every
//! component started and supervised, as foreman, honcho and overmind do.
//!
//! Ctrl-C or SIGTERM stops everything (SIGTERM to each process group, the drain timeout, then
//! SIGKILL; a second Ctrl-C kills at once). A replica that crashes is restarted with backoff;
//! one that crashes too often in a row is given up on, and then `up` stops the others and exits
//! with 1.

mod output;
mod process;
mod supervise;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::args::UpArgs;
use crate::failure::Failure;
use crate::topology;
use output::{Label, Printer};
use process::Spec;
use supervise::{supervise, Ended, Phase, Policy};

pub(crate) async fn run(url: Option<&str>, args: UpArgs) -> Result<(), Failure> {
    let system = topology::load(&args.file)?;
    let url = topology::url_of(url, &system)?;
    let file = std::path::absolute(&args.file)
        .map_err(|e| Failure::runtime(format!("cannot resolve {}: {e}", args.file.display())))?;
    let dir = file.parent().map(ToOwned::to_owned).unwrap_or_default();
    let printer = Printer::new();
    if args.no_apply {
        printer.note("topology not applied (--no-apply)");
    } else if url.starts_with("memory:") {
        printer.note(
            "memory:// is embedded in each process: no topology to apply, and processes do not \
             reach each other; use a broker url to connect them",
        );
    } else {
        let bus = tidings::connect(&url).await?;
        let applied = topology::apply(&bus, &system).await;
        bus.shutdown().await?;
        applied?;
    }

    let policy = Policy {
        max_restarts: args.max_restarts,
        first_delay: args.restart_delay,
        drain: args.drain_timeout,
    };
    let (phase, watching) = watch::channel(Phase::Run);
    let mut replicas = JoinSet::new();
    for (index, component) in system.components().iter().enumerate() {
        for replica in 1..=component.replicas {
            let mut env: Vec<(String, String)> = component
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            env.extend([
                (tidings::URL_VAR.to_owned(), url.clone()),
                (
                    tidings::system::SYSTEM_VAR.to_owned(),
                    file.display().to_string(),
                ),
                (
                    tidings::system::COMPONENT_VAR.to_owned(),
                    component.name.clone(),
                ),
                (tidings::system::REPLICA_VAR.to_owned(), replica.to_string()),
            ]);
            let spec = Spec {
                label: Label::new(&component.name, replica, index),
                command: component.command.clone(),
                dir: dir.clone(),
                env,
            };
            let name = spec.label.text.clone();
            let task = supervise(spec, watching.clone(), printer, policy);
            replicas.spawn(async move { (name, task.await) });
        }
    }

    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| Failure::runtime(format!("cannot watch SIGTERM: {e}")))?;
    let mut failed = Vec::new();
    loop {
        tokio::select! {
            ended = replicas.join_next() => match ended {
                None => break,
                Some(Ok((name, Ended::GaveUp))) => {
                    failed.push(name);
                    if *phase.borrow() == Phase::Run {
                        printer.alert("a component failed for good; stopping the others");
                        let _ = phase.send(Phase::Stop);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => failed.push(format!("a supervisor task ({e})")),
            },
            _ = tokio::signal::ctrl_c() => escalate(&phase, &printer, "Ctrl-C", &policy),
            _ = terminate.recv() => escalate(&phase, &printer, "SIGTERM", &policy),
        }
    }
    if failed.is_empty() {
        printer.note("every process has ended");
        Ok(())
    } else {
        Err(Failure::runtime(format!(
            "failed for good: {}",
            failed.join(", ")
        )))
    }
}

/// The first signal stops every process gracefully, the next kills them.
fn escalate(phase: &watch::Sender<Phase>, printer: &Printer, what: &str, policy: &Policy) {
    if *phase.borrow() == Phase::Run {
        printer.note(&format!(
            "{what}: stopping every process (SIGTERM, SIGKILL after {}; again to kill now)",
            humantime::format_duration(policy.drain)
        ));
        let _ = phase.send(Phase::Stop);
    } else {
        printer.note(&format!("{what} again: killing every process"));
        let _ = phase.send(Phase::Kill);
    }
}
