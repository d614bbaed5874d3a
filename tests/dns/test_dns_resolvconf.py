"""A Pod's resolv.conf, and the host's read for upstream servers."""

from __future__ import annotations

import pytest

from dns.resolvconf import pod_resolv_conf, upstreams_from_resolv_conf


def test_pod_resolv_conf():
    assert pod_resolv_conf(nameserver="10.96.0.10", namespace="shop") == (
        "nameserver 10.96.0.10\n"
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "options ndots:5\n"
    )


def test_pod_resolv_conf_other_domain():
    text = pod_resolv_conf(nameserver="10.96.0.10", namespace="default", cluster_domain="Corp.Lan.")
    assert "search default.svc.corp.lan svc.corp.lan corp.lan\n" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"nameserver": "dns"}, "nameserver", id="nameserver-not-ip"),
        pytest.param({"namespace": "Bad_NS"}, "namespace", id="namespace-not-label"),
        pytest.param({"cluster_domain": "a..b"}, "cluster_domain", id="domain"),
        pytest.param({"ndots": 16}, "ndots", id="ndots"),
    ],
)
def test_pod_resolv_conf_refuses_bad_input(kwargs, message):
    args = {"nameserver": "10.96.0.10", "namespace": "default", **kwargs}
    with pytest.raises(ValueError, match=message):
        pod_resolv_conf(**args)


def test_upstreams_in_file_order_without_duplicates(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# generated\n"
        "search example.com\n"
        "nameserver 192.0.2.53  # primary\n"
        "nameserver fe80::1%eth0\n"
        "; nameserver 198.51.100.1\n"
        "nameserver 192.0.2.53\n"
        "options edns0\n"
    )
    assert upstreams_from_resolv_conf(path) == (("192.0.2.53", 53), ("fe80::1", 53))


def test_upstreams_empty_file(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("search example.com\n")
    assert upstreams_from_resolv_conf(path) == ()


def test_upstreams_bad_entry_names_file_and_line(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.53\nnameserver dns.example\n")
    with pytest.raises(ValueError, match=r"resolv.conf:2: nameserver is not an IP address"):
        upstreams_from_resolv_conf(path)
