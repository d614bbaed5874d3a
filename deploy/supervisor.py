"""Run a one-host cluster's components and restart any that dies.

The supervisor is one detached process per cluster. It reads the cluster's
layout from <state>/cluster.json, starts each component as a child process
with its output appended to <state>/logs/<component>.log, and restarts a
component that exits, with a back-off that doubles from 0.5 s to 30 s and
resets after a component has stayed up for a minute. SIGTERM stops the
components in reverse start order (SIGTERM, then SIGKILL after a grace
period) and then the supervisor itself.

The supervisor's own log, <state>/logs/supervisor.log, records every start,
exit and restart with the component's name, PID and exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from machinery import log as logsetup
from machinery.log import get_logger

log = get_logger("supervisor")

STABLE_AFTER = 60.0


@dataclasses.dataclass
class Component:
    name: str
    argv: list[str]
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay: float = 0.5
    next_start: float = 0.0
    restarts: int = 0


def components_for(state: pathlib.Path, layout: dict) -> list[Component]:
    """The processes of the cluster described by layout, in start order."""
    python = sys.executable
    ports = layout["ports"]
    etcd_data = state / "etcd"
    result = [
        Component(
            "etcd",
            [
                "etcd",
                f"--name={layout['name']}",
                f"--data-dir={etcd_data}",
                f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
                f"--initial-cluster={layout['name']}=http://127.0.0.1:{ports['etcd_peer']}",
                "--log-level=warn",
                "--logger=zap",
            ],
        ),
        Component(
            "apiserver",
            [
                python,
                "-m",
                "apiserver.main",
                f"--etcd-servers=127.0.0.1:{ports['etcd']}",
                f"--listen=127.0.0.1:{ports['apiserver']}",
                f"--etcd-prefix=/registry/{layout['name']}",
                f"--metrics-port={ports['apiserver_metrics']}",
            ],
        ),
        Component(
            "scheduler",
            [
                python,
                "-m",
                "scheduler.main",
                f"--server=127.0.0.1:{ports['apiserver']}",
                f"--metrics-port={ports['scheduler_metrics']}",
            ],
        ),
    ]
    return result


class Supervisor:
    def __init__(self, state: pathlib.Path) -> None:
        self.state = state
        self.layout = json.loads((state / "cluster.json").read_text())
        self.components = components_for(state, self.layout)
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stopping = False

    def start(self, component: Component) -> None:
        out = open(self.logs / f"{component.name}.log", "ab")
        env = {**os.environ, **component.env}
        try:
            component.process = subprocess.Popen(
                component.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.layout["root"],
            )
        except OSError as err:
            log.error("failed to start component", component=component.name, err=err)
            component.next_start = time.monotonic() + component.delay
            component.delay = min(component.delay * 2, 30.0)
            return
        finally:
            out.close()
        component.started_at = time.monotonic()
        log.info("started component", component=component.name, pid=component.process.pid)

    def check(self, component: Component) -> None:
        process = component.process
        now = time.monotonic()
        if process is None:
            if now >= component.next_start:
                self.start(component)
            return
        code = process.poll()
        if code is None:
            if now - component.started_at > STABLE_AFTER:
                component.delay = 0.5
            return
        component.process = None
        component.restarts += 1
        component.next_start = now + component.delay
        log.warning(
            "component exited, restarting",
            component=component.name,
            pid=process.pid,
            exit_code=code,
            restarts=component.restarts,
            delay_s=component.delay,
            log=str(self.logs / f"{component.name}.log"),
        )
        component.delay = min(component.delay * 2, 30.0)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        (self.state / "supervisor.pid").write_text(str(os.getpid()))
        self.write_status()
        for component in self.components:
            self.start(component)
        while not self.stopping:
            for component in self.components:
                self.check(component)
            self.write_status()
            time.sleep(0.2)
        self.stop_all()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def write_status(self) -> None:
        status = {
            c.name: {"pid": c.process.pid if c.process else 0, "restarts": c.restarts}
            for c in self.components
        }
        tmp = self.state / "status.json.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(self.state / "status.json")

    def stop_all(self, grace: float = 10.0) -> None:
        for component in reversed(self.components):
            process = component.process
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.info("stopped component", component=component.name, pid=process.pid)
        (self.state / "supervisor.pid").unlink(missing_ok=True)
        (self.state / "status.json").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Supervise the components of a one-host kubelite cluster."
    )
    parser.add_argument(
        "--state", required=True, type=pathlib.Path, help="the cluster's state directory"
    )
    args = parser.parse_args(argv)
    logsetup.setup()
    Supervisor(args.state).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
