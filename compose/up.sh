#!/usr/bin/env bash
# Builds what is missing and starts a mesh cluster of containers (docker-compose.yml), then
# waits until every node is ready and a demo service answers on every node. Run as root (or
# as a user of the docker group).
#   compose/up.sh                 # node1 manager, node2 and node3 workers
#   compose/up.sh --managers 3    # three managers (adds docker-compose.managers.yml)
#   compose/up.sh --no-demo       # no demo service
# Environment: COMPOSE_PROJECT_NAME (mesh), MESH_BIN (binary to put in the image; default
# target/release/mesh, built if missing), MESH_IMAGE, MESH_BASE_IMAGE, MESH_NET_PREFIX (see
# docker-compose.yml), MESH_UP_TIMEOUT (seconds to wait for the cluster, 120).
# Stop and remove everything: compose/down.sh
set -euo pipefail
source "$(dirname "$0")/lib.sh"

managers=1
demo=1
timeout=${MESH_UP_TIMEOUT:-120}
while [ $# -gt 0 ]; do
    case "$1" in
    --managers) managers=$2; shift 2 ;;
    --no-demo) demo=0; shift ;;
    *) echo "usage: $0 [--managers 1|3] [--no-demo]" >&2; exit 2 ;;
    esac
done
case "$managers" in
1) ;;
3) files+=(-f "$here/docker-compose.managers.yml") ;;
*) echo "up: --managers is 1 or 3" >&2; exit 2 ;;
esac
export MESH_IMAGE=${MESH_IMAGE:-mesh-node:local}
export MESH_BASE_IMAGE=${MESH_BASE_IMAGE:-mesh-base:bookworm}
export MESH_NET_PREFIX=${MESH_NET_PREFIX:-172.29.77}
nodes=(node1 node2 node3)

"$here/base-image.sh" "$MESH_BASE_IMAGE"

bin=${MESH_BIN:-$root/target/release/mesh}
if [ ! -x "$bin" ]; then
    if [ -n "${MESH_BIN:-}" ]; then
        echo "up: MESH_BIN=$bin is not an executable" >&2
        exit 1
    fi
    echo "up: building $bin (cargo build --release: several minutes on two cores)" >&2
    (cd "$root" && cargo build --release --locked -p mesh-node)
fi
# The image's build context is this directory: stage the binary in bin/ (a hard link when
# possible, so nothing is copied).
mkdir -p "$here/bin"
if ! cmp -s "$bin" "$here/bin/mesh"; then
    rm -f "$here/bin/mesh"
    ln "$bin" "$here/bin/mesh" 2>/dev/null || cp "$bin" "$here/bin/mesh"
fi

start=$SECONDS
compose build -q node1
# Returns once node1 is healthy (the others depend on it).
compose up -d

deadline=$((SECONDS + timeout))
# One line per node: NAME HEALTH.
health() {
    local n
    for n in "${nodes[@]}"; do
        echo "$n $(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$n")" 2>/dev/null)"
    done
}
# (Outputs are read whole before grep: with `grep -q` in a pipe, pipefail could count the
# writer's SIGPIPE as a failure.)
until ! grep -qv ' healthy$' <<<"$(health)"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "up: nodes not healthy after ${timeout} s:" >&2
        health >&2
        compose ps >&2
        compose logs --tail 30 >&2
        exit 1
    fi
    sleep 0.5
done
until [ "$(compose exec -T node1 mesh node ls 2>/dev/null | grep -c ' ready ')" -eq "${#nodes[@]}" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "up: not every node is ready after ${timeout} s:" >&2
        compose exec -T node1 mesh node ls >&2 || true
        exit 1
    fi
    sleep 0.5
done
compose exec -T node1 mesh node ls
echo "up: ${#nodes[@]} nodes ready in $((SECONDS - start)) s"

if [ "$demo" = 1 ]; then
    if ! grep -qw whoami <<<"$(compose exec -T node1 mesh service ls)"; then
        grep -qw demo <<<"$(compose exec -T node1 mesh network ls)" ||
            compose exec -T node1 mesh network create demo >/dev/null
        compose exec -T node1 mesh service create --name whoami --replicas 3 --network demo \
            --publish published=8080,target=80 -- mesh whoami --port 80 >/dev/null
    fi
    for i in 11 12 13; do
        until curl -fsS --max-time 2 "http://$MESH_NET_PREFIX.$i:8080/" >/dev/null 2>&1; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                echo "up: the demo service does not answer on $MESH_NET_PREFIX.$i:8080" >&2
                compose exec -T node1 mesh service ps whoami >&2 || true
                exit 1
            fi
            sleep 0.5
        done
    done
    compose exec -T node1 mesh service ps whoami
    echo "up: whoami answers on $MESH_NET_PREFIX.11, .12 and .13 port 8080, e.g."
    echo "    curl http://$MESH_NET_PREFIX.12:8080/"
fi
cat <<USAGE
Commands on a node:
    docker-compose -p $COMPOSE_PROJECT_NAME -f $here/docker-compose.yml exec node1 mesh node ls
Remove everything: $here/down.sh
USAGE
