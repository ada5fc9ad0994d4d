"""Structured logging: JSON lines or readable console output, with correlation ids.

``configure_logging`` is called once by the CLI. Code everywhere logs through
``get_logger(__name__)``; ``bind_correlation`` binds ids (a connection id, a batch id)
to every line logged inside it, across ``await`` points (contextvars).
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog

LogFormat = Literal["json", "console"]


def configure_logging(fmt: LogFormat = "console", level: str = "INFO") -> None:
    """Route K2's and the standard library's logs through structlog to stderr."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}")
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        # sys.stderr as it is when a line is written, not when logging was configured:
        # a CLI run inside a test harness (or a redirected stream) may close the
        # stream it started with.
        logger_factory=_current_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _current_stderr_logger(*_: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(file=sys.stderr)


def get_logger(name: str) -> Any:
    """A structlog logger named ``name``."""
    return structlog.get_logger(name)


def new_correlation_id(prefix: str) -> str:
    """A short unique id such as ``conn-3f2a9c1b``."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def bind_correlation(**ids: str) -> Iterator[None]:
    """Bind ``ids`` to every log line emitted inside the block (task-local)."""
    tokens = structlog.contextvars.bind_contextvars(**ids)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
