#!/usr/bin/env bash
# Removes what the container tests (tests/container.rs) left behind when a
# run was killed before its guards ran: every container and network with the
# label deep-sched.test, and the compose projects dst-compose-* (containers,
# networks and their image tags deep-sched/nginx:dst-compose-*). The other
# images are kept (they are the cache).
set -euo pipefail
containers=$(docker ps -aq --filter label=deep-sched.test)
[[ -n "$containers" ]] && docker rm -f -v $containers >/dev/null
networks=$(docker network ls -q --filter label=deep-sched.test)
[[ -n "$networks" ]] && docker network rm $networks >/dev/null
project='{{.ID}} {{.Label "com.docker.compose.project"}}'
composed=$(docker ps -a --filter label=com.docker.compose.project --format "$project" |
    awk '$2 ~ /^dst-compose-/ { print $1 }')
[[ -n "$composed" ]] && docker rm -f -v $composed >/dev/null
cnets=$(docker network ls --filter label=com.docker.compose.project --format "$project" |
    awk '$2 ~ /^dst-compose-/ { print $1 }')
[[ -n "$cnets" ]] && docker network rm $cnets >/dev/null
tags=$(docker image ls --format '{{.Repository}}:{{.Tag}}' deep-sched/nginx | grep ':dst-compose-' || true)
[[ -n "$tags" ]] && docker rmi $tags >/dev/null
echo "container-clean.sh: removed $(echo $containers $composed | wc -w) containers," \
    "$(echo $networks $cnets | wc -w) networks, $(echo $tags | wc -w) image tags"
