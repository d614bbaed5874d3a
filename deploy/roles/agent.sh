#!/usr/bin/env bash
# Install a kubelite agent on this machine, as root on Debian: the packages and
# the project into .venv first (deploy/install.sh), then the agent's systemd units.
#
#   deploy/roles/agent.sh --servers IP1,IP2,IP3 --token T --ca-file CA.crt
#                         [--iface NAME | --node-ip IP] [--node-name NAME]
#                         [--registry HOST:PORT] [--no-enable]
#
# Runs the kubelet and the proxy, which fail over between the servers. The kubelet
# joins with the token (once) and the cluster CA the first server printed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  esac
done
# shellcheck source=deploy/install.sh
. "$ROOT/deploy/install.sh"
kubelite_install
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m deploy.roles.install agent "$@"
