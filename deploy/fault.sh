#!/usr/bin/env bash
# Inject faults into a one-host kubelite cluster's nodes (see deploy/fault.py).
#
#   deploy/fault.sh [--name NAME] stop-node N [--hard] | start-node N
#   deploy/fault.sh [--name NAME] cut-node N | heal-node N
#   deploy/fault.sh [--name NAME] delay-node N [--delay 100ms] [--jitter 10ms] [--loss 5%]
#   deploy/fault.sh [--name NAME] clear-node N | status
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "deploy/fault.sh: no .venv: bring a cluster up with deploy/up.sh first" >&2
  exit 1
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m deploy.fault "$@"
