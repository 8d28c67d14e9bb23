"""Labelled datasets: upload (streamed), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status

from app.api.deps import CurrentTenant, SessionDep, SettingsDep, StorageDep, UploadSlotDep
from app.api.multipart import MultipartUpload, multipart_request_body
from app.api.schemas import PageAfter, PageLimit, error_responses, id_path
from app.datasets import service
from app.datasets.schemas import DatasetPublic, DatasetsPublic
from app.models import Dataset
from app.pagination import DEFAULT_LIMIT
from worker.evaluation.labelled import MIN_EXAMPLES_PER_LABEL, MIN_LABELS

# Every route takes a parameter, and refuses an invalid one with a 422 in the one error body (FastAPI
# would document its own body for it).
router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 422))

DatasetId = Annotated[str, id_path("The dataset's id (ds_...).")]

_FORMAT = (
    "a .tsv (no quoting), .csv (RFC 4180 quoting) or .jsonl file, UTF-8, with the columns `text`, `label` "
    "and optionally `text_pair` (a header row for TSV and CSV)"
)


@router.post(
    "",
    response_model=DatasetPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a labelled dataset",
    description=f"A training file, {_FORMAT} (multipart field `file`), an optional test file in the same "
    "shape (field `test_file`; without one an evaluation holds out a seeded stratified split) and an "
    f"optional `name`. Validated as it is received: at least {MIN_LABELS} labels, at least "
    f"{MIN_EXAMPLES_PER_LABEL} examples of each, no empty text; an error names the file, the line and the "
    "field. 201 with its labels and counts; 200 with the existing dataset when this tenant already uploaded "
    "the same content (under its first name: the `name` sent is not applied, as for corpora).",
    responses={
        200: {"model": DatasetPublic, "description": "Same content as an existing dataset"},
        **error_responses(400, 413, 422, 429),
    },
    openapi_extra=multipart_request_body(
        {"name": "Display name (default: the training file's name without extension)."},
        file_description="The training set: .tsv, .csv or .jsonl.",
        other_files={"test_file": "Optional test set, with the training set's columns and labels."},
    ),
)
async def upload_dataset(
    uploads: UploadSlotDep,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
) -> Dataset:
    upload = MultipartUpload(
        request,
        max_bytes=settings.max_dataset_bytes,
        uploads=uploads,
        other_file_fields=(service.TEST_FIELD,),
    )
    result = await uploads.run(service.upload_dataset, session, storage, settings, tenant, upload)
    response.status_code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/datasets/{result.dataset.id}"
    return result.dataset


@router.get(
    "",
    response_model=DatasetsPublic,
    summary="List labelled datasets, newest first",
    responses=error_responses(422),
)
def list_datasets(
    session: SessionDep,
    tenant: CurrentTenant,
    limit: PageLimit = DEFAULT_LIMIT,
    after: PageAfter = "",
) -> DatasetsPublic:
    page = service.list_datasets(session, tenant, limit=limit, after=after)
    return DatasetsPublic(
        data=[DatasetPublic.model_validate(dataset) for dataset in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{dataset_id}",
    response_model=DatasetPublic,
    summary="Get a labelled dataset",
    responses=error_responses(404),
)
def get_dataset(dataset_id: DatasetId, session: SessionDep, tenant: CurrentTenant) -> Dataset:
    return service.get_dataset(session, tenant, dataset_id)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a labelled dataset and its files",
    description="Refused (409) while an evaluation that has not finished uses it.",
    responses=error_responses(404, 409),
)
def delete_dataset(
    dataset_id: DatasetId, session: SessionDep, tenant: CurrentTenant, storage: StorageDep
) -> None:
    service.delete_dataset(session, storage, tenant, dataset_id)
