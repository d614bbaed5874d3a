"""Builders for the proxy tests: Service and Endpoints objects as the API serves them."""

from __future__ import annotations

from typing import Any


def port(
    port_number: int = 80,
    *,
    name: str = "",
    protocol: str = "TCP",
    target: int | str | None = None,
    node_port: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"port": port_number, "protocol": protocol}
    if name:
        out["name"] = name
    if target is not None:
        out["targetPort"] = target
    if node_port is not None:
        out["nodePort"] = node_port
    return out


def service(
    name: str = "web",
    *,
    namespace: str = "default",
    cluster_ip: str | None = "10.96.0.10",
    ports: list[dict[str, Any]] | None = None,
    node_port: bool = False,
    affinity_seconds: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "NodePort" if node_port else "ClusterIP",
        "ports": ports if ports is not None else [port(80, target=8080)],
    }
    if cluster_ip is not None:
        spec["clusterIP"] = cluster_ip
    if affinity_seconds is not None:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_seconds}}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def endpoints(
    name: str = "web",
    *,
    namespace: str = "default",
    ips: list[str] | tuple[str, ...] = (),
    not_ready: list[str] | tuple[str, ...] = (),
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    subset: dict[str, Any] = {
        "addresses": [
            {"ip": ip, "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": f"pod-{i}"}}
            for i, ip in enumerate(ips)
        ],
        "ports": ports if ports is not None else [{"port": 8080, "protocol": "TCP"}],
    }
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": namespace},
        "subsets": [subset] if ips or not_ready else [],
    }
