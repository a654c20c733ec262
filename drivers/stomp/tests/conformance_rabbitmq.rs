//! The tidings conformance suite on RabbitMQ's STOMP plugin (`TIDINGS_STOMP_RABBITMQ_URL`).

mod common;

fn main() -> std::process::ExitCode {
    common::run_conformance(common::Broker::RabbitMq)
}
