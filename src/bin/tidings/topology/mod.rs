//! `tidings topology apply|check|systemd FILE`: what a system file needs on the broker —
//! declared, compared with what the broker has, or written out as systemd units.

mod check;
mod systemd;

use std::path::Path;

use tidings::system::{System, Topology};

use crate::args::TopologyCommand;
use crate::failure::Failure;

pub(crate) async fn run(url: Option<&str>, command: TopologyCommand) -> Result<(), Failure> {
    match command {
        TopologyCommand::Apply(args) => {
            let system = load(&args.file)?;
            let url = url_of(url, &system)?;
            if url.starts_with("memory:") {
                return Err(Failure::usage(format!(
                    "{}: memory:// is an embedded broker inside each process; there is nothing \
                     to declare from outside (use amqp://, amqp10:// or stomp://)",
                    tidings::redact(&url)
                )));
            }
            let bus = tidings::connect(&url).await?;
            let applied = apply(&bus, &system).await;
            bus.shutdown().await?;
            applied
        }
        TopologyCommand::Check(args) => {
            let system = load(&args.file)?;
            let url = url_of(url, &system)?;
            check::run(&url, &system, args.management.as_deref()).await
        }
        TopologyCommand::Systemd(args) => systemd::run(&load(&args.file)?, &args),
    }
}

/// Reads and checks the system file; its problems are usage errors, one line each.
pub(crate) fn load(file: &Path) -> Result<System, Failure> {
    System::load(file).map_err(|e| Failure::usage(e.to_string()))
}

/// The broker url: `--url` or TIDINGS_URL, else the file's.
pub(crate) fn url_of(url: Option<&str>, system: &System) -> Result<String, Failure> {
    url.or(system.file_url()).map(str::to_owned).ok_or_else(|| {
        Failure::usage(format!(
            "{} has no url; add url = \"amqp://…\" to it, pass --url or set TIDINGS_URL",
            system.file()
        ))
    })
}

/// Declares the system's groups on `bus`, printing one line per group.
pub(crate) async fn apply(bus: &tidings::Bus, system: &System) -> Result<(), Failure> {
    let topology = system.topology();
    topology.apply(bus).await?;
    for line in describe(&topology) {
        println!("{line}");
    }
    println!(
        "tidings: {} of {} declared",
        plural(topology.groups().len(), "group"),
        system.file()
    );
    Ok(())
}

/// One line per group: its patterns, its dead-letter queues and who takes from it.
fn describe(topology: &Topology) -> Vec<String> {
    topology
        .groups()
        .iter()
        .map(|g| {
            let patterns: Vec<&str> = g.patterns.iter().map(String::as_str).collect();
            let dead: Vec<&str> = g.dead_letter_queues.iter().map(String::as_str).collect();
            let by: Vec<&str> = g.components.iter().map(String::as_str).collect();
            format!(
                "group {} ← {}  (dead letters: {}; taken by {})",
                g.name,
                patterns.join(", "),
                dead.join(", "),
                by.join(", ")
            )
        })
        .collect()
}

pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}
