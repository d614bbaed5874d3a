"""Fault injection for one-host testbeds: stop a node, cut it off, slow or drop its traffic.

    python -m deploy.fault --name CLUSTER stop-node N [--hard]   start-node N
    python -m deploy.fault --name CLUSTER cut-node N                heal-node N
    python -m deploy.fault --name CLUSTER delay-node N --delay 100ms [--jitter 10ms] [--loss 5%]
    python -m deploy.fault --name CLUSTER clear-node N
    python -m deploy.fault --name CLUSTER status | reset

Each fault acts on what a node of a one-host cluster is made of (deploy/layout.py,
deploy/hostnet.py) and is undone by its pair; faults are independent of one another.

- stop-node holds the node's kubelet and proxy in the supervisor (the <state>/held
  protocol of deploy/supervisor.py) and returns once both processes are gone. Its
  containers keep running, as on a machine whose agent died. `--hard` also freezes
  every container of the node (the cgroup freezer on the node's cgroup root), as on a
  machine that hangs: processes stop, sockets stay open, the node's kernel still
  answers ping and TCP handshakes. To make the node vanish from the network too,
  add cut-node. start-node thaws the containers first, then releases the agents, so
  a restarted kubelet never finds its containers frozen.
- cut-node takes the host end of the node's veth down: the node's eth0 loses its
  carrier and every packet to or from the node is lost. heal-node brings it up.
- delay-node shapes the node's link in both directions: a netem qdisc on the host
  end (traffic to the node) and on the node's eth0 (traffic from it), so a round trip
  grows by twice --delay. --loss drops that share of packets in each direction, with
  nftables rules in the node's own namespace (table inet kubelite_fault), so it works
  on kernels built without sch_netem; --delay and --jitter need netem and fail with a
  clear error, changing nothing, where it is missing. A call replaces the node's
  previous shaping; clear-node removes it.

Everything here lives in the cluster's own namespaces, links, cgroups and state
directory. `reset` undoes every fault; a cluster's take-down must at least thaw
frozen containers first (a frozen process cannot be killed), which reset does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator

from deploy import cluster, layout
from deploy.supervisor import HELD_FILE, HOLD_GRACE, read_held

CGROUP_MOUNT = pathlib.Path("/sys/fs/cgroup")
NFT_TABLE = "kubelite_fault"
AGENTS = ("kubelet", "proxy")


class FaultError(Exception):
    """A fault that cannot be applied; the message says what and where."""


# -- the testbed --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NodeTarget:
    """What one node of a one-host cluster is made of, as the fault commands need it."""

    index: int
    name: str
    netns: str
    host_veth: str
    components: tuple[str, ...]
    cgroup_root: str


@dataclasses.dataclass(frozen=True)
class Testbed:
    name: str
    state: pathlib.Path
    layout: dict

    @property
    def nodes(self) -> int:
        return int(self.layout.get("nodes", 0))

    def node(self, index: int) -> NodeTarget:
        """The node numbered index (1-based), or FaultError naming the nodes there are."""
        if not 1 <= index <= self.nodes:
            have = f"nodes 1-{self.nodes}" if self.nodes else "no nodes"
            raise FaultError(f"cluster {self.name} has {have}, no node {index}")
        net = layout.cluster_net(self.layout)
        components = layout.node_components(self.state, self.layout, index)
        return NodeTarget(
            index=index,
            name=layout.node_name(index),
            netns=net.netns(index),
            host_veth=net.host_veth(index),
            components=tuple(c.name for c in components),
            cgroup_root=_cgroup_root(components),
        )


def _cgroup_root(components: list[layout.Component]) -> str:
    """The kubelet's --cgroup-root, read from the command line the supervisor runs."""
    for component in components:
        for arg in component.argv:
            if arg.startswith("--cgroup-root="):
                return arg.split("=", 1)[1]
    raise FaultError("the node's kubelet command line has no --cgroup-root")


def load_testbed(name: str) -> Testbed:
    state = cluster.state_dir(name)
    path = state / "cluster.json"
    if not path.exists():
        raise FaultError(
            f"no cluster named {name} (no {path}); bring one up with deploy/up.sh --name {name}"
        )
    return Testbed(name, state, json.loads(path.read_text()))


def _run(argv: list[str], *, what: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise FaultError(f"failed to {what}: {' '.join(argv)}: {result.stderr.strip()}")
    return result


def _require_netns(node: NodeTarget) -> None:
    if node.netns not in _run(["ip", "netns", "list"], what="list namespaces").stdout.split():
        raise FaultError(
            f"{node.name}'s network namespace {node.netns} does not exist: is the cluster up?"
        )


def _require_link(node: NodeTarget) -> None:
    if _run(["ip", "link", "show", node.host_veth], what="", check=False).returncode != 0:
        raise FaultError(f"{node.name}'s link {node.host_veth} does not exist: is the cluster up?")


# -- holding components in the supervisor -----------------------------------------------


@contextlib.contextmanager
def _held_file_lock(state: pathlib.Path) -> Iterator[None]:
    with open(state / f"{HELD_FILE}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def set_held(state: pathlib.Path, names: tuple[str, ...], *, held: bool) -> frozenset[str]:
    """Add names to (or remove them from) <state>/held atomically; the new held set."""
    with _held_file_lock(state):
        current = read_held(state)
        wanted = current | set(names) if held else current - set(names)
        if wanted != current:
            tmp = state / f"{HELD_FILE}.tmp"
            tmp.write_text("".join(f"{n}\n" for n in sorted(wanted)))
            tmp.replace(state / HELD_FILE)
        return frozenset(wanted)


def wait_supervisor(
    state: pathlib.Path, names: tuple[str, ...], *, held: bool, timeout: float
) -> bool:
    """Wait until status.json shows the hold (or release) took effect; False when it did not.

    Held means held and without a process; released means not held and running.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads((state / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if all(_settled(status.get(n, {}), held) for n in names):
            return True
        time.sleep(0.1)
    return False


def _settled(info: dict, held: bool) -> bool:
    if held:
        return bool(info.get("held")) and not info.get("pid")
    return not info.get("held") and bool(info.get("pid"))


# -- freezing a node's containers ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Freezer:
    """Where a cgroup subtree is frozen: v1's freezer.state or v2's cgroup.freeze."""

    version: int
    path: pathlib.Path

    def frozen(self) -> bool:
        if self.version == 1:
            return (self.path / "freezer.state").read_text().strip() == "FROZEN"
        return (self.path / "cgroup.freeze").read_text().strip() == "1"

    def set(self, frozen: bool, *, timeout: float = 10.0) -> None:
        if self.version == 1:
            (self.path / "freezer.state").write_text("FROZEN" if frozen else "THAWED")
        else:
            (self.path / "cgroup.freeze").write_text("1" if frozen else "0")
        deadline = time.monotonic() + timeout
        while not self._settled(frozen):
            if time.monotonic() > deadline:
                raise FaultError(f"the cgroup {self.path} did not settle within {timeout:.0f}s")
            time.sleep(0.02)

    def _settled(self, frozen: bool) -> bool:
        if self.version == 1:
            state = (self.path / "freezer.state").read_text().strip()
            return state == ("FROZEN" if frozen else "THAWED")
        events = (self.path / "cgroup.events").read_text()
        return f"frozen {1 if frozen else 0}" in events


def freezer_for(cgroup_root: str, *, mount: pathlib.Path = CGROUP_MOUNT) -> Freezer | None:
    """The freezer of a node's cgroup root, or None when the node has no cgroups yet.

    The v1 freezer hierarchy is preferred where it is mounted: it is the one the
    runtime also uses, and v1 and v2 freezing are independent of each other.
    """
    if (mount / "freezer").is_dir():
        path = mount / "freezer" / cgroup_root
        return Freezer(1, path) if path.is_dir() else None
    for unified in (mount, mount / "unified"):
        if (unified / "cgroup.controllers").exists():
            path = unified / cgroup_root
            return Freezer(2, path) if (path / "cgroup.freeze").exists() else None
    raise FaultError(f"no cgroup freezer under {mount}: neither v1's freezer nor cgroup v2")


# -- link shaping ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LinkShape:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_percent: float = 0.0

    def netem_args(self) -> list[str]:
        args = ["delay", f"{self.delay_ms:g}ms"]
        if self.jitter_ms:
            args.append(f"{self.jitter_ms:g}ms")
        return args


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%?$")


def parse_duration(text: str, *, flag: str) -> float:
    """Milliseconds from '100ms', '1.5s' or '250us'."""
    match = _DURATION.match(text.strip())
    if not match:
        raise FaultError(f"{flag}: invalid duration {text!r}: use a number with us, ms or s")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_percent(text: str, *, flag: str) -> float:
    match = _PERCENT.match(text.strip())
    if not match or not 0 <= float(match.group(1)) <= 100:
        raise FaultError(f"{flag}: invalid share {text!r}: use a percentage from 0% to 100%")
    return float(match.group(1))


def check_shape(shape: LinkShape) -> LinkShape:
    if shape.jitter_ms and not shape.delay_ms:
        raise FaultError("--jitter needs --delay: jitter varies a delay")
    if shape.jitter_ms > shape.delay_ms:
        raise FaultError(
            f"--jitter ({shape.jitter_ms:g}ms) must not exceed --delay ({shape.delay_ms:g}ms)"
        )
    if 0 < shape.loss_percent < 0.01:
        raise FaultError(f"--loss {shape.loss_percent:g}% is finer than 0.01%, the finest share")
    if not shape.delay_ms and not shape.loss_percent:
        raise FaultError("delay-node needs --delay or --loss (clear-node removes shaping)")
    return shape


def _tc(node: NodeTarget, *args: str, node_side: bool, check: bool = True):
    """tc qdisc VERB dev DEV ARGS... on the host end of the node's link, or on its eth0."""
    netns = ["-n", node.netns] if node_side else []
    dev = "eth0" if node_side else node.host_veth
    where = f"{node.netns}/eth0" if node_side else dev
    argv = ["tc", *netns, "qdisc", args[0], "dev", dev, *args[1:]]
    return _run(argv, what=f"{args[0]} the qdisc of {where}", check=check)


def _netem_on(node: NodeTarget, *, node_side: bool) -> str:
    """The netem options on one end of the node's link, '' when none."""
    result = _tc(node, "show", node_side=node_side, check=False)
    for line in result.stdout.splitlines():
        if line.startswith("qdisc netem"):
            match = re.search(r" root refcnt \d+ (.*)$", line)
            return (match.group(1) if match else line).strip()
    return ""


def _remove_netem(node: NodeTarget) -> None:
    for node_side in (False, True):
        if _netem_on(node, node_side=node_side):
            _tc(node, "del", "root", node_side=node_side)


def _apply_netem(node: NodeTarget, shape: LinkShape) -> None:
    """netem on both ends, or neither: a failure on the second end undoes the first."""
    try:
        for node_side in (False, True):
            _tc(node, "replace", "root", "netem", *shape.netem_args(), node_side=node_side)
    except FaultError as err:
        _remove_netem(node)
        if "unknown" in str(err).lower():
            raise FaultError(
                "this kernel has no netem qdisc (sch_netem), which --delay and --jitter need: "
                "load it (modprobe sch_netem) or use a kernel built with CONFIG_NET_SCH_NETEM; "
                "--loss alone works without it"
            ) from None
        raise


def _nft(node: NodeTarget, script: str, *, check: bool = True):
    argv = ["ip", "netns", "exec", node.netns, "nft", "-f", "-"]
    result = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise FaultError(f"failed to set {node.name}'s loss rules: {result.stderr.strip()}")
    return result


def _loss_rules(percent: float) -> str:
    # numgen draws 0..9999 per packet, a resolution of 0.01%; the rule drops draws up
    # to the last of the share (9999 for 100%).
    last = max(0, round(percent * 100) - 1)
    return (
        f"table inet {NFT_TABLE}\n"
        f"delete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        "  chain from_link {\n"
        "    type filter hook prerouting priority -300; policy accept;\n"
        f'    iifname "eth0" numgen random mod 10000 <= {last} drop\n'
        "  }\n"
        "  chain to_link {\n"
        "    type filter hook postrouting priority 300; policy accept;\n"
        f'    oifname "eth0" numgen random mod 10000 <= {last} drop\n'
        "  }\n"
        "}\n"
    )


def _loss_on(node: NodeTarget) -> float:
    """The loss share the node's rules drop, 0 when it has none."""
    argv = ["ip", "netns", "exec", node.netns, "nft", "list", "table", "inet", NFT_TABLE]
    result = _run(argv, what="", check=False)
    match = re.search(r"mod 10000 <= (\d+) drop", result.stdout)
    return (int(match.group(1)) + 1) / 100 if match else 0.0


def _remove_loss(node: NodeTarget) -> None:
    argv = ["ip", "netns", "exec", node.netns, "nft", "list", "tables"]
    if f"inet {NFT_TABLE}" in _run(argv, what=f"list {node.netns}'s nftables").stdout:
        _nft(node, f"delete table inet {NFT_TABLE}\n")


# -- the faults --------------------------------------------------------------------------


def stop_node(bed: Testbed, index: int, *, hard: bool = False, timeout: float = 0) -> str:
    node = bed.node(index)
    agents = tuple(c for c in node.components if c.rsplit("/", 1)[-1] in AGENTS)
    set_held(bed.state, agents, held=True)
    if not cluster.supervisor_pid(bed.name):
        note = "the cluster is not running: they stay stopped when it starts"
    elif wait_supervisor(bed.state, agents, held=True, timeout=timeout or HOLD_GRACE + 10):
        note = "stopped"
    else:
        raise FaultError(f"the supervisor did not stop {', '.join(agents)}; see its log")
    what = f"{node.name}: {' and '.join(a.rsplit('/', 1)[-1] for a in agents)} {note}"
    if not hard:
        return f"{what}; its containers keep running"
    freezer = freezer_for(node.cgroup_root)
    if freezer is None:
        return f"{what}; it has no containers to freeze"
    freezer.set(True)
    return f"{what}; its containers are frozen ({freezer.path})"


def start_node(bed: Testbed, index: int, *, timeout: float = 0) -> str:
    node = bed.node(index)
    freezer = freezer_for(node.cgroup_root)
    thawed = ""
    if freezer is not None and freezer.frozen():
        freezer.set(False)
        thawed = "; its containers thawed"
    agents = tuple(c for c in node.components if c.rsplit("/", 1)[-1] in AGENTS)
    set_held(bed.state, agents, held=False)
    if not cluster.supervisor_pid(bed.name):
        return f"{node.name}: released; the cluster is not running{thawed}"
    if not wait_supervisor(bed.state, agents, held=False, timeout=timeout or 30):
        raise FaultError(f"the supervisor did not start {', '.join(agents)}; see its log")
    return f"{node.name}: kubelet and proxy started{thawed}"


def set_link(bed: Testbed, index: int, *, up: bool) -> str:
    node = bed.node(index)
    _require_link(node)
    _run(["ip", "link", "set", node.host_veth, "up" if up else "down"], what="set the link")
    if up:
        return f"{node.name}: link {node.host_veth} up, the node is back on the network"
    return f"{node.name}: link {node.host_veth} down, the node is cut off the network"


def shape_node(bed: Testbed, index: int, shape: LinkShape) -> str:
    check_shape(shape)
    node = bed.node(index)
    _require_netns(node)
    _require_link(node)
    if shape.delay_ms:
        _apply_netem(node, shape)
    else:
        _remove_netem(node)
    try:
        if shape.loss_percent:
            _nft(node, _loss_rules(shape.loss_percent))
        else:
            _remove_loss(node)
    except FaultError:
        _remove_netem(node)
        raise
    return f"{node.name}: {describe_shape(node)}"


def clear_node(bed: Testbed, index: int) -> str:
    node = bed.node(index)
    _require_netns(node)
    _require_link(node)
    _remove_netem(node)
    _remove_loss(node)
    return f"{node.name}: link shaping removed"


def describe_shape(node: NodeTarget) -> str:
    parts = []
    to_node, from_node = _netem_on(node, node_side=False), _netem_on(node, node_side=True)
    if to_node or from_node:
        parts.append(f"netem to node [{to_node or '-'}], from node [{from_node or '-'}]")
    loss = _loss_on(node)
    if loss:
        parts.append(f"loss {loss:g}% each way")
    return ", ".join(parts) or "no shaping"


def reset(bed: Testbed) -> str:
    """Undo every fault of every node, skipping what the cluster no longer has.

    deploy/down.sh needs at least the thaw: a frozen process cannot die, so the
    containers of a hard-stopped node would outlive the cluster.
    """
    done = []
    for index in range(1, bed.nodes + 1):
        node = bed.node(index)
        freezer = freezer_for(node.cgroup_root)
        if freezer is not None and freezer.frozen():
            freezer.set(False)
            done.append(f"{node.name} thawed")
        if _run(["ip", "link", "show", node.host_veth], what="", check=False).returncode == 0:
            if not node_faults(bed, index).link_up:
                _run(["ip", "link", "set", node.host_veth, "up"], what="set the link")
                done.append(f"{node.name} healed")
            if describe_shape(node) != "no shaping":
                clear_node(bed, index)
                done.append(f"{node.name} unshaped")
    held = read_held(bed.state)
    agents = tuple(c for c in held if c.rsplit("/", 1)[-1] in AGENTS)
    if agents:
        set_held(bed.state, agents, held=False)
        running = cluster.supervisor_pid(bed.name)
        if running and not wait_supervisor(bed.state, agents, held=False, timeout=30):
            raise FaultError(f"the supervisor did not start {', '.join(agents)}; see its log")
        done.append(f"released {', '.join(sorted(agents))}")
    return f"cluster {bed.name}: " + ("; ".join(done) or "no faults")


@dataclasses.dataclass(frozen=True)
class NodeFaults:
    name: str
    agents_held: bool
    frozen: bool
    link_up: bool
    shaping: str


def node_faults(bed: Testbed, index: int) -> NodeFaults:
    node = bed.node(index)
    held = read_held(bed.state)
    freezer = freezer_for(node.cgroup_root)
    link = _run(["ip", "-o", "link", "show", node.host_veth], what="", check=False)
    flags = re.search(r"<([^>]*)>", link.stdout)
    return NodeFaults(
        name=node.name,
        agents_held=any(c in held for c in node.components),
        frozen=freezer is not None and freezer.frozen(),
        link_up=flags is not None and "UP" in flags.group(1).split(","),
        shaping=describe_shape(node) if link.returncode == 0 else "no link",
    )


def status(bed: Testbed) -> str:
    lines = [f"{'NODE':<10} {'AGENTS':<9} {'FROZEN':<7} {'LINK':<5} SHAPING"]
    for index in range(1, bed.nodes + 1):
        f = node_faults(bed, index)
        agents = "stopped" if f.agents_held else "running"
        lines.append(
            f"{f.name:<10} {agents:<9} {'yes' if f.frozen else 'no':<7} "
            f"{'up' if f.link_up else 'down':<5} {f.shaping}"
        )
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.fault",
        description="Inject faults into a one-host kubelite cluster's nodes.",
        epilog="Nodes are numbered from 1 as deploy/up.sh made them (node-1, node-2, ...).",
    )
    parser.add_argument("--name", default="kubelite", help="the cluster (default: %(default)s)")
    # --name is also taken after the command, where users tend to put it.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--name", default=argparse.SUPPRESS, help="the cluster")
    sub = parser.add_subparsers(dest="command", required=True)

    def node_command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=[after])
        p.add_argument("node", type=int, help="the node's number (N of node-N)")
        return p

    p = node_command("stop-node", "stop the node's kubelet and proxy; containers keep running")
    p.add_argument("--hard", action="store_true", help="also freeze the node's containers")
    node_command("start-node", "thaw the node's containers and start its kubelet and proxy")
    node_command("cut-node", "take the node's link down: it is cut off the network")
    node_command("heal-node", "bring the node's link back up")
    p = node_command("delay-node", "add latency or loss to the node's link, both directions")
    p.add_argument("--delay", default="0ms", help="added in each direction, e.g. 100ms")
    p.add_argument("--jitter", default="0ms", help="random variation of the delay, e.g. 10ms")
    p.add_argument("--loss", default="0%", help="share of packets lost each way, e.g. 5%%")
    node_command("clear-node", "remove the node's latency and loss")
    sub.add_parser("status", help="show every node's faults", parents=[after])
    sub.add_parser("reset", help="undo every fault of every node", parents=[after])
    return parser


def dispatch(args: argparse.Namespace) -> str:
    bed = load_testbed(cluster.check_name(args.name))
    command = args.command
    if command == "status":
        return status(bed)
    if command == "reset":
        return reset(bed)
    if command == "stop-node":
        return stop_node(bed, args.node, hard=args.hard)
    if command == "start-node":
        return start_node(bed, args.node)
    if command in ("cut-node", "heal-node"):
        return set_link(bed, args.node, up=command == "heal-node")
    if command == "clear-node":
        return clear_node(bed, args.node)
    shape = LinkShape(
        delay_ms=parse_duration(args.delay, flag="--delay"),
        jitter_ms=parse_duration(args.jitter, flag="--jitter"),
        loss_percent=parse_percent(args.loss, flag="--loss"),
    )
    return shape_node(bed, args.node, shape)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("deploy.fault: run as root (it changes links, qdiscs and cgroups)", file=sys.stderr)
        return 1
    try:
        print(dispatch(args))
    except FaultError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
