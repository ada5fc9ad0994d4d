"""Answering questions over K2's data: the lake (Iceberg) joined with the live tail.

:class:`QueryEngine` is the entry point (trades, quotes, bars, summaries, symbols,
snapshots, sandboxed SQL); results are :class:`QueryResult` s with :class:`QueryMeta`;
questions it cannot answer raise :class:`QueryError` with a stable ``code``.
"""

from k2.query.base import QueryError, QueryMeta, QueryResult, Tail, TailView
from k2.query.engine import QueryEngine

__all__ = ["QueryEngine", "QueryError", "QueryMeta", "QueryResult", "Tail", "TailView"]
