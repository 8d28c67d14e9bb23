"""API schemas of labelled datasets."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from worker.evaluation.labelled import DatasetFormat


class LabelCount(BaseModel):
    label: str = Field(description='A class name, as a string (a JSON Lines label 1 is "1").')
    examples: int = Field(description="Examples of this label in the training file.")
    test_examples: int | None = Field(
        description="Examples of this label in the test file; null without one."
    )


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(examples=["ds_Vn3kE0aZ2sC1mXy8QpLr7tUw"])
    name: str
    filename: str = Field(description="The uploaded training file's name.")
    format: DatasetFormat = Field(description="The training file's format, from its extension.")
    bytes: int = Field(description="Size of the training file as uploaded.")
    sha256: str = Field(
        description="Identifies the content (the same content is stored once): the training file's SHA-256, "
        "or with a test file the SHA-256 of the two files' hex digests, each followed by a newline."
    )
    examples: int = Field(description="Examples in the training file.")
    labels: list[LabelCount] = Field(description="The labels, sorted, with their counts.")
    has_text_pair: bool = Field(description="Whether the examples are pairs (a `text_pair` column).")
    has_test_file: bool = Field(
        description="Whether a test file was uploaded; without one an evaluation holds out a seeded "
        "stratified split of the training file."
    )
    test_filename: str | None
    test_format: DatasetFormat | None
    test_bytes: int | None
    test_examples: int | None
    ignored_columns: list[str] = Field(
        description="Columns (JSON keys of the first line) of the training file that were not read."
    )
    created_at: datetime


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    next_cursor: str | None = Field(description="Pass as `after` for the next page; null on the last one.")
