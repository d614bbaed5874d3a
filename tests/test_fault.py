"""Fault injection on a one-host testbed's plumbing, checked with real traffic.

Each test makes a throwaway cluster's host side with deploy.hostnet (a bridge
and two node namespaces, every name with a unique prefix), writes its
cluster.json under a private state root, and drives `python -m deploy.fault`
as a user would. Reachability is checked by pinging from one node namespace
to the other. The supervisor's hold protocol runs a real supervisor over
dummy components (sleep processes) named like a node's agents. Everything
is removed afterwards, also when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from deploy import cluster, hostnet, layout
from deploy.fault import NFT_TABLE, freezer_for

ROOT = pathlib.Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.root


class Bed:
    """A throwaway cluster's layout and, when plumbed, its bridge and node namespaces."""

    def __init__(self, name: str, env: dict[str, str], cluster_json: dict) -> None:
        self.name = name
        self.env = env
        self.layout = cluster_json
        self.state = pathlib.Path(env["KUBELITE_STATE_ROOT"]) / name
        self.net = layout.cluster_net(cluster_json)

    def fault(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "deploy.fault", "--name", self.name, *args]
        return subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60
        )

    def ok(self, *args: str) -> str:
        result = self.fault(*args)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def ping(self, src: int, dst: int, *, count: int = 1) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.net.netns(src), "busybox", "ping"]
        argv += ["-c", str(count), "-W", "1", self.net.node_ip(dst)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30 + count)

    def reachable(self, src: int, dst: int, *, within: float = 10.0) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.ping(src, dst).returncode == 0:
                return True
        return False


def _new_bed(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, nodes: int) -> Bed:
    name = f"f{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "KUBELITE_STATE_ROOT": str(tmp_path / "state")}
    monkeypatch.setenv("KUBELITE_STATE_ROOT", env["KUBELITE_STATE_ROOT"])
    cluster_json, _ = cluster.load_or_create_layout(name, nodes)
    return Bed(name, env, cluster_json)


@pytest.fixture
def layout_only(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Bed:
    """A cluster.json of two nodes with nothing on the host."""
    return _new_bed(tmp_path, monkeypatch, nodes=2)


@pytest.fixture
def bed(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch):
    """Two node namespaces on a bridge, as deploy/up.sh makes them."""
    testbed = _new_bed(tmp_path, monkeypatch, nodes=2)
    try:
        hostnet.ensure_bridge(testbed.net)
        for index in (1, 2):
            hostnet.ensure_node(testbed.net, index)
        yield testbed
    finally:
        hostnet.delete_all(testbed.name)


# -- refusals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["stop-node", "7"], "has nodes 1-2, no node 7", id="unknown-node"),
        pytest.param(["cut-node", "0"], "no node 0", id="node-zero"),
        pytest.param(["cut-node", "1"], "does not exist: is the cluster up?", id="no-link"),
        pytest.param(["clear-node", "2"], "does not exist: is the cluster up?", id="no-netns"),
        pytest.param(["delay-node", "1", "--delay", "100"], "--delay: invalid", id="no-unit"),
        pytest.param(["delay-node", "1", "--loss", "150%"], "--loss: invalid", id="loss-over"),
        pytest.param(["delay-node", "1", "--loss", "0.001%"], "finer than 0.01%", id="loss-fine"),
        pytest.param(["delay-node", "1", "--jitter", "5ms"], "--jitter needs --delay", id="jit"),
        pytest.param(
            ["delay-node", "1", "--delay", "5ms", "--jitter", "9ms"],
            "must not exceed --delay",
            id="jitter-over-delay",
        ),
        pytest.param(["delay-node", "1"], "needs --delay or --loss", id="no-shape"),
    ],
)
def test_bad_input_is_refused_by_name(layout_only: Bed, args: list[str], message: str) -> None:
    result = layout_only.fault(*args)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ")


def test_the_cluster_may_be_named_after_the_command(layout_only: Bed) -> None:
    argv = [sys.executable, "-m", "deploy.fault", "status", "--name", layout_only.name]
    result = subprocess.run(argv, cwd=ROOT, env=layout_only.env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("node-1 ")


def test_an_unknown_cluster_is_named(layout_only: Bed) -> None:
    env = layout_only.env
    argv = [sys.executable, "-m", "deploy.fault", "--name", "nosuch", "status"]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert "no cluster named nosuch" in result.stderr


# -- the network faults ------------------------------------------------------------------


def test_cut_node_drops_its_traffic_and_heal_restores_it(bed: Bed) -> None:
    assert bed.reachable(1, 2)
    out = bed.ok("cut-node", "2")
    assert "cut off the network" in out
    assert bed.ping(1, 2, count=2).returncode != 0
    assert bed.ping(2, 1).returncode != 0
    assert "down" in bed.ok("status").splitlines()[2]
    bed.ok("heal-node", "2")
    assert bed.reachable(1, 2)
    assert bed.reachable(2, 1)


def test_loss_drops_packets_both_ways_until_cleared(bed: Bed) -> None:
    assert bed.reachable(1, 2)
    out = bed.ok("delay-node", "2", "--loss", "100%")
    assert "loss 100% each way" in out
    assert bed.ping(1, 2, count=3).returncode != 0
    assert bed.ping(2, 1, count=2).returncode != 0
    # Node 1 is untouched: it still reaches the bridge.
    to_gateway = ["ip", "netns", "exec", bed.net.netns(1), "busybox", "ping", "-c", "1"]
    to_gateway += ["-W", "2", bed.net.gateway]
    assert subprocess.run(to_gateway, capture_output=True).returncode == 0

    out = bed.ok("clear-node", "2")
    assert "removed" in out
    tables = subprocess.run(
        ["ip", "netns", "exec", bed.net.netns(2), "nft", "list", "tables"],
        capture_output=True,
        text=True,
    ).stdout
    assert NFT_TABLE not in tables
    assert bed.reachable(1, 2)


def _netem_supported(bed: Bed) -> bool:
    """Whether this kernel has sch_netem, probed on the host end of node 1's link."""
    dev = bed.net.host_veth(1)
    probe = ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms"]
    result = subprocess.run(probe, capture_output=True, text=True)
    if result.returncode == 0:
        subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
        return True
    assert "unknown" in result.stderr.lower(), result.stderr
    return False


def _qdiscs(bed: Bed, index: int) -> str:
    host = subprocess.run(
        ["tc", "qdisc", "show", "dev", bed.net.host_veth(index)], capture_output=True, text=True
    ).stdout
    node = subprocess.run(
        ["tc", "-n", bed.net.netns(index), "qdisc", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
    ).stdout
    return host + node


def _min_rtt_ms(result: subprocess.CompletedProcess[str]) -> float:
    match = re.search(r"min/avg/max = ([\d.]+)/", result.stdout)
    assert match, result.stdout
    return float(match.group(1))


def test_delay_shapes_both_directions_or_fails_cleanly_without_netem(bed: Bed) -> None:
    assert bed.reachable(1, 2)
    supported = _netem_supported(bed)
    result = bed.fault("delay-node", "2", "--delay", "60ms", "--jitter", "5ms")
    if not supported:
        # This kernel cannot delay: the error says why and nothing is half applied.
        assert result.returncode == 1
        assert "no netem qdisc (sch_netem)" in result.stderr
        assert "netem" not in _qdiscs(bed, 2)
        assert bed.reachable(1, 2)
        return
    assert result.returncode == 0, result.stderr
    assert _qdiscs(bed, 2).count("qdisc netem") == 2
    # netem holds every packet at least delay - jitter in each direction: a lower bound
    # that a noisy machine can only raise.
    assert _min_rtt_ms(bed.ping(1, 2, count=3)) >= 2 * (60 - 5)
    bed.ok("clear-node", "2")
    assert "netem" not in _qdiscs(bed, 2)
    assert bed.reachable(1, 2)


# -- stopping and starting a node's agents -----------------------------------------------

SUPERVISE = (
    "import pathlib, sys\n"
    "from deploy.layout import Component\n"
    "from deploy.supervisor import Supervisor\n"
    "state = pathlib.Path(sys.argv[1])\n"
    "Supervisor(state, [Component(n, ['sleep', '1000']) for n in sys.argv[2:]]).run()\n"
)
DUMMIES = ("node-1/kubelet", "node-1/proxy", "node-2/kubelet")


def _status(bed: Bed) -> dict:
    try:
        return json.loads((bed.state / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait_status(bed: Bed, check, what: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = _status(bed)
        if status and check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"{what}: {_status(bed)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return pathlib.Path(f"/proc/{pid}").exists() and _proc_state(pid) != "Z"


def _proc_state(pid: int) -> str:
    try:
        text = pathlib.Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return ""
    return re.search(r"^State:\s+(\S)", text, re.M).group(1)


@contextlib.contextmanager
def _supervise(bed: Bed):
    """A real supervisor over sleep processes named like the nodes' agents."""
    log = open(bed.state / "supervisor.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, str(bed.state), *DUMMIES],
        cwd=ROOT,
        env=bed.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_status(bed, lambda s: all(s.get(n, {}).get("pid") for n in DUMMIES), "not started")
        yield bed
    finally:
        pids = [info.get("pid") for info in _status(bed).values()]
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
        for pid in pids:
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _frozen(pid: int) -> bool:
    """Whether the kernel holds the task frozen, as each cgroup layout shows it."""
    if pathlib.Path("/sys/fs/cgroup/freezer").is_dir():
        return _proc_state(pid) == "D"  # v1 shows a frozen task as in uninterruptible sleep
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            base = pathlib.Path("/sys/fs/cgroup")
            if not (base / "cgroup.controllers").exists():
                base = base / "unified"
            events = (base / line[3:].lstrip("/") / "cgroup.events").read_text()
            return "frozen 1" in events
    raise AssertionError(f"no cgroup v2 path for {pid}")


@pytest.fixture
def supervised(layout_only: Bed):
    with _supervise(layout_only) as bed:
        yield bed


@contextlib.contextmanager
def _container_in_node_cgroup(bed: Bed):
    """A sleep process in a cgroup below node 1's cgroup root, as a container would be."""
    root = f"kubelite-{bed.name}-node-1"
    base = pathlib.Path("/sys/fs/cgroup/freezer")
    if not base.is_dir():
        base = pathlib.Path("/sys/fs/cgroup")
        if not (base / "cgroup.controllers").exists():
            base = base / "unified"
    leaf = base / root / "podtest"
    leaf.mkdir(parents=True)
    container = subprocess.Popen(["sleep", "1000"])
    try:
        (leaf / "cgroup.procs").write_text(str(container.pid))
        yield container.pid
    finally:
        freezer = freezer_for(root)
        if freezer is not None and freezer.frozen():
            freezer.set(False)
        container.kill()
        container.wait()
        leaf.rmdir()
        (base / root).rmdir()


@pytest.fixture
def container_in_node_cgroup(supervised: Bed):
    with _container_in_node_cgroup(supervised) as pid:
        yield supervised, pid


def test_stop_node_holds_its_agents_until_start_node(supervised: Bed) -> None:
    bed = supervised
    before = _status(bed)
    out = bed.ok("stop-node", "1")
    assert "node-1: kubelet and proxy stopped; its containers keep running" in out

    status = _status(bed)
    for name in ("node-1/kubelet", "node-1/proxy"):
        assert status[name]["held"] and status[name]["pid"] == 0
        assert not _alive(before[name]["pid"])
    assert status["node-2/kubelet"]["pid"] == before["node-2/kubelet"]["pid"]
    # Held components stay down: several supervisor turns later nothing restarted them.
    time.sleep(1.0)
    status = _status(bed)
    assert status["node-1/kubelet"]["pid"] == 0
    assert "node-1/kubelet" in (bed.state / "held").read_text()

    out = bed.ok("start-node", "1")
    assert "node-1: kubelet and proxy started" in out
    status = _status(bed)
    for name in ("node-1/kubelet", "node-1/proxy"):
        assert not status[name]["held"] and _alive(status[name]["pid"])
        assert status[name]["restarts"] == 0  # a hold is not a crash
    assert (bed.state / "held").read_text() == ""


def test_hard_stop_freezes_the_nodes_containers_and_start_thaws_them(
    container_in_node_cgroup,
) -> None:
    bed, pid = container_in_node_cgroup
    out = bed.ok("stop-node", "1", "--hard")
    assert "its containers are frozen" in out
    assert _frozen(pid)
    assert "yes" in bed.ok("status").splitlines()[1]

    out = bed.ok("start-node", "1")
    assert "its containers thawed" in out
    assert not _frozen(pid) and _alive(pid)  # running again, not restarted
    assert _status(bed)["node-1/kubelet"]["pid"]


def test_reset_undoes_every_fault_at_once(bed: Bed) -> None:
    with _supervise(bed), _container_in_node_cgroup(bed) as pid:
        bed.ok("stop-node", "1", "--hard")
        bed.ok("cut-node", "2")
        bed.ok("delay-node", "1", "--loss", "100%")
        assert _frozen(pid)
        assert not bed.reachable(1, 2, within=1)

        out = bed.ok("reset")
        for done in ("node-1 thawed", "node-2 healed", "node-1 unshaped", "released node-1"):
            assert done in out, out
        assert not _frozen(pid) and _alive(pid)
        assert bed.reachable(1, 2)
        assert not any(info["held"] for info in _status(bed).values())
        assert bed.ok("reset").strip() == f"cluster {bed.name}: no faults"
