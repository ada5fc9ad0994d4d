"""Fixtures for the log tests: a Tansu broker for the Kafka log (session-wide)."""

from __future__ import annotations

from tests.log.tansu import tansu

__all__ = ["tansu"]
