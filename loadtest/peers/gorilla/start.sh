#!/usr/bin/env bash
# gorilla/websocket broadcast hub (main.go), built offline in GOPATH mode
# from Debian's golang-go and golang-github-gorilla-websocket-dev.
. "$(dirname "$0")/../lib.sh"
PORT=${PORT:-7101}
DIR=$PEERS_CACHE/gorilla

apt_need golang-go golang-github-gorilla-websocket-dev
go_build "$DIR"
serve "$DIR/gorilla" -addr "$HOST:$PORT"
