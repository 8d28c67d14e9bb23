"""The supervisor's bookkeeping: the training process's messages become the run's rows (metrics, events,
checkpoints, progress) and messages on its live stream.

Messages are buffered and written about once a second, in one transaction together with the heartbeat
(which also reads ``cancel_requested``), then published to the live stream in arrival order: a watcher
that sees a message can read its rows. A database that is briefly unreachable only delays the writes;
a live stream that fails is logged and skipped (the database has everything).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import RunStatus
from app.runs import lifecycle, live
from app.runs.lifecycle import ClaimedRun, Heartbeat
from worker.inputs import run_directory_key
from worker.job import TrainingJob
from worker.pretraining.checkpoints import CHECKPOINT_MANIFEST, complete_checkpoints, read_json

__all__ = ["LivePublisher", "RunRecorder", "directory_digest"]

logger = logging.getLogger(__name__)

_EVAL_SUMMARY = ("masked_lm_loss", "perplexity", "masked_lm_accuracy", "next_sentence_accuracy")


def directory_digest(directory: Path) -> tuple[int, str]:
    """(total bytes, sha256) of the files under ``directory``. The digest is the sha256 of the lines
    ``<file sha256>  <relative path>`` sorted by path, i.e. of
    ``find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum``."""
    files = sorted(
        (path.relative_to(directory).as_posix(), path) for path in directory.rglob("*") if path.is_file()
    )
    listing = hashlib.sha256()
    size = 0
    for relative, path in files:
        with path.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256")
        size += path.stat().st_size
        listing.update(f"{digest.hexdigest()}  {relative}\n".encode())
    return size, listing.hexdigest()


class LivePublisher:
    """Best-effort publication to a run's stream: a Redis failure is logged once per outage, never raised."""

    def __init__(self, client: redis.Redis | None, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._failing = False

    def publish(self, type: live.MessageType, data: dict[str, Any]) -> None:
        if self.client is None:
            return
        try:
            live.publish(self.client, self.run_id, type, data)
        except redis.RedisError as exc:
            if not self._failing:
                logger.warning(
                    "run %s: live stream unavailable (%s); the database still gets everything",
                    self.run_id,
                    exc,
                )
            self._failing = True
        else:
            if self._failing:
                logger.info("run %s: live stream available again", self.run_id)
            self._failing = False


@dataclass
class _Pending:
    """A write waiting for the next flush: a metrics record, an event, or a checkpoint row."""

    kind: str  # "metric" | "event" | "checkpoint"
    data: dict[str, Any] = field(default_factory=dict)


def _summary(metrics: Mapping[str, Any]) -> str:
    parts = []
    for name in _EVAL_SUMMARY:
        value = metrics.get(name)
        if isinstance(value, (int, float)):
            parts.append(f"{name} {value:.4g}")
    return ", ".join(parts) or "no metrics"


class RunRecorder:
    """Everything the supervisor learns about one attempt of a run, and the writes that record it."""

    def __init__(
        self,
        claimed: ClaimedRun,
        job: TrainingJob,
        session_factory: Callable[[], Session],
        publisher: LivePublisher,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_id = claimed.id
        self.attempt = claimed.attempt
        self.job = job
        self.session_factory = session_factory
        self.publisher = publisher
        self.clock = clock
        self.status = RunStatus.PREPARING
        self.training_started = False
        self.cancel_requested = False
        self.last_checkpoint_step: int | None = None
        self.progress: dict[str, Any] = {}
        self.latest: dict[str, Any] = {}
        self.baseline: dict[str, Any] = {}
        self.warnings: list[dict[str, Any]] = []
        self._pending: list[_Pending] = []
        self._start_running = False
        self._progress_changed = False
        self._state_changed = False  # latest, baseline or warnings
        self._mean_instance_tokens: float | None = None
        self._origin: tuple[int, float] | None = None  # (step, time) this attempt's step counting started

    def restore(
        self,
        *,
        progress: Mapping[str, Any],
        latest: Mapping[str, Any],
        baseline: Mapping[str, Any],
        warnings: list[dict[str, Any]],
    ) -> None:
        """Start from what earlier attempts recorded (a resumed run keeps its baseline and warnings)."""
        self.progress = dict(progress or {})
        self.latest = dict(latest or {})
        self.baseline = dict(baseline or {})
        self.warnings = [dict(w) for w in warnings or []]

    # ---- messages from the training process

    def handle(self, kind: str, payload: Any) -> None:
        if kind == "record":
            self._on_record(payload)
        elif kind == "progress":
            self._on_progress(int(payload["step"]), int(payload["max_steps"]))
        elif kind == "log":
            logger.info("run %s: %s", self.run_id, payload)
        else:
            logger.warning("run %s: unexpected message %r from the training process", self.run_id, kind)

    def add_event(
        self, type: str, message: str, *, level: str = "info", data: Mapping[str, Any] | None = None
    ) -> None:
        self._pending.append(
            _Pending("event", {"type": type, "message": message, "level": level, "data": dict(data or {})})
        )

    def _on_record(self, record: Mapping[str, Any]) -> None:
        if record.get("type") == "metrics":
            self._on_metrics(record)
        elif record.get("type") == "event":
            event = record.get("event")
            if event == "started":
                self._on_started(record)
            elif event == "checkpoint":
                self._on_checkpoint(record)
            # "finished" and "failed" are told by the result or failure message that follows.

    def _on_metrics(self, record: Mapping[str, Any]) -> None:
        split, step, metrics = str(record["split"]), int(record["step"]), dict(record.get("metrics") or {})
        self._pending.append(_Pending("metric", {"split": split, "step": step, "metrics": metrics}))
        self.latest[split] = {**metrics, "step": step}
        self._state_changed = True
        if split == "train":
            self._on_train_metrics(metrics)
            return
        baseline = step == 0 and split not in self.baseline
        if baseline:
            self.baseline[split] = {**metrics, "step": 0}
        label = f"baseline {split}" if baseline else split
        self.add_event(
            "evaluation",
            f"{label} at step {step}: {_summary(metrics)}",
            data={"split": split, "step": step, "metrics": metrics, "baseline": baseline},
        )

    def _on_train_metrics(self, metrics: Mapping[str, Any]) -> None:
        for name in ("epoch", "tokens_per_second"):
            if isinstance(metrics.get(name), (int, float)):
                self.progress[name] = metrics[name]
        samples = metrics.get("samples_seen")
        if isinstance(samples, (int, float)) and self._mean_instance_tokens:
            # Exact counts come with checkpoints and the final model; in between, samples x mean length.
            self.progress["tokens_seen"] = round(samples * self._mean_instance_tokens)
        self._progress_changed = True

    def _on_progress(self, step: int, max_steps: int) -> None:
        now = self.clock()
        if self._origin is None or step < self._origin[0]:
            self._origin = (step, now)
        origin_step, origin_time = self._origin
        done = step - origin_step
        eta = (max_steps - step) * (now - origin_time) / done if done > 0 else None
        self.progress.update(
            step=step, total_steps=max_steps, eta_seconds=None if eta is None else round(eta, 1)
        )
        self._progress_changed = True

    def _on_started(self, record: Mapping[str, Any]) -> None:
        self.training_started = True
        self._start_running = True
        data_key = str(record.get("data_key") or "")
        manifest = read_json(Path(self.job.cache_dir) / data_key / "manifest.json") if data_key else None
        splits = (manifest or {}).get("splits") or {}
        train = splits.get("train") or {}
        if isinstance(train.get("mean_length"), (int, float)):
            self._mean_instance_tokens = float(train["mean_length"])
        corpus = (manifest or {}).get("corpus") or {}
        held_out = splits.get("eval") or {}
        self.add_event(
            "data_prepared",
            f"prepared {train.get('instances', 0):,} training instances ({train.get('tokens', 0):,} "
            f"tokens) and {held_out.get('instances', 0):,} eval instances from "
            f"{corpus.get('documents', 0):,} documents",
            data={
                "data_key": data_key,
                "corpus": corpus,
                "eval_corpus": (manifest or {}).get("eval_corpus"),
                "splits": splits,
                "preparation_seconds": (manifest or {}).get("seconds"),
            },
        )
        resumed_from = record.get("resumed_from")
        resumed_step = int(record.get("step") or 0)
        max_steps = int(record.get("max_steps") or 0)
        self.progress.update(step=resumed_step, total_steps=max_steps)
        self._progress_changed = True
        self.add_event(
            "training_started",
            f"training {max_steps:,} steps on {record.get('train_instances', 0):,} instances "
            f"({record.get('precision')}, {record.get('device')})"
            + (f", resuming from the checkpoint of step {resumed_step}" if resumed_from else ""),
            data={
                "max_steps": max_steps,
                "resumed_from_step": resumed_step if resumed_from else None,
                "train_instances": record.get("train_instances"),
                "eval_splits": record.get("eval_splits"),
                "precision": record.get("precision"),
                "device": record.get("device"),
                "attempt": self.attempt,
            },
        )
        known = {(w.get("code"), w.get("message")) for w in self.warnings}
        for warning in record.get("warnings") or []:
            if isinstance(warning, Mapping) and (warning.get("code"), warning.get("message")) not in known:
                self.warnings.append(dict(warning))
                self._state_changed = True
                self.add_event(
                    "warning", str(warning.get("message", "")), level="warning", data=dict(warning)
                )

    def _on_checkpoint(self, record: Mapping[str, Any]) -> None:
        step = int(record["step"])
        path = Path(str(record.get("path", "")))
        checkpoints = Path(self.job.out_dir) / "checkpoints"
        if path.parent != checkpoints:
            logger.warning("run %s: checkpoint outside the run's directory ignored: %s", self.run_id, path)
            return
        try:
            size, sha256 = directory_digest(path)
        except FileNotFoundError:  # rotated away already
            return
        manifest = read_json(path / CHECKPOINT_MANIFEST) or {}
        tokens_seen = (manifest.get("state") or {}).get("tokens_seen")
        if isinstance(tokens_seen, int):
            self.progress["tokens_seen"] = tokens_seen
            self._progress_changed = True
        self.last_checkpoint_step = step
        self._pending.append(
            _Pending(
                "checkpoint",
                {
                    "step": step,
                    "metrics": manifest.get("metrics") or {},
                    "size_bytes": size,
                    "sha256": sha256,
                    "storage_key": f"{run_directory_key(self.run_id)}/checkpoints/{path.name}",
                    "kept_steps": [kept for kept, _ in complete_checkpoints(checkpoints)],
                },
            )
        )
        self.add_event(
            "checkpoint_saved",
            f"checkpoint saved at step {step} ({size / 1e6:,.1f} MB)",
            data={"step": step, "size_bytes": size, "sha256": sha256},
        )

    # ---- writes

    def _write_pending(self, session: Session) -> list[tuple[live.MessageType, dict[str, Any]]]:
        """Write the buffered items; returns their live messages, in order."""
        messages: list[tuple[live.MessageType, dict[str, Any]]] = []
        records = []
        for item in self._pending:
            if item.kind == "metric":
                records.append(item.data)
                messages.append(("metric", item.data))
            elif item.kind == "event":
                event = lifecycle.add_event(session, self.run_id, **item.data)
                messages.append(("event", live.event_data(event)))
            elif item.kind == "checkpoint":
                row = {k: v for k, v in item.data.items() if k != "kept_steps"}
                lifecycle.record_checkpoint(session, self.run_id, **row)
                lifecycle.forget_checkpoints(session, self.run_id, item.data["kept_steps"])
                messages.append(
                    ("checkpoint", {k: row[k] for k in ("step", "metrics", "size_bytes", "sha256")})
                )
        lifecycle.write_metrics(session, self.run_id, records)
        return messages

    def status_message(self, error: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "progress": self.progress,
            "error": dict(error) if error else None,
        }

    def flush(self) -> Heartbeat:
        """Write what is buffered with the heartbeat, publish it; returns the heartbeat (ownership and
        cancel request). A database error keeps the buffer for the next flush."""
        previous_status = self.status
        try:
            with session_scope(self.session_factory) as session:
                if self._start_running and self.status == RunStatus.PREPARING:
                    lifecycle.mark_running(session, self.run_id, self.attempt)
                beat = lifecycle.heartbeat(
                    session,
                    self.run_id,
                    self.attempt,
                    progress=self.progress if self._progress_changed else None,
                    latest=self.latest if self._state_changed else None,
                    baseline=self.baseline if self._state_changed else None,
                    warnings=self.warnings if self._state_changed else None,
                )
                if not beat.owned:
                    return beat
                messages = self._write_pending(session)
        except DBAPIError as exc:
            logger.warning("run %s: database write failed, retrying at the next flush (%s)", self.run_id, exc)
            return Heartbeat(owned=True, cancel_requested=self.cancel_requested, status=self.status)
        self._pending = []
        self.status = beat.status or self.status
        self.cancel_requested = beat.cancel_requested
        status_changed = self.status != previous_status
        progress_changed = self._progress_changed
        self._progress_changed = self._state_changed = False
        for type, data in messages:
            self.publisher.publish(type, data)
        if status_changed or progress_changed:
            self.publisher.publish("status", self.status_message())
        return beat

    def finish(
        self,
        status: RunStatus,
        *,
        event: tuple[str, str, dict[str, Any]],
        error: Mapping[str, Any] | None = None,
        output_storage_key: str | None = None,
        retries: int = 5,
    ) -> bool:
        """The terminal write: what is still buffered, the closing event (type, message, data) and the
        run's final state, in one transaction (retried while the database is unreachable); then the
        closing messages on the live stream. False when this attempt no longer owns the run."""
        type, message, data = event
        self.add_event(type, message, level="error" if status == RunStatus.FAILED else "info", data=data)
        delay = 1.0
        for attempt in range(retries + 1):
            try:
                with session_scope(self.session_factory) as session:
                    owned = lifecycle.finish_run(
                        session,
                        self.run_id,
                        self.attempt,
                        status,
                        error=error,
                        output_storage_key=output_storage_key,
                        progress=self.progress,
                        latest=self.latest,
                        baseline=self.baseline,
                    )
                    messages = self._write_pending(session) if owned else []
                break
            except DBAPIError as exc:
                if attempt == retries:
                    raise
                logger.warning("run %s: final write failed, retrying in %.0f s (%s)", self.run_id, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        self._pending = []
        if not owned:
            return False
        self.status = status
        for kind, payload in messages:
            self.publisher.publish(kind, payload)
        self.publisher.publish("status", self.status_message(error))
        return True
