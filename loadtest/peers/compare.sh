#!/usr/bin/env bash
# Runs one loadtest command against our all-in-one server and each peer,
# one server at a time, and prints one markdown table.
#
#   loadtest/peers/compare.sh
#   N=500 RATE=20 DURATION=5 PEERS="chat gorilla" loadtest/peers/compare.sh
#
# Environment:
#   N, RATE, DURATION   connections, messages/s, seconds (2000, 50, 10)
#   SCENARIO            room (default) or idle
#   PEERS               which servers, in order
#                       (default: chat gorilla socketio sockudo centrifuge nchan)
#   OUT                 where the JSON, tables and logs go (default: a new /tmp dir)
#   LOADTEST, CHAT      the binaries (default: built with cargo into
#                       ${CARGO_TARGET_DIR:-target}/release)
#   LOADTEST_FLAGS      more loadtest flags, the same for every server
#   INSTALL_TIMEOUT     seconds one peer's install may take (3600: Sockudo
#                       compiles from crates.io the first time)
#
# Each peer is installed first (`start.sh --install`), then started on its
# own port, measured, and stopped (its whole process group) before the
# next; a trap stops whatever is running when the script ends. Every step
# is bounded in time.

set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
N=${N:-2000}
RATE=${RATE:-50}
DURATION=${DURATION:-10}
SCENARIO=${SCENARIO:-room}
PEERS=${PEERS:-chat gorilla socketio sockudo centrifuge nchan}
OUT=${OUT:-$(mktemp -d /tmp/peers-compare.XXXXXX)}
INSTALL_TIMEOUT=${INSTALL_TIMEOUT:-3600}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
mkdir -p "$OUT"

say() { echo "compare: $*" >&2; }
command -v jq >/dev/null || { say "needs jq (apt-get install jq)"; exit 2; }

if [ -z "${LOADTEST:-}" ] || [ -z "${CHAT:-}" ]; then
    say "building chat and loadtest (release)"
    (cd "$ROOT" && nice -n 19 cargo build --release -q -p chat -p loadtest)
fi
LOADTEST=${LOADTEST:-$TARGET/release/loadtest}
CHAT=${CHAT:-$TARGET/release/chat}

# name → loadtest protocol and port.
protocol_of() { case $1 in sockudo) echo pusher ;; *) echo "$1" ;; esac; }
port_of() {
    case $1 in
    chat) echo 7100 ;; gorilla) echo 7101 ;; socketio) echo 7102 ;;
    sockudo) echo 7103 ;; centrifuge) echo 7104 ;; nchan) echo 7105 ;;
    *) return 1 ;;
    esac
}

SERVER_PID=
CHAT_DATA=$(mktemp -d /tmp/peers-compare-chat.XXXXXX)

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    # The server leads its own session: stop its whole process group
    # (nginx's workers too).
    kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
trap 'stop_server; rm -rf "$CHAT_DATA"' EXIT
trap 'exit 130' INT TERM

# start NAME PORT: the server in its own session; SERVER_PID is its pid.
start() {
    local name=$1 port=$2 log=$OUT/$1.server.log
    if [ "$name" = chat ]; then
        setsid bash -c 'ulimit -n 20000; exec "$@"' chat "$CHAT" \
            --data-dir "$CHAT_DATA" --http-addr "127.0.0.1:$port" --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
            --send-limit 0 --membership-limit 0 --create-limit 0 --signup-limit 0 --ws-frames-per-sec 100000 \
            --argon2-memory-kib 256 --argon2-iterations 1 >"$log" 2>&1 &
    else
        PORT=$port setsid "$HERE/$name/start.sh" >"$log" 2>&1 &
    fi
    SERVER_PID=$!
    for _ in $(seq 300); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            say "$name exited before listening (see $log)"
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    say "$name is not listening on $port after 30 s (see $log)"
    return 1
}

ROWS=()
row() { ROWS+=("| $1 | $2 | $3 | - | - | - | - | - | - |"); }

for name in $PEERS; do
    port=$(port_of "$name") || { say "unknown peer $name"; exit 2; }
    proto=$(protocol_of "$name")
    if [ "$name" != chat ]; then
        say "$name: installing if missing"
        if ! timeout "$INSTALL_TIMEOUT" "$HERE/$name/start.sh" --install \
            >"$OUT/$name.install.log" 2>&1; then
            say "$name: install failed (see $OUT/$name.install.log)"
            row "$name" "$proto" "install failed"
            continue
        fi
    fi
    say "$name: starting on 127.0.0.1:$port"
    if ! start "$name" "$port"; then
        stop_server
        row "$name" "$proto" "did not start"
        continue
    fi
    say "$name: loadtest --protocol $proto --scenario $SCENARIO --connections $N --rate $RATE --duration $DURATION"
    # shellcheck disable=SC2086 # LOADTEST_FLAGS is a list of flags
    timeout $((3 * ${DURATION%.*} + N / 50 + 180)) "$LOADTEST" --protocol "$proto" \
        --url "http://127.0.0.1:$port" --scenario "$SCENARIO" --connections "$N" \
        --rate "$RATE" --duration "$DURATION" --drain-max 30 --allow-loss \
        --json "$OUT/$name.json" ${LOADTEST_FLAGS:-} \
        >"$OUT/$name.txt" 2>"$OUT/$name.loadtest.log" || say "$name: loadtest exited with $?"
    stop_server
    if [ ! -s "$OUT/$name.json" ]; then
        row "$name" "$proto" "no result"
        continue
    fi
    ROWS+=("$(jq -r --arg name "$name" '
        "| \($name) | \(.protocol) | \(.connections_held) | \(.deliveries_per_s | floor) | \(.lost) | \(.latency_ms.p99 * 100 | round / 100) | \(.server_rss_per_conn_bytes / 1024 * 10 | round / 10) | \(.server_cpu_percent | round) | \(if .passed then "PASS" else "FAIL" end) |"
    ' "$OUT/$name.json")")
done

{
    echo "$SCENARIO: $N connections, $RATE msg/s for $DURATION s${LOADTEST_FLAGS:+ (loadtest $LOADTEST_FLAGS)}; JSON in $OUT"
    echo
    echo "| server | protocol | connections | deliveries/s | lost | p99 ms | server RSS/conn KiB | server CPU % | checks |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/table.md"
