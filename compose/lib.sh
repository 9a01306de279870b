# Shared by up.sh and down.sh (sourced).
# shellcheck shell=bash

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-mesh}

# docker-compose (v1) if installed, else the compose plugin (v2).
compose() {
    if command -v docker-compose >/dev/null 2>&1; then
        docker-compose "${files[@]}" "$@"
    elif docker compose version >/dev/null 2>&1; then
        docker compose "${files[@]}" "$@"
    else
        echo "neither docker-compose nor docker compose found (apt-get install docker-compose)" >&2
        return 1
    fi
}

files=(-f "$here/docker-compose.yml")
