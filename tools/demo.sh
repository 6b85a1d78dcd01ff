#!/usr/bin/env bash
# The main job: a throw-away NB database with the proxy in front, driven by ovn-nbctl.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
exec cargo run --quiet --release -p ovn-nb-lab --bin ovn-nb-demo -- "$@"
