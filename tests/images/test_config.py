"""Image configs: parsing, and merging with a container spec as Kubernetes defines it."""

from __future__ import annotations

import json

import pytest

from kubelet.images import ImageConfig, ImageConfigError, parse_image_config, resolve_process

DIFF_ID = "sha256:" + "cd" * 32


def _config(runtime: object = None, **top: object) -> bytes:
    data: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [DIFF_ID]},
    }
    if runtime is not None:
        data["config"] = runtime
    data.update(top)
    return json.dumps(data).encode()


def test_parse_full_config() -> None:
    config = parse_image_config(
        _config(
            {
                "Entrypoint": ["/entry"],
                "Cmd": ["-x"],
                "Env": ["PATH=/bin", "A=1"],
                "WorkingDir": "/srv",
                "User": "1000:1000",
                "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
                "Labels": {"k": "v"},
                "StopSignal": "SIGQUIT",
                "Volumes": {"/data": {}},
            },
            variant="",
        )
    )
    assert config == ImageConfig(
        entrypoint=("/entry",),
        cmd=("-x",),
        env=("PATH=/bin", "A=1"),
        working_dir="/srv",
        user="1000:1000",
        exposed_ports=("53/udp", "8080/tcp"),
        labels={"k": "v"},
        stop_signal="SIGQUIT",
        volumes=("/data",),
        diff_ids=(DIFF_ID,),
        os="linux",
        architecture="amd64",
    )


def test_unset_entrypoint_stays_none() -> None:
    config = parse_image_config(_config({"Entrypoint": None}))
    assert config.entrypoint is None and config.cmd is None and config.env == ()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        pytest.param(b"nope", "is not JSON", id="not-json"),
        pytest.param(_config({"Cmd": [1]}), "config.Cmd must be a list of strings", id="cmd"),
        pytest.param(_config({"Env": "A=1"}).replace(b'"A=1"', b"5"), "config.Env", id="env"),
        pytest.param(_config({"Labels": {"a": 1}}), "config.Labels", id="labels"),
        pytest.param(_config({"User": 0}), "User must be a string", id="user"),
        pytest.param(_config(rootfs={"type": "zip"}), "rootfs must be", id="rootfs-type"),
        pytest.param(
            _config(rootfs={"type": "layers", "diff_ids": ["md5:x"]}),
            "rootfs.diff_ids[0]",
            id="diff-id",
        ),
        pytest.param(_config("cmd"), "config must be an object", id="config-type"),
    ],
)
def test_parse_refuses(body: bytes, why: str) -> None:
    with pytest.raises(ImageConfigError) as caught:
        parse_image_config(body, where="image config sha256:abc")
    assert why in str(caught.value)
    assert "image config sha256:abc" in str(caught.value)


IMAGE = ImageConfig(
    entrypoint=("/docker-entrypoint.sh",),
    cmd=("nginx", "-g", "daemon off;"),
    env=("PATH=/usr/bin", "NGINX_VERSION=1.25"),
    working_dir="/usr/share/nginx",
    user="101",
)


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        pytest.param(
            None, None, ("/docker-entrypoint.sh", "nginx", "-g", "daemon off;"), id="image"
        ),
        pytest.param(["/bin/sh"], None, ("/bin/sh",), id="command-replaces-both"),
        pytest.param(None, ["-v"], ("/docker-entrypoint.sh", "-v"), id="args-replace-cmd"),
        pytest.param(["/bin/sh"], ["-c", "x"], ("/bin/sh", "-c", "x"), id="both"),
        pytest.param(
            [], [], ("/docker-entrypoint.sh", "nginx", "-g", "daemon off;"), id="empty-lists"
        ),
    ],
)
def test_resolve_argv(
    command: list[str] | None, args: list[str] | None, argv: tuple[str, ...]
) -> None:
    assert resolve_process(IMAGE, command=command, args=args).argv == argv


def test_resolve_env_cwd_user() -> None:
    process = resolve_process(IMAGE, env=[("NGINX_VERSION", "9"), ("EXTRA", "a=b")])
    assert process.env == ("PATH=/usr/bin", "NGINX_VERSION=9", "EXTRA=a=b")
    assert process.cwd == "/usr/share/nginx" and process.user == "101"
    assert resolve_process(IMAGE, working_dir="/tmp").cwd == "/tmp"
    assert resolve_process(ImageConfig(cmd=("sh",))).cwd == "/"


def test_nothing_to_run_is_an_error() -> None:
    with pytest.raises(ImageConfigError, match="no command to run"):
        resolve_process(ImageConfig())
