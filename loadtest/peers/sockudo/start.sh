#!/usr/bin/env bash
# Sockudo (crates.io sockudo: the Pusher protocol), installed with
# `cargo install --locked` into the cache dir (a long compile the first
# time), with config.json: one app whose key and secret are loadtest's
# --pusher-key/--pusher-secret defaults, client events on, the rate
# limiter off and the connection caps (server and app) at 100,000.
. "$(dirname "$0")/../lib.sh"
PORT=${PORT:-7103}
DIR=$PEERS_CACHE/sockudo
HERE=$(cd "$(dirname "$0")" && pwd)

if [ ! -x "$DIR/bin/sockudo" ]; then
    say "cargo install --locked sockudo into $DIR (takes a while)"
    nice -n 19 cargo install --locked sockudo --root "$DIR" >&2
fi
# HOST and PORT override the config file's.
export HOST PORT
cd "$DIR"
serve "$DIR/bin/sockudo" --config "$HERE/config.json"
