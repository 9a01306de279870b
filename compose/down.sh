#!/usr/bin/env bash
# Removes the cluster up.sh started: containers, network and volumes (node state included).
# Images stay (docker rmi mesh-node:local mesh-base:bookworm to remove them).
#   compose/down.sh     (COMPOSE_PROJECT_NAME as for up.sh, default mesh)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
files+=(-f "$here/docker-compose.managers.yml")
compose down --volumes --remove-orphans --timeout 10
