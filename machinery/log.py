"""Operator logs: one named logger per component, constant messages, key=value fields.

    log = get_logger("scheduler")
    log.info("bound pod", pod="default/web-1", node="node-2")
    bound = log.bind(pod="default/web-1")      # fields fixed once per reconcile
    bound.warning("failed to bind pod", err=exc)

prints

    2026-12-03T08:04:32.120Z INFO scheduler bound pod pod=default/web-1 node=node-2

The field vocabulary is small and shared: pod=ns/name, node=, container=,
resource=, key=, err=, duration_ms=. Values with spaces are quoted. INFO is
for state changes an operator wants to see; decisions go to DEBUG.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

_ROOT = "kubelite"


def _format_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        millis = int(record.msecs)
        component = record.name.removeprefix(_ROOT + ".")
        fields = getattr(record, "kv", {})
        line = f"{stamp}.{millis:03d}Z {record.levelname} {component} {record.getMessage()}"
        if fields:
            line += " " + " ".join(f"{k}={_format_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class Logger:
    """A component logger with fields bound once and added to every line."""

    def __init__(self, logger: logging.Logger, fields: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._fields = fields or {}

    def bind(self, **fields: Any) -> Logger:
        return Logger(self._logger, {**self._fields, **fields})

    def _log(self, level: int, msg: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level, msg, extra={"kv": {**self._fields, **fields}}, exc_info=exc_info
            )

    def debug(self, msg: str, **fields: Any) -> None:
        self._log(logging.DEBUG, msg, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._log(logging.INFO, msg, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._log(logging.WARNING, msg, fields)

    def error(self, msg: str, *, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, msg, fields, exc_info=exc_info)

    def enabled(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)


def get_logger(component: str) -> Logger:
    return Logger(logging.getLogger(f"{_ROOT}.{component}"))


def setup(level: str | None = None, stream: Any = None) -> None:
    """Configure the process's log output once, at a component's entry point."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger(_ROOT)
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("KUBELITE_LOG_LEVEL", "INFO")).upper())
    root.propagate = False
