"""Label syntax, the DNS name rules it rests on, and label selectors.

The `validate_*` functions return the problem with a value as a sentence, or None
when it is fine, so that API validation can word a field error around it and a
client can show it as is.

A `Selector` is an immutable conjunction of requirements (`app=web,tier!=db`).
It comes from the string syntax of `-l` and List requests (`Selector.parse`),
from the matchLabels/matchExpressions object of a workload
(`Selector.from_label_selector`) or from a plain map such as a Service's selector
(`Selector.from_set`). Two special values follow Kubernetes:

- the empty selector (no requirements) selects everything;
- the nothing selector selects no object at all. It is what a *missing*
  (None) label selector object means: a workload without a selector must not
  grab every Pod. It has no string form; `str()` renders it as "" as
  Kubernetes does, so check `selects_nothing` before sending it as text.

`str(selector)` is canonical: requirements ordered by key (then operator and
values), set values sorted, so equal selectors render equal and the text
parses back to an equal selector.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import re
from collections.abc import Iterable, Mapping

# -- name rules ------------------------------------------------------------------------------

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
QUALIFIED_NAME_MAX = 63

# The rules are pure functions of short strings that repeat endlessly (label keys, image
# names, "app"); caching them takes most of their cost off the API server's write path.
_CACHE_SIZE = 8192

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# The name part of a qualified name and a label value share one alphabet.
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def _too_long(value: str, limit: int) -> str | None:
    return f"must be no more than {limit} characters" if len(value) > limit else None


def _join(*problems: str | None) -> str | None:
    found = [p for p in problems if p]
    return "; ".join(found) if found else None


@functools.lru_cache(maxsize=_CACHE_SIZE)
def validate_dns1123_label(value: str) -> str | None:
    """Namespace, container, volume and host names: `my-name`."""
    bad = None
    if not _DNS1123_LABEL.fullmatch(value):
        bad = (
            "must be a lowercase RFC 1123 label: lowercase letters, digits and '-', "
            "beginning and ending with a letter or digit (e.g. 'my-name' or '123-abc')"
        )
    return _join(_too_long(value, DNS1123_LABEL_MAX), bad)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def validate_dns1123_subdomain(value: str) -> str | None:
    """Most object names: dot-separated RFC 1123 labels, `web.example`."""
    bad = None
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        bad = (
            "must be a lowercase RFC 1123 subdomain: lowercase letters, digits, '-' and '.', "
            "beginning and ending with a letter or digit (e.g. 'example.com')"
        )
    return _join(_too_long(value, DNS1123_SUBDOMAIN_MAX), bad)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def validate_dns1035_label(value: str) -> str | None:
    """Service names, which become DNS labels that must not start with a digit."""
    bad = None
    if not _DNS1035_LABEL.fullmatch(value):
        bad = (
            "must be a lowercase RFC 1035 label: lowercase letters, digits and '-', "
            "beginning with a letter and ending with a letter or digit (e.g. 'my-service')"
        )
    return _join(_too_long(value, DNS1123_LABEL_MAX), bad)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def validate_label_key(key: str) -> str | None:
    """A qualified name: an optional DNS subdomain prefix and '/', then a name part.

    Used for label keys, annotation keys, taint and toleration keys, finalizers
    and extended resource names.
    """
    prefix, slash, name = key.rpartition("/")
    if slash and prefix.count("/"):
        return "a qualified name may contain at most one '/' (e.g. 'example.com/my-key')"
    if slash:
        if not prefix:
            return "prefix part must not be empty"
        problem = validate_dns1123_subdomain(prefix)
        if problem:
            return f"prefix part {problem}"
    if not name:
        return "name part must not be empty"
    bad = None
    if not _NAME_PART.fullmatch(name):
        bad = (
            "name part must consist of letters, digits, '-', '_' or '.', beginning and "
            "ending with a letter or digit (e.g. 'app', 'My_Name' or 'example.com/app')"
        )
    long = _too_long(name, QUALIFIED_NAME_MAX)
    return _join(f"name part {long}" if long else None, bad)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def validate_label_value(value: str) -> str | None:
    """A label value: empty, or up to 63 letters, digits, '-', '_', '.' inside."""
    if value == "":
        return None
    bad = None
    if not _NAME_PART.fullmatch(value):
        bad = (
            "a label value must be empty or consist of letters, digits, '-', '_' or '.', "
            "beginning and ending with a letter or digit (e.g. 'v1.2', 'my_value')"
        )
    return _join(_too_long(value, LABEL_VALUE_MAX), bad)


# -- selectors -------------------------------------------------------------------------------


class Operator(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


# Order of operators on one key in the canonical string; stable across releases.
_OPERATOR_RANK = {op: i for i, op in enumerate(Operator)}
_SET_OPERATORS = (Operator.IN, Operator.NOT_IN)
_EXPRESSION_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}


def _as_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One term of a selector: a key, an operator and the values it compares with."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key in labels
        if op is Operator.DOES_NOT_EXIST:
            return self.key not in labels
        value = labels.get(self.key)
        if op in (Operator.EQUALS, Operator.IN):
            return value is not None and value in self.values
        if op in (Operator.NOT_EQUALS, Operator.NOT_IN):
            return value is None or value not in self.values
        # Gt / Lt compare integers; a label that is not an integer never matches.
        have = None if value is None else _as_int(value)
        want = _as_int(self.values[0])
        if have is None or want is None:
            return False
        return have > want if op is Operator.GREATER_THAN else have < want

    def sort_key(self) -> tuple[str, int, tuple[str, ...]]:
        return (self.key, _OPERATOR_RANK[self.operator], self.values)

    def __str__(self) -> str:
        op = self.operator
        if op is Operator.EXISTS:
            return self.key
        if op is Operator.DOES_NOT_EXIST:
            return f"!{self.key}"
        if op in _SET_OPERATORS:
            return f"{self.key} {op.value} ({','.join(self.values)})"
        symbol = {Operator.GREATER_THAN: ">", Operator.LESS_THAN: "<"}.get(op, op.value)
        return f"{self.key}{symbol}{self.values[0]}"


def _requirement(key: str, op: Operator, values: Iterable[str]) -> Requirement:
    """A checked requirement; ValueError says what is wrong with it."""
    problem = validate_label_key(key)
    if problem:
        raise ValueError(f"invalid label key {key!r}: {problem}")
    vals = tuple(sorted(set(values))) if op in _SET_OPERATORS else tuple(values)
    if op in _SET_OPERATORS and not vals:
        raise ValueError(f"operator {op.value!r} on key {key!r} needs at least one value")
    if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and vals:
        raise ValueError(f"key {key!r}: an existence test takes no values")
    if op in (Operator.GREATER_THAN, Operator.LESS_THAN):
        if len(vals) != 1 or _as_int(vals[0]) is None:
            raise ValueError(f"key {key!r}: '>' and '<' need exactly one integer value")
        return Requirement(key, op, vals)
    for value in vals:
        problem = validate_label_value(value)
        if problem:
            raise ValueError(f"invalid label value {value!r} for key {key!r}: {problem}")
    return Requirement(key, op, vals)


@dataclasses.dataclass(frozen=True)
class Selector:
    """A conjunction of label requirements; see the module docstring for the two specials."""

    requirements: tuple[Requirement, ...] = ()
    selects_nothing: bool = False

    @classmethod
    def everything(cls) -> Selector:
        return cls()

    @classmethod
    def nothing(cls) -> Selector:
        return cls(selects_nothing=True)

    @classmethod
    def of(cls, requirements: Iterable[Requirement]) -> Selector:
        """The canonical selector of these requirements (sorted, duplicates dropped)."""
        unique = {r.sort_key(): r for r in requirements}
        return cls(tuple(unique[k] for k in sorted(unique)))

    @classmethod
    def parse(cls, text: str) -> Selector:
        """The selector written in the `-l` syntax; ValueError names the bad part."""
        return cls.of(_Parser(text).parse())

    @classmethod
    def from_set(cls, labels: Mapping[str, str] | None) -> Selector:
        """Every key=value of a plain map, e.g. a Service's spec.selector; {} selects all."""
        return cls.of(_requirement(k, Operator.EQUALS, (v,)) for k, v in (labels or {}).items())

    @classmethod
    def from_label_selector(cls, selector: Mapping[str, object] | None) -> Selector:
        """The selector a matchLabels/matchExpressions object describes.

        None selects nothing and {} selects everything, as in Kubernetes.
        ValueError names the bad part of an invalid object.
        """
        if selector is None:
            return cls.nothing()
        reqs = [
            _requirement(str(k), Operator.EQUALS, (str(v),))
            for k, v in _mapping(selector.get("matchLabels"), "matchLabels").items()
        ]
        for i, expr in enumerate(_sequence(selector.get("matchExpressions"))):
            reqs.append(_expression(expr, f"matchExpressions[{i}]"))
        return cls.of(reqs)

    @property
    def empty(self) -> bool:
        """True when the selector has no requirements and so selects everything."""
        return not self.requirements and not self.selects_nothing

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.selects_nothing:
            return False
        have = labels or {}
        return all(r.matches(have) for r in self.requirements)

    def equality_requirements(self) -> dict[str, str]:
        """The keys that must equal one value (key=v or key in (v)), for index look-ups."""
        return {
            r.key: r.values[0]
            for r in self.requirements
            if r.operator in (Operator.EQUALS, Operator.IN) and len(r.values) == 1
        }

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


def _mapping(value: object, where: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a map of label keys to values")
    return value


def _sequence(value: object) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("matchExpressions must be a list")
    return value


def _expression(expr: object, where: str) -> Requirement:
    if not isinstance(expr, Mapping):
        raise ValueError(f"{where} must be an object with key, operator and values")
    op = _EXPRESSION_OPERATORS.get(str(expr.get("operator")))
    if op is None:
        supported = ", ".join(_EXPRESSION_OPERATORS)
        raise ValueError(f"{where}: operator {expr.get('operator')!r} is not one of {supported}")
    values = expr.get("values") or []
    if not isinstance(values, list):
        raise ValueError(f"{where}: values must be a list of strings")
    try:
        return _requirement(str(expr.get("key", "")), op, (str(v) for v in values))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


# -- the string syntax -----------------------------------------------------------------------

# Characters that end a key or value; everything else (including '/', '.', '_') is part of it.
_SPECIAL = frozenset("=!(),<> \t\n")


@dataclasses.dataclass
class _Token:
    kind: str  # "word", one of the operators below, or "end"
    text: str
    pos: int


class _Parser:
    """Recursive descent over `req (',' req)*`, each req one of
    `key`, `!key`, `key=v`, `key==v`, `key!=v`, `key in (v,...)`, `key notin (v,...)`,
    `key>n`, `key<n`. A value may be empty (`key=`), a value set may not.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(self._lex(text))
        self.i = 0

    def _lex(self, text: str) -> Iterable[_Token]:
        i = 0
        while i < len(text):
            c = text[i]
            if c.isspace():
                i += 1
            elif text.startswith(("==", "!="), i):
                yield _Token(text[i : i + 2], text[i : i + 2], i)
                i += 2
            elif c in _SPECIAL:
                yield _Token(c, c, i)
                i += 1
            else:
                start = i
                while i < len(text) and text[i] not in _SPECIAL:
                    i += 1
                yield _Token("word", text[start:i], start)
        yield _Token("end", "", len(text))

    def _peek(self) -> _Token:
        return self.tokens[self.i]

    def _next(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _fail(self, tok: _Token, expected: str) -> ValueError:
        found = "end of string" if tok.kind == "end" else repr(tok.text)
        return ValueError(f"expected {expected} but found {found} at position {tok.pos}")

    def _checked(self, start: _Token, key: str, op: Operator, values: list[str]) -> Requirement:
        try:
            return _requirement(key, op, values)
        except ValueError as err:
            raise ValueError(f"{err} (requirement at position {start.pos})") from None

    def parse(self) -> list[Requirement]:
        if self._peek().kind == "end":
            return []
        reqs = [self._requirement()]
        while self._peek().kind == ",":
            self._next()
            reqs.append(self._requirement())
        tok = self._peek()
        if tok.kind != "end":
            raise self._fail(tok, "',' or end of string")
        return reqs

    def _requirement(self) -> Requirement:
        start = self._next()
        if start.kind == "!":
            key = self._next()
            if key.kind != "word":
                raise self._fail(key, "a label key after '!'")
            return self._checked(start, key.text, Operator.DOES_NOT_EXIST, [])
        if start.kind != "word":
            raise self._fail(start, "a label key")
        return self._operation(start)

    def _operation(self, key: _Token) -> Requirement:
        tok = self._peek()
        if tok.kind in (",", "end"):
            return self._checked(key, key.text, Operator.EXISTS, [])
        self._next()
        if tok.kind in ("=", "==", "!="):
            op = Operator.NOT_EQUALS if tok.kind == "!=" else Operator.EQUALS
            return self._checked(key, key.text, op, [self._value()])
        if tok.kind in (">", "<"):
            op = Operator.GREATER_THAN if tok.kind == ">" else Operator.LESS_THAN
            return self._checked(key, key.text, op, [self._value()])
        if tok.kind == "word" and tok.text in ("in", "notin"):
            op = Operator.IN if tok.text == "in" else Operator.NOT_IN
            return self._checked(key, key.text, op, self._value_set())
        raise self._fail(tok, "an operator (=, ==, !=, in, notin, >, <), ',' or end of string")

    def _value(self) -> str:
        tok = self._peek()
        if tok.kind == "word":
            self._next()
            return tok.text
        if tok.kind in (",", ")", "end"):
            return ""
        raise self._fail(tok, "a label value")

    def _value_set(self) -> list[str]:
        opening = self._next()
        if opening.kind != "(":
            raise self._fail(opening, "'('")
        values = [self._value()]
        while self._peek().kind == ",":
            self._next()
            values.append(self._value())
        closing = self._next()
        if closing.kind != ")":
            raise self._fail(closing, "',' or ')'")
        if values == [""]:
            raise ValueError(f"the value set at position {opening.pos} must not be empty")
        return values
