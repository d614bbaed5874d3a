#!/usr/bin/env bash
# Install a kubelite server on this machine, as root on Debian: the packages and
# the project into .venv first (deploy/install.sh), then the server's systemd units.
#
#   deploy/roles/server.sh [--iface NAME | --node-ip IP] [--servers IP1,IP2,IP3]
#                          [--token T --ca-dir DIR] [--registry] [--state-dir DIR]
#                          [--unit-dir DIR] [--no-enable]
#
# One server: no --servers. Three: run it on each, with the same --servers list.
# The first of the list creates the cluster CA and the etcd CA and prints a join
# token; give the other two the token and a copy of its CA files (--ca-dir), and
# every agent the token and its ca.crt.
# Runs etcd, the API server, the controller manager, the scheduler and DNS.
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
exec "$ROOT/.venv/bin/python" -m deploy.roles.install server "$@"
