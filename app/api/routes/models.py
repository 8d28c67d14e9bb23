"""Base models a run may start from."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import CurrentTenant, SessionDep, SettingsDep
from app.api.schemas import error_responses
from app.base_models.schemas import BaseModelsPublic
from app.base_models.service import list_base_models

router = APIRouter(prefix="/v1/models", tags=["models"], responses=error_responses(401))


@router.get(
    "",
    response_model=BaseModelsPublic,
    summary="List base models",
    description="Built-in models, the hf:<repo_id> pattern (when the hub is reachable), this tenant's "
    "uploaded checkpoints (checkpoint:<id>) and succeeded runs (run:<id>, run:<id>@<step>).",
)
def list_models(session: SessionDep, tenant: CurrentTenant, settings: SettingsDep) -> BaseModelsPublic:
    return BaseModelsPublic(data=list_base_models(session, tenant, settings))
