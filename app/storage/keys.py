"""Every storage key bertpt writes, named once. Keys are derived from row ids, never from user input.

corpora/<corpus id>/corpus.txt[.gz]   an uploaded corpus, as uploaded
datasets/<dataset id>/train.<format>  a labelled dataset's training file, as uploaded (.tsv, .csv, .jsonl)
datasets/<dataset id>/test.<format>   its test file, when one was uploaded
checkpoints/<checkpoint id>/          an uploaded base checkpoint, extracted (save_pretrained files)
prepared/<cache key>/                 prepared data, shared by the runs that agree on corpus, tokenizer
                                      and preparation parameters (worker.pretraining.prepare); with S3
                                      storage, in each worker's cache (Storage.local_cache_dir), never in
                                      the bucket: a worker without it prepares it again
runs/<run id>/                        a run's directory, the same for every attempt, laid out by the
                                      training library's RunLayout: model/, checkpoints/checkpoint-<step>,
                                      tensorboard/, metrics.jsonl, result.json
runs/<run id>/archives/               the sha256 of each download archive of the run's model and
                                      checkpoints, kept by its first complete download (the archives
                                      are streamed, never stored: app.runs.download_archive)
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Literal

from worker.pretraining.layout import RunLayout

__all__ = [
    "PREPARED_DATA",
    "checkpoint_key",
    "corpus_key",
    "dataset_file_key",
    "dataset_key",
    "run_archives_key",
    "run_checkpoint_key",
    "run_checkpoints_key",
    "run_directory_key",
    "run_layout",
    "run_model_key",
]

CORPORA = "corpora"
DATASETS = "datasets"
CHECKPOINTS = "checkpoints"
RUNS = "runs"
PREPARED_DATA = "prepared"
ARCHIVES = "archives"


def corpus_key(corpus_id: str, *, gzip: bool) -> str:
    """Named after the content, not the client's file name: a gzip file called .txt is still gzip."""
    return f"{CORPORA}/{corpus_id}/corpus.txt" + (".gz" if gzip else "")


def dataset_key(dataset_id: str) -> str:
    """The dataset's directory: deleting it deletes its files."""
    return f"{DATASETS}/{dataset_id}"


def dataset_file_key(dataset_id: str, role: Literal["train", "test"], file_format: str) -> str:
    """Named after its role and format (``tsv``, ``csv``, ``jsonl``), not the client's file name; the
    extension is what the labelled-dataset reader takes the format from."""
    return f"{dataset_key(dataset_id)}/{role}.{file_format}"


def checkpoint_key(checkpoint_id: str) -> str:
    return f"{CHECKPOINTS}/{checkpoint_id}"


def run_layout(run_id: str) -> RunLayout[PurePosixPath]:
    """The run's directory as the training library lays it out, in storage keys."""
    return RunLayout(PurePosixPath(RUNS, run_id))


def run_directory_key(run_id: str) -> str:
    return run_layout(run_id).root.as_posix()


def run_model_key(run_id: str) -> str:
    """Where the training writes the final model (a succeeded run records it as output_storage_key)."""
    return run_layout(run_id).model.as_posix()


def run_checkpoint_key(run_id: str, step: int) -> str:
    return run_layout(run_id).checkpoint(step).as_posix()


def run_checkpoints_key(run_id: str) -> str:
    return run_layout(run_id).checkpoints.as_posix()


def run_archives_key(run_id: str) -> str:
    return f"{run_directory_key(run_id)}/{ARCHIVES}"
