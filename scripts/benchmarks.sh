#!/usr/bin/env bash
# Regenerates the results in BENCHMARKS.md: every loadtest scenario against
# the all-in-one server and the distributed stack, the origin's target, and
# the peers, on this machine, one run after another (nothing else should be
# running). The tables go between the `generated` markers of BENCHMARKS.md;
# the JSON of every run stays in $OUT.
#
#   scripts/benchmarks.sh                 everything (~15 minutes, plus the
#                                         peers' first install)
#   ONLY="aio" scripts/benchmarks.sh      just some parts: aio dist disttarget
#                                          dist100k manyrooms peers (and linger, not in
#                                          the default set);
#                                         renders to $OUT/BENCHMARKS.md, or with
#                                         UPDATE=1 to BENCHMARKS.md from every
#                                         run in $OUT
#
# Environment: OUT (default /tmp/chat-benchmarks), TARGET_SECS (seconds of
# the 15,000-connection run; 60), PEERS_N / PEERS_RATE (2000 / 50) and
# PEERS_HEAVY_N / PEERS_HEAVY_RATE (10000 / 117) for the two peer tables;
# for manyrooms (the highest rate held over many rooms, `--find-max`, all-in-one
# and distributed): MANYROOMS_N / MANYROOMS_ROOMS (10000 / 1000),
# MANYROOMS_RATE (the first step's rate; 250), MANYROOMS_SECS (each step's
# sending; 10), MANYROOMS_STEPS (8) and MANYROOMS_MODES ("aio dist").
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chat-target}"
OUT="${OUT:-/tmp/chat-benchmarks}"
ONLY_GIVEN="${ONLY:-}"
ONLY="${ONLY:-aio dist disttarget dist100k manyrooms peers}"
TARGET_SECS="${TARGET_SECS:-60}"
mkdir -p "$OUT"
bin="$OUT/bin"
mkdir -p "$bin"

echo "benchmarks: building release binaries" >&2
(cd "$root" && cargo build --release -q -p chat --bins -p loadtest)
# Copies: a later build in the shared target dir must not swap them mid-run.
for b in chat auth room gateway loadtest; do cp -f "$CARGO_TARGET_DIR/release/$b" "$bin/$b"; done
ulimit -n 20000

port=18280
server_pid=""
start_aio() { # flags...
    stop_aio
    rm -rf "$OUT/data"
    # Not the distributed stack's settings (cluster_env exports them): the
    # all-in-one keeps everything in its data dir.
    local clear=() v
    for v in $(compgen -e | grep '^CHAT_'); do clear+=(-u "$v"); done
    RUST_LOG=warn env "${clear[@]}" "$bin/chat" --data-dir "$OUT/data" --http-addr "127.0.0.1:$port" \
        --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --send-limit 0 --membership-limit 0 --create-limit 0 --signup-limit 0 --ws-frames-per-sec 100000 \
        --argon2-memory-kib 256 --argon2-iterations 1 "$@" >"$OUT/chat.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        curl -sf "127.0.0.1:$port/healthz" >/dev/null && return 0
        sleep 0.1
    done
    echo "benchmarks: the server did not start ($OUT/chat.log)" >&2
    exit 2
}
stop_aio() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
cluster_env() {
    export CHAT_CLUSTER_DIR="$OUT/cluster" CHAT_BIN_DIR="$bin" CHAT_CLUSTER_BASE_PORT=17300 \
        CHAT_CLUSTER_PORT=8300 CHAT_ARGON2_MEMORY_KIB=256 CHAT_ARGON2_ITERATIONS=1 \
        CHAT_SEND_LIMIT=0 CHAT_MEMBERSHIP_LIMIT=0 CHAT_CREATE_LIMIT=0 CHAT_SIGNUP_LIMIT=0 CHAT_WS_FRAMES_PER_SEC=100000 RUST_LOG=warn \
        CHAT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres?schema=chat_bench&max_connections=20" \
        CHAT_SUBJECT_PREFIX=chat_bench CHAT_KEY_PREFIX=chat_bench
}
# cluster_up GATEWAYS: a fresh distributed stack (after cluster_env) on an
# empty schema; sets gws (the gateways' URLs) and pids (their pids).
cluster_up() {
    psql -q -h 127.0.0.1 -U postgres -c "DROP SCHEMA IF EXISTS chat_bench CASCADE" postgres >/dev/null 2>&1 || true
    "$root/deploy/local/cluster" down >/dev/null 2>&1 || true
    "$root/deploy/local/cluster" up --gateways "$1" >/dev/null
    gws=$(for f in "$OUT"/cluster/gateway-*.addr; do printf 'http://%s,' "$(cat "$f")"; done)
    gws=${gws%,}
    pids=$(cat "$OUT"/cluster/gateway-*.pid | paste -sd,)
}
cleanup() {
    stop_aio
    if [ -d "$OUT/cluster" ]; then (cluster_env && "$root/deploy/local/cluster" down >/dev/null 2>&1) || true; fi
}
trap cleanup EXIT

# run NAME MODE "description" loadtest-flags...  (writes $OUT/NAME.json and
# $OUT/NAME.cmd; a failed check is recorded, not fatal)
run() {
    local name=$1 mode=$2 what=$3; shift 3
    local pin=()
    [ -n "${PIN:-}" ] && pin=(taskset -c "$PIN")
    echo "benchmarks: $name ($what)" >&2
    printf '%s\n%s\n%s\n' "$mode" "$what" "${pin[*]}${pin:+ }loadtest $*" >"$OUT/$name.cmd"
    timeout "${RUN_TIMEOUT:-900}" "${pin[@]}" "$bin/loadtest" "$@" --json "$OUT/$name.json" >"$OUT/$name.log" 2>&1 || true
    tail -3 "$OUT/$name.log" >&2
}

if [[ " $ONLY " == *" aio "* ]]; then
    u="--url http://127.0.0.1:$port"
    start_aio
    run aio-idle all-in-one "idle: connections one process holds" $u --scenario idle --connections 19000 --duration 10
    start_aio
    run aio-room-2k all-in-one "one room" $u --scenario room --connections 2000 --rate 50 --duration 10
    start_aio
    run aio-room-5k all-in-one "one room" $u --scenario room --connections 5000 --rate 117 --duration 20
    start_aio
    run aio-target all-in-one "the target: 15,000 in one room at 117 msg/s" \
        $u --scenario room --connections 15000 --rate 117 --duration "$TARGET_SECS" --drain-max 20
    # The same with the server and the load generator on a core each (as
    # if on two machines): no preemption ping-pong between them.
    start_aio
    for t in /proc/"$server_pid"/task/*; do taskset -pc 0 "${t##*/}" >/dev/null; done
    PIN=1 run aio-target-pinned all-in-one "the target, server on core 0, loadtest on core 1" \
        $u --scenario room --connections 15000 --rate 117 --duration "$TARGET_SECS" --drain-max 20
    start_aio
    run aio-rooms all-in-one "rooms: durable messages/s on SQLite" $u --scenario rooms --connections 10000 --rooms 1000 --rate 1000 --duration 10
    start_aio
    run aio-reconnect all-in-one "reconnect: mass drop and resume" $u --scenario reconnect --connections 2000 --rate 30 --duration 15
    stop_aio
fi

if [[ " $ONLY " == *" dist "* ]]; then
    cluster_env
    cluster_up 2
    run dist-idle distributed "idle, 2 gateways" --url "$gws" --server-pid "$pids" --scenario idle --connections 19000 --duration 10
    run dist-room-5k distributed "one room over 2 gateways" --url "$gws" --server-pid "$pids" --scenario room --connections 5000 --rate 117 --duration 20
    run dist-rooms distributed "rooms: durable messages/s on Postgres" --url "$gws" --server-pid "$pids" --scenario rooms --connections 10000 --rooms 1000 --rate 1000 --duration 10
    run dist-reconnect distributed "reconnect over 2 gateways" --url "$gws" --server-pid "$pids" --scenario reconnect --connections 2000 --rate 30 --duration 15
    run dist-lb distributed "one room through HAProxy" --url "http://127.0.0.1:8300" --server-pid "$pids" --scenario room --connections 4000 --rate 50 --duration 10
    "$root/deploy/local/cluster" down >/dev/null
fi

if [[ " $ONLY " == *" disttarget "* ]]; then
    # The origin's target through the distributed mode: three gateways,
    # NATS between them, Postgres underneath.
    cluster_env
    cluster_up 3
    run dist-target distributed "the target over 3 gateways: 15,000 in one room at 117 msg/s" \
        --url "$gws" --server-pid "$pids" --scenario room --connections 15000 --rate 117 \
        --duration "$TARGET_SECS" --drain-max 20
    "$root/deploy/local/cluster" down >/dev/null
fi

if [[ " $ONLY " == *" manyrooms "* ]]; then
    # The ceiling over many rooms: the highest rate whose run passes (nothing
    # lost, every send acked, 95% of the rate held), found by --find-max.
    MODES="${MANYROOMS_MODES:-aio dist}"
    many=(--scenario rooms --connections "${MANYROOMS_N:-10000}" --rooms "${MANYROOMS_ROOMS:-1000}"
        --rate "${MANYROOMS_RATE:-250}" --duration "${MANYROOMS_SECS:-10}" --drain-max 20
        --find-max --find-max-steps "${MANYROOMS_STEPS:-8}")
    what="many rooms: the highest rate held (--find-max)"
    if [[ " $MODES " == *" aio "* ]]; then
        start_aio
        RUN_TIMEOUT=3600 run aio-manyrooms all-in-one "$what" --url "http://127.0.0.1:$port" "${many[@]}"
        stop_aio
    fi
    if [[ " $MODES " == *" dist "* ]]; then
        cluster_env
        cluster_up 2
        RUN_TIMEOUT=3600 run dist-manyrooms distributed "$what" --url "$gws" --server-pid "$pids" "${many[@]}"
        "$root/deploy/local/cluster" down >/dev/null
    fi
fi

if [[ " $ONLY " == *" linger "* ]]; then
    # The batching knob: the wait of a busy room's events is F times a
    # pass's duration (--fanout-linger-factor; 3 by default).
    u="--url http://127.0.0.1:$port"
    for f in 3 2 1 0; do
        start_aio --fanout-linger-factor "$f"
        run "linger-2k-f$f" all-in-one "one room, server --fanout-linger-factor $f" \
            $u --scenario room --connections 2000 --rate 50 --duration 10
    done
    for f in 3 1; do
        start_aio --fanout-linger-factor "$f"
        run "linger-5k-f$f" all-in-one "one room, server --fanout-linger-factor $f" \
            $u --scenario room --connections 5000 --rate 117 --duration 20
        start_aio --fanout-linger-factor "$f"
        run "linger-15k-f$f" all-in-one "one room, server --fanout-linger-factor $f" \
            $u --scenario room --connections 15000 --rate 117 --duration 20 --drain-max 20
    done
    stop_aio
fi

if [[ " $ONLY " == *" dist100k "* ]]; then
    # 100,000 connections: six gateways (one process may hold 20,000 files
    # here), six loadtest worker processes.
    cluster_env
    export CHAT_DATABASE_URL="${CHAT_DATABASE_URL/max_connections=20/max_connections=30}"
    cluster_up 6
    run dist-idle-100k distributed "idle: 100,000 over 6 gateways" --url "$gws" --server-pid "$pids" \
        --scenario idle --connections 100000 --connect-concurrency 20 --connect-timeout 120 --duration 20
    "$root/deploy/local/cluster" down >/dev/null
fi

if [[ " $ONLY " == *" peers "* ]]; then
    echo "benchmarks: peers" >&2
    CHAT="$bin/chat" LOADTEST="$bin/loadtest" OUT="$OUT/peers" \
        N="${PEERS_N:-2000}" RATE="${PEERS_RATE:-50}" DURATION=10 \
        "$root/loadtest/peers/compare.sh" >"$OUT/peers.md" 2>"$OUT/peers.log" || true
    # And a load that separates them: 10,000 connections at the target's rate.
    CHAT="$bin/chat" LOADTEST="$bin/loadtest" OUT="$OUT/peers-heavy" \
        N="${PEERS_HEAVY_N:-10000}" RATE="${PEERS_HEAVY_RATE:-117}" DURATION=10 \
        "$root/loadtest/peers/compare.sh" >"$OUT/peers-heavy.md" 2>"$OUT/peers-heavy.log" || true
fi

# A partial run (ONLY=...) renders what is in $OUT, which may lack the other
# parts' rows: it writes a copy in $OUT unless UPDATE=1 says $OUT holds them.
if [ -z "${ONLY_GIVEN:-}" ] || [ "${UPDATE:-0}" = 1 ]; then
    python3 "$root/scripts/benchmarks_table.py" "$OUT" "$root/BENCHMARKS.md"
    echo "benchmarks: BENCHMARKS.md updated (runs in $OUT)" >&2
else
    cp "$root/BENCHMARKS.md" "$OUT/BENCHMARKS.md"
    python3 "$root/scripts/benchmarks_table.py" "$OUT" "$OUT/BENCHMARKS.md"
    echo "benchmarks: partial run rendered to $OUT/BENCHMARKS.md (UPDATE=1 writes BENCHMARKS.md from everything in $OUT)" >&2
fi
