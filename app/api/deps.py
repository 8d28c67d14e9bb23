"""Dependencies of the routes, as typed aliases: ``SessionDep``, ``CurrentTenant``, ``StorageDep``,
``SettingsDep``, ``UploadSlotDep``, and the per-process clients ``EnqueuerDep``,
``EvaluationEnqueuerDep``, ``AnalysisEnqueuerDep``, ``LivePublisherDep``, ``AsyncRedisDep``,
``MetricsCacheDep``, ``StreamOptionsDep``, ``WorkerRegistryDep``.

Everything comes from ``request.app.state`` (built once by ``create_app`` and its lifespan), so that each
app (and each test) has its own settings, database, storage and clients; tests override a dependency
with ``app.dependency_overrides``.

Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread,
and that hop costs more than most requests' own work. The session is opened on the event loop (no I/O)
and ended, committed or rolled back, in one worker-thread hop; authentication costs no hop when the key
was accepted recently (:class:`~app.tenants.service.Authenticator`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
import redis.asyncio
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.upload_slots import UploadSlots
from app.config import Settings
from app.db import end_session
from app.estimates.workers import WorkerRegistry
from app.models import Tenant
from app.queue import Enqueuer, RunEnqueuer
from app.runs.live import LivePublisher
from app.runs.metric_series import MetricBucketCache
from app.runs.stream import StreamOptions
from app.storage import Storage
from app.tenants.service import Authenticator

__all__ = [
    "AnalysisEnqueuerDep",
    "AsyncRedisDep",
    "CurrentTenant",
    "EnqueuerDep",
    "EvaluationEnqueuerDep",
    "LivePublisherDep",
    "MetricsCacheDep",
    "SessionDep",
    "SettingsDep",
    "StorageDep",
    "StreamOptionsDep",
    "UploadSlotDep",
    "WorkerRegistryDep",
    "get_analysis_enqueuer",
    "get_current_tenant",
    "get_evaluation_enqueuer",
    "get_run_enqueuer",
    "get_session",
    "get_stream_options",
    "get_worker_registry",
]


async def get_settings_from_app(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


async def get_run_enqueuer(request: Request) -> RunEnqueuer:
    """Sends ``bertpt.runs.execute`` through the app's Celery client."""
    enqueue: RunEnqueuer = request.app.state.run_enqueuer
    return enqueue


async def get_evaluation_enqueuer(request: Request) -> Enqueuer:
    """Sends ``bertpt.evaluations.execute`` through the app's Celery client."""
    enqueue: Enqueuer = request.app.state.evaluation_enqueuer
    return enqueue


async def get_analysis_enqueuer(request: Request) -> Enqueuer:
    """Sends ``bertpt.analyze_corpus`` through the app's Celery client."""
    enqueue: Enqueuer = request.app.state.analysis_enqueuer
    return enqueue


async def get_worker_registry(request: Request) -> WorkerRegistry:
    """The training slots the live workers announced (for the queue part of estimates)."""
    registry: WorkerRegistry = request.app.state.worker_registry
    return registry


async def get_live_publisher(request: Request) -> LivePublisher:
    """Publishes on the runs' live streams through the app's Redis connection pool."""
    publisher: LivePublisher = request.app.state.live_publisher
    return publisher


async def get_async_redis(request: Request) -> redis.asyncio.Redis:
    """The app's asyncio Redis client (one pool per process), opened by its lifespan."""
    client: redis.asyncio.Redis = request.app.state.async_redis
    return client


async def get_metrics_cache(request: Request) -> MetricBucketCache:
    cache: MetricBucketCache = request.app.state.metrics_cache
    return cache


async def get_stream_options() -> StreamOptions:
    return StreamOptions()


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One unit of work per request: committed when the route returns (before the response is sent),
    rolled back if it raises.

    A session keeps its connection from its first query to its end, across thread hops, so the number
    of sessions open at once is capped (``app.state.db_slots``, set by the app's lifespan) at the pool's
    size: otherwise, with more requests in flight than connections, every thread could be
    waiting for a connection held by a request that needs a thread to commit (a deadlock until the pool
    times out). Requests over the cap wait on the event loop. Creating a session does no I/O; ending it
    does, in a worker thread (shielded from the cancellation of the request, so that the connection
    always goes back to the pool).
    """
    slots: anyio.CapacityLimiter | None = getattr(request.app.state, "db_slots", None)
    async with slots if slots is not None else contextlib.nullcontext():
        session = request.app.state.session_factory()
        try:
            yield session
        except BaseException:
            with anyio.CancelScope(shield=True):  # a cancelled request still gives its connection back
                await run_in_threadpool(end_session, session, failed=True)
            raise
        await run_in_threadpool(end_session, session, failed=False)


async def take_upload_slot(request: Request) -> AsyncIterator[UploadSlots]:
    """One of the process's upload slots (``MAX_CONCURRENT_UPLOADS``), given back when the route returns;
    429 with Retry-After when they are all taken. Put it first among a route's parameters, so that an
    upload over the limit is refused before anything else is done for it."""
    uploads: UploadSlots = request.app.state.upload_slots
    uploads.acquire()
    try:
        yield uploads
    finally:
        uploads.release()


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]
StorageDep = Annotated[Storage, Depends(get_storage)]
EnqueuerDep = Annotated[RunEnqueuer, Depends(get_run_enqueuer)]
EvaluationEnqueuerDep = Annotated[Enqueuer, Depends(get_evaluation_enqueuer)]
AnalysisEnqueuerDep = Annotated[Enqueuer, Depends(get_analysis_enqueuer)]
WorkerRegistryDep = Annotated[WorkerRegistry, Depends(get_worker_registry)]
LivePublisherDep = Annotated[LivePublisher, Depends(get_live_publisher)]
AsyncRedisDep = Annotated[redis.asyncio.Redis, Depends(get_async_redis)]
MetricsCacheDep = Annotated[MetricBucketCache, Depends(get_metrics_cache)]
StreamOptionsDep = Annotated[StreamOptions, Depends(get_stream_options)]
UploadSlotDep = Annotated[UploadSlots, Depends(take_upload_slot, scope="function")]
# scope="function": the commit happens when the route function returns, so a client never receives a
# success for a transaction that then fails to commit.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer bpt_...`.")


async def get_current_tenant(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    authenticator: Authenticator = request.app.state.authenticator
    key = credentials.credentials if credentials else None
    tenant = authenticator.cached(key)
    if tenant is None:
        tenant = await run_in_threadpool(authenticator.authenticate, session, key)
    return tenant


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]
