//! The data-exchange system (see `README.md` and `tidings.toml` beside this file): one binary
//! that plays whichever component `TIDINGS_COMPONENT` names, with the patterns, groups and
//! settings the system file gives it.
//!
//! ```sh
//! cargo build --example data_exchange --features amqp091
//! cargo run --features amqp091 -- up examples/data-exchange/tidings.toml
//! cargo run --features amqp091 -- emit dx.crawl '{"items":["a","b","c"]}' --url …
//! cargo run --features amqp091 -- call dx.stats --url …
//! ```

mod cache;
mod controller;
mod events;
mod fetcher;
mod notifier;
mod persister;
mod stats;

use std::path::PathBuf;

use tidings::system::{replica_from_env, Component, Intake, System};
use tidings::{Bus, Error, ErrorKind};

/// What every component gets: the bus (as `<host>.<component>.<replica>`), its part of the
/// system file, and the data directory (`DX_DATA`, default `./data`).
pub(crate) struct Context {
    pub(crate) bus: Bus,
    pub(crate) system: System,
    pub(crate) me: Component,
    pub(crate) replica: u32,
    pub(crate) data: PathBuf,
}

impl Context {
    /// This component's intake named `name` (a group or a service), this replica's version.
    pub(crate) fn intake(&self, name: &str) -> tidings::Result<Intake> {
        let intake = self.me.intake(name).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{}: component {:?} takes nothing named {name:?}",
                    self.system.file(),
                    self.me.name
                ),
            )
        })?;
        Ok(intake.for_replica(self.replica))
    }
}

#[tokio::main]
async fn main() -> tidings::Result<()> {
    let system = System::from_env()?;
    let me = system.current_component()?.clone();
    let replica = replica_from_env();
    let bus = system
        .connect()
        .await?
        .as_participant(&me.name, &replica.to_string());
    let data = PathBuf::from(std::env::var("DX_DATA").unwrap_or_else(|_| "data".into()));
    std::fs::create_dir_all(&data).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot create {}: {e}", data.display()),
        )
    })?;
    let context = Context {
        bus: bus.clone(),
        system,
        me,
        replica,
        data,
    };
    match context.me.name.as_str() {
        "controller" => controller::start(&context).await?,
        "fetcher" => fetcher::start(&context).await?,
        "cache" => cache::start(&context).await?,
        "persister" => persister::start(&context).await?,
        "notifier" => notifier::start(&context).await?,
        "stats" => stats::start(&context).await?,
        other => {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("data_exchange plays no component {other:?}"),
            ))
        }
    }
    println!("{} {} ready", context.me.name, replica);
    bus.run_until_signal().await
}
