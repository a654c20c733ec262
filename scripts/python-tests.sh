#!/usr/bin/env bash
# The Python participant's cross-language tests (python/tests/): a virtual environment in
# target/py-venv with ./python[test] installed, the Rust programs they start (examples/py_peer.rs,
# and examples/plugins.rs, which starts python/examples/plugin.py on this venv's interpreter),
# then pytest against the RabbitMQ at TIDINGS_TEST_AMQP (default amqp://guest:guest@127.0.0.1:5672/%2f).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=target/py-venv
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check './python[test]'
rm -rf python/build python/tidings.egg-info

cargo build --quiet --features amqp091 --example py_peer --example plugins
# Where cargo put it: target/, or wherever CARGO_TARGET_DIR points.
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps \
    | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
export PY_PEER="$TARGET_DIR/debug/examples/py_peer"
export PLUGINS="$TARGET_DIR/debug/examples/plugins"

cd python
# The pytest script (not `python -m pytest`) keeps python/ off sys.path: the installed copy runs.
exec "../$VENV/bin/pytest" -q -p no:cacheprovider --import-mode=importlib tests "$@"
