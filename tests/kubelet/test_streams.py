"""Logs and exec through the API server's Streams relay and the kubelet's service: tail,
previous, timestamps, follow, errors; exec with exit codes, stdin, and `kctl exec -it` on
a real pseudo-terminal (raw mode, window size, resize, terminal restored)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios

import pytest

from machinery import errors
from machinery.streams import StreamsClient
from tests.conftest import ROOT
from tests.kubelet.conftest import container_status, pod, running, sh, streams_for, wait_pod

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z ")


@pytest.fixture
async def streams(client):
    made = streams_for(client)
    yield made
    await made.close()


async def read_logs(streams: StreamsClient, name: str, **options) -> bytes:
    return b"".join([chunk async for chunk in streams.logs("default", name, **options)])


async def until_logs(streams, name: str, expected: bytes, **options) -> bytes:
    async def poll() -> bytes:
        while expected not in (out := await read_logs(streams, name, **options)):
            await asyncio.sleep(0.1)
        return out

    return await asyncio.wait_for(poll(), 30)


async def test_logs_tail_timestamps_and_streams(client, kubelet, streams):
    script = "for i in 1 2 3 4 5; do echo line-$i; done; echo oops >&2; sleep 3600"
    await client.create("pods", pod("talker", kubelet.config.node_name, sh("main", script)))
    await wait_pod(client, "talker", running, what="Running")
    everything = await until_logs(streams, "talker", b"oops")
    assert everything == b"line-1\nline-2\nline-3\nline-4\nline-5\noops\n"
    assert await read_logs(streams, "talker", tail_lines=2) == b"line-5\noops\n"
    stamped = (await read_logs(streams, "talker", timestamps=True)).splitlines()
    assert len(stamped) == 6 and all(STAMP.match(line) for line in stamped)
    assert stamped[0].endswith(b" line-1")
    assert await read_logs(streams, "talker", since_seconds=3600) == everything


async def test_logs_previous_shows_the_instance_before(client, kubelet, streams):
    script = (
        "n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n; echo run-$n; "
        "if [ $n -ge 2 ]; then sleep 3600; fi; exit 1"
    )
    spec = pod(
        "again",
        kubelet.config.node_name,
        sh("main", script, volumeMounts=[{"name": "data", "mountPath": "/data"}]),
        volumes=[{"name": "data", "emptyDir": {}}],
    )
    await client.create("pods", spec)
    await wait_pod(
        client,
        "again",
        lambda p: (
            running(p)
            and container_status(p, "main").get("restartCount") == 1
            and "running" in container_status(p, "main").get("state", {})
        ),
        what="running its second instance",
    )
    assert await until_logs(streams, "again", b"run-2") == b"run-2\n"
    assert await read_logs(streams, "again", previous=True) == b"run-1\n"


async def test_logs_follow_ends_when_the_container_stops(client, kubelet, streams):
    script = "for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 0.2; done"
    spec = pod("ticker", kubelet.config.node_name, sh("main", script), restartPolicy="Never")
    await client.create("pods", spec)
    await wait_pod(
        client, "ticker", lambda p: container_status(p, "main").get("containerID"), what="started"
    )
    followed = await asyncio.wait_for(read_logs(streams, "ticker", follow=True), 60)
    assert followed.splitlines()[-1] == b"tick-8"
    assert followed.count(b"tick-") == 8


LOG_ERRORS = [
    ("unknown-pod", "ghost", {}, errors.NotFound, 'pods "ghost" not found'),
    (
        "unknown-container",
        "quiet",
        {"container": "nope"},
        errors.BadRequest,
        "container nope is not valid for pod quiet",
    ),
    (
        "no-previous",
        "quiet",
        {"previous": True},
        errors.BadRequest,
        'previous terminated container "main" in pod "quiet" not found',
    ),
]


@pytest.mark.parametrize(
    "name,options,error,message", [e[1:] for e in LOG_ERRORS], ids=[e[0] for e in LOG_ERRORS]
)
async def test_log_errors_are_clear(client, kubelet, streams, name, options, error, message):
    await client.create("pods", pod("quiet", kubelet.config.node_name))
    await wait_pod(client, "quiet", running, what="Running")
    with pytest.raises(error, match=re.escape(message)):
        await read_logs(streams, name, **options)


async def test_exec_exit_code_streams_and_stdin(client, kubelet, streams):
    await client.create("pods", pod("shell", kubelet.config.node_name))
    await wait_pod(client, "shell", running, what="Running")
    async with streams.exec(
        "default", "shell", ["sh", "-c", "echo out; echo err >&2; exit 3"]
    ) as session:
        assert await session.collect() == (b"out\n", b"err\n", 3)
    async with streams.exec("default", "shell", ["tr", "a-z", "A-Z"], stdin=True) as session:
        await session.send(b"hello ")
        await session.send(b"world\n")
        await session.close_stdin()
        assert await session.collect() == (b"HELLO WORLD\n", b"", 0)
    async with streams.exec("default", "shell", ["hostname"]) as session:
        assert (await session.collect())[0] == b"shell\n"


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _read_until(master: int, needle: bytes, seen: bytearray, timeout: float = 30) -> None:
    """Read the pty master (non-blocking, from the event loop) until needle shows up."""
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()

    def readable() -> None:
        try:
            data = os.read(master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(master)
        seen.extend(data)
        arrived.set()

    os.set_blocking(master, False)
    loop.add_reader(master, readable)
    try:

        async def wait() -> None:
            while needle not in seen:
                arrived.clear()
                await arrived.wait()

        await asyncio.wait_for(wait(), timeout)
    except TimeoutError:
        pytest.fail(f"never saw {needle!r} on the terminal; saw {bytes(seen)!r}")
    finally:
        loop.remove_reader(master)


async def test_kctl_exec_it_on_a_real_terminal(client, kubelet, admin_kubeconfig):
    await client.create("pods", pod("tty", kubelet.config.node_name))
    await wait_pod(client, "tty", running, what="Running")
    master, slave = os.openpty()
    _set_size(slave, 30, 100)
    before = termios.tcgetattr(slave)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "--config",
            str(admin_kubeconfig),
            "exec",
            "-it",
            "tty",
            "--",
            "sh",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        start_new_session=True,
    )
    seen = bytearray()
    try:
        await _read_until(master, b"# ", seen)
        os.write(master, b"stty size\n")
        await _read_until(master, b"30 100", seen)
        _set_size(master, 40, 120)
        os.kill(process.pid, signal.SIGWINCH)
        await asyncio.sleep(0.5)  # the resize travels to the kubelet before the next command
        os.write(master, b"stty size; exit 4\n")
        await _read_until(master, b"40 120", seen)
        code = await asyncio.wait_for(asyncio.to_thread(process.wait), 30)
        after = termios.tcgetattr(slave)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    assert code == 4, seen.decode(errors="replace")
    assert after == before  # raw mode undone
    os.close(slave)


async def test_kctl_logs_command(client, kubelet, admin_kubeconfig):
    await client.create(
        "pods", pod("cli", kubelet.config.node_name, sh("main", "echo a; echo b; sleep 3600"))
    )
    await wait_pod(client, "cli", running, what="Running")
    streams = streams_for(client)
    try:
        await until_logs(streams, "cli", b"b\n")
    finally:
        await streams.close()
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "cli.main",
            "--config",
            str(admin_kubeconfig),
            "logs",
            "pod/cli",
            "--tail",
            "1",
        ],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"b\n"
    missing = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "cli.main",
            "--config",
            str(admin_kubeconfig),
            "logs",
            "cli",
            "-c",
            "nope",
        ],
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )
    assert missing.returncode == 1
    assert b"Error from server (BadRequest): container nope is not valid" in missing.stderr
