#!/usr/bin/env bash
# Installs what the demo and the tests need on Debian 12, only what is missing.
# Debian packages: OVN (central and host), Open vSwitch (switch and PKI), the Python OVS IDL,
# ovsdbapp, socat, and ethtool + iproute2 for the real-packet lab. Crates come through cargo.
set -euo pipefail

packages=(ovn-central ovn-host openvswitch-switch openvswitch-pki python3-openvswitch python3-ovsdbapp python3-yaml socat ethtool iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "tools/setup.sh: installing ${missing[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "tools/setup.sh: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
