"""Node selector terms as the node affinity API writes them, compiled once per Pod.

A NodeSelector is a list of terms ORed together; a term is a list of
requirements ANDed together, over node labels (matchExpressions) or node
fields (matchFields, of which only `metadata.name` exists). A term with no
requirements matches no node, as in Kubernetes.

Matching is machinery.labels' (its Requirement knows Gt and Lt, which compare
a label's value as an integer); what is added here is the node selector's
shape, matchFields, and validation worded with each field's path.

Compilation never raises: a malformed requirement is reported as an error
string naming its field path, and the caller turns it into a status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from machinery.labels import Operator, Requirement

_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
    "Gt": Operator.GREATER_THAN,
    "Lt": Operator.LESS_THAN,
}
OPERATORS = tuple(_OPERATORS)
FIELD_OPERATORS = ("In", "NotIn")
NODE_NAME_FIELD = "metadata.name"


@dataclasses.dataclass(frozen=True, slots=True)
class Term:
    expressions: tuple[Requirement, ...] = ()
    fields: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str], node_name: str) -> bool:
        if not self.expressions and not self.fields:
            return False
        for req in self.expressions:
            if not req.matches(labels):
                return False
        if not self.fields:
            return True
        fields = {NODE_NAME_FIELD: node_name}
        return all(req.matches(fields) for req in self.fields)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSelector:
    """Required terms: a node matches when any term does."""

    terms: tuple[Term, ...]

    def matches(self, labels: Mapping[str, str], node_name: str) -> bool:
        return any(term.matches(labels, node_name) for term in self.terms)


@dataclasses.dataclass(frozen=True, slots=True)
class PreferredTerm:
    weight: int
    term: Term


def compile_selector(raw: Any, path: str, errors: list[str]) -> NodeSelector | None:
    """A required NodeSelector from its API form; None (and errors) when malformed."""
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: must be an object, got {type(raw).__name__}")
        return None
    raw_terms = raw.get("nodeSelectorTerms")
    if not isinstance(raw_terms, list) or not raw_terms:
        errors.append(f"{path}.nodeSelectorTerms: must be a non-empty list")
        return None
    before = len(errors)
    terms = tuple(
        compile_term(t, f"{path}.nodeSelectorTerms[{i}]", errors) for i, t in enumerate(raw_terms)
    )
    return NodeSelector(terms) if len(errors) == before else None


def compile_preferred(raw: Any, path: str, errors: list[str]) -> tuple[PreferredTerm, ...]:
    """Weighted preferred terms; malformed entries are reported and left out."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(f"{path}: must be a list, got {type(raw).__name__}")
        return ()
    preferred = []
    for i, item in enumerate(raw):
        here = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            errors.append(f"{here}: must be an object")
            continue
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 100:
            errors.append(f"{here}.weight: must be an integer from 1 to 100, got {weight!r}")
            continue
        before = len(errors)
        term = compile_term(item.get("preference") or {}, f"{here}.preference", errors)
        if len(errors) == before:
            preferred.append(PreferredTerm(weight, term))
    return tuple(preferred)


def compile_term(raw: Any, path: str, errors: list[str]) -> Term:
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: must be an object")
        return Term()
    expressions = _requirements(raw.get("matchExpressions"), f"{path}.matchExpressions", errors)
    fields = _requirements(raw.get("matchFields"), f"{path}.matchFields", errors, fields=True)
    return Term(expressions, fields)


def _requirements(
    raw: Any, path: str, errors: list[str], *, fields: bool = False
) -> tuple[Requirement, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        errors.append(f"{path}: must be a list")
        return ()
    compiled = (_requirement(r, f"{path}[{i}]", errors, fields=fields) for i, r in enumerate(raw))
    return tuple(r for r in compiled if r is not None)


def _requirement(raw: Any, path: str, errors: list[str], *, fields: bool) -> Requirement | None:
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: must be an object")
        return None
    key, op, values = raw.get("key"), raw.get("operator"), raw.get("values") or []
    problem = _requirement_problem(key, op, values, fields=fields)
    if problem:
        errors.append(f"{path}: {problem}")
        return None
    return Requirement(str(key), _OPERATORS[str(op)], tuple(values))


def _requirement_problem(key: Any, op: Any, values: Any, *, fields: bool) -> str:
    allowed = FIELD_OPERATORS if fields else OPERATORS
    if not isinstance(key, str) or not key:
        return "key must be a non-empty string"
    if fields and key != NODE_NAME_FIELD:
        return f"field {key!r} is not supported, only {NODE_NAME_FIELD!r}"
    if op not in allowed:
        return f"operator {op!r} is not one of {', '.join(allowed)}"
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return "values must be a list of strings"
    if op in ("In", "NotIn") and not values:
        return f"operator {op} needs at least one value"
    if op in ("Exists", "DoesNotExist") and values:
        return f"operator {op} takes no values, got {values!r}"
    if op in ("Gt", "Lt"):
        if len(values) != 1:
            return f"operator {op} needs exactly one value, got {values!r}"
        try:
            int(values[0])
        except ValueError:
            return f"operator {op} needs an integer value, got {values[0]!r}"
    return ""
