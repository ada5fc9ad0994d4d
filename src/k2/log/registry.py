"""Where Avro schema ids come from: a Confluent Schema Registry, or memory.

:class:`SchemaRegistryClient` speaks the Confluent Schema Registry REST API (v1), the
contract also served by Redpanda, Karapace and Apicurio's compatibility layer:

- ``POST /subjects/{subject}/versions`` with ``{"schema": "<schema as JSON text>"}`` →
  ``{"id": <global schema id>}``; registering a schema a subject already holds returns
  its existing id; ``409`` when the subject's compatibility rule rejects it;
- ``GET /schemas/ids/{id}`` → ``{"schema": "<schema as JSON text>", ...}``;
- ``PUT /config/{subject}`` with ``{"compatibility": "BACKWARD"}``.

Every request carries ``Content-Type: application/vnd.schemaregistry.v1+json`` and
asks for the same type back; errors come as ``{"error_code": n, "message": "..."}``.
Errors are translated here: an incompatible or invalid schema, an unknown id and an
auth failure are terminal; 5xx, timeouts and connection failures are transient.

:class:`MemorySchemaStore` hands out ids within one process. It is for tests,
benchmarks and single-process use, where ids never leave the process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from k2.errors import ConfigError, ConnectionLost, RateLimited, TerminalError, TransientError

#: The content type the registry's v1 API documents for requests and responses.
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
_ACCEPT = f"{CONTENT_TYPE}, application/vnd.schemaregistry+json, application/json"

#: Compatibility levels the registry accepts (``PUT /config``).
COMPATIBILITY_LEVELS = frozenset(
    {
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
    }
)


class SchemaStore(Protocol):
    """Assigns ids to Avro schemas and returns the schema of an id."""

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """The id of ``schema`` under ``subject``, registering it if new."""
        ...

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The schema with id ``schema_id``; :class:`~k2.errors.TerminalError` if unknown."""
        ...

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set the compatibility rule new versions of ``subject`` must satisfy."""
        ...


def schema_text(schema: Mapping[str, Any]) -> str:
    """``schema`` as compact JSON text, keys in their given order (Avro's own order)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


class MemorySchemaStore:
    """A schema store in this process's memory: ids 1, 2, ... in registration order.

    The same schema under two subjects gets one id, as in the Confluent registry.
    Compatibility levels are recorded but not enforced.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}
        self._subjects: dict[str, list[int]] = {}
        self.compatibility: dict[str, str] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        text = schema_text(schema)
        with self._lock:
            schema_id = self._ids.get(text)
            if schema_id is None:
                schema_id = len(self._ids) + 1
                self._ids[text] = schema_id
                self._schemas[schema_id] = json.loads(text)
            versions = self._subjects.setdefault(subject, [])
            if schema_id not in versions:
                versions.append(schema_id)
            return schema_id

    def schema(self, schema_id: int) -> dict[str, Any]:
        try:
            return json.loads(schema_text(self._schemas[schema_id]))  # type: ignore[no-any-return]
        except KeyError:
            raise TerminalError(f"schema id {schema_id} is not registered") from None

    def set_compatibility(self, subject: str, level: str) -> None:
        _check_level(level)
        self.compatibility[subject] = level


class SchemaRegistryClient:
    """A client of a Confluent-compatible Schema Registry at ``url``.

    Ids are cached: a schema registered once under a subject, or fetched once by id,
    is never asked for again (ids are immutable in the registry). ``client`` lets the
    caller supply the HTTP transport (timeouts, TLS, auth); by default one is made with
    ``timeout_s``. Credentials in the URL (``https://user:secret@host``) are sent as HTTP
    basic auth. Safe to share between threads.

    Errors: :class:`~k2.errors.TerminalError` for an incompatible (409) or invalid (422)
    schema and an unknown id (404); :class:`~k2.errors.ConfigError` for 401/403;
    :class:`~k2.errors.RateLimited` for 429; :class:`~k2.errors.TransientError` for 5xx;
    :class:`~k2.errors.ConnectionLost` when the registry cannot be reached.
    """

    def __init__(
        self, url: str, *, client: httpx.Client | None = None, timeout_s: float = 10.0
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"K2_SCHEMA_REGISTRY_URL must be an http(s) URL, got {url!r}")
        self.url = url.rstrip("/")
        self._own_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=timeout_s)
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, dict[str, Any]] = {}
        self._levels: dict[str, str] = {}

    def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Register ``schema`` (an Avro schema as a JSON-able dict) under ``subject`` and
        return its global id; an already registered schema returns its existing id."""
        text = schema_text(schema)
        cached = self._ids.get((subject, text))
        if cached is not None:
            return cached
        body = self._request("POST", f"/subjects/{_segment(subject)}/versions", {"schema": text})
        schema_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(schema_id, int):
            raise TerminalError(
                f"schema registry {self.url}: unexpected response to registering "
                f"{subject!r}: {body!r}"
            )
        self._ids[(subject, text)] = schema_id
        self._schemas.setdefault(schema_id, json.loads(text))
        return schema_id

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The Avro schema with global id ``schema_id``, as a dict."""
        cached = self._schemas.get(schema_id)
        if cached is not None:
            return cached
        body = self._request("GET", f"/schemas/ids/{int(schema_id)}")
        text = body.get("schema") if isinstance(body, dict) else None
        schema_type = body.get("schemaType", "AVRO") if isinstance(body, dict) else None
        if not isinstance(text, str) or schema_type != "AVRO":
            raise TerminalError(
                f"schema registry {self.url}: schema id {schema_id} is not an Avro schema: {body!r}"
            )
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise TerminalError(
                f"schema registry {self.url}: schema id {schema_id} is not JSON: {exc}"
            ) from None
        if isinstance(parsed, str):  # a primitive schema such as "string"
            parsed = {"type": parsed}
        if not isinstance(parsed, dict):
            raise TerminalError(
                f"schema registry {self.url}: schema id {schema_id} is not a record schema"
            )
        self._schemas[schema_id] = parsed
        return parsed

    def set_compatibility(self, subject: str, level: str) -> None:
        """Set ``subject``'s compatibility level (``BACKWARD``, ``FULL``, ``NONE``...)."""
        _check_level(level)
        if self._levels.get(subject) == level:
            return
        body = self._request("PUT", f"/config/{_segment(subject)}", {"compatibility": level})
        if not isinstance(body, dict) or body.get("compatibility") != level:
            raise TerminalError(
                f"schema registry {self.url}: unexpected response to setting "
                f"{subject!r} to {level}: {body!r}"
            )
        self._levels[subject] = level

    def close(self) -> None:
        """Release the HTTP connection pool (only if this client created it)."""
        if self._own_client:
            self._client.close()

    def _request(self, method: str, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        headers = {"Accept": _ACCEPT}
        content: bytes | None = None
        if payload is not None:
            headers["Content-Type"] = CONTENT_TYPE
            content = json.dumps(payload, separators=(",", ":")).encode()
        where = f"schema registry {self.url}: {method} {path}"
        try:
            response = self._client.request(
                method, self.url + path, content=content, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise ConnectionLost(f"{where} timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise ConnectionLost(f"{where} failed: {exc}") from exc
        if response.status_code >= 400:
            raise _error(where, response)
        try:
            return response.json()
        except ValueError as exc:
            raise TerminalError(f"{where}: response is not JSON: {exc}") from None


def _error(where: str, response: httpx.Response) -> Exception:
    status = response.status_code
    code: Any = None
    message = response.text.strip()
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = body.get("error_code")
        message = str(body.get("message", message))
    text = f"{where} → HTTP {status}" + (f" (error {code})" if code is not None else "")
    text += f": {message}" if message else ""
    if status == 409:
        return TerminalError(text + " — the schema is incompatible with the subject's rule")
    if status in (401, 403):
        return ConfigError(text + " — check the credentials in K2_SCHEMA_REGISTRY_URL")
    if status == 429:
        retry_after = response.headers.get("Retry-After")
        try:
            delay = float(retry_after) if retry_after is not None else None
        except ValueError:
            delay = None
        return RateLimited(text, retry_after=delay)
    if status >= 500 or status == 408:
        return TransientError(text)
    return TerminalError(text)


def _segment(subject: str) -> str:
    """``subject`` escaped as one URL path segment (subjects may contain ``/``, ``:``)."""
    return quote(subject, safe="")


def _check_level(level: str) -> None:
    if level not in COMPATIBILITY_LEVELS:
        raise ConfigError(
            f"unknown schema compatibility level {level!r}; "
            f"use one of {', '.join(sorted(COMPATIBILITY_LEVELS))}"
        )
