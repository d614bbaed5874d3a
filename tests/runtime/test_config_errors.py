"""Bad configs are refused before anything is made, with a message naming what and where."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubelet.runtime.interface import InvalidConfigError, Mount, Security
from kubelet.runtime.native import NativeRuntime
from tests.runtime.conftest import container, pod

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        pytest.param({"uid": "../../escape"}, "uid '../../escape' must be", id="uid-climbs"),
        pytest.param(
            {"hostname": "Not_A_Host"}, "hostname 'Not_A_Host' is not a valid", id="bad-hostname"
        ),
        pytest.param(
            {"log_directory": "relative/logs"},
            "log_directory 'relative/logs' is not absolute",
            id="relative-log-directory",
        ),
    ],
)
def test_bad_sandbox_configs(runtime: NativeRuntime, overrides, message):
    with pytest.raises(InvalidConfigError, match=message):
        runtime.run_sandbox(pod(**overrides))
    assert runtime.list_sandboxes() == []


@pytest.mark.parametrize(
    ("argv", "overrides", "message"),
    [
        pytest.param((), {}, "argv is empty", id="no-command"),
        pytest.param(("true",), {"name": "a/b"}, "name must be", id="bad-name"),
        pytest.param(
            ("true",),
            {"layers": (Path("/no/such/layer"),)},
            r"layers\[0\] '/no/such/layer' is not a directory",
            id="missing-layer",
        ),
        pytest.param(
            ("true",),
            {"mounts": (Mount("/no/such/dir", "/data"),)},
            r"mounts\[0\]: host_path '/no/such/dir' does not exist",
            id="missing-volume",
        ),
        pytest.param(
            ("true",),
            {"mounts": (Mount("/tmp", "data"),)},
            r"mounts\[0\]: container_path 'data' is not absolute",
            id="relative-dest",
        ),
        pytest.param(
            ("true",),
            {"mounts": (Mount("/tmp", "/data", sub_path="a/../../b"),)},
            r"mounts\[0\]: subPath 'a/../../b' must not contain '..'",
            id="subpath-dotdot",
        ),
        pytest.param(
            ("true",),
            {"security": Security(seccomp_profile="localhost/audit.json")},
            "seccomp profile 'localhost/audit.json': Localhost profiles are not supported",
            id="seccomp-localhost",
        ),
        pytest.param(
            ("true",),
            {"security": Security(add_capabilities=("NET_MAGIC",))},
            "unknown capability 'NET_MAGIC'",
            id="unknown-capability",
        ),
        pytest.param(
            ("true",),
            {"image_user": "nobody"},
            "image user 'nobody' is not in the image's /etc/passwd",
            id="unknown-user",
        ),
    ],
)
def test_bad_container_configs(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, argv, overrides, message
):
    with pytest.raises(InvalidConfigError, match=message):
        runtime.create_container(sandbox, container(busybox_rootfs, *argv, **overrides))
    assert runtime.list_containers() == []
    assert os.listdir(runtime._root / "containers") == []
