#!/bin/bash
# Entrypoint of a mesh node container: runs `mesh daemon` and, the first time, makes the node
# part of the cluster:
# - MESH_BOOTSTRAP=init: `mesh init`, then writes the join tokens and its address to /shared;
# - MESH_BOOTSTRAP=worker|manager: waits for the tokens in /shared, then `mesh join`s.
# A node whose state dir (/var/lib/mesh, a volume) already holds a cluster only runs its daemon:
# it comes back with the same identity and its tasks.
#   entrypoint.sh            run the node (PID 1)
#   entrypoint.sh health     the healthcheck: exit 0 once the node is in the cluster
set -euo pipefail

STATE_DIR=/var/lib/mesh
SHARED=/shared
READY=/run/mesh/ready
: "${MESH_BOOTSTRAP:=worker}"
: "${MESH_ADVERTISE_ADDR:=}"
: "${MESH_JOIN_TIMEOUT:=120}"

log() { echo "entrypoint: $*" >&2; }

# Whether the daemon answers and this node is in a cluster. (The output is read whole: with
# `grep -q` in a pipe, mesh could be cut off by SIGPIPE and pipefail would call that a failure.)
in_cluster() {
    local info
    info=$(mesh info 2>/dev/null) && grep -q '^Node ID:' <<<"$info"
}

if [ "${1:-}" = health ]; then
    [ -e "$READY" ] && in_cluster
    exit
fi

# Docker mounts /proc/sys read-only unless the container is privileged (which this engine
# cannot start); mesh sets ip_forward, rp_filter and route_localnet. CAP_SYS_ADMIN allows this.
if ! mount -o remount,rw /proc/sys 2>/dev/null; then
    log "cannot remount /proc/sys read-write: the container needs cap_add SYS_ADMIN and NET_ADMIN"
    exit 1
fi

# Task namespaces are bind-mounted under /run/netns; /run is a tmpfs, so a restarted
# container starts like a rebooted host.
mkdir -p /run/mesh /run/netns "$STATE_DIR"
rm -f "$READY"

# `mesh info` answers once the daemon's socket is up; deadline in seconds.
wait_daemon() {
    local deadline=$((SECONDS + $1))
    until mesh info >/dev/null 2>&1; do
        if ! kill -0 "$daemon" 2>/dev/null; then
            log "mesh daemon exited"
            wait "$daemon" || true
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "mesh daemon did not answer within $1 s"
            exit 1
        fi
        sleep 0.2
    done
}

mesh daemon --state-dir "$STATE_DIR" "$@" &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null || true' TERM INT
wait_daemon 60

# The join tokens and this node's address for the others, written under temporary names and
# renamed, so a joiner never reads half a file.
write_tokens() {
    mkdir -p "$SHARED"
    mesh join-token worker -q >"$SHARED/.worker.token" &&
        mesh join-token manager -q >"$SHARED/.manager.token" &&
        echo "${MESH_ADVERTISE_ADDR:-$(hostname -i | cut -d' ' -f1)}" >"$SHARED/.manager.addr" || return
    for f in worker.token manager.token manager.addr; do mv -f "$SHARED/.$f" "$SHARED/$f"; done
}

if in_cluster; then
    log "state dir holds a cluster: running the daemon only"
    # Stopped between `mesh init` and handing out the tokens: hand them out now.
    if [ "$MESH_BOOTSTRAP" = init ] && [ ! -s "$SHARED/worker.token" ]; then
        write_tokens || log "cannot write the join tokens yet"
    fi
else
    addr_flag=()
    [ -n "$MESH_ADVERTISE_ADDR" ] && addr_flag=(--advertise-addr "$MESH_ADVERTISE_ADDR")
    case "$MESH_BOOTSTRAP" in
    init)
        log "creating the cluster"
        mesh init "${addr_flag[@]}"
        write_tokens
        ;;
    worker | manager)
        deadline=$((SECONDS + MESH_JOIN_TIMEOUT))
        until [ -s "$SHARED/$MESH_BOOTSTRAP.token" ] && [ -s "$SHARED/manager.addr" ]; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                log "no join token in $SHARED after ${MESH_JOIN_TIMEOUT} s"
                exit 1
            fi
            sleep 0.2
        done
        manager=$(cat "$SHARED/manager.addr")
        log "joining $manager as a $MESH_BOOTSTRAP"
        # The first manager may still be electing itself: retry until the deadline.
        until mesh join --token "$(cat "$SHARED/$MESH_BOOTSTRAP.token")" "${addr_flag[@]}" "$manager"; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                log "could not join $manager within ${MESH_JOIN_TIMEOUT} s"
                exit 1
            fi
            sleep 1
        done
        ;;
    *)
        log "MESH_BOOTSTRAP must be init, worker or manager, not $MESH_BOOTSTRAP"
        exit 1
        ;;
    esac
fi

touch "$READY"
log "ready"
# Until the daemon exits; a TERM interrupts `wait`, is passed on, then waited for again.
status=0
while kill -0 "$daemon" 2>/dev/null; do
    wait "$daemon" || status=$?
done
exit "$status"
