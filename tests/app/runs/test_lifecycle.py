"""The worker's writes to a run: the atomic claim, fenced updates, idempotent metric batches, resends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import create_db_engine, create_session_factory, session_scope, upgrade_database
from app.ids import new_id
from app.models import Run, RunCheckpoint, RunEvent, RunMetric, Tenant, utcnow
from app.runs import lifecycle
from app.runs.events import RunEventType, add_event
from app.runs.lifecycle import resend_stale_queued
from app.runs.states import RunStatus, Trigger
from app.storage import LocalStorage
from tests.support import Factory, TenantKey, make_run, write_complete_checkpoint
from worker.pretraining.records import EvalMetrics, MetricsRecord, TrainMetrics


def _train(step: int, loss: float, grad_norm: float | None) -> MetricsRecord:
    metrics = TrainMetrics(
        loss=loss,
        learning_rate=1e-4 * step,
        grad_norm=grad_norm,
        tokens_per_second=50.0,
        samples_seen=8 * step,
        epoch=0.5,
    )
    return MetricsRecord(split="train", step=step, metrics=metrics)


RECORDS = [
    _train(1, 7.5, None),
    _train(2, float("nan"), 3.0),
    MetricsRecord(
        split="eval",
        step=2,
        metrics=EvalMetrics(masked_lm_loss=7.0, masked_lm_accuracy=0.1, perplexity=float("inf")),
    ),
]


# The points of RECORDS: only finite numbers (no row for a None, a NaN or an infinity).
_EVERY_STEP = {"tokens_per_second": 50.0, "epoch": 0.5, "skipped_steps": 0}


RECORDED_POINTS = {
    **{
        ("train", name, 1): value
        for name, value in {**_EVERY_STEP, "loss": 7.5, "learning_rate": 1e-4}.items()
    },
    **{
        ("train", name, 2): value
        for name, value in {**_EVERY_STEP, "learning_rate": 2e-4, "grad_norm": 3.0}.items()
    },
    ("train", "samples_seen", 1): 8,
    ("train", "samples_seen", 2): 16,
    ("eval", "masked_lm_loss", 2): 7.0,
    ("eval", "masked_lm_accuracy", 2): 0.1,
}


def _claim(factory: Factory, run_id: str, worker_id: str) -> lifecycle.ClaimedRun | None:
    with session_scope(factory.session_factory) as session:
        return lifecycle.claim_run(session, run_id, worker_id)


def test_concurrent_claims_of_one_run_have_one_winner(factory: Factory) -> None:
    run_id = factory.run(corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="minilm-l6-h384-uncased")
    barrier = threading.Barrier(4)
    results: list[lifecycle.ClaimedRun | None] = []

    def claim(worker: int) -> None:
        barrier.wait()
        results.append(_claim(factory, run_id, f"worker-{worker}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [result for result in results if result is not None]
    assert len(results) == 4 and len(winners) == 1
    run = factory.get_run(run_id)
    assert (run.status, run.attempt, run.worker_id) == (RunStatus.PREPARING, 1, winners[0].worker_id)
    assert winners[0].attempt == 1 and run.started_at is not None and run.heartbeat_at is not None
    # A later duplicate delivery finds nothing to do either.
    assert _claim(factory, run_id, "late-duplicate") is None


def test_cancelled_runs_are_not_claimed(factory: Factory) -> None:
    corpus_id = factory.corpus(b"a b c.\nd e f.\n")
    cancelled = factory.run(corpus_id=corpus_id, base_model="x", status=RunStatus.CANCELLED)
    cancel_requested = factory.run(corpus_id=corpus_id, base_model="x", cancel_requested=True)
    assert _claim(factory, cancelled, "w") is None
    assert _claim(factory, cancel_requested, "w") is None
    assert factory.get_run(cancelled).attempt == 0


def test_writes_are_fenced_by_the_attempt(factory: Factory) -> None:
    run_id = factory.run(corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="x")
    claimed = _claim(factory, run_id, "w")
    assert claimed is not None
    with session_scope(factory.session_factory) as session:
        assert lifecycle.mark_running(session, run_id, claimed.attempt)
        beat = lifecycle.heartbeat(session, run_id, claimed.attempt, progress={"step": 3, "total_steps": 10})
        assert beat == lifecycle.Heartbeat(owned=True, cancel_requested=False, status=RunStatus.RUNNING)
        # A stale supervisor (an older attempt) changes nothing.
        assert not lifecycle.heartbeat(session, run_id, claimed.attempt - 1, progress={"step": 99}).owned
        assert not lifecycle.finish_run(session, run_id, claimed.attempt - 1, Trigger.FAIL)
        assert lifecycle.finish_run(session, run_id, claimed.attempt, Trigger.SUCCEED, output_storage_key="k")
    run = factory.get_run(run_id)
    assert run.status == RunStatus.SUCCEEDED and run.progress["step"] == 3 and run.output_storage_key == "k"
    assert run.finished_at is not None


def _points(session_factory: Callable[[], Session], run_id: str) -> dict[tuple[str, str, int], float]:
    with session_factory() as session:
        rows = session.execute(
            select(RunMetric.split, RunMetric.name, RunMetric.step, RunMetric.value).where(
                RunMetric.run_id == run_id
            )
        )
        return {(split, name, step): value for split, name, step, value in rows}


def test_metric_batches_written_twice_do_not_duplicate(factory: Factory) -> None:
    run_id = factory.run(corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="x")
    for _ in range(2):  # a retried flush, or a resumed attempt replaying the same steps
        with session_scope(factory.session_factory) as session:
            lifecycle.write_metrics(session, run_id, RECORDS)
    points = _points(factory.session_factory, run_id)
    assert points == RECORDED_POINTS


def test_checkpoint_rows_follow_rotation_and_events_get_ids(factory: Factory) -> None:
    run_id = factory.run(corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="x")
    with session_scope(factory.session_factory) as session:
        for step in (10, 20, 30):
            lifecycle.record_checkpoint(
                session,
                run_id,
                step,
                metrics={"eval": {"perplexity": float("nan")}},
                size_bytes=step,
                sha256="a" * 64,
                storage_key=f"runs/{run_id}/c-{step}",
            )
        assert lifecycle.forget_checkpoints(session, run_id, [20, 30]) == [10]
        event = add_event(session, run_id, RunEventType.EVALUATION, "eval", data={"loss": float("inf")})
        session.expire(event)  # read back what the database holds: JSON has no infinity
        assert event.id is not None and event.data == {"loss": None}
    with session_scope(factory.session_factory) as session:  # the same step saved again: updated
        lifecycle.record_checkpoint(
            session, run_id, 30, metrics={}, size_bytes=31, sha256="b" * 64, storage_key=f"runs/{run_id}/c-30"
        )
    with factory.session_factory() as session:
        rows = session.execute(
            select(RunCheckpoint.step, RunCheckpoint.size_bytes).where(RunCheckpoint.run_id == run_id)
        ).all()
        assert sorted(rows) == [(20, 20), (30, 31)]
        assert (
            session.scalar(select(func.count()).select_from(RunEvent).where(RunEvent.run_id == run_id)) == 1
        )


def test_claim_and_idempotent_metrics_on_sqlite(tmp_path: Path) -> None:
    """The local demo's database: the same RETURNING claim and ON CONFLICT DO NOTHING inserts."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    upgrade_database(url)
    engine = create_db_engine(url)
    session_factory = create_session_factory(engine)
    try:
        with session_scope(session_factory) as session:
            tenant = Tenant(id=new_id("ten"), name="demo")
            session.add(tenant)
            session.flush()
            session.add(Run(id="run_1", tenant_id=tenant.id, name="r", base_model="x", hyperparameters={}))
        with session_scope(session_factory) as session:
            claimed = lifecycle.claim_run(session, "run_1", "w")
            assert claimed is not None and claimed.attempt == 1
            assert lifecycle.claim_run(session, "run_1", "w") is None
        for _ in range(2):
            with session_scope(session_factory) as session:
                lifecycle.write_metrics(session, "run_1", RECORDS)
        assert _points(session_factory, "run_1") == RECORDED_POINTS
    finally:
        engine.dispose()


# -- runs left queued (the API's send failed, or the message was lost) --------------------------------------


TEN_MINUTES = timedelta(minutes=10)


def test_only_runs_queued_too_long_are_sent_again_once_per_period(session: Session, alice: TenantKey) -> None:
    old = utcnow() - timedelta(minutes=30)
    stale = make_run(session, alice.tenant, created_at=old)
    fresh = make_run(session, alice.tenant)
    started = make_run(session, alice.tenant, created_at=old, status=RunStatus.RUNNING)
    sent: list[str] = []

    assert resend_stale_queued(session, older_than=TEN_MINUTES, enqueue=sent.append) == [stale.id]
    session.commit()
    assert sent == [stale.id]
    assert stale.sent_at is not None and fresh.sent_at is None and started.sent_at is None

    # Sent just now: not again until another period has passed.
    assert resend_stale_queued(session, older_than=TEN_MINUTES, enqueue=sent.append) == []
    stale.sent_at = utcnow() - timedelta(minutes=11)
    session.commit()
    assert resend_stale_queued(session, older_than=TEN_MINUTES, enqueue=sent.append) == [stale.id]
    assert sent == [stale.id, stale.id]


# -- leases: the reaper, retries, rewinds --------------------------------------------------------------


def _reap(
    session: Session, storage: LocalStorage, run_ids: set[str], **options: object
) -> dict[str, lifecycle.Reaped]:
    """The reaper's pass, limited to this test's runs (the database is shared with other tests)."""
    settings: dict = {"timeout": timedelta(seconds=30), "max_attempts": 3, **options}
    return {
        reaped.run_id: reaped
        for reaped in lifecycle.reap_expired(session, storage, **settings)
        if reaped.run_id in run_ids
    }


def test_the_reaper_takes_back_only_runs_whose_heartbeat_stopped(
    session: Session, alice: TenantKey, storage: LocalStorage
) -> None:
    silent = utcnow() - timedelta(minutes=5)
    lost = make_run(session, alice.tenant, status=RunStatus.RUNNING, attempt=1, heartbeat_at=silent,
                    worker_id="host:12", progress={"step": 12, "eta_seconds": 30.0})  # fmt: skip
    alive = make_run(session, alice.tenant, status=RunStatus.RUNNING, attempt=1, heartbeat_at=utcnow())
    queued = make_run(session, alice.tenant, heartbeat_at=silent)
    # Published on disk; its row never written (the process was killed first): the files are the truth.
    write_complete_checkpoint(storage, lost.id, 10)

    reaped = _reap(session, storage, {lost.id, alive.id, queued.id})
    session.commit()

    assert set(reaped) == {lost.id} and reaped[lost.id].status == RunStatus.QUEUED
    session.refresh(lost)
    assert (lost.status, lost.attempt, lost.error) == (RunStatus.QUEUED, 1, None)
    assert lost.progress == {"step": 12, "eta_seconds": None}  # the frozen ETA of the lost worker is gone
    assert lost.sent_at is not None  # the reaper sends its task; the sweep does not send it again meanwhile
    event = session.scalars(select(RunEvent).where(RunEvent.run_id == lost.id)).one()
    assert event.type == RunEventType.RETRYING and event.level == "warning"
    assert event.message == (
        "attempt 1 of 3 was interrupted after step 12: worker host:12 stopped answering (no heartbeat for "
        "300 s); attempt 2 of 3 resumes from the checkpoint of step 10"
    )
    event_message, status_message = reaped[lost.id].messages
    assert event_message.id == event.id and status_message.status == RunStatus.QUEUED
    # The lost holder, should it come back, changes nothing: its writes are fenced off.
    assert not lifecycle.heartbeat(session, lost.id, 1, progress={"step": 99}).owned
    assert not lifecycle.finish_run(session, lost.id, 1, Trigger.SUCCEED)
    # And the next claim is a new attempt.
    claimed = lifecycle.claim_run(session, lost.id, "host:13")
    assert claimed is not None and claimed.attempt == 2
    session.refresh(alive)
    assert alive.status == RunStatus.RUNNING


def test_the_reaper_fails_a_run_out_of_attempts_and_cancels_a_cancelling_one(
    session: Session, alice: TenantKey, storage: LocalStorage
) -> None:
    silent = utcnow() - timedelta(minutes=5)
    held = {"heartbeat_at": silent, "resumed_after_attempt": 1}
    exhausted = make_run(session, alice.tenant, status=RunStatus.PREPARING, attempt=4, **held)
    resumed = make_run(session, alice.tenant, status=RunStatus.RUNNING, attempt=3, **held)
    cancelling = make_run(session, alice.tenant, status=RunStatus.CANCELLING, attempt=1, heartbeat_at=silent,
                          cancel_requested=True)  # fmt: skip
    write_complete_checkpoint(storage, exhausted.id, 20)

    reaped = _reap(session, storage, {exhausted.id, resumed.id, cancelling.id})
    session.commit()

    for run in (exhausted, resumed, cancelling):
        session.refresh(run)
    assert exhausted.status == RunStatus.FAILED and exhausted.finished_at is not None
    assert exhausted.error is not None and exhausted.error["type"] == "worker_lost"
    assert exhausted.error["message"].startswith(
        "attempt 4 (3 of 3 since its owner resumed it), the last, was interrupted: worker unknown"
    )
    assert f"POST /v1/runs/{exhausted.id}/resume continues from it" in exhausted.error["message"]
    assert exhausted.error["checkpoint_step"] == 20
    assert reaped[exhausted.id].messages[1].error is not None  # the live stream gets the error
    # Resumed by its owner after attempt 1: attempt 3 is its second, so it gets a third.
    assert resumed.status == RunStatus.QUEUED
    assert cancelling.status == RunStatus.CANCELLED and cancelling.error is None
    assert cancelling.finished_at is not None


def test_a_reaper_skips_runs_another_transaction_holds(factory: Factory, storage: LocalStorage) -> None:
    run_id = factory.run(corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="x")
    claimed = _claim(factory, run_id, "w")
    assert claimed is not None
    with session_scope(factory.session_factory) as session:
        session.execute(
            Run.__table__.update().where(Run.id == run_id).values(heartbeat_at=utcnow() - timedelta(hours=1))
        )
    with session_scope(factory.session_factory) as holder:
        holder.execute(select(Run).where(Run.id == run_id).with_for_update())  # a heartbeat in flight
        with session_scope(factory.session_factory) as reaper:
            assert _reap(reaper, storage, {run_id}) == {}
    with session_scope(factory.session_factory) as reaper:
        assert set(_reap(reaper, storage, {run_id})) == {run_id}


def test_retry_requeues_only_a_held_attempt_that_is_not_cancelling(
    session: Session, alice: TenantKey
) -> None:
    running = make_run(session, alice.tenant, status=RunStatus.RUNNING, attempt=2)
    cancelling = make_run(session, alice.tenant, status=RunStatus.CANCELLING, attempt=1)
    assert not lifecycle.retry_run(session, running.id, 1)  # an older attempt
    assert lifecycle.retry_run(session, running.id, 2)
    assert not lifecycle.retry_run(session, cancelling.id, 1)
    session.commit()
    session.refresh(running)
    session.refresh(cancelling)
    assert running.status == RunStatus.QUEUED and running.sent_at is not None
    assert cancelling.status == RunStatus.CANCELLING


def test_retries_are_counted_from_the_last_resume() -> None:
    assert lifecycle.retry_allowed(2, 0, 3) and not lifecycle.retry_allowed(3, 0, 3)
    assert lifecycle.retry_allowed(5, 3, 3) and not lifecycle.retry_allowed(6, 3, 3)
    assert lifecycle.attempt_of(2, 0, 3) == "attempt 2 of 3"
    assert lifecycle.attempt_of(5, 3, 3) == "attempt 5 (2 of 3 since its owner resumed it)"


def test_rewind_supersedes_what_the_interrupted_attempt_recorded_past_the_checkpoint(
    factory: Factory,
) -> None:
    run_id = factory.run(corpus_id=factory.corpus(b"a b c.\nd e f.\n"), base_model="x")
    records = [_train(step, 7.0 - step / 10, 1.0) for step in range(1, 13)]
    with session_scope(factory.session_factory) as session:
        lifecycle.write_metrics(session, run_id, records)
        for step in (5, 10):
            lifecycle.record_checkpoint(session, run_id, step, metrics={}, size_bytes=1, sha256="0" * 64,
                                        storage_key=f"k{step}")  # fmt: skip
        lifecycle.rewind(session, run_id, 5)
    assert sorted({step for _, _, step in _points(factory.session_factory, run_id)}) == [1, 2, 3, 4, 5]
    with session_scope(factory.session_factory) as session:
        assert session.scalars(select(RunCheckpoint.step).where(RunCheckpoint.run_id == run_id)).all() == [5]
        # From the beginning: nothing is kept.
        lifecycle.rewind(session, run_id, None)
    assert _points(factory.session_factory, run_id) == {}


def test_an_interruption_says_which_attempt_it_was_and_what_follows() -> None:
    first = lifecycle.Interruption("run_x", 1, 0, 3, after_step=None, checkpoint_step=None)
    assert first.retried
    assert first.message("the training ran out of device memory. Lower batch_size.") == (
        "attempt 1 of 3 was interrupted: the training ran out of device memory. Lower batch_size; "
        "attempt 2 of 3 starts again from the beginning (no checkpoint was saved yet)"
    )
    last = lifecycle.Interruption("run_x", 5, 2, 3, after_step=40, checkpoint_step=None)
    assert not last.retried
    assert last.message("worker w stopped answering") == (
        "attempt 5 (3 of 3 since its owner resumed it), the last, was interrupted after step 40: worker w "
        "stopped answering; no checkpoint "
        "was saved, so nothing can be resumed: submit the run again"
    )
    stopping = lifecycle.Interruption("run_x", 1, 0, 3, after_step=40, checkpoint_step=30)
    assert stopping.cancelled("the training process exited with status 1 before finishing.") == (
        "cancelled: while it was stopping, the training process exited with status 1 before finishing; the "
        "checkpoint of step 30 is kept"
    )


def test_the_newest_complete_checkpoint_is_found_in_s3_storage(s3_bucket: str, tmp_path: Path) -> None:
    """What a resume starts from, read from a listing of the bucket: a checkpoint without its manifest
    (its upload cut short) does not count."""
    from app.storage.s3 import MIN_PART_BYTES, S3Storage
    from worker.pretraining.layout import CHECKPOINT_MANIFEST, TRAINER_STATE

    storage = S3Storage(s3_bucket, "p", cache_dir=tmp_path / "cache", part_bytes=MIN_PART_BYTES)
    assert lifecycle.newest_checkpoint_step(storage, "run_1") is None
    files = {
        10: ("weights", TRAINER_STATE, CHECKPOINT_MANIFEST),
        20: ("weights", TRAINER_STATE, CHECKPOINT_MANIFEST),
        30: ("weights", TRAINER_STATE),
    }
    for step, names in files.items():
        for name in names:
            with storage.open_write(f"runs/run_1/checkpoints/checkpoint-{step}/{name}") as pending:
                pending.write(b"{}")
                pending.commit()
    assert lifecycle.newest_checkpoint_step(storage, "run_1") == 20
