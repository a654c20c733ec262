//! `conformance`: the driver tests' suite, run against any broker URL, as a table.

use std::sync::Arc;
use std::time::Instant;

use tidings::{Bus, Capabilities, Result};
use tidings_conformance::{run_case, BoxFuture, Harness, CASES};

use crate::args::ConformanceArgs;
use crate::failure::Failure;

/// Reaches the broker at a URL, one isolated namespace per case.
struct UrlHarness {
    url: String,
    capabilities: Capabilities,
}

impl Harness for UrlHarness {
    fn name(&self) -> String {
        tidings::redact(&self.url)
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    fn connect<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Bus>> {
        Box::pin(
            async move { tidings::connect(&tidings::isolated_url(&self.url, namespace)?).await },
        )
    }
}

pub(crate) fn run(global_url: Option<&str>, args: &ConformanceArgs) -> Result<(), Failure> {
    let url = args
        .url
        .as_deref()
        .or(global_url)
        .ok_or_else(Failure::no_url)?
        .to_owned();
    // Connect once up front: a bad URL or a broker that is down is one clear line, not a table
    // of identical failures.
    let runtime = tokio::runtime::Runtime::new().map_err(|e| Failure::runtime(e.to_string()))?;
    let capabilities = runtime.block_on(async {
        let bus = tidings::connect(&url).await?;
        let capabilities = bus.capabilities();
        let _ = bus.shutdown().await;
        Ok::<_, tidings::Error>(capabilities)
    })?;
    drop(runtime);
    let harness: Arc<dyn Harness> = Arc::new(UrlHarness {
        url,
        capabilities: capabilities.clone(),
    });
    let selected: Vec<_> = CASES
        .iter()
        .filter(|case| {
            args.case
                .as_deref()
                .is_none_or(|text| case.name.contains(text))
        })
        .collect();
    if selected.is_empty() {
        return Err(Failure::usage(format!(
            "no case matches {:?}; cases: {}",
            args.case.as_deref().unwrap_or(""),
            CASES.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
        )));
    }
    let width = selected.iter().map(|c| c.name.len()).max().unwrap_or(10);
    println!("conformance against {}", harness.name());
    println!(
        "{:<width$}  {:<11}  {:>8}  detail",
        "case", "result", "time"
    );
    let (mut passed, mut failed, mut unsupported) = (0, 0, 0);
    for case in selected {
        if let Some(missing) = (case.requires)(&capabilities) {
            let why = capabilities
                .notes
                .iter()
                .find(|(what, _)| *what == missing)
                .map_or(missing, |(_, why)| *why);
            println!(
                "{:<width$}  {:<11}  {:>8}  missing capability {missing}: {why}",
                case.name, "unsupported", "-"
            );
            unsupported += 1;
            continue;
        }
        let started = Instant::now();
        let outcome = run_case(harness.clone(), case);
        let time = format!("{:.2}s", started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                println!("{:<width$}  {:<11}  {time:>8}", case.name, "pass");
                passed += 1;
            }
            Err(assertion) => {
                println!(
                    "{:<width$}  {:<11}  {time:>8}  {assertion}",
                    case.name, "FAIL"
                );
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed, {unsupported} unsupported");
    if failed > 0 {
        Err(Failure::silent())
    } else {
        Ok(())
    }
}
