"""kctl's failure type: one line for stderr and an exit status."""

from __future__ import annotations

from machinery import errors


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def from_api(err: errors.ApiError) -> CliError:
    """Render an API error the way kubectl does: Error from server (Reason): message."""
    if isinstance(err, errors.Unavailable | errors.Timeout) and "API server at" in err.message:
        return CliError(f"error: {err.message}")
    return CliError(f"Error from server ({err.reason}): {err.message}")


def duration(text: str) -> float:
    """Seconds from a kubectl-style duration: 90, 90s, 2m, 1h30m, 500ms."""
    import re

    value = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value)
    if not parts or "".join(n + u for n, u in parts) != value:
        import argparse

        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 90s, 2m or 1h30m")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)
