#!/usr/bin/env bash
# Socket.IO 4 (npm socket.io, installed into the cache dir) on Node.js.
. "$(dirname "$0")/../lib.sh"
PORT=${PORT:-7102}
DIR=$PEERS_CACHE/socketio
HERE=$(cd "$(dirname "$0")" && pwd)

command -v node >/dev/null || apt_need nodejs npm
if [ ! -d "$DIR/node_modules/socket.io" ]; then
    mkdir -p "$DIR"
    say "npm install socket.io@4 into $DIR"
    npm install --prefix "$DIR" --no-audit --no-fund --omit=dev socket.io@4 >&2
fi
export NODE_PATH=$DIR/node_modules HOST PORT
serve node "$HERE/server.js"
