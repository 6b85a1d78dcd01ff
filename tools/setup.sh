#!/usr/bin/env bash
# Installs what the demo and the tests need on Debian 12, only what is missing.
# Debian packages: OVN (central and host), Open vSwitch (switch and PKI), the Python OVS IDL,
# ovsdbapp, socat; for the real-packet lab ethtool and iproute2, and for its QEMU guest
# qemu-system-x86, busybox-static, linux-image-amd64 (the guest's kernel), cpio and xz-utils
# (without their recommendations); for the package's test logrotate, man-db and binutils.
# Crates come through cargo itself.
set -euo pipefail

packages=(ovn-central ovn-host openvswitch-switch openvswitch-pki python3-openvswitch python3-ovsdbapp python3-yaml socat
          ethtool iproute2 logrotate man-db binutils)
guest=(qemu-system-x86 busybox-static linux-image-amd64 cpio xz-utils)

missing_of() {
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
mapfile -t missing < <(missing_of "${packages[@]}")
mapfile -t missing_guest < <(missing_of "${guest[@]}")

if ((${#missing[@]} + ${#missing_guest[@]})); then
  echo "tools/setup.sh: installing ${missing[*]} ${missing_guest[*]}" >&2
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  if ((${#missing[@]})); then
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if ((${#missing_guest[@]})); then
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing_guest[@]}" >/dev/null
  fi
fi

command -v cargo >/dev/null || { echo "tools/setup.sh: cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
