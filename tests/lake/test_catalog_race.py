"""Stages that open a new SQL catalog at the same moment: the one that loses the race to
create the catalog's tables opens it again instead of failing (``make demo`` once saw
the API exit with "table iceberg_tables already exists" and be restarted)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog
from sqlalchemy.exc import OperationalError

from k2.config import LakeSettings
from k2.lake.catalog import catalog_from
from k2.lake.tables import ensure_tables


def _losing(real: object, raises: int) -> object:
    """``SqlCatalog.create_tables`` as a process that loses the race sees it: another
    process has just created the tables, then this one's CREATE fails (``raises`` times)."""
    calls: list[int] = []

    def create_tables(self: SqlCatalog) -> None:
        real(self)  # type: ignore[operator]
        calls.append(1)
        if len(calls) <= raises:
            cause = sqlite3.OperationalError("table iceberg_tables already exists")
            raise OperationalError("CREATE TABLE iceberg_tables (...)", {}, cause)

    return create_tables


def test_losing_the_create_race_opens_the_winners_catalog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SqlCatalog, "create_tables", _losing(SqlCatalog.create_tables, 1))
    catalog = catalog_from(LakeSettings(), tmp_path)
    assert set(ensure_tables(catalog)) >= {"trades", "quotes"}


def test_other_catalog_errors_still_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: SqlCatalog) -> None:
        cause = sqlite3.OperationalError("disk I/O error")
        raise OperationalError("CREATE TABLE iceberg_tables (...)", {}, cause)

    monkeypatch.setattr(SqlCatalog, "create_tables", broken)
    with pytest.raises(OperationalError, match="disk I/O error"):
        catalog_from(LakeSettings(), tmp_path)


def test_a_race_that_never_ends_is_not_retried_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[int] = []

    def always_lost(self: SqlCatalog) -> None:
        tries.append(1)  # the tables never appear: each attempt tries to create them
        cause = sqlite3.OperationalError("table iceberg_tables already exists")
        raise OperationalError("CREATE TABLE iceberg_tables (...)", {}, cause)

    monkeypatch.setattr(SqlCatalog, "create_tables", always_lost)
    with pytest.raises(OperationalError, match="already exists"):
        catalog_from(LakeSettings(), tmp_path)
    assert len(tries) == 3
