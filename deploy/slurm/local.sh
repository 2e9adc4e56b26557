#!/usr/bin/env bash
# A one-node SLURM on this machine (munged, slurmctld, slurmd) from deploy/slurm/slurm.conf: for the tests and for
# trying `search submit` without a cluster. Prints nothing but errors; its state, logs and the filled-in slurm.conf
# go to $SEARCH_SLURM_DIR (default /tmp/search-slurm). Clients find it through SLURM_CONF=$SEARCH_SLURM_DIR/slurm.conf.
#   deploy/slurm/local.sh start [--install]   start it (--install: apt-get slurm-wlm and munge first if missing)
#   deploy/slurm/local.sh stop
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${SEARCH_SLURM_DIR:-/tmp/search-slurm}"
conf="$state/slurm.conf"
export SLURM_CONF="$conf"

running() { [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
up() { running slurmctld && timeout 10 scontrol ping 2>/dev/null | grep -q "is UP"; }

stop() {
    for daemon in slurmd slurmctld; do
        if [ -f "$state/$daemon.pid" ]; then kill "$(cat "$state/$daemon.pid")" 2>/dev/null || true; fi
    done
}

start() {
    if [ "${1:-}" = "--install" ] && ! command -v slurmctld >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null
    fi
    command -v slurmctld >/dev/null || { echo "slurmctld is not installed (apt-get install slurm-wlm munge)" >&2; exit 1; }
    # munge's client waits for a daemon that is not there: ask it only when its socket exists.
    if ! { [ -S /run/munge/munge.socket.2 ] && timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        [ -s /etc/munge/munge.key ] || { mungekey --create --force 2>/dev/null || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
        runuser -u munge -- /usr/sbin/munged
    fi
    if up; then return; fi
    mkdir -p "$state/ctld" "$state/d"
    host="$(hostname -s)"
    memory="$(awk '/MemTotal/ {print int($2 / 1024) - 1024}' /proc/meminfo)"
    sed -e "s|@HOST@|$host|g" -e "s|@CPUS@|$(nproc)|g" -e "s|@MEMORY@|$memory|g" -e "s|@STATE@|$state|g" \
        -e "s|@USER@|$(id -un)|g" -e "s|@CTLD_PORT@|${SEARCH_SLURMCTLD_PORT:-6817}|g" \
        -e "s|@D_PORT@|${SEARCH_SLURMD_PORT:-6818}|g" "$here/slurm.conf" > "$conf"
    # -c: no job of an earlier run comes back (their folders are gone); this SLURM is for one run of the tests.
    running slurmctld || slurmctld -c -f "$conf"
    running slurmd || slurmd -f "$conf"
    for _ in $(seq 60); do
        if up && sinfo -h -o %t 2>/dev/null | grep -qE "^(idle|mix|alloc)"; then return; fi
        sleep 0.5
    done
    echo "the local SLURM did not come up; see $state/slurmctld.log and $state/slurmd.log" >&2
    exit 1
}

case "${1:-start}" in
    start) start "${2:-}" ;;
    stop) stop ;;
    *) echo "usage: $0 start [--install] | stop" >&2; exit 2 ;;
esac
