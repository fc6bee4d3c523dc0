#!/bin/sh
# Replays the seed corpus and every committed crash input of every fuzz target on stable Rust,
# without a fuzzer: fuzz/corpus/<target>/* and fuzz/regressions/<target>/*.
# Prints "replay: N passed, N failed" and exits non-zero on any failure.
#
#   fuzz/replay.sh                                   # everything
#   fuzz/replay.sh fuzz/regressions/decompress/FILE  # one input (target = parent folder)
#
# The fuzz/ folder is its own cargo workspace, so this never builds libFuzzer.
set -eu
start=$(pwd)
here=$(cd "$(dirname "$0")" && pwd)
abs=""
for arg in "$@"; do
    case "$arg" in
        /*) abs="$abs $arg" ;;
        *) abs="$abs $start/$arg" ;;
    esac
done
# shellcheck disable=SC2086
exec cargo test --release --manifest-path "$here/Cargo.toml" -p rampart-fuzz-harness \
    --test replay -- $abs
