"""Operator commands for a node's Pod network, run in the node's network namespace.

    python -m kubelet.podnet cleanup [--prefix kubelite] [--state-dir DIR]

cleanup removes what the bridge plugin and the route syncer made: the bridge,
every Pod veth, the routes carrying the route protocol, the PODNET-<PREFIX>-*
chains and their jumps, and the state directory when given. Run it after the
kubelet has stopped (Pods lose their network).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubelet.podnet.cleanup import cleanup
from kubelet.podnet.config import ROUTE_PROTOCOL, PodNetworkError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kubelet.podnet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    clean = commands.add_parser("cleanup", help="remove the node's Pod network")
    clean.add_argument("--prefix", default="kubelite", help="name prefix (default: %(default)s)")
    clean.add_argument("--state-dir", type=Path, help="the plugin's state directory, to delete")
    clean.add_argument("--iptables", default="iptables", help="iptables binary to use")
    clean.add_argument(
        "--route-protocol", type=int, default=ROUTE_PROTOCOL, help="routing protocol number"
    )
    args = parser.parse_args(argv)
    try:
        done = cleanup(
            args.prefix,
            state_dir=args.state_dir,
            iptables=args.iptables,
            protocol=args.route_protocol,
        )
    except (PodNetworkError, ValueError) as err:
        print(f"cleanup failed: {err}", file=sys.stderr)
        return 1
    print(
        f"removed {done.links} links, {done.routes} routes, {done.chains} chains, "
        f"{done.jumps} jumps" + (", the state directory" if done.state_removed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
