#!/usr/bin/env bash
# Start or stop a private Docker engine (its own data root, exec root, pidfile and socket) so
# tests and CI never touch a system engine. Stop is by the recorded PID only.
#
#   docker/dockerd.sh start [STATE_DIR]   # prints: export DOCKER_HOST=unix://STATE_DIR/docker.sock
#   docker/dockerd.sh stop  [STATE_DIR]
#   docker/dockerd.sh status [STATE_DIR]
#
# STATE_DIR defaults to $EDGEBED_DOCKER_STATE, else $EDGEBED_CACHE_DIR/docker, else
# .edgebed/cache/docker under the repository (gitignored). Images persist in STATE_DIR/data
# between runs, which is what makes a second build fast.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cmd="${1:-}"
state="${2:-${EDGEBED_DOCKER_STATE:-${EDGEBED_CACHE_DIR:-$repo_root/.edgebed/cache}/docker}}"
sock="$state/docker.sock"
pidfile="$state/dockerd.pid"
log="$state/dockerd.log"
start_timeout_s="${EDGEBED_DOCKERD_START_TIMEOUT_S:-60}"
stop_timeout_s="${EDGEBED_DOCKERD_STOP_TIMEOUT_S:-30}"

running_pid() {
    [[ -f "$pidfile" ]] || return 1
    local pid
    pid="$(cat "$pidfile")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

case "$cmd" in
start)
    if [[ $(id -u) -ne 0 ]]; then
        echo "dockerd.sh: a Docker engine needs root" >&2
        exit 2
    fi
    command -v dockerd >/dev/null || { echo "dockerd.sh: dockerd not found (apt-get install docker.io)" >&2; exit 2; }
    mkdir -p "$state/data" "$state/exec"
    if pid="$(running_pid)"; then
        echo "export DOCKER_HOST=unix://$sock"
        exit 0
    fi
    # dockerd sets the FORWARD policy to DROP and turns on IP forwarding; remember both so
    # `stop` gives the host back as it was (other tests route between network namespaces).
    if command -v iptables >/dev/null; then
        iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}' >"$state/forward-policy" || true
    fi
    cat /proc/sys/net/ipv4/ip_forward >"$state/ip-forward" 2>/dev/null || true
    # One private engine at a time: it owns the docker0 bridge and its iptables chains.
    # containerd is started by dockerd itself (managed), under the exec root.
    setsid dockerd \
        --data-root "$state/data" \
        --exec-root "$state/exec" \
        --pidfile "$pidfile" \
        --host "unix://$sock" \
        --storage-driver "${EDGEBED_DOCKER_STORAGE_DRIVER:-overlay2}" \
        ${EDGEBED_DOCKERD_ARGS:-} \
        >"$log" 2>&1 </dev/null &
    deadline=$(( $(date +%s) + start_timeout_s ))
    until DOCKER_HOST="unix://$sock" docker version --format '{{.Server.Version}}' >/dev/null 2>&1; do
        if (( $(date +%s) > deadline )); then
            echo "dockerd.sh: engine did not answer within ${start_timeout_s}s; last log lines:" >&2
            tail -n 20 "$log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "export DOCKER_HOST=unix://$sock"
    ;;
stop)
    if ! pid="$(running_pid)"; then
        echo "dockerd.sh: no engine running for $state" >&2
        exit 0
    fi
    kill -TERM "$pid"
    deadline=$(( $(date +%s) + stop_timeout_s ))
    while kill -0 "$pid" 2>/dev/null; do
        if (( $(date +%s) > deadline )); then
            echo "dockerd.sh: engine $pid still up after ${stop_timeout_s}s, sending KILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
    rm -f "$pidfile"
    if [[ -s "$state/forward-policy" ]] && command -v iptables >/dev/null; then
        iptables -P FORWARD "$(cat "$state/forward-policy")" || true
    fi
    if [[ -s "$state/ip-forward" ]]; then
        cat "$state/ip-forward" >/proc/sys/net/ipv4/ip_forward 2>/dev/null || true
    fi
    rm -f "$state/forward-policy" "$state/ip-forward"
    ;;
status)
    if pid="$(running_pid)"; then
        echo "running pid=$pid socket=unix://$sock"
    else
        echo "stopped ($state)"
        exit 1
    fi
    ;;
*)
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
