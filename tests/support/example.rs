//! Test support for the tests that run an example as a user runs it: its binary, built (or
//! found up to date) with this test's drivers.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The binary of the example `name`, next to this test's (`target/<profile>/examples/`).
///
/// `cargo build --example <name>` runs once per test process, with `features` and this test's
/// drivers (`amqp091` when the test has it): `cargo test --test <t>` alone does not build
/// examples, and an example built earlier may be out of date or built with other features.
/// Tests calling it at once wait for the one build.
pub fn binary(name: &str, features: &[&str]) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let deps = std::env::current_exe().unwrap();
    let profile = deps.parent().unwrap().parent().unwrap();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(name) {
        let mut features = features.to_vec();
        if cfg!(feature = "amqp091") && !features.contains(&"amqp091") {
            features.push("amqp091");
        }
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--example", name]);
        if !features.is_empty() {
            build.args(["--features", &features.join(",")]);
        }
        let status = build
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example {name}");
        built.insert(name.to_owned());
    }
    profile.join("examples").join(name)
}
