"""The corpus analysis: the real preparation's figures, with a model's tokenizer, without training; the run
that follows reuses its prepared data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.support import tiny_run_hyperparameters, write_documents
from worker.pretraining.analysis import analyze_corpus
from worker.pretraining.prepare import prepare_corpus
from worker.pretraining.records import SplitSummary


def test_the_analysis_gives_the_figures_of_the_preparation_that_the_run_reuses(
    tmp_path: Path, small_corpus: Path, tokenizer_dir: Path, tokenizer: Any
) -> None:
    h = tiny_run_hyperparameters(max_steps=None, num_epochs=2.5, batch_size=8, gradient_accumulation_steps=3)
    analysis = analyze_corpus(small_corpus, tokenizer_dir, h.preparation(), tmp_path, h)

    # The run prepares its data with the model's tokenizer: the same cache entry, found, not rebuilt.
    prepared = prepare_corpus(small_corpus, tokenizer, tmp_path, h.preparation())
    assert prepared.cached and prepared.key == analysis.data_key
    manifest = prepared.manifest
    train = SplitSummary.model_validate(manifest["splits"]["train"])
    held_out = SplitSummary.model_validate(manifest["splits"]["eval"])
    assert (analysis.train.instances, analysis.train.tokens) == (train.instances, train.tokens)
    assert analysis.train.truncated_pairs == train.truncated_pairs
    assert analysis.train.truncated_pair_share == pytest.approx(train.truncated_pairs / train.instances)
    assert analysis.train.tokens_used_share == train.tokens_used_share
    assert analysis.eval is not None and analysis.eval.documents == held_out.documents == 6
    assert analysis.corpus == manifest["corpus"] and analysis.preparation == manifest["config"]

    # Steps as the Trainer counts them: 2.5 passes of ceil(ceil(N / 8) / 3) optimizer steps.
    assert analysis.steps is not None
    per_epoch = math.ceil(math.ceil(train.instances / 8) / 3)
    assert analysis.steps.steps_per_epoch == per_epoch
    assert analysis.steps.total_steps == math.ceil(2.5 * per_epoch)
    assert analysis.steps.tokens_per_step == pytest.approx(24 * train.mean_length, abs=0.01)

    # The synthetic vocabulary spells every word of the synthetic text.
    assert analysis.tokenization.unk_rate == 0 and analysis.tokenization.wordpieces_per_word >= 1
    assert analysis.tokenization.words > manifest["corpus"]["sentences"]

    # Analysing again costs no preparation: the cache entry is found.
    said: list[str] = []
    again = analyze_corpus(small_corpus, tokenizer, h.preparation(), tmp_path, log=said.append)
    assert any("found in the cache" in line for line in said)
    assert again.model_dump(exclude={"seconds", "steps"}) == analysis.model_dump(exclude={"seconds", "steps"})
    assert again.steps is None


def test_the_analysis_reports_unknown_words_and_the_preparation_warnings(
    tmp_path: Path, documents: list[list[str]], tokenizer_dir: Path
) -> None:
    # A fifth of the documents carry a word of a script the vocabulary lacks; one line (a whole document
    # written on it) is longer than a segment holds.
    texts = [
        [f"{sentence} 東京" if d % 5 == 0 else sentence for sentence in document]
        for d, document in enumerate(documents[:60])
    ]
    texts[3][0] = " ".join(texts[3])
    corpus = write_documents(tmp_path / "corpus.txt", texts)
    h = tiny_run_hyperparameters()
    analysis = analyze_corpus(corpus, tokenizer_dir, h.preparation(), tmp_path / "cache")

    assert 0 < analysis.tokenization.unk_rate < 0.2
    codes = {warning.code: warning for warning in analysis.warnings}
    assert {"long_lines", "unknown_tokens"} <= set(codes), codes
    assert codes["long_lines"].count == 1
    assert codes["long_lines"].first_line == 1 + sum(len(document) + 1 for document in texts[:3])
    assert analysis.train.truncated_pairs > 0


def test_hyperparameters_must_prepare_as_the_config(
    tmp_path: Path, small_corpus: Path, tokenizer: Any
) -> None:
    h = tiny_run_hyperparameters()
    with pytest.raises(ValueError, match="preparation settings differ"):
        analyze_corpus(small_corpus, tokenizer, h.preparation().model_copy(update={"seed": 9}), tmp_path, h)
