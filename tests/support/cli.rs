//! Test support for the tests that run the `tidings` binary as a user runs it.

#![allow(dead_code, unreachable_pub)]

use std::process::{Command, Output};

/// Runs `tidings ARGS` (without any `TIDINGS_URL` of the environment) and waits for it.
pub fn tidings(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .env_remove("TIDINGS_URL")
        .output()
        .expect("run tidings")
}

/// Runs `tidings --url URL ARGS` and waits for it.
pub fn tidings_on(url: &str, args: &[&str]) -> Output {
    tidings(&[&["--url", url], args].concat())
}

/// What it wrote to standard error.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What it wrote, standard output then standard error.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
}
