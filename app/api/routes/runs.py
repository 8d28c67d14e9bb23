"""Runs: submit, list, get, cancel, delete; metrics, events, the live stream; checkpoints and the final
model as downloads."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import Field
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api.deps import (
    AsyncRedisDep,
    CurrentTenant,
    EnqueuerDep,
    LivePublisherDep,
    MetricsCacheDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    StreamOptionsDep,
    WorkerRegistryDep,
)
from app.api.downloads import streamed_download
from app.api.schemas import (
    TEXT_PATTERN,
    ErrorResponse,
    IdAfter,
    PageAfter,
    PageLimit,
    error_responses,
    id_path,
    json_response,
)
from app.config import Settings
from app.errors import ValidationFailed
from app.estimates.service import run_etas
from app.estimates.workers import WorkerRegistry
from app.models import Run
from app.pagination import DEFAULT_LIMIT
from app.runs import downloads, metric_series, plots, service, submission
from app.runs.download_archive import MEDIA_TYPE, StreamedArchive
from app.runs.downsample import MIN_POINTS
from app.runs.routing import waiting_reasons
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
from app.runs.states import RunStatus
from app.runs.stream import STREAM_ID_PATTERN, follow_run, parse_last_event_id
from app.storage import Storage

# Every route takes a parameter, and refuses an invalid one with a 422 in the one error body (FastAPI
# would document its own body for it).
router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=error_responses(401, 422))

MAX_METRIC_POINTS = 10_000

RunId = Annotated[str, id_path("The run's id (run_...).")]
# A step names a row of a bigint column.
MAX_STEP = 2**63 - 1
# A value of ?status=: statuses separated by commas, spaces and empty items ignored. Declared in the schema
# and checked by _run_statuses with a message of its own: every value the schema allows filters.
_STATUSES = "|".join(status.value for status in RunStatus)
STATUS_LIST_PATTERN = rf"^ *(({_STATUSES}) *)?(, *(({_STATUSES}) *)?)*$"
_STATUS_LIST = re.compile(STATUS_LIST_PATTERN)
StatusList = Annotated[str, Field(json_schema_extra={"pattern": STATUS_LIST_PATTERN})]
# An event id of the run's stream (its pattern declared in the schema, checked by parse_last_event_id).
_EVENT_ID = {"pattern": STREAM_ID_PATTERN}
IncludeTrainingState = Annotated[
    bool,
    Query(
        alias="include_optimizer",
        description="Also include what resuming needs: optimizer, scheduler, scaler and RNG state, "
        "trainer_state.json.",
    ),
]


# -- runs --------------------------------------------------------------------------------------------------


@router.post(
    "",
    response_model=RunPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Submit a run",
    description="Everything checkable is checked before the run is queued: hyperparameters (unknown names "
    "and out-of-range values are refused; defaults are filled in and echoed back), the corpora (this "
    "tenant's), the base model, max_seq_length against the model's position embeddings, metadata (a JSON "
    "object of at most 16 KiB). 201 with the queued run. With an `Idempotency-Key` header, repeating the "
    "same request returns the run it created with 200 (and queues nothing); the same key with a different "
    "body is a 409.",
    responses={
        200: {"model": RunPublic, "description": "Repeated request: the run created the first time"},
        **error_responses(400, 409, 422),
    },
)
def create_run(
    body: RunCreate,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
    enqueue: EnqueuerDep,
    registry: WorkerRegistryDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", description="Any unique string (a UUID): makes retrying safe."),
    ] = None,
) -> RunPublic:
    result = submission.create_run(
        session, storage, settings, tenant, body, idempotency_key=idempotency_key, enqueue=enqueue
    )
    response.status_code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/runs/{result.run.id}"
    return _served(session, settings, storage, registry, [result.run])[0]


@router.get("", response_model=RunsPublic, summary="List runs, newest first", responses=error_responses(422))
def list_runs(
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
    registry: WorkerRegistryDep,
    status_filter: Annotated[
        list[StatusList] | None,
        Query(
            alias="status", description="Only runs in these statuses (repeat it, or separate with commas)."
        ),
    ] = None,
    limit: PageLimit = DEFAULT_LIMIT,
    after: PageAfter = "",
) -> Response:
    statuses = _run_statuses(status_filter)
    page = service.list_runs(session, tenant, statuses=statuses, limit=limit, after=after)
    return json_response(
        RunsPublic(
            data=_served(session, settings, storage, registry, page.items), next_cursor=page.next_cursor
        )
    )


# ":id": not /v1/runs/estimate (POST only, app.api.routes.estimates): app.api.schemas.IdConvertor.
@router.get("/{run_id:id}", response_model=RunPublic, summary="Get a run", responses=error_responses(404))
def get_run(
    run_id: RunId,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
    registry: WorkerRegistryDep,
) -> Response:
    run = service.get_run(session, tenant, run_id)
    return json_response(_served(session, settings, storage, registry, [run])[0])


@router.post(
    "/{run_id}/cancel",
    response_model=RunPublic,
    summary="Cancel a run",
    description="Idempotent. A queued run is cancelled at once and never starts; a preparing or running run "
    "becomes `cancelling` (`cancel_requested: true`) and stops at its next step, saving a checkpoint; a "
    "finished run is returned unchanged.",
    responses=error_responses(404),
)
def cancel_run(
    run_id: RunId,
    session: SessionDep,
    tenant: CurrentTenant,
    publisher: LivePublisherDep,
    settings: SettingsDep,
) -> RunPublic:
    cancelled = service.cancel_run(session, tenant, run_id, publisher=publisher)
    return RunPublic.from_run(cancelled, settings=settings)


@router.post(
    "/{run_id}/resume",
    response_model=RunPublic,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Resume a failed or cancelled run",
    description="Queues the run again (same id, hyperparameters and output directory): its next attempt "
    "continues exactly from its newest kept checkpoint (weights, optimizer, scheduler, data position) and "
    "gets MAX_ATTEMPTS attempts of its own. 409 when the run is not failed or cancelled, kept no "
    "checkpoint, or one of its corpora was deleted.",
    responses=error_responses(404, 409),
)
def resume_run(
    run_id: RunId,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
    enqueue: EnqueuerDep,
    publisher: LivePublisherDep,
    registry: WorkerRegistryDep,
) -> RunPublic:
    resumed = service.resume_run(session, storage, tenant, run_id, enqueue=enqueue, publisher=publisher)
    return _served(session, settings, storage, registry, [resumed])[0]


@router.delete(
    "/{run_id:id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a finished run and its files",
    description="Only succeeded, failed or cancelled runs (409 otherwise, and while an active run starts "
    "from this run's model). Its metrics, events, checkpoints and stored files are removed.",
    responses=error_responses(404, 409),
)
def delete_run(run_id: RunId, session: SessionDep, tenant: CurrentTenant, storage: StorageDep) -> None:
    service.delete_run(session, storage, tenant, run_id)


# -- metrics, events, live stream ----------------------------------------------------------------------------


@router.get(
    "/{run_id}/metrics",
    response_model=MetricsPublic,
    summary="Metric curves",
    description="Each series (split, name) as [step, value] points, steps ascending, downsampled on the "
    "server to at most `max_points`: the first and last point, and the lowest and highest point of each "
    "bucket of steps, so spikes stay visible. Non-finite values are null.",
    responses=error_responses(404, 422),
)
def get_metrics(
    run_id: RunId,
    session: SessionDep,
    tenant: CurrentTenant,
    cache: MetricsCacheDep,
    names: Annotated[
        list[Annotated[str, Field(pattern=TEXT_PATTERN)]] | None,
        Query(
            description="Only these metrics (repeat it, or separate with commas), e.g. loss,masked_lm_loss."
        ),
    ] = None,
    split: Annotated[MetricSplit | None, Query(description="Only this split.")] = None,
    since_step: Annotated[int | None, Query(ge=0, description="First step (inclusive).")] = None,
    until_step: Annotated[int | None, Query(ge=0, description="Last step (inclusive).")] = None,
    max_points: Annotated[int, Query(ge=MIN_POINTS, le=MAX_METRIC_POINTS, description="Per series.")] = 1000,
) -> Response:
    # Any name the schema allows is accepted: one that no series has (unknown, or longer than any metric
    # name) matches none, like a step range that holds no step.
    wanted = _split_list(names)
    query = metric_series.MetricsQuery(
        names=wanted or None, split=split, since_step=since_step, until_step=until_step, max_points=max_points
    )
    return json_response(metric_series.get_metrics(session, tenant, run_id, query, cache=cache))


def _plot_route(plot_format: plots.PlotFormat) -> Any:
    """``GET /v1/runs/{run_id}/plot.<plot_format>``: the picture of :func:`app.runs.plots.plot_run`."""
    media_type = plots.MEDIA_TYPES[plot_format]

    @router.get(
        f"/{{run_id}}/plot.{plot_format}",
        response_class=Response,
        summary=f"The run's curves as a {plot_format.upper()}",
        description="For a report: the training loss with its masked-LM and next-sentence terms, the "
        "learning rate, and the evaluations (masked-LM loss and accuracy, perplexity, next-sentence "
        "accuracy) of the held-out domain text and of the reference corpus, each with its step-0 baseline "
        "(the base model) as a dashed line; titled with the run's name, id and status. The series of "
        "GET /v1/runs/{id}/metrics. 409 while the run has no metric yet.",
        responses={
            200: {"content": {media_type: {}}, "description": f"The picture ({media_type})"},
            **error_responses(404, 409, 422),
        },
    )
    def get_plot(
        run_id: RunId,
        session: SessionDep,
        tenant: CurrentTenant,
        cache: MetricsCacheDep,
        width: Annotated[
            int, Query(ge=plots.MIN_WIDTH, le=plots.MAX_WIDTH, description="Pixels at 100 dpi.")
        ] = plots.DEFAULT_WIDTH,
        height: Annotated[
            int, Query(ge=plots.MIN_HEIGHT, le=plots.MAX_HEIGHT, description="Pixels at 100 dpi.")
        ] = plots.DEFAULT_HEIGHT,
    ) -> Response:
        # A plain def: FastAPI runs it, drawing included, in its thread pool.
        content = plots.plot_run(
            session, tenant, run_id, plot_format=plot_format, width=width, height=height, cache=cache
        )
        return Response(content, media_type=media_type)

    return get_plot


get_plot_png = _plot_route("png")
get_plot_svg = _plot_route("svg")


@router.get(
    "/{run_id}/events",
    response_model=RunEventsPublic,
    summary="Lifecycle events, oldest first",
    responses=error_responses(404, 422),
)
def list_events(
    run_id: RunId,
    session: SessionDep,
    tenant: CurrentTenant,
    limit: PageLimit = DEFAULT_LIMIT,
    after: IdAfter = "",
) -> Response:
    page = service.list_events(session, tenant, run_id, after=after, limit=limit)
    events = [RunEventPublic.model_validate(event) for event in page.items]
    return json_response(RunEventsPublic(data=events, next_cursor=page.next_cursor))


@router.get(
    "/{run_id}/stream",
    response_class=EventSourceResponse,
    summary="Live updates (Server-Sent Events)",
    description="Events `metric`, `status`, `event` and `checkpoint`, each with an increasing `id` and JSON "
    "`data`. First everything after `Last-Event-ID` (header, or `?last_event_id=`; else from the start), "
    "then live. Ends after the status event of a finished run. Keep-alive comments every 15 s.",
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(404, 422)},
)
def stream_run(
    run_id: RunId,
    request: Request,
    session: SessionDep,
    tenant: CurrentTenant,
    client: AsyncRedisDep,
    options: StreamOptionsDep,
    last_event_id: Annotated[
        str, Query(description="Resume after this event id.", json_schema_extra=_EVENT_ID)
    ] = "",
    last_event_id_header: Annotated[str, Header(alias="Last-Event-ID", json_schema_extra=_EVENT_ID)] = "",
) -> EventSourceResponse:
    run = service.get_run(session, tenant, run_id)
    # A reconnecting EventSource sends the header: it is newer than the id in the URL it first opened.
    after = parse_last_event_id(last_event_id_header, param="Last-Event-ID") or parse_last_event_id(
        last_event_id
    )
    session_factory = request.app.state.session_factory
    found_run_id, terminal = run.id, run.status.is_terminal

    async def is_terminal() -> bool:
        return await run_in_threadpool(service.run_is_terminal, session_factory, found_run_id)

    async def events() -> AsyncIterator[ServerSentEvent]:
        entries = follow_run(
            client, found_run_id, after=after, terminal=terminal, is_terminal=is_terminal, options=options
        )
        async for entry in entries:
            yield ServerSentEvent(data=entry.data, event=entry.type, id=entry.id)

    return EventSourceResponse(events(), ping=options.ping_seconds)


# -- checkpoints and the final model ------------------------------------------------------------------------


@router.get(
    "/{run_id}/checkpoints",
    response_model=list[RunCheckpointPublic],
    summary="Kept checkpoints, by step",
    responses=error_responses(404),
)
def list_checkpoints(run_id: RunId, session: SessionDep, tenant: CurrentTenant) -> list[RunCheckpointPublic]:
    return [RunCheckpointPublic.model_validate(c) for c in service.list_checkpoints(session, tenant, run_id)]


_DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {MEDIA_TYPE: {}}, "description": "The .tar, streamed (Range requests: 206)"},
    304: {"description": "Not modified (If-None-Match)"},
    416: {"model": ErrorResponse, "description": "Range not satisfiable"},
}


@router.head("/{run_id}/checkpoints/{step}/download", include_in_schema=False)
@router.get(
    "/{run_id}/checkpoints/{step}/download",
    response_class=StreamingResponse,
    summary="Download a checkpoint",
    description="A .tar of the checkpoint's Hugging Face directory (weights, config, tokenizer, manifest), "
    "written while it is sent: the first bytes leave at once, whatever the size. Headers: Content-Length, "
    "ETag (the same for the same files), Content-Disposition, and X-Content-SHA256 (the archive's sha256) "
    "once a complete download has computed it; Range requests (with If-Range) are answered with 206. It "
    "uploads back as is (POST /v1/checkpoints).",
    responses=_DOWNLOAD_RESPONSES | error_responses(404, 409),
)
def download_checkpoint(
    run_id: RunId,
    step: Annotated[int, Path(ge=0, le=MAX_STEP)],
    request: Request,
    session: SessionDep,
    tenant: CurrentTenant,
    storage: StorageDep,
    include_training_state: IncludeTrainingState = False,
) -> Response:
    archive = downloads.checkpoint_archive(
        session, storage, tenant, run_id, step, include_training_state=include_training_state
    )
    return _archive_response(request, archive)


@router.head("/{run_id}/model", include_in_schema=False)
@router.get(
    "/{run_id}/model",
    response_class=StreamingResponse,
    summary="Download the final model",
    description="A .tar of the final Hugging Face directory of a succeeded run (409 otherwise), ready for "
    "`from_pretrained` once extracted; served like a checkpoint download.",
    responses=_DOWNLOAD_RESPONSES | error_responses(404, 409),
)
def download_model(
    run_id: RunId,
    request: Request,
    session: SessionDep,
    tenant: CurrentTenant,
    storage: StorageDep,
    include_training_state: IncludeTrainingState = False,
) -> Response:
    archive = downloads.model_archive(
        session, storage, tenant, run_id, include_training_state=include_training_state
    )
    return _archive_response(request, archive)


def _archive_response(request: Request, archive: StreamedArchive) -> Response:
    return streamed_download(request, archive, filename=archive.filename, media_type=MEDIA_TYPE)


# -- helpers -------------------------------------------------------------------------------------------------


def _served(
    session: Session, settings: Settings, storage: Storage, registry: WorkerRegistry, runs: Sequence[Run]
) -> list[RunPublic]:
    """The runs as the API serves them, with the ``eta_seconds`` of those queued or preparing, and the
    ``waiting_reason`` of those queued that no live worker can take."""
    etas = run_etas(session, settings, storage, runs, registry=registry)
    reasons = waiting_reasons(settings, registry, runs)
    return [
        RunPublic.from_run(
            run, settings=settings, eta_seconds=etas.get(run.id), waiting_reason=reasons.get(run.id)
        )
        for run in runs
    ]


def _split_list(values: list[str] | None) -> list[str]:
    """Query values given repeated or comma-separated, trimmed, without empties or duplicates."""
    items: list[str] = []
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if item and item not in items:
                items.append(item)
    return items


def _run_statuses(values: list[str] | None) -> list[RunStatus]:
    """The statuses of ``?status=``; ValidationFailed for a value :data:`STATUS_LIST_PATTERN` refuses."""
    for value in values or []:
        if not _STATUS_LIST.fullmatch(value):
            raise ValidationFailed(
                "status",
                f"{value!r}: expected statuses separated by commas, each one of {', '.join(RunStatus)}",
            )
    return [RunStatus(value) for value in _split_list(values)]
