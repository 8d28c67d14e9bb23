"""``client.runs``: submit, list, follow and download training runs (``/v1/runs``)."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.estimates.schemas import RunEstimate
from app.runs.schemas import (
    MetricSplit,
    MetricsPublic,
    RunCheckpointPublic,
    RunCreate,
    RunEventPublic,
    RunEventsPublic,
    RunPublic,
    RunsPublic,
)
from bertpt.client.downloads import Download, download_archive
from bertpt.client.resources import request_body
from bertpt.client.stream import StreamEvent, follow_stream
from bertpt.client.uploads import Progress

if TYPE_CHECKING:
    from bertpt.client.client import Client

__all__ = ["RunsResource"]


class RunsResource:
    """``client.runs``. Every answer is the API's own schema (``app.runs.schemas``)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, body: RunCreate | dict[str, Any], *, idempotency_key: str | None = None) -> RunPublic:
        """Submit a run (``{"base_model", "corpus_id", "hyperparameters", ...}``): queued once every
        checkable thing is checked (ApiError 422 naming the field at fault, 400, 409). With an
        ``idempotency_key`` (any unique string), sending the same request again returns the run it created
        instead of a second one: safe to retry."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        response = self._client.request("POST", "/v1/runs", json=request_body(body), headers=headers)
        return RunPublic.model_validate(response.json())

    def list(self, status: Sequence[str] | None = None) -> builtins.list[RunPublic]:
        """Every run of your tenant, newest first; only those in the given statuses (``["running",
        "queued"]``) when ``status`` is given."""
        params = {"status": ",".join(status)} if status else None
        return self._client.all_pages("/v1/runs", RunsPublic.model_validate, params=params)

    def get(self, run_id: str) -> RunPublic:
        """A run: status, progress and ETA, latest and baseline metrics, warnings, error."""
        return RunPublic.model_validate(self._client.request("GET", f"/v1/runs/{run_id}").json())

    def cancel(self, run_id: str) -> RunPublic:
        """Cancel a run (idempotent): a queued one at once, a running one at its next step (it saves a
        checkpoint: :meth:`resume` continues it)."""
        return RunPublic.model_validate(self._client.request("POST", f"/v1/runs/{run_id}/cancel").json())

    def resume(self, run_id: str) -> RunPublic:
        """Queue a failed or cancelled run again, from its newest kept checkpoint; ApiError 409 when it
        cannot be resumed (not failed or cancelled, no checkpoint, a corpus deleted)."""
        return RunPublic.model_validate(self._client.request("POST", f"/v1/runs/{run_id}/resume").json())

    def delete(self, run_id: str) -> None:
        """Delete a finished run and its files; ApiError 409 while it is active."""
        self._client.request("DELETE", f"/v1/runs/{run_id}")

    def metrics(
        self,
        run_id: str,
        *,
        split: MetricSplit | str | None = None,
        max_points: int | None = None,
        names: Sequence[str] | None = None,
        since_step: int | None = None,
        until_step: int | None = None,
    ) -> MetricsPublic:
        """The run's metric curves, ``[step, value]`` per series (``split``: train, eval or reference;
        ``names``: only these metrics), downsampled by the server to at most ``max_points`` per series
        (its default 1000) keeping spikes visible."""
        params: dict[str, Any] = {
            "split": split,
            "max_points": max_points,
            "names": ",".join(names) if names else None,
            "since_step": since_step,
            "until_step": until_step,
        }
        present = {name: value for name, value in params.items() if value is not None}
        response = self._client.request("GET", f"/v1/runs/{run_id}/metrics", params=present)
        return MetricsPublic.model_validate(response.json())

    def events(self, run_id: str) -> builtins.list[RunEventPublic]:
        """The run's lifecycle events (started, checkpoint saved, warnings, ended...), oldest first."""
        return self._client.all_pages(f"/v1/runs/{run_id}/events", RunEventsPublic.model_validate)

    def checkpoints(self, run_id: str) -> builtins.list[RunCheckpointPublic]:
        """The run's kept checkpoints by step (download one with ``download(run_id, out, step=...)``)."""
        response = self._client.request("GET", f"/v1/runs/{run_id}/checkpoints")
        return [RunCheckpointPublic.model_validate(item) for item in response.json()]

    def estimate(self, body: RunCreate | dict[str, Any]) -> RunEstimate:
        """What a run would cost before it is submitted (the body of :meth:`create`, checked the same way):
        steps, tokens, seconds, and the queue ahead of it."""
        response = self._client.request("POST", "/v1/runs/estimate", json=request_body(body))
        return RunEstimate.model_validate(response.json())

    def stream(self, run_id: str, *, last_event_id: str | None = None) -> Iterator[StreamEvent]:
        """The run's live events (metrics, statuses, events, checkpoints) after ``last_event_id`` (None:
        from its start), until it has finished; a dropped connection is resumed with ``Last-Event-ID``,
        without a gap or a repeat (:mod:`bertpt.client.stream`)::

            for event in client.runs.stream(run.id):
                if event.event == "metric":
                    print(event.data["step"], event.data["metrics"].get("loss"))
        """
        return follow_stream(self._client, run_id, last_event_id=last_event_id)

    def download(
        self,
        run_id: str,
        out_dir: Path | str,
        *,
        step: int | None = None,
        include_optimizer: bool = False,
        progress: Progress | None = None,
        extract: bool = True,
    ) -> Download:
        """Download the run's final model (a succeeded run), or its checkpoint at ``step``, as a .tar into
        ``out_dir``, and extract it there (``extract``): ``from_pretrained(download.directory)``.
        ``include_optimizer`` adds what resuming training needs (optimizer, scheduler, RNG state).
        Resumes after an interruption, checks the sha256, extracts safely (:mod:`bertpt.client.downloads`);
        ``progress(bytes, total)``."""
        path = (
            f"/v1/runs/{run_id}/model" if step is None else f"/v1/runs/{run_id}/checkpoints/{step}/download"
        )
        params = {"include_optimizer": "true"} if include_optimizer else None
        return download_archive(
            self._client, path, Path(out_dir), params=params, progress=progress, extract=extract
        )

    def plot(self, run_id: str, *, format: Literal["png", "svg"] = "png") -> bytes:
        """A picture of the run's loss and evaluation curves, with the baseline and reference lines
        (``GET /v1/runs/{id}/plot.png`` or ``.svg``), for a report or a notebook
        (``IPython.display.Image(client.runs.plot(run_id))``)."""
        return self._client.request("GET", f"/v1/runs/{run_id}/plot.{format}").content
