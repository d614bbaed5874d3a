"""Validation of API objects, in the shape and wording of Kubernetes' field errors.

`validate(obj)` returns every failing field of one object as a `Cause`
(`spec.containers[0].image: Required value`); an empty list means the object is
valid. `validate_update(old, new)` adds the rules of a change: what may not
change once set. The API server calls both on every write, after defaults were
applied (machinery.defaults), and raises `errors.Invalid.for_causes` when either
returns something.

Two layers, run one after the other:

1. The JSON Schema of the kind (machinery/schemas/<resource>.json, sharing
   common.json): types, required fields, enums, numeric bounds, and unknown
   fields, which are rejected everywhere but in free-form maps (labels, data,
   capacity...), like kubectl's strict field validation.
2. Rules a schema says badly or not at all, written in Python below: DNS names,
   label syntax, quantities, cross-field rules (selector matches template,
   volumeMounts name a volume, requests <= limits, ...).

Speed: validation is on the hot path of every create. Each kind's schema is
inlined (its $refs replaced by their targets) once, then compiled twice: by
fastjsonschema into a function that only answers valid/invalid, and into a
jsonschema validator that explains. A valid object (the usual case) costs one
call of the compiled function; only an invalid one pays for jsonschema's
walk, which lists every failure rather than the first. Both read the same
schema, and tests check that they agree.

Compiling is not free: the generated checker of a Pod-bearing kind is a couple
of megabytes of Python, whose compilation takes about half a second, paid by
the first request of that kind in every new process (a freshly started API
server answered its first Deployment, ReplicaSet and Pod each half a second
late). So the compiled checker is kept on disk, keyed by a hash of the schema,
the generator's version and the interpreter's (see _checker); later processes
load it in milliseconds. The cache directory is the owner's alone, and a file
in it that is not the owner's is never loaded.

Invariants of the result: every failing field is reported; no two causes are
equal; a field already rejected by the schema (or one inside it) gets no second
cause from the Python layer; causes are ordered by field path (list indexes numerically) so
the same object always gives the same text.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import functools
import hashlib
import ipaddress
import json
import marshal
import os
import re
import sys
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema

from machinery import kinds, labels, pki, quantity
from machinery.errors import Cause
from machinery.files import write_private

# Kubernetes' cause types (metav1.CauseType), the `reason` of every Cause.
REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
TOO_LONG = "FieldValueTooLong"
FORBIDDEN = "FieldValueForbidden"
TYPE_INVALID = "FieldValueTypeInvalid"
UNKNOWN = "FieldValueUnknown"
NOT_FOUND = "FieldValueNotFound"

ANNOTATIONS_MAX_BYTES = 256 * 1024
CONFIGMAP_MAX_BYTES = 1024 * 1024
SECRET_MAX_BYTES = 1024 * 1024
SCHEMA_DIR = Path(__file__).parent / "schemas"

_Obj = dict[str, Any]
# Bound of each memo of a pure string rule or quantity parse (see labels._CACHE_SIZE).
_CACHE_SIZE = 8192


# -- the collector ---------------------------------------------------------------------------


def _render(value: Any) -> str:
    """A value as JSON, cut short so that a huge one does not flood the message."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 200 else text[:200] + "...(truncated)"


class Errors:
    """Collects causes, one method per Kubernetes error type, worded as Kubernetes does."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def add(self, path: str, reason: str, message: str) -> None:
        self.causes.append(Cause(path, reason, message))

    def required(self, path: str, detail: str = "") -> None:
        self.add(path, REQUIRED, f"Required value: {detail}" if detail else "Required value")

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.add(path, INVALID, f"Invalid value: {_render(value)}: {detail}")

    def type_invalid(self, path: str, value: Any, detail: str) -> None:
        self.add(path, TYPE_INVALID, f"Invalid value: {_render(value)}: {detail}")

    def not_supported(self, path: str, value: Any, supported: Iterable[Any]) -> None:
        listed = ", ".join(_render(v) for v in sorted(supported, key=str))
        self.add(
            path, NOT_SUPPORTED, f"Unsupported value: {_render(value)}: supported values: {listed}"
        )

    def duplicate(self, path: str, value: Any) -> None:
        self.add(path, DUPLICATE, f"Duplicate value: {_render(value)}")

    def not_found(self, path: str, value: Any) -> None:
        self.add(path, NOT_FOUND, f"Not found: {_render(value)}")

    def too_long(self, path: str, limit: int, unit: str = "characters") -> None:
        self.add(path, TOO_LONG, f"Too long: may not be more than {limit} {unit}")

    def forbidden(self, path: str, detail: str) -> None:
        self.add(path, FORBIDDEN, f"Forbidden: {detail}")

    def unknown(self, path: str) -> None:
        self.add(path, UNKNOWN, "unknown field")

    def check(self, path: str, value: Any, problem: str | None) -> bool:
        """Record `problem` (from a labels.validate_* rule) as Invalid; True when fine."""
        if problem:
            self.invalid(path, value, problem)
        return problem is None


# -- public entry points ---------------------------------------------------------------------


def validate(obj: _Obj) -> list[Cause]:
    """Every failing field of `obj`, defaults already applied; [] when it is valid."""
    if not isinstance(obj, dict):
        return [Cause("", TYPE_INVALID, f"Invalid value: {_render(obj)}: must be an object")]
    errs = Errors()
    kind = _check_type_meta(obj, errs)
    if kind is None:
        return errs.causes
    schema_causes = _schema_causes(kind, obj)
    _KIND_CHECKS[kind.kind](obj, errs, kind)
    return _finish(errs.causes, schema_causes)


def validate_update(old: _Obj, new: _Obj) -> list[Cause]:
    """What `new` changes of `old` that may not change; call validate(new) as well.

    Fields the server allocates (a Service's clusterIP, a Node's podCIDR) are
    compared as they are: the server copies them from `old` into `new` when an
    update omits them, as Kubernetes' registry does, before calling this.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []  # validate(new) reports a non-object; a stored object is always one
    errs = Errors()
    kind = kinds.by_kind(str(new.get("kind")))
    if old.get("kind") != new.get("kind"):
        errs.invalid("kind", new.get("kind"), "field is immutable")
        return errs.causes
    _check_meta_update(_dict(old.get("metadata")), _dict(new.get("metadata")), errs)
    if kind is not None and kind.kind in _UPDATE_CHECKS:
        _UPDATE_CHECKS[kind.kind](old, new, errs)
    return _finish(errs.causes, [])


def _finish(semantic: list[Cause], schema: list[Cause]) -> list[Cause]:
    faulted = {c.field for c in schema}

    def inside_faulted(field: str) -> bool:
        return any(field == f or field.startswith((f + ".", f + "[")) for f in faulted if f)

    seen: set[tuple[str, str]] = set()
    out: list[Cause] = []
    for cause in [*schema, *(c for c in semantic if not inside_faulted(c.field))]:
        if (cause.field, cause.message) not in seen:
            seen.add((cause.field, cause.message))
            out.append(cause)
    out.sort(key=lambda c: _INDEX.sub(lambda m: f"[{int(m.group(1)):09d}]", c.field))
    return out


_INDEX = re.compile(r"\[(\d+)\]")


def _check_type_meta(obj: _Obj, errs: Errors) -> kinds.Kind | None:
    kind_name = obj.get("kind")
    if not kind_name:
        errs.required("kind")
        return None
    kind = kinds.by_kind(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        errs.not_supported("kind", kind_name, (k.kind for k in kinds.KINDS))
        return None
    version = obj.get("apiVersion")
    if not version:
        errs.required("apiVersion")
    elif version != kind.api_version:
        errs.not_supported("apiVersion", version, [kind.api_version])
    return kind


# -- schema layer ----------------------------------------------------------------------------


@functools.cache
def _documents() -> dict[str, _Obj]:
    return {p.name: json.loads(p.read_text()) for p in sorted(SCHEMA_DIR.glob("*.json"))}


def _inline(node: Any, doc: _Obj) -> Any:
    """`node` with every $ref replaced by a copy of its target, and no $id/$defs left.

    Our schemas are not recursive, so this terminates; it spares both engines
    the cost of resolving references on every object.
    """
    if isinstance(node, list):
        return [_inline(item, doc) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if ref is not None:
        file, _, pointer = ref.partition("#")
        target_doc = _documents()[file] if file else doc
        target: Any = target_doc
        for part in pointer.strip("/").split("/"):
            target = target[part]
        return _inline(target, target_doc)
    skip = ("$defs", "$id", "$schema", "title", "description")
    return {k: _inline(v, doc) for k, v in node.items() if k not in skip}


def cache_dir() -> Path:
    """Where compiled checkers are kept: $KUBELITE_CACHE_DIR, else the user's cache."""
    env = os.environ.get("KUBELITE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kubelite" / "schemas"


def _checker(resource: str, schema: _Obj) -> Callable[[Any], Any]:
    """fastjsonschema's checker for schema, compiled once per machine, not per process."""
    key = hashlib.sha256(
        "\0".join(
            (
                json.dumps(schema, sort_keys=True),
                fastjsonschema.VERSION,
                sys.implementation.cache_tag or "",
            )
        ).encode()
    ).hexdigest()[:20]
    path = cache_dir() / f"{resource}-{key}.marshal"
    code = _load_code(path)
    if code is None:
        source = fastjsonschema.compile_to_code(copy.deepcopy(schema))
        code = compile(source, f"<schema of {resource}>", "exec")
        _store_code(path, code)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - our own generated checker
    return namespace["validate"]  # type: ignore[no-any-return]


def _load_code(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_uid != os.geteuid():
                return None  # someone else's file: never run it
            return marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None


def _store_code(path: Path, code: Any) -> None:
    """Best effort: a cache that cannot be written (read-only home) only costs time."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(path, marshal.dumps(code))
    except OSError:
        pass


class _CompiledSchema:
    def __init__(self, resource: str) -> None:
        doc = _documents()[f"{resource}.json"]
        schema = _inline(doc, doc)
        self.is_valid: Callable[[Any], Any] = _checker(resource, schema)
        self.explainer = jsonschema.Draft202012Validator(schema)


@functools.cache
def _compiled(resource: str) -> _CompiledSchema:
    return _CompiledSchema(resource)


def warm_cache() -> None:
    """Compile every kind's checker into the on-disk cache (done at install)."""
    for kind in kinds.KINDS:
        _compiled(kind.resource)


def _schema_causes(kind: kinds.Kind, obj: _Obj) -> list[Cause]:
    compiled = _compiled(kind.resource)
    try:
        compiled.is_valid(obj)
        return []
    except fastjsonschema.JsonSchemaValueException:
        pass
    errs = Errors()
    for error in compiled.explainer.iter_errors(obj):
        _translate(error, errs)
    return errs.causes


def _error_path(error: jsonschema.ValidationError) -> str:
    """The Kubernetes-style path of a schema error: `.name` for fields, `[i]`/`[key]` else.

    The schema path says whether an instance step went through `properties` (a
    field) or through `items`/`additionalProperties` (a list index or map key).
    """
    steps = list(error.absolute_path)
    schema_path = list(error.absolute_schema_path)
    out, i, j = "", 0, 0
    while j < len(schema_path) and i < len(steps):
        token = schema_path[j]
        if token == "properties":
            out = f"{out}.{steps[i]}" if out else str(steps[i])
            i, j = i + 1, j + 2
            continue
        if token in ("items", "additionalProperties"):
            out = f"{out}[{steps[i]}]"
            i += 1
        j += 1
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


_TYPE_WORDS = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def _translate(error: jsonschema.ValidationError, errs: Errors) -> None:
    path = _error_path(error)
    keyword, expected, value = error.validator, error.validator_value, error.instance
    custom = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if keyword == "required":
        for name in expected:
            if isinstance(value, dict) and name not in value:
                errs.required(_join(path, name))
    elif keyword == "additionalProperties" and expected is False:
        known = error.schema.get("properties", {})
        for name in value:
            if name not in known:
                errs.unknown(_join(path, name))
    elif keyword == "type":
        wanted = expected if isinstance(expected, list) else [expected]
        words = " or ".join(_TYPE_WORDS.get(t, str(t)) for t in wanted if t != "null")
        errs.type_invalid(path, value, f"must be {words}")
    elif keyword == "enum":
        errs.not_supported(path, value, expected)
    elif keyword in ("minItems", "minLength") and expected == 1:
        errs.required(path)
    elif keyword == "maxLength":
        errs.too_long(path, expected)
    elif custom:
        errs.invalid(path, value, custom)
    elif keyword == "minimum":
        errs.invalid(path, value, f"must be greater than or equal to {expected}")
    elif keyword == "maximum":
        errs.invalid(path, value, f"must be less than or equal to {expected}")
    elif keyword == "minItems":
        errs.invalid(path, value, f"must have at least {expected} items")
    else:
        errs.invalid(path, value, error.message)


# -- small helpers ---------------------------------------------------------------------------


def _seen_before(seen: set[Any], values: tuple[Any, ...]) -> bool:
    """Whether `values` were met already (and remember them). They are compared as JSON:
    a list or an object where a scalar belongs is not hashable (the schema refuses it)."""
    key = tuple(json.dumps(v, sort_keys=True) for v in values)
    if key in seen:
        return True
    seen.add(key)
    return False


def _dict(value: Any) -> _Obj:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dicts(value: Any) -> list[tuple[int, _Obj]]:
    """(index, item) of the objects in a list; other items were rejected by the schema."""
    if not value or not isinstance(value, list):
        return []  # the common case, an absent list: no generator to build
    return [(i, item) for i, item in enumerate(value) if isinstance(item, dict)]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _ip_problem(value: str) -> str | None:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
    # Loopback is accepted: single-host test clusters give nodes 127.x addresses.
    if ip.is_unspecified:
        return "may not be unspecified (0.0.0.0 or ::)"
    return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _cidr_problem(value: str) -> str | None:
    try:
        if "/" not in value:
            raise ValueError(value)
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"
    return None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _relative_path_problem(value: str) -> str | None:
    if value.startswith("/"):
        return "must be a relative path"
    if ".." in value.split("/"):
        return "must not contain '..'"
    return None


def _check_required_str(
    errs: Errors, path: str, value: Any, rule: Callable[[str], str | None]
) -> None:
    """A string field that must not be empty and must follow `rule`."""
    if isinstance(value, str):
        if value == "":
            errs.required(path)
        else:
            errs.check(path, value, rule(value))


def _check_optional_str(
    errs: Errors, path: str, value: Any, rule: Callable[[str], str | None]
) -> None:
    if isinstance(value, str) and value:
        errs.check(path, value, rule(value))


# -- metadata --------------------------------------------------------------------------------


def _path_segment_problem(name: str) -> str | None:
    """Kubernetes' rule for names that only have to fit in a URL path (RBAC kinds):
    system:kube-scheduler is a valid ClusterRole name."""
    if name in (".", ".."):
        return "may not be '.' or '..'"
    if "/" in name or "%" in name:
        return "may not contain '/' or '%'"
    if len(name) > 253:
        return "must be no more than 253 characters"
    return None


# The name rule of each kind; the rest use DNS-1123 subdomains.
_NAME_RULES: dict[str, Callable[[str], str | None]] = {
    "Namespace": labels.validate_dns1123_label,
    "Service": labels.validate_dns1035_label,
    "Role": _path_segment_problem,
    "ClusterRole": _path_segment_problem,
    "RoleBinding": _path_segment_problem,
    "ClusterRoleBinding": _path_segment_problem,
}
_STANDARD_FINALIZERS = frozenset({"kubernetes", "orphan", "foregroundDeletion"})


def _check_metadata(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return  # the schema reports it missing or of the wrong type
    rule = _NAME_RULES.get(kind.kind, labels.validate_dns1123_subdomain)
    name = meta.get("name")
    if not name:
        errs.required("metadata.name", "name or generateName is required")
    elif isinstance(name, str):
        errs.check("metadata.name", name, rule(name))
    generate = meta.get("generateName")
    if isinstance(generate, str) and generate:
        # A prefix may end in '-': the random suffix follows it.
        candidate = generate[:-1] + "a" if generate.endswith("-") else generate
        errs.check("metadata.generateName", generate, rule(candidate))
    _check_namespace_field(meta.get("namespace"), errs, kind)
    _check_labels(meta.get("labels"), "metadata.labels", errs)
    _check_annotations(meta.get("annotations"), "metadata.annotations", errs)
    _check_owner_references(meta.get("ownerReferences"), errs)
    _check_finalizers(meta.get("finalizers"), "metadata.finalizers", errs)


def _check_namespace_field(namespace: Any, errs: Errors, kind: kinds.Kind) -> None:
    if kind.namespaced:
        if not namespace:
            errs.required("metadata.namespace")
        elif isinstance(namespace, str):
            errs.check("metadata.namespace", namespace, labels.validate_dns1123_label(namespace))
    elif namespace:
        errs.forbidden("metadata.namespace", f"not allowed on {kind.kind}, which is cluster-scoped")


def _check_labels(value: Any, path: str, errs: Errors) -> None:
    """Label keys and values; Kubernetes reports both on the map's own path."""
    for key, val in _dict(value).items():
        errs.check(path, key, labels.validate_label_key(key))
        if isinstance(val, str):
            errs.check(path, val, labels.validate_label_value(val))


def _check_annotations(value: Any, path: str, errs: Errors) -> None:
    total = 0
    for key, val in _dict(value).items():
        errs.check(path, key, labels.validate_label_key(key.lower()))
        total += len(key) + (len(val) if isinstance(val, str) else 0)
    if total > ANNOTATIONS_MAX_BYTES:
        errs.too_long(path, ANNOTATIONS_MAX_BYTES, "bytes in total")


def _check_owner_references(value: Any, errs: Errors) -> None:
    controllers = []
    for i, ref in _dicts(value):
        path = f"metadata.ownerReferences[{i}]"
        for field in ("apiVersion", "kind", "name", "uid"):
            if ref.get(field) == "":
                errs.required(f"{path}.{field}")
        if ref.get("controller") is True:
            controllers.append(f"{ref.get('kind')}/{ref.get('name')}")
    if len(controllers) > 1:
        errs.invalid(
            "metadata.ownerReferences",
            controllers,
            "at most one reference may have controller set to true",
        )


def _check_finalizers(value: Any, path: str, errs: Errors) -> None:
    names = [f for f in _list(value) if isinstance(f, str)]
    for i, name in enumerate(_list(value)):
        if not isinstance(name, str):
            continue
        well_formed = errs.check(f"{path}[{i}]", name, labels.validate_label_key(name))
        if well_formed and "/" not in name and name not in _STANDARD_FINALIZERS:
            errs.invalid(
                f"{path}[{i}]",
                name,
                "must be a standard finalizer (kubernetes, orphan, foregroundDeletion) "
                "or a domain-prefixed name such as example.com/cleanup",
            )
    if "orphan" in names and "foregroundDeletion" in names:
        errs.invalid(path, names, "orphan and foregroundDeletion may not both be set")


# -- selectors -------------------------------------------------------------------------------


def _check_label_selector(value: Any, path: str, errs: Errors) -> None:
    sel = _dict(value)
    _check_labels(sel.get("matchLabels"), f"{path}.matchLabels", errs)
    for i, expr in _dicts(sel.get("matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        _check_optional_str(errs, f"{p}.key", expr.get("key"), labels.validate_label_key)
        if expr.get("key") == "":
            errs.required(f"{p}.key")
        values = _list(expr.get("values"))
        op = expr.get("operator")
        if op in ("In", "NotIn") and not values:
            errs.required(f"{p}.values", "must be specified when `operator` is 'In' or 'NotIn'")
        elif op in ("Exists", "DoesNotExist") and values:
            errs.forbidden(
                f"{p}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            )
        for j, val in enumerate(values):
            if isinstance(val, str):
                errs.check(f"{p}.values[{j}]", val, labels.validate_label_value(val))


def _check_node_selector_requirement(req: _Obj, path: str, errs: Errors, *, field: bool) -> None:
    key, op, values = req.get("key"), req.get("operator"), _list(req.get("values"))
    if field:
        if isinstance(key, str) and key != "metadata.name":
            errs.not_supported(f"{path}.key", key, ["metadata.name"])
        if op in ("In", "NotIn") and len(values) != 1:
            errs.required(f"{path}.values", "must have exactly one value for a field selector")
        elif isinstance(op, str) and op not in ("In", "NotIn"):
            errs.not_supported(f"{path}.operator", op, ["In", "NotIn"])
        return
    if key == "":
        errs.required(f"{path}.key")
    _check_optional_str(errs, f"{path}.key", key, labels.validate_label_key)
    if op in ("In", "NotIn") and not values:
        errs.required(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
    elif op in ("Exists", "DoesNotExist") and values:
        errs.forbidden(
            f"{path}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        )
    elif op in ("Gt", "Lt") and (len(values) != 1 or not re.fullmatch(r"-?[0-9]+", str(values[0]))):
        errs.invalid(f"{path}.values", values, "must be one integer value for 'Gt' or 'Lt'")


def _check_node_selector_term(term: _Obj, path: str, errs: Errors) -> None:
    for i, req in _dicts(term.get("matchExpressions")):
        _check_node_selector_requirement(req, f"{path}.matchExpressions[{i}]", errs, field=False)
    for i, req in _dicts(term.get("matchFields")):
        _check_node_selector_requirement(req, f"{path}.matchFields[{i}]", errs, field=True)


# -- quantities and resources ----------------------------------------------------------------

_QUANTITY_HINT = "must be a quantity such as 500m, 1.5, 128Mi or 1G"
_CONTAINER_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})


@functools.lru_cache(maxsize=_CACHE_SIZE, typed=True)  # typed: True is not the quantity 1
def _parse_quantity(value: str | int | float) -> Fraction | None:
    try:
        return quantity.parse_quantity(value)
    except quantity.QuantityError:
        return None


def _quantity(value: Any, path: str, errs: Errors) -> Fraction | None:
    """The value of a quantity field, or None after recording why it is not one."""
    amount = _parse_quantity(value) if isinstance(value, str | int | float) else None
    if amount is None:
        errs.invalid(path, value, _QUANTITY_HINT)
        return None
    if amount.numerator < 0:
        errs.invalid(path, value, "must be greater than or equal to 0")
        return None
    return amount


def _resource_name_problem(name: str, *, container: bool) -> str | None:
    problem = labels.validate_label_key(name)
    if problem or not container or "/" in name:
        return problem
    if name in _CONTAINER_RESOURCES or name.startswith("hugepages-"):
        return None
    return (
        "must be a standard resource for containers (cpu, memory, ephemeral-storage, "
        "hugepages-<size>) or a domain-prefixed extended resource such as example.com/gpu"
    )


def _check_quantity_map(
    value: Any, path: str, errs: Errors, *, container: bool
) -> dict[str, Fraction]:
    amounts: dict[str, Fraction] = {}
    for name, amount in _dict(value).items():
        p = f"{path}[{name}]"
        if errs.check(p, name, _resource_name_problem(name, container=container)):
            parsed = _quantity(amount, p, errs)
            if parsed is not None:
                amounts[name] = parsed
    return amounts


def _check_resources(value: Any, path: str, errs: Errors) -> None:
    res = _dict(value)
    limits = _check_quantity_map(res.get("limits"), f"{path}.limits", errs, container=True)
    requests = _check_quantity_map(res.get("requests"), f"{path}.requests", errs, container=True)
    for name, amount in requests.items():
        if name in limits and amount > limits[name]:
            limit = res["limits"][name]
            errs.invalid(
                f"{path}.requests[{name}]",
                res["requests"][name],
                f"must be less than or equal to the {name} limit of {limit}",
            )


# -- ports -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _port_name_problem(name: str) -> str | None:
    """IANA_SVC_NAME: how container ports are named and referred to by name."""
    problems = []
    if len(name) > 15:
        problems.append("must be no more than 15 characters")
    if not re.fullmatch(r"[-a-z0-9]+", name):
        problems.append("must contain only lowercase letters, digits and '-'")
    if not re.search(r"[a-z]", name):
        problems.append("must contain at least one letter")
    if name.startswith("-") or name.endswith("-") or "--" in name:
        problems.append("must not begin or end with '-' nor contain '--'")
    return "; ".join(problems) if problems else None


def _check_port_reference(value: Any, path: str, errs: Errors) -> None:
    """A port given by number (1-65535) or by the IANA name of a container port."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            errs.invalid(path, value, "must be a port number between 1 and 65535, inclusive")
    elif isinstance(value, str):
        errs.check(path, value, _port_name_problem(value))


# -- pod spec --------------------------------------------------------------------------------

_VOLUME_SOURCES = ("emptyDir", "hostPath", "configMap", "secret", "downwardAPI", "projected")
_PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
_LIFECYCLE_HANDLERS = ("exec", "httpGet", "tcpSocket", "sleep")
# The Pod fields an env var (and a downwardAPI volume file) may name with fieldRef.
_ENV_FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
)
_FILE_FIELD_PATHS = (
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
)
_FIELD_REF_MAPS = re.compile(r"metadata\.(labels|annotations)\['[^']+'\]")
_RESOURCE_REF = re.compile(r"(limits|requests)\.(cpu|memory|ephemeral-storage|hugepages-.+)")
_SYSCTL = re.compile(r"([a-z0-9]([-_a-z0-9]*[a-z0-9])?[./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?")


def _check_pod_spec(spec: _Obj, path: str, errs: Errors) -> None:
    volumes = _check_volumes(spec.get("volumes"), f"{path}.volumes", errs)
    seen: set[str] = set()
    host_network = spec.get("hostNetwork") is True
    for field, init in (("initContainers", True), ("containers", False)):
        for i, container in _dicts(spec.get(field)):
            p = f"{path}.{field}[{i}]"
            name = container.get("name")
            if isinstance(name, str) and name:
                if name in seen:
                    errs.duplicate(f"{p}.name", name)
                seen.add(name)
            _check_container(
                container, p, errs, volumes=volumes, init=init, host_network=host_network
            )
    _check_host_ports(spec.get("containers"), f"{path}.containers", errs)
    _check_pod_fields(spec, path, errs)
    _check_scheduling(spec, path, errs)
    _check_pod_security(spec, path, errs)
    _check_dns(spec, path, errs)


def _check_pod_fields(spec: _Obj, path: str, errs: Errors) -> None:
    for field in ("hostname", "subdomain"):
        _check_optional_str(errs, f"{path}.{field}", spec.get(field), labels.validate_dns1123_label)
    for field in (
        "nodeName",
        "serviceAccountName",
        "serviceAccount",
        "priorityClassName",
        "schedulerName",
        "runtimeClassName",
    ):
        _check_optional_str(
            errs, f"{path}.{field}", spec.get(field), labels.validate_dns1123_subdomain
        )
    for i, alias in _dicts(spec.get("hostAliases")):
        _check_required_str(errs, f"{path}.hostAliases[{i}].ip", alias.get("ip"), _ip_problem)
        for j, host in enumerate(_list(alias.get("hostnames"))):
            p = f"{path}.hostAliases[{i}].hostnames[{j}]"
            _check_required_str(errs, p, host, labels.validate_dns1123_subdomain)
    for i, gate in _dicts(spec.get("readinessGates")):
        p = f"{path}.readinessGates[{i}].conditionType"
        _check_required_str(errs, p, gate.get("conditionType"), labels.validate_label_key)
    _check_quantity_map(spec.get("overhead"), f"{path}.overhead", errs, container=True)


def _check_volumes(value: Any, path: str, errs: Errors) -> set[str]:
    names: set[str] = set()
    for i, vol in _dicts(value):
        p = f"{path}[{i}]"
        name = vol.get("name")
        _check_required_str(errs, f"{p}.name", name, labels.validate_dns1123_label)
        if isinstance(name, str) and name:
            if name in names:
                errs.duplicate(f"{p}.name", name)
            names.add(name)
        sources = [s for s in _VOLUME_SOURCES if s in vol]
        if not sources:
            errs.required(p, "must specify a volume type")
        for extra in sources[1:]:
            errs.forbidden(f"{p}.{extra}", "may not specify more than 1 volume type")
        _check_volume_source(vol, p, errs)
    return names


def _check_volume_source(vol: _Obj, path: str, errs: Errors) -> None:
    empty_dir = _dict(vol.get("emptyDir"))
    if "sizeLimit" in empty_dir:
        _quantity(empty_dir["sizeLimit"], f"{path}.emptyDir.sizeLimit", errs)
    host_path = _dict(vol.get("hostPath"))
    p = f"{path}.hostPath.path"
    if host_path.get("path") == "":
        errs.required(p)
    elif isinstance(host_path.get("path"), str) and ".." in host_path["path"].split("/"):
        errs.invalid(p, host_path["path"], "must not contain '..'")
    if "configMap" in vol:
        source = _dict(vol["configMap"])
        _check_required_str(
            errs,
            f"{path}.configMap.name",
            source.get("name", ""),
            labels.validate_dns1123_subdomain,
        )
        _check_key_to_paths(source.get("items"), f"{path}.configMap.items", errs)
    if "secret" in vol:
        source = _dict(vol["secret"])
        p = f"{path}.secret.secretName"
        _check_required_str(
            errs, p, source.get("secretName", ""), labels.validate_dns1123_subdomain
        )
        _check_key_to_paths(source.get("items"), f"{path}.secret.items", errs)
    _check_downward_files(
        _dict(vol.get("downwardAPI")).get("items"), f"{path}.downwardAPI.items", errs
    )
    for i, proj in _dicts(_dict(vol.get("projected")).get("sources")):
        _check_projection(proj, f"{path}.projected.sources[{i}]", errs)


def _check_projection(proj: _Obj, path: str, errs: Errors) -> None:
    kinds_set = [
        k for k in ("configMap", "secret", "downwardAPI", "serviceAccountToken") if k in proj
    ]
    if not kinds_set:
        errs.required(path, "must specify a projection source")
    for extra in kinds_set[1:]:
        errs.forbidden(f"{path}.{extra}", "may not specify more than 1 projection source")
    for source in ("configMap", "secret"):
        if source in proj:
            _check_key_to_paths(_dict(proj[source]).get("items"), f"{path}.{source}.items", errs)
    _check_downward_files(
        _dict(proj.get("downwardAPI")).get("items"), f"{path}.downwardAPI.items", errs
    )
    token = _dict(proj.get("serviceAccountToken"))
    _check_required_str(
        errs, f"{path}.serviceAccountToken.path", token.get("path"), _relative_path_problem
    )


def _check_key_to_paths(value: Any, path: str, errs: Errors) -> None:
    for i, item in _dicts(value):
        _check_required_str(errs, f"{path}[{i}].key", item.get("key"), _config_key_problem)
        _check_required_str(errs, f"{path}[{i}].path", item.get("path"), _relative_path_problem)


def _check_downward_files(value: Any, path: str, errs: Errors) -> None:
    for i, item in _dicts(value):
        p = f"{path}[{i}]"
        _check_required_str(errs, f"{p}.path", item.get("path"), _relative_path_problem)
        refs = [r for r in ("fieldRef", "resourceFieldRef") if r in item]
        if len(refs) != 1:
            errs.invalid(p, refs, "must specify exactly one of `fieldRef` and `resourceFieldRef`")
        if "fieldRef" in item:
            _check_field_ref(
                _dict(item["fieldRef"]), f"{p}.fieldRef", errs, allowed=_FILE_FIELD_PATHS
            )


def _check_container(
    c: _Obj, path: str, errs: Errors, *, volumes: set[str], init: bool, host_network: bool
) -> None:
    _check_required_str(errs, f"{path}.name", c.get("name"), labels.validate_dns1123_label)
    image = c.get("image")
    if image == "":
        errs.required(f"{path}.image")
    elif isinstance(image, str) and image != image.strip():
        errs.invalid(f"{path}.image", image, "must not have leading or trailing whitespace")
    _check_container_ports(c.get("ports"), f"{path}.ports", errs, host_network=host_network)
    _check_env(c, path, errs)
    _check_resources(c.get("resources"), f"{path}.resources", errs)
    _check_volume_mounts(c.get("volumeMounts"), f"{path}.volumeMounts", errs, volumes)
    sidecar = init and c.get("restartPolicy") == "Always"
    if "restartPolicy" in c and not init:
        errs.forbidden(f"{path}.restartPolicy", "may only be set on init containers (sidecars)")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe not in c:
            continue
        if init and not sidecar:
            errs.forbidden(
                f"{path}.{probe}", "may not be set for init containers without restartPolicy=Always"
            )
        else:
            _check_probe(
                _dict(c[probe]), f"{path}.{probe}", errs, single_success=probe != "readinessProbe"
            )
    lifecycle = _dict(c.get("lifecycle"))
    if lifecycle and init and not sidecar:
        errs.forbidden(
            f"{path}.lifecycle", "may not be set for init containers without restartPolicy=Always"
        )
    for hook in ("postStart", "preStop"):
        if hook in lifecycle:
            _check_handler(
                _dict(lifecycle[hook]), f"{path}.lifecycle.{hook}", errs, _LIFECYCLE_HANDLERS
            )
    _check_container_security(_dict(c.get("securityContext")), f"{path}.securityContext", errs)


def _check_container_ports(value: Any, path: str, errs: Errors, *, host_network: bool) -> None:
    names: set[str] = set()
    for i, port in _dicts(value):
        p = f"{path}[{i}]"
        name = port.get("name")
        if isinstance(name, str) and name:
            if errs.check(f"{p}.name", name, _port_name_problem(name)) and name in names:
                errs.duplicate(f"{p}.name", name)
            names.add(name)
        host_port, container_port = port.get("hostPort"), port.get("containerPort")
        if host_network and host_port and host_port != container_port:
            errs.invalid(
                f"{p}.hostPort", host_port, "must match `containerPort` when `hostNetwork` is true"
            )
        _check_optional_str(errs, f"{p}.hostIP", port.get("hostIP"), _ip_problem)


def _check_host_ports(containers: Any, path: str, errs: Errors) -> None:
    """Two containers of one Pod cannot both bind the same host port."""
    taken: set[tuple[str, int, str]] = set()
    for i, c in _dicts(containers):
        for j, port in _dicts(c.get("ports")):
            host_port = port.get("hostPort")
            if not isinstance(host_port, int) or not host_port:
                continue
            key = (str(port.get("hostIP", "")), host_port, str(port.get("protocol", "TCP")))
            if key in taken:
                errs.duplicate(f"{path}[{i}].ports[{j}].hostPort", f"{host_port}/{key[2]}")
            taken.add(key)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _env_name_problem(name: str) -> str | None:
    if all(" " <= ch <= "~" and ch != "=" for ch in name):
        return None
    return "must consist only of printable ASCII characters other than '='"


def _check_env(c: _Obj, path: str, errs: Errors) -> None:
    for i, var in _dicts(c.get("env")):
        p = f"{path}.env[{i}]"
        _check_required_str(errs, f"{p}.name", var.get("name"), _env_name_problem)
        if "valueFrom" not in var:
            continue
        if var.get("value"):
            errs.invalid(f"{p}.valueFrom", "", "may not be specified when `value` is not empty")
        _check_env_source(_dict(var["valueFrom"]), f"{p}.valueFrom", errs)
    for i, source in _dicts(c.get("envFrom")):
        p = f"{path}.envFrom[{i}]"
        _check_optional_str(errs, f"{p}.prefix", source.get("prefix"), _env_name_problem)
        refs = [r for r in ("configMapRef", "secretRef") if r in source]
        if len(refs) != 1:
            errs.invalid(p, refs, "must specify exactly one of `configMapRef` and `secretRef`")
        for ref in refs:
            name = _dict(source[ref]).get("name", "")
            _check_required_str(errs, f"{p}.{ref}.name", name, labels.validate_dns1123_subdomain)


def _check_env_source(source: _Obj, path: str, errs: Errors) -> None:
    refs = [
        r
        for r in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
        if r in source
    ]
    if not refs:
        errs.invalid(
            path,
            source,
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or "
            "`secretKeyRef`",
        )
    elif len(refs) > 1:
        errs.invalid(path, refs, "may not have more than one field specified at a time")
    if "fieldRef" in source:
        _check_field_ref(
            _dict(source["fieldRef"]), f"{path}.fieldRef", errs, allowed=_ENV_FIELD_PATHS
        )
    if "resourceFieldRef" in source:
        resource = _dict(source["resourceFieldRef"]).get("resource")
        if isinstance(resource, str) and not _RESOURCE_REF.fullmatch(resource):
            supported = [
                f"{s}.{r}" for s in ("limits", "requests") for r in sorted(_CONTAINER_RESOURCES)
            ]
            errs.not_supported(f"{path}.resourceFieldRef.resource", resource, supported)
    for ref, name_field in (("configMapKeyRef", "name"), ("secretKeyRef", "name")):
        if ref in source:
            selector = _dict(source[ref])
            p = f"{path}.{ref}"
            _check_required_str(
                errs,
                f"{p}.{name_field}",
                selector.get(name_field, ""),
                labels.validate_dns1123_subdomain,
            )
            _check_required_str(errs, f"{p}.key", selector.get("key"), _config_key_problem)


def _check_field_ref(ref: _Obj, path: str, errs: Errors, *, allowed: tuple[str, ...]) -> None:
    version = ref.get("apiVersion")
    if isinstance(version, str) and version not in ("", "v1"):
        errs.not_supported(f"{path}.apiVersion", version, ["v1"])
    field = ref.get("fieldPath")
    if field == "":
        errs.required(f"{path}.fieldPath")
    elif isinstance(field, str) and field not in allowed and not _FIELD_REF_MAPS.fullmatch(field):
        errs.not_supported(
            f"{path}.fieldPath",
            field,
            [*allowed, "metadata.labels['<KEY>']", "metadata.annotations['<KEY>']"],
        )


def _check_volume_mounts(value: Any, path: str, errs: Errors, volumes: set[str]) -> None:
    mount_paths: set[str] = set()
    for i, mount in _dicts(value):
        p = f"{path}[{i}]"
        name = mount.get("name")
        if name == "":
            errs.required(f"{p}.name")
        elif isinstance(name, str) and name not in volumes:
            errs.not_found(f"{p}.name", name)
        target = mount.get("mountPath")
        if target == "":
            errs.required(f"{p}.mountPath")
        elif isinstance(target, str):
            if not target.startswith("/"):
                errs.invalid(f"{p}.mountPath", target, "must be an absolute path")
            elif target in mount_paths:
                errs.invalid(f"{p}.mountPath", target, "must be unique")
            mount_paths.add(target)
        _check_optional_str(errs, f"{p}.subPath", mount.get("subPath"), _relative_path_problem)


def _check_handler(handler: _Obj, path: str, errs: Errors, kinds_: tuple[str, ...]) -> None:
    present = [k for k in kinds_ if k in handler]
    if not present:
        errs.required(path, "must specify a handler type")
    for extra in present[1:]:
        errs.forbidden(f"{path}.{extra}", "may not specify more than 1 handler type")
    if "exec" in handler and not _list(_dict(handler["exec"]).get("command")):
        errs.required(f"{path}.exec.command")
    if "httpGet" in handler:
        _check_port_reference(_dict(handler["httpGet"]).get("port"), f"{path}.httpGet.port", errs)
    if "tcpSocket" in handler:
        _check_port_reference(
            _dict(handler["tcpSocket"]).get("port"), f"{path}.tcpSocket.port", errs
        )


def _check_probe(probe: _Obj, path: str, errs: Errors, *, single_success: bool) -> None:
    _check_handler(probe, path, errs, _PROBE_HANDLERS)
    success = probe.get("successThreshold")
    if single_success and isinstance(success, int) and success != 1:
        errs.invalid(f"{path}.successThreshold", success, "must be 1")


def _check_seccomp(profile: Any, path: str, errs: Errors) -> None:
    profile = _dict(profile)
    local = profile.get("localhostProfile")
    if profile.get("type") == "Localhost" and not local:
        errs.required(f"{path}.localhostProfile", "must be set when seccomp type is Localhost")
    elif local and profile.get("type") != "Localhost":
        errs.forbidden(f"{path}.localhostProfile", "can only be set when seccomp type is Localhost")


def _check_container_security(sc: _Obj, path: str, errs: Errors) -> None:
    if sc.get("allowPrivilegeEscalation") is False:
        if sc.get("privileged") is True:
            errs.invalid(
                f"{path}.allowPrivilegeEscalation",
                False,
                "cannot be false when `privileged` is true",
            )
        added = _list(_dict(sc.get("capabilities")).get("add"))
        if "CAP_SYS_ADMIN" in added or "SYS_ADMIN" in added:
            errs.invalid(
                f"{path}.allowPrivilegeEscalation",
                False,
                "cannot be false when the CAP_SYS_ADMIN capability is added",
            )
    _check_seccomp(sc.get("seccompProfile"), f"{path}.seccompProfile", errs)


def _check_pod_security(spec: _Obj, path: str, errs: Errors) -> None:
    sc = _dict(spec.get("securityContext"))
    _check_seccomp(sc.get("seccompProfile"), f"{path}.securityContext.seccompProfile", errs)
    for i, sysctl in _dicts(sc.get("sysctls")):
        name = sysctl.get("name")
        p = f"{path}.securityContext.sysctls[{i}].name"
        if name == "":
            errs.required(p)
        elif isinstance(name, str) and not _SYSCTL.fullmatch(name):
            errs.invalid(p, name, "must be a sysctl name such as net.ipv4.ip_local_port_range")
    if spec.get("shareProcessNamespace") is True and spec.get("hostPID") is True:
        errs.invalid(
            f"{path}.shareProcessNamespace",
            True,
            "cannot be true together with `hostPID`",
        )


def _check_dns(spec: _Obj, path: str, errs: Errors) -> None:
    config = spec.get("dnsConfig")
    if spec.get("dnsPolicy") == "None" and not isinstance(config, dict):
        errs.required(f"{path}.dnsConfig", "must provide `dnsConfig` when `dnsPolicy` is None")
    config = _dict(config)
    servers = _list(config.get("nameservers"))
    if len(servers) > 3:
        errs.invalid(
            f"{path}.dnsConfig.nameservers", servers, "must not have more than 3 nameservers"
        )
    for i, server in enumerate(servers):
        _check_required_str(errs, f"{path}.dnsConfig.nameservers[{i}]", server, _ip_problem)
    if spec.get("dnsPolicy") == "None" and isinstance(spec.get("dnsConfig"), dict) and not servers:
        errs.required(
            f"{path}.dnsConfig.nameservers",
            "must provide at least one nameserver when `dnsPolicy` is None",
        )
    searches = _list(config.get("searches"))
    if len(searches) > 32:
        errs.invalid(
            f"{path}.dnsConfig.searches", searches, "must not have more than 32 search paths"
        )
    for i, search in enumerate(searches):
        if isinstance(search, str):
            p = f"{path}.dnsConfig.searches[{i}]"
            _check_required_str(errs, p, search.rstrip("."), labels.validate_dns1123_subdomain)


def _check_scheduling(spec: _Obj, path: str, errs: Errors) -> None:
    _check_labels(spec.get("nodeSelector"), f"{path}.nodeSelector", errs)
    for i, tol in _dicts(spec.get("tolerations")):
        _check_toleration(tol, f"{path}.tolerations[{i}]", errs)
    affinity = _dict(spec.get("affinity"))
    node = _dict(affinity.get("nodeAffinity"))
    required = _dict(node.get("requiredDuringSchedulingIgnoredDuringExecution"))
    p = f"{path}.affinity.nodeAffinity"
    for i, term in _dicts(required.get("nodeSelectorTerms")):
        _check_node_selector_term(
            term, f"{p}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]", errs
        )
    for i, pref in _dicts(node.get("preferredDuringSchedulingIgnoredDuringExecution")):
        q = f"{p}.preferredDuringSchedulingIgnoredDuringExecution[{i}].preference"
        _check_node_selector_term(_dict(pref.get("preference")), q, errs)
    for kind in ("podAffinity", "podAntiAffinity"):
        _check_pod_affinity(_dict(affinity.get(kind)), f"{path}.affinity.{kind}", errs)
    seen: set[tuple[Any, Any]] = set()
    for i, tsc in _dicts(spec.get("topologySpreadConstraints")):
        q = f"{path}.topologySpreadConstraints[{i}]"
        _check_required_str(
            errs, f"{q}.topologyKey", tsc.get("topologyKey"), labels.validate_label_key
        )
        _check_label_selector(tsc.get("labelSelector"), f"{q}.labelSelector", errs)
        key = (tsc.get("topologyKey"), tsc.get("whenUnsatisfiable"))
        if _seen_before(seen, key):
            errs.duplicate(f"{q}.{{topologyKey, whenUnsatisfiable}}", f"{key[0]}, {key[1]}")


def _check_pod_affinity(affinity: _Obj, path: str, errs: Errors) -> None:
    field = "requiredDuringSchedulingIgnoredDuringExecution"
    terms = [(f"{path}.{field}[{i}]", t) for i, t in _dicts(affinity.get(field))]
    field = "preferredDuringSchedulingIgnoredDuringExecution"
    for i, weighted in _dicts(affinity.get(field)):
        terms.append(
            (f"{path}.{field}[{i}].podAffinityTerm", _dict(weighted.get("podAffinityTerm")))
        )
    for p, term in terms:
        _check_required_str(
            errs, f"{p}.topologyKey", term.get("topologyKey"), labels.validate_label_key
        )
        _check_label_selector(term.get("labelSelector"), f"{p}.labelSelector", errs)
        _check_label_selector(term.get("namespaceSelector"), f"{p}.namespaceSelector", errs)


def _check_toleration(tol: _Obj, path: str, errs: Errors) -> None:
    key, op, value = tol.get("key", ""), tol.get("operator", "Equal"), tol.get("value", "")
    _check_optional_str(errs, f"{path}.key", key, labels.validate_label_key)
    if key == "" and op != "Exists":
        errs.invalid(
            f"{path}.operator",
            op,
            "must be 'Exists' when `key` is empty, which matches every taint",
        )
    if op == "Exists" and value:
        errs.invalid(f"{path}.operator", op, "value must be empty when `operator` is 'Exists'")
    elif isinstance(value, str) and value:
        errs.check(f"{path}.value", value, labels.validate_label_value(value))
    if "tolerationSeconds" in tol and tol.get("effect") != "NoExecute":
        errs.invalid(
            f"{path}.effect",
            tol.get("effect", ""),
            "must be 'NoExecute' when `tolerationSeconds` is set",
        )


def _check_pod_template(template: _Obj, path: str, errs: Errors) -> None:
    meta = _dict(template.get("metadata"))
    _check_labels(meta.get("labels"), f"{path}.metadata.labels", errs)
    _check_annotations(meta.get("annotations"), f"{path}.metadata.annotations", errs)
    spec = template.get("spec")
    if not isinstance(spec, dict):
        if spec is None:
            errs.required(f"{path}.spec")
        return
    _check_pod_spec(spec, f"{path}.spec", errs)
    # Controllers replace Pods forever; a Pod that ends on its own would be recreated.
    policy = spec.get("restartPolicy")
    if isinstance(policy, str) and policy != "Always" and policy in ("OnFailure", "Never"):
        errs.not_supported(f"{path}.spec.restartPolicy", policy, ["Always"])
    if "activeDeadlineSeconds" in spec:
        errs.forbidden(
            f"{path}.spec.activeDeadlineSeconds", "may not be set in a pod template of a controller"
        )


# -- kinds -----------------------------------------------------------------------------------


def _check_pod(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    spec = obj.get("spec")
    if isinstance(spec, dict):
        _check_pod_spec(spec, "spec", errs)
    status = _dict(obj.get("status"))
    for field in ("podIP", "hostIP"):
        _check_optional_str(errs, f"status.{field}", status.get(field), _ip_problem)
    for field in ("podIPs", "hostIPs"):
        for i, item in _dicts(status.get(field)):
            _check_required_str(errs, f"status.{field}[{i}].ip", item.get("ip"), _ip_problem)


def _percent_or_int(value: Any, path: str, errs: Errors, *, max_percent: int | None) -> int | None:
    """maxSurge/maxUnavailable: a count or 'N%'; returns the number (percent or count)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if value < 0:
            errs.invalid(path, value, "must be greater than or equal to 0")
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"([0-9]+)%", value)
        if not match:
            errs.invalid(path, value, "must be an integer or a percentage (e.g. '25%')")
            return None
        percent = int(match.group(1))
        if max_percent is not None and percent > max_percent:
            errs.invalid(path, value, f"must not be greater than {max_percent}%")
        return percent
    return None


def _check_workload(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    """What ReplicaSet and Deployment share: a selector over the labels of their template."""
    _check_metadata(obj, errs, kind)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    selector = spec.get("selector")
    if isinstance(selector, dict):
        _check_label_selector(selector, "spec.selector", errs)
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            errs.invalid(
                "spec.selector",
                selector,
                f"must not be empty: an empty {kind.kind} selector would match every Pod "
                "in the namespace",
            )
    template = spec.get("template")
    if not isinstance(template, dict):
        return
    _check_pod_template(template, "spec.template", errs)
    template_labels = _dict(_dict(template.get("metadata")).get("labels"))
    if isinstance(selector, dict) and (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        try:
            parsed = labels.Selector.from_label_selector(selector)
        except ValueError:
            return  # already reported field by field above
        if not parsed.matches(template_labels):
            errs.invalid(
                "spec.template.metadata.labels",
                template_labels,
                f"must match `spec.selector` ({parsed})",
            )


def _check_replica_set(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_workload(obj, errs, kind)


def _check_deployment(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_workload(obj, errs, kind)
    spec = _dict(obj.get("spec"))
    strategy = _dict(spec.get("strategy"))
    rolling = strategy.get("rollingUpdate")
    if strategy.get("type") == "Recreate" and rolling is not None:
        errs.forbidden(
            "spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'"
        )
    elif isinstance(rolling, dict):
        p = "spec.strategy.rollingUpdate"
        unavailable = _percent_or_int(
            rolling.get("maxUnavailable"), f"{p}.maxUnavailable", errs, max_percent=100
        )
        surge = _percent_or_int(rolling.get("maxSurge"), f"{p}.maxSurge", errs, max_percent=None)
        if unavailable == 0 and surge == 0:
            errs.invalid(
                f"{p}.maxUnavailable",
                rolling.get("maxUnavailable"),
                "may not be 0 when `maxSurge` is 0",
            )
    deadline, ready = spec.get("progressDeadlineSeconds"), spec.get("minReadySeconds", 0)
    if isinstance(deadline, int) and isinstance(ready, int) and deadline <= ready:
        errs.invalid(
            "spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds"
        )


def _check_service(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    spec = _dict(obj.get("spec"))
    svc_type = spec.get("type", "ClusterIP")
    cluster_ip = spec.get("clusterIP", "")
    _check_labels(spec.get("selector"), "spec.selector", errs)
    _check_service_ports(spec, errs, svc_type=svc_type, headless=cluster_ip == "None")
    if svc_type == "ExternalName":
        _check_required_str(
            errs,
            "spec.externalName",
            spec.get("externalName", ""),
            lambda v: labels.validate_dns1123_subdomain(v.rstrip(".")),
        )
        if cluster_ip not in ("", None):
            errs.forbidden("spec.clusterIP", "may not be set when `type` is 'ExternalName'")
    elif isinstance(cluster_ip, str) and cluster_ip not in ("", "None"):
        errs.check("spec.clusterIP", cluster_ip, _ip_problem(cluster_ip))
    _check_cluster_ips(spec, errs)
    for i, ip in enumerate(_list(spec.get("externalIPs"))):
        _check_required_str(errs, f"spec.externalIPs[{i}]", ip, _ip_problem)
    if "sessionAffinityConfig" in spec and spec.get("sessionAffinity") != "ClientIP":
        errs.forbidden(
            "spec.sessionAffinityConfig", "may only be set when `sessionAffinity` is 'ClientIP'"
        )
    if "externalTrafficPolicy" in spec and svc_type not in ("NodePort", "LoadBalancer"):
        errs.invalid(
            "spec.externalTrafficPolicy",
            spec["externalTrafficPolicy"],
            "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        )
    families = _list(spec.get("ipFamilies"))
    if len(families) > 2 or len(set(map(str, families))) != len(families):
        errs.invalid("spec.ipFamilies", families, "must hold at most one IPv4 and one IPv6 entry")


def _check_cluster_ips(spec: _Obj, errs: Errors) -> None:
    ips = _list(spec.get("clusterIPs"))
    for i, ip in enumerate(ips):
        if isinstance(ip, str) and ip != "None":
            errs.check(f"spec.clusterIPs[{i}]", ip, _ip_problem(ip))
    cluster_ip = spec.get("clusterIP")
    if ips and cluster_ip and ips[0] != cluster_ip:
        errs.invalid("spec.clusterIPs[0]", ips[0], "must be the same as `spec.clusterIP`")


def _check_service_ports(spec: _Obj, errs: Errors, *, svc_type: Any, headless: bool) -> None:
    ports = list(_dicts(spec.get("ports")))
    if not ports and svc_type != "ExternalName" and not headless:
        errs.required("spec.ports")
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, port in ports:
        p = f"spec.ports[{i}]"
        name = port.get("name", "")
        if len(ports) > 1 and name == "":
            errs.required(f"{p}.name", "a name is required when a Service has several ports")
        elif isinstance(name, str) and name:
            if errs.check(f"{p}.name", name, labels.validate_dns1123_label(name)) and name in names:
                errs.duplicate(f"{p}.name", name)
            names.add(name)
        key = (port.get("port"), port.get("protocol", "TCP"))
        if _seen_before(seen, key):
            errs.duplicate(p, {"port": key[0], "protocol": key[1]})
        if "targetPort" in port:
            _check_port_reference(port["targetPort"], f"{p}.targetPort", errs)
        if port.get("nodePort") and svc_type in ("ClusterIP", "ExternalName"):
            errs.forbidden(f"{p}.nodePort", f"may not be used when `type` is {svc_type!r}")


def _check_endpoints(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    for i, subset in _dicts(obj.get("subsets")):
        p = f"subsets[{i}]"
        for field in ("addresses", "notReadyAddresses"):
            for j, addr in _dicts(subset.get(field)):
                q = f"{p}.{field}[{j}]"
                _check_required_str(errs, f"{q}.ip", addr.get("ip"), _ip_problem)
                _check_optional_str(
                    errs, f"{q}.hostname", addr.get("hostname"), labels.validate_dns1123_label
                )
                _check_optional_str(
                    errs, f"{q}.nodeName", addr.get("nodeName"), labels.validate_dns1123_subdomain
                )
        ports = list(_dicts(subset.get("ports")))
        names: set[str] = set()
        for j, port in ports:
            q = f"{p}.ports[{j}].name"
            name = port.get("name", "")
            if len(ports) > 1 and name == "":
                errs.required(q, "a name is required when a subset has several ports")
            elif isinstance(name, str) and name:
                if errs.check(q, name, labels.validate_dns1123_label(name)) and name in names:
                    errs.duplicate(q, name)
                names.add(name)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _config_key_problem(key: str) -> str | None:
    problems = []
    if len(key) > 253:
        problems.append("must be no more than 253 characters")
    if not re.fullmatch(r"[-._a-zA-Z0-9]+", key):
        problems.append("must consist of letters, digits, '-', '_' or '.' (e.g. 'app.conf')")
    if key in (".", "..") or key.startswith(".."):
        problems.append("must not be '.' or '..' nor start with '..'")
    return "; ".join(problems) if problems else None


def _check_config_map(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    data, binary = _dict(obj.get("data")), _dict(obj.get("binaryData"))
    total = 0
    for key, value in data.items():
        errs.check(f"data[{key}]", key, _config_key_problem(key))
        total += len(key) + (len(value) if isinstance(value, str) else 0)
    for key, value in binary.items():
        p = f"binaryData[{key}]"
        if errs.check(p, key, _config_key_problem(key)) and key in data:
            errs.duplicate(p, key)
        if isinstance(value, str):
            try:
                total += len(key) + len(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError):
                errs.invalid(p, value[:40], "must be base64-encoded")
    if total > CONFIGMAP_MAX_BYTES:
        errs.too_long("data", CONFIGMAP_MAX_BYTES, "bytes in data and binaryData together")


# Errors about a Secret's values never quote them.
_REDACTED = "<secret contents redacted>"
# The keys that Secrets of the built-in types must hold in data, as Kubernetes requires.
_SECRET_REQUIRED_KEYS = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
}
_DOCKER_CONFIG_KEYS = (".dockercfg", ".dockerconfigjson")
SERVICE_ACCOUNT_NAME_ANNOTATION = "kubernetes.io/service-account.name"


def _check_secret(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    data = _dict(obj.get("data"))
    decoded: dict[str, bytes] = {}
    total = 0
    for key, value in data.items():
        p = f"data[{key}]"
        errs.check(p, key, _config_key_problem(key))
        if not isinstance(value, str):
            continue  # the schema reports it
        try:
            decoded[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            errs.invalid(p, _REDACTED, "must be base64-encoded")
            continue
        total += len(key) + len(decoded[key])
    if total > SECRET_MAX_BYTES:
        errs.too_long("data", SECRET_MAX_BYTES, "bytes in data (keys and decoded values)")
    # stringData is merged into data by the defaults; what is left could not be.
    for key, value in _dict(obj.get("stringData")).items():
        p = f"stringData[{key}]"
        errs.check(p, key, _config_key_problem(key))
        if isinstance(value, str) and not _utf8(value):
            errs.invalid(p, _REDACTED, "must be valid UTF-8 text")
    _check_secret_type(obj, data, decoded, errs)


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _check_secret_type(obj: _Obj, data: _Obj, decoded: dict[str, bytes], errs: Errors) -> None:
    """The keys and annotations the built-in Secret types need; other types are free-form."""
    secret_type = obj.get("type")
    if secret_type == "kubernetes.io/service-account-token":
        annotations = _dict(_dict(obj.get("metadata")).get("annotations"))
        if not annotations.get(SERVICE_ACCOUNT_NAME_ANNOTATION):
            errs.required(f"metadata.annotations[{SERVICE_ACCOUNT_NAME_ANNOTATION}]")
    elif secret_type == BOOTSTRAP_TOKEN_TYPE:
        _check_bootstrap_token(obj, decoded, errs)
    elif secret_type == "kubernetes.io/basic-auth" and not {"username", "password"} & set(data):
        # Either may be empty, but one of them must be there.
        errs.required("data[username]", "a basic-auth Secret needs username or password")
        errs.required("data[password]", "a basic-auth Secret needs username or password")
    required = _SECRET_REQUIRED_KEYS.get(secret_type, ()) if isinstance(secret_type, str) else ()
    for key in required:
        if key not in data:
            errs.required(f"data[{key}]", f"a Secret of type {secret_type} must have it")
        elif key == "ssh-privatekey" and decoded.get(key) == b"":
            errs.required(f"data[{key}]", "must not be empty")
        elif key in _DOCKER_CONFIG_KEYS and key in decoded:
            _check_docker_config(decoded[key], f"data[{key}]", errs)


def _check_docker_config(raw: bytes, path: str, errs: Errors) -> None:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        errs.invalid(path, _REDACTED, f"must be a JSON object: {err}")
        return
    if not isinstance(doc, dict):
        errs.invalid(path, _REDACTED, "must be a JSON object")


# -- bootstrap tokens, ServiceAccounts, certificate signing requests ---------------------

BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
_BOOTSTRAP_TOKEN_ID = re.compile(r"[a-z0-9]{6}")
_BOOTSTRAP_TOKEN_SECRET = re.compile(r"[a-z0-9]{16}")
_BOOTSTRAP_GROUP = re.compile(r"system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]")


def _check_bootstrap_token(obj: _Obj, decoded: dict[str, bytes], errs: Errors) -> None:
    """The shape bootstrap tokens have in Kubernetes: a Secret named bootstrap-token-<id>
    in kube-system, with the id, the secret and what the token may be used for."""
    meta = _dict(obj.get("metadata"))
    if meta.get("namespace") != "kube-system":
        errs.invalid(
            "metadata.namespace", meta.get("namespace"), "a bootstrap token lives in kube-system"
        )
    text = {k: v.decode("utf-8", "replace") for k, v in decoded.items()}
    token_id = text.get("token-id")
    if token_id is None:
        errs.required("data[token-id]", "a bootstrap token needs its 6-character id")
    elif not _BOOTSTRAP_TOKEN_ID.fullmatch(token_id):
        errs.invalid("data[token-id]", token_id, "must be 6 characters of [a-z0-9]")
    elif meta.get("name") != f"bootstrap-token-{token_id}":
        errs.invalid("metadata.name", meta.get("name"), f"must be bootstrap-token-{token_id}")
    secret = text.get("token-secret")
    if secret is None:
        errs.required("data[token-secret]", "a bootstrap token needs its 16-character secret")
    elif not _BOOTSTRAP_TOKEN_SECRET.fullmatch(secret):
        errs.invalid("data[token-secret]", _REDACTED, "must be 16 characters of [a-z0-9]")
    if "expiration" in text and not _rfc3339(text["expiration"]):
        errs.invalid(
            "data[expiration]",
            text["expiration"],
            'must be an RFC 3339 time ("2024-05-01T12:00:00Z")',
        )
    for key, value in text.items():
        if key.startswith("usage-bootstrap-") and value not in ("true", "false"):
            errs.invalid(f"data[{key}]", value, 'must be "true" or "false"')
    for group in (g.strip() for g in text.get("auth-extra-groups", "").split(",")):
        if group and not _BOOTSTRAP_GROUP.fullmatch(group):
            errs.invalid(
                "data[auth-extra-groups]",
                group,
                "each group must be system:bootstrappers:<name> ([a-z0-9:-])",
            )


def _rfc3339(text: str) -> bool:
    if not re.fullmatch(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", text):
        return False
    try:
        datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


def _check_service_account(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    for field in ("secrets", "imagePullSecrets"):
        for i, ref in _dicts(obj.get(field)):
            _check_required_str(
                errs, f"{field}[{i}].name", ref.get("name"), labels.validate_dns1123_subdomain
            )


# The signers Kubernetes defines under kubernetes.io; any other name must be <domain>/<path>
# of a domain that is not kubernetes.io's.
KNOWN_SIGNERS = (
    "kubernetes.io/kube-apiserver-client",
    "kubernetes.io/kube-apiserver-client-kubelet",
    "kubernetes.io/kubelet-serving",
    "kubernetes.io/legacy-unknown",
)
CSR_CONDITIONS = ("Approved", "Denied", "Failed")


def _check_csr(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    request = spec.get("request")
    if isinstance(request, str) and request:
        problem = _csr_problem(request)
        if problem:
            errs.invalid("spec.request", request[:40] + "...", problem)
    signer = spec.get("signerName")
    if isinstance(signer, str) and signer:
        errs.check("spec.signerName", signer, _signer_problem(signer))
    seen: set[Any] = set()
    for i, usage in enumerate(_list(spec.get("usages"))):
        if _seen_before(seen, (usage,)):
            errs.duplicate(f"spec.usages[{i}]", usage)
    _check_csr_status(status, errs)


@functools.lru_cache(maxsize=256)
def _csr_problem(request: str) -> str | None:
    try:
        pem = base64.b64decode(request, validate=True)
    except (binascii.Error, ValueError):
        return "must be base64-encoded (of a PEM certificate signing request)"
    try:
        pki.read_csr(pem)
    except pki.PKIError as err:
        return str(err)
    return None


def _signer_problem(signer: str) -> str | None:
    if signer in KNOWN_SIGNERS:
        return None
    domain, slash, path = signer.partition("/")
    if not slash or not path:
        return (
            "must be one of " + ", ".join(KNOWN_SIGNERS) + " or a domain-prefixed name "
            "(example.com/my-signer)"
        )
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return "is not a known kubernetes.io signer (known: " + ", ".join(KNOWN_SIGNERS) + ")"
    problem = labels.validate_dns1123_subdomain(domain)
    if problem:
        return f"the domain before the / {problem}"
    if len(signer) > 571 or not re.fullmatch(r"[-A-Za-z0-9_.~/]+", path) or "//" in path:
        return "the path after the domain must be up to 316 characters of [-A-Za-z0-9_.~/]"
    return None


def _check_csr_status(status: _Obj, errs: Errors) -> None:
    found: dict[str, int] = {}
    for i, cond in _dicts(status.get("conditions")):
        ctype = cond.get("type")
        if not isinstance(ctype, str):
            continue
        if ctype in found:
            errs.duplicate(f"status.conditions[{i}].type", ctype)
        found.setdefault(ctype, i)
        if ctype in ("Approved", "Denied") and cond.get("status") not in (None, "True"):
            errs.not_supported(f"status.conditions[{i}].status", cond.get("status"), ["True"])
    if "Approved" in found and "Denied" in found:
        later = max(found["Approved"], found["Denied"])
        errs.invalid(
            f"status.conditions[{later}].type",
            "Approved" if later == found["Approved"] else "Denied",
            "Approved and Denied conditions are mutually exclusive",
        )
    certificate = status.get("certificate")
    if isinstance(certificate, str) and certificate:
        if "Approved" not in found:
            errs.forbidden("status.certificate", "may only be set on an Approved request")
        problem = _certificate_problem(certificate)
        if problem:
            errs.invalid("status.certificate", certificate[:40] + "...", problem)


@functools.lru_cache(maxsize=256)
def _certificate_problem(certificate: str) -> str | None:
    try:
        pem = base64.b64decode(certificate, validate=True)
    except (binascii.Error, ValueError):
        return "must be base64-encoded (of PEM certificates)"
    try:
        pki.load_cert(pem)
    except pki.PKIError as err:
        return str(err)
    return None


def _check_node(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    _check_optional_str(errs, "spec.podCIDR", spec.get("podCIDR"), _cidr_problem)
    cidrs = _list(spec.get("podCIDRs"))
    for i, cidr in enumerate(cidrs):
        _check_required_str(errs, f"spec.podCIDRs[{i}]", cidr, _cidr_problem)
    if len(cidrs) > 2:
        errs.invalid("spec.podCIDRs", cidrs, "may hold at most one IPv4 and one IPv6 range")
    if cidrs and spec.get("podCIDR") and cidrs[0] != spec["podCIDR"]:
        errs.invalid("spec.podCIDRs[0]", cidrs[0], "must be the same as `spec.podCIDR`")
    seen: set[tuple[Any, Any]] = set()
    for i, taint in _dicts(spec.get("taints")):
        p = f"spec.taints[{i}]"
        _check_required_str(errs, f"{p}.key", taint.get("key"), labels.validate_label_key)
        _check_optional_str(errs, f"{p}.value", taint.get("value"), labels.validate_label_value)
        key = (taint.get("key"), taint.get("effect"))
        if _seen_before(seen, key):
            errs.duplicate(p, {"key": key[0], "effect": key[1]})
    for field in ("capacity", "allocatable"):
        _check_quantity_map(status.get(field), f"status.{field}", errs, container=False)
    for i, addr in _dicts(status.get("addresses")):
        if addr.get("type") in ("InternalIP", "ExternalIP"):
            _check_optional_str(
                errs, f"status.addresses[{i}].address", addr.get("address"), _ip_problem
            )


def _check_event(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    """Event rules of Kubernetes' core/v1 Events; `eventTime` marks the newer style."""
    _check_metadata(obj, errs, kind)
    namespace = _dict(obj.get("metadata")).get("namespace", "")
    involved = _dict(obj.get("involvedObject"))
    involved_ns = involved.get("namespace", "")
    newer = bool(obj.get("eventTime"))
    # An Event about a cluster-scoped object (a Node) lives in "default" (or kube-system).
    allowed = {"", "default", "kube-system"} if newer else {"", "default"}
    if (involved_ns and involved_ns != namespace) or (not involved_ns and namespace not in allowed):
        errs.invalid(
            "involvedObject.namespace", involved_ns, "does not match the Event's namespace"
        )
    if not newer:
        return
    for field in ("reportingComponent", "reportingInstance", "action", "reason"):
        if not obj.get(field):
            errs.required(field, "must be set on an Event with `eventTime`")
    _check_optional_str(
        errs, "reportingComponent", obj.get("reportingComponent"), labels.validate_label_key
    )


# -- RBAC (rbac.authorization.k8s.io/v1) -------------------------------------------------

RBAC_GROUP = "rbac.authorization.k8s.io"
SUBJECT_KINDS = ("User", "Group", "ServiceAccount")
# A resource is `name`, `name/subresource`, `*`, `*/subresource` or `name/*`.
_RULE_RESOURCE = re.compile(r"(\*|[a-z0-9][-a-z0-9.]*)(/(\*|[a-z0-9][-a-z0-9.]*))?")


def _check_role(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    for i, rule in _dicts(obj.get("rules")):
        _check_policy_rule(rule, f"rules[{i}]", errs, namespaced=kind.namespaced)


def _check_policy_rule(rule: _Obj, path: str, errs: Errors, *, namespaced: bool) -> None:
    resources, urls = _list(rule.get("resources")), _list(rule.get("nonResourceURLs"))
    if urls and namespaced:
        errs.forbidden(
            f"{path}.nonResourceURLs", "a Role's rules cannot apply to non-resource URLs"
        )
    if urls and resources:
        errs.invalid(
            f"{path}.nonResourceURLs", urls, "a rule applies to resources or to URLs, not both"
        )
    if not urls and not resources:
        errs.required(f"{path}.resources", 'a rule must name resources (or "*")')
    if resources and not _list(rule.get("apiGroups")):
        errs.required(
            f"{path}.apiGroups",
            'a rule with resources must name their API groups ("" is the core group, "*" all)',
        )
    for j, resource in enumerate(resources):
        if isinstance(resource, str) and resource and not _RULE_RESOURCE.fullmatch(resource):
            errs.invalid(
                f"{path}.resources[{j}]",
                resource,
                'must be a resource such as "pods", a subresource such as "pods/status", or "*"',
            )


def _check_binding(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    _check_role_ref(_dict(obj.get("roleRef")), errs, kind)
    for i, subject in _dicts(obj.get("subjects")):
        _check_subject(subject, f"subjects[{i}]", errs, namespaced=kind.namespaced)


def _check_role_ref(ref: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    if not ref:
        return  # the schema reports it missing
    group, ref_kind, name = ref.get("apiGroup"), ref.get("kind"), ref.get("name")
    if isinstance(group, str) and group != RBAC_GROUP:
        errs.not_supported("roleRef.apiGroup", group, [RBAC_GROUP])
    # A RoleBinding may grant a ClusterRole's rules within its namespace; a
    # ClusterRoleBinding can only grant a ClusterRole, a Role having no cluster-wide meaning.
    allowed = ("Role", "ClusterRole") if kind.namespaced else ("ClusterRole",)
    if isinstance(ref_kind, str) and ref_kind not in allowed:
        errs.not_supported("roleRef.kind", ref_kind, allowed)
    _check_optional_str(errs, "roleRef.name", name, _path_segment_problem)


def _check_subject(subject: _Obj, path: str, errs: Errors, *, namespaced: bool) -> None:
    kind, name = subject.get("kind"), subject.get("name")
    group, namespace = subject.get("apiGroup", ""), subject.get("namespace", "")
    if kind == "ServiceAccount":
        if group:
            errs.not_supported(f"{path}.apiGroup", group, [""])
        _check_optional_str(errs, f"{path}.name", name, labels.validate_dns1123_subdomain)
        if not namespace and not namespaced:
            errs.required(
                f"{path}.namespace", "a ServiceAccount subject of a ClusterRoleBinding needs one"
            )
        _check_optional_str(errs, f"{path}.namespace", namespace, labels.validate_dns1123_label)
    elif kind in ("User", "Group"):
        if group != RBAC_GROUP:
            errs.not_supported(f"{path}.apiGroup", group, [RBAC_GROUP])
        if namespace:
            errs.forbidden(f"{path}.namespace", f"a {kind} subject has no namespace")


def _check_plain(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)


def _check_namespace(obj: _Obj, errs: Errors, kind: kinds.Kind) -> None:
    _check_metadata(obj, errs, kind)
    _check_finalizers(_dict(obj.get("spec")).get("finalizers"), "spec.finalizers", errs)


_KIND_CHECKS: dict[str, Callable[[_Obj, Errors, kinds.Kind], None]] = {
    "Namespace": _check_namespace,
    "Pod": _check_pod,
    "ReplicaSet": _check_replica_set,
    "Deployment": _check_deployment,
    "Service": _check_service,
    "Endpoints": _check_endpoints,
    "ConfigMap": _check_config_map,
    "Secret": _check_secret,
    "Node": _check_node,
    "Event": _check_event,
    "Lease": _check_plain,
    "Role": _check_role,
    "ClusterRole": _check_role,
    "RoleBinding": _check_binding,
    "ClusterRoleBinding": _check_binding,
    "ServiceAccount": _check_service_account,
    "CertificateSigningRequest": _check_csr,
}


# -- updates ---------------------------------------------------------------------------------

_IMMUTABLE_META = ("name", "namespace", "uid", "creationTimestamp")


def _immutable(errs: Errors, path: str, old: Any, new: Any) -> None:
    if old != new:
        errs.invalid(path, new, "field is immutable")


def _check_meta_update(old: _Obj, new: _Obj, errs: Errors) -> None:
    for field in _IMMUTABLE_META:
        if new.get(field) or field in ("name", "namespace"):
            _immutable(errs, f"metadata.{field}", old.get(field), new.get(field))
    # Only a delete sets these; an update may carry them over unchanged.
    for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
        if old.get(field) != new.get(field):
            errs.invalid(
                f"metadata.{field}", new.get(field), "field is immutable; set only by a delete"
            )


def _set_once(errs: Errors, path: str, old: Any, new: Any) -> None:
    """A field that may go from unset to a value, and never change after."""
    if old and old != new:
        errs.invalid(path, new, "field is immutable once set")


def _update_workload(old: _Obj, new: _Obj, errs: Errors) -> None:
    _immutable(
        errs,
        "spec.selector",
        _dict(old.get("spec")).get("selector"),
        _dict(new.get("spec")).get("selector"),
    )


# What a Pod update may change, as (path, how). Everything else in spec is fixed.
_POD_MUTABLE = (
    "spec.containers[*].image, spec.initContainers[*].image, spec.activeDeadlineSeconds, "
    "spec.tolerations (additions only) and spec.nodeName (once, by binding)"
)


def _masked_pod_spec(spec: _Obj) -> _Obj:
    """The Pod spec with the fields an update may change blanked out."""
    masked = dict(spec)
    for field in ("containers", "initContainers"):
        masked[field] = [
            {k: v for k, v in c.items() if k != "image"} if isinstance(c, dict) else c
            for c in _list(spec.get(field))
        ]
    for field in ("activeDeadlineSeconds", "tolerations", "nodeName"):
        masked.pop(field, None)
    return masked


def _changed_fields(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _changed_fields(old.get(key), new.get(key), _join(path, key))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += _changed_fields(a, b, f"{path}[{i}]")
        return out
    return [] if old == new else [path]


def _update_pod(old: _Obj, new: _Obj, errs: Errors) -> None:
    old_spec, new_spec = _dict(old.get("spec")), _dict(new.get("spec"))
    changed = _changed_fields(_masked_pod_spec(old_spec), _masked_pod_spec(new_spec), "spec")
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        errs.forbidden(
            "spec", f"pod updates may not change fields other than {_POD_MUTABLE}; changed: {shown}"
        )
    _set_once(errs, "spec.nodeName", old_spec.get("nodeName"), new_spec.get("nodeName"))
    _update_deadline(
        old_spec.get("activeDeadlineSeconds"), new_spec.get("activeDeadlineSeconds"), errs
    )
    new_tolerations = _list(new_spec.get("tolerations"))
    for tol in _list(old_spec.get("tolerations")):
        if tol not in new_tolerations:
            errs.forbidden(
                "spec.tolerations",
                f"existing toleration {_render(tol)} may not be removed or changed",
            )


def _update_deadline(old: Any, new: Any, errs: Errors) -> None:
    """activeDeadlineSeconds may be set, or shortened, but not lengthened nor removed."""
    if old is None or old == new:
        return
    if new is None:
        errs.invalid("spec.activeDeadlineSeconds", new, "must not be removed once set")
    elif isinstance(new, int) and isinstance(old, int) and new > old:
        errs.invalid(
            "spec.activeDeadlineSeconds",
            new,
            f"must be less than or equal to the previous value {old}",
        )


def _update_service(old: _Obj, new: _Obj, errs: Errors) -> None:
    old_spec, new_spec = _dict(old.get("spec")), _dict(new.get("spec"))
    # Switching to or from ExternalName is how a Service gains or loses its IP.
    if "ExternalName" in (old_spec.get("type"), new_spec.get("type")):
        return
    _set_once(errs, "spec.clusterIP", old_spec.get("clusterIP"), new_spec.get("clusterIP"))
    old_ips, new_ips = _list(old_spec.get("clusterIPs")), _list(new_spec.get("clusterIPs"))
    if old_ips and (not new_ips or old_ips[0] != new_ips[0]):
        errs.invalid(
            "spec.clusterIPs[0]", new_ips[0] if new_ips else None, "field is immutable once set"
        )


def _update_node(old: _Obj, new: _Obj, errs: Errors) -> None:
    old_spec, new_spec = _dict(old.get("spec")), _dict(new.get("spec"))
    _set_once(errs, "spec.podCIDR", old_spec.get("podCIDR"), new_spec.get("podCIDR"))
    _set_once(errs, "spec.podCIDRs", old_spec.get("podCIDRs"), new_spec.get("podCIDRs"))


def _update_config_map(old: _Obj, new: _Obj, errs: Errors) -> None:
    if old.get("immutable") is not True:
        return
    if new.get("immutable") is not True:
        errs.forbidden("immutable", "field is immutable when `immutable` is set")
    for field in ("data", "binaryData"):
        if (old.get(field) or {}) != (new.get(field) or {}):
            errs.forbidden(field, "field is immutable when `immutable` is set")


def _update_secret(old: _Obj, new: _Obj, errs: Errors) -> None:
    _immutable(errs, "type", old.get("type"), new.get("type"))
    if old.get("immutable") is not True:
        return
    if new.get("immutable") is not True:
        errs.forbidden("immutable", "field is immutable when `immutable` is set")
    if (old.get("data") or {}) != (new.get("data") or {}):
        errs.forbidden("data", "field is immutable when `immutable` is set")


def _update_csr(old: _Obj, new: _Obj, errs: Errors) -> None:
    """A signing request is a record of what was asked: its spec never changes."""
    changed = _changed_fields(_dict(old.get("spec")), _dict(new.get("spec")), "spec")
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        errs.forbidden("spec", f"field is immutable after create; changed: {shown}")


def _update_binding(old: _Obj, new: _Obj, errs: Errors) -> None:
    """A binding's roleRef never changes: moving a grant to another role is a new binding,
    so whoever may edit subjects cannot quietly widen what they are granted."""
    if old.get("roleRef") != new.get("roleRef"):
        errs.invalid("roleRef", new.get("roleRef"), "cannot change roleRef")


_UPDATE_CHECKS: dict[str, Callable[[_Obj, _Obj, Errors], None]] = {
    "Pod": _update_pod,
    "ReplicaSet": _update_workload,
    "Deployment": _update_workload,
    "Service": _update_service,
    "Node": _update_node,
    "ConfigMap": _update_config_map,
    "Secret": _update_secret,
    "RoleBinding": _update_binding,
    "ClusterRoleBinding": _update_binding,
    "CertificateSigningRequest": _update_csr,
}
