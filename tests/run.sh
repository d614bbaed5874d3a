#!/usr/bin/env bash
# Run kubelite's checks and tests, as root on Debian: installs what is
# missing first (Debian packages, the project and its test tools in .venv).
#
#   tests/run.sh [PYTEST ARGS...]
#
# The suite starts what it needs itself: a real etcd, API servers, a
# registry, network namespaces. It needs root for namespaces, cgroups,
# mounts and iptables.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/install.sh
. "$ROOT/deploy/install.sh"
kubelite_install --dev
cd "$ROOT"

echo "== lint"
.venv/bin/ruff check .
echo "== types of the shared package"
.venv/bin/mypy machinery
echo "== generated gRPC stubs are current"
.venv/bin/python proto/generate.py --check
echo "== tests"
set +e
.venv/bin/python -m pytest -p no:cacheprovider -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "tests/run.sh: pytest collected no tests" >&2
fi
exit "$status"
