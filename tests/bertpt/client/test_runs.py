"""``client.runs`` against the API in process: submit (a model or a dict, idempotent with a key), list by
status across pages, get, cancel, resume, delete, metrics, events, checkpoints, the estimate, the plot.
The live stream and downloads have their own modules (test_stream.py, test_downloads.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.runs.events import RunEventType, add_event
from app.runs.schemas import RunCreate, RunPublic
from app.runs.states import RunStatus
from bertpt.client import ApiError, Client
from tests.support import TenantKey, add_checkpoint_row, corpus_bytes, insert_metric_points, make_run

MINILM = "minilm-l6-h384-uncased"


@pytest.fixture
def corpus_id(api: Client, tmp_path: Path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_bytes(corpus_bytes(documents=20, sentences=4))
    return api.corpora.upload(path).id


def test_submit_list_cancel_resume_delete(
    api: Client, corpus_id: str, sent: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = RunCreate(base_model=MINILM, corpus_id=corpus_id, hyperparameters={"max_steps": 5})
    first = api.runs.create(body, idempotency_key="key-1")
    assert isinstance(first, RunPublic) and first.status == RunStatus.QUEUED
    assert first.hyperparameters["max_steps"] == 5 and "learning_rate" in first.hyperparameters  # defaults
    assert api.runs.create(body, idempotency_key="key-1").id == first.id  # a retry creates nothing
    second = api.runs.create({"base_model": MINILM, "corpus_id": corpus_id, "name": "second"})
    assert second.name == "second" and sent["runs"] == [first.id, second.id]

    monkeypatch.setattr("bertpt.client.client.MAX_LIMIT", 1)  # one run a page
    assert [run.id for run in api.runs.list()] == [second.id, first.id]
    assert api.runs.get(first.id).id == first.id

    cancelled = api.runs.cancel(first.id)
    assert cancelled.status == RunStatus.CANCELLED
    assert [run.id for run in api.runs.list(status=["cancelled"])] == [first.id]
    assert [run.id for run in api.runs.list(status=["queued", "running"])] == [second.id]

    with pytest.raises(ApiError) as info:  # no checkpoint to resume from
        api.runs.resume(first.id)
    assert info.value.status_code == 409 and info.value.type == "conflict"
    with pytest.raises(ApiError) as info:  # still queued
        api.runs.delete(second.id)
    assert info.value.status_code == 409
    api.runs.delete(first.id)
    with pytest.raises(ApiError) as info:
        api.runs.get(first.id)
    assert info.value.status_code == 404


def test_metrics_events_checkpoints_and_plot(api: Client, session: Session, alice: TenantKey) -> None:
    run = make_run(session, alice.tenant, status=RunStatus.SUCCEEDED)
    insert_metric_points(session, run.id, "train", "loss", [(step, 5.0 - step / 10) for step in range(1, 31)])
    insert_metric_points(session, run.id, "eval", "masked_lm_loss", [(0, 4.0), (30, 3.0)])
    add_event(session, run.id, RunEventType.SUCCEEDED, "done")
    session.commit()
    add_checkpoint_row(session, run, 10)
    add_checkpoint_row(session, run, 20)

    everything = api.runs.metrics(run.id)
    assert {(series.split, series.name) for series in everything.series} == {
        ("train", "loss"),
        ("eval", "masked_lm_loss"),
    }
    train = api.runs.metrics(run.id, split="train", max_points=10)
    assert [series.name for series in train.series] == ["loss"] and len(train.series[0].points) <= 10
    some = api.runs.metrics(run.id, names=["masked_lm_loss"], since_step=1)
    assert [(series.name, series.points) for series in some.series] == [("masked_lm_loss", [(30, 3.0)])]

    assert [event.type for event in api.runs.events(run.id)] == ["succeeded"]
    assert [checkpoint.step for checkpoint in api.runs.checkpoints(run.id)] == [10, 20]

    png = api.runs.plot(run.id)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"<svg" in api.runs.plot(run.id, format="svg")[:1000]


def test_the_estimate_checks_the_body_as_a_submission_does(
    api: Client, corpus_id: str, sent: dict[str, list[str]]
) -> None:
    estimate = api.runs.estimate({"base_model": MINILM, "corpus_id": corpus_id, "hyperparameters": {}})
    assert estimate.steps_per_epoch > 0 and estimate.exact is False
    assert sent["runs"] == []  # nothing queued
    with pytest.raises(ApiError) as info:
        api.runs.estimate(
            {"base_model": MINILM, "corpus_id": corpus_id, "hyperparameters": {"max_steps": -1}}
        )
    assert info.value.status_code == 422 and info.value.param is not None
