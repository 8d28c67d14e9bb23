"""Uploaded base checkpoints: upload (streamed), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status

from app.api.deps import CurrentTenant, SessionDep, SettingsDep, StorageDep, UploadSlotDep
from app.api.multipart import MultipartUpload, multipart_request_body
from app.api.schemas import PageAfter, PageLimit, error_responses, id_path
from app.checkpoints import service
from app.checkpoints.schemas import CheckpointPublic, CheckpointsPublic, CheckpointUploadPublic
from app.models import Checkpoint
from app.pagination import DEFAULT_LIMIT

# Every route takes a parameter, and refuses an invalid one with a 422 in the one error body (FastAPI
# would document its own body for it).
router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"], responses=error_responses(401, 422))

CheckpointId = Annotated[str, id_path("The checkpoint's id (ckpt_...).")]


@router.post(
    "",
    response_model=CheckpointUploadPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a BERT checkpoint",
    description="A .tar.gz, .tar or .zip of a save_pretrained directory (config.json with model_type "
    "'bert', model.safetensors or sharded safetensors with their index, tokenizer files), at the top level "
    "or in one folder, or an archive downloaded from bertpt (a run's model or checkpoint: its manifest is "
    "kept as provenance, its training state left out with a warning). Pickle weights (pytorch_model.bin, "
    "*.pt) are refused: convert them to safetensors. Use it as base_model `checkpoint:<id>`.",
    responses=error_responses(400, 413, 422, 429),
    openapi_extra=multipart_request_body(
        {"name": "Display name (default: the archive name without extension)."},
        file_description="The checkpoint archive, .tar.gz, .tar or .zip.",
    ),
)
async def upload_checkpoint(
    uploads: UploadSlotDep,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
) -> CheckpointUploadPublic:
    upload = MultipartUpload(request, max_bytes=settings.max_upload_bytes, uploads=uploads)
    uploaded = await uploads.run(service.upload_checkpoint, session, storage, settings, tenant, upload)
    response.headers["Location"] = f"/v1/checkpoints/{uploaded.checkpoint.id}"
    public = CheckpointPublic.model_validate(uploaded.checkpoint)
    return CheckpointUploadPublic(**dict(public), warnings=uploaded.warnings)


@router.get(
    "",
    response_model=CheckpointsPublic,
    summary="List checkpoints, newest first",
    responses=error_responses(422),
)
def list_checkpoints(
    session: SessionDep,
    tenant: CurrentTenant,
    limit: PageLimit = DEFAULT_LIMIT,
    after: PageAfter = "",
) -> CheckpointsPublic:
    page = service.list_checkpoints(session, tenant, limit=limit, after=after)
    return CheckpointsPublic(
        data=[CheckpointPublic.model_validate(c) for c in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{checkpoint_id}",
    response_model=CheckpointPublic,
    summary="Get a checkpoint",
    responses=error_responses(404),
)
def get_checkpoint(checkpoint_id: CheckpointId, session: SessionDep, tenant: CurrentTenant) -> Checkpoint:
    return service.get_checkpoint(session, tenant, checkpoint_id)


@router.delete(
    "/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a checkpoint and its files",
    description="Refused (409) while an active run starts from it.",
    responses=error_responses(404, 409),
)
def delete_checkpoint(
    checkpoint_id: CheckpointId, session: SessionDep, tenant: CurrentTenant, storage: StorageDep
) -> None:
    service.delete_checkpoint(session, storage, tenant, checkpoint_id)
