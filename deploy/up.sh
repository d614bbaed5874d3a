#!/usr/bin/env bash
# Bring up a kubelite cluster on this machine, as root on Debian.
#
#   deploy/up.sh [--nodes N] [--name NAME] [--demo]
#                [--node-grace-period S] [--pod-eviction-timeout S]
#
# Installs what is missing (Debian packages, the project into .venv), creates
# the cluster's CA and certificates (once), starts the cluster's components
# under a supervisor, each with its own certificate, nodes joining with a
# bootstrap token, waits until they answer, and writes the client config (the
# admin's) so that .venv/bin/kctl works with no flags.
# Running it again on a running cluster reports it.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=kubelite
NODES=3
DEMO=0
EXTRA=()

usage() {
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=${2:?--nodes needs a number}; shift 2 ;;
    --nodes=*) NODES=${1#*=}; shift ;;
    --name) NAME=${2:?--name needs a name}; shift 2 ;;
    --name=*) NAME=${1#*=}; shift ;;
    --demo) DEMO=1; shift ;;
    --node-grace-period|--pod-eviction-timeout)
      EXTRA+=("$1" "${2:?$1 needs a number of seconds}"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "deploy/up.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$NODES" in
  ''|*[!0-9]*) echo "deploy/up.sh: --nodes must be a whole number, got '$NODES'" >&2; exit 2 ;;
esac

# shellcheck source=deploy/install.sh
. "$ROOT/deploy/install.sh"
kubelite_install

cd "$ROOT"
args=(up --name "$NAME" --nodes "$NODES" "${EXTRA[@]}")
[ "$DEMO" = 1 ] && args+=(--demo)
exec "$ROOT/.venv/bin/python" -m deploy.cluster "${args[@]}"
