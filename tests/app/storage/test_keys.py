"""Storage keys: a run's keys are the training library's layout of its directory, in storage."""

from __future__ import annotations

from pathlib import Path

from app.storage import keys, validate_key
from worker.pretraining.layout import RunLayout


def test_run_keys_follow_the_library_layout(tmp_path: Path) -> None:
    local = RunLayout(tmp_path / keys.run_directory_key("run_a"))
    assert tmp_path / keys.run_model_key("run_a") == local.model
    assert tmp_path / keys.run_checkpoint_key("run_a", 40) == local.checkpoint(40)
    assert keys.run_checkpoint_key("run_a", 40) == "runs/run_a/checkpoints/checkpoint-40"
    assert keys.run_archives_key("run_a") == "runs/run_a/archives"


def test_every_key_is_a_valid_storage_key() -> None:
    for key in (
        keys.corpus_key("corp_1", gzip=True),
        keys.corpus_key("corp_1", gzip=False),
        keys.checkpoint_key("ckpt_1"),
        keys.PREPARED_DATA,
        keys.run_directory_key("run_1"),
        keys.run_model_key("run_1"),
        keys.run_checkpoint_key("run_1", 0),
        keys.run_archives_key("run_1"),
    ):
        validate_key(key)
    assert keys.corpus_key("corp_1", gzip=True) == "corpora/corp_1/corpus.txt.gz"
