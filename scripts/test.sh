#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
#
#   1. formatting      cargo fmt --all --check
#   2. lints           cargo clippy --workspace --all-targets -- -D warnings
#   3. tests           cargo test --workspace --locked
#   4. the behaviour suite again, against the distributed mode:
#                      CHAT_TEST_MODE=cluster cargo test -p chat --test api
#   5. fuzzing         scripts/fuzz.sh: every cargo-fuzz target for
#                      $CHAT_FUZZ_SECS (45) seconds over its committed corpus
#                      (0 skips it; docs/fuzzing.md)
#
# First it makes sure PostgreSQL, Redis, NATS, HAProxy, grpcurl,
# docker-compose, kubectl, kubernetes-validate and checkov are there
# (scripts/services.sh: use, start or install them).
# Every test uses its own SQLite file, Postgres schema, Redis key prefix and
# NATS subject prefix, so tests run in parallel. Builds go to a target dir
# outside the checkout so reruns are fast.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chat-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed (https://rustup.rs)" >&2
    exit 1
fi

step() { printf '\n==> %s\n' "$*"; }

step "services"
source scripts/services.sh
ensure_services

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy --workspace --all-targets --locked -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace --locked"
cargo test --workspace --locked

step "CHAT_TEST_MODE=cluster cargo test -p chat --test api --locked"
CHAT_TEST_MODE=cluster cargo test -p chat --test api --locked

if [ "${CHAT_FUZZ_SECS:-45}" != 0 ]; then
    step "scripts/fuzz.sh ${CHAT_FUZZ_SECS:-45}"
    scripts/fuzz.sh "${CHAT_FUZZ_SECS:-45}"
fi
