"""Corpora: upload (streamed), list, get, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request, Response, status

from app.api.deps import CurrentTenant, SessionDep, SettingsDep, StorageDep, UploadSlotDep
from app.api.multipart import MultipartUpload, multipart_request_body
from app.api.schemas import PageAfter, PageLimit, error_responses, id_path
from app.corpora import service
from app.corpora.schemas import CorporaPublic, CorpusPublic
from app.models import Corpus
from app.pagination import DEFAULT_LIMIT

# Every route takes a parameter, and refuses an invalid one with a 422 in the one error body (FastAPI
# would document its own body for it).
router = APIRouter(prefix="/v1/corpora", tags=["corpora"], responses=error_responses(401, 422))

CorpusId = Annotated[str, id_path("The corpus's id (corp_...).")]


@router.post(
    "",
    response_model=CorpusPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a corpus",
    description="A UTF-8 text file, one sentence per line, a blank line between documents, as .txt or "
    ".txt.gz (multipart field `file`, optional field `name`). It is validated while it streams in. 201 with "
    "its statistics and warnings; 200 with the existing corpus when this tenant already uploaded the same "
    "content (under its first name: the `name` sent is not applied).",
    responses={
        200: {"model": CorpusPublic, "description": "Same content as an existing corpus"},
        **error_responses(400, 413, 422, 429),
    },
    openapi_extra=multipart_request_body(
        {"name": "Display name (default: the file name without extension)."},
        file_description="The corpus, .txt or .txt.gz.",
    ),
)
async def upload_corpus(
    uploads: UploadSlotDep,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
) -> Corpus:
    upload = MultipartUpload(request, max_bytes=settings.max_upload_bytes, uploads=uploads)
    result = await uploads.run(service.upload_corpus, session, storage, settings, tenant, upload)
    response.status_code = status.HTTP_201_CREATED if result.created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/corpora/{result.corpus.id}"
    return result.corpus


@router.get(
    "", response_model=CorporaPublic, summary="List corpora, newest first", responses=error_responses(422)
)
def list_corpora(
    session: SessionDep,
    tenant: CurrentTenant,
    limit: PageLimit = DEFAULT_LIMIT,
    after: PageAfter = "",
) -> CorporaPublic:
    page = service.list_corpora(session, tenant, limit=limit, after=after)
    return CorporaPublic(
        data=[CorpusPublic.model_validate(corpus) for corpus in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/{corpus_id}", response_model=CorpusPublic, summary="Get a corpus", responses=error_responses(404)
)
def get_corpus(corpus_id: CorpusId, session: SessionDep, tenant: CurrentTenant) -> Corpus:
    return service.get_corpus(session, tenant, corpus_id)


@router.delete(
    "/{corpus_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a corpus and its file",
    description="Refused (409) while a queued, preparing, running or cancelling run uses it.",
    responses=error_responses(404, 409),
)
def delete_corpus(
    corpus_id: CorpusId, session: SessionDep, tenant: CurrentTenant, storage: StorageDep
) -> None:
    service.delete_corpus(session, storage, tenant, corpus_id)
