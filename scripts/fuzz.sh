#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/*.rs) for a bounded time,
# starting from its committed corpus (fuzz/corpus/<target>), and fails if
# any target finds a crash. scripts/test.sh calls it after the tests.
#
#   scripts/fuzz.sh [SECONDS]     seconds per target (default 45)
#
# Needs the nightly toolchain and cargo-fuzz, and installs whichever is
# missing. Builds go to $CARGO_FUZZ_TARGET_DIR (default
# ~/.cache/chat-fuzz-target): the sanitizer flags would otherwise
# invalidate the main target dir. Inputs found during the run go to a
# temporary directory, not into the committed corpus (see docs/fuzzing.md
# for how to grow and minimize it); a crashing input is kept under
# $FUZZ_ARTIFACTS_DIR (default: a temporary directory) and its path printed.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-45}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
    echo "usage: $0 [SECONDS per target, at least 1]" >&2
    exit 2
fi

export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/chat-fuzz-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
artifacts="${FUZZ_ARTIFACTS_DIR:-$(mktemp -d)}"

# One build for every target, so the timed runs below only fuzz.
cargo +nightly fuzz build

failed=()
for src in fuzz/fuzz_targets/*.rs; do
    target="$(basename "$src" .rs)"
    mkdir -p "$work/$target" "$artifacts/$target"
    printf '\n--> %s: %s s over fuzz/corpus/%s\n' "$target" "$secs" "$target"
    # The first corpus directory is where new inputs are written.
    if ! cargo +nightly fuzz run "$target" "$work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        -artifact_prefix="$artifacts/$target/"; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs under $artifacts)" >&2
    echo "reproduce one: cargo +nightly fuzz run <target> <input>" >&2
    exit 1
fi
echo "fuzzing: no crash in $(ls fuzz/fuzz_targets/*.rs | wc -l) targets, $secs s each"
