//! The tidings conformance suite on Apache ActiveMQ 5 (`TIDINGS_STOMP_ACTIVEMQ_URL`).

mod common;

fn main() -> std::process::ExitCode {
    common::run_conformance(common::Broker::ActiveMq)
}
