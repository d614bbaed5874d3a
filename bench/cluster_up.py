"""How long a one-host testbed takes to come up, and the headline example to run.

    .venv/bin/python bench/cluster_up.py [--nodes 3]

Brings up a fresh cluster of its own (unique name, private state root and
client config; packages are expected to be installed already) with
deploy/up.sh, timing until every node is Ready and the default images are in
the registry (up.sh returns only then: the CA and certificates made, the
join token published, every kubelet joined with it); then times
`kctl run httpd-app --image=httpd --replicas=2` until both Pods are Running,
as seen through a watch; then takes the cluster down again. The yardstick is
kind, which takes about a minute to create a cluster.

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KIND_CREATE_S = 60.0


async def watch_running(config_path: str, selector: str, count: int, timeout: float) -> float:
    """Seconds from now until `count` Pods matching selector are Running."""
    from machinery import config
    from machinery.client import ApiClient

    # As kctl does: the admin context the bring-up wrote, certificate and all.
    context = config.load_context(pathlib.Path(config_path))
    started = time.perf_counter()
    async with ApiClient(context.servers, credentials=context.credentials) as api:
        page = await api.list("pods", label_selector=selector)
        version = page.resource_version
        running = {
            p["metadata"]["name"]
            for p in page.items
            if p.get("status", {}).get("phase") == "Running"
        }
        if len(running) >= count:
            return 0.0

        async def follow() -> None:
            async for event in api.watch("pods", label_selector=selector, resource_version=version):
                if event.type == "BOOKMARK":
                    continue
                name = event.object["metadata"]["name"]
                if (
                    event.type != "DELETED"
                    and event.object.get("status", {}).get("phase") == "Running"
                ):
                    running.add(name)
                else:
                    running.discard(name)
                if len(running) >= count:
                    return

        await asyncio.wait_for(follow(), timeout)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    name = f"b{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="kubelite-bench-up-") as tmp:
        env = {
            **os.environ,
            "KUBELITE_STATE_ROOT": f"{tmp}/state",
            "KUBELITE_CONFIG": f"{tmp}/config",
        }
        try:
            started = time.perf_counter()
            up = subprocess.run(
                [str(ROOT / "deploy/up.sh"), "--nodes", str(args.nodes), "--name", name],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            up_s = time.perf_counter() - started
            if up.returncode != 0:
                raise SystemExit(f"deploy/up.sh failed:\n{up.stdout}{up.stderr}")
            started = time.perf_counter()
            run = subprocess.run(
                [str(ROOT / ".venv/bin/kctl"), "run", "httpd-app", "--image=httpd", "--replicas=2"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if run.returncode != 0:
                raise SystemExit(f"kctl run failed: {run.stderr}")
            asyncio.run(watch_running(env["KUBELITE_CONFIG"], "app=httpd-app", 2, timeout=120))
            run_s = time.perf_counter() - started
        finally:
            subprocess.run(
                [str(ROOT / "deploy/down.sh"), "--name", name, "--purge"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=300,
            )
    result = {
        "up_s": round(up_s, 2),
        "run_to_running_s": round(run_s, 2),
        "nodes": args.nodes,
        "yardstick_kind_create_s": KIND_CREATE_S,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
