#!/usr/bin/env bash
# The tests: formatting, lints, unit tests, and integration tests against real OVN daemons.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
