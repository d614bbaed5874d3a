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

Holding a component (fault injection, `python -m deploy.fault`): the file
<state>/held lists component names, one a line ('#' starts a comment). The
supervisor rereads it every turn of its loop. A held component is not
started, and a held one that runs is stopped (SIGTERM, SIGKILL after
HOLD_GRACE seconds) without counting as a restart; once its name leaves the
file it starts on the next turn with a fresh back-off. status.json reports
`"held": true` for it, with pid 0 once its process is gone, which is how a
writer of the file learns the hold took effect. Writers replace the file
atomically (write a temporary file, rename it over).
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

from deploy import layout
from deploy.layout import Component
from machinery import log as logsetup
from machinery.log import get_logger

log = get_logger("supervisor")

STABLE_AFTER = 60.0
HELD_FILE = "held"
HOLD_GRACE = 10.0


def read_held(state: pathlib.Path) -> frozenset[str]:
    """The component names <state>/held lists; none when the file is absent."""
    try:
        text = (state / HELD_FILE).read_text()
    except FileNotFoundError:
        return frozenset()
    names = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(name for name in names if name)


@dataclasses.dataclass
class Running:
    """A component and the state of its process."""

    spec: Component
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay: float = 0.5
    next_start: float = 0.0
    restarts: int = 0
    stop_sent_at: float = 0.0  # when a hold sent SIGTERM; 0 when none is pending

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def argv(self) -> list[str]:
        if self.spec.netns:
            # Enter the network namespace only, and exec (the PID stays the component's).
            # `ip netns exec` would also give it a mount namespace with a fresh /sys, hiding
            # the cgroup hierarchies and keeping container mounts out of the host's view.
            return ["nsenter", f"--net=/run/netns/{self.spec.netns}", "--", *self.spec.argv]
        return self.spec.argv


class Supervisor:
    def __init__(self, state: pathlib.Path, components: list[Component] | None = None) -> None:
        self.state = state
        self.layout = json.loads((state / "cluster.json").read_text())
        if components is None:
            components = layout.components(state, self.layout)
        self.components = [Running(c) for c in components]
        self.logs = state / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.stopping = False
        self.held: frozenset[str] = frozenset()

    def start(self, component: Running) -> None:
        out = open(self.logs / f"{component.name.replace('/', '-')}.log", "ab")
        env = {**os.environ, **component.spec.env}
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
        component.stop_sent_at = 0.0
        log.info("started component", component=component.name, pid=component.process.pid)

    def check(self, component: Running) -> None:
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
            log=str(self.logs / f"{component.name.replace('/', '-')}.log"),
        )
        component.delay = min(component.delay * 2, 30.0)

    def hold(self, component: Running) -> None:
        """Keep a held component stopped: stop its process if it runs, never start it."""
        process = component.process
        if process is None:
            return
        if process.poll() is not None:
            log.info("held component stopped", component=component.name, pid=process.pid)
            component.process = None
            component.delay = 0.5
            component.next_start = 0.0
            return
        now = time.monotonic()
        if not component.stop_sent_at:
            log.info("holding component, stopping it", component=component.name, pid=process.pid)
            process.terminate()
            component.stop_sent_at = now
        elif now - component.stop_sent_at > HOLD_GRACE:
            process.kill()

    def update_held(self) -> None:
        held = read_held(self.state)
        if held != self.held:
            known = {c.name for c in self.components}
            log.info("held components changed", held=",".join(sorted(held)) or "none")
            for name in sorted(held - known):
                log.warning("held file names no component", component=name)
            self.held = held

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        (self.state / "supervisor.pid").write_text(str(os.getpid()))
        self.update_held()
        self.write_status()
        for component in self.components:
            if component.name not in self.held:
                self.start(component)
        while not self.stopping:
            self.update_held()
            for component in self.components:
                if component.name in self.held:
                    self.hold(component)
                else:
                    self.check(component)
            self.write_status()
            time.sleep(0.2)
        self.stop_all()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def write_status(self) -> None:
        status = {
            c.name: {
                "pid": c.process.pid if c.process else 0,
                "restarts": c.restarts,
                "held": c.name in self.held,
            }
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
