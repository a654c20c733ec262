//! The system file as TOML spells it: every key, with where it is written, before any check.
//! `deny_unknown_fields` everywhere, so a misspelt key is an error naming it and its line.
//!
//! Numbers are read as `i64` and names as plain strings so that a 0, a negative count or a bad
//! pattern is reported by [`check`](super::check) with its own message and position, rather
//! than as a type error.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SystemFile {
    pub(super) url: Option<Spanned<String>>,
    #[serde(default, rename = "component")]
    pub(super) components: Vec<Spanned<ComponentFile>>,
}

/// One `[[component]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ComponentFile {
    pub(super) name: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<String>>,
    pub(super) replicas: Option<Spanned<i64>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) worker: Vec<Spanned<IntakeFile>>,
    #[serde(default)]
    pub(super) fanout: Vec<Spanned<IntakeFile>>,
    #[serde(default)]
    pub(super) service: Vec<Spanned<IntakeFile>>,
    #[serde(default)]
    pub(super) subscribe: Vec<Spanned<IntakeFile>>,
}

/// One `[[component.worker]]`, `[[component.fanout]]`, `[[component.service]]` or
/// `[[component.subscribe]]` table. Which keys apply depends on the kind; `check` says so.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IntakeFile {
    /// Worker and fanout: the group (default: the component's name).
    pub(super) group: Option<Spanned<String>>,
    /// Service: the RPC name.
    pub(super) name: Option<Spanned<String>>,
    /// Worker, fanout, subscribe.
    pub(super) patterns: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) prefetch: Option<Spanned<i64>>,
    pub(super) concurrency: Option<Spanned<i64>>,
    pub(super) max_attempts: Option<Spanned<i64>>,
    pub(super) retry_delay: Option<Spanned<String>>,
    pub(super) ttl: Option<Spanned<String>>,
    pub(super) dead_letter_queue: Option<Spanned<String>>,
}
