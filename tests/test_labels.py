"""Label syntax rules and label selectors: parsing, matching, errors and the string form."""

from __future__ import annotations

from typing import Any

import pytest

from machinery import labels
from machinery.labels import Operator, Requirement, Selector

# -- name and label rules --------------------------------------------------------------------

RULES: list[tuple[str, Any, str, str | None]] = [
    # (id, rule, value, start of the problem or None when valid)
    ("label-simple", labels.validate_dns1123_label, "web-1", None),
    ("label-digits-first", labels.validate_dns1123_label, "1web", None),
    ("label-uppercase", labels.validate_dns1123_label, "Web", "must be a lowercase RFC 1123 label"),
    ("label-dot", labels.validate_dns1123_label, "a.b", "must be a lowercase RFC 1123 label"),
    (
        "label-trailing-dash",
        labels.validate_dns1123_label,
        "web-",
        "must be a lowercase RFC 1123 label",
    ),
    ("label-64", labels.validate_dns1123_label, "a" * 64, "must be no more than 63 characters"),
    ("label-empty", labels.validate_dns1123_label, "", "must be a lowercase RFC 1123 label"),
    ("subdomain-dotted", labels.validate_dns1123_subdomain, "web.shop.example", None),
    (
        "subdomain-underscore",
        labels.validate_dns1123_subdomain,
        "web_app",
        "must be a lowercase RFC 1123 subdomain",
    ),
    (
        "subdomain-empty-part",
        labels.validate_dns1123_subdomain,
        "a..b",
        "must be a lowercase RFC 1123 subdomain",
    ),
    (
        "subdomain-254",
        labels.validate_dns1123_subdomain,
        "a" * 254,
        "must be no more than 253 characters",
    ),
    (
        "subdomain-too-long-and-bad",
        labels.validate_dns1123_subdomain,
        "A" * 254,
        "must be no more than 253 characters; must be a lowercase",
    ),
    ("rfc1035-simple", labels.validate_dns1035_label, "my-service", None),
    (
        "rfc1035-digit-first",
        labels.validate_dns1035_label,
        "1svc",
        "must be a lowercase RFC 1035 label",
    ),
    ("key-plain", labels.validate_label_key, "app", None),
    ("key-mixed-case-name", labels.validate_label_key, "My_Key.v1", None),
    ("key-with-prefix", labels.validate_label_key, "app.kubernetes.io/name", None),
    (
        "key-prefix-uppercase",
        labels.validate_label_key,
        "Example.com/app",
        "prefix part must be a lowercase RFC 1123 subdomain",
    ),
    ("key-empty-prefix", labels.validate_label_key, "/app", "prefix part must not be empty"),
    ("key-empty-name", labels.validate_label_key, "example.com/", "name part must not be empty"),
    ("key-empty", labels.validate_label_key, "", "name part must not be empty"),
    (
        "key-two-slashes",
        labels.validate_label_key,
        "a/b/c",
        "a qualified name may contain at most one '/'",
    ),
    (
        "key-name-64",
        labels.validate_label_key,
        "k" * 64,
        "name part must be no more than 63 characters",
    ),
    ("key-space", labels.validate_label_key, "my key", "name part must consist of letters, digits"),
    (
        "key-leading-dot",
        labels.validate_label_key,
        ".app",
        "name part must consist of letters, digits",
    ),
    ("value-empty", labels.validate_label_value, "", None),
    ("value-dotted", labels.validate_label_value, "v1.2_rc-3", None),
    (
        "value-slash",
        labels.validate_label_value,
        "a/b",
        "a label value must be empty or consist of",
    ),
    (
        "value-trailing-dot",
        labels.validate_label_value,
        "v1.",
        "a label value must be empty or consist of",
    ),
    ("value-64", labels.validate_label_value, "v" * 64, "must be no more than 63 characters"),
]


@pytest.mark.parametrize(
    ("rule", "value", "problem"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_rule(rule: Any, value: str, problem: str | None) -> None:
    got = rule(value)
    if problem is None:
        assert got is None
    else:
        assert got is not None and got.startswith(problem), got


# -- parsing and the canonical string --------------------------------------------------------

PARSE: list[tuple[str, str, str]] = [
    # (id, text, canonical string)
    ("empty", "", ""),
    ("only-spaces", "   ", ""),
    ("equals", "app=web", "app=web"),
    ("double-equals", "app==web", "app=web"),
    ("not-equals", "tier!=db", "tier!=db"),
    ("empty-value", "app=", "app="),
    ("in-sorted", "env in (prod, dev)", "env in (dev,prod)"),
    ("notin", "env notin (qa)", "env notin (qa)"),
    ("exists", "gpu", "gpu"),
    ("does-not-exist", "!gpu", "!gpu"),
    ("greater-than", "cores>4", "cores>4"),
    ("less-than", "cores<16", "cores<16"),
    ("sorted-by-key", "z=1,a=2,m", "a=2,m,z=1"),
    ("spaces-around", " app = web , tier != db ", "app=web,tier!=db"),
    ("prefixed-key", "app.kubernetes.io/name=web", "app.kubernetes.io/name=web"),
    ("duplicates-dropped", "a=1,a=1", "a=1"),
    ("in-with-empty-value", "a in (x,)", "a in (,x)"),
    ("in-duplicates-dropped", "a in (x,x,y)", "a in (x,y)"),
    ("same-key-two-ops", "a!=1,a", "a!=1,a"),
]


@pytest.mark.parametrize(("text", "canonical"), [p[1:] for p in PARSE], ids=[p[0] for p in PARSE])
def test_parse_renders_canonically(text: str, canonical: str) -> None:
    selector = Selector.parse(text)
    assert str(selector) == canonical
    assert Selector.parse(str(selector)) == selector


def test_parse_builds_requirements() -> None:
    selector = Selector.parse("app=web,env in (prod,dev),!canary")
    assert selector.requirements == (
        Requirement("app", Operator.EQUALS, ("web",)),
        Requirement("canary", Operator.DOES_NOT_EXIST),
        Requirement("env", Operator.IN, ("dev", "prod")),
    )


PARSE_ERRORS: list[tuple[str, str, str]] = [
    # (id, text, message fragment naming the bad part and where it is)
    ("unclosed-set", "a in (x", "expected ',' or ')' but found end of string at position 7"),
    ("set-without-paren", "a in x", "expected '(' but found 'x' at position 5"),
    ("empty-set", "a in ()", "the value set at position 5 must not be empty"),
    ("two-equals", "a=b=c", "expected ',' or end of string but found '=' at position 3"),
    ("no-key", "=b", "expected a label key but found '=' at position 0"),
    ("trailing-comma", "a=b,", "expected a label key but found end of string at position 4"),
    (
        "bang-without-key",
        "!",
        "expected a label key after '!' but found end of string at position 1",
    ),
    (
        "unknown-operator-word",
        "a is b",
        "expected an operator (=, ==, !=, in, notin, >, <), ',' or end of string "
        "but found 'is' at position 2",
    ),
    ("space-in-value", "a=b c", "expected ',' or end of string but found 'c' at position 4"),
    (
        "bad-key",
        "a/b/c=d",
        "invalid label key 'a/b/c': a qualified name may contain at most one '/'",
    ),
    ("bad-value", "app=-web", "invalid label value '-web' for key 'app'"),
    ("bad-key-position", "a=1, b/c/d", "(requirement at position 5)"),
    ("bad-value-in-set", "b=1,app in (ok,no way)", "found 'way' at position 18"),
    (
        "gt-not-integer",
        "cores>many",
        "key 'cores': '>' and '<' need exactly one integer value (requirement at position 0)",
    ),
    ("bang-before-value", "a!", "expected an operator"),
]


@pytest.mark.parametrize(
    ("text", "fragment"), [e[1:] for e in PARSE_ERRORS], ids=[e[0] for e in PARSE_ERRORS]
)
def test_parse_error_names_the_bad_part(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        Selector.parse(text)
    assert fragment in str(raised.value)


# -- matching --------------------------------------------------------------------------------

WEB = {"app": "web", "tier": "frontend", "cores": "8"}

MATCH: list[tuple[str, str, dict[str, str] | None, bool]] = [
    ("empty-selects-all", "", WEB, True),
    ("empty-selects-unlabelled", "", None, True),
    ("equals-hit", "app=web", WEB, True),
    ("equals-miss", "app=db", WEB, False),
    ("equals-missing-key", "zone=a", WEB, False),
    ("not-equals-hit", "app!=db", WEB, True),
    ("not-equals-missing-key-matches", "zone!=a", WEB, True),
    ("not-equals-miss", "app!=web", WEB, False),
    ("in-hit", "tier in (frontend,backend)", WEB, True),
    ("in-miss", "tier in (backend)", WEB, False),
    ("notin-hit", "tier notin (backend)", WEB, True),
    ("notin-missing-key-matches", "zone notin (a)", WEB, True),
    ("notin-miss", "tier notin (frontend)", WEB, False),
    ("exists-hit", "tier", WEB, True),
    ("exists-miss", "zone", WEB, False),
    ("does-not-exist-hit", "!zone", WEB, True),
    ("does-not-exist-miss", "!tier", WEB, False),
    ("gt-hit", "cores>4", WEB, True),
    ("gt-equal-misses", "cores>8", WEB, False),
    ("lt-hit", "cores<16", WEB, True),
    ("gt-on-non-integer-label-misses", "app>1", WEB, False),
    ("gt-missing-key-misses", "zone>1", WEB, False),
    ("all-must-match", "app=web,tier=backend", WEB, False),
    ("conjunction-hit", "app=web,tier,!zone,cores>2", WEB, True),
    ("none-labels-fail-equality", "app=web", None, False),
    ("empty-value-matches-empty-label", "role=", {"role": ""}, True),
]


@pytest.mark.parametrize(
    ("text", "have", "expected"), [m[1:] for m in MATCH], ids=[m[0] for m in MATCH]
)
def test_matches(text: str, have: dict[str, str] | None, expected: bool) -> None:
    assert Selector.parse(text).matches(have) is expected


# -- label selector objects ------------------------------------------------------------------

OBJECTS: list[tuple[str, dict[str, Any] | None, str, bool]] = [
    # (id, object, canonical string, matches WEB)
    ("match-labels", {"matchLabels": {"app": "web"}}, "app=web", True),
    (
        "match-expressions",
        {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend"]}]},
        "tier in (frontend)",
        True,
    ),
    (
        "both-combined",
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}],
        },
        "app=web,!zone",
        True,
    ),
    (
        "not-in",
        {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["frontend", "api"]}]},
        "tier notin (api,frontend)",
        False,
    ),
    ("exists", {"matchExpressions": [{"key": "cores", "operator": "Exists"}]}, "cores", True),
    ("empty-object-selects-all", {}, "", True),
    ("empty-parts-select-all", {"matchLabels": {}, "matchExpressions": []}, "", True),
]


@pytest.mark.parametrize(
    ("obj", "text", "hit"), [o[1:] for o in OBJECTS], ids=[o[0] for o in OBJECTS]
)
def test_from_label_selector(obj: dict[str, Any], text: str, hit: bool) -> None:
    selector = Selector.from_label_selector(obj)
    assert str(selector) == text
    assert selector.matches(WEB) is hit
    assert Selector.parse(text) == selector


def test_nil_selector_selects_nothing() -> None:
    selector = Selector.from_label_selector(None)
    assert selector.selects_nothing
    assert not selector.empty
    assert not selector.matches(WEB) and not selector.matches({})
    assert str(selector) == ""  # no text form, as in Kubernetes; check selects_nothing first


def test_empty_selector_is_empty() -> None:
    assert Selector.parse("").empty and Selector.from_label_selector({}).empty
    assert not Selector.parse("a=b").empty


OBJECT_ERRORS: list[tuple[str, Any, str]] = [
    (
        "in-without-values",
        {"matchExpressions": [{"key": "a", "operator": "In"}]},
        "matchExpressions[0]: operator 'in' on key 'a' needs at least one value",
    ),
    (
        "exists-with-values",
        {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]},
        "matchExpressions[0]: key 'a': an existence test takes no values",
    ),
    (
        "unknown-operator",
        {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]},
        "matchExpressions[0]: operator 'Gt' is not one of In, NotIn, Exists, DoesNotExist",
    ),
    ("bad-key", {"matchLabels": {"bad key": "x"}}, "invalid label key 'bad key'"),
    ("bad-value", {"matchLabels": {"app": "a b"}}, "invalid label value 'a b' for key 'app'"),
    ("match-labels-a-list", {"matchLabels": ["app"]}, "matchLabels must be a map"),
    (
        "expressions-not-a-list",
        {"matchExpressions": {"key": "a"}},
        "matchExpressions must be a list",
    ),
    (
        "expression-not-an-object",
        {"matchExpressions": ["a"]},
        "matchExpressions[0] must be an object",
    ),
    (
        "values-not-a-list",
        {"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]},
        "matchExpressions[0]: values must be a list",
    ),
]


@pytest.mark.parametrize(
    ("obj", "fragment"), [e[1:] for e in OBJECT_ERRORS], ids=[e[0] for e in OBJECT_ERRORS]
)
def test_from_label_selector_errors(obj: Any, fragment: str) -> None:
    with pytest.raises(ValueError) as raised:
        Selector.from_label_selector(obj)
    assert fragment in str(raised.value)


def test_from_set() -> None:
    selector = Selector.from_set({"tier": "frontend", "app": "web"})
    assert str(selector) == "app=web,tier=frontend"
    assert selector.matches(WEB)
    assert Selector.from_set({}).empty and Selector.from_set(None).empty


EQUALITY: list[tuple[str, str, dict[str, str]]] = [
    (
        "equals-and-single-in",
        "app=web,tier in (fe),env in (a,b),!x,y!=1",
        {"app": "web", "tier": "fe"},
    ),
    ("none", "app,!tier", {}),
]


@pytest.mark.parametrize(
    ("text", "expected"), [e[1:] for e in EQUALITY], ids=[e[0] for e in EQUALITY]
)
def test_equality_requirements(text: str, expected: dict[str, str]) -> None:
    assert Selector.parse(text).equality_requirements() == expected


def test_selectors_are_values() -> None:
    a, b = Selector.parse("b=2,a=1"), Selector.parse("a=1, b=2")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
