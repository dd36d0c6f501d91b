#!/usr/bin/env bash
# The chaos harness: a many-room load through the distributed stack while,
# one fault at a time, a part of it crashes, restarts or is cut off; then,
# per fault, what the clients saw. Writes the table to RELIABILITY.md.
#
#   loadtest/chaos.sh [--out FILE] [--faults "gateway-kill room-kill ..."]
#                     [--connections N] [--rooms N] [--rate R] [--duration S]
#
# The stack (deploy/local/cluster, state in $CHAOS_DIR, default
# /tmp/chat-chaos): 2 gateways behind HAProxy, 2 room and 2 auth replicas,
# and private, authenticated PostgreSQL, Redis and NATS of its own (so the
# faults touch nothing else on the machine). gateway-1 reaches NATS through
# a TCP proxy the harness can pause.
#
# Per fault, one `loadtest --scenario rooms` run through the load balancer
# (every connection reconnects and resumes with since_seq after a close,
# resending unacked messages with their client_msg_id) and, beside it, one
# `loadtest revoke` run whose users log out ~1 s into the fault. The fault
# starts 5 s into the sending:
#   gateway-kill   kill -9 gateway-2; started again 5 s later
#   room-kill      kill -9 room-1; started again at once
#   auth-kill      kill -9 auth-1; started again at once
#   nats-restart   kill -9 NATS; started again 3 s later
#   redis-restart  kill -9 Redis (it keeps nothing: a flush); started again 3 s later
#   postgres-restart  PostgreSQL immediate shutdown (SIGQUIT, a crash); started again 3 s later
#   nats-cut       gateway-1's link to NATS paused for 10 s (SIGSTOP of its proxy)
#
# Exit status: 0 when every fault passed (0 acked messages lost, 0 duplicated,
# 0 out of order, every connection back, 0 revoked sockets open), 1 otherwise.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/chat-target}"

out="$root/RELIABILITY.md"
faults="gateway-kill room-kill auth-kill nats-restart redis-restart postgres-restart nats-cut"
connections=300 rooms=10 rate=50 duration=25
while [ $# -gt 0 ]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --faults) faults=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --rooms) rooms=$2; shift 2 ;;
        --rate) rate=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        *) echo "chaos: unknown option $1" >&2; exit 2 ;;
    esac
done

export CHAT_CLUSTER_DIR="${CHAOS_DIR:-/tmp/chat-chaos}"
export CHAT_CLUSTER_BASE_PORT="${CHAOS_BASE_PORT:-17100}"
lb_port="${CHAOS_PORT:-8100}"
base=$CHAT_CLUSTER_BASE_PORT
nats_port=$((base + 90)) proxy_port=$((base + 91)) redis_port=$((base + 92))
cluster="$root/deploy/local/cluster"
results="$CHAT_CLUSTER_DIR/results"

say() { printf '\n==> %s\n' "$*" >&2; }

say "building (release)"
(cd "$root" && cargo build --release -q -p chat --bins -p loadtest)
bin="$CARGO_TARGET_DIR/release"
export CHAT_BIN_DIR="$bin"

"$cluster" down >/dev/null 2>&1 || true
rm -rf "$CHAT_CLUSTER_DIR"
mkdir -p "$results"
trap '"$cluster" down >/dev/null 2>&1 || true' EXIT

secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
nats_pw=$(secret) redis_pw=$(secret)

say "private NATS, Redis (authenticated) and the NATS proxy of gateway-1"
"$cluster" run nats nats-server -a 127.0.0.1 -p "$nats_port" --user chat --pass "$nats_pw"
"$cluster" run redis redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
    --maxmemory 256mb --maxmemory-policy volatile-lru --requirepass "$redis_pw"
cat >"$CHAT_CLUSTER_DIR/nats-proxy.cfg" <<CFG
global
    maxconn 1000
defaults
    mode tcp
    timeout connect 2s
    timeout client 1h
    timeout server 1h
listen nats
    bind 127.0.0.1:$proxy_port
    server nats 127.0.0.1:$nats_port
CFG
"$cluster" run nats-proxy haproxy -db -f "$CHAT_CLUSTER_DIR/nats-proxy.cfg"

export CHAT_NATS_URL="nats://chat:$nats_pw@127.0.0.1:$nats_port"
export CHAT_NATS_URL_GATEWAY_1="nats://chat:$nats_pw@127.0.0.1:$proxy_port"
export CHAT_REDIS_URL="redis://:$redis_pw@127.0.0.1:$redis_port"
export CHAT_SUBJECT_PREFIX=chaos CHAT_KEY_PREFIX=chaos
# Setup speed, not a weaker server: signups are fast and not limited per
# address (every fault's run signs up its own users from loopback).
export CHAT_ARGON2_MEMORY_KIB=256 CHAT_ARGON2_ITERATIONS=1 CHAT_SIGNUP_LIMIT=0
export RUST_LOG="${RUST_LOG:-warn}"

say "cluster up: 2 gateways, 2 room, 2 auth, private PostgreSQL"
CHAT_CLUSTER_PORT=$lb_port "$cluster" up --gateways 2 --rooms 2 --auths 2 --own-postgres >/dev/null
"$cluster" status >&2
url="http://127.0.0.1:$lb_port"

inject() { # fault
    case $1 in
        gateway-kill) "$cluster" kill gateway-2 KILL; sleep 5; "$cluster" restart gateway-2 ;;
        room-kill) "$cluster" kill room-1 KILL; "$cluster" restart room-1 ;;
        auth-kill) "$cluster" kill auth-1 KILL; "$cluster" restart auth-1 ;;
        nats-restart) "$cluster" kill nats KILL; sleep 3; "$cluster" restart nats ;;
        redis-restart) "$cluster" kill redis KILL; sleep 3; "$cluster" restart redis ;;
        postgres-restart) "$cluster" kill postgres QUIT; sleep 3; "$cluster" restart postgres ;;
        nats-cut)
            local pid; pid=$(cat "$CHAT_CLUSTER_DIR/nats-proxy.pid")
            kill -STOP "$pid"; echo "nats-proxy: paused"; sleep 10
            kill -CONT "$pid"; echo "nats-proxy: resumed" ;;
        *) echo "chaos: unknown fault $1" >&2; return 2 ;;
    esac
}

# Waits until the run's progress shows sending (or it ended).
wait_sending() { # log pid
    for _ in $(seq 1 600); do
        grep -q ' sent [0-9]' "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

stamp=$(date +%s | tail -c 6) i=0
for f in $faults; do
    i=$((i + 1))
    say "fault: $f"
    log="$results/$f.log"
    "$bin/loadtest" --url "$url" --scenario rooms --connections "$connections" --rooms "$rooms" \
        --rate "$rate" --duration "$duration" --drain 10 --drain-max 60 --run-id "c$stamp$i" \
        --json "$results/$f.json" --allow-loss >"$results/$f.table" 2>"$log" &
    lt=$!
    wait_sending "$log" $lt || { echo "chaos: the $f run did not start sending (log: $log)" >&2; }
    "$bin/loadtest" revoke --url "$url" --users 20 --logout-after 6 --watch 15 --run-id "r$stamp$i" \
        --json "$results/$f.revoke.json" >"$results/$f.revoke.log" 2>&1 &
    rv=$!
    sleep 5
    started=$(date +%s.%N)
    inject "$f" >"$results/$f.fault.log" 2>&1 || echo "chaos: injecting $f failed (see $results/$f.fault.log)" >&2
    ended=$(date +%s.%N)
    echo "$started $ended" >"$results/$f.when"
    wait $lt || true
    wait $rv || true
    # Anything the fault left down is back before the next one.
    for name in gateway-2 room-1 auth-1 nats redis postgres; do
        "$cluster" status | grep -q "^$name .*running" || "$cluster" restart "$name" >/dev/null
    done
done

say "writing $out"
python3 "$here/chaos_report.py" "$results" "$out" "$faults" \
    "loadtest/chaos.sh --connections $connections --rooms $rooms --rate $rate --duration $duration"
