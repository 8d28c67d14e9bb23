"""Operations: liveness, readiness, Prometheus metrics (no authentication)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from app.api.schemas import ErrorDetail
from app.health import check_readiness

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str]
    error: ErrorDetail | None = None


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the database and Redis are reachable",
    responses={503: {"model": Readiness, "description": "A dependency is unreachable"}},
)
def readyz(request: Request) -> Response:
    checks = check_readiness(request.app.state.session_factory, request.app.state.settings)
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
