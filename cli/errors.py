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
