"""The API's resources but runs (:mod:`bertpt.client.runs`) and webhooks (:mod:`bertpt.client.webhooks`):
corpora (and their analyses), uploaded checkpoints, base models, labelled datasets, evaluations.

Every answer is the API's own schema (``app.<domain>.schemas``: one definition for the server and the
client); every list follows the API's pages to the end. Errors: :class:`~bertpt.client.errors.ApiError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from app.base_models.schemas import BaseModelPublic, BaseModelsPublic
from app.checkpoints.schemas import CheckpointPublic, CheckpointsPublic, CheckpointUploadPublic
from app.corpora.schemas import CorporaPublic, CorpusPublic
from app.datasets.schemas import DatasetPublic, DatasetsPublic
from app.estimates.schemas import AnalysisPublic
from app.evaluations.schemas import EvaluationCreate, EvaluationPublic, EvaluationsPublic
from bertpt.client.uploads import Progress, upload_files

if TYPE_CHECKING:
    from bertpt.client.client import Client

__all__ = [
    "CheckpointsResource",
    "CorporaResource",
    "DatasetsResource",
    "EvaluationsResource",
    "ModelsResource",
    "request_body",
]


def request_body(body: BaseModel | dict[str, Any]) -> dict[str, Any]:
    """A request's JSON: a model with only the fields that were set (the API fills in its defaults), or a
    dict as given (the API checks it, and answers 422 naming the field at fault)."""
    if isinstance(body, BaseModel):
        return body.model_dump(mode="json", exclude_unset=True)
    return dict(body)


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class CorporaResource(_Resource):
    """``client.corpora``: training text (``POST /v1/corpora``) and its analyses before a run."""

    def upload(
        self, path: str | Path, *, name: str | None = None, progress: Progress | None = None
    ) -> CorpusPublic:
        """Upload a corpus (.txt or .txt.gz: one sentence per line, a blank line between documents),
        streamed from disk; ``progress(sent, total)`` in bytes. The answer carries its statistics and the
        warnings of its validation; the same content uploaded before answers with the corpus stored then
        (under its first name). ApiError 413 (too large), 422 (``file``: not a corpus, with the line)."""
        response = upload_files(
            self._client, "/v1/corpora", {"file": Path(path)}, {"name": name}, progress=progress
        )
        return CorpusPublic.model_validate(response.json())

    def list(self) -> list[CorpusPublic]:
        """Every corpus of your tenant, newest first."""
        return self._client.all_pages("/v1/corpora", CorporaPublic.model_validate)

    def get(self, corpus_id: str) -> CorpusPublic:
        """One corpus; ApiError 404 when your tenant has none of that id."""
        return CorpusPublic.model_validate(self._client.request("GET", f"/v1/corpora/{corpus_id}").json())

    def delete(self, corpus_id: str) -> None:
        """Delete a corpus and its file; ApiError 409 while an active run uses it."""
        self._client.request("DELETE", f"/v1/corpora/{corpus_id}")

    def analyze(self, corpus_id: str, **body: Any) -> AnalysisPublic:
        """Analyse the corpus with a base model's tokenizer, as a run would prepare it, without training:
        ``analyze(id, base_model="...", hyperparameters={...})``. The answer is queued or running (poll
        :meth:`get_analysis` until it succeeded or failed), or already done when the same analysis
        exists. ApiError 422 for a base model or hyperparameters a run would refuse."""
        response = self._client.request("POST", f"/v1/corpora/{corpus_id}/analyze", json=body)
        return AnalysisPublic.model_validate(response.json())

    def get_analysis(self, corpus_id: str, analysis_id: str) -> AnalysisPublic:
        """An analysis: its status, and once it succeeded its figures (unknown words, wordpieces per word,
        instances, steps)."""
        path = f"/v1/corpora/{corpus_id}/analyses/{analysis_id}"
        return AnalysisPublic.model_validate(self._client.request("GET", path).json())


class CheckpointsResource(_Resource):
    """``client.checkpoints``: BERT checkpoints of yours to start runs from (``checkpoint:<id>``)."""

    def upload(
        self, path: str | Path, *, name: str | None = None, progress: Progress | None = None
    ) -> CheckpointUploadPublic:
        """Upload a .tar.gz, .tar or .zip of a ``save_pretrained`` directory (safetensors weights), or an
        archive downloaded from bertpt, streamed from disk; ``progress(sent, total)`` in bytes. The answer
        carries the checkpoint's summary and warnings. ApiError 422 (``file``) for what is not one."""
        response = upload_files(
            self._client, "/v1/checkpoints", {"file": Path(path)}, {"name": name}, progress=progress
        )
        return CheckpointUploadPublic.model_validate(response.json())

    def list(self) -> list[CheckpointPublic]:
        """Every uploaded checkpoint of your tenant, newest first."""
        return self._client.all_pages("/v1/checkpoints", CheckpointsPublic.model_validate)

    def get(self, checkpoint_id: str) -> CheckpointPublic:
        """One checkpoint; ApiError 404 when your tenant has none of that id."""
        path = f"/v1/checkpoints/{checkpoint_id}"
        return CheckpointPublic.model_validate(self._client.request("GET", path).json())

    def delete(self, checkpoint_id: str) -> None:
        """Delete a checkpoint and its files; ApiError 409 while an active run starts from it."""
        self._client.request("DELETE", f"/v1/checkpoints/{checkpoint_id}")


class ModelsResource(_Resource):
    """``client.models``: what a run may start from."""

    def list(self) -> list[BaseModelPublic]:
        """The built-in models, the ``hf:<repo_id>`` pattern, your checkpoints and succeeded runs: each
        ``id`` is a value for a run's ``base_model``."""
        return BaseModelsPublic.model_validate(self._client.request("GET", "/v1/models").json()).data


class DatasetsResource(_Resource):
    """``client.datasets``: labelled datasets for evaluations (did continual pre-training help?)."""

    def upload(
        self,
        path: str | Path,
        *,
        test_file: str | Path | None = None,
        name: str | None = None,
        progress: Progress | None = None,
    ) -> DatasetPublic:
        """Upload a training file (.tsv, .csv or .jsonl with ``text``, ``label`` and optionally
        ``text_pair``) and optionally a test file of the same shape, streamed from disk;
        ``progress(sent, total)`` in bytes over both. ApiError 422 naming the file, line and field of the
        first problem."""
        files = {"file": Path(path)}
        if test_file is not None:
            files["test_file"] = Path(test_file)
        response = upload_files(self._client, "/v1/datasets", files, {"name": name}, progress=progress)
        return DatasetPublic.model_validate(response.json())

    def list(self) -> list[DatasetPublic]:
        """Every labelled dataset of your tenant, newest first."""
        return self._client.all_pages("/v1/datasets", DatasetsPublic.model_validate)

    def get(self, dataset_id: str) -> DatasetPublic:
        """One dataset; ApiError 404 when your tenant has none of that id."""
        return DatasetPublic.model_validate(self._client.request("GET", f"/v1/datasets/{dataset_id}").json())

    def delete(self, dataset_id: str) -> None:
        """Delete a dataset and its files; ApiError 409 while an unfinished evaluation uses it."""
        self._client.request("DELETE", f"/v1/datasets/{dataset_id}")


class EvaluationsResource(_Resource):
    """``client.evaluations``: models compared on a labelled dataset (fine-tuning or a linear probe)."""

    def create(self, body: EvaluationCreate | dict[str, Any]) -> EvaluationPublic:
        """Queue a comparison of 1 to 8 models (``{"dataset_id", "models", "method", "seeds", ...}``);
        follow it with :meth:`get`. ApiError 422 naming the field at fault."""
        response = self._client.request("POST", "/v1/evaluations", json=request_body(body))
        return EvaluationPublic.model_validate(response.json())

    def list(self) -> list[EvaluationPublic]:
        """Every evaluation of your tenant, newest first."""
        return self._client.all_pages("/v1/evaluations", EvaluationsPublic.model_validate)

    def get(self, evaluation_id: str) -> EvaluationPublic:
        """An evaluation: its status, progress, and once it succeeded the comparison."""
        path = f"/v1/evaluations/{evaluation_id}"
        return EvaluationPublic.model_validate(self._client.request("GET", path).json())

    def cancel(self, evaluation_id: str) -> EvaluationPublic:
        """Cancel it (idempotent): a queued one at once, a running one within its current fit."""
        path = f"/v1/evaluations/{evaluation_id}/cancel"
        return EvaluationPublic.model_validate(self._client.request("POST", path).json())

    def delete(self, evaluation_id: str) -> None:
        """Delete a finished evaluation; ApiError 409 while it has not finished."""
        self._client.request("DELETE", f"/v1/evaluations/{evaluation_id}")
