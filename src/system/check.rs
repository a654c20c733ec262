//! From the file as written to a [`Component`] list: every mistake a person makes is a
//! [`Problem`] with its line, column and field — unknown keys and wrong types (from the TOML
//! reader), and here: missing names and commands, two components with one name, a replica
//! count below 1, bad patterns and names (core's own validators and messages), bad durations,
//! keys that do not apply to a kind, and one group name used for two different things.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use tidings_core::{Pattern, RoutingKey};
use toml::Spanned;

use super::error::{Lines, Problem, SystemError};
use super::file::{ComponentFile, IntakeFile, SystemFile};
use super::intake::{Intake, IntakeKind};
use super::Component;

/// Checks `text`; `file` names it in errors.
pub(super) fn check(
    text: &str,
    file: &str,
) -> Result<(Option<String>, Vec<Component>), SystemError> {
    let lines = Lines::new(text);
    let parsed: SystemFile = toml::from_str(text)
        .map_err(|e| SystemError::problems_in(file, vec![reader_problem(&lines, &e)]))?;
    let mut checker = Checker {
        lines,
        problems: Vec::new(),
        names: HashMap::new(),
        groups: HashMap::new(),
    };
    let url = parsed.url.map(|url| {
        // Checked by the scheme only: a cluster's host list is not a URL the `url` crate takes,
        // and the driver checks the rest when it connects.
        if url
            .get_ref()
            .split_once("://")
            .is_none_or(|(scheme, _)| scheme.is_empty())
        {
            checker.at(
                &url.span(),
                "url",
                "not a broker url: expected scheme://…, e.g. amqp://user:pass@host:5672/vhost"
                    .into(),
            );
        }
        url.into_inner()
    });
    if parsed.components.is_empty() {
        checker.at(
            &(0..0),
            "component",
            "no [[component]] table: a system has at least one component".into(),
        );
    }
    let components = parsed
        .components
        .into_iter()
        .enumerate()
        .map(|(i, c)| checker.component(i + 1, c))
        .collect();
    if checker.problems.is_empty() {
        return Ok((url, components));
    }
    let mut problems = checker.problems;
    problems.sort_by_key(|p| (p.line, p.column));
    Err(SystemError::problems_in(file, problems))
}

/// An error of the TOML reader (syntax, unknown key, wrong type, missing table key): its
/// position, and the key it is about when the line says.
fn reader_problem(lines: &Lines<'_>, e: &toml::de::Error) -> Problem {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim().to_owned();
    let field = if message.starts_with("unknown field") {
        lines.text(&span).trim().trim_matches('"').to_owned()
    } else {
        key_of_line(lines, span.start)
    };
    lines.problem(&span, &field, message)
}

/// The `key` of a `key = value` line holding `offset`, if the line is one.
fn key_of_line(lines: &Lines<'_>, offset: usize) -> String {
    let (line, _) = lines.position(offset);
    match lines.line(line).split_once('=') {
        Some((key, _)) if !key.trim().starts_with('[') => key.trim().to_owned(),
        _ => String::new(),
    }
}

struct Checker<'a> {
    lines: Lines<'a>,
    problems: Vec<Problem>,
    /// Component names seen, with their line.
    names: HashMap<String, usize>,
    /// Group names seen: the kind, the field that took it, and its line.
    groups: HashMap<String, (IntakeKind, String, usize)>,
}

impl Checker<'_> {
    fn at(&mut self, span: &Range<usize>, field: &str, message: String) {
        self.problems.push(self.lines.problem(span, field, message));
    }

    fn component(&mut self, index: usize, c: Spanned<ComponentFile>) -> Component {
        let span = c.span();
        let c = c.into_inner();
        let name = match &c.name {
            Some(name) => {
                let label = format!("component {:?}", name.get_ref());
                self.component_name(name, &label);
                name.get_ref().clone()
            }
            None => {
                let field = format!("component #{index}");
                self.at(&span, &field, "missing `name`".into());
                format!("#{index}")
            }
        };
        let label = format!("component {name:?}");
        let command = match c.command {
            None => {
                let field = format!("{label} > command");
                self.at(
                    &span,
                    &field,
                    "missing: the shell command that runs one replica".into(),
                );
                String::new()
            }
            Some(command) => {
                if command.get_ref().trim().is_empty() {
                    let field = format!("{label} > command");
                    self.at(&command.span(), &field, "is empty".into());
                }
                command.into_inner()
            }
        };
        let replicas = match &c.replicas {
            None => 1,
            Some(r) => self.count(r, &format!("{label} > replicas"), u32::MAX as i64) as u32,
        };
        let mut intakes = Vec::new();
        let kinds = [
            (IntakeKind::Worker, &c.worker),
            (IntakeKind::Fanout, &c.fanout),
            (IntakeKind::Service, &c.service),
            (IntakeKind::Subscribe, &c.subscribe),
        ];
        for (kind, tables) in kinds {
            for (i, table) in tables.iter().enumerate() {
                let field = format!("{label} > {} #{}", kind.table(), i + 1);
                intakes.push(self.intake(kind, &name, table, &field));
            }
        }
        Component {
            name,
            command,
            replicas,
            env: c.env,
            intakes,
        }
    }

    fn component_name(&mut self, name: &Spanned<String>, label: &str) {
        let field = format!("{label} > name");
        let text = name.get_ref();
        let one_word = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !one_word {
            self.at(
                &name.span(),
                &field,
                format!("{text:?} is not one word of ASCII letters, digits, `_` and `-`"),
            );
        }
        let (line, _) = self.lines.position(name.span().start);
        if let Some(first) = self.names.insert(text.clone(), line) {
            self.names.insert(text.clone(), first);
            self.at(
                &name.span(),
                &field,
                format!("two components are named {text:?}: this one and the one at line {first}"),
            );
        }
    }

    fn intake(
        &mut self,
        kind: IntakeKind,
        component: &str,
        table: &Spanned<IntakeFile>,
        field: &str,
    ) -> Intake {
        let span = table.span();
        let t = table.get_ref();
        let not_here = |key: &str, instead: &str| (key.to_owned(), instead.to_owned());
        let misplaced = match kind {
            IntakeKind::Worker | IntakeKind::Fanout => vec![(
                t.name.as_ref().map(Spanned::span),
                not_here(
                    "name",
                    "`name` names a service; a group is named by `group`",
                ),
            )],
            IntakeKind::Service => vec![
                (
                    t.group.as_ref().map(Spanned::span),
                    not_here("group", "a service's group is its `name`"),
                ),
                (
                    t.patterns.as_ref().map(Spanned::span),
                    not_here("patterns", "a service takes requests sent to its `name`"),
                ),
            ],
            IntakeKind::Subscribe => vec![
                (
                    t.group.as_ref().map(Spanned::span),
                    not_here(
                        "group",
                        "a subscription is broadcast; use [[component.worker]] for a group",
                    ),
                ),
                (
                    t.name.as_ref().map(Spanned::span),
                    not_here("name", "`name` names a service"),
                ),
            ],
        };
        for (at, (key, why)) in misplaced {
            if let Some(at) = at {
                self.at(
                    &at,
                    &format!("{field} > {key}"),
                    format!("does not apply here: {why}"),
                );
            }
        }
        let (group, patterns) = match kind {
            IntakeKind::Service => match &t.name {
                None => {
                    self.at(
                        &span,
                        &format!("{field} > name"),
                        "missing: the RPC name it serves".into(),
                    );
                    (None, Vec::new())
                }
                Some(name) => {
                    if let Err(e) = RoutingKey::validate(name.get_ref()) {
                        self.at(
                            &name.span(),
                            &format!("{field} > name"),
                            e.message().to_owned(),
                        );
                    }
                    self.claim(
                        name.get_ref(),
                        kind,
                        &format!("{field} > name"),
                        &name.span(),
                    );
                    (Some(name.get_ref().clone()), vec![name.get_ref().clone()])
                }
            },
            _ => {
                let patterns = self.patterns(t, &span, field);
                let group = (kind != IntakeKind::Subscribe).then(|| match &t.group {
                    Some(group) => {
                        if let Err(e) = RoutingKey::validate(group.get_ref()) {
                            let message = e.message().replacen("routing key", "group", 1);
                            self.at(&group.span(), &format!("{field} > group"), message);
                        }
                        self.claim(
                            group.get_ref(),
                            kind,
                            &format!("{field} > group"),
                            &group.span(),
                        );
                        group.get_ref().clone()
                    }
                    None => {
                        let taken = format!("{field} (its default group)");
                        self.claim(component, kind, &taken, &span);
                        component.to_owned()
                    }
                });
                (group, patterns)
            }
        };
        let dead_letter_queue = t.dead_letter_queue.as_ref().map(|q| {
            if let Err(e) = RoutingKey::validate(q.get_ref()) {
                let message = e.message().replacen("routing key", "queue name", 1);
                self.at(&q.span(), &format!("{field} > dead_letter_queue"), message);
            }
            q.get_ref().clone()
        });
        let number = |this: &mut Self, value: &Option<Spanned<i64>>, key: &str, max: i64| {
            value
                .as_ref()
                .map(|v| this.count(v, &format!("{field} > {key}"), max))
        };
        Intake {
            kind,
            patterns,
            group,
            dead_letter_queue,
            prefetch: number(self, &t.prefetch, "prefetch", u16::MAX.into()).map(|n| n as u16),
            concurrency: number(self, &t.concurrency, "concurrency", 65_536).map(|n| n as usize),
            max_attempts: number(self, &t.max_attempts, "max_attempts", u32::MAX.into())
                .map(|n| n as u32),
            retry_delay: self.duration(&t.retry_delay, &format!("{field} > retry_delay")),
            ttl: self.duration(&t.ttl, &format!("{field} > ttl")),
        }
    }

    fn patterns(&mut self, t: &IntakeFile, span: &Range<usize>, field: &str) -> Vec<String> {
        let field = format!("{field} > patterns");
        let Some(patterns) = &t.patterns else {
            self.at(
                span,
                &field,
                "missing: the routing patterns it takes, e.g. [\"orders.#\"]".into(),
            );
            return Vec::new();
        };
        if patterns.get_ref().is_empty() {
            self.at(
                &patterns.span(),
                &field,
                "is empty: list at least one pattern".into(),
            );
        }
        for (i, pattern) in patterns.get_ref().iter().enumerate() {
            if let Err(e) = Pattern::new(pattern.get_ref()) {
                self.at(
                    &pattern.span(),
                    &format!("{field}[{i}]"),
                    e.message().to_owned(),
                );
            }
        }
        patterns
            .get_ref()
            .iter()
            .map(|p| p.get_ref().clone())
            .collect()
    }

    /// Records that `field` takes group `group` as a `kind`; two kinds on one group (or two
    /// fanouts, whose replicas' queues would meet) share one queue by mistake.
    fn claim(&mut self, group: &str, kind: IntakeKind, field: &str, span: &Range<usize>) {
        let (line, _) = self.lines.position(span.start);
        match self.groups.get(group) {
            Some((first, first_field, first_line))
                if *first != kind || kind == IntakeKind::Fanout =>
            {
                let message = format!(
                    "group {group:?} is already taken by {first_field} (line {first_line}); \
                     they would share one queue: give one of them another group"
                );
                self.at(span, field, message);
            }
            Some(_) => {}
            None => {
                self.groups
                    .insert(group.to_owned(), (kind, field.to_owned(), line));
            }
        }
    }

    /// A whole number from 1 to `max`; reports and returns 1 otherwise.
    fn count(&mut self, value: &Spanned<i64>, field: &str, max: i64) -> i64 {
        let n = *value.get_ref();
        if n < 1 {
            self.at(&value.span(), field, "must be at least 1".into());
            1
        } else if n > max {
            self.at(&value.span(), field, format!("must be at most {max}"));
            max
        } else {
            n
        }
    }

    fn duration(&mut self, value: &Option<Spanned<String>>, field: &str) -> Option<Duration> {
        let value = value.as_ref()?;
        match humantime::parse_duration(value.get_ref().trim()) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => {
                self.at(&value.span(), field, "must be longer than 0".into());
                None
            }
            Err(e) => {
                let message = format!(
                    "{:?} is not a duration: {e} (write for example \"500ms\", \"30s\", \"2m\")",
                    value.get_ref()
                );
                self.at(&value.span(), field, message);
                None
            }
        }
    }
}
