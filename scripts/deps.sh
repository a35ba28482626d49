#!/usr/bin/env bash
# Installs the system packages deep_sched's build, tests and lab need on a
# Debian machine (as root, or with sudo), skipping what is already there.
#   libclang-dev            bindgen, for nginx-sys
#   libpcre2-dev libssl-dev zlib1g-dev   nginx's own build
#   wrk                     scripts/bench-overhead.sh
#   python3-venv            scripts/bench-learner.sh (scikit-learn baseline)
#   debootstrap             scripts/container-base.sh (the base image)
#   nginx nginx-dev         scripts/build.sh --system (Debian's nginx)
#   libfontconfig1-dev fonts-dejavu-core   the lab's plots (plotters, ttf)
#   openssl                 the TLS upstream test makes a certificate
set -euo pipefail
want=(libclang-dev libpcre2-dev libssl-dev zlib1g-dev pkg-config make gcc wrk python3-venv
      debootstrap nginx nginx-dev procps curl libfontconfig1-dev fonts-dejavu-core openssl)
# The schema tests validate with Python's reference jsonschema implementation
# (for the python3 on PATH, which may not be Debian's).
if ! python3 -c 'import jsonschema' >/dev/null 2>&1; then
    echo "deps.sh: installing the jsonschema Python package"
    python3 -m pip install --quiet jsonschema || pip3 install --quiet jsonschema
fi
# tests/prometheus.rs parses the status page with the Prometheus project's
# own Python parser.
if ! python3 -c 'import prometheus_client.parser' >/dev/null 2>&1; then
    echo "deps.sh: installing the prometheus_client Python package"
    python3 -m pip install --quiet prometheus_client || pip3 install --quiet prometheus_client
fi
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
echo "deps.sh: installing ${missing[*]}"
sudo=()
[[ $(id -u) -ne 0 ]] && sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
# The packaged nginx must not keep port 80 busy on the test machine.
"${sudo[@]}" env RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if command -v systemctl >/dev/null 2>&1; then
    "${sudo[@]}" systemctl stop nginx >/dev/null 2>&1 || true
fi
"${sudo[@]}" pkill -x nginx -U 0 >/dev/null 2>&1 || true
