#!/usr/bin/env bash
# Stop a kubelite cluster on this machine and remove what it made on the host.
#
#   deploy/down.sh [--name NAME] [--purge]
#
# --purge also deletes the cluster's state (etcd data, logs, its CA and every
# certificate and join token) and its client config context.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
args=(down)
while [ $# -gt 0 ]; do
  case "$1" in
    --name) args+=(--name "${2:?--name needs a name}"); shift 2 ;;
    --name=*) args+=(--name "${1#*=}"); shift ;;
    --purge) args+=(--purge); shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "deploy/down.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "deploy/down.sh: no .venv: nothing was brought up from this checkout" >&2
  exit 1
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m deploy.cluster "${args[@]}"
