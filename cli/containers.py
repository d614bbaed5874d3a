"""kctl logs, exec and top: reaching into running containers, through the API server.

logs and exec use the API server's Streams service (machinery/streams.py), which relays
to the Pod's kubelet, so they work from wherever kctl reaches the API server. `exec -it`
puts the local terminal in raw mode (restored on every exit path), forwards window size
changes (SIGWINCH) as resizes, and exits with the remote command's status.

top reads the usage figures each kubelet publishes on its Node, in the annotation
kubelite.io/usage (see kubelet/usage.py): no metrics server is needed, and the figures
are at most one kubelet usage interval (15 s) old.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from typing import Any

from cli.errors import CliError
from cli.session import Session
from machinery import errors, quantity
from machinery.streams import ExecSession, StreamsClient

USAGE_ANNOTATION = "kubelite.io/usage"
_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+s)?$")


def register(commands: argparse._SubParsersAction) -> None:
    logs = commands.add_parser(
        "logs", help="print the logs of a container", description="Print a container's logs."
    )
    logs.add_argument("pod", metavar="POD", help="pod name, or pod/NAME")
    logs.add_argument("-c", "--container", default="", help="container (default: the only one)")
    logs.add_argument("-f", "--follow", action="store_true", help="stream new lines as written")
    logs.add_argument(
        "-p", "--previous", action="store_true", help="the previous, terminated instance"
    )
    logs.add_argument("--tail", type=int, default=-1, help="last N lines (default: all)")
    logs.add_argument("--timestamps", action="store_true", help="prefix lines with their time")
    logs.add_argument("--since", default="", help="only newer lines, e.g. 10s, 5m, 1h")
    logs.set_defaults(handler=run_logs)

    exec_ = commands.add_parser(
        "exec",
        help="run a command in a container",
        description="Run a command in a running container: kctl exec POD [-c C] [-it] -- CMD",
    )
    exec_.add_argument("pod", metavar="POD", help="pod name, or pod/NAME")
    exec_.add_argument("-c", "--container", default="", help="container (default: the only one)")
    exec_.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    exec_.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    exec_.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    exec_.set_defaults(handler=run_exec)

    top = commands.add_parser(
        "top", help="show CPU and memory usage", description="Show usage of nodes or pods."
    )
    which = top.add_subparsers(dest="what", metavar="node|pod")
    which.required = True
    node = which.add_parser("node", aliases=["nodes", "no"], help="usage of nodes")
    node.add_argument("name", nargs="?", default="")
    node.add_argument("--no-headers", action="store_true")
    node.set_defaults(handler=run_top_node)
    pod = which.add_parser("pod", aliases=["pods", "po"], help="usage of pods")
    pod.add_argument("name", nargs="?", default="")
    pod.add_argument("-A", "--all-namespaces", action="store_true")
    pod.add_argument("--containers", action="store_true", help="one row per container")
    pod.add_argument("--no-headers", action="store_true")
    pod.set_defaults(handler=run_top_pod)


def _pod_name(text: str) -> str:
    kind, sep, name = text.partition("/")
    if not sep:
        return text
    if kind not in ("pod", "pods", "po") or not name:
        raise CliError(f"error: {text!r}: only pods have logs and exec (pod/NAME)")
    return name


def parse_since(text: str) -> int:
    if not text:
        return 0
    match = _DURATION.match(text)
    if not match or not any(match.groups()):
        raise CliError(f"error: --since {text!r}: expected a duration such as 30s, 5m or 1h")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# -- logs ---------------------------------------------------------------------------------------


async def run_logs(args: argparse.Namespace, session: Session) -> int:
    since = parse_since(args.since)
    out = sys.stdout.buffer
    async with StreamsClient(session.api.servers, credentials=session.api.credentials) as streams:
        async for chunk in streams.logs(
            session.namespace,
            _pod_name(args.pod),
            container=args.container,
            follow=args.follow,
            previous=args.previous,
            tail_lines=args.tail,
            timestamps=args.timestamps,
            since_seconds=since,
        ):
            out.write(chunk)
            out.flush()
    return 0


# -- exec ---------------------------------------------------------------------------------------


def _terminal_size() -> tuple[int, int]:
    """The local terminal's (columns, lines): the terminal itself, not $COLUMNS/$LINES,
    which go stale when the window is resized."""
    for fd in (1, 0, 2):
        try:
            size = os.get_terminal_size(fd)
            return size.columns, size.lines
        except OSError:
            continue
    return 80, 24


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal at fd in raw mode for the block, restored however the block ends."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _stdin_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[bytes | None]) -> None:
    """Read stdin on a daemon thread (works for terminals, pipes and files alike)."""
    try:
        while True:
            data = os.read(0, 65536)
            loop.call_soon_threadsafe(queue.put_nowait, data or None)
            if not data:
                return
    except OSError:
        loop.call_soon_threadsafe(queue.put_nowait, None)


async def _forward_stdin(exec_session: ExecSession, queue: asyncio.Queue[bytes | None]) -> None:
    while (data := await queue.get()) is not None:
        await exec_session.send(data)
    await exec_session.close_stdin()


async def run_exec(args: argparse.Namespace, session: Session) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("error: you must specify at least one command for the container")
    use_tty = args.tty
    if use_tty and args.stdin and not os.isatty(0):
        print("Unable to use a TTY - input is not a terminal", file=sys.stderr)
        use_tty = False
    width, height = _terminal_size() if use_tty else (0, 0)
    async with StreamsClient(session.api.servers, credentials=session.api.credentials) as streams:
        exec_session = streams.exec(
            session.namespace,
            _pod_name(args.pod),
            command,
            container=args.container,
            stdin=args.stdin,
            tty=use_tty,
            width=width,
            height=height,
        )
        raw = raw_terminal(0) if use_tty and args.stdin else contextlib.nullcontext()
        with raw:
            return await _interact(exec_session, stdin=args.stdin, tty=use_tty)


async def _interact(exec_session: ExecSession, *, stdin: bool, tty: bool) -> int:
    loop = asyncio.get_running_loop()
    async with exec_session:
        tasks = []
        if stdin:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            threading.Thread(target=_stdin_reader, args=(loop, queue), daemon=True).start()
            tasks.append(asyncio.create_task(_forward_stdin(exec_session, queue)))
        if tty:

            def resized() -> None:
                columns, lines = _terminal_size()
                tasks.append(asyncio.create_task(exec_session.resize(columns, lines)))

            loop.add_signal_handler(signal.SIGWINCH, resized)
        try:
            async for output in exec_session:
                os.write(1 if output.stream == "stdout" else 2, output.data)
        finally:
            if tty:
                loop.remove_signal_handler(signal.SIGWINCH)
            for task in tasks:
                task.cancel()
    if exec_session.error:
        raise CliError(f"error: {exec_session.error}")
    return exec_session.exit_code if exec_session.exit_code is not None else 1


# -- top ----------------------------------------------------------------------------------------


def _usage(node: dict[str, Any]) -> dict[str, Any] | None:
    raw = (node.get("metadata", {}).get("annotations") or {}).get(USAGE_ANNOTATION)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _percent(used: str | None, total: str | None, *, cpu: bool) -> str:
    if not used or not total:
        return "<unknown>"
    if cpu:
        part, whole = quantity.cpu_millis(used), quantity.cpu_millis(total)
    else:
        part, whole = quantity.to_bytes(used), quantity.to_bytes(total)
    return f"{round(100 * part / whole)}%" if whole else "<unknown>"


def _columns(rows: list[list[str]], headers: list[str], no_headers: bool) -> str:
    table = rows if no_headers else [headers, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    return "\n".join(
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table
    )


async def _nodes(session: Session, name: str) -> list[dict[str, Any]]:
    if name:
        try:
            return [await session.api.get("nodes", name)]
        except errors.NotFound:
            raise CliError(f'Error from server (NotFound): nodes "{name}" not found') from None
    return (await session.api.list_all("nodes")).items


async def run_top_node(args: argparse.Namespace, session: Session) -> int:
    rows = []
    for node in await _nodes(session, args.name):
        usage = _usage(node)
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        name = node["metadata"]["name"]
        if usage is None:
            rows.append([name, "<unknown>", "<unknown>", "<unknown>", "<unknown>"])
            continue
        cpu, memory = usage["node"].get("cpu"), usage["node"].get("memory")
        rows.append(
            [
                name,
                cpu or "<unknown>",
                _percent(cpu, allocatable.get("cpu"), cpu=True),
                memory or "<unknown>",
                _percent(memory, allocatable.get("memory"), cpu=False),
            ]
        )
    if not rows:
        raise CliError("error: metrics not available yet")
    headers = ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]
    print(_columns(sorted(rows), headers, args.no_headers))
    return 0


def _sum(values: list[str], *, cpu: bool) -> str:
    if cpu:
        return f"{sum(quantity.cpu_millis(v) for v in values)}m"
    return f"{sum(quantity.to_bytes(v) for v in values) // (1024 * 1024)}Mi"


async def run_top_pod(args: argparse.Namespace, session: Session) -> int:
    namespace = "" if args.all_namespaces else session.namespace
    rows = []
    for node in await _nodes(session, ""):
        usage = _usage(node) or {}
        for key, pod in (usage.get("pods") or {}).items():
            pod_namespace, _, pod_name = key.partition("/")
            if (namespace and pod_namespace != namespace) or (args.name and pod_name != args.name):
                continue
            containers = pod.get("containers") or {}
            prefix = [pod_namespace] if args.all_namespaces else []
            if args.containers:
                for cname, figures in sorted(containers.items()):
                    rows.append(
                        [
                            *prefix,
                            pod_name,
                            cname,
                            figures.get("cpu", "<unknown>"),
                            figures.get("memory", "<unknown>"),
                        ]
                    )
            else:
                cpus = [c["cpu"] for c in containers.values() if "cpu" in c]
                memory = [c["memory"] for c in containers.values() if "memory" in c]
                rows.append(
                    [
                        *prefix,
                        pod_name,
                        _sum(cpus, cpu=True) if cpus else "<unknown>",
                        _sum(memory, cpu=False),
                    ]
                )
    if not rows:
        where = f'pod "{args.name}"' if args.name else f"namespace {namespace or 'any'}"
        raise CliError(f"error: metrics not available yet for {where}")
    headers = (["NAMESPACE"] if args.all_namespaces else []) + ["NAME"]
    headers += (["CONTAINER"] if args.containers else []) + ["CPU(cores)", "MEMORY(bytes)"]
    print(_columns(sorted(rows), headers, args.no_headers))
    return 0
