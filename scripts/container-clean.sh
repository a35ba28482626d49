#!/usr/bin/env bash
# Removes what the container tests (tests/container.rs) left behind when a
# run was killed before its guards ran: every container and network with the
# label deep-sched.test. The images are kept (they are the cache).
set -euo pipefail
containers=$(docker ps -aq --filter label=deep-sched.test)
[[ -n "$containers" ]] && docker rm -f -v $containers >/dev/null
networks=$(docker network ls -q --filter label=deep-sched.test)
[[ -n "$networks" ]] && docker network rm $networks >/dev/null
echo "container-clean.sh: removed $(echo $containers | wc -w) containers, $(echo $networks | wc -w) networks"
