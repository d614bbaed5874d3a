"""The on-disk cache of compiled schema checkers: reused, never someone else's, optional."""

from __future__ import annotations

import os
import pathlib

import pytest

from machinery import validation
from tests.objects import pod


@pytest.fixture
def cache(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    directory = tmp_path / "schemas"
    monkeypatch.setenv("KUBELITE_CACHE_DIR", str(directory))
    validation._compiled.cache_clear()
    yield directory
    validation._compiled.cache_clear()


def _check_pods() -> None:
    assert validation.validate(pod("p")) == []
    bad = pod("p")
    bad["spec"]["containers"][0]["image"] = 7
    assert [c.field for c in validation.validate(bad)] == ["spec.containers[0].image"]


def test_checker_is_compiled_once_and_then_loaded(cache: pathlib.Path) -> None:
    _check_pods()
    [stored] = list(cache.glob("pods-*.marshal"))
    assert stored.stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700
    written = stored.stat().st_mtime_ns
    validation._compiled.cache_clear()
    _check_pods()
    assert stored.stat().st_mtime_ns == written


def test_a_file_of_another_owner_is_not_run(cache: pathlib.Path) -> None:
    _check_pods()
    [stored] = list(cache.glob("pods-*.marshal"))
    stored.write_bytes(b"not marshal data at all")
    os.chown(stored, 65534, 65534)
    validation._compiled.cache_clear()
    _check_pods()  # compiled afresh, and the foreign file replaced by our own
    assert stored.stat().st_uid == os.geteuid()


def test_a_corrupt_file_is_compiled_again(cache: pathlib.Path) -> None:
    _check_pods()
    [stored] = list(cache.glob("pods-*.marshal"))
    stored.write_bytes(b"\x00garbage")
    validation._compiled.cache_clear()
    _check_pods()


def test_an_unwritable_cache_only_costs_time(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("KUBELITE_CACHE_DIR", str(blocker / "schemas"))
    validation._compiled.cache_clear()
    try:
        _check_pods()
    finally:
        validation._compiled.cache_clear()
