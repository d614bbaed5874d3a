"""Install a kubelite server or agent on a machine: choose its address, write its units.

    python -m deploy.roles.install server [--node-ip IP | --iface NAME] [--servers IP1,IP2,IP3]
                                          [--token T --ca-dir DIR]
    python -m deploy.roles.install agent  [--node-ip IP | --iface NAME] --servers ... --token T
                                          --ca-file CA.crt

(deploy/roles/server.sh and agent.sh install the packages first, then run this.)

The address a machine is known by is chosen, never guessed: --node-ip names it,
--iface takes the IPv4 address of that interface, and without either the
machine's single non-loopback interface with an IPv4 address is used. When
there are several, the install refuses and lists them: on testbed VMs the first
interface is often a NAT network the other VMs cannot reach. A rerun without
flags reuses the address the first run chose (kept in <state>/install.json).

Units are rendered from deploy/systemd/<unit>.service with the command lines
of deploy/roles/commands.py, written to /etc/systemd/system (or --unit-dir),
and enabled and started when systemd runs this machine; otherwise the install
prints the systemctl commands to run later. A server also writes kctl's
context (named after --cluster-name) listing every server, its own first.

Certificates (deploy/pki.py, into <state>/pki): the first server of the
--servers list creates the cluster CA and the etcd CA; every other server is
given both (their .crt and .key files, copied from the first server into a
directory named by --ca-dir) and issues its own serving, component and etcd
member certificates from them. A server that is not the first and has no CA
refuses to install rather than start a second, disjoint cluster.

The join token: the first server makes one (six and sixteen lowercase letters
or digits, joined by a dot: a bootstrap token) and keeps it in
<state>/join-token, readable by root alone; the other servers are given it
with --token. Each server's one-shot bootstrap unit publishes it as its
Secret once the API answers (valid 24 h; `kctl token create` makes more). An
agent is given the token and the cluster CA certificate (--ca-file, copied
from a server; never the key): it writes a bootstrap client config with
both, and its kubelet presents the token once to be issued its node
certificate.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import pathlib
import re
import secrets
import shlex
import socket
import string
import subprocess
import sys

from deploy import pki
from deploy.layout import CLUSTER_CIDR, SERVICE_CIDR
from deploy.roles.commands import (
    REGISTRY_PORT,
    AgentConfig,
    Command,
    LeaderElection,
    ServerConfig,
    agent_commands,
    api_servers,
    local_first,
    member_name,
    registry_auth_dir,
    registry_config,
    server_commands,
    spread,
    token_servers,
)
from machinery import config as client_config
from machinery import pki as machinery_pki
from machinery.credentials import Credentials
from machinery.labels import validate_dns1123_subdomain

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "deploy" / "systemd"
UNIT_DIR = pathlib.Path("/etc/systemd/system")
TOKEN_RE = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")
PLACEHOLDER_RE = re.compile(r"@([A-Z_]+)@")


class InstallError(Exception):
    """What the install refuses, said so that the user knows which flag to change."""


# -- choosing the machine's address ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Interface:
    name: str
    addresses: tuple[str, ...]  # IPv4, global scope
    up: bool
    loopback: bool = False


@dataclasses.dataclass(frozen=True)
class Choice:
    """The address chosen and its interface, or why none was (refusal)."""

    address: str = ""
    iface: str = ""
    refusal: str = ""


def read_interfaces() -> list[Interface]:
    """This machine's interfaces and their IPv4 addresses, from `ip -j addr`."""
    # Not `ip -4`: it leaves out the interfaces without an IPv4 address, which --iface
    # must be able to name in its refusal.
    result = subprocess.run(
        ["ip", "-j", "addr", "show"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise InstallError(f"failed to list interfaces (ip -j addr): {result.stderr.strip()}")
    interfaces = []
    for entry in json.loads(result.stdout or "[]"):
        flags = entry.get("flags", [])
        addresses = tuple(
            a["local"]
            for a in entry.get("addr_info", [])
            if a.get("family") == "inet" and a.get("scope", "global") == "global"
        )
        interfaces.append(
            Interface(entry["ifname"], addresses, up="UP" in flags, loopback="LOOPBACK" in flags)
        )
    return interfaces


def _listing(interfaces: list[Interface]) -> str:
    return ", ".join(f"{i.name} {'/'.join(i.addresses)}" for i in interfaces) or "none"


def choose_address(
    interfaces: list[Interface], *, node_ip: str = "", iface: str = "", remembered: str = ""
) -> Choice:
    """The address this machine is known by in the cluster (see the module docstring)."""
    by_name = {i.name: i for i in interfaces}
    if iface:
        found = by_name.get(iface)
        if found is None:
            return Choice(refusal=f"--iface {iface}: no such interface (have: {_names(by_name)})")
        if not found.addresses:
            return Choice(refusal=f"--iface {iface}: the interface has no IPv4 address")
        if node_ip:
            if node_ip in found.addresses:
                return Choice(node_ip, iface)
            return Choice(
                refusal=f"--node-ip {node_ip} is not an address of --iface {iface} "
                f"(it has {', '.join(found.addresses)})"
            )
        if len(found.addresses) > 1:
            return Choice(
                refusal=f"--iface {iface} has several IPv4 addresses "
                f"({', '.join(found.addresses)}): choose one with --node-ip"
            )
        return Choice(found.addresses[0], iface)
    if node_ip:
        for interface in interfaces:
            if node_ip in interface.addresses:
                return Choice(node_ip, interface.name)
        return Choice(
            refusal=f"--node-ip {node_ip}: no interface of this machine has that address "
            f"(addresses here: {_listing([i for i in interfaces if i.addresses])})"
        )
    return _choose_alone(interfaces, remembered)


def _choose_alone(interfaces: list[Interface], remembered: str) -> Choice:
    for interface in interfaces:
        if remembered and remembered in interface.addresses:
            return Choice(remembered, interface.name)
    # Pod bridges a kubelet made hold addresses of the Pod network: never this machine's.
    pods = ipaddress.ip_network(CLUSTER_CIDR)
    candidates = [
        (i.name, a)
        for i in interfaces
        if i.up and not i.loopback
        for a in i.addresses
        if ipaddress.ip_address(a) not in pods
    ]
    if not candidates:
        return Choice(
            refusal="no interface that is up has an IPv4 address: "
            "give --iface NAME or --node-ip ADDRESS"
        )
    if len(candidates) > 1:
        listing = ", ".join(f"{name} {address}" for name, address in candidates)
        return Choice(
            refusal=f"several IPv4 addresses could be this machine's ({listing}): choose with "
            "--iface NAME or --node-ip ADDRESS. On testbed VMs the first interface is often "
            "a NAT network the other VMs cannot reach"
        )
    name, address = candidates[0]
    return Choice(address, name)


def _names(by_name: dict[str, Interface]) -> str:
    return ", ".join(sorted(by_name)) or "none"


# -- servers, tokens, node names ---------------------------------------------------------


def parse_servers(text: str, *, own: str = "") -> tuple[str, ...]:
    """The --servers list: IPv4 addresses, no repeats, an odd count, own among them."""
    servers = tuple(s.strip() for s in text.split(",") if s.strip())
    if not servers:
        raise InstallError("--servers: give the servers' addresses, comma-separated")
    for server in servers:
        try:
            ipaddress.IPv4Address(server)
        except ValueError:
            raise InstallError(f"--servers: {server!r} is not an IPv4 address") from None
    if len(set(servers)) != len(servers):
        raise InstallError(f"--servers: an address is listed twice in {text}")
    if len(servers) % 2 == 0:
        raise InstallError(
            f"--servers: {len(servers)} servers cannot lose one without losing etcd's quorum; "
            "use 1 or 3 (or 5)"
        )
    if own and own not in servers:
        raise InstallError(
            f"--servers {text} does not list this machine's address {own} "
            "(every server is given the same list, itself included)"
        )
    return servers


def new_token() -> str:
    alphabet = string.ascii_lowercase + string.digits
    pick = "".join(secrets.choice(alphabet) for _ in range(22))
    return f"{pick[:6]}.{pick[6:]}"


def check_token(token: str) -> str:
    if not TOKEN_RE.match(token):
        raise InstallError(
            "--token: not a join token (six and sixteen lowercase letters or digits joined by "
            "a dot, as the first server printed it)"
        )
    return token


def store_token(state_dir: pathlib.Path, token: str) -> pathlib.Path:
    path = state_dir / "join-token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    os.chmod(path, 0o600)
    return path


def server_token(state_dir: pathlib.Path, given: str) -> str:
    """The given token, else the one this server already has, else a new one."""
    if given:
        return check_token(given)
    path = state_dir / "join-token"
    if path.exists():
        return check_token(path.read_text().strip())
    return new_token()


def check_node_name(name: str) -> str:
    problem = validate_dns1123_subdomain(name)
    if problem:
        raise InstallError(f"--node-name {name!r}: {problem}; give a valid one with --node-name")
    return name


# -- units -------------------------------------------------------------------------------


def systemd_quote(arg: str) -> str:
    """One ExecStart word: specifiers (%) and variables ($) escaped, quoted when needed."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not re.search(r"[\s\"'\\;]", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_start(argv: tuple[str, ...]) -> str:
    return " ".join(systemd_quote(a) for a in argv)


def parse_exec_start(line: str) -> list[str]:
    """The argv an ExecStart= line runs, for the quoting systemd_quote produces."""
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line)]


def render_unit(template: str, values: dict[str, str], *, name: str) -> str:
    """Fill @FIELD@ marks; a mark without a value or a value without a mark is an error."""
    used = set(PLACEHOLDER_RE.findall(template))
    missing = used - set(values)
    if missing:
        raise InstallError(f"unit template {name} needs values for {sorted(missing)}")
    return PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


def unit_text(command: Command, *, state_dir: pathlib.Path) -> str:
    template_path = TEMPLATES / f"{command.unit}.service"
    values = {
        "EXEC_START": exec_start(command.argv),
        "ROOT": str(ROOT),
        "STATE_DIR": str(state_dir),
    }
    return render_unit(template_path.read_text(), values, name=template_path.name)


def write_units(
    commands: list[Command], *, unit_dir: pathlib.Path, state_dir: pathlib.Path
) -> list[pathlib.Path]:
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for command in commands:
        path = unit_dir / f"{command.unit}.service"
        tmp = path.with_suffix(".service.tmp")
        tmp.write_text(unit_text(command, state_dir=state_dir))
        tmp.replace(path)
        written.append(path)
    return written


def systemd_running() -> bool:
    """Whether systemd manages this machine (the test sd_booted() makes)."""
    return pathlib.Path("/run/systemd/system").is_dir()


def systemctl_commands(units: list[str]) -> list[list[str]]:
    # --no-block: the first server's etcd cannot finish starting before a second joins.
    return [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "--no-block", *units],
    ]


def enable(units: list[str], *, wanted: bool) -> list[str]:
    """Run the systemctl commands, or say them when systemd does not run here."""
    commands = systemctl_commands(units)
    if wanted and systemd_running():
        for argv in commands:
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise InstallError(f"failed to run {shlex.join(argv)}: {result.stderr.strip()}")
        return [f"started: {' '.join(units)}"]
    why = "systemd does not run this machine" if wanted else "--no-enable"
    return [f"not started ({why}); to start them, run:", *(f"  {shlex.join(c)}" for c in commands)]


# -- the two roles -----------------------------------------------------------------------


def _remembered(state_dir: pathlib.Path) -> dict:
    path = state_dir / "install.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _choose(args: argparse.Namespace, state_dir: pathlib.Path) -> Choice:
    choice = choose_address(
        read_interfaces(),
        node_ip=args.node_ip,
        iface=args.iface,
        remembered=_remembered(state_dir).get("node_ip", ""),
    )
    if choice.refusal:
        raise InstallError(choice.refusal)
    return choice


def _remember(state_dir: pathlib.Path, **facts: object) -> None:
    (state_dir / "install.json").write_text(json.dumps(facts, indent=2) + "\n")


def server_pki(config: ServerConfig, *, ca_dir: pathlib.Path | None) -> list[str]:
    """This server's CAs and certificates, and its components' client configs."""
    directory = config.pki_dir
    try:
        if ca_dir is not None:
            for name in (pki.CA, pki.ETCD_CA):
                pki.install_ca(directory, ca_dir, name=name)
        elif not (directory / "ca.crt").exists() and config.node_ip != config.servers[0]:
            raise InstallError(
                f"--ca-dir: this server is not the first of --servers ({config.servers[0]} "
                "is), so it needs the cluster's CAs: copy ca.crt, ca.key, etcd-ca.crt and "
                f"etcd-ca.key from {directory} on the first server into a directory here "
                "and name it with --ca-dir"
            )
        names = pki.apiserver_names([config.node_ip], service_cidr=SERVICE_CIDR)
        steps = pki.ensure_control_plane(directory, cluster=config.cluster_name, server_names=names)
        steps += pki.ensure_etcd(
            directory,
            cluster=config.cluster_name,
            member=member_name(config.node_ip),
            addresses=[config.node_ip],
        )
    except pki.PKIError as err:
        raise InstallError(str(err)) from None
    mine = api_servers(local_first(config.servers, config.node_ip)).split(",")
    for component in ("scheduler", "controller-manager", "dns", pki.ADMIN):
        pki.component_kubeconfig(
            directory, component, cluster=config.cluster_name, servers=mine
        ).write(config.kubeconfig(component))
    return pki.reissued(steps)


def _admin_context(config: ServerConfig) -> client_config.Context:
    directory = config.pki_dir
    files = {
        "certificate-authority": str(directory / "ca.crt"),
        "client-certificate": str(directory / f"{pki.ADMIN}.crt"),
        "client-key": str(directory / f"{pki.ADMIN}.key"),
    }
    admin = pki.KeyPair.read(directory, pki.ADMIN)
    credentials = Credentials(
        ca=(directory / "ca.crt").read_bytes(), cert=admin.cert, key=admin.key
    )
    servers = api_servers(local_first(config.servers, config.node_ip)).split(",")
    return client_config.Context(config.cluster_name, servers, "default", credentials, files)


def install_server(args: argparse.Namespace) -> list[str]:
    state_dir: pathlib.Path = args.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)
    choice = _choose(args, state_dir)
    servers = parse_servers(args.servers or choice.address, own=choice.address)
    token = server_token(state_dir, args.token)
    store_token(state_dir, token)
    config = ServerConfig(
        node_ip=choice.address,
        servers=servers,
        state_dir=state_dir,
        python=sys.executable,
        cluster_name=args.cluster_name,
        leader_election=LeaderElection(
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
        ),
        registry=args.registry,
    )
    if not config.leader_election.renew_deadline < config.leader_election.lease_duration:
        raise InstallError("--leader-elect-renew-deadline must be shorter than the lease duration")
    issued = server_pki(config, ca_dir=args.ca_dir)
    if args.registry:
        _write_registry_config(config)
    commands = server_commands(config)
    units = write_units(commands, unit_dir=args.unit_dir, state_dir=state_dir)
    _remember(state_dir, role="server", node_ip=choice.address, iface=choice.iface)
    # kctl on this server as the admin, with every server to fail over to, its own first.
    kctl = _admin_context(config)
    client_config.save_context(kctl)
    ca = config.pki_dir / "ca.crt"
    join = f"deploy/roles/agent.sh --servers {','.join(servers)} --token {token} --ca-file CA"
    if args.registry:
        join += " --registry-auth-file AUTH"
    return [
        f"server {choice.address} (interface {choice.iface}) of {len(servers)}: "
        f"{', '.join(servers)}",
        f"certificates in {config.pki_dir}"
        + (f": issued {'; '.join(issued)}" if issued else ": all present"),
        f"units written to {args.unit_dir}: {', '.join(u.name for u in units)}",
        *enable([u.name for u in units], wanted=not args.no_enable),
        f"kctl: context {kctl.name} in {client_config.default_path()} (as the admin)",
        f"join token: {token} (also in {state_dir / 'join-token'}; published by the bootstrap "
        "unit, valid 24h; more with: kctl token create)",
        f"cluster CA: {ca}",
        *(
            [
                "registry user (AUTH, copy it to each agent): "
                f"{registry_auth_dir(state_dir) / 'auth.json'}"
            ]
            if args.registry
            else []
        ),
        f"other servers: copy {', '.join(f'{config.pki_dir}/{n}' for n in CA_FILES)} into a "
        f"directory DIR on each, then: deploy/roles/server.sh --servers {','.join(servers)} "
        f"--token {token} --ca-dir DIR [--iface NAME | --node-ip IP]",
        f"agents: copy {ca} to CA on each, then: {join} [--iface NAME | --node-ip IP]",
    ]


CA_FILES = ("ca.crt", "ca.key", "etcd-ca.crt", "etcd-ca.key")


def _write_registry_config(config: ServerConfig) -> None:
    """HTTPS with the cluster CA and one user, as on one host: a registry any Pod could
    push to would let it replace the images every node runs."""
    from deploy.registry import ensure_registry_auth, write_registry_config

    path = registry_config(config.state_dir)
    (path.parent / "data").mkdir(parents=True, exist_ok=True)
    address = f"{config.node_ip}:{REGISTRY_PORT}"
    pki.ensure_registry(config.pki_dir, addresses=[config.node_ip])
    registry_auth = ensure_registry_auth(registry_auth_dir(config.state_dir), address)
    write_registry_config(
        path,
        address=address,
        storage=path.parent / "data",
        tls_cert=config.pki_dir / f"{pki.REGISTRY}.crt",
        tls_key=config.pki_dir / f"{pki.REGISTRY}.key",
        htpasswd=registry_auth.htpasswd,
    )


def install_agent(args: argparse.Namespace) -> list[str]:
    state_dir: pathlib.Path = args.state_dir
    if not args.servers:
        raise InstallError("--servers: an agent needs the servers' addresses (IP1,IP2,IP3)")
    if not args.token:
        raise InstallError("--token: an agent needs the join token the first server printed")
    servers = parse_servers(args.servers)
    token = check_token(args.token)
    ca = read_ca_file(args.ca_file)
    node_name = check_node_name(args.node_name or socket.gethostname().lower())
    state_dir.mkdir(parents=True, exist_ok=True)
    choice = _choose(args, state_dir)
    store_token(state_dir, token)
    config = AgentConfig(
        node_ip=choice.address,
        node_name=node_name,
        servers=servers,
        state_dir=state_dir,
        python=sys.executable,
        registry=args.registry or f"{servers[0]}:{REGISTRY_PORT}",
        registry_auth=args.registry_auth_file is not None,
    )
    if args.registry_auth_file is not None:
        store_registry_auth(config, args.registry_auth_file)
    write_bootstrap_kubeconfig(config, ca=ca, token=token)
    units = write_units(agent_commands(config), unit_dir=args.unit_dir, state_dir=state_dir)
    _remember(state_dir, role="agent", node_ip=choice.address, iface=choice.iface)
    return [
        f"agent {node_name} at {choice.address} (interface {choice.iface}), "
        f"servers {', '.join(servers)}",
        f"units written to {args.unit_dir}: {', '.join(u.name for u in units)}",
        *enable([u.name for u in units], wanted=not args.no_enable),
    ]


def store_registry_auth(config: AgentConfig, source: pathlib.Path) -> None:
    """The registry's user, copied from the server, where the kubelet reads it."""
    from machinery.registry import RegistryError, read_auth_file

    try:
        read_auth_file(str(source))
        data = source.read_bytes()
    except (RegistryError, OSError) as err:
        raise InstallError(f"--registry-auth-file: {err}") from None
    config.registry_auth_file.parent.mkdir(parents=True, exist_ok=True)
    machinery_pki.write_private(config.registry_auth_file, data)


def read_ca_file(path: pathlib.Path | None) -> bytes:
    if path is None:
        raise InstallError(
            "--ca-file: an agent needs the cluster CA certificate (ca.crt, copied from a "
            "server's pki directory) to know it talks to the real servers"
        )
    try:
        pem = path.read_bytes()
        machinery_pki.load_cert(pem)
    except OSError as err:
        raise InstallError(f"--ca-file {path}: cannot read it: {err.strerror}") from None
    except machinery_pki.PKIError as err:
        raise InstallError(f"--ca-file {path}: {err}") from None
    return pem


def write_bootstrap_kubeconfig(config: AgentConfig, *, ca: bytes, token: str) -> pathlib.Path:
    """The kubelet's bootstrap client config: the join token, the CA, every server."""
    config.ca_file.parent.mkdir(parents=True, exist_ok=True)
    machinery_pki.write_private(config.ca_file, ca, mode=0o644)
    order = spread(config.servers, config.node_name)
    return pki.Kubeconfig(
        cluster="kubelite",
        servers=tuple(api_servers(order).split(",")),
        token_servers=tuple(token_servers(order).split(",")),
        ca_file=config.ca_file,
        user=f"bootstrap-{config.node_name}",
        token=token,
    ).write(config.bootstrap_kubeconfig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.roles.install",
        description="Install a kubelite server or agent on this machine as systemd units.",
    )
    sub = parser.add_subparsers(dest="role", required=True)
    for role, text in (
        ("server", "etcd member, API server, controller manager, scheduler, DNS"),
        ("agent", "kubelet and proxy, joining the servers"),
    ):
        p = sub.add_parser(role, help=text, description=f"Install a {role}: {text}.")
        p.add_argument("--node-ip", default="", help="this machine's address in the cluster")
        p.add_argument("--iface", default="", help="use the IPv4 address of this interface")
        p.add_argument("--servers", default="", help="every server's address, comma-separated")
        p.add_argument("--token", default="", help="the join token the first server printed")
        p.add_argument(
            "--state-dir",
            type=pathlib.Path,
            default=pathlib.Path(f"/var/lib/kubelite/{role}"),
            help="where the role keeps its data (default: %(default)s)",
        )
        p.add_argument(
            "--unit-dir",
            type=pathlib.Path,
            default=UNIT_DIR,
            help="where units are written (default: %(default)s)",
        )
        p.add_argument(
            "--no-enable", action="store_true", help="write the units but do not start them"
        )
        p.set_defaults(handler=install_server if role == "server" else install_agent)
    server, agent = sub.choices["server"], sub.choices["agent"]
    server.add_argument(
        "--cluster-name", default="kubelite", help="etcd's cluster token, kctl's context"
    )
    server.add_argument(
        "--ca-dir",
        type=pathlib.Path,
        default=None,
        help="directory with the first server's ca.crt, ca.key, etcd-ca.crt, etcd-ca.key "
        "(every server but the first)",
    )
    server.add_argument(
        "--registry", action="store_true", help=f"also run the image registry (:{REGISTRY_PORT})"
    )
    server.add_argument("--leader-elect-lease-duration", type=float, default=15.0)
    server.add_argument("--leader-elect-renew-deadline", type=float, default=10.0)
    server.add_argument("--leader-elect-retry-period", type=float, default=2.0)
    agent.add_argument("--node-name", default="", help="the Node's name (default: hostname)")
    agent.add_argument(
        "--ca-file",
        type=pathlib.Path,
        default=None,
        help="the cluster CA certificate (ca.crt from a server), required",
    )
    agent.add_argument(
        "--registry",
        default="",
        help=f"registry short image names resolve to (default: first server:{REGISTRY_PORT})",
    )
    agent.add_argument(
        "--registry-auth-file",
        type=pathlib.Path,
        default=None,
        help="the registry's user (auth.json, printed by a server installed with --registry); "
        "without it the registry is spoken to over plain HTTP",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for line in args.handler(args):
            print(line)
    except InstallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: failed to install the {args.role}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
