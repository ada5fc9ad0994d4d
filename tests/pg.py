"""Throwaway PostgreSQL databases on the test machine's server (127.0.0.1:5432)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@contextlib.contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A new database named ``<prefix>_<random>`` (yielded), dropped afterwards with
    its connections; skips the test when no server answers."""
    psycopg2 = pytest.importorskip("psycopg2")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg2.connect(PG_ADMIN_DSN)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
