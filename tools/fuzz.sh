#!/usr/bin/env bash
# Fuzzing: runs each cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS (default 20) and fails on
# the first crash, leaving the input in fuzz/artifacts/TARGET/. Works with a stable toolchain:
# RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z sanitizer flags cargo-fuzz passes. Installs
# cargo-fuzz (crates.io) and a C++ compiler (libFuzzer is C++) when they are missing.
#
#   tools/fuzz.sh [SECONDS] [TARGET...]      targets: codec policy (default: both)
#   FUZZ_SANITIZER=none tools/fuzz.sh        no AddressSanitizer (the code is unsafe-free; faster)
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(codec policy)
sanitizer="${FUZZ_SANITIZER:-address}"

if ! command -v c++ >/dev/null; then
    apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# A stable toolchain when rustup is there (the default one may be nightly on some machines).
toolchain=()
if command -v rustup >/dev/null && rustup run stable rustc --version >/dev/null 2>&1; then
    toolchain=(+stable)
fi

for t in "${targets[@]}"; do
    corpus="fuzz/corpus/$t"
    mkdir -p "$corpus"
    if [ -d "fuzz/seeds/$t" ]; then
        cp -n fuzz/seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    fi
    dict=()
    [ -f "fuzz/$t.dict" ] && dict=("-dict=fuzz/$t.dict")
    if ! cargo "${toolchain[@]}" fuzz build --sanitizer "$sanitizer" "$t"; then
        echo "fuzz.sh: building $t with --sanitizer $sanitizer failed; retrying without a sanitizer" >&2
        sanitizer=none
        cargo "${toolchain[@]}" fuzz build --sanitizer none "$t"
    fi
    echo "fuzz.sh: $t for ${secs}s (sanitizer: $sanitizer)"
    cargo "${toolchain[@]}" fuzz run --sanitizer "$sanitizer" "$t" "$corpus" -- \
        -max_total_time="$secs" -print_final_stats=1 "${dict[@]}"
done
echo "fuzz.sh: no crash in ${targets[*]} (${secs}s each)"
