#!/usr/bin/env bash
# nginx with nchan (Debian's nginx-light and libnginx-mod-nchan), with
# nginx.conf in a private prefix under the cache dir.
. "$(dirname "$0")/../lib.sh"
PORT=${PORT:-7105}
DIR=$PEERS_CACHE/nchan/$PORT
HERE=$(cd "$(dirname "$0")" && pwd)

apt_need nginx-light libnginx-mod-nchan
mkdir -p "$DIR/body"
sed -e "s|@HOST@|$HOST|g" -e "s|@PORT@|$PORT|g" -e "s|@PREFIX@|$DIR|g" \
    "$HERE/nginx.conf" >"$DIR/nginx.conf"
nginx -t -q -p "$DIR" -c "$DIR/nginx.conf" -g 'daemon off;'
serve nginx -p "$DIR" -c "$DIR/nginx.conf" -g 'daemon off;'
