"""The kubelet's pure decisions, table-driven: status and phase, environment, DNS, back-off,
flags, node capacity and conditions, volume payloads, container configs. No root needed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kubelet import containers as cspec
from kubelet import dns, node, status
from kubelet.backoff import Backoff
from kubelet.config import Backoff as Policy
from kubelet.config import ConfigError, parse_labels, parse_reserved, parse_taints
from kubelet.envvars import EnvContext, EnvError, container_env, expand, resource_value
from kubelet.images import ImageConfig
from kubelet.runtime.interface import ContainerState, ContainerStatus
from kubelet.server import pick_container
from kubelet.volumes import VolumeError, configmap_payload, host_path_volume, write_atomic
from machinery.clock import FakeClock
from machinery.errors import BadRequest


def instance(state: str, *, exit_code: int | None = None, attempt: int = 0) -> ContainerStatus:
    return ContainerStatus(
        id=f"c{attempt}{state}",  # type: ignore[arg-type]
        sandbox_id="s",  # type: ignore[arg-type]
        name="main",
        state=ContainerState(state),
        created_at=1000.0,
        started_at=1001.0,
        finished_at=1002.0 if state == "exited" else None,
        exit_code=exit_code,
        reason="" if exit_code is None else ("Completed" if exit_code == 0 else "Error"),
        message="",
        pid=None,
        log_path="/x",
        attempt=attempt,
        labels={},
        annotations={},
    )


def view(latest=None, previous=None, waiting=None, ready=False, name="main"):
    return status.ContainerView(
        spec={"name": name, "image": "busybox"},
        latest=latest,
        previous=previous,
        waiting=waiting,
        ready=ready,
        started=ready,
    )


PHASES = [
    (
        "nothing-started-is-pending",
        "Always",
        [],
        [view(waiting=("ContainerCreating", ""))],
        "Pending",
    ),
    ("running", "Always", [], [view(instance("running"))], "Running"),
    (
        "exited-zero-never-succeeds",
        "Never",
        [],
        [view(instance("exited", exit_code=0))],
        "Succeeded",
    ),
    ("exited-nonzero-never-fails", "Never", [], [view(instance("exited", exit_code=1))], "Failed"),
    (
        "exited-nonzero-onfailure-restarts",
        "OnFailure",
        [],
        [view(instance("exited", exit_code=1), waiting=("CrashLoopBackOff", ""))],
        "Running",
    ),
    (
        "exited-zero-onfailure-succeeds",
        "OnFailure",
        [],
        [view(instance("exited", exit_code=0))],
        "Succeeded",
    ),
    (
        "exited-always-is-running",
        "Always",
        [],
        [view(instance("exited", exit_code=0), waiting=("CrashLoopBackOff", ""))],
        "Running",
    ),
    (
        "one-running-one-done",
        "Never",
        [],
        [view(instance("running")), view(instance("exited", exit_code=1), name="b")],
        "Running",
    ),
    (
        "init-running-is-pending",
        "Always",
        [view(instance("running"), name="init")],
        [view(waiting=("PodInitializing", ""))],
        "Pending",
    ),
    (
        "init-failed-never-fails",
        "Never",
        [view(instance("exited", exit_code=2), name="init")],
        [view(waiting=("PodInitializing", ""))],
        "Failed",
    ),
    (
        "init-failed-always-pending",
        "Always",
        [view(instance("exited", exit_code=2), waiting=("CrashLoopBackOff", ""), name="init")],
        [view(waiting=("PodInitializing", ""))],
        "Pending",
    ),
    (
        "init-done-app-running",
        "Never",
        [view(instance("exited", exit_code=0), name="init")],
        [view(instance("running"))],
        "Running",
    ),
]


@pytest.mark.parametrize(
    "policy,init,app,expected", [p[1:] for p in PHASES], ids=[p[0] for p in PHASES]
)
def test_phase(policy, init, app, expected):
    assert status.phase(policy, init, app) == expected


def test_container_status_of_a_restarting_container():
    entry = status.container_status(
        view(
            instance("exited", exit_code=1, attempt=3),
            previous=instance("exited", exit_code=1, attempt=2),
            waiting=("CrashLoopBackOff", "back-off 20s"),
        )
    )
    assert entry["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}
    assert entry["lastState"]["terminated"]["exitCode"] == 1
    assert entry["lastState"]["terminated"]["reason"] == "Error"
    assert entry["restartCount"] == 3
    assert entry["containerID"] == "kubelite://c3exited"
    assert entry["ready"] is False


def test_pod_status_conditions_keep_transition_times_and_others_conditions():
    pod = {
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "main"}]},
        "status": {
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastTransitionTime": "2019-01-01T00:00:00Z",
                },
                {"type": "example.com/gate", "status": "True"},
            ]
        },
    }
    out = status.pod_status(
        pod,
        init=[],
        app=[view(instance("running"), ready=True)],
        sandbox_ready=True,
        pod_ips=("10.0.0.5",),
        host_ips=("192.0.2.1",),
        start_time=1_700_000_000,
        qos_class="BestEffort",
        now=1_700_000_100,
    )
    by_type = {c["type"]: c for c in out["conditions"]}
    assert by_type["Ready"]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert by_type["PodScheduled"]["lastTransitionTime"] == "2019-01-01T00:00:00Z"
    assert "example.com/gate" in by_type
    assert by_type["ContainersReady"]["status"] == "True"
    assert out["podIP"] == "10.0.0.5" and out["hostIPs"] == [{"ip": "192.0.2.1"}]
    assert out["phase"] == "Running"


def test_unready_container_is_named_in_the_condition():
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    out = status.pod_status(
        pod,
        init=[],
        app=[view(instance("running"), ready=True, name="a"), view(instance("running"), name="b")],
        sandbox_ready=True,
        pod_ips=(),
        host_ips=(),
        start_time=0,
        qos_class="BestEffort",
        now=1,
    )
    ready = next(c for c in out["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    assert ready["message"] == "containers with unready status: [b]"


EXPANSIONS = [
    ("plain", "hello", {}, "hello"),
    ("reference", "$(A)-x", {"A": "1"}, "1-x"),
    ("escaped", "$$(A)", {"A": "1"}, "$(A)"),
    ("undefined-kept", "$(NOPE)", {}, "$(NOPE)"),
    ("unclosed-kept", "$(A", {"A": "1"}, "$(A"),
    ("dollar-alone", "a$b", {}, "a$b"),
    ("two", "$(A)$(B)", {"A": "x", "B": "y"}, "xy"),
]


@pytest.mark.parametrize(
    "text,env,expected", [e[1:] for e in EXPANSIONS], ids=[e[0] for e in EXPANSIONS]
)
def test_expand(text, env, expected):
    assert expand(text, env) == expected


class FakeConfigMaps:
    def __init__(self, secrets=None, **maps):
        self.maps = maps
        self.secrets = secrets or {}

    def configmap(self, namespace, name):
        return self.maps.get(name)

    def secret(self, namespace, name):
        return self.secrets.get(name)


POD = {
    "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
    "spec": {"nodeName": "n1", "serviceAccountName": "sa", "containers": [{"name": "main"}]},
}


def test_container_env_order_references_and_sources():
    container = {
        "name": "main",
        "envFrom": [{"configMapRef": {"name": "base"}, "prefix": "CFG_"}],
        "env": [
            {"name": "GREETING", "value": "hi"},
            {"name": "MESSAGE", "value": "$(GREETING) from $(POD)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "base", "key": "color"}}},
            {
                "name": "GONE",
                "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}},
            },
        ],
    }
    env = container_env(
        POD,
        container,
        context=EnvContext(pod_ips=("10.1.0.4",)),
        configmaps=FakeConfigMaps(base={"data": {"color": "blue", "bad-key!": "x"}}),
    )
    assert env == {
        "CFG_color": "blue",
        "GREETING": "hi",
        "MESSAGE": "hi from $(POD)",  # POD is defined after MESSAGE
        "POD": "web",
        "IP": "10.1.0.4",
        "APP": "web",
        "COLOR": "blue",
    }


def test_secret_values_are_decoded_for_env():
    container = {
        "name": "main",
        "envFrom": [{"secretRef": {"name": "creds"}}],
        "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "pw"}}}],
    }
    secrets = {"creds": {"data": {"pw": "czNjcjN0", "user": "YWRtaW4="}}}
    env = container_env(
        POD, container, context=EnvContext(), configmaps=FakeConfigMaps(secrets=secrets)
    )
    assert env == {"pw": "s3cr3t", "user": "admin", "PW": "s3cr3t"}


def test_downward_and_secret_payloads():
    from kubelet.volumes import downward_payload, object_payload

    items = [
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {
            "path": "mem",
            "mode": 0o400,
            "resourceFieldRef": {
                "containerName": "main",
                "resource": "limits.memory",
                "divisor": "1Mi",
            },
        },
    ]
    got = downward_payload(POD, items, 0o644, EnvContext(node_memory_bytes=1 << 30))
    assert got == {
        "name": (b"web", 0o644),
        "labels": (b'app="web"', 0o644),
        "mem": (b"1024", 0o400),
    }
    secret = {"metadata": {"name": "creds"}, "data": {"pw": "czNjcjN0"}}
    assert object_payload(secret, {"defaultMode": 0o400}, kind="secret") == {
        "pw": (b"s3cr3t", 0o400)
    }


ENV_ERRORS = [
    (
        "missing-configmap",
        {"configMapKeyRef": {"name": "nope", "key": "k"}},
        'configmap "nope" not found',
    ),
    (
        "missing-key",
        {"configMapKeyRef": {"name": "base", "key": "k"}},
        "couldn't find key k in ConfigMap shop/base",
    ),
    ("unknown-field", {"fieldRef": {"fieldPath": "spec.bogus"}}, "not a supported field"),
    ("missing-secret", {"secretKeyRef": {"name": "s", "key": "k"}}, 'secret "s" not found'),
]


@pytest.mark.parametrize(
    "source,message", [e[1:] for e in ENV_ERRORS], ids=[e[0] for e in ENV_ERRORS]
)
def test_container_env_errors(source, message):
    container = {"name": "main", "env": [{"name": "X", "valueFrom": source}]}
    with pytest.raises(EnvError, match=message):
        container_env(
            POD, container, context=EnvContext(), configmaps=FakeConfigMaps(base={"data": {}})
        )


RESOURCES = [
    ("cpu-limit-cores-rounded-up", {"limits": {"cpu": "1500m"}}, "limits.cpu", None, "2"),
    ("cpu-limit-millis", {"limits": {"cpu": "1500m"}}, "limits.cpu", "1m", "1500"),
    ("memory-limit-mi", {"limits": {"memory": "64Mi"}}, "limits.memory", "1Mi", "64"),
    ("unset-limit-is-node", {}, "limits.memory", "1Mi", "2048"),
    ("unset-request-is-zero", {}, "requests.cpu", None, "0"),
]


@pytest.mark.parametrize(
    "resources,resource,divisor,expected", [r[1:] for r in RESOURCES], ids=[r[0] for r in RESOURCES]
)
def test_resource_field_ref(resources, resource, divisor, expected):
    ref = {"resource": resource, **({"divisor": divisor} if divisor else {})}
    context = EnvContext(node_cpu_millis=2000, node_memory_bytes=2 << 30)
    assert resource_value(POD, {"name": "main", "resources": resources}, ref, context) == expected


HOST = dns.HostResolv(("192.0.2.53",), ("corp.example",), ("timeout:2",))
DNS = [
    (
        "cluster-first",
        {},
        ("10.96.0.10",),
        dns.DnsConfig(
            ("10.96.0.10",),
            ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"),
            ("ndots:5",),
        ),
    ),
    (
        "cluster-first-without-cluster-dns-is-default",
        {},
        (),
        dns.DnsConfig(("192.0.2.53",), ("corp.example",), ("timeout:2",)),
    ),
    (
        "host-network-falls-back-to-default",
        {"hostNetwork": True},
        ("10.96.0.10",),
        dns.DnsConfig(("192.0.2.53",), ("corp.example",), ("timeout:2",)),
    ),
    (
        "none-with-config",
        {
            "dnsPolicy": "None",
            "dnsConfig": {
                "nameservers": ["1.1.1.1"],
                "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
            },
        },
        ("10.96.0.10",),
        dns.DnsConfig(("1.1.1.1",), ("a.example",), ("ndots:2", "edns0")),
    ),
    (
        "config-overrides-option",
        {"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}},
        ("10.96.0.10",),
        dns.DnsConfig(
            ("10.96.0.10",),
            ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"),
            ("ndots:1",),
        ),
    ),
]


@pytest.mark.parametrize("spec,cluster_dns,expected", [d[1:] for d in DNS], ids=[d[0] for d in DNS])
def test_pod_dns(spec, cluster_dns, expected):
    pod = {"metadata": {"namespace": "shop"}, "spec": spec}
    got = dns.pod_dns(pod, cluster_dns=cluster_dns, cluster_domain="cluster.local", host=HOST)
    assert got == expected


def test_parse_resolv_conf():
    text = "# c\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nsearch a b\noptions ndots:2 rotate\n"
    assert dns.parse_resolv_conf(text) == dns.HostResolv(
        ("10.0.0.2", "10.0.0.3"), ("a", "b"), ("ndots:2", "rotate")
    )


async def test_restart_backoff_doubles_to_the_maximum_and_resets_after_a_long_run():
    clock = FakeClock()
    backoff = Backoff(Policy(initial_s=10, maximum_s=40, reset_after_s=600), clock=clock)
    key = ("uid", "main")
    assert backoff.remaining_since(key, clock.now()) == 0  # the first restart goes at once
    delays = []
    for _ in range(4):
        delays.append(backoff.next(key, event_time=clock.now(), ran_s=1))
        await clock.advance(1)
    assert delays == [10, 20, 40, 40]
    assert backoff.remaining_since(key, clock.now()) == 40
    await clock.advance(41)
    assert backoff.remaining_since(key, clock.now() - 41) == 0
    assert backoff.next(key, event_time=clock.now(), ran_s=700) == 10


async def test_image_backoff_holds_after_a_failure():
    clock = FakeClock()
    backoff = Backoff(Policy(initial_s=10, maximum_s=300), clock=clock)
    assert backoff.remaining_since_update("k") == 0
    backoff.next("k")
    await clock.advance(4)
    assert backoff.remaining_since_update("k") == 6
    await clock.advance(7)
    assert backoff.remaining_since_update("k") == 0
    assert backoff.next("k") == 20


FLAGS = [
    (
        "labels",
        lambda: parse_labels("a=b,example.com/zone=z1"),
        {"a": "b", "example.com/zone": "z1"},
    ),
    (
        "taints",
        lambda: [t.to_api() for t in parse_taints("role=edge:NoSchedule,gpu:NoExecute")],
        [
            {"key": "role", "value": "edge", "effect": "NoSchedule"},
            {"key": "gpu", "effect": "NoExecute"},
        ],
    ),
    (
        "reserved",
        lambda: parse_reserved("cpu=100m,memory=256Mi"),
        {"cpu": "100m", "memory": "256Mi"},
    ),
]


@pytest.mark.parametrize("parse,expected", [f[1:] for f in FLAGS], ids=[f[0] for f in FLAGS])
def test_flag_parsing(parse, expected):
    assert parse() == expected


FLAG_ERRORS = [
    ("label-without-value", lambda: parse_labels("a"), "--node-labels: 'a' is not key=value"),
    ("taint-bad-effect", lambda: parse_taints("a=b:Sometimes"), "Effect one of"),
    ("reserved-unknown", lambda: parse_reserved("gpu=1"), "NAME one of"),
    ("reserved-bad-quantity", lambda: parse_reserved("memory=lots"), "not a non-negative"),
]


@pytest.mark.parametrize(
    "parse,message", [f[1:] for f in FLAG_ERRORS], ids=[f[0] for f in FLAG_ERRORS]
)
def test_flag_errors(parse, message):
    with pytest.raises(ConfigError, match=message):
        parse()


def test_node_ip_is_required_and_checked(tmp_path):
    from kubelet.config import KubeletConfig

    base = dict(
        node_name="n", servers=("a:1",), state_dir=tmp_path, root_dir=tmp_path, cgroup_root="kl"
    )
    with pytest.raises(ConfigError, match="--node-ip is required"):
        KubeletConfig(node_ip="", **base)
    with pytest.raises(ConfigError, match="not an IP address"):
        KubeletConfig(node_ip="eth0", **base)


def test_allocatable_subtracts_reservations_and_eviction_thresholds():
    machine = node.Machine(
        cpus=4,
        memory_bytes=8 << 30,
        ephemeral_bytes=100 << 30,
        kernel_version="k",
        os_image="o",
        architecture="amd64",
    )
    cap = node.capacity(machine, max_pods=20)
    assert cap == {
        "cpu": "4",
        "memory": f"{8 << 20}Ki",
        "ephemeral-storage": f"{100 << 20}Ki",
        "pods": "20",
    }
    alloc = node.allocatable(
        cap,
        reserved={"cpu": "500m", "memory": "1Gi"},
        eviction_memory="100Mi",
        eviction_nodefs_percent=10,
    )
    assert alloc["cpu"] == "3500m"
    assert alloc["memory"] == f"{(8 << 20) - (1 << 20) - 100 * 1024}Ki"
    assert alloc["ephemeral-storage"] == f"{90 << 20}Ki"
    assert alloc["pods"] == "20"


PRESSURES = [
    ("healthy", node.Pressure(1 << 30, 50.0, 100, 32768), "", {}),
    ("low-memory", node.Pressure(50 << 20, 50.0, 100, 32768), "", {"MemoryPressure": "True"}),
    ("full-disk", node.Pressure(1 << 30, 5.0, 100, 32768), "", {"DiskPressure": "True"}),
    ("pids", node.Pressure(1 << 30, 50.0, 32000, 32768), "", {"PIDPressure": "True"}),
    (
        "runtime-down",
        node.Pressure(1 << 30, 50.0, 100, 32768),
        "container runtime is down",
        {"Ready": "False"},
    ),
]


@pytest.mark.parametrize(
    "pressure,problem,changed", [p[1:] for p in PRESSURES], ids=[p[0] for p in PRESSURES]
)
def test_node_conditions(pressure, problem, changed):
    got = node.conditions(
        pressure, ready_problem=problem, memory_threshold=100 << 20, disk_threshold_percent=10
    )
    expected = {
        "MemoryPressure": "False",
        "DiskPressure": "False",
        "PIDPressure": "False",
        "Ready": "True",
        **changed,
    }
    assert {c["type"]: c["status"] for c in got} == expected


def test_condition_transition_time_moves_only_on_change():
    previous = [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    same = node.with_times([{"type": "Ready", "status": "True"}], previous, 1_700_000_000)
    flipped = node.with_times([{"type": "Ready", "status": "False"}], previous, 1_700_000_000)
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert flipped[0]["lastTransitionTime"] == "2023-11-14T22:13:20Z"
    assert same[0]["lastHeartbeatTime"] == "2023-11-14T22:13:20Z"


def test_configmap_payload_items_modes_and_binary():
    configmap = {
        "metadata": {"name": "cfg"},
        "data": {"a": "1", "b": "2"},
        "binaryData": {"bin": "AAE="},
    }
    assert configmap_payload(configmap, {"defaultMode": 0o600}) == {
        "a": (b"1", 0o600),
        "b": (b"2", 0o600),
        "bin": (b"\x00\x01", 0o600),
    }
    spec = {"items": [{"key": "a", "path": "dir/first", "mode": 0o400}], "defaultMode": 0o644}
    assert configmap_payload(configmap, spec) == {"dir/first": (b"1", 0o400)}
    with pytest.raises(VolumeError, match="has no key 'zz'"):
        configmap_payload(configmap, {"items": [{"key": "zz", "path": "x"}]})
    with pytest.raises(VolumeError, match="must be relative"):
        configmap_payload(configmap, {"items": [{"key": "a", "path": "../escape"}]})


def test_atomic_writer_swaps_data_link_and_cleans_up(tmp_path: Path):
    target = tmp_path / "vol"
    assert write_atomic(target, {"a": (b"1", 0o644), "d/b": (b"2", 0o600)})
    first = os.readlink(target / "..data")
    assert (target / "a").read_text() == "1"
    assert os.readlink(target / "a") == "..data/a"
    assert stat.S_IMODE((target / "d" / "b").stat().st_mode) == 0o600
    assert not write_atomic(target, {"a": (b"1", 0o644), "d/b": (b"2", 0o600)})
    assert write_atomic(target, {"a": (b"changed", 0o644)})
    assert os.readlink(target / "..data") != first
    assert not (target / first).exists()
    assert not (target / "d").exists()
    assert (target / "a").read_text() == "changed"


HOST_PATHS = [
    ("directory-or-create-makes-it", "DirectoryOrCreate", "new-dir", None, None),
    ("file-or-create-makes-it", "FileOrCreate", "sub/new-file", None, None),
    ("directory-missing", "Directory", "missing", None, "does not exist"),
    ("file-is-a-directory", "File", "existing-dir", "dir", "is not a file"),
    ("directory-is-a-file", "Directory", "existing-file", "file", "is not a directory"),
    ("socket-is-a-file", "Socket", "existing-file", "file", "is not a socket"),
    ("unchecked-missing-made", "", "plain", None, None),
]


@pytest.mark.parametrize(
    "kind,relative,existing,error", [h[1:] for h in HOST_PATHS], ids=[h[0] for h in HOST_PATHS]
)
def test_host_path_types(tmp_path: Path, kind, relative, existing, error):
    path = tmp_path / relative
    if existing == "dir":
        path.mkdir()
    elif existing == "file":
        path.write_text("x")
    spec = {"path": str(path), "type": kind}
    if error:
        with pytest.raises(VolumeError, match=error):
            host_path_volume("v", spec)
    else:
        assert host_path_volume("v", spec).host_path == str(path)
        assert path.exists()


IMAGE = ImageConfig(
    entrypoint=("/entry",),
    cmd=("default-arg",),
    env=("PATH=/bin", "A=image"),
    working_dir="/srv",
    user="1000",
    stop_signal="SIGQUIT",
)
MERGES = [
    ("image-defaults", {}, ("/entry", "default-arg")),
    ("command-drops-cmd", {"command": ["/bin/sh"]}, ("/bin/sh",)),
    ("args-replace-cmd", {"args": ["x", "$(A)"]}, ("/entry", "x", "container")),
    ("both", {"command": ["/bin/echo"], "args": ["$(A)"]}, ("/bin/echo", "container")),
]


@pytest.mark.parametrize("fields,argv", [m[1:] for m in MERGES], ids=[m[0] for m in MERGES])
def test_container_config_merges_with_the_image(fields, argv):
    pod = {
        "metadata": {"name": "p", "namespace": "d", "uid": "u"},
        "spec": {"containers": [{"name": "main", **fields}]},
    }
    config = cspec.container_config(
        pod,
        pod["spec"]["containers"][0],
        kind="app",
        attempt=2,
        layers=(Path("/l"),),
        image=IMAGE,
        image_name="r/busybox:latest",
        image_id="r/busybox@sha256:1",
        env={"A": "container"},
        mounts=(),
        memory_capacity=1 << 30,
    )
    assert config.argv == argv
    assert config.env["A"] == "container" and config.env["PATH"] == "/bin"
    assert config.working_dir == "/srv"
    assert config.image_user == "1000"
    assert config.stop_signal == 3
    assert config.log_path == "main/2.log" and config.attempt == 2
    assert config.labels["io.kubernetes.pod.uid"] == "u"


QOS = [
    ("best-effort", [{}], "BestEffort", 1000),
    (
        "guaranteed",
        [{"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}],
        "Guaranteed",
        -997,
    ),
    ("burstable", [{"requests": {"memory": "512Mi"}}], "Burstable", 500),
]


@pytest.mark.parametrize("resources,qos,score", [q[1:] for q in QOS], ids=[q[0] for q in QOS])
def test_qos_class_and_oom_score(resources, qos, score):
    pod = {
        "spec": {"containers": [{"name": f"c{i}", "resources": r} for i, r in enumerate(resources)]}
    }
    assert cspec.qos_class(pod) == qos
    assert cspec.oom_score_adj(pod, pod["spec"]["containers"][0], 1 << 30) == score


def test_run_as_non_root_is_enforced():
    pod = {"spec": {"securityContext": {"runAsNonRoot": True}}}
    with pytest.raises(cspec.ConfigError, match="image will run as root"):
        cspec._security(pod, {}, "")
    with pytest.raises(cspec.ConfigError, match="non-numeric user"):
        cspec._security(pod, {}, "app")
    assert cspec._security(pod, {"securityContext": {"runAsUser": 1000}}, "")["run_as_user"] == 1000


CHOICES = [
    ("only-container", {"containers": [{"name": "a"}]}, "", "a"),
    ("named", {"containers": [{"name": "a"}, {"name": "b"}]}, "b", "b"),
    ("init-named", {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]}, "i", "i"),
]


@pytest.mark.parametrize("spec,asked,chosen", [c[1:] for c in CHOICES], ids=[c[0] for c in CHOICES])
def test_pick_container(spec, asked, chosen):
    assert pick_container({"metadata": {"name": "p"}, "spec": spec}, asked) == chosen


def test_pick_container_errors_name_the_choices():
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}}
    with pytest.raises(BadRequest, match=r"choose one of: \[a b\]"):
        pick_container(pod, "")
    with pytest.raises(BadRequest, match="container zz is not valid for pod p"):
        pick_container(pod, "zz")


def test_service_links():
    from kubelet.envvars import service_env

    services = [
        {
            "metadata": {"name": "db"},
            "spec": {
                "clusterIP": "10.96.0.7",
                "ports": [
                    {"name": "pg", "port": 5432, "protocol": "TCP"},
                    {"port": 9187, "protocol": "TCP"},
                ],
            },
        },
        {"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}},
    ]
    assert service_env(services) == {
        "DB_SERVICE_HOST": "10.96.0.7",
        "DB_SERVICE_PORT": "5432",
        "DB_SERVICE_PORT_PG": "5432",
        "DB_PORT": "tcp://10.96.0.7:5432",
        "DB_PORT_5432_TCP": "tcp://10.96.0.7:5432",
        "DB_PORT_5432_TCP_PROTO": "tcp",
        "DB_PORT_5432_TCP_PORT": "5432",
        "DB_PORT_5432_TCP_ADDR": "10.96.0.7",
        "DB_PORT_9187_TCP": "tcp://10.96.0.7:9187",
        "DB_PORT_9187_TCP_PROTO": "tcp",
        "DB_PORT_9187_TCP_PORT": "9187",
        "DB_PORT_9187_TCP_ADDR": "10.96.0.7",
    }


def test_mountinfo_paths_are_unescaped():
    from kubelet.mounts import _unescape

    assert _unescape(r"/var/lib/a\040b") == "/var/lib/a b"
    assert _unescape(r"/x\134y") == "/x\\y"
    assert _unescape("/plain") == "/plain"
