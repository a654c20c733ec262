#!/usr/bin/env bash
# The test command: starts the brokers the suite needs, then checks formatting, lints, docs and
# runs every test (unit, doc, conformance on every driver, fault tests) against real brokers,
# then the Python participant's cross-language tests (python/, on RabbitMQ).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/brokers.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet
cargo test --workspace --all-features
bash scripts/python-tests.sh
