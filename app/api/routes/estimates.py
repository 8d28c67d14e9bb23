"""Estimates before launch: a corpus analysed with a model's tokenizer (``POST /v1/corpora/{id}/analyze``,
polled at ``GET /v1/corpora/{id}/analyses/{analysis_id}``) and the estimate of a run (``POST
/v1/runs/estimate``; ``GET /v1/runs/{run_id}`` never takes ``estimate`` for an id, so the path is the
estimate's alone: :class:`app.api.schemas.IdConvertor`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response, status

from app.api.deps import (
    AnalysisEnqueuerDep,
    CurrentTenant,
    SessionDep,
    SettingsDep,
    StorageDep,
    WorkerRegistryDep,
)
from app.api.schemas import error_responses, id_path
from app.estimates import analyses, service
from app.estimates.schemas import AnalysisPublic, AnalyzeRequest, RunEstimate
from app.runs.schemas import RunCreate

__all__ = ["analyses_router", "estimate_router"]

analyses_router = APIRouter(prefix="/v1/corpora", tags=["corpora"], responses=error_responses(401, 422))
estimate_router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=error_responses(401, 422))

CorpusId = Annotated[str, id_path("The corpus's id (corp_...).")]
AnalysisId = Annotated[str, id_path("The analysis's id (ana_...).")]


def _location(corpus_id: str, analysis_id: str) -> str:
    return f"/v1/corpora/{corpus_id}/analyses/{analysis_id}"


@analyses_router.post(
    "/{corpus_id}/analyze",
    response_model=AnalysisPublic,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Analyse a corpus with a model's tokenizer, without training",
    description="The corpus prepared as a run with these hyperparameters would prepare it, with the base "
    "model's tokenizer: the words that include [UNK], wordpieces per word, the preparation's warnings, the "
    "instances of the training and held-out splits, the share of pairs truncated, the share of the text "
    "used, the steps per epoch and in all. The base model and hyperparameters are checked as a run "
    "submission checks them (the same 422s). 200 with the analysis when one of this corpus, tokenizer and "
    "preparation settings exists (succeeded, or failed for a reason of the corpus or the settings); else "
    "202 with the analysis queued for a worker, and its URL in Location: poll it until its status is "
    "succeeded or failed. A run with the same settings reuses the prepared data, unless it sets "
    "add_domain_tokens: the analysis uses the base model's tokenizer as it is, without the domain tokens "
    "a run would add, whose instances differ.",
    responses={
        200: {"model": AnalysisPublic, "description": "Already analysed"},
        **error_responses(400, 404, 422),
    },
)
def analyze_corpus(
    corpus_id: CorpusId,
    body: AnalyzeRequest,
    response: Response,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
    enqueue: AnalysisEnqueuerDep,
) -> AnalysisPublic:
    requested, hyperparameters = analyses.request_analysis(
        session, storage, settings, tenant, corpus_id, body, enqueue=enqueue
    )
    row = requested.analysis
    response.status_code = status.HTTP_200_OK if requested.done else status.HTTP_202_ACCEPTED
    response.headers["Location"] = _location(row.corpus_id, row.id)
    return analyses.analysis_public(row, hyperparameters)


@analyses_router.get(
    "/{corpus_id}/analyses/{analysis_id}",
    response_model=AnalysisPublic,
    summary="Get a corpus analysis",
    description="Its status (queued, running, succeeded, failed), and once it succeeded its figures, with "
    "the steps of the hyperparameters it was requested with. An analysis whose task was lost is sent again.",
    responses=error_responses(404),
)
def get_analysis(
    corpus_id: CorpusId,
    analysis_id: AnalysisId,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    enqueue: AnalysisEnqueuerDep,
) -> AnalysisPublic:
    requested = analyses.get_analysis(session, settings, tenant, corpus_id, analysis_id, enqueue=enqueue)
    return analyses.analysis_public(requested.analysis)


@estimate_router.post(
    "/estimate",
    response_model=RunEstimate,
    summary="Estimate a run before submitting it",
    description="The same body as POST /v1/runs, checked the same way (the same 422s); nothing is stored or "
    "queued. Steps, tokens, seconds per step and in all on the worker class that would run it, from the "
    "throughput workers measured on earlier runs of the same model size and max_seq_length (a documented "
    "default before any), and the queue ahead of it. Exact steps and tokens when the corpus was analysed "
    "with the same tokenizer and preparation settings (POST /v1/corpora/{id}/analyze), else approximated "
    "from its stored counts (`exact: false`; always with add_domain_tokens, whose extended tokenizer no "
    "analysis used, and with an eval corpus).",
    responses=error_responses(400),
)
def estimate_run(
    body: RunCreate,
    session: SessionDep,
    tenant: CurrentTenant,
    settings: SettingsDep,
    storage: StorageDep,
    registry: WorkerRegistryDep,
) -> RunEstimate:
    return service.estimate_run(session, storage, settings, tenant, body, registry=registry)
