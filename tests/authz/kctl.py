"""kctl in a subprocess, awaited: the API server answering it runs in the test's loop."""

from __future__ import annotations

import asyncio
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


async def run_kctl(config: pathlib.Path, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of kctl --config CONFIG ARGV..."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.main",
        "--config",
        str(config),
        *argv,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()
