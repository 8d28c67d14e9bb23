"""The Celery configuration, and a run enqueued by task name to a training queue."""

from __future__ import annotations

import json
import secrets

import redis

from app.config import Settings
from app.queue import ANALYSIS_TASK, RUN_TASK, celery_config, create_celery, enqueue_run
from tests.support import REDIS_URL


def test_celery_configuration(settings: Settings) -> None:
    config = celery_config(settings)
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["accept_content"] == ["json"]
    assert config["task_acks_late"] is True and config["worker_prefetch_multiplier"] == 1
    assert config["broker_transport_options"] == {"visibility_timeout": settings.visibility_timeout}
    # Runs: the queue of the default resource class (a send names the run's own: app.runs.routing).
    assert config["task_routes"][RUN_TASK] == {"queue": f"{settings.training_queue}.cpu"}
    gpu = celery_config(settings.model_copy(update={"default_resource_class": "gpu"}))
    assert gpu["task_routes"][RUN_TASK] == {"queue": f"{settings.training_queue}.gpu"}
    # Analyses go to the training queue, unless ANALYSIS_QUEUE names another one (a CPU worker's).
    assert config["task_routes"][ANALYSIS_TASK] == {"queue": settings.training_queue}
    cpu = celery_config(settings.model_copy(update={"analysis_queue": "analysis"}))
    assert cpu["task_routes"][ANALYSIS_TASK] == {"queue": "analysis"}
    assert create_celery(settings).conf.broker_url == settings.redis_url


def test_enqueue_run_sends_by_name_to_the_training_queue(settings: Settings) -> None:
    prefix = f"training-test-{secrets.token_hex(4)}"
    celery = create_celery(settings.model_copy(update={"training_queue": prefix}))
    default, gpu = f"{prefix}.cpu", f"{prefix}.gpu"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        task_id = enqueue_run("run_abc", celery=celery)  # no queue named: the default class's
        enqueue_run("run_gpu", queue=gpu, celery=celery)
        assert (client.llen(default), client.llen(gpu), client.llen(prefix)) == (1, 1, 0)
        raw = client.lpop(default)
        assert isinstance(raw, bytes)
        message = json.loads(raw)
        assert message["headers"]["task"] == RUN_TASK
        assert message["headers"]["id"] == task_id
        assert message["headers"]["argsrepr"] == "['run_abc']"
        raw = client.lpop(gpu)
        assert isinstance(raw, bytes) and json.loads(raw)["headers"]["argsrepr"] == "['run_gpu']"
    finally:
        # the queues, and the exchange bindings kombu keeps next to them
        for queue in (default, gpu):
            client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
