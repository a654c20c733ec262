//! What a system needs on the broker before its components start: every durable group its
//! components take from (workers, each replica's fanout group, services), the patterns each is
//! bound with, and their dead-letter queues. Broadcast subscriptions need nothing: they keep
//! nothing for a subscriber that does not run.

use std::collections::{BTreeMap, BTreeSet};

use tidings_core::{Bus, Envelope, Error, Result};

use super::{IntakeKind, System};

/// The durable groups of a system, by name. Made by [`System::topology`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    groups: Vec<Group>,
}

/// One durable group: the queue its members share, what it is bound with, and where its dead
/// letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Group {
    /// The group's name (a fanout's replica groups are `<group>.<replica>`).
    pub name: String,
    /// The patterns its queue is bound with.
    pub patterns: BTreeSet<String>,
    /// The dead-letter queues its members use (usually one: the group's name).
    pub dead_letter_queues: BTreeSet<String>,
    /// The components that take from it.
    pub components: BTreeSet<String>,
}

impl System {
    /// The durable groups this system's components take from, with their bindings and
    /// dead-letter queues: what `tidings topology apply` declares.
    ///
    /// # Examples
    /// ```
    /// let system = tidings::system::System::parse(
    ///     "[[component]]\nname = \"notifier\"\ncommand = \"n\"\nreplicas = 2\n\
    ///      [[component.fanout]]\npatterns = [\"notify.#\"]\n",
    ///     "tidings.toml",
    /// )?;
    /// let names: Vec<_> = system.topology().groups().iter().map(|g| g.name.clone()).collect();
    /// assert_eq!(names, ["notifier.1", "notifier.2"]);
    /// # Ok::<(), tidings::system::SystemError>(())
    /// ```
    pub fn topology(&self) -> Topology {
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for component in self.components() {
            for intake in &component.intakes {
                if !intake.kind.is_durable() {
                    continue;
                }
                let replicas = match intake.kind {
                    IntakeKind::Fanout => (1..=component.replicas).collect(),
                    _ => vec![1],
                };
                for replica in replicas {
                    let intake = intake.for_replica(replica);
                    let Some(name) = intake.group.clone() else {
                        continue;
                    };
                    let group = groups.entry(name.clone()).or_insert_with(|| Group {
                        name,
                        patterns: BTreeSet::new(),
                        dead_letter_queues: BTreeSet::new(),
                        components: BTreeSet::new(),
                    });
                    group.patterns.extend(intake.patterns.iter().cloned());
                    group
                        .dead_letter_queues
                        .insert(intake.dead_letter_queue().to_owned());
                    group.components.insert(component.name.clone());
                }
            }
        }
        Topology {
            groups: groups.into_values().collect(),
        }
    }
}

impl Topology {
    /// The groups, sorted by name.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Declares every group on `bus`'s broker — its durable queue, bound with each of its
    /// patterns, and its dead-letter queues — without consuming, so that events sent from now
    /// on wait for the components. Idempotent; bindings the broker has and the file does not
    /// are left alone (`tidings topology check` reports them). See
    /// [`SubscribeBuilder::declare`](tidings_core::SubscribeBuilder::declare).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() -> tidings::Result<()> {
    /// let system = tidings::system::System::parse(
    ///     "[[component]]\nname = \"fetcher\"\ncommand = \"f\"\n\
    ///      [[component.worker]]\npatterns = [\"fetch.#\"]\n",
    ///     "tidings.toml",
    /// )?;
    /// let bus = tidings::connect("memory://topology-doc").await?;
    /// system.topology().apply(&bus).await?;
    /// bus.emit("fetch.page", &"https://example.com".to_owned()).await?; // kept for the fetcher
    /// # Ok(()) }
    /// ```
    pub async fn apply(&self, bus: &Bus) -> Result<()> {
        for group in &self.groups {
            let first_queue = group.dead_letter_queues.first();
            for pattern in &group.patterns {
                declare(bus, group, pattern, first_queue).await?;
            }
            if let Some(pattern) = group.patterns.first() {
                for queue in group.dead_letter_queues.iter().skip(1) {
                    declare(bus, group, pattern, Some(queue)).await?;
                }
            }
        }
        Ok(())
    }
}

async fn declare(bus: &Bus, group: &Group, pattern: &str, dead: Option<&String>) -> Result<()> {
    let mut builder = bus.subscribe::<Envelope>(pattern).group(&group.name);
    if let Some(queue) = dead {
        builder = builder.dead_letter_queue(queue);
    }
    builder.declare().await.map_err(|e| {
        let message = format!(
            "declaring group {:?} bound with {pattern:?}: {}",
            group.name,
            e.message()
        );
        Error::new(e.kind(), message).with_source(e)
    })
}
