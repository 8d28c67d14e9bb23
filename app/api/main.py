"""The FastAPI application: ``create_app()`` wires settings, database, storage, the process's clients
(Celery, one Redis pool for publishing and one asyncio Redis pool for the live streams), the metric-series
cache, Prometheus metrics, routers, and maps every error to one JSON body,
``{"error": {"type", "message", "param"}}``.

Run it with ``uvicorn --factory app.api.main:create_app``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import version
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.allowed_methods import AllowedMethodsMiddleware
from app.api.docs import use_offline_docs
from app.api.openapi_examples import use_openapi_examples
from app.api.openapi_links import use_openapi_links
from app.api.prometheus import MetricsMiddleware, create_registry
from app.api.routes import (
    checkpoints,
    corpora,
    datasets,
    estimates,
    evaluations,
    health,
    models,
    runs,
    webhooks,
)
from app.api.upload_slots import UploadSlots
from app.config import Settings, get_settings
from app.db import create_db_engine, create_session_factory, is_nul_refused
from app.errors import (
    AppError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
)
from app.estimates.workers import WorkerRegistry
from app.health import ReadinessProbe
from app.housekeeping import start_housekeeping
from app.queue import create_celery, enqueue_analysis, enqueue_evaluation
from app.runs.live import LivePublisher, create_redis
from app.runs.metric_series import MetricBucketCache
from app.runs.routing import RunSender
from app.runs.stream import StreamOptions, open_async_redis
from app.storage import Storage, get_storage, sweep_stale_uploads
from app.tenants.service import Authenticator
from app.ui import routes as dashboard
from worker.pretraining.hyperparameters import HyperparameterError, validation_message

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

ROUTERS = (
    health.router,
    corpora.router,
    datasets.router,
    checkpoints.router,
    models.router,
    estimates.analyses_router,
    estimates.estimate_router,
    runs.router,
    evaluations.router,
    webhooks.router,
    dashboard.router,
)

# The one place where domain errors become HTTP statuses.
STATUS_BY_ERROR: dict[type[AppError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    PayloadTooLarge: 413,
    ValidationFailed: 422,
    TooManyRequests: 429,
    ServiceUnavailable: 503,
}
_TYPE_BY_STATUS = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "too_many_requests",
    503: "service_unavailable",
}


def create_app(
    settings: Settings | None = None,
    *,
    session_factory: Callable[[], Session] | None = None,
    storage: Storage | None = None,
) -> FastAPI:
    """Build the API. ``session_factory`` and ``storage`` default to ones built from ``settings``
    (tests pass a factory bound to a connection whose transaction they roll back)."""
    settings = settings or get_settings()
    engine = None
    if session_factory is None:
        engine = create_db_engine(
            settings.database_url,
            pool_size=sessions_at_once(settings),
            # For what runs outside a request's session: /readyz, /metrics, a stream's status checks.
            max_overflow=8,
        )
        session_factory = create_session_factory(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Sync routes and dependencies run on anyio's default thread limiter (40 threads unless told).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        # Requests holding a database session at once (see app.api.deps.get_session): no more than the
        # pool has connections, so no thread ever waits for one.
        app.state.db_slots = anyio.CapacityLimiter(sessions_at_once(settings))
        # Bound to this event loop: the live streams' reads (connections are opened when first used).
        app.state.async_redis = open_async_redis(settings.redis_url, StreamOptions())
        app.state.upload_slots = UploadSlots(settings.concurrent_uploads())
        app.state.readiness = ReadinessProbe(session_factory, settings)
        # What uploads left when a process died mid-write (this one, or another sharing the storage).
        await anyio.to_thread.run_sync(_sweep_stale_uploads, app.state.storage, settings.stale_upload_seconds)
        # The reaper and the sweeps run here too, so that a run whose only worker died still ends.
        sweep_uploads = partial(sweep_stale_uploads, app.state.storage, settings.stale_upload_seconds)
        housekeeper = (
            start_housekeeping(settings, extra=[("sweep abandoned upload files", sweep_uploads)])
            if settings.housekeeping
            else None
        )
        yield
        if housekeeper is not None:
            housekeeper.stop()
        # uvicorn has let the requests finish for SHUTDOWN_GRACE_SECONDS, then cancelled the rest; uploads
        # still running in a thread stop at their next chunk (and remove their temporary files).
        still_running = await app.state.upload_slots.stop()
        if still_running:
            logger.warning("%d upload(s) still running at shutdown", still_running)
        app.state.readiness.close()
        await app.state.async_redis.aclose()
        publisher_redis.close()
        if engine is not None:
            engine.dispose()

    app = FastAPI(
        title="bertpt",
        version=version("bertpt"),
        summary="Continual pre-training of BERT checkpoints (masked-LM + next-sentence prediction).",
        # /docs and /redoc with assets served here, not from a CDN: app.api.docs.
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.storage = storage or get_storage(settings)
    app.state.authenticator = Authenticator(settings.auth_cache_seconds)
    celery = create_celery(settings)
    app.state.run_enqueuer = RunSender(settings, session_factory, celery)  # to the run's class's queue
    app.state.evaluation_enqueuer = partial(enqueue_evaluation, celery=celery)
    app.state.analysis_enqueuer = partial(enqueue_analysis, celery=celery)
    # Publishing (a cancel's announcement) happens in a worker thread: the synchronous client's pool.
    publisher_redis = create_redis(settings.redis_url, socket_timeout=2.0)
    app.state.live_publisher = LivePublisher(publisher_redis)
    app.state.worker_registry = WorkerRegistry(publisher_redis, settings)
    app.state.metrics_cache = MetricBucketCache()
    registry, http_metrics = create_registry(settings, session_factory)
    app.state.metrics_registry = registry

    for router in ROUTERS:
        app.include_router(router)
    use_openapi_links(app)
    use_openapi_examples(app)  # after the links: it wraps them
    use_offline_docs(app)
    _add_error_handlers(app)
    app.add_middleware(AllowedMethodsMiddleware)  # inside CORS: preflights are CORS's
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
        )
    app.add_middleware(MetricsMiddleware, metrics=http_metrics)
    return app


def _sweep_stale_uploads(storage: Storage, older_than: float) -> None:
    try:
        removed = sweep_stale_uploads(storage, older_than)
    except OSError as exc:
        logger.warning("could not sweep the storage's temporary files (%s)", exc)
        return
    if removed:
        logger.warning("temporary files left by a process that died: %s", ", ".join(removed))


def sessions_at_once(settings: Settings) -> int:
    """Requests of one API process that may hold a database session at once: twice its threads, since a
    session stays open between its thread hops (an upload's between authentication and its end)."""
    return 2 * settings.api_threads


def error_body(error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message, "param": param}}


def _status_of(exc: AppError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(_request: Request, exc: AppError) -> JSONResponse:
        status = _status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse(error_body(exc.code, exc.message, exc.param), status_code=status, headers=headers)

    @app.exception_handler(HyperparameterError)
    async def hyperparameter_error(_request: Request, exc: HyperparameterError) -> JSONResponse:
        # A field error names the field; a rule across fields (max_steps vs num_epochs) names the object.
        field = exc.errors[0][0] if exc.errors else "hyperparameters"
        param = "hyperparameters" if field == "hyperparameters" else f"hyperparameters.{field}"
        return JSONResponse(error_body("validation_error", f"invalid hyperparameters: {exc}", param), 422)

    @app.exception_handler(RequestValidationError)
    async def request_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        params = [_param_of(error.get("loc", ())) for error in errors]
        message = "; ".join(
            f"{param or 'request'}: {validation_message(error)}"
            for param, error in zip(params, errors, strict=True)
        )
        return JSONResponse(
            error_body("validation_error", message or "invalid request", params[0] if params else None),
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /docs for the API"
        return JSONResponse(
            error_body(_TYPE_BY_STATUS.get(exc.status_code, "http_error"), message),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError) -> JSONResponse:
        # Free text of a request (a name, metadata, a checkpoint's config...) with a NUL character, which
        # PostgreSQL cannot store; the parameters that name things declare it in the schema and are refused
        # before. Any other data error is the server's.
        if not is_nul_refused(exc):
            return await unexpected_error(request, exc)
        message = "text with a NUL character (\\u0000) cannot be stored; remove it"
        return JSONResponse(error_body("validation_error", message), status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled %s", type(exc).__name__, exc_info=exc)
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)


def _param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """``("query", "limit")`` -> ``"limit"``, ``("body", "hyperparameters", "learning_rate")`` ->
    ``"hyperparameters.learning_rate"``."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or None
