"""Operations: liveness, readiness, Prometheus metrics (no authentication).

``/healthz`` and ``/readyz`` never wait for the request thread pool (``API_THREADS``), which slow requests
may all hold: liveness does no I/O, readiness runs its checks in threads of its own with a deadline
(:class:`app.health.ReadinessProbe`). Both answer while every thread is busy.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from app.api.schemas import ErrorDetail
from app.health import ReadinessProbe

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    error: ErrorDetail | None = None


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the database and Redis are reachable",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable"}},
)
async def readyz(request: Request) -> Response:
    probe: ReadinessProbe = request.app.state.readiness
    checks = await probe.check()
    failed = [name for name, result in checks.items() if result != "ok"]
    if not failed:
        return JSONResponse(Readiness(status="ok", checks=checks).model_dump(exclude_none=True))
    error = ErrorDetail(type="service_unavailable", message=f"unreachable: {', '.join(failed)}", param=None)
    body = Readiness(status="unavailable", checks=checks, error=error)
    return JSONResponse(body.model_dump(), status_code=503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    # The collectors query the database and Redis: keep that off the event loop.
    payload = await run_in_threadpool(generate_latest, request.app.state.metrics_registry)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
