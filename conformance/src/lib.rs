//! The shared conformance suite: every tidings driver runs these cases against a real broker.
//!
//! A driver's `tests/conformance.rs` (with `harness = false`) hands a [`Harness`] to
//! [`run_main`]; each case becomes one test named `<harness>::<case>`, so `cargo test -p
//! <driver>` lists them all, says which broker each ran on, and accepts the usual filters
//! (`cargo test -p tidings-memory -- rpc`). A case whose
//! capability the driver reports missing is shown as `ignored` with the kind
//! `[unsupported: reason]` — never silently passed.
//!
//! Every case runs in its own namespace (a fresh name the harness maps to, for example, an
//! exchange), and all group and queue names a case uses start with that namespace, so cases run
//! in parallel on one broker without seeing each other.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use tidings_core::{Bus, Capabilities, Result};

mod cases;
pub mod cluster;
pub mod node_loss;
pub mod rabbitmq;
pub mod support;

pub use cases::{Case, CASES};

/// A boxed future, as the harness returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How the suite reaches a driver and its broker.
pub trait Harness: Send + Sync + 'static {
    /// Shown in test names and messages, e.g. `memory` or `rabbitmq`.
    fn name(&self) -> String;

    /// What the driver supports; missing capabilities turn cases into `unsupported`.
    fn capabilities(&self) -> Capabilities;

    /// A new bus (a new connection) in `namespace`. Buses of one namespace see each other's
    /// messages; buses of different namespaces never do. A broker that cannot be reached is an
    /// error, which fails the case: the suite never skips for a missing broker.
    fn connect<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Bus>>;

    /// Removes what a case left on the broker (exchanges, queues). Default: nothing.
    fn cleanup<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, ()> {
        let _ = namespace;
        Box::pin(async {})
    }
}

/// Runs the whole suite as a libtest-compatible test binary and returns its exit code.
///
/// ```no_run
/// # struct MyHarness;
/// # impl tidings_conformance::Harness for MyHarness {
/// #   fn name(&self) -> String { "x".into() }
/// #   fn capabilities(&self) -> tidings_core::Capabilities { Default::default() }
/// #   fn connect<'a>(&'a self, _: &'a str) -> tidings_conformance::BoxFuture<'a, tidings_core::Result<tidings_core::Bus>> { todo!() }
/// # }
/// // tests/conformance.rs, with `harness = false` for this test in Cargo.toml
/// fn main() -> std::process::ExitCode {
///     tidings_conformance::run_main(MyHarness)
/// }
/// ```
pub fn run_main<H: Harness>(harness: H) -> ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let harness: Arc<dyn Harness> = Arc::new(harness);
    let capabilities = harness.capabilities();
    let trials = CASES
        .iter()
        .map(|case| {
            let h = harness.clone();
            let case_ref: &'static Case = case;
            // Named `<harness>::<case>`, so output from several brokers reads unambiguously and
            // `-- rabbitmq` or `-- rpc` both filter as expected.
            let name = format!("{}::{}", harness.name(), case.name);
            let trial = libtest_mimic::Trial::test(name, move || {
                run_case(h, case_ref).map_err(libtest_mimic::Failed::from)
            });
            match (case.requires)(&capabilities) {
                Some(missing) => {
                    let reason = capabilities
                        .notes
                        .iter()
                        .find(|(what, _)| *what == missing)
                        .map_or(missing, |(_, why)| *why);
                    trial
                        .with_kind(format!("unsupported: {reason}"))
                        .with_ignored_flag(true)
                }
                None => trial,
            }
        })
        .collect();
    libtest_mimic::run(&args, trials).exit_code()
}

/// Runs one case on a fresh runtime, in a fresh namespace, and cleans up after it.
pub fn run_case(harness: Arc<dyn Harness>, case: &Case) -> std::result::Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
    let namespace = support::namespace(case.name);
    runtime.block_on(async {
        let ctx = Arc::new(support::Ctx::new(harness.clone(), namespace.clone()));
        let result = tokio::time::timeout(case.timeout, (case.run)(ctx)).await;
        harness.cleanup(&namespace).await;
        match result {
            Ok(outcome) => outcome.map_err(|e| e.to_string()),
            Err(_) => Err(format!("case did not finish within {:?}", case.timeout)),
        }
    })
}
