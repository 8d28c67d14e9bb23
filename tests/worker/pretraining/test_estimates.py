"""The arithmetic of estimates: steps as the Trainer counts them (replay included), evaluation passes, the
default throughput and its calibration, the approximation of a corpus from its stored counts, the time of
a run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.support import tiny_run_hyperparameters
from worker.pretraining.estimates import (
    DEFAULT_MODEL_SHAPE,
    EVALUATION_SPEEDUP,
    approximate_corpus,
    default_tokens_per_second,
    evaluation_passes,
    run_seconds,
    step_figures,
)
from worker.pretraining.hyperparameters import Hyperparameters, PreparationConfig
from worker.pretraining.prepare import prepare_corpus
from worker.pretraining.records import ModelShape

MINILM = ModelShape(hidden_size=384, num_hidden_layers=6, intermediate_size=1536, vocab_size=30522)


def test_steps_are_counted_like_the_trainer_with_replay_in_every_epoch() -> None:
    h = Hyperparameters(num_epochs=1.5, batch_size=16, gradient_accumulation_steps=2, replay_ratio=0.2)
    figures = step_figures(h, 1000, 100.0)
    assert figures.epoch_instances == 1000 + 250  # replay is 20% of the epoch: 250 / 1250
    assert figures.steps_per_epoch == math.ceil(math.ceil(1250 / 16) / 2) == 40
    assert figures.total_steps == 60 and figures.epochs == 1.5
    assert figures.sequences_per_step == 32 and figures.tokens_per_step == 3200
    assert figures.tokens == 60 * 3200
    fixed = step_figures(Hyperparameters(max_steps=7, batch_size=8), 10, 50.0)
    assert (fixed.total_steps, fixed.steps_per_epoch, fixed.tokens_per_step) == (7, 2, 400)


@pytest.mark.parametrize(
    ("every", "steps", "passes"),
    [(0, 1000, 2), (500, 1000, 3), (500, 1200, 4), (500, 499, 2), (1, 3, 4)],
)
def test_evaluations_at_the_start_every_n_steps_and_at_the_end(every: int, steps: int, passes: int) -> None:
    assert evaluation_passes(Hyperparameters(eval_every_steps=every), steps) == passes


def test_the_default_throughput_is_calibrated_on_the_benchmarks() -> None:
    # docs/benchmarks.md (2 cores, fp32, max_seq_length 128): MiniLM 1,374 and BERT-base 207 real tokens/s.
    minilm = default_tokens_per_second(MINILM, "cpu", max_seq_length=128, masked_lm_prob=0.15)
    base = default_tokens_per_second(DEFAULT_MODEL_SHAPE, "cpu", max_seq_length=128, masked_lm_prob=0.15)
    assert 1374 / 1.25 < minilm < 1374 * 1.25 and 207 / 1.25 < base < 207 * 1.25
    gpu = default_tokens_per_second(DEFAULT_MODEL_SHAPE, "cuda", max_seq_length=128, masked_lm_prob=0.15)
    assert gpu / base == pytest.approx(5.0e13 / 1.1e11)
    longer = default_tokens_per_second(MINILM, "cpu", max_seq_length=512, masked_lm_prob=0.15)
    assert longer < minilm  # attention grows with the length


def test_a_run_takes_its_startup_its_steps_and_its_evaluations() -> None:
    seconds = run_seconds(
        steps=100,
        tokens_per_step=2000.0,
        tokens_per_second=1000.0,
        evaluation_tokens=6000.0,
        evaluations=3,
        startup_seconds=20.0,
    )
    assert seconds["seconds_per_step"] == 2.0 and seconds["training_seconds"] == 200.0
    assert seconds["evaluation_seconds"] == pytest.approx(3 * 6000 / (EVALUATION_SPEEDUP * 1000))
    assert seconds["total_seconds"] == pytest.approx(20 + 200 + 6)


@pytest.mark.parametrize(
    "config",
    [tiny_run_hyperparameters().preparation(), PreparationConfig(), PreparationConfig(nsp=False)],
    ids=["nsp-64", "nsp-128", "mlm-128"],
)
def test_the_approximation_from_stored_counts_is_within_2x_of_the_preparation(
    tmp_path: Path, small_corpus: Path, tokenizer: Any, config: PreparationConfig
) -> None:
    prepared = prepare_corpus(small_corpus, tokenizer, tmp_path, config)
    corpus, train = prepared.manifest["corpus"], prepared.manifest["splits"]["train"]
    held_out = prepared.manifest["splits"].get("eval") or {"documents": 0}
    approximate = approximate_corpus(
        config,
        characters=corpus["characters"],
        documents=corpus["documents"],
        held_out_documents=held_out["documents"],
    )
    assert 0.5 < approximate.train.instances / train["instances"] < 2
    assert 0.5 < approximate.train.mean_length / train["mean_length"] < 2
    assert approximate.train.documents == train["documents"]


def test_the_model_size_comes_from_the_config() -> None:
    config = {"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6, "intermediate_size": 1536}
    shape = ModelShape.from_config(config)
    assert shape is not None and shape.label == "6x384" and shape.vocab_size is None
    assert ModelShape.from_config({"hidden_size": 384}) is None  # no layers: not a size
