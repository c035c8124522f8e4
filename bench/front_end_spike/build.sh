#!/usr/bin/env bash
# Builds the spike: the release binary and the Python module (front_end_spike.abi3.so, next to this script).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="$PWD/target"
cargo build --release
cargo build --release --lib --features python
cp target/release/libfront_end_spike.so front_end_spike.abi3.so
