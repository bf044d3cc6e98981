#!/usr/bin/env bash
# `make fuzz`: runs every cargo-fuzz target under fuzz/ for FUZZ_SECONDS (default 60) each.
# cargo-fuzz needs a nightly toolchain; this installs it (rustup) and cargo-fuzz (cargo
# install) when missing, and fails with a clear message when it cannot.
# FUZZ_TARGETS picks targets (default: all); FUZZ_SANITIZER (default none: the code under
# test is safe Rust, panics are what is looked for) is passed to cargo fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)" >&2
  rustup toolchain install nightly --profile minimal || {
    echo "fuzz: FAILED: no nightly toolchain could be installed (rustup toolchain install nightly); cargo-fuzz cannot run without one" >&2
    exit 1
  }
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked || {
    echo "fuzz: FAILED: cargo-fuzz could not be installed (cargo install cargo-fuzz --locked)" >&2
    exit 1
  }
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
cargo +nightly fuzz build --sanitizer "$sanitizer"
for target in $targets; do
  echo "fuzz: $target for ${seconds}s" >&2
  mkdir -p "fuzz/corpus/$target"
  cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1
done
echo "fuzz: every target ran ${seconds}s without a failure" >&2
