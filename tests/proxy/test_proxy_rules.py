"""Rendering: what rules a set of Services and Endpoints turns into, case by case."""

from __future__ import annotations

import re

import pytest

from proxy import chains as c
from proxy.config import ProxyConfig
from proxy.model import parse_endpoints, parse_service
from proxy.rules import RenderMemo, Ruleset, render, restore_text
from tests.proxy.builders import endpoints, port, service

CONFIG = ProxyConfig(cluster_cidr="10.244.0.0/16")
WEB = "default/web"


def build(services, eps, config=CONFIG) -> Ruleset:
    return render([parse_service(s) for s in services], [parse_endpoints(e) for e in eps], config)


def rules(rs: Ruleset, table: str, chain: str) -> tuple[str, ...]:
    return rs.chains.get((table, chain), ())


def owned(rs: Ruleset, prefix: str) -> list[str]:
    return [chain for (table, chain) in rs.chains if table == "nat" and chain.startswith(prefix)]


def svc_chain(name: str = WEB, protocol: str = "TCP") -> str:
    return c.service_chain(name, protocol)


def probabilities(rs: Ruleset, chain: str) -> list[float | None]:
    """The statistic probability of each jump in a service chain; None for the last one."""
    out: list[float | None] = []
    for rule in rules(rs, "nat", chain):
        if "-j KUBELITE-SEP-" in rule and "--rcheck" not in rule:
            found = re.search(r"--probability (\S+)", rule)
            out.append(float(found.group(1)) if found else None)
    return out


def shares(probs: list[float | None]) -> list[float]:
    """Overall share of traffic each endpoint gets from a chain of statistic rules."""
    left, out = 1.0, []
    for p in probs:
        take = left * (1.0 if p is None else p)
        out.append(take)
        left -= take
    return out


# Each case: (services, endpoints) and checks on the rendered Ruleset.


def check_no_endpoints(rs: Ruleset) -> None:
    reject = rules(rs, "filter", c.SERVICES)
    assert len(reject) == 1
    assert "-d 10.96.0.10/32" in reject[0] and "--dport 80" in reject[0]
    assert "-j REJECT --reject-with icmp-port-unreachable" in reject[0]
    assert owned(rs, c.SVC_PREFIX) == [] and owned(rs, c.SEP_PREFIX) == []
    # Only the node-ports jump is left in the nat services chain.
    assert len(rules(rs, "nat", c.SERVICES)) == 1


def check_one_endpoint(rs: Ruleset) -> None:
    chain = svc_chain()
    assert rules(rs, "nat", c.SERVICES)[0].endswith(f"--dport 80 -j {chain}")
    assert "-d 10.96.0.10/32" in rules(rs, "nat", c.SERVICES)[0]
    assert probabilities(rs, chain) == [None]
    assert rules(rs, "nat", chain)[0] == f"-A {chain} ! -s 10.244.0.0/16 -j {c.MARK_MASQ}"
    (sep,) = owned(rs, c.SEP_PREFIX)
    hairpin, dnat = rules(rs, "nat", sep)
    assert "-s 10.244.1.5/32" in hairpin and hairpin.endswith(f"-j {c.MARK_MASQ}")
    assert dnat.endswith("-j DNAT --to-destination 10.244.1.5:8080")
    assert rules(rs, "filter", c.SERVICES) == ()


def check_three_endpoints(rs: Ruleset) -> None:
    chain = svc_chain()
    probs = probabilities(rs, chain)
    assert probs == [pytest.approx(1 / 3), pytest.approx(1 / 2), None]
    assert shares(probs) == [pytest.approx(1 / 3, abs=1e-9)] * 3
    assert len(owned(rs, c.SEP_PREFIX)) == 3
    targets = [
        r.split("--to-destination ")[1]
        for s in owned(rs, c.SEP_PREFIX)
        for r in rules(rs, "nat", s)
        if "DNAT" in r
    ]
    assert sorted(targets) == ["10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080"]


def check_node_port(rs: Ruleset) -> None:
    chain = svc_chain(f"{WEB}:http")
    marks, jump = rules(rs, "nat", c.NODEPORTS)
    assert "--dport 30080" in marks and marks.endswith(f"-j {c.MARK_MASQ}")
    assert "--dport 30080" in jump and jump.endswith(f"-j {chain}")
    last = rules(rs, "nat", c.SERVICES)[-1]
    assert "-m addrtype --dst-type LOCAL" in last and last.endswith(f"-j {c.NODEPORTS}")


def check_node_port_without_endpoints(rs: Ruleset) -> None:
    (reject,) = rules(rs, "filter", c.EXTERNAL_SERVICES)
    assert "--dst-type LOCAL" in reject and "--dport 30080" in reject and "-j REJECT" in reject
    assert rules(rs, "nat", c.NODEPORTS) == ()


def check_headless(rs: Ruleset) -> None:
    assert rs == build([], [])


def check_affinity(rs: Ruleset) -> None:
    chain = svc_chain()
    svc_rules = rules(rs, "nat", chain)
    sticky = [r for r in svc_rules if "--rcheck" in r]
    assert len(sticky) == 2
    assert all("--seconds 600 --reap" in r for r in sticky)
    # Affinity checks come before any random choice.
    first_random = next(i for i, r in enumerate(svc_rules) if "statistic" in r)
    assert all(svc_rules.index(r) < first_random for r in sticky)
    for sep in owned(rs, c.SEP_PREFIX):
        dnat = rules(rs, "nat", sep)[-1]
        assert f"-m recent --set --name {sep}" in dnat


def check_named_ports(rs: Ruleset) -> None:
    http, metrics = svc_chain(f"{WEB}:http"), svc_chain(f"{WEB}:metrics")
    dnats = {
        r.split("--to-destination ")[1]
        for s in owned(rs, c.SEP_PREFIX)
        for r in rules(rs, "nat", s)
        if "DNAT" in r
    }
    assert dnats == {"10.244.1.5:8080", "10.244.1.5:9090"}
    assert {http, metrics} <= set(owned(rs, c.SVC_PREFIX))
    # The port the Endpoints do not serve has no backends: REJECT.
    (reject,) = rules(rs, "filter", c.SERVICES)
    assert "default/web:admin has no endpoints" in reject and "--dport 9000" in reject


def check_several_ports(rs: Ruleset) -> None:
    assert len(owned(rs, c.SVC_PREFIX)) == 2
    entries = rules(rs, "nat", c.SERVICES)[:-1]
    assert [re.search(r"--dport (\d+)", r).group(1) for r in entries] == ["80", "443"]


def check_udp(rs: Ruleset) -> None:
    entry = rules(rs, "nat", c.SERVICES)[0]
    assert "-p udp -m udp --dport 53" in entry
    assert svc_chain(f"{WEB}:dns", "UDP") in entry
    (sep,) = owned(rs, c.SEP_PREFIX)
    assert rules(rs, "nat", sep)[1].startswith(f"-A {sep} -p udp")


def check_no_cluster_cidr(rs: Ruleset) -> None:
    assert not any("! -s" in r for r in rules(rs, "nat", svc_chain()))


def check_unallocated(rs: Ruleset) -> None:
    assert rs == build([], [])


EPS1 = ["10.244.1.5"]
EPS3 = ["10.244.1.7", "10.244.1.5", "10.244.1.6"]
NAMED = [port(80, name="http", target="web"), port(81, name="metrics"), port(9000, name="admin")]
NAMED_EPS = [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9090}]

CASES = [
    pytest.param([service()], [], CONFIG, check_no_endpoints, id="no-endpoints-reject"),
    pytest.param(
        [service()],
        [endpoints(not_ready=EPS1)],
        CONFIG,
        check_no_endpoints,
        id="only-not-ready-endpoints-reject",
    ),
    pytest.param([service()], [endpoints(ips=EPS1)], CONFIG, check_one_endpoint, id="one-endpoint"),
    pytest.param(
        [service()], [endpoints(ips=EPS3)], CONFIG, check_three_endpoints, id="three-endpoints-even"
    ),
    pytest.param(
        [service(node_port=True, ports=[port(80, name="http", node_port=30080)])],
        [endpoints(ips=EPS1, ports=[{"name": "http", "port": 8080}])],
        CONFIG,
        check_node_port,
        id="node-port",
    ),
    pytest.param(
        [service(node_port=True, ports=[port(80, name="http", node_port=30080)])],
        [],
        CONFIG,
        check_node_port_without_endpoints,
        id="node-port-without-endpoints-reject",
    ),
    pytest.param(
        [service(cluster_ip="None")],
        [endpoints(ips=EPS3)],
        CONFIG,
        check_headless,
        id="headless-no-rules",
    ),
    pytest.param(
        [service(cluster_ip="")],
        [endpoints(ips=EPS3)],
        CONFIG,
        check_unallocated,
        id="unallocated-cluster-ip-no-rules",
    ),
    pytest.param(
        [service(affinity_seconds=600)],
        [endpoints(ips=EPS3[:2])],
        CONFIG,
        check_affinity,
        id="session-affinity",
    ),
    pytest.param(
        [service(ports=NAMED)],
        [endpoints(ips=EPS1, ports=NAMED_EPS)],
        CONFIG,
        check_named_ports,
        id="named-ports",
    ),
    pytest.param(
        [service(ports=[port(80, name="http"), port(443, name="https")])],
        [
            endpoints(
                ips=EPS1, ports=[{"name": "http", "port": 8080}, {"name": "https", "port": 8443}]
            )
        ],
        CONFIG,
        check_several_ports,
        id="several-ports",
    ),
    pytest.param(
        [service(ports=[port(53, name="dns", protocol="UDP")])],
        [endpoints(ips=EPS1, ports=[{"name": "dns", "port": 5353, "protocol": "UDP"}])],
        CONFIG,
        check_udp,
        id="udp",
    ),
    pytest.param(
        [service()],
        [endpoints(ips=EPS1)],
        ProxyConfig(),
        check_no_cluster_cidr,
        id="no-cluster-cidr-no-masquerade-rule",
    ),
]


@pytest.mark.parametrize(("services", "eps", "config", "check"), CASES)
def test_render(services, eps, config, check):
    rs = build(services, eps, config)
    check(rs)
    assert all(c.is_owned(chain) for _, chain in rs.chains)
    assert all(len(chain) <= c.MAX_CHAIN_NAME for _, chain in rs.chains)


def test_fixed_chains_and_masquerade():
    rs = build([], [])
    assert set(rs.chains) == {(t, ch) for t, names in c.FIXED_CHAINS.items() for ch in names}
    assert rules(rs, "nat", c.MARK_MASQ) == (f"-A {c.MARK_MASQ} -j MARK --set-xmark 0x4000/0x4000",)
    post = rules(rs, "nat", c.POSTROUTING)
    assert "! --mark 0x4000/0x4000 -j RETURN" in post[0]
    assert post[-1].endswith("-j MASQUERADE --random-fully")
    assert any("--mark 0x4000/0x4000 -j ACCEPT" in r for r in rules(rs, "filter", c.FORWARD))


def test_masquerade_bit_is_configurable():
    rs = build([], [], ProxyConfig(masquerade_bit=3))
    assert rules(rs, "nat", c.MARK_MASQ)[0].endswith("--set-xmark 0x8/0x8")


def test_render_is_deterministic_whatever_the_input_order():
    svcs = [service("a", cluster_ip="10.96.0.1"), service("b", cluster_ip="10.96.0.2")]
    eps = [endpoints("a", ips=EPS3), endpoints("b", ips=EPS1)]
    assert build(svcs, eps) == build(list(reversed(svcs)), list(reversed(eps)))


def test_memo_gives_the_same_rules_and_reuses_unchanged_chains():
    memo = RenderMemo()
    svcs = [
        parse_service(service("a", cluster_ip="10.96.0.1")),
        parse_service(service("b", cluster_ip="10.96.0.2")),
    ]
    first = [parse_endpoints(endpoints("a", ips=EPS3)), parse_endpoints(endpoints("b", ips=EPS1))]
    one = render(svcs, first, CONFIG, memo=memo)
    changed = [first[0], parse_endpoints(endpoints("b", ips=["10.244.9.9"]))]
    two = render(svcs, changed, CONFIG, memo=memo)
    assert two == render(svcs, changed, CONFIG)
    chain_a = ("nat", c.service_chain("default/a", "TCP"))
    assert two.chains[chain_a] is one.chains[chain_a]


def test_chain_names_hash_name_and_protocol():
    assert svc_chain("default/web:http") == svc_chain("default/web:http")
    assert svc_chain("default/web:http", "TCP") != svc_chain("default/web:http", "UDP")
    assert svc_chain("default/web:http") != svc_chain("default/web:https")
    assert re.fullmatch(r"KUBELITE-SVC-[A-Z2-7]{15}", svc_chain())
    sep = c.endpoint_chain(WEB, "TCP", "10.0.0.1:80")
    assert sep != c.endpoint_chain(WEB, "TCP", "10.0.0.1:81")


def test_restore_text_full_declares_every_chain_once():
    rs = build([service()], [endpoints(ips=EPS3)])
    text = restore_text(rs)
    declared = [line[1:].split()[0] for line in text.splitlines() if line.startswith(":")]
    assert sorted(declared) == sorted(ch for _, ch in rs.chains)
    assert text.count("COMMIT") == 2
    assert not any(line.startswith("-X") for line in text.splitlines())
    # Declarations come in descending name order within a table (see declaration_order).
    nat = text.split("*nat")[1]
    nat_declared = [line[1:].split()[0] for line in nat.splitlines() if line.startswith(":")]
    assert nat_declared == sorted(nat_declared, reverse=True)


def test_restore_text_partial_writes_only_what_changed_and_deletes_stale():
    before = build([service()], [endpoints(ips=EPS3)])
    after = build([service()], [endpoints(ips=EPS3[:2])])
    text = restore_text(after, previous=before)
    gone = set(owned(before, c.SEP_PREFIX)) - set(owned(after, c.SEP_PREFIX))
    assert len(gone) == 1
    (stale,) = gone
    assert "*filter" not in text
    declared = {line[1:].split()[0] for line in text.splitlines() if line.startswith(":")}
    assert declared == {svc_chain(), stale}
    lines = text.splitlines()
    assert lines[-2] == f"-X {stale}"
    assert restore_text(after, previous=after) == ""


def test_restore_text_deletes_only_owned_stale_chains():
    rs = build([], [])
    text = restore_text(rs, stale=[("nat", "KUBELITE-SVC-OLD"), ("nat", "DOCKER")])
    assert "-X KUBELITE-SVC-OLD" in text
    assert "DOCKER" not in text
