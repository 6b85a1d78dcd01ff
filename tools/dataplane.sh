#!/usr/bin/env bash
# Real packets: live migrations on the OVS userspace datapath in network namespaces, every kind
# of CMS side by side (benches/dataplane.rs). As root; installs what is missing.
#
#   tools/dataplane.sh              the namespace VM, every arm, 10 runs each
#   tools/dataplane.sh qemu         the real QEMU guest (TCG), every arm
#   tools/dataplane.sh both         both, interleaved
#   DATAPLANE_RUNS=3 DATAPLANE_ARMS=P,D,N1000 tools/dataplane.sh qemu
#
# Prints a table of medians and ranges per arm and writes target/dataplane.json.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
DATAPLANE_VM="${1:-namespace}" exec cargo bench --bench dataplane
