"""API schemas of corpora."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from worker.pretraining.records import RunWarning


class SentencesPerDocument(BaseModel):
    min: int
    max: int
    mean: float
    median: float
    p90: int = Field(description="Nearest-rank 90th percentile.")
    histogram: dict[str, int] = Field(description="Documents per sentence-count bucket (1, 2, 3-4, ...).")


class CorpusStats(BaseModel):
    characters: int = Field(description="Characters of sentence text, surrounding whitespace stripped.")
    sentences_per_document: SentencesPerDocument


class CorpusPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["corp_Vn3kE0aZ2sC1mXy8QpLr7tUw"])
    name: str
    filename: str = Field(description="The uploaded file's name.")
    bytes: int = Field(description="Size of the file as uploaded (compressed for .txt.gz).")
    sha256: str = Field(description="Digest of the file as uploaded; the same content is stored once.")
    documents: int
    sentences: int
    stats: CorpusStats
    warnings: list[RunWarning]
    created_at: datetime


class CorporaPublic(BaseModel):
    data: list[CorpusPublic]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null on the last one.")
