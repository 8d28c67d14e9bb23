"""Corpora (and their analyses), uploaded checkpoints, base models, labelled datasets and evaluations
through the client, against the API in process: the answers are the API's schemas, errors ApiErrors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.checkpoints.schemas import CheckpointUploadPublic
from app.corpora.schemas import CorpusPublic
from app.evaluations.schemas import EvaluationCreate
from bertpt.client import ApiError, Client
from tests.support import corpus_bytes, fake_bert_files, tar_gz, topic_dataset_tsv

MINILM = "minilm-l6-h384-uncased"


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def assert_not_found(call: Any, *args: Any) -> None:
    with pytest.raises(ApiError) as info:
        call(*args)
    assert (info.value.status_code, info.value.type) == (404, "not_found")


def test_corpora(api: Client, tmp_path: Path, sent: dict[str, list[str]]) -> None:
    path = write(tmp_path / "notes.txt", corpus_bytes(documents=4))
    corpus = api.corpora.upload(path)
    assert isinstance(corpus, CorpusPublic)
    assert (corpus.name, corpus.filename, corpus.documents) == ("notes", "notes.txt", 4)
    again = api.corpora.upload(write(tmp_path / "copy.txt", corpus_bytes(documents=4)), name="other")
    assert again.id == corpus.id and again.name == "notes"  # the same content: the corpus stored first
    assert api.corpora.get(corpus.id) == corpus
    assert [listed.id for listed in api.corpora.list()] == [corpus.id]

    analysis = api.corpora.analyze(corpus.id, base_model=MINILM, hyperparameters={"max_seq_length": 64})
    assert (
        analysis.status == "queued" and analysis.corpus_id == corpus.id and sent["analyses"] == [analysis.id]
    )
    assert api.corpora.get_analysis(corpus.id, analysis.id).id == analysis.id
    with pytest.raises(ApiError) as info:
        api.corpora.analyze(corpus.id, base_model=MINILM, hyperparameters={"no_such_setting": 1})
    assert info.value.status_code == 422 and info.value.param is not None

    with pytest.raises(ApiError) as info:
        api.corpora.upload(write(tmp_path / "bad.txt", b"\xff\xfe not utf-8\n"))
    assert (info.value.status_code, info.value.param) == (422, "file")

    api.corpora.delete(corpus.id)
    assert_not_found(api.corpora.get, corpus.id)
    assert api.corpora.list() == []


def test_checkpoints_and_models(api: Client, tmp_path: Path) -> None:
    archive = write(tmp_path / "tiny.tar.gz", tar_gz(fake_bert_files(), extra=None))
    uploaded = api.checkpoints.upload(archive, name="tiny")
    assert isinstance(uploaded, CheckpointUploadPublic) and uploaded.name == "tiny"
    assert uploaded.config.model_type == "bert" and uploaded.has_pretraining_heads
    assert api.checkpoints.get(uploaded.id).id == uploaded.id
    assert [listed.id for listed in api.checkpoints.list()] == [uploaded.id]

    models = {model.id: model for model in api.models.list()}
    assert models[MINILM].kind == "builtin"
    assert models[f"checkpoint:{uploaded.id}"].kind == "checkpoint"

    api.checkpoints.delete(uploaded.id)
    assert_not_found(api.checkpoints.get, uploaded.id)


def test_datasets_and_evaluations(
    api: Client, tmp_path: Path, documents: list[list[str]], sent: dict[str, list[str]]
) -> None:
    dataset = api.datasets.upload(write(tmp_path / "topics.tsv", topic_dataset_tsv(documents)), name="topics")
    assert dataset.name == "topics" and dataset.format == "tsv" and not dataset.has_test_file
    assert api.datasets.get(dataset.id) == dataset and [d.id for d in api.datasets.list()] == [dataset.id]

    # A model or a dict: the same request.
    created = api.evaluations.create(EvaluationCreate(dataset_id=dataset.id, models=[MINILM], method="probe"))
    other = api.evaluations.create({"dataset_id": dataset.id, "models": [MINILM], "seeds": 2})
    assert created.status == "queued" and created.method == "probe" and other.seeds == 2
    assert sent["evaluations"] == [created.id, other.id]
    assert [evaluation.id for evaluation in api.evaluations.list()] == [other.id, created.id]
    assert api.evaluations.get(created.id).id == created.id
    with pytest.raises(ApiError) as info:
        api.evaluations.create({"dataset_id": dataset.id, "models": ["no-such-model"]})
    assert (info.value.status_code, info.value.param) == (422, "models[0]")

    with pytest.raises(ApiError) as info:  # an unfinished evaluation uses it
        api.datasets.delete(dataset.id)
    assert info.value.status_code == 409
    with pytest.raises(ApiError) as info:
        api.evaluations.delete(created.id)
    assert info.value.status_code == 409

    assert api.evaluations.cancel(created.id).status == "cancelled"
    assert api.evaluations.cancel(other.id).status == "cancelled"
    api.evaluations.delete(created.id)
    api.evaluations.delete(other.id)
    assert_not_found(api.evaluations.get, created.id)
    api.datasets.delete(dataset.id)
    assert api.datasets.list() == []
