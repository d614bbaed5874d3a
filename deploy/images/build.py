"""Build kubelite's default images from Debian's busybox-static and push them.

    python -m deploy.images.build --registry 127.0.0.1:5000

builds two OCI images and pushes each as `library/<name>:latest` and
`library/<name>:<busybox version>`:
- busybox: one layer with /bin/busybox, a symlink /bin/<applet> -> busybox
  for every applet `busybox --list` names, /etc/passwd and /etc/group with
  root and nobody, /root, /tmp (mode 1777) and empty mount points
  (/dev, /proc, /sys); Cmd ["sh"].
- httpd: the same base layer plus one with /var/www/index.html; Cmd runs
  busybox httpd in the foreground on port 80, ExposedPorts 80/tcp.
The images are reproducible (see oci.py): the same busybox binary and
SOURCE_DATE_EPOCH give the same digests. The architecture is read from the
binary's ELF header; the applet list and version come from running the
binary, so a busybox for another architecture needs an emulator (binfmt).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from machinery.registry import Platform, RegistryError, RegistryHosts, read_auth_file

from .oci import (
    Entry,
    Image,
    PushResult,
    build_image,
    gzip_layer,
    layer_tar,
    push_image,
    rfc3339,
    source_date_epoch,
    write_oci_layout,
)

BUSYBOX = Path("/bin/busybox")
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HTTPD_CMD = ["httpd", "-f", "-v", "-p", "80", "-h", "/var/www"]
INDEX_HTML = b"""<!DOCTYPE html>
<html>
<head><title>kubelite httpd</title></head>
<body>
<h1>It works!</h1>
<p>kubelite's httpd works: this page is served by busybox httpd from the kubelite default
httpd image.</p>
</body>
</html>
"""
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = b"root:x:0:\nnobody:x:65534:\n"

# ELF e_machine values and the OCI architecture each one is.
_ELF_MACHINES = {
    0x03: "386",
    0x08: "mips",
    0x14: "ppc",
    0x15: "ppc64",
    0x16: "s390x",
    0x28: "arm",
    0x3E: "amd64",
    0xB7: "arm64",
    0xF3: "riscv64",
}
_APPLET_RE = re.compile(r"^[A-Za-z0-9_.\[\]-]+$")


class BuildError(RuntimeError):
    """The busybox binary cannot be turned into images; the message says why."""


@dataclasses.dataclass(frozen=True)
class Busybox:
    """What the images are made of: the binary, its version, applets and architecture."""

    data: bytes
    version: str
    applets: tuple[str, ...]
    platform: Platform


def inspect_busybox(path: Path = BUSYBOX) -> Busybox:
    """Read a busybox binary: its bytes, version, applet names and architecture."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BuildError(f"cannot read {path}: {exc.strerror}; install busybox-static") from None
    platform = elf_platform(data, where=str(path))
    listing = _run(path, "--list")
    applets = tuple(sorted({a for a in listing.split() if a != "busybox"}))
    bad = [a for a in applets if not _APPLET_RE.match(a)]
    if not applets or bad:
        raise BuildError(f"{path} --list gave unusable applet names: {bad or 'none'}")
    match = re.search(r"BusyBox v([0-9]+(?:\.[0-9]+)*)", _run(path, "--help"))
    if not match:
        raise BuildError(f"{path} --help does not say which BusyBox version it is")
    return Busybox(data, match.group(1), applets, platform)


def _run(path: Path, arg: str) -> str:
    try:
        result = subprocess.run([str(path), arg], capture_output=True, timeout=30, check=False)
    except OSError as exc:
        raise BuildError(f"cannot run {path} {arg}: {exc.strerror}") from None
    # `busybox --help` exits 0 on some builds and 1 on others; the text is what counts.
    return (result.stdout + result.stderr).decode(errors="replace")


def elf_platform(data: bytes, *, where: str) -> Platform:
    """The platform an ELF executable is for, from its header."""
    if data[:4] != b"\x7fELF" or len(data) < 20:
        raise BuildError(f"{where} is not an ELF executable")
    byteorder: Literal["little", "big"] = "little" if data[5] == 1 else "big"
    machine = int.from_bytes(data[18:20], byteorder)
    architecture = _ELF_MACHINES.get(machine)
    if architecture is None:
        raise BuildError(f"{where}: ELF machine {machine:#x} has no OCI architecture name here")
    if architecture == "ppc64" and byteorder == "little":
        architecture = "ppc64le"
    variant = "v8" if architecture == "arm64" else ""
    return Platform("linux", architecture, variant)


def base_entries(busybox: Busybox) -> list[Entry]:
    """The busybox base layer: binary, applet links, users, and the usual directories."""
    entries = [Entry(d, "dir", 0o755) for d in ("bin", "dev", "etc", "proc", "sys", "usr", "var")]
    entries += [
        Entry("root", "dir", 0o700),
        Entry("tmp", "dir", 0o1777),
        Entry("bin/busybox", "file", 0o755, busybox.data),
        Entry("etc/passwd", "file", 0o644, PASSWD),
        Entry("etc/group", "file", 0o644, GROUP),
    ]
    entries += [Entry(f"bin/{a}", "symlink", 0o777, target="busybox") for a in busybox.applets]
    return entries


def httpd_entries() -> list[Entry]:
    return [
        Entry("var", "dir", 0o755),
        Entry("var/www", "dir", 0o755),
        Entry("var/www/index.html", "file", 0o644, INDEX_HTML),
    ]


def build_default_images(busybox: Busybox, *, epoch: int | None = None) -> dict[str, Image]:
    """The `busybox` and `httpd` images, built from `busybox` at time `epoch`."""
    epoch = source_date_epoch() if epoch is None else epoch
    created = rfc3339(epoch)
    base = gzip_layer(layer_tar(base_entries(busybox), mtime=epoch))
    www = gzip_layer(layer_tar(httpd_entries(), mtime=epoch))
    base_history = f"kubelite deploy/images: busybox {busybox.version} from busybox-static"
    labels = {
        "org.opencontainers.image.description": "kubelite default image from busybox-static",
        "org.opencontainers.image.version": busybox.version,
    }
    busybox_image = build_image(
        [base],
        platform=busybox.platform,
        runtime={"Env": [DEFAULT_PATH], "Cmd": ["sh"], "Labels": labels},
        created=created,
        history=[base_history],
    )
    httpd_image = build_image(
        [base, www],
        platform=busybox.platform,
        runtime={
            "Env": [DEFAULT_PATH],
            "Cmd": HTTPD_CMD,
            "ExposedPorts": {"80/tcp": {}},
            "WorkingDir": "/var/www",
            "Labels": labels,
        },
        created=created,
        history=[base_history, "kubelite deploy/images: httpd index page"],
    )
    return {"busybox": busybox_image, "httpd": httpd_image}


def push_default_images(
    hosts: RegistryHosts,
    registry: str,
    images: dict[str, Image],
    *,
    tags: Iterable[str],
) -> list[PushResult]:
    """Push each image as library/<name> with every tag; returns what was pushed."""
    client = hosts.client(registry)
    tag_list = tuple(tags)
    return [
        push_image(client, image, repository=f"library/{name}", tags=tag_list)
        for name, image in sorted(images.items())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.images.build",
        description="Build kubelite's default images (busybox, httpd) from busybox-static "
        "and push them to a registry, or write them to an OCI layout.",
    )
    parser.add_argument("--registry", help="registry to push to, host:port")
    parser.add_argument(
        "--insecure", action="store_true", help="plain HTTP (implied for loopback registries)"
    )
    parser.add_argument(
        "--registry-auth-file",
        type=Path,
        help="the registry's user, Docker config format (a cluster's: "
        "<state>/registry/auth/auth.json)",
    )
    parser.add_argument("--ca-file", type=Path, help="CA of the registry's HTTPS certificate")
    parser.add_argument("--busybox", type=Path, default=BUSYBOX, help="busybox binary to use")
    parser.add_argument("--oci-layout", type=Path, help="also write the images to this directory")
    args = parser.parse_args(argv)
    if not args.registry and not args.oci_layout:
        parser.error("give --registry, --oci-layout, or both")
    try:
        busybox = inspect_busybox(args.busybox)
        images = build_default_images(busybox)
        if args.oci_layout:
            tagged = [(f"{n}:{busybox.version}", image) for n, image in sorted(images.items())]
            write_oci_layout(args.oci_layout, tagged)
        if args.registry:
            insecure = frozenset({args.registry}) if args.insecure else frozenset()
            credentials = (
                read_auth_file(str(args.registry_auth_file)) if args.registry_auth_file else {}
            )
            ca_files = {args.registry: str(args.ca_file)} if args.ca_file else {}
            hosts = RegistryHosts(insecure=insecure, credentials=credentials, ca_files=ca_files)
            pushed = push_default_images(
                hosts, args.registry, images, tags=("latest", busybox.version)
            )
            for result in pushed:
                print(json.dumps({"registry": args.registry, **dataclasses.asdict(result)}))
    except (BuildError, RegistryError, OSError) as exc:
        print(f"failed to build the default images: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
