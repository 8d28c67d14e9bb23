"""``bertpt worker``: the queues it consumes, its devices and its concurrency, as handed to Celery."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from app.config import get_settings
from worker.service_cli import worker_command


@pytest.fixture
def celery_argv(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """The argv each ``bertpt worker`` hands to Celery (which is not started), under TRAINING_QUEUE
    ``training``; CUDA_VISIBLE_DEVICES as it was before, after the test."""
    from worker.celery_app import app

    calls: list[list[str]] = []
    monkeypatch.setattr(app, "worker_main", calls.append)
    monkeypatch.setenv("BERTPT_TRAINING_QUEUE", "training")
    monkeypatch.delenv("BERTPT_EVALUATION_QUEUE", raising=False)
    monkeypatch.delenv("BERTPT_ANALYSIS_QUEUE", raising=False)
    monkeypatch.delenv("BERTPT_DEFAULT_RESOURCE_CLASS", raising=False)
    monkeypatch.delenv("BERTPT_WORKER_CONCURRENCY", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    get_settings.cache_clear()
    yield calls
    get_settings.cache_clear()
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # set by the command itself, not through monkeypatch


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_by_default_it_serves_the_default_class_and_the_other_queues(celery_argv: list[list[str]]) -> None:
    assert CliRunner().invoke(worker_command, []).exit_code == 0
    (argv,) = celery_argv
    assert option(argv, "--queues") == "training.cpu,training"  # evaluations and analyses: TRAINING_QUEUE
    assert option(argv, "--concurrency") == "1" and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_gpus_pin_the_worker_and_serve_the_gpu_class(celery_argv: list[list[str]]) -> None:
    result = CliRunner().invoke(worker_command, ["--gpus", "0,1"])
    assert result.exit_code == 0, result.output
    assert option(celery_argv[0], "--queues") == "training.gpu,training"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # inherited by every process it starts
    assert option(celery_argv[0], "--concurrency") == "1"

    result = CliRunner().invoke(worker_command, ["--queues", "training.gpu", "--gpus", "GPU-8f6a2c1e-00aa"])
    assert result.exit_code == 0, result.output
    assert option(celery_argv[1], "--queues") == "training.gpu"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-8f6a2c1e-00aa"


@pytest.mark.parametrize(
    ("arguments", "refusal"),
    [
        (["--gpus", "0", "--concurrency", "2"], "one training at a time"),
        (["--gpus", "0,,1"], "expected device indexes or UUIDs"),
        (["--gpus", "0,0"], "names a device twice"),
        (["--queues", "training.tpu"], "'training.tpu' is the training queue of no resource class"),
        (["--queues", " , "], "names no queue"),
    ],
)
def test_what_it_refuses(celery_argv: list[list[str]], arguments: list[str], refusal: str) -> None:
    result = CliRunner().invoke(worker_command, arguments)
    assert result.exit_code == 2 and refusal in result.output, result.output
    assert celery_argv == [] and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_the_queues_it_is_given(celery_argv: list[list[str]]) -> None:
    result = CliRunner().invoke(worker_command, ["--queue", "training.cpu, analysis,training.cpu"])
    assert result.exit_code == 0, result.output
    assert option(celery_argv[0], "--queues") == "training.cpu,analysis"
