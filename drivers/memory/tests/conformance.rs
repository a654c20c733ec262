//! The shared conformance suite on the embedded broker. Each case gets its own broker.

use std::process::ExitCode;

use tidings_conformance::{BoxFuture, Harness};
use tidings_core::{Bus, Capabilities, Result};

struct Memory;

impl Harness for Memory {
    fn name(&self) -> String {
        "memory".into()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn connect<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Bus>> {
        Box::pin(async move {
            let provider = tidings_memory::connect(&format!("memory://{namespace}")).await?;
            Ok(Bus::new(provider))
        })
    }
}

fn main() -> ExitCode {
    tidings_conformance::run_main(Memory)
}
