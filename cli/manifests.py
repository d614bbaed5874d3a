"""Reading manifests: files, directories and stdin, multi-document YAML or JSON.

A malformed document is reported with its file, line and column, and a
document that is not an object with apiVersion and kind is reported with its
file and position in the stream, so a user can find it in a long manifest.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys
from typing import Any

import yaml

from cli.errors import CliError

_SUFFIXES = (".yaml", ".yml", ".json")


@dataclasses.dataclass(frozen=True)
class Manifest:
    source: str  # file name, or "-" for stdin
    index: int  # position of the document in its file, from 0
    obj: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source} (document {self.index + 1})"


def load(paths: list[str], *, recursive: bool = False) -> list[Manifest]:
    manifests: list[Manifest] = []
    for path in paths:
        if path == "-":
            manifests += parse(sys.stdin.read(), "-")
            continue
        p = pathlib.Path(path)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix in _SUFFIXES)
            if not files:
                raise CliError(f"error: no manifests (*.yaml, *.yml, *.json) in directory {path}")
            for f in files:
                manifests += parse(_read(f), str(f))
        else:
            manifests += parse(_read(p), path)
    return manifests


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise CliError(f'error: the path "{path}" does not exist') from None
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"error: failed to read {path}: {err}") from None


def parse(text: str, source: str) -> list[Manifest]:
    manifests = []
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = err.problem or err.context or "malformed YAML"
        raise CliError(f"error: failed to parse {where}: {problem}") from None
    except yaml.YAMLError as err:
        raise CliError(f"error: failed to parse {source}: {err}") from None
    for index, doc in enumerate(documents):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise CliError(
                f"error: {source} (document {index + 1}): expected an object, "
                f"got {type(doc).__name__}"
            )
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            manifests += [Manifest(source, index, item) for item in doc["items"]]
            continue
        missing = [f for f in ("apiVersion", "kind") if not doc.get(f)]
        if missing:
            raise CliError(
                f"error: {source} (document {index + 1}): {' and '.join(missing)} not set"
            )
        manifests.append(Manifest(source, index, doc))
    return manifests
