"""The multi-machine install, on one host: each "VM" is a network namespace of its own.

Three servers and one agent hang on a bridge this test makes (deploy.hostnet,
unique name prefix). Each machine is installed with `python -m
deploy.roles.install` run inside its namespace, as on a VM (so the address is
found on its interface, not given), and its components are started as
processes with the argv of the ExecStart= lines of the units the install
wrote: the test runs what systemd would. Checks: the three etcd members form
one cluster, a client with every server's address writes, one scheduler and
one controller manager lead, and after the whole server holding both leases
is killed (every process, by PID) writes still succeed, the leases move to
survivors no earlier than they expire, a new ReplicaSet gets its Pods from the
surviving controller manager, and the agent's proxy, which was talking to the
dead server first, programs a new Service, and its kubelet, which talked to
the same dead server first, renews its node Lease through another. The
ReplicaSet's Pods are kept off the agent (a nodeSelector nothing matches): no
registry or images are brought, and the Pods only need to exist.

The install's decisions (address choice, --servers, tokens, unit rendering)
are checked table-driven without any namespace, and the address choice once
more on a namespace with real interfaces.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

from deploy import hostnet
from deploy.roles import commands
from deploy.roles.commands import LeaderElection
from deploy.roles.install import (
    Choice,
    InstallError,
    Interface,
    check_token,
    choose_address,
    exec_start,
    new_token,
    parse_exec_start,
    parse_servers,
    render_unit,
)
from machinery import errors
from machinery.client import ApiClient, retry
from machinery.clock import parse_rfc3339
from machinery.config import load_context
from machinery.credentials import Credentials
from machinery.pki import KeyPair

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Short enough to keep the test short, long enough that a loaded machine's leader
# still renews in time.
LEASE = LeaderElection(lease_duration=8, renew_deadline=6, retry_period=1)
SERVER_UNITS = ("kubelite-etcd", "kubelite-apiserver", "kubelite-controller-manager")

# -- the install's decisions -------------------------------------------------------------

ETH0 = Interface("eth0", ("10.0.2.15",), up=True)
ETH1 = Interface("eth1", ("192.168.56.11",), up=True)
LO = Interface("lo", (), up=True, loopback=True)
BARE = Interface("eth2", (), up=True)
DOWN = Interface("eth3", ("192.168.57.3",), up=False)
PODS = Interface("kubelite0", ("10.244.1.1",), up=True)
TWO = Interface("eth4", ("192.168.58.4", "192.168.58.5"), up=True)


@pytest.mark.parametrize(
    ("interfaces", "flags", "expected"),
    [
        pytest.param([LO, ETH0], {}, Choice("10.0.2.15", "eth0"), id="single-interface"),
        pytest.param([LO, ETH0, DOWN], {}, Choice("10.0.2.15", "eth0"), id="down-ignored"),
        pytest.param([LO, ETH0, PODS], {}, Choice("10.0.2.15", "eth0"), id="pod-bridge-ignored"),
        pytest.param([LO, ETH0, ETH1], {"iface": "eth1"}, Choice("192.168.56.11", "eth1"), id="if"),
        pytest.param(
            [ETH0, ETH1], {"node_ip": "192.168.56.11"}, Choice("192.168.56.11", "eth1"), id="ip"
        ),
        pytest.param(
            [ETH0, ETH1],
            {"node_ip": "192.168.56.11", "iface": "eth1"},
            Choice("192.168.56.11", "eth1"),
            id="ip-on-iface",
        ),
        pytest.param(
            [ETH0, ETH1],
            {"remembered": "192.168.56.11"},
            Choice("192.168.56.11", "eth1"),
            id="rerun",
        ),
        pytest.param(
            [ETH0, ETH1], {}, "several IPv4 addresses could be this machine's", id="nat-trap"
        ),
        pytest.param([LO, TWO], {}, "several IPv4 addresses", id="two-addresses-one-link"),
        pytest.param([ETH0, BARE], {"iface": "eth2"}, "has no IPv4 address", id="bare-iface"),
        pytest.param([ETH0], {"iface": "wlan0"}, "no such interface", id="unknown-iface"),
        pytest.param([TWO], {"iface": "eth4"}, "choose one with --node-ip", id="iface-has-two"),
        pytest.param([ETH0], {"node_ip": "10.9.9.9"}, "no interface of this machine", id="ip-gone"),
        pytest.param(
            [ETH0, ETH1],
            {"node_ip": "10.0.2.15", "iface": "eth1"},
            "is not an address of --iface eth1",
            id="ip-not-on-iface",
        ),
        pytest.param([LO, DOWN], {}, "no interface that is up", id="nothing-up"),
    ],
)
def test_the_address_is_chosen_never_guessed(interfaces, flags, expected) -> None:
    choice = choose_address(interfaces, **flags)
    if isinstance(expected, Choice):
        assert choice == expected
    else:
        assert not choice.address and expected in choice.refusal, choice


@pytest.mark.parametrize(
    ("text", "own", "message"),
    [
        pytest.param("10.0.0.1,10.0.0.2", "10.0.0.1", "cannot lose one", id="two-servers"),
        pytest.param("10.0.0.1,10.0.0.1,10.0.0.2", "", "listed twice", id="repeat"),
        pytest.param("10.0.0.1,server-b,10.0.0.3", "", "'server-b' is not an IPv4", id="name"),
        pytest.param("10.0.0.1,10.0.0.2,10.0.0.3", "10.0.0.9", "does not list", id="not-me"),
        pytest.param(",", "", "give the servers' addresses", id="empty"),
    ],
)
def test_bad_server_lists_are_refused(text: str, own: str, message: str) -> None:
    with pytest.raises(InstallError, match=message):
        parse_servers(text, own=own)


def test_tokens_have_the_bootstrap_token_shape() -> None:
    token = new_token()
    assert check_token(token) == token
    assert new_token() != token
    for bad in ("", "abcdef.0123", "ABCDEF.0123456789abcdef", "abcdef0123456789abcdef"):
        with pytest.raises(InstallError, match="not a join token"):
            check_token(bad)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("/usr/bin/etcd", "--name=a", "--x=http://1.2.3.4:2380"), id="plain"),
        pytest.param(("python", "--label=a b", 'say "hi"'), id="spaces-and-quotes"),
        pytest.param(("sh", "-c", "echo 100% $HOME"), id="specifiers-and-variables"),
    ],
)
def test_exec_start_round_trips(argv: tuple[str, ...]) -> None:
    line = exec_start(argv)
    assert "%%" in line or "%" not in "".join(argv)
    assert parse_exec_start(line) == list(argv)


TOKEN = "abcdef.0123456789abcdef"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--token", TOKEN], "an agent needs the servers' addresses", id="no-servers"),
        pytest.param(["--servers", "10.0.0.1"], "needs the join token", id="no-token"),
        pytest.param(["--servers", "10.0.0.1", "--token", "x"], "not a join token", id="bad-token"),
        pytest.param(
            ["--servers", "10.0.0.1", "--token", TOKEN], "needs the cluster CA", id="no-ca-file"
        ),
        pytest.param(
            ["--servers", "10.0.0.1", "--token", TOKEN, "--ca-file", "/nonexistent/ca.crt"],
            "--ca-file /nonexistent/ca.crt: cannot read it",
            id="ca-file-missing",
        ),
        pytest.param(
            ["--servers", "10.0.0.1", "--token", TOKEN, "--ca-file", "NOT_PEM"],
            "not a PEM certificate",
            id="ca-file-not-a-certificate",
        ),
        pytest.param(
            [
                "--servers",
                "10.0.0.1",
                "--token",
                TOKEN,
                "--ca-file",
                "CA",
                "--node-name",
                "Agent_1",
            ],
            "--node-name 'Agent_1'",
            id="bad-node-name",
        ),
    ],
)
def test_agent_install_refusals(tmp_path, capsys, args: list[str], message: str) -> None:
    from deploy.roles.install import main
    from machinery import pki

    # CA names a real CA certificate, NOT_PEM a file that is none.
    (tmp_path / "ca.crt").write_bytes(pki.new_ca("test").cert)
    (tmp_path / "junk").write_text("hello\n")
    files = {"CA": str(tmp_path / "ca.crt"), "NOT_PEM": str(tmp_path / "junk")}
    args = [files.get(a, a) for a in args]
    state = ["--state-dir", str(tmp_path / "s"), "--unit-dir", str(tmp_path / "u"), "--no-enable"]
    assert main(["agent", *state, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "u").exists()


def test_unit_templates_need_every_value() -> None:
    assert render_unit("ExecStart=@EXEC_START@\n", {"EXEC_START": "x"}, name="t") == "ExecStart=x\n"
    with pytest.raises(InstallError, match="needs values for"):
        render_unit("WorkingDirectory=@ROOT@\n", {}, name="t")


def test_every_rendered_unit_has_a_template() -> None:
    server = commands.ServerConfig(
        node_ip="10.0.0.1",
        servers=("10.0.0.1", "10.0.0.2", "10.0.0.3"),
        state_dir=pathlib.Path("/var/lib/kubelite/server"),
        python=sys.executable,
        registry=True,
    )
    agent = commands.AgentConfig(
        node_ip="10.0.0.9",
        node_name="a",
        servers=server.servers,
        state_dir=pathlib.Path("/var/lib/kubelite/agent"),
        python=sys.executable,
        registry="10.0.0.1:5000",
    )
    units = {c.unit for c in commands.server_commands(server) + commands.agent_commands(agent)}
    templates = {p.stem for p in (ROOT / "deploy" / "systemd").glob("*.service")}
    assert units == templates
    etcd = commands.server_commands(server)[0].argv
    initial = next(a for a in etcd if a.startswith("--initial-cluster="))
    assert initial.count("=https://") == 3 and "server-10-0-0-2=https://10.0.0.2:2380" in initial
    # etcd listens beyond loopback, so clients and peers must show etcd-CA certificates.
    assert {"--client-cert-auth", "--peer-client-cert-auth"} <= set(etcd)
    assert all(
        u.startswith("https://")
        for a in etcd
        if "-urls=" in a
        for u in a.split("=", 1)[1].split(",")
    )


async def test_bootstrap_publishes_kube_dns_once_and_follows_the_server_list(client) -> None:
    from deploy.roles.bootstrap import ensure_dns

    first = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert await ensure_dns(client, first) == "created"
    assert await ensure_dns(client, list(reversed(first))) == "unchanged"
    assert await ensure_dns(client, first[:1]) == "updated"
    service = await client.get("services", "kube-dns", namespace="kube-system")
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    endpoints = await client.get("endpoints", "kube-dns", namespace="kube-system")
    assert [a["ip"] for a in endpoints["subsets"][0]["addresses"]] == ["10.0.0.1"]


def test_bootstrap_seeds_the_registry_once(tmp_path: pathlib.Path) -> None:
    from deploy.registry import start_registry
    from deploy.roles.bootstrap import seed_images
    from machinery.registry import RegistryHosts, list_images

    with start_registry(storage=tmp_path / "data", workdir=tmp_path) as registry:
        address = registry.url.split("//", 1)[-1]
        assert seed_images(address, 20) == ["library/busybox", "library/httpd"]
        client = RegistryHosts(insecure=frozenset({address})).client(address)
        before = {r.repository: r for r in list_images(client)}
        assert seed_images(address, 20) == ["library/busybox", "library/httpd"]
        assert {r.repository: r for r in list_images(client)} == before


def test_an_authenticated_registry_refuses_strangers_and_is_seeded_as_its_user(
    tmp_path: pathlib.Path,
) -> None:
    """The registry a bring-up runs: HTTPS from the cluster CA and one user. Anyone else,
    a Pod on the cluster network included, can neither pull nor push."""
    from deploy.registry import ensure_registry_auth, free_port, start_registry
    from deploy.roles.bootstrap import seed_images
    from machinery import pki as machinery_pki
    from machinery.registry import (
        Credentials,
        RegistryError,
        RegistryHosts,
        list_images,
        read_auth_file,
    )

    ca = machinery_pki.new_ca("registry-test-ca")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert)
    serving = machinery_pki.issue(
        ca, machinery_pki.Subject("registry"), client=False, server=True, alt_names=["127.0.0.1"]
    )
    cert, key = serving.write(tmp_path, "registry")
    port = free_port("127.0.0.1")
    address = f"127.0.0.1:{port}"
    auth = ensure_registry_auth(tmp_path / "auth", address)
    assert (tmp_path / "auth" / "password").stat().st_mode & 0o777 == 0o600
    assert ensure_registry_auth(tmp_path / "auth", address) == auth  # made once, kept
    with start_registry(
        storage=tmp_path / "data",
        workdir=tmp_path,
        port=port,
        tls_cert=cert,
        tls_key=key,
        htpasswd=auth.htpasswd,
    ):
        stranger = RegistryHosts(ca_files={address: str(ca_file)}).client(address)
        with pytest.raises(RegistryError) as refused:
            list_images(stranger)
        assert refused.value.status == 401
        wrong = RegistryHosts(
            ca_files={address: str(ca_file)}, credentials={address: Credentials("kubelite", "x")}
        ).client(address)
        with pytest.raises(RegistryError):
            list_images(wrong)
        held = seed_images(address, 20, auth_file=auth.auth_file, ca_file=ca_file)
        assert held == ["library/busybox", "library/httpd"]
        user = RegistryHosts(
            ca_files={address: str(ca_file)}, credentials=read_auth_file(str(auth.auth_file))
        ).client(address)
        assert {r.repository for r in list_images(user)} == set(held)


def test_agents_of_an_authenticated_registry_use_https_and_its_user() -> None:
    base = dict(
        node_ip="10.0.0.9",
        node_name="a",
        servers=("10.0.0.1",),
        state_dir=pathlib.Path("/var/lib/kubelite/agent"),
        python=sys.executable,
        registry="10.0.0.1:5000",
    )
    [open_kubelet, *_] = commands.agent_commands(commands.AgentConfig(**base))
    assert "--insecure-registry=10.0.0.1:5000" in open_kubelet.argv
    [kubelet, *_] = commands.agent_commands(commands.AgentConfig(**base, registry_auth=True))
    assert not any(a.startswith("--insecure-registry") for a in kubelet.argv)
    assert "--registry-auth-file=/var/lib/kubelite/agent/registry-auth.json" in kubelet.argv
    assert "--registry-ca-file=/var/lib/kubelite/agent/pki/ca.crt" in kubelet.argv


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("not json", "not JSON"),
        ('{"auths": []}', 'needs an "auths" object'),
        ('{"auths": {"r:5000": {"auth": "!!"}}}', "not base64 of user:password"),
        ('{"auths": {"r:5000": {"auth": "bm9jb2xvbg=="}}}', "not base64 of user:password"),
        ('{"auths": {"r:5000": {}}}', "needs auth, or username and password"),
    ],
    ids=["not-json", "auths-not-object", "bad-base64", "no-colon", "empty-entry"],
)
def test_bad_registry_auth_files_name_the_problem(
    tmp_path: pathlib.Path, text: str, fragment: str
) -> None:
    from machinery.registry import RegistryError, read_auth_file

    path = tmp_path / "auth.json"
    path.write_text(text)
    with pytest.raises(RegistryError, match=fragment):
        read_auth_file(str(path))


# -- machines as network namespaces ------------------------------------------------------


def _in_netns(netns: str, argv: list[str]) -> list[str]:
    # The network namespace only, as a machine's own network; `ip netns exec` would also
    # remount /sys and hide the cgroup hierarchies from the kubelet.
    return ["nsenter", f"--net=/run/netns/{netns}", "--", *argv]


def _run_in(netns: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _in_netns(netns, argv),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


def _install(netns: str, role: str, state: pathlib.Path, *args: str):
    argv = [sys.executable, "-m", "deploy.roles.install", role, "--state-dir", str(state)]
    argv += ["--unit-dir", str(state / "units"), "--no-enable", *args]
    # Each machine's kctl config is its own, as on separate VMs.
    env = {**os.environ, "KUBELITE_CONFIG": str(state / "kctl-config")}
    return _run_in(netns, argv, env=env)


@pytest.mark.root
def test_install_refuses_to_guess_among_real_interfaces(tmp_path: pathlib.Path) -> None:
    """A namespace with a NAT-like and a LAN-like interface, and one without an address."""
    name = f"i{uuid.uuid4().hex[:6]}"
    netns = f"{name}-vm"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:

        def ip(*args: str) -> None:
            subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)

        for a, b in (("nat0", "nat1"), ("lan0", "lan1"), ("bare0", "bare1")):
            ip("link", "add", a, "type", "veth", "peer", "name", b)
            ip("link", "set", a, "up")
        ip("addr", "add", "10.0.2.15/24", "dev", "nat0")
        ip("addr", "add", "192.168.56.11/24", "dev", "lan0")

        guessed = _install(netns, "server", tmp_path / "a")
        assert guessed.returncode == 2
        assert "nat0 10.0.2.15, lan0 192.168.56.11" in guessed.stderr
        assert not (tmp_path / "a" / "units").exists()

        bare = _install(netns, "server", tmp_path / "b", "--iface", "bare0")
        assert bare.returncode == 2 and "has no IPv4 address" in bare.stderr

        chosen = _install(netns, "server", tmp_path / "c", "--iface", "lan0")
        assert chosen.returncode == 0, chosen.stderr
        assert "server 192.168.56.11 (interface lan0)" in chosen.stdout
        unit = (tmp_path / "c" / "units" / "kubelite-apiserver.service").read_text()
        assert "--listen=192.168.56.11:6443" in unit

        # A rerun without flags keeps the address the first run chose.
        rerun = _install(netns, "server", tmp_path / "c")
        assert rerun.returncode == 0 and "server 192.168.56.11" in rerun.stdout
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


@dataclasses.dataclass
class Machine:
    index: int
    netns: str
    ip: str
    state: pathlib.Path
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    def argv(self, unit: str) -> list[str]:
        """What the unit's ExecStart= runs."""
        text = (self.state / "units" / f"{unit}.service").read_text()
        line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
        return parse_exec_start(line.removeprefix("ExecStart="))

    def start(self, unit: str) -> subprocess.Popen:
        logs = self.state / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{unit}.log", "ab") as out:
            process = subprocess.Popen(
                _in_netns(self.netns, self.argv(unit)),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.processes[unit] = process
        return process

    def log(self, unit: str) -> str:
        path = self.state / "logs" / f"{unit}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()

    def pid(self, unit: str) -> int:
        return self.processes[unit].pid


class HA:
    def __init__(self, name: str, tmp: pathlib.Path) -> None:
        self.name = name
        self.net = hostnet.ClusterNet(name, hostnet.pick_subnet())
        self.machines = [
            Machine(i, self.net.netns(i), self.net.node_ip(i), tmp / f"vm{i}") for i in (1, 2, 3, 4)
        ]
        self.servers = self.machines[:3]
        self.agent = self.machines[3]
        # The server that will be lost: the agent's first choice (set at bring-up).
        self.victim = self.servers[0]
        self.etcd_leader_lost = False  # whether the victim leads etcd when it is lost
        self.server_ips = tuple(m.ip for m in self.servers)
        # Unique per run: the kubelet's cgroups are named after its node.
        self.agent_name = f"{name}-agent"

    @property
    def api_addresses(self) -> list[str]:
        return [f"{ip}:{commands.APISERVER_PORT}" for ip in self.server_ips]

    def server_at(self, ip: str) -> Machine:
        return next(m for m in self.servers if m.ip == ip)

    def owner_of(self, pid: int, unit: str) -> Machine | None:
        return next((m for m in self.servers if unit in m.processes and m.pid(unit) == pid), None)

    def logs(self, unit: str) -> str:
        return "\n".join(f"--- vm{m.index} {unit}:\n{m.log(unit)[-3000:]}" for m in self.machines)

    @property
    def admin(self) -> Credentials:
        """The first server's admin: the CA and certificate its install issued."""
        pki = self.servers[0].state / "pki"
        pair = KeyPair.read(pki, "admin")
        return Credentials(ca=(pki / "ca.crt").read_bytes(), cert=pair.cert, key=pair.key)

    def etcd_tls(self) -> ssl.SSLContext:
        pki = self.servers[0].state / "pki"
        context = ssl.create_default_context(cafile=str(pki / "etcd-ca.crt"))
        context.load_cert_chain(
            pki / "apiserver-etcd-client.crt", pki / "apiserver-etcd-client.key"
        )
        return context

    def close(self) -> None:
        from deploy.nodeclean import clean_node

        for machine in self.machines:
            machine.kill()
        clean_node(self.agent.state / "node", f"kubelite-{self.agent_name}")
        hostnet.delete_all(self.name)


def eventually(check, *, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, ValueError, KeyError) as err:
            result, last = None, err
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"{what} (last: {last})")


async def eventually_async(
    check, *, timeout: float, what: str, interval: float = 0.2, detail=lambda: ""
):
    """check()'s first true result; else fail naming what, the last error and detail()."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = await check()
        except errors.ApiError as err:
            result, last = None, err
        if result:
            return result
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} (last: {last})\n{detail()}")


def etcd_call(ha: HA, ip: str, path: str, body: dict | None = None) -> dict:
    """A call to a member's HTTPS gateway (/v3/... take a JSON body) or /health, with the
    first server's etcd client certificate: etcd refuses a client without one."""
    request = urllib.request.Request(
        f"https://{ip}:{commands.ETCD_CLIENT_PORT}{path}",
        data=json.dumps(body or {}).encode() if path.startswith("/v3/") else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=3, context=ha.etcd_tls()) as response:
        return json.loads(response.read())


def etcd_member_ids(ha: HA) -> dict[str, str]:
    """Member ID (decimal, as the gateway writes it) by server address."""
    members = etcd_call(ha, ha.server_ips[0], "/v3/cluster/member/list")["members"]
    by_name = {commands.member_name(ip): ip for ip in ha.server_ips}
    return {by_name[m["name"]]: m["ID"] for m in members}


def move_etcd_leader(ha: HA, target: Machine) -> None:
    """Make target etcd's leader (a transfer asked of the current leader)."""
    ids = etcd_member_ids(ha)

    def leader() -> str:
        return etcd_call(ha, target.ip, "/v3/maintenance/status")["leader"]

    current = eventually(leader, timeout=30, what="an etcd leader")
    if current != ids[target.ip]:
        old = next(ip for ip, member in ids.items() if member == current)
        etcd_call(ha, old, "/v3/maintenance/transfer-leadership", {"targetID": ids[target.ip]})
    eventually(lambda: leader() == ids[target.ip], timeout=30, what=f"etcd led by {target.ip}")


def etcd_healthy(ha: HA, ip: str) -> bool:
    return etcd_call(ha, ip, "/health").get("health") == "true"


async def answers(address: str, credentials: Credentials) -> bool:
    async with ApiClient([address], timeout=3, credentials=credentials) as api:
        try:
            await api.get("namespaces", "default")
        except errors.ApiError:
            return False
    return True


def leads(machine: Machine, unit: str) -> bool:
    """Whether the machine's process of unit is alive and, by its log, leading now."""
    process = machine.processes.get(unit)
    if process is None or process.poll() is not None:
        return False
    log = machine.log(unit)
    return log.count("became leader") > log.count("stopped leading")


async def lease_holder(api: ApiClient, name: str) -> tuple[int, dict]:
    lease = await api.get("leases", name, namespace="kube-system")
    identity = lease["spec"].get("holderIdentity", "")
    return (int(identity.split("_")[-2]) if identity else 0), lease["spec"]


def bring_up(ha: HA) -> None:
    # Plumbing: the bridge and one namespace per machine, as separate VMs on a LAN.
    hostnet.ensure_bridge(ha.net)
    for machine in ha.machines:
        hostnet.ensure_node(ha.net, machine.index)

    # Install every machine from inside its namespace; the first server makes the token.
    servers = ",".join(ha.server_ips)
    timings = [
        f"--leader-elect-lease-duration={LEASE.lease_duration:g}",
        f"--leader-elect-renew-deadline={LEASE.renew_deadline:g}",
        f"--leader-elect-retry-period={LEASE.retry_period:g}",
    ]
    first = _install(ha.servers[0].netns, "server", ha.servers[0].state, "--servers", servers)
    assert first.returncode == 0, first.stderr
    token = next(x for x in first.stdout.splitlines() if x.startswith("join token: ")).split()[2]
    # A server that is not the first refuses to make a CA of its own.
    second = ha.servers[1]
    alone = _install(second.netns, "server", second.state, "--servers", servers, "--token", token)
    assert alone.returncode == 2 and "--ca-dir" in alone.stderr, alone.stderr
    # The others get the first server's CAs, copied as an operator would.
    first_pki = ha.servers[0].state / "pki"
    for machine in ha.servers[1:]:
        given = machine.state / "given-ca"
        given.mkdir(parents=True)
        for name in ("ca.crt", "ca.key", "etcd-ca.crt", "etcd-ca.key"):
            shutil.copy(first_pki / name, given / name)
    for machine in ha.servers:
        ca_dir = [] if machine is ha.servers[0] else ["--ca-dir", str(machine.state / "given-ca")]
        result = _install(
            machine.netns, "server", machine.state, "--servers", servers, "--token", token,
            *ca_dir, *timings,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"server {machine.ip} (interface eth0) of 3" in result.stdout
        assert (machine.state / "pki" / "ca.crt").read_bytes() == (
            first_pki / "ca.crt"
        ).read_bytes()
    result = _install(
        ha.agent.netns, "agent", ha.agent.state, "--servers", servers, "--token", token,
        "--node-name", ha.agent_name, "--ca-file", str(first_pki / "ca.crt"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {(m.state / "join-token").read_text() for m in ha.machines} == {token + "\n"}
    assert not (ha.agent.state / "pki" / "ca.key").exists(), "an agent never holds the CA key"

    # etcd first: the members find each other from the same initial cluster.
    for machine in ha.servers:
        machine.start("kubelite-etcd")
    for machine in ha.servers:
        eventually(
            lambda m=machine: etcd_healthy(ha, m.ip), timeout=60, what=f"etcd on vm{machine.index}"
        )

    # The API servers, each on its own member first.
    for machine in ha.servers:
        machine.start("kubelite-apiserver")
    for address in ha.api_addresses:
        eventually(
            lambda a=address: asyncio.run(answers(a, ha.admin)),
            timeout=60,
            what=f"API server at {address}",
        )


def start_leaders_first(ha: HA, victim: Machine) -> None:
    """The victim's scheduler and controller manager start alone, so they take the leases."""
    for unit in ("kubelite-controller-manager", "kubelite-scheduler"):
        victim.start(unit)

    async def leading() -> bool:
        async with ApiClient(ha.api_addresses, timeout=3, credentials=ha.admin) as api:
            for lease, unit in (
                ("kube-controller-manager", "kubelite-controller-manager"),
                ("kube-scheduler", "kubelite-scheduler"),
            ):
                try:
                    holder, _ = await lease_holder(api, lease)
                except errors.ApiError:
                    return False
                if holder != victim.pid(unit):
                    return False
        return True

    eventually(lambda: asyncio.run(leading()), timeout=60, what="the first leaders")
    for machine in ha.servers:
        if machine is not victim:
            machine.start("kubelite-controller-manager")
            machine.start("kubelite-scheduler")
        machine.start("kubelite-dns")


def join_agent(ha: HA) -> None:
    """The agent's kubelet joins with the token; its proxy starts once it holds a certificate."""
    ha.agent.start("kubelite-kubelet")
    eventually(
        lambda: (ha.agent.state / "node" / "kubelet.conf").exists(),
        timeout=60,
        what=f"the agent's node certificate: {ha.agent.log('kubelite-kubelet')[-2000:]}",
    )
    ha.agent.start("kubelite-proxy")


@pytest.fixture(scope="module", params=["etcd-leader-survives", "etcd-leader-lost"])
def ha(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    testbed = HA(f"h{uuid.uuid4().hex[:6]}", tmp_path_factory.mktemp("ha"))
    testbed.etcd_leader_lost = request.param == "etcd-leader-lost"
    try:
        bring_up(testbed)
        # The server the agent talks to first is the one that will be lost.
        first = commands.spread(testbed.server_ips, testbed.agent_name)[0]
        testbed.victim = testbed.server_at(first)
        start_leaders_first(testbed, testbed.victim)
        # The bootstrap publishes kube-dns and the join token; then the agent can join.
        bootstrap = testbed.servers[1]
        done = _run_in(bootstrap.netns, bootstrap.argv("kubelite-bootstrap"))
        assert done.returncode == 0, done.stdout + done.stderr
        join_agent(testbed)
        yield testbed
    except BaseException:
        print(testbed.logs("kubelite-apiserver"), testbed.logs("kubelite-etcd"))
        raise
    finally:
        testbed.close()


@pytest.mark.root
async def test_three_servers_are_one_cluster(ha: HA) -> None:
    # One etcd cluster: every member lists the same three, under the same cluster ID.
    lists = [etcd_call(ha, ip, "/v3/cluster/member/list") for ip in ha.server_ips]
    assert len({m["header"]["cluster_id"] for m in lists}) == 1
    for members in lists:
        assert sorted(m["name"] for m in members["members"]) == sorted(
            commands.member_name(ip) for ip in ha.server_ips
        )

    # A client with every server's address writes; every API server reads it back.
    async with ApiClient(ha.api_addresses, timeout=5, credentials=ha.admin) as api:
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "before"}}
        await api.create("configmaps", cm, namespace="default")

        async def node_ready():
            node = await api.get("nodes", ha.agent_name)
            conditions = node.get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        await eventually_async(
            node_ready,
            timeout=60,
            what=f"Node {ha.agent_name} Ready",
            detail=lambda: ha.agent.log("kubelite-kubelet")[-3000:],
        )
        dns = await api.get("endpoints", "kube-dns", namespace="kube-system")
        assert sorted(a["ip"] for a in dns["subsets"][0]["addresses"]) == sorted(ha.server_ips)
        for machine in ha.servers:
            config = load_context(machine.state / "kctl-config")
            assert config.servers[0] == f"{machine.ip}:6443"
            assert sorted(config.servers) == sorted(ha.api_addresses)
        kctl = subprocess.run(
            [str(ROOT / ".venv/bin/kctl"), "get", "configmaps", "before", "-o", "name"],
            env={**os.environ, "KUBELITE_CONFIG": str(ha.servers[0].state / "kctl-config")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert kctl.returncode == 0 and "before" in kctl.stdout, kctl.stderr
        for address in ha.api_addresses:
            async with ApiClient([address], timeout=5, credentials=ha.admin) as one:
                await eventually_async(
                    lambda o=one: o.get("configmaps", "before", namespace="default"),
                    timeout=10,
                    what=f"the ConfigMap through {address}",
                )

        # Exactly one of each leads (the first started, unless load made it miss a
        # renewal), and it is the one the lease names.
        for lease, unit in (
            ("kube-controller-manager", "kubelite-controller-manager"),
            ("kube-scheduler", "kubelite-scheduler"),
        ):
            holder, _ = await lease_holder(api, lease)
            leading = [m for m in ha.servers if leads(m, unit)]
            assert len(leading) == 1, ha.logs(unit)
            assert leading[0].pid(unit) == holder


@pytest.mark.root
async def test_losing_a_server_leaves_the_cluster_working(ha: HA) -> None:
    victim = ha.victim
    survivors = [m for m in ha.servers if m is not victim]
    # The victim's address first: the client must fail over, as the agent's proxy must.
    addresses = [f"{victim.ip}:6443", *(f"{m.ip}:6443" for m in survivors)]
    async with ApiClient(addresses, timeout=5, credentials=ha.admin) as api:
        before = {
            lease: (await lease_holder(api, lease))[1]
            for lease in ("kube-controller-manager", "kube-scheduler")
        }

    # Lose the whole server: every process of it, by PID; etcd's leader goes with it
    # or stays, as the scenario says.
    move_etcd_leader(ha, victim if ha.etcd_leader_lost else survivors[0])
    killed_at = time.time()
    victim.kill()

    async with ApiClient(addresses, timeout=5, credentials=ha.admin) as api:
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}}
        await retry(lambda: api.create("configmaps", cm, namespace="default"), attempts=20)
        assert all(etcd_healthy(ha, m.ip) for m in survivors)

        # The leases the victim held move to survivors, and never before they ran out.
        for lease, unit in (
            ("kube-controller-manager", "kubelite-controller-manager"),
            ("kube-scheduler", "kubelite-scheduler"),
        ):

            async def moved(lease=lease, unit=unit):
                holder, spec = await lease_holder(api, lease)
                owner = ha.owner_of(holder, unit)
                return spec if owner is not None and owner is not victim else None

            spec = await eventually_async(
                moved, timeout=60, what=f"{lease} to move", detail=lambda u=unit: ha.logs(u)
            )
            old = before[lease]
            if old["holderIdentity"] == spec["holderIdentity"]:
                continue  # a survivor already held it (load made the victim miss a renewal)
            expired = parse_rfc3339(old["renewTime"]) + old["leaseDurationSeconds"]
            assert parse_rfc3339(spec["acquireTime"]) >= expired
            assert spec["leaseTransitions"] == old.get("leaseTransitions", 0) + 1

        # A new ReplicaSet gets its Pods from the surviving controller manager.
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "nodeSelector": {"kubelite.test/nowhere": "true"},
                        "containers": [{"name": "web", "image": "busybox"}],
                    },
                },
            },
        }
        created = await retry(lambda: api.create("replicasets", rs, namespace="default"))

        async def pods_of_rs():
            pods = (await api.list("pods", namespace="default", label_selector="app=web")).items
            uid = created["metadata"]["uid"]
            owned = [
                p
                for p in pods
                if uid in {o["uid"] for o in p["metadata"].get("ownerReferences", [])}
            ]
            return len(owned) == 2

        await eventually_async(
            pods_of_rs,
            timeout=60,
            what="Pods of the new ReplicaSet",
            detail=lambda: ha.logs("kubelite-controller-manager") + ha.logs("kubelite-apiserver"),
        )

        # The agent's proxy, whose first server was the victim, programs a new Service.
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }
        service = await retry(lambda: api.create("services", svc, namespace="default"))

        # The agent's kubelet renews its node Lease through a surviving server.
        async def lease_renewed():
            lease = await api.get("leases", ha.agent_name, namespace="kube-node-lease")
            return parse_rfc3339(lease["spec"]["renewTime"]) > killed_at

        await eventually_async(
            lease_renewed,
            timeout=60,
            what="the agent's node Lease renewed after the loss",
            detail=lambda: ha.agent.log("kubelite-kubelet")[-3000:],
        )
    cluster_ip = service["spec"]["clusterIP"]

    def programmed() -> bool:
        # Without endpoints yet (its Pods have no node), the Service is a REJECT rule.
        rules = _run_in(ha.agent.netns, ["iptables-save"]).stdout
        return cluster_ip in rules

    eventually(programmed, timeout=60, what=f"the agent's rules for {cluster_ip}")
