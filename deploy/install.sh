# Install what kubelite needs on a Debian machine: Debian packages, then the
# project into .venv. Sourced by deploy/up.sh and .ci/run; idempotent, and
# quiet when everything is already there.
#
#   kubelite_install [--dev]     --dev also installs the test and lint tools

KUBELITE_ROOT=${KUBELITE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}

# command -> Debian package providing it
KUBELITE_APT_PACKAGES=(
  "etcd:etcd-server"
  "etcdctl:etcd-client"
  "busybox:busybox-static"
  "docker-registry:docker-registry"
  "runc:runc"
  "iptables:iptables"
  "conntrack:conntrack"
  "ip:iproute2"
  "tc:iproute2"
  "skopeo:skopeo"
  "openssl:openssl"
  "nft:nftables"
  "python3:python3"
)

kubelite_install_packages() {
  local missing=() entry cmd pkg
  for entry in "${KUBELITE_APT_PACKAGES[@]}"; do
    cmd=${entry%%:*}; pkg=${entry#*:}
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
      missing+=("$pkg")
    fi
  done
  # python3 -m venv needs ensurepip, which Debian ships apart.
  if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing+=("python3-venv")
  fi
  # libseccomp's Python bindings (the runtime's seccomp filter); a module, not a command.
  if ! dpkg-query -W -f='${Status}' python3-seccomp 2>/dev/null | grep -q 'ok installed'; then
    missing+=("python3-seccomp")
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "kubelite: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2046
    apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
  fi
}

kubelite_install_venv() {
  local extras=${1:-} venv="$KUBELITE_ROOT/.venv" stamp
  stamp="$venv/.kubelite-installed${extras:+-$extras}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "kubelite: creating $venv"
    python3 -m venv "$venv"
  fi
  if [ ! -f "$stamp" ] || [ "$KUBELITE_ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "kubelite: installing the project into $venv"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/pip" install -q -e "$KUBELITE_ROOT${extras:+[$extras]}" 2>&1 | grep -v '^WARNING: Location' || true
    "$venv/bin/python" -c 'import machinery, apiserver, cli' || { echo "kubelite: install failed" >&2; return 1; }
    # Compile the API's schema checkers now, as pip compiles bytecode, rather than in
    # the first request of each kind a new API server answers.
    "$venv/bin/python" -c 'from machinery import validation; validation.warm_cache()' || true
    touch "$stamp"
  fi
}

kubelite_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "kubelite: run as root (it installs packages and creates namespaces, cgroups and mounts)" >&2
    return 1
  fi
  kubelite_install_packages
  if [ "${1:-}" = "--dev" ]; then
    kubelite_install_venv dev
  else
    kubelite_install_venv
  fi
}
