"""docker-compose.yml, without a Docker engine: the file is valid under the Compose specification's JSON
schema (the copy check-jsonschema ships), what its services refer to exists, the settings it gives bertpt
are accepted by :class:`app.config.Settings`, the workers' commands by ``bertpt worker``, and the workers'
healthcheck tells an announced worker from one that is not (against the real Redis)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from importlib import resources
from typing import Any

import jsonschema
import pytest
import redis
import yaml

from app.config import Settings
from app.estimates.workers import announce_worker, worker_key
from tests.support import REDIS_URL, REPO_ROOT
from worker.service_cli import worker_queues

# ${NAME}, ${NAME:-default}, ${NAME-default}; $$ is a literal $.
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def _interpolate(value: Any, environment: dict[str, str]) -> Any:
    """``value`` with Compose's interpolation applied, as ``docker compose config`` would."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name = match.group("name")
            return environment.get(name) or match.group("default") or ""

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, list):
        return [_interpolate(item, environment) for item in value]
    if isinstance(value, dict):
        return {key: _interpolate(item, environment) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The file as YAML reads it (anchors and merge keys resolved, variables not)."""
    loaded = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as Compose runs it with no variable set: every default in place."""
    resolved = _interpolate(raw, {})
    assert isinstance(resolved, dict)
    return resolved


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def test_the_file_is_valid_under_the_compose_specification(raw: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(raw), key=lambda error: list(error.path))
    assert not errors, [f"{'/'.join(map(str, error.path))}: {error.message}" for error in errors]
    # The schema is strict: a misspelt key is refused, as Compose refuses it.
    broken = {**raw, "services": {"api": {**raw["services"]["api"], "helthcheck": {}}}}
    assert list(validator_class(schema).iter_errors(broken))


def test_every_service_has_an_image_and_waits_for_services_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-bucket", "migrate", "api", "worker", "worker-cpu"} <= set(
        services
    )
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
        for needed, condition in service.get("depends_on", {}).items():
            assert needed in services, f"{name} depends on {needed}, which is no service"
            wanted = condition["condition"]
            if wanted == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} waits for {needed}'s health, it has none"
            if wanted == "service_completed_successfully":
                assert services[needed].get("restart") == "no", f"{needed} is a one-shot service"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if ":" in volume else None
            if source and not source.startswith(("/", ".")):
                assert source in compose["volumes"], f"{name} mounts the undeclared volume {source}"


def test_each_gpu_worker_reserves_one_gpu_and_is_pinned_to_it(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Scaled by --scale: no fixed name nor host port would let a second replica start.
    assert "container_name" not in worker and "ports" not in worker
    command = worker["command"]
    assert command[:2] == ["bertpt", "worker"]
    assert command[command.index("--gpus") + 1] == "0"  # the one GPU a container sees
    settings = Settings(**_settings_of(worker))
    queues = worker_queues(settings, command[command.index("--queues") + 1], gpus=True)
    assert settings.training_queue_for("gpu") in queues
    # Runs that name no class go to the queue these workers serve.
    assert settings.training_queue_for(settings.default_resource_class) in queues


def test_the_cpu_worker_is_a_profile_serving_the_cpu_class(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker-cpu"]
    assert worker["profiles"] == ["cpu"]
    assert "deploy" not in worker
    settings = Settings(**_settings_of(worker))
    command = worker["command"]
    assert worker_queues(settings, command[command.index("--queues") + 1], gpus=False) == ["training.cpu"]


def _settings_of(service: dict[str, Any]) -> dict[str, Any]:
    """The ``BERTPT_*`` settings of ``service``, by field name."""
    return {
        key.removeprefix("BERTPT_").lower(): value
        for key, value in _environment(service).items()
        if key.startswith("BERTPT_")
    }


def test_bertpt_services_store_in_the_bucket_the_store_service_creates(compose: dict[str, Any]) -> None:
    services = compose["services"]
    minio = services["minio"]
    assert minio["healthcheck"]["test"]
    bucket_command = services["minio-bucket"]["command"]
    alias, bucket = bucket_command[-1].split("/", 1)
    assert bucket_command[:2] == ["mb", "--ignore-existing"]
    alias_url = _environment(services["minio-bucket"])[f"MC_HOST_{alias}"]
    minio_environment = _environment(minio)
    assert alias_url == (
        f"http://{minio_environment['MINIO_ROOT_USER']}:{minio_environment['MINIO_ROOT_PASSWORD']}@minio:9000"
    )
    for name in ("migrate", "api", "worker", "worker-cpu"):
        environment = _environment(services[name])
        settings = Settings(**_settings_of(services[name]))  # ENV=prod: refuses unsafe settings
        assert settings.env == "prod"
        assert settings.storage_url.startswith(f"s3://{bucket}/"), name
        assert environment["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert environment["AWS_ACCESS_KEY_ID"] == minio_environment["MINIO_ROOT_USER"]
        assert environment["AWS_SECRET_ACCESS_KEY"] == minio_environment["MINIO_ROOT_PASSWORD"]
        assert len(environment["AWS_SECRET_ACCESS_KEY"]) >= 8  # MinIO refuses shorter passwords
        host = re.match(r"postgresql\+psycopg://[^@]+@([^:/]+)", settings.database_url)
        assert host is not None and host.group(1) in services
        assert settings.redis_url.split("//", 1)[1].split(":", 1)[0] in services
        if name != "migrate":
            assert (
                services[name]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
            )
            # Each container's own local cache (an anonymous volume, one per replica).
            assert settings.storage_cache_dir in services[name]["volumes"]


def test_the_workers_healthcheck_passes_while_the_worker_is_announced(
    compose: dict[str, Any], redis_client: redis.Redis
) -> None:
    test = compose["services"]["worker"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    host = f"compose-test-{uuid.uuid4().hex}"
    # The container's host name, as the worker's announcement carries it (worker.context.default_worker_id).
    probe = f"import socket; socket.gethostname = lambda: {host!r}\n{test[3]}"

    def healthy() -> bool:
        environment = {**os.environ, "BERTPT_REDIS_URL": REDIS_URL}
        result = subprocess.run([sys.executable, "-c", probe], env=environment, timeout=60, check=False)
        return result.returncode == 0

    settings = Settings(training_queue="training")
    assert not healthy()
    try:
        assert announce_worker(
            redis_client,
            settings,
            f"{host}:7",
            slots=1,
            queues=["training.gpu"],
            period_seconds=30,
            devices=1,
        )
        assert healthy()
    finally:
        redis_client.delete(worker_key("training.gpu", f"{host}:7"))
    assert not healthy()
