#!/usr/bin/env bash
# A Centrifuge node (main.go), built offline in GOPATH mode from Debian's
# golang-github-centrifugal-centrifuge-dev.
. "$(dirname "$0")/../lib.sh"
PORT=${PORT:-7104}
DIR=$PEERS_CACHE/centrifuge

# The -dev package lacks dependencies that its code imports; name them.
apt_need golang-go golang-github-centrifugal-centrifuge-dev golang-github-centrifugal-protocol-dev \
    golang-github-fzambia-eagle-dev golang-github-igm-sockjs-go-dev golang-github-mna-redisc-dev
go_build "$DIR"
serve "$DIR/centrifuge" -addr "$HOST:$PORT"
