"""Query fixtures: a tmp_path lake, engines that close themselves, the S3 server, and
the embedded log and tables the live-tail tests share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from k2.config import LakeSettings, QuerySettings
from k2.lake.catalog import catalog_from
from k2.lake.tables import ensure_tables
from k2.log.embedded import EmbeddedLog
from k2.query.engine import QueryEngine
from tests.lake.conftest import s3_endpoint  # noqa: F401 (the session's moto server)
from tests.query.tail_testkit import TAIL_LAYOUT

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.table import Table


@dataclass
class Lake:
    """A catalog and K2's tables in it."""

    catalog: Catalog
    tables: dict[str, Table]
    settings: LakeSettings


def open_lake(settings: LakeSettings, data_dir: Path) -> Lake:
    """K2's tables under ``settings`` (created when missing)."""
    catalog = catalog_from(settings, data_dir)
    return Lake(catalog, ensure_tables(catalog, settings.namespace), settings)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """An embedded (SQLite catalog, local warehouse) lake with empty tables."""
    return open_lake(LakeSettings(), tmp_path)


EngineFactory = Callable[..., QueryEngine]


@pytest.fixture
def make_engine(lake: Lake) -> Iterator[EngineFactory]:
    """``make_engine(**kwargs)``: a :class:`QueryEngine` over ``lake`` (inline refresh
    unless ``background_refresh=True``; ``settings=`` QuerySettings), closed at the end."""
    engines: list[QueryEngine] = []

    def make(target: Lake | None = None, **kwargs: Any) -> QueryEngine:
        where = target or lake
        kwargs.setdefault("background_refresh", False)
        kwargs.setdefault("settings", QuerySettings())
        engine = QueryEngine(where.catalog, namespace=where.settings.namespace, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    """An embedded log in ``tmp_path`` with :data:`TAIL_LAYOUT`'s topics."""
    handle = EmbeddedLog(tmp_path / "log", durability="normal")
    for spec in TAIL_LAYOUT.specs():
        handle.create_topic(spec)
    yield handle
    handle.close()


@pytest.fixture
def tables(tmp_path: Path) -> dict[str, Table]:
    """K2's tables in a SQLite-catalog lake at ``tmp_path / "data"``."""
    return ensure_tables(catalog_from(LakeSettings(), tmp_path / "data"))
