//! Systems of daemons: the system file (`tidings.toml`) that names a system's broker and its
//! components — the command each runs, how many replicas, and what each takes from the bus.
//!
//! The same file drives `tidings topology apply|check|systemd` and `tidings up`, and a daemon
//! reads its own settings from it, so the patterns and group names are written once:
//!
//! ```toml
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f?exchange=shop"   # TIDINGS_URL overrides it
//!
//! [[component]]
//! name = "fetcher"
//! command = "target/debug/fetcher"
//! replicas = 3
//!
//! [[component.worker]]          # a durable group: each job goes to one replica
//! group = "fetch"               # default: the component's name
//! patterns = ["fetch.#"]
//! prefetch = 4
//! max_attempts = 5
//! ttl = "30s"                   # for senders: fetch jobs expire after 30 s
//!
//! [[component.fanout]]          # every replica gets every event, kept while it is down
//! patterns = ["config.changed"]
//!
//! [[component.service]]         # an RPC service (group and pattern = the name)
//! name = "fetcher.stats"
//!
//! [[component.subscribe]]       # a broadcast subscription: nothing is kept while down
//! patterns = ["log.#"]
//! ```
//!
//! See `docs/systems.md` for every key. Reading a daemon's own settings:
//!
//! ```
//! use tidings::system::System;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let system = System::parse(
//!     "[[component]]\nname = \"fetcher\"\ncommand = \"fetcher\"\n\
//!      [[component.worker]]\ngroup = \"fetch\"\npatterns = [\"fetch.#\"]\nprefetch = 4\n",
//!     "tidings.toml",
//! )?;
//! let fetch = system.component("fetcher")?.intake("fetch").expect("in the file");
//! assert_eq!(fetch.patterns, ["fetch.#"]);
//! assert_eq!(fetch.prefetch, Some(4));
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidings_core::{Bus, Error, ErrorKind, Pattern, Result};

mod check;
mod error;
mod file;
mod intake;
mod topology;

pub use error::{Problem, SystemError};
pub use intake::{Intake, IntakeKind};
pub use topology::{Group, Topology};

/// The environment variable naming the system file, read by [`System::from_env`]; `tidings up`
/// sets it for every process it starts.
pub const SYSTEM_VAR: &str = "TIDINGS_SYSTEM";
/// The environment variable naming the component a process runs as; set by `tidings up` and
/// by the generated systemd units.
pub const COMPONENT_VAR: &str = "TIDINGS_COMPONENT";
/// The environment variable with a process's replica number (from 1); set by `tidings up` and
/// by the generated systemd units.
pub const REPLICA_VAR: &str = "TIDINGS_REPLICA";
/// The file [`System::from_env`] reads when [`SYSTEM_VAR`] is not set.
pub const DEFAULT_FILE: &str = "tidings.toml";

/// A system: its broker URL and its components, as a system file describes them.
#[derive(Debug, Clone)]
pub struct System {
    file: String,
    path: Option<PathBuf>,
    url: Option<String>,
    components: Vec<Component>,
}

/// One component of a system: a program run as one or more replicas, and what it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Component {
    /// Its name: one word (ASCII letters, digits, `_`, `-`), unique in the system.
    pub name: String,
    /// The shell command that runs one replica (`sh -c`).
    pub command: String,
    /// How many replicas run (at least 1).
    pub replicas: u32,
    /// Extra environment variables for its processes.
    pub env: std::collections::BTreeMap<String, String>,
    /// What it takes from the bus, in file order. Fanout groups are the base name here; see
    /// [`intakes_for`](Self::intakes_for).
    pub intakes: Vec<Intake>,
}

impl System {
    /// Reads and checks the system file at `path`.
    ///
    /// # Examples
    /// ```no_run
    /// let system = tidings::system::System::load("tidings.toml")?;
    /// for component in system.components() {
    ///     println!("{} × {}: {}", component.name, component.replicas, component.command);
    /// }
    /// # Ok::<(), tidings::system::SystemError>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> std::result::Result<Self, SystemError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SystemError::read(&shown, e))?;
        let mut system = Self::parse(&text, &shown)?;
        system.path = Some(path.to_owned());
        Ok(system)
    }

    /// Reads the system file named by `TIDINGS_SYSTEM`, or `tidings.toml` in the current
    /// directory: what a daemon started by `tidings up` or a generated systemd unit calls.
    pub fn from_env() -> std::result::Result<Self, SystemError> {
        match std::env::var(SYSTEM_VAR) {
            Ok(path) if !path.trim().is_empty() => Self::load(path.trim()),
            _ => Self::load(DEFAULT_FILE),
        }
    }

    /// Checks the system file text `text`; `file` names it in errors.
    ///
    /// # Examples
    /// ```
    /// use tidings::system::System;
    /// let e = System::parse("[[component]]\nname = \"a\"\ncomand = \"x\"\n", "s.toml").unwrap_err();
    /// assert!(e.to_string().starts_with("s.toml:3:1: comand: unknown field `comand`"), "{e}");
    /// ```
    pub fn parse(text: &str, file: &str) -> std::result::Result<Self, SystemError> {
        let (url, components) = check::check(text, file)?;
        Ok(Self {
            file: file.to_owned(),
            path: None,
            url,
            components,
        })
    }

    /// The file this system was read from, as named to [`load`](Self::load) or
    /// [`parse`](Self::parse).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The path it was loaded from; `None` when parsed from text.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The broker URL: `TIDINGS_URL` when set, else the file's `url`.
    pub fn url(&self) -> Option<String> {
        match std::env::var(crate::URL_VAR) {
            Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
            _ => self.url.clone(),
        }
    }

    /// The file's own `url`, whatever the environment says.
    pub fn file_url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Connects to the system's broker ([`url`](Self::url)).
    ///
    /// # Examples
    /// ```no_run
    /// # async fn demo() -> tidings::Result<()> {
    /// let system = tidings::system::System::from_env()?;
    /// let bus = system.connect().await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(&self) -> Result<Bus> {
        let url = self.url().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "{} has no url and TIDINGS_URL is not set; add url = \"amqp://…\" to it",
                    self.file
                ),
            )
        })?;
        crate::connect(&url).await
    }

    /// Every component, in file order.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// The component `name`, or an error naming the ones the file has.
    pub fn component(&self, name: &str) -> std::result::Result<&Component, SystemError> {
        self.components
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                let known = self.components.iter().map(|c| c.name.clone()).collect();
                SystemError::no_such_component(&self.file, name, known)
            })
    }

    /// The component this process runs as: the one `TIDINGS_COMPONENT` names.
    pub fn current_component(&self) -> std::result::Result<&Component, SystemError> {
        let name = std::env::var(COMPONENT_VAR).unwrap_or_default();
        self.component(name.trim())
    }

    /// The `ttl` of the first intake (in file order) with one whose patterns match `key`: how
    /// long a sender should let an event under `key` wait for its consumer
    /// (`bus.emit(key, &e).ttl(ttl)`).
    ///
    /// # Examples
    /// ```
    /// let system = tidings::system::System::parse(
    ///     "[[component]]\nname = \"f\"\ncommand = \"f\"\n[[component.worker]]\npatterns = [\"fetch.#\"]\nttl = \"30s\"\n",
    ///     "tidings.toml",
    /// )?;
    /// assert_eq!(system.ttl_for("fetch.page"), Some(std::time::Duration::from_secs(30)));
    /// assert_eq!(system.ttl_for("other"), None);
    /// # Ok::<(), tidings::system::SystemError>(())
    /// ```
    pub fn ttl_for(&self, key: &str) -> Option<Duration> {
        self.components
            .iter()
            .flat_map(|c| &c.intakes)
            .filter(|i| i.ttl.is_some())
            .find(|i| {
                i.patterns
                    .iter()
                    .any(|p| Pattern::new(p).is_ok_and(|p| p.matches(key)))
            })
            .and_then(|i| i.ttl)
    }
}

impl Component {
    /// What replica `replica` (from 1) takes: [`intakes`](Self::intakes) with each fanout's
    /// group made that replica's own (`<group>.<replica>`).
    pub fn intakes_for(&self, replica: u32) -> Vec<Intake> {
        self.intakes
            .iter()
            .map(|i| i.for_replica(replica))
            .collect()
    }

    /// The intake whose group (for a fanout, its base name) or service name is `name`.
    pub fn intake(&self, name: &str) -> Option<&Intake> {
        self.intakes
            .iter()
            .find(|i| i.group.as_deref() == Some(name))
    }
}

/// This process's replica number: `TIDINGS_REPLICA`, or 1 when it is not set or not a number.
pub fn replica_from_env() -> u32 {
    std::env::var(REPLICA_VAR)
        .ok()
        .and_then(|r| r.trim().parse().ok())
        .filter(|r| *r >= 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests;
