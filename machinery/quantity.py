"""Resource quantities in Kubernetes' notation: 500m, 1.5, 128Mi, 1G, 2e3.

A quantity is a decimal number with an optional suffix: a decimal SI suffix
(m, k, M, G, T, P, E), a binary one (Ki, Mi, Gi, Ti, Pi, Ei) or a decimal
exponent (e3, E-2). Values are kept as Fractions so that "0.1" CPU is exactly
100 millicores and no rounding error accumulates when requests are summed.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_SUFFIXES: dict[str, Fraction] = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}

QUANTITY_PATTERN = (
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)


class QuantityError(ValueError):
    pass


def parse_quantity(value: str | int | float) -> Fraction:
    """The exact value of a quantity; QuantityError names the bad input."""
    if isinstance(value, bool):
        raise QuantityError(f"quantity {value!r} is not a number")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):  # JSON's NaN and Infinity extensions
            raise QuantityError(f"quantity {value!r} is not a finite number")
        return Fraction(str(value))
    text = str(value).strip()
    match = _QUANTITY_RE.match(text)
    if not match:
        raise QuantityError(
            f"quantity {value!r} must match the regular expression {QUANTITY_PATTERN!r}"
        )
    number = match.group(1)
    exponent, suffix = match.group(4), match.group(5) or ""
    sign = -1 if text.startswith("-") else 1
    result = Fraction(number) * sign
    if exponent:
        result *= Fraction(10) ** int(exponent[1:])
    else:
        result *= _SUFFIXES[suffix]
    return result


def is_quantity(value: object) -> bool:
    try:
        parse_quantity(value)  # type: ignore[arg-type]
    except QuantityError:
        return False
    return True


def cpu_millis(value: str | int | float) -> int:
    """CPU in millicores, rounded up as Kubernetes does (0.0001 -> 1m)."""
    milli = parse_quantity(value) * 1000
    return int(-(-milli // 1))


def to_bytes(value: str | int | float) -> int:
    """Memory or storage in bytes, rounded up."""
    return int(-(-parse_quantity(value) // 1))


def format_cpu(millis: int) -> str:
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def format_bytes(n: int) -> str:
    for suffix, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)
