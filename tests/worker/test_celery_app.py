"""The worker's Celery application: what a worker announces of itself. The module is imported by each test,
not at collection: importing it builds the process's Celery app from the environment's settings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.config import Settings


@pytest.fixture
def settings() -> Settings:
    return Settings(env="test", training_queue="training-celery-app-test")


def test_a_worker_announces_its_own_concurrency_and_queues(settings: Settings) -> None:
    from worker.celery_app import create_worker_app, worker_pool

    celery = create_worker_app(settings)
    celery.amqp.queues.select(["analysis"])  # bertpt worker --queues analysis --concurrency 3
    consumer = SimpleNamespace(app=celery, controller=SimpleNamespace(concurrency=3))
    assert worker_pool(consumer, settings) == (3, frozenset({"analysis"}))
    gpu = settings.training_queue_for("gpu")
    celery.amqp.queues.select([gpu, "analysis"])
    slots, queues = worker_pool(consumer, settings.model_copy(update={"worker_concurrency": 1}))
    assert slots == 3 and queues == {gpu, "analysis"}
    # Nothing known of the consumer: the settings' concurrency and the default class's queue.
    assert worker_pool(SimpleNamespace(), settings) == (1, frozenset({settings.training_queue_for("cpu")}))


def test_the_devices_a_worker_is_pinned_to(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.celery_app import pinned_devices

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pinned_devices() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert pinned_devices() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU at all
    assert pinned_devices() == 0
