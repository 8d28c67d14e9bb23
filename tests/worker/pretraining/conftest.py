"""Fixtures of the training library's tests on the tiny BERT: a prepared-data cache per module, a corpus
whose epochs are a few optimizer steps, the small corpus prepared, and a PretrainingTrainer built on them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import tiny_run_hyperparameters, write_documents
from worker.pretraining.base_model import load_base_model
from worker.pretraining.trainer import PretrainingTrainer, training_arguments


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prepared-cache")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory, documents: list[list[str]]) -> Path:
    """40 documents: an epoch of a few optimizer steps, so runs cross epoch boundaries."""
    return write_documents(tmp_path_factory.mktemp("tiny") / "tiny.txt", documents[:40])


@pytest.fixture(scope="module")
def prepared(small_corpus: Path, tokenizer: Any, cache_dir: Path) -> Any:
    from worker.pretraining.prepare import prepare_corpus

    return prepare_corpus(small_corpus, tokenizer, cache_dir, tiny_run_hyperparameters().preparation())


@pytest.fixture
def make_trainer(
    tmp_path: Path, tiny_bert_dir: Path, prepared: Any, tokenizer: Any
) -> Callable[..., PretrainingTrainer]:
    """``make_trainer(**kwargs)``: a PretrainingTrainer of 10 steps of the tiny BERT on the prepared small
    corpus (``kwargs``, e.g. ``sink``, go to PretrainingTrainer)."""

    def make(**kwargs: Any) -> PretrainingTrainer:
        from worker.pretraining.collator import PretrainingCollator
        from worker.pretraining.masking import MaskingConfig, TokenMasker

        h = tiny_run_hyperparameters(max_steps=10)
        collator = PretrainingCollator(
            pad_token_id=tokenizer.pad_token_id,
            masker=TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(h), tokenizer),
            seed=h.seed,
        )
        args = training_arguments(
            h,
            tmp_path,
            max_steps=10,
            precision="fp32",
            cuda=False,
            dataloader_workers=0,
            evaluate_at_start=False,
        )
        return PretrainingTrainer(
            model=load_base_model(tiny_bert_dir).model,
            args=args,
            data_collator=collator,
            train_dataset=prepared.train,
            **kwargs,
        )

    return make
