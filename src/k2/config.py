"""K2's settings, in one place.

Values come from, highest priority first: keyword arguments, ``K2_*`` environment
variables (nested with ``__``, e.g. ``K2_BINANCE__WS_URL``), a TOML file (``k2.toml`` in
the working directory, or the path in ``K2_CONFIG``), then the defaults below.
An invalid value raises :class:`k2.errors.ConfigError` naming the variable or file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from k2.errors import ConfigError
from k2.ops.breaker import BreakerSettings
from k2.ops.degradation import DegradationSettings

DataType = Literal["trade", "quote"]


class BinanceSettings(BaseModel):
    """Where and how to reach Binance (or anything speaking its protocol)."""

    ws_url: str = Field(
        "wss://stream.binance.com:9443", description="WebSocket base URL (live by default)"
    )
    rest_url: str = Field("https://api.binance.com", description="REST base URL")
    micros: bool = Field(False, description="ask for microsecond timestamps (timeUnit)")
    max_streams_per_connection: int = Field(1024, ge=1, le=1024)
    max_connection_age_s: float = Field(
        23.5 * 3600, gt=0, description="hand over to a new connection before Binance's 24 h cut"
    )


class CaptureSettings(BaseModel):
    """What to capture and how the quality stage behaves."""

    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["BTCUSDT", "ETHUSDT", "BNBUSDT", "ADAUSDT", "DOGEUSDT"]
    )
    streams: Annotated[list[DataType], NoDecode] = Field(
        default_factory=lambda: list[DataType](("trade", "quote"))
    )
    batch_max_frames: int = Field(5000, ge=1, description="frames decoded per batch")
    batch_max_wait_s: float = Field(0.05, gt=0, description="longest wait to fill a batch")
    dedup_window_s: float = Field(3600.0, gt=0, description="dedup sliding window")
    dedup_max_entries: int = Field(500_000, ge=1000, description="cap on dedup state")
    gap_grace_s: float = Field(
        2.0, ge=0, description="how long a missing trade id may arrive late before repair"
    )
    max_future_skew_s: float = Field(
        60.0, gt=0, description="reject timestamps further than this in the future"
    )
    stop_repair_timeout_s: float = Field(
        20.0, gt=0, description="at stop: longest wait for repairs (the next start finishes them)"
    )

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = _split_list(v)
        if isinstance(v, list):
            return [str(s).upper() for s in v]
        return v

    @field_validator("streams", mode="before")
    @classmethod
    def _split_streams(cls, v: Any) -> Any:
        if isinstance(v, str):
            return _split_list(v)
        return v


def _split_list(text: str) -> list[str]:
    """``"a,b c"`` or a JSON list ``'["a","b"]'`` → ``["a", "b", "c"]``."""
    text = text.strip()
    if text.startswith("["):
        return [str(x) for x in json.loads(text)]
    return [s for s in text.replace(" ", ",").split(",") if s]


class LogSettings(BaseModel):
    """The durable log: embedded (SQLite, default) or Kafka."""

    backend: Literal["embedded", "kafka"] = Field(
        "embedded", description="embedded: one machine, no server; kafka: a Kafka cluster"
    )
    path: Path | None = Field(None, description="embedded log directory (default data_dir/log)")
    durability: Literal["full", "normal"] = Field(
        "full",
        description="embedded: full fsyncs every batch (survives power loss); normal "
        "survives process crashes only",
    )
    bootstrap_servers: str = Field("localhost:9092", description="kafka: bootstrap servers")
    client_config: dict[str, str] = Field(
        default_factory=dict, description="kafka: extra librdkafka settings (security, ...)"
    )
    trade_partitions: int = Field(40, ge=1)
    quote_partitions: int = Field(40, ge=1)
    retention_hours: float = Field(168.0, gt=0, description="keep records this long")
    retention_bytes: int | None = Field(None, gt=0, description="and at most this much")


class LakeSettings(BaseModel):
    """The Iceberg lakehouse: catalog, warehouse (local directory or S3) and the sink."""

    catalog: Literal["sqlite", "postgresql", "rest"] = Field(
        "sqlite",
        description="sqlite: embedded SQL catalog (default); postgresql: SQL catalog on a "
        "PostgreSQL server; rest: an Iceberg REST catalog",
    )
    uri: str | None = Field(
        None,
        description="catalog URI: sqlite default data_dir/lake/catalog.db; postgresql an "
        "SQLAlchemy URL (postgresql+psycopg2://user:pw@host:5432/db); rest the server URL",
    )
    warehouse: str | None = Field(
        None,
        description="where data files go: a directory (default data_dir/lake/warehouse) or "
        "s3://bucket/prefix",
    )
    s3_endpoint: str | None = Field(None, description="S3 endpoint URL (MinIO, moto, ...)")
    s3_access_key_id: str | None = Field(None, description="S3 access key id")
    s3_secret_access_key: str | None = Field(None, description="S3 secret access key")
    s3_region: str = Field("us-east-1", description="S3 region")
    s3_path_style: bool = Field(
        False, description="path-style S3 addressing (needed by MinIO and moto)"
    )
    namespace: str = Field("market_data", description="Iceberg namespace of K2's tables")
    sink_max_records: int = Field(
        100_000, ge=1, description="sink: commit once this many records are buffered"
    )
    sink_max_seconds: float = Field(
        5.0, gt=0, description="sink: commit at least this often while records arrive"
    )
    sink_group: str = Field("k2-lake-sink", description="sink: log consumer group")
    sink_commit_retries: int = Field(
        10, ge=0, description="sink: attempts after a failed append before dead-lettering"
    )
    time_travel_hours: float = Field(
        168.0, gt=0, description="maintenance keeps every instant of this window readable"
    )
    orphan_grace_hours: float = Field(
        24.0, gt=0, description="maintenance deletes unreferenced files older than this"
    )


class QuerySettings(BaseModel):
    """The query engine: limits, SQL sandbox and the live tail (lake + log hybrid)."""

    default_limit: int = Field(1000, ge=1, description="rows returned when no limit is given")
    max_limit: int = Field(
        1_000_000, ge=1, description="largest limit a trades/quotes query may ask for"
    )
    max_window_days: float = Field(
        31.0, gt=0, description="longest time range one trades/quotes query may cover"
    )
    sql_timeout_s: float = Field(10.0, gt=0, description="SQL: interrupt a query after this")
    sql_max_rows: int = Field(100_000, ge=1, description="SQL: rows returned at most")
    duckdb_threads: int = Field(2, ge=1, description="DuckDB worker threads per query")
    duckdb_memory_limit: str = Field("2GB", description="DuckDB memory limit (e.g. 2GB)")
    minute_partials: bool = Field(
        True,
        description="bars: answer from the per-minute summaries stored with each trades "
        "data file K2 wrote, where the interval and window are whole minutes (same "
        "values as from the trades; off: always read the trades)",
    )
    refresh_ms: int = Field(
        250, ge=10, description="how often the engine looks for a new lake snapshot"
    )
    tail: bool = Field(
        True, description="follow the log for records the lake has not committed yet"
    )
    tail_poll_ms: int = Field(100, ge=5, description="live tail: log poll interval")
    recent_window_s: float = Field(
        900.0,
        ge=0,
        description="live tail: keep every record this recent in memory, committed or "
        "not, so recent-window questions never touch the lake (0 turns it off)",
    )
    recent_max_rows: int = Field(
        2_000_000, ge=1000, description="live tail: rows the recent window holds at most"
    )
    tail_max_rows: int = Field(
        2_000_000,
        ge=1000,
        description="live tail: rows held at most per data type (~165 B each for trades)",
    )


class ApiSettings(BaseModel):
    """The REST API (``k2 serve``)."""

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys as name:sha256hex entries, comma separated "
        "(`k2 api-key` makes one); stored hashed, never in clear",
    )
    dev_key: bool = Field(
        True,
        description="embedded mode: make a random key at start-up and print it (no key is "
        "built in); set false in production",
    )
    rate_limit_per_s: float = Field(100.0, gt=0, description="requests per second per key")
    rate_limit_burst: int = Field(200, ge=1, description="burst allowance per key")
    workers: int = Field(1, ge=1, description="uvicorn worker processes")
    threads: int = Field(
        4,
        ge=1,
        description="threads per worker that run queries (Starlette's default is 40; "
        "fewer contend less for the GIL, more let slow queries overlap)",
    )

    @field_validator("keys", mode="before")
    @classmethod
    def _split_keys(cls, v: Any) -> Any:
        if isinstance(v, str):
            return _split_list(v)
        return v

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, v: list[str]) -> list[str]:
        for entry in v:
            name, _, digest = entry.partition(":")
            if not name or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(
                    f"API key entry {entry[:12]!r}... must be name:sha256hex "
                    "(64 lower-case hex digits); `k2 api-key NAME` prints one"
                )
        return v


class OpsSettings(BaseModel):
    """``k2 up``: supervision of the stages, their status files and metrics ports."""

    run_dir: Path | None = Field(
        None, description="status files and locks of running stages (default data_dir/run)"
    )
    status_interval_s: float = Field(1.0, gt=0, description="how often stages write status")
    metrics_host: str = Field("127.0.0.1", description="ingest/sink metrics: listen address")
    ingest_metrics_port: int = Field(
        9101, ge=0, le=65535, description="k2 ingest: /metrics port (0: any free port)"
    )
    sink_metrics_port: int = Field(
        9102, ge=0, le=65535, description="k2 sink: /metrics port (0: any free port)"
    )
    restart_initial_s: float = Field(1.0, gt=0, description="first restart delay of a stage")
    restart_max_s: float = Field(30.0, gt=0, description="longest restart delay of a stage")
    stop_timeout_s: float = Field(
        30.0, gt=0, description="how long a stage may take to stop before it is killed"
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on stop: how long the sink may take to commit the log's rest"
    )
    exchange_warn_after_s: float = Field(
        10.0, gt=0, description="say the exchange is unreachable after this long"
    )


class LoggingSettings(BaseModel):
    format: Literal["json", "console"] = "console"
    level: str = "INFO"


class Settings(BaseSettings):
    """Every K2 setting. Build with :func:`load_settings` to get clear errors."""

    model_config = SettingsConfigDict(
        env_prefix="K2_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file="k2.toml",
    )

    data_dir: Path = Field(Path("k2-data"), description="where K2 keeps its files")
    schema_registry_url: str | None = Field(
        None, description="kafka: Confluent Schema Registry URL; Avro when set"
    )
    binance: BinanceSettings = Field(default_factory=BinanceSettings)
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)
    degradation: DegradationSettings = Field(default_factory=DegradationSettings)
    breakers: BreakerSettings = Field(default_factory=BreakerSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("K2_CONFIG", "k2.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )


def load_settings(**overrides: Any) -> Settings:
    """Load settings; raise :class:`ConfigError` naming the variable or file at fault."""
    config_path = os.environ.get("K2_CONFIG")
    if config_path and not Path(config_path).is_file():
        raise ConfigError(f"K2_CONFIG points to {config_path!r}, which is not a file")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, config_path or "k2.toml")) from None
    except ValueError as exc:  # TOML syntax errors surface as ValueError subclasses
        raise ConfigError(f"cannot read {config_path or 'k2.toml'}: {exc}") from None


def _describe(exc: ValidationError, toml_name: str) -> str:
    lines = []
    for err in exc.errors():
        path = [str(p) for p in err["loc"]]
        env_name = "K2_" + "__".join(p.upper() for p in path)
        where = f"{env_name} (or {'.'.join(path)} in {toml_name})"
        lines.append(f"invalid setting {where}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)
