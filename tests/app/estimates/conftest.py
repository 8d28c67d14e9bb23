"""Fixtures of the estimates' API tests: what was sent to the analysis queue, a corpus of alice's, and an
analysis as a worker leaves it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.api.deps import get_analysis_enqueuer, get_run_enqueuer
from app.estimates import repository
from tests.support import TenantKey, corpus_bytes, upload_corpus
from worker.pretraining.estimates import CorpusAnalysis, SplitFigures
from worker.pretraining.records import TokenizationStats


@pytest.fixture
def analyses_sent(app: FastAPI) -> list[str]:
    """The analysis ids sent to the analysis queue (the Celery client replaced at the boundary)."""
    sent: list[str] = []
    app.dependency_overrides[get_analysis_enqueuer] = lambda: sent.append
    return sent


@pytest.fixture
def runs_sent(app: FastAPI) -> list[str]:
    sent: list[str] = []
    app.dependency_overrides[get_run_enqueuer] = lambda: sent.append
    return sent


@pytest.fixture
def corpus_id(client: TestClient, alice: TenantKey) -> str:
    """40 documents of 4 sentences (160 lines)."""
    response = upload_corpus(client, alice, corpus_bytes(documents=40, sentences=4))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _figures(instances: int = 1000, mean_length: float = 60.0, eval_tokens: int = 3000) -> CorpusAnalysis:
    split = SplitFigures(
        documents=38,
        instances=instances,
        tokens=round(instances * mean_length),
        mean_length=mean_length,
        truncated_pairs=instances // 10,
        truncated_pair_share=0.1,
    )
    held_out = split.model_copy(update={"documents": 2, "instances": 50, "tokens": eval_tokens})
    return CorpusAnalysis(
        data_key="0" * 32,
        corpus_sha256="1" * 64,
        tokenizer_fingerprint="2" * 64,
        preparation={},
        tokenization=TokenizationStats(words=5000, unk_rate=0.01, wordpieces_per_word=1.3),
        corpus={"documents": 40, "tokens": 6000},
        warnings=[],
        train=split,
        eval=held_out,
        preparation_seconds=1.5,
        seconds=2.5,
    )


@pytest.fixture
def analysis_figures() -> Callable[..., CorpusAnalysis]:
    """``analysis_figures(instances=1000, mean_length=60.0, eval_tokens=3000)``: a corpus analysis of
    ``instances`` training instances of ``mean_length`` wordpieces, and ``eval_tokens`` held out."""
    return _figures


@pytest.fixture
def finish_analysis(session: Session) -> Callable[..., Any]:
    """``finish_analysis(id, result=None, error=None)``: the worker's claim and end of an analysis."""

    def finish(
        analysis_id: str, result: CorpusAnalysis | None = None, error: dict[str, Any] | None = None
    ) -> None:
        attempt = repository.claim(session, analysis_id)
        assert attempt is not None
        done = repository.finish(
            session,
            analysis_id,
            attempt,
            result=result.model_dump(mode="json") if result is not None else None,
            error=error,
        )
        assert done
        session.commit()

    return finish
