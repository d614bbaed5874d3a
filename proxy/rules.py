"""Rendering: a pure function from (services, endpoints, config) to the proxy's rules.

The layout follows kube-proxy's iptables mode, under KUBELITE- names:

  nat PREROUTING, OUTPUT -> KUBELITE-SERVICES
      one rule per Service port: ClusterIP:port -> KUBELITE-SVC-<hash>
      last rule: destination is a local address -> KUBELITE-NODEPORTS
  KUBELITE-NODEPORTS: nodePort -> mark for masquerade, then KUBELITE-SVC-<hash>
  KUBELITE-SVC-<hash>: mark traffic from outside the Pod network; with ClientIP
      affinity, first the endpoint this client used recently; then endpoint i
      of n with probability 1/(n-i), which spreads new connections evenly
  KUBELITE-SEP-<hash>: mark hairpin traffic (the endpoint talking to itself),
      then DNAT to ip:port (recording the client for affinity)
  nat POSTROUTING -> KUBELITE-POSTROUTING: masquerade what carries the mark
  filter OUTPUT, FORWARD -> KUBELITE-SERVICES: REJECT ClusterIP ports without
      ready endpoints, so clients see "connection refused" instead of a timeout
  filter INPUT, FORWARD -> KUBELITE-EXTERNAL-SERVICES: the same for NodePorts
  filter FORWARD -> KUBELITE-FORWARD: accept marked and established traffic
      even where the node's FORWARD policy is DROP

Invariants: output is deterministic (sorted Services, sorted endpoints), so
equal inputs give equal rulesets and an unchanged chain is never rewritten;
only chains named KUBELITE-* appear, so restoring the text can touch nothing
else. restore_text() turns a ruleset (and the one applied before) into one
iptables-restore --noflush input that declares each chain it writes (flushing
it in the same transaction) and deletes chains that are no longer wanted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from proxy import chains as c
from proxy.config import ProxyConfig
from proxy.model import Endpoints, Service, ServicePort

ChainKey = tuple[str, str]  # (table, chain)


@dataclasses.dataclass(frozen=True)
class Ruleset:
    """Every chain the proxy wants, in order, with its rules as iptables-restore lines."""

    chains: Mapping[ChainKey, tuple[str, ...]]

    def rule_count(self, table: str | None = None) -> int:
        return sum(len(r) for (t, _), r in self.chains.items() if table in (None, t))

    def chain_names(self, table: str) -> list[str]:
        return [chain for t, chain in self.chains if t == table]


def render(
    services: Iterable[Service],
    endpoints: Iterable[Endpoints],
    config: ProxyConfig,
    *,
    memo: RenderMemo | None = None,
) -> Ruleset:
    """The rules for these Services and Endpoints; Services without a ClusterIP get none.

    `memo` (optional, kept by the caller across calls) reuses the rules of every
    Service whose object and Endpoints are unchanged since the previous call;
    the result is the same with or without it.
    """
    by_key = {ep.key: ep for ep in endpoints}
    out = _Chains()
    _fixed_rules(out, config)
    fragments = memo.start(config) if memo is not None else None
    for svc in sorted(services, key=lambda s: s.key):
        if svc.cluster_ip is None:
            continue
        eps = by_key.get(svc.key)
        if fragments is not None:
            fragment = fragments.get(svc, eps)
        else:
            fragment = _service_fragment(svc, eps, config)
        out.merge(fragment)
    if fragments is not None:
        fragments.finish()
    # Last in the services chain, so that ClusterIP rules win; loopback is left
    # alone because DNAT of 127.0.0.0/8 would need route_localnet on the node.
    out.add(
        "nat",
        c.SERVICES,
        f'! -d 127.0.0.0/8 -m comment --comment "kubelite node ports; must stay last" '
        f"-m addrtype --dst-type LOCAL -j {c.NODEPORTS}",
    )
    return Ruleset(chains=out.frozen())


@dataclasses.dataclass(frozen=True)
class _Fragment:
    """One Service's rules: lines for the shared chains, and the chains it owns outright."""

    shared: tuple[tuple[ChainKey, str], ...]
    own: tuple[tuple[ChainKey, tuple[str, ...]], ...]


class RenderMemo:
    """Each Service's rendered rules from the previous render, keyed by its inputs.

    Only entries used by the latest render are kept, so the memo never holds
    more than one generation of Services.
    """

    def __init__(self) -> None:
        self._config: ProxyConfig | None = None
        self._previous: dict[tuple[Service, Endpoints | None], _Fragment] = {}
        self._current: dict[tuple[Service, Endpoints | None], _Fragment] = {}

    def start(self, config: ProxyConfig) -> RenderMemo:
        if config != self._config:
            self._config, self._previous = config, {}
        self._current = {}
        return self

    def get(self, svc: Service, eps: Endpoints | None) -> _Fragment:
        key = (svc, eps)
        fragment = self._previous.get(key)
        if fragment is None:
            assert self._config is not None
            fragment = _service_fragment(svc, eps, self._config)
        self._current[key] = fragment
        return fragment

    def finish(self) -> None:
        self._previous, self._current = self._current, {}


def _service_fragment(svc: Service, eps: Endpoints | None, config: ProxyConfig) -> _Fragment:
    out = _Chains()
    for port in svc.ports:
        ready = eps.ready(port.name, port.protocol) if eps else ()
        _service_port_rules(out, svc, port, ready, config)
    shared: list[tuple[ChainKey, str]] = []
    own: list[tuple[ChainKey, tuple[str, ...]]] = []
    for key, rules in out.chains.items():
        if key[1].startswith((c.SVC_PREFIX, c.SEP_PREFIX)):
            own.append((key, tuple(rules)))
        else:
            shared.extend((key, rule) for rule in rules)
    return _Fragment(shared=tuple(shared), own=tuple(own))


def restore_text(
    desired: Ruleset,
    *,
    previous: Ruleset | None = None,
    write_all: bool = False,
    stale: Iterable[ChainKey] = (),
) -> str:
    """iptables-restore --noflush input that turns `previous` (or the unknown) into `desired`.

    Chains are rewritten only when their rules differ from `previous`, unless
    write_all (or no previous) asks for every chain. Chains of `previous` and
    `stale` that `desired` no longer has are flushed and deleted; their -X lines
    come after every rule, once nothing written in this transaction refers to them.
    """
    gone = {key for key in (previous.chains if previous else {}) if key not in desired.chains}
    gone.update(key for key in stale if key not in desired.chains and c.is_owned(key[1]))
    lines: list[str] = []
    for table in c.TABLES:
        write = [
            key
            for key, rules in desired.chains.items()
            if key[0] == table
            and (write_all or previous is None or previous.chains.get(key) != rules)
        ]
        delete = sorted(key for key in gone if key[0] == table)
        if write or delete:
            lines.extend(_table_text(table, desired, write, delete))
    return "\n".join(lines) + "\n" if lines else ""


def chains_text(ruleset: Ruleset, keys: Iterable[ChainKey]) -> str:
    """iptables-restore --noflush input rewriting exactly these chains of `ruleset`."""
    wanted = set(keys)
    lines: list[str] = []
    for table in c.TABLES:
        write = [key for key in ruleset.chains if key[0] == table and key in wanted]
        if write:
            lines.extend(_table_text(table, ruleset, write, []))
    return "\n".join(lines) + "\n" if lines else ""


def repair_order(ruleset: Ruleset) -> list[ChainKey]:
    """Every chain, each after the chains it jumps to, so that any prefix can be restored alone.

    Restoring a chain whose jump target is missing fails; in this order a
    target someone deleted is re-created before anything that refers to it.
    """

    def depth(key: ChainKey) -> int:
        chain = key[1]
        if chain.startswith(c.SEP_PREFIX):
            return 1  # jumps to MARK-MASQ only
        if chain.startswith(c.SVC_PREFIX):
            return 2
        if chain in (c.SERVICES, c.NODEPORTS, c.EXTERNAL_SERVICES):
            return 3
        return 0  # MARK-MASQ, POSTROUTING, FORWARD: no jumps to our chains

    return sorted(ruleset.chains, key=depth)


def _table_text(
    table: str, desired: Ruleset, write: list[ChainKey], delete: list[ChainKey]
) -> list[str]:
    out = [f"*{table}"]
    out.extend(f":{chain} - [0:0]" for chain in declaration_order([*write, *delete]))
    for key in write:
        out.extend(desired.chains[key])
    out.extend(f"-X {chain}" for _, chain in delete)
    out.append("COMMIT")
    return out


def declaration_order(keys: Iterable[ChainKey]) -> list[str]:
    """Chain names in the order iptables-restore declares them fastest: reverse-sorted.

    NB: iptables-nft 1.8 keeps its chain cache as a list sorted by name and
    inserts each declared chain by walking it from the front; names that come
    in descending order are each inserted at the front, which takes a
    thousand-Service restore from about 8 s to about 3 s on a small node.
    """
    return sorted({chain for _, chain in keys}, reverse=True)


class _Chains:
    """Chains being built, in the order first mentioned; rules in the order added.

    `owned` holds the per-Service chains merged from fragments as the
    fragment's own tuples: keeping those objects lets the comparison with the
    previous ruleset short-cut on identity for every unchanged Service.
    """

    def __init__(self) -> None:
        self.chains: dict[ChainKey, list[str]] = {}
        self.owned: dict[ChainKey, tuple[str, ...]] = {}

    def declare(self, table: str, chain: str) -> None:
        self.chains.setdefault((table, chain), [])

    def add(self, table: str, chain: str, rule: str) -> None:
        self.chains.setdefault((table, chain), []).append(f"-A {chain} {rule}")

    def merge(self, fragment: _Fragment) -> None:
        for key, rule in fragment.shared:
            self.chains.setdefault(key, []).append(rule)
        self.owned.update(fragment.own)

    def frozen(self) -> dict[ChainKey, tuple[str, ...]]:
        result = {key: tuple(rules) for key, rules in self.chains.items()}
        result.update(self.owned)
        return result


def _fixed_rules(out: _Chains, config: ProxyConfig) -> None:
    for table, names in c.FIXED_CHAINS.items():
        for chain in names:
            out.declare(table, chain)
    mark = config.masquerade_mark
    out.add("nat", c.MARK_MASQ, f"-j MARK --set-xmark {mark}")
    out.add("nat", c.POSTROUTING, f"-m mark ! --mark {mark} -j RETURN")
    # Clear the bit before masquerading: a packet that is re-routed later (an
    # encapsulating tunnel) must not be masqueraded a second time.
    out.add("nat", c.POSTROUTING, f"-j MARK --xor-mark {config.masquerade_bit_value}")
    out.add(
        "nat",
        c.POSTROUTING,
        '-m comment --comment "kubelite service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    )
    out.add(
        "filter",
        c.FORWARD,
        f'-m comment --comment "kubelite forwarding rules" -m mark --mark {mark} -j ACCEPT',
    )
    out.add(
        "filter",
        c.FORWARD,
        '-m comment --comment "kubelite forwarding conntrack rule" '
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    )


def _match(protocol: str, port: int) -> str:
    proto = protocol.lower()
    return f"-p {proto} -m {proto} --dport {port}"


def _service_port_rules(
    out: _Chains,
    svc: Service,
    port: ServicePort,
    ready: tuple[tuple[str, int], ...],
    config: ProxyConfig,
) -> None:
    name = f"{svc.label}:{port.name}" if port.name else svc.label
    match = _match(port.protocol, port.port)
    if not ready:
        _reject_rules(out, svc, port, name)
        return

    # The ClusterIP entry, then the chain choosing among the endpoints.
    svc_chain = c.service_chain(name, port.protocol)
    out.add(
        "nat",
        c.SERVICES,
        f'-d {svc.cluster_ip}/32 -m comment --comment "{name} cluster IP" {match} -j {svc_chain}',
    )
    if config.cluster_cidr:
        out.add("nat", svc_chain, f"! -s {config.cluster_cidr} -j {c.MARK_MASQ}")
    if port.node_port:
        np_match = _match(port.protocol, port.node_port)
        out.add("nat", c.NODEPORTS, f'-m comment --comment "{name}" {np_match} -j {c.MARK_MASQ}')
        out.add("nat", c.NODEPORTS, f'-m comment --comment "{name}" {np_match} -j {svc_chain}')
    _balance_rules(out, svc_chain, name, port, ready, svc.affinity_timeout)


def _reject_rules(out: _Chains, svc: Service, port: ServicePort, name: str) -> None:
    match = _match(port.protocol, port.port)
    out.add(
        "filter",
        c.SERVICES,
        f'-d {svc.cluster_ip}/32 -m comment --comment "{name} has no endpoints" {match} '
        "-j REJECT --reject-with icmp-port-unreachable",
    )
    if port.node_port:
        np_match = _match(port.protocol, port.node_port)
        out.add(
            "filter",
            c.EXTERNAL_SERVICES,
            f'-m comment --comment "{name} has no endpoints" -m addrtype --dst-type LOCAL '
            f"{np_match} -j REJECT --reject-with icmp-port-unreachable",
        )


def _balance_rules(
    out: _Chains,
    svc_chain: str,
    name: str,
    port: ServicePort,
    ready: tuple[tuple[str, int], ...],
    affinity: int | None,
) -> None:
    seps = [
        (f"{ip}:{num}", c.endpoint_chain(name, port.protocol, f"{ip}:{num}")) for ip, num in ready
    ]
    if affinity:
        for endpoint, sep in seps:
            out.add(
                "nat",
                svc_chain,
                f'-m comment --comment "{name} -> {endpoint}" -m recent --name {sep} '
                f"--rcheck --seconds {affinity} --reap --mask 255.255.255.255 --rsource -j {sep}",
            )
    count = len(seps)
    for i, (endpoint, sep) in enumerate(seps):
        # Rule i sees only what rules 0..i-1 let through, so 1/(n-i) of that
        # remainder gives every endpoint the same 1/n share overall.
        chance = (
            ""
            if i == count - 1
            else f"-m statistic --mode random --probability {1 / (count - i):.10f} "
        )
        out.add("nat", svc_chain, f'-m comment --comment "{name} -> {endpoint}" {chance}-j {sep}')
    for (endpoint, sep), (ip, _) in zip(seps, ready, strict=True):
        _endpoint_rules(out, sep, name, port.protocol, endpoint, ip, affinity)


def _endpoint_rules(
    out: _Chains, sep: str, name: str, protocol: str, endpoint: str, ip: str, affinity: int | None
) -> None:
    proto = protocol.lower()
    out.add("nat", sep, f'-s {ip}/32 -m comment --comment "{name}" -j {c.MARK_MASQ}')
    recent = f"-m recent --set --name {sep} --mask 255.255.255.255 --rsource " if affinity else ""
    out.add(
        "nat",
        sep,
        f'-p {proto} -m comment --comment "{name}" {recent}-m {proto} '
        f"-j DNAT --to-destination {endpoint}",
    )
