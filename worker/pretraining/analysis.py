"""A corpus seen through a model's tokenizer, without training: ``analyze_corpus``.

The figures are exact because they are the real preparation's: :func:`~worker.pretraining.prepare.
prepare_corpus` runs (or finds its result in the cache) with the settings of the run to come, and its
manifest gives the instances, tokens, truncated pairs and warnings. With the cache of the worker's storage,
the run then reuses the prepared data (same key: corpus bytes, tokenizer, preparation settings, seed), so
an analysis costs nothing twice. The tokenizer's words, their share with ``[UNK]`` and the wordpieces per
word are :func:`~worker.pretraining.vocabulary.tokenization_stats` of the corpus's sentences: the figures
the domain vocabulary (``add_domain_tokens``) reports before and after.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

from worker.pretraining.corpus import iter_documents
from worker.pretraining.estimates import CorpusAnalysis, SplitFigures, step_figures
from worker.pretraining.hyperparameters import Hyperparameters, PreparationConfig
from worker.pretraining.prepare import prepare_corpus
from worker.pretraining.records import RunWarning, SplitSummary
from worker.pretraining.tokenizer import load_tokenizer
from worker.pretraining.vocabulary import tokenization_stats

__all__ = ["analyze_corpus", "split_figures"]


def split_figures(summary: SplitSummary) -> SplitFigures:
    """What the estimates need of a prepared split's summary (its manifest entry)."""
    return SplitFigures(
        documents=summary.documents,
        instances=summary.instances,
        tokens=summary.tokens,
        mean_length=summary.mean_length,
        truncated_pairs=summary.truncated_pairs,
        truncated_pair_share=round(summary.truncated_pairs / max(summary.instances, 1), 6),
        tokens_used_share=summary.tokens_used_share,
        is_next_share=summary.is_next_share,
    )


def _sentences(corpus: Path, max_line_chars: int) -> Iterator[str]:
    return chain.from_iterable(iter_documents(corpus, max_line_chars=max_line_chars))


def analyze_corpus(
    corpus: str | Path,
    tokenizer: Any,
    config: PreparationConfig,
    cache: str | Path,
    hyperparameters: Hyperparameters | None = None,
    *,
    max_line_chars: int = 100_000,
    log: Callable[[str], None] | None = None,
) -> CorpusAnalysis:
    """Analyse ``corpus`` with ``tokenizer`` (a directory, hub id or tokenizer object) and the preparation
    ``config``, preparing its data into ``cache`` (or finding it there); with ``hyperparameters``, also
    the steps of a run (their preparation settings must be ``config``).

    Raises what :func:`~worker.pretraining.prepare.prepare_corpus` raises: CorpusFormatError (the file and
    line), PreparationError (the settings the corpus cannot meet), BaseModelError (no usable tokenizer);
    ValueError when ``hyperparameters`` prepare otherwise than ``config``.
    """
    started = time.perf_counter()
    if hyperparameters is not None and hyperparameters.preparation() != config:
        raise ValueError("the hyperparameters' preparation settings differ from the config analysed with")
    tokenizer = load_tokenizer(tokenizer)
    prepared = prepare_corpus(corpus, tokenizer, cache, config, max_line_chars=max_line_chars, log=log)
    manifest = prepared.manifest
    splits = {name: SplitSummary.model_validate(split) for name, split in manifest["splits"].items()}
    train = split_figures(splits["train"])
    held_out = splits.get("eval")
    stats = tokenization_stats(_sentences(Path(corpus), max_line_chars), tokenizer)
    return CorpusAnalysis(
        data_key=prepared.key,
        corpus_sha256=manifest["corpus_sha256"],
        tokenizer_fingerprint=manifest["tokenizer_fingerprint"],
        preparation=manifest["config"],
        tokenization=stats,
        corpus=manifest["corpus"],
        warnings=[RunWarning.model_validate(w) for w in manifest.get("warnings", [])],
        train=train,
        eval=split_figures(held_out) if held_out is not None else None,
        steps=(
            step_figures(hyperparameters, train.instances, train.mean_length)
            if hyperparameters is not None
            else None
        ),
        preparation_seconds=float(manifest.get("seconds") or 0.0),
        seconds=round(time.perf_counter() - started, 3),
    )
