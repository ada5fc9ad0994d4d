"""The Schema Registry client against a local server speaking the registry's documented
REST contract (Confluent Schema Registry API v1): subjects and versions, global ids,
per-subject compatibility, ``{"error_code", "message"}`` errors.

No Schema Registry server can run here, so this server implements the parts of the
documented contract K2 uses, and the tests assert the exact requests the client sends.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import httpx
import pyarrow as pa
import pytest

from k2.errors import ConfigError, ConnectionLost, RateLimited, TerminalError, TransientError
from k2.log.codec import AvroCodec
from k2.log.registry import CONTENT_TYPE, SchemaRegistryClient
from k2.records import TRADE
from tests.ports import free_port

ACCEPT = (
    "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json"
)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Registry:
    """The registry's state, and every request it received."""

    schemas: list[str] = field(default_factory=list)  # id - 1 → schema text
    subjects: dict[str, list[int]] = field(default_factory=dict)  # subject → ids by version
    config: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    fail_next: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)


def _compatible_backward(new: dict[str, Any], old: dict[str, Any]) -> bool:
    """Enough of Avro's BACKWARD rule for these tests: the new schema can read data
    written with the old one if every field it adds has a default and no common field
    changed type."""
    old_fields = {f["name"]: f for f in old.get("fields", [])}
    for f in new.get("fields", []):
        before = old_fields.get(f["name"])
        if before is None and "default" not in f:
            return False
        if before is not None and before["type"] != f["type"]:
            return False
    return True


def _handler(state: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, code: int, message: str) -> None:
            self._reply(status, {"error_code": code, "message": message})

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            state.requests.append(
                Request(self.command, self.path, {k: v for k, v in self.headers.items()}, body)
            )
            if state.fail_next:
                status, payload, headers = state.fail_next.pop(0)
                self._reply(status, payload, headers)
                return
            parts = [unquote(p) for p in self.path.strip("/").split("/")]
            shape = (self.command, len(parts), parts[0], parts[-1] if len(parts) == 3 else "")
            if shape == ("POST", 3, "subjects", "versions"):
                self._register(parts[1], body)
            elif shape[:3] == ("GET", 3, "schemas") and parts[1] == "ids":
                self._schema(int(parts[2]))
            elif shape[:3] == ("PUT", 2, "config"):
                level = body.get("compatibility") if isinstance(body, dict) else None
                if level not in {"BACKWARD", "FORWARD", "FULL", "NONE"}:
                    self._error(422, 42203, "Invalid compatibility level")
                    return
                state.config[parts[1]] = level
                self._reply(200, {"compatibility": level})
            else:
                self._error(404, 404, f"no route {self.command} {self.path}")

        def _register(self, subject: str, body: Any) -> None:
            try:
                schema = json.loads(body["schema"])
            except (TypeError, KeyError, ValueError):
                self._error(422, 42201, "Invalid schema")
                return
            text = json.dumps(schema, sort_keys=True)
            versions = state.subjects.setdefault(subject, [])
            if text in state.schemas and state.schemas.index(text) + 1 in versions:
                self._reply(200, {"id": state.schemas.index(text) + 1})
                return
            level = state.config.get(subject, "BACKWARD")
            if versions and level == "BACKWARD":
                latest = json.loads(state.schemas[versions[-1] - 1])
                if not _compatible_backward(schema, latest):
                    self._error(
                        409,
                        409,
                        "Schema being registered is incompatible with an earlier schema for "
                        f'subject "{subject}"',
                    )
                    return
            if text not in state.schemas:
                state.schemas.append(text)
            schema_id = state.schemas.index(text) + 1
            versions.append(schema_id)
            self._reply(200, {"id": schema_id})

        def _schema(self, schema_id: int) -> None:
            if not 1 <= schema_id <= len(state.schemas):
                self._error(404, 40403, "Schema not found")
                return
            self._reply(200, {"schema": state.schemas[schema_id - 1]})

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

    return Handler


@pytest.fixture
def registry() -> Iterator[tuple[str, Registry]]:
    state = Registry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def client(registry: tuple[str, Registry]) -> Iterator[SchemaRegistryClient]:
    c = SchemaRegistryClient(registry[0] + "/")
    yield c
    c.close()


def test_register_posts_the_schema_as_json_text_with_the_registry_content_type(
    client: SchemaRegistryClient, registry: tuple[str, Registry]
) -> None:
    _, state = registry
    schema = TRADE.avro_schema()
    assert client.register("k2.trade-value", schema) == 1
    (req,) = state.requests
    assert (req.method, req.path) == ("POST", "/subjects/k2.trade-value/versions")
    assert req.headers["Content-Type"] == CONTENT_TYPE
    assert req.headers["Accept"] == ACCEPT
    assert list(req.body) == ["schema"]
    assert isinstance(req.body["schema"], str)
    assert json.loads(req.body["schema"]) == schema
    # Cached: the same schema under the same subject is not asked for again.
    assert client.register("k2.trade-value", schema) == 1
    assert len(state.requests) == 1


def test_ids_are_global_and_the_same_schema_under_two_subjects_shares_one(
    client: SchemaRegistryClient,
) -> None:
    a = client.register("a-value", TRADE.avro_schema())
    b = client.register("b-value", TRADE.avro_schema())
    assert a == b == 1


def test_subjects_are_escaped_as_one_path_segment(
    client: SchemaRegistryClient, registry: tuple[str, Registry]
) -> None:
    _, state = registry
    client.register("ctx/odd subject:1", TRADE.avro_schema())
    assert state.requests[0].path == "/subjects/ctx%2Fodd%20subject%3A1/versions"
    assert "ctx/odd subject:1" in state.subjects


def test_schema_by_id_is_fetched_once(
    client: SchemaRegistryClient, registry: tuple[str, Registry]
) -> None:
    url, state = registry
    schema_id = client.register("k2.trade-value", TRADE.avro_schema())
    fresh = SchemaRegistryClient(url)
    assert fresh.schema(schema_id) == TRADE.avro_schema()
    assert fresh.schema(schema_id) == TRADE.avro_schema()
    gets = [r for r in state.requests if r.method == "GET"]
    assert [(r.path, r.headers["Accept"], r.body) for r in gets] == [
        (f"/schemas/ids/{schema_id}", ACCEPT, None)
    ]
    assert "Content-Type" not in gets[0].headers
    fresh.close()


def test_set_compatibility_puts_the_subject_config(
    client: SchemaRegistryClient, registry: tuple[str, Registry]
) -> None:
    _, state = registry
    client.set_compatibility("k2.trade-value", "BACKWARD")
    client.set_compatibility("k2.trade-value", "BACKWARD")  # cached
    (req,) = state.requests
    assert (req.method, req.path, req.body) == (
        "PUT",
        "/config/k2.trade-value",
        {"compatibility": "BACKWARD"},
    )
    assert req.headers["Content-Type"] == CONTENT_TYPE
    assert state.config == {"k2.trade-value": "BACKWARD"}
    with pytest.raises(ConfigError, match="unknown schema compatibility level 'SIDEWAYS'"):
        client.set_compatibility("k2.trade-value", "SIDEWAYS")
    assert len(state.requests) == 1


def test_an_incompatible_schema_is_terminal_with_the_registrys_message(
    client: SchemaRegistryClient,
) -> None:
    client.set_compatibility("k2.trade-value", "BACKWARD")
    client.register("k2.trade-value", TRADE.avro_schema())
    breaking = TRADE.avro_schema()
    breaking["fields"] = [*breaking["fields"], {"name": "venue", "type": "string"}]
    message = (
        r"HTTP 409 \(error 409\): Schema being registered is incompatible with an earlier "
        r"schema for subject \"k2.trade-value\""
    )
    with pytest.raises(TerminalError, match=message):
        client.register("k2.trade-value", breaking)
    # Adding an optional field is a compatible evolution.
    evolved = TRADE.avro_schema()
    evolved["fields"] = [
        *evolved["fields"],
        {"name": "venue", "type": ["null", "string"], "default": None},
    ]
    assert client.register("k2.trade-value", evolved) == 2


def test_an_unknown_id_is_terminal(client: SchemaRegistryClient) -> None:
    with pytest.raises(TerminalError, match=r"HTTP 404 \(error 40403\): Schema not found"):
        client.schema(77)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(500, 50001, TransientError), (503, 50003, TransientError), (401, 40101, ConfigError),
     (403, 40301, ConfigError), (422, 42201, TerminalError)],
)  # fmt: skip
def test_http_errors_are_translated(
    client: SchemaRegistryClient,
    registry: tuple[str, Registry],
    status: int,
    code: int,
    error: type[Exception],
) -> None:
    _, state = registry
    state.fail_next.append((status, {"error_code": code, "message": "nope"}, {}))
    with pytest.raises(error, match=rf"HTTP {status} \(error {code}\): nope") as info:
        client.register("k2.trade-value", TRADE.avro_schema())
    assert type(info.value) is error


def test_rate_limits_carry_retry_after(
    client: SchemaRegistryClient, registry: tuple[str, Registry]
) -> None:
    _, state = registry
    state.fail_next.append((429, {"error_code": 42901, "message": "slow"}, {"Retry-After": "3"}))
    with pytest.raises(RateLimited) as info:
        client.schema(1)
    assert info.value.retry_after == 3.0


def test_an_unreachable_registry_is_connection_lost() -> None:
    port = free_port()
    client = SchemaRegistryClient(f"http://127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(ConnectionLost, match=rf"schema registry http://127\.0\.0\.1:{port}"):
        client.register("k2.trade-value", TRADE.avro_schema())
    client.close()


def test_a_non_http_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="K2_SCHEMA_REGISTRY_URL"):
        SchemaRegistryClient("localhost:8081")


def test_credentials_in_the_url_are_sent_as_basic_auth(registry: tuple[str, Registry]) -> None:
    url, state = registry
    client = SchemaRegistryClient(url.replace("http://", "http://k2:s3cret@"))
    with pytest.raises(TerminalError):
        client.schema(1)
    assert state.requests[0].headers["Authorization"] == "Basic azI6czNjcmV0"
    client.close()


def test_a_caller_supplied_http_client_is_used_and_left_open(
    registry: tuple[str, Registry],
) -> None:
    url, state = registry
    with httpx.Client(headers={"X-Trace": "k2-test"}) as http:
        client = SchemaRegistryClient(url, client=http)
        client.register("s", TRADE.avro_schema())
        client.close()
        assert not http.is_closed
    assert state.requests[0].headers["X-Trace"] == "k2-test"


def test_the_avro_codec_registers_once_and_decodes_with_a_cold_client(
    registry: tuple[str, Registry],
) -> None:
    from tests.log.test_codec import sample_batch

    url, state = registry
    writer = AvroCodec(SchemaRegistryClient(url))
    batch = sample_batch(TRADE, 20)
    values = writer.encode(batch)
    writer.encode(batch)
    assert [(r.method, r.path) for r in state.requests] == [
        ("PUT", "/config/k2.trade-value"),
        ("POST", "/subjects/k2.trade-value/versions"),
    ]
    assert state.config == {"k2.trade-value": "BACKWARD"}
    assert {int.from_bytes(v[1:5], "big") for v in values} == {1}
    reader = AvroCodec(SchemaRegistryClient(url))
    back = reader.decode(values, TRADE)
    assert pa.Table.from_batches([back]).equals(pa.Table.from_batches([batch]))
    assert [(r.method, r.path) for r in state.requests[2:]] == [("GET", "/schemas/ids/1")]
