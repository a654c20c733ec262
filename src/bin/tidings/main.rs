//! `tidings`: poke a running system from the command line — see what flows, send an event, call a
//! service, turn any program into a worker, replay dead letters, and check a broker with the
//! conformance suite before trusting it — and run a system of daemons from its system file:
//! declare and check its topology, write its systemd units, or start it all with `up`.

mod args;
mod bench;
mod conformance;
mod dead_letters;
mod failure;
mod messages;
mod show;
mod topology;
mod up;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::failure::Failure;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The conformance suite starts one runtime per case, so it runs outside ours.
    if let Command::Conformance(args) = &cli.command {
        return report(conformance::run(cli.url.as_deref(), args));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return report(Err(Failure::runtime(format!(
                "cannot start the async runtime: {e}"
            ))))
        }
    };
    report(runtime.block_on(run(cli)))
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let url = cli.url.clone();
    match cli.command {
        Command::Emit(args) => messages::emit(&connect(url.as_deref()).await?, args).await,
        Command::Tail(args) => messages::tail(&connect(url.as_deref()).await?, args).await,
        Command::Call(args) => messages::call(&connect(url.as_deref()).await?, args).await,
        Command::Serve(args) => messages::serve(&connect(url.as_deref()).await?, args).await,
        Command::DeadLetters(args) => {
            dead_letters::run(&connect(url.as_deref()).await?, args).await
        }
        Command::Bench(args) => {
            let url = args.url.clone().or(url).ok_or_else(Failure::no_url)?;
            bench::run(&url, args).await
        }
        Command::Topology(command) => topology::run(url.as_deref(), command).await,
        Command::Up(args) => up::run(url.as_deref(), args).await,
        Command::Conformance(_) => unreachable!("handled before the runtime starts"),
    }
}

async fn connect(url: Option<&str>) -> Result<tidings::Bus, Failure> {
    let url = url.ok_or_else(Failure::no_url)?;
    Ok(tidings::connect(url).await?)
}

fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("tidings: {}", failure.message);
            }
            ExitCode::from(failure.code)
        }
    }
}
