"""kctl: the command line for kubelite clusters.

Each sub-command is a coroutine taking the parsed arguments and a Session
(the API client for the chosen context and the default namespace). Failures
end as one line on stderr and a non-zero exit status; API errors read like
kubectl's ("Error from server (NotFound): ...").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
from collections.abc import Awaitable, Callable

from cli import access, apply, containers, describe, expose, get, nodes, tokens, workloads
from cli.errors import CliError, from_api
from cli.session import Session
from machinery import config, errors

Command = Callable[[argparse.Namespace, Session], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kctl",
        description="Drive a kubelite cluster: apply manifests, inspect and change objects.",
    )
    parser.add_argument(
        "--server",
        "-s",
        default=os.environ.get("KUBELITE_SERVER", ""),
        help="API server address HOST:PORT, comma-separated for several "
        "(default: from the client config)",
    )
    parser.add_argument(
        "--kubeconfig",
        "--config",
        dest="config",
        default="",
        help="client config file (default: $KUBELITE_CONFIG or ~/.kubelite/config)",
    )
    parser.add_argument("--context", default="", help="context of the client config to use")
    parser.add_argument("--namespace", "-n", default="", help="namespace of the request")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds per API call")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    get.register(commands)
    describe.register(commands)
    apply.register(commands)
    expose.register(commands)
    workloads.register(commands)
    containers.register(commands)
    nodes.register(commands)
    tokens.register(commands)
    access.register(commands)
    return parser


def session_for(args: argparse.Namespace) -> Session:
    path = pathlib.Path(args.config) if args.config else None
    if args.server:
        # --server replaces the addresses only; the credentials still come from the
        # config, when there is one.
        servers = [s.strip() for s in args.server.split(",") if s.strip()]
        try:
            ctx: config.Context | None = config.load_context(path, args.context)
        except config.ConfigError:
            ctx = None
        return Session(
            servers,
            args.namespace or (ctx.namespace if ctx else "default"),
            timeout=args.request_timeout,
            credentials=ctx.credentials if ctx else None,
        )
    try:
        ctx = config.load_context(path, args.context)
    except config.ConfigError as err:
        raise CliError(f"error: {err}") from None
    return Session(
        ctx.servers,
        args.namespace or ctx.namespace,
        timeout=args.request_timeout,
        credentials=ctx.credentials,
    )


async def _run(args: argparse.Namespace) -> int:
    session = session_for(args)
    try:
        return await args.handler(args, session)
    finally:
        await session.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except CliError as err:
        print(err, file=sys.stderr)
        return err.exit_code
    except errors.ApiError as err:
        print(from_api(err), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
