# Sourced by each peer's start.sh: installs what is missing, then runs the
# server in the foreground with the limits a load run needs.
#
#   start.sh            install if missing, then serve on 127.0.0.1:$PORT
#   start.sh --install  install (or build) only
#
# PIDFILE, if set, gets the server's pid (it is also printed on stderr).
# Installs land in $PEERS_CACHE (default ~/.cache/chat-peers), never in
# the checkout.

set -euo pipefail

PEERS_CACHE=${PEERS_CACHE:-$HOME/.cache/chat-peers}
HOST=${HOST:-127.0.0.1}
INSTALL_ONLY=0
[ "${1:-}" = "--install" ] && INSTALL_ONLY=1

PEER=$(basename "$(cd "$(dirname "$0")" && pwd)")
say() { echo "$PEER: $*" >&2; }

# apt_need PKG...: installs the Debian packages that are not installed
# (as root; otherwise names them and fails).
apt_need() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        say "missing Debian packages: ${missing[*]} (install them as root)"
        exit 1
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; }
}

# go_build DIR: builds DIR/main.go (beside start.sh) into DIR/<peer>
# when missing or older than the source: GOPATH mode, offline, against
# the Go packages Debian installed in /usr/share/gocode.
go_build() {
    local dir=$1 src bin
    src=$(cd "$(dirname "$0")" && pwd)/main.go
    bin=$dir/$PEER
    if [ ! -x "$bin" ] || [ "$src" -nt "$bin" ]; then
        mkdir -p "$dir"
        say "building $bin"
        GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=$dir/go-build go build -o "$bin" "$src"
    fi
}

# serve CMD...: raises the open-file limit, records the pid and becomes
# the server (exec keeps the pid).
serve() {
    [ "$INSTALL_ONLY" = 1 ] && exit 0
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    [ -n "${PIDFILE:-}" ] && echo $$ >"$PIDFILE"
    say "pid $$ serving on $HOST:$PORT (open files: $(ulimit -n))"
    exec "$@"
}
