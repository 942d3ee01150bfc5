#!/usr/bin/env bash
# The comparison with nats-server and mosquitto in one command: installs the peers from
# Debian packages when they are absent, builds the agent, runs every workload PEERS_REPS
# times (default 3) and writes benches/results/peers.json and peers.svg.
#
#   benches/compare.sh                       the default run (about 3 minutes)
#   PEERS_REPS=5 PEERS_MSGS=2000000 benches/compare.sh
#   PEERS_ONLY=daemoneye benches/compare.sh  the agent alone (nats-server / mosquitto: add them)
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
if [ ${#missing[@]} -gt 0 ]; then
    echo "compare: installing ${missing[*]}"
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
# mosquitto's package starts a system instance on port 1883; the bench runs its own.
cargo build --release --locked -p daemoneye-io --bin daemoneye-agent
cargo bench --locked -p daemoneye-benches --bench peers
