"""What the data preparation refuses, decided from numbers known before any text is tokenized: the
documents and sentences of a corpus, its character counts, the tokenizer's vocabulary, the settings.

One home for each rule: the preparation (:mod:`worker.pretraining.prepare`) calls these functions with
what it finds, and the API's run submission calls the same functions with what was stored when the
corpora were uploaded, so a run the worker would refuse is refused (422) before it is queued. The stored
counts are upper bounds of the usable ones (the tokenizer may leave a document without text), and every
rule here refuses fewer as the counts grow, so a refusal on the stored counts is certain.

Each refusal is a :class:`PreparationError` whose ``field`` names the setting it concerns, if one does.
This module imports no torch, numpy or tokenizer: the API uses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from worker.pretraining.corpus import NSP_MIN_DOCUMENTS
from worker.pretraining.hyperparameters import DEFAULT_EVAL_FRACTION, PreparationConfig
from worker.pretraining.records import RunWarning

__all__ = [
    "NO_EVAL_SPLIT",
    "UNSPACED_SCRIPT_SHARE",
    "HeldOut",
    "PreparationError",
    "check_documents",
    "check_scripts",
    "check_whole_word_vocabulary",
    "held_out_split",
]

# Whole-word masking is refused when more of the characters than this are of scripts without spaces.
UNSPACED_SCRIPT_SHARE = 0.5
# The warning of a corpus too small for the default held-out split (nothing is held out instead).
NO_EVAL_SPLIT = "no_eval_split"


class PreparationError(ValueError):
    """The corpus and the parameters cannot produce training data (for example too few documents).
    ``field``: the setting whose value the corpus cannot meet (``nsp``, ``eval_fraction``, ...), if one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        # ``field`` has a default so that the error survives pickling, which rebuilds it from ``args``.
        super().__init__(message)
        self.field = field


def check_documents(documents: int, config: PreparationConfig, what: str, *, note: str = "") -> None:
    """Refuse ``what`` (``"the corpus"``, ``"the eval corpus"``...) when its ``documents`` usable
    documents are too few for the settings: none, or one with next-sentence prediction. ``note`` says
    why documents were left out, if any were."""
    if documents == 0:
        raise PreparationError(f"{what} has no usable document{note}")
    if config.nsp and documents < NSP_MIN_DOCUMENTS:
        raise PreparationError(
            f"{what} has {documents} usable document{note}: next-sentence prediction needs at least "
            f"{NSP_MIN_DOCUMENTS} (the random second segments come from another document). Set nsp to false "
            "to train masked-LM only on one document, or separate the documents with blank lines.",
            field="nsp",
        )


def check_scripts(
    config: PreparationConfig, *, characters: int, unspaced_script_characters: int, what: str
) -> None:
    """Refuse whole-word masking of ``what`` when most of its characters (the corpus reader's counts)
    are of scripts written without spaces."""
    share = unspaced_script_characters / max(characters, 1)
    if config.whole_word_mask and share > UNSPACED_SCRIPT_SHARE:
        raise PreparationError(
            f"whole_word_mask: {share:.0%} of the characters of {what} are of scripts written without "
            "spaces (Chinese, Japanese, Thai, ...), where a BERT tokenizer finds no words to mask whole "
            "(every CJK character is a word of its own), so whole-word masking would change nothing; set "
            "whole_word_mask to false",
            field="whole_word_mask",
        )


def check_whole_word_vocabulary(config: PreparationConfig, vocabulary: Iterable[str]) -> None:
    """Refuse whole-word masking with a tokenizer whose ``vocabulary`` marks no word continuation."""
    if config.whole_word_mask and not any(token.startswith("##") for token in vocabulary):
        raise PreparationError(
            "whole_word_mask: the tokenizer marks no word continuations with '##' (it is not a WordPiece "
            "vocabulary), so words cannot be found and whole-word masking would change nothing; set "
            "whole_word_mask to false",
            field="whole_word_mask",
        )


@dataclass(frozen=True)
class HeldOut:
    """What is held out of the training corpus for evaluation: ``documents`` whole documents, or, for a
    corpus of one document, a contiguous block of ``sentences`` of its sentences (None: not known until
    its lines are split into sentences). ``warning``: why nothing is held out though ``eval_fraction``
    asks for a share."""

    documents: int = 0
    sentences: int | None = 0
    warning: RunWarning | None = None


def held_out_split(
    config: PreparationConfig,
    *,
    documents: int,
    sentences: int | None,
    eval_corpus: bool,
    what: str = "the corpus",
    note: str = "",
) -> HeldOut:
    """How much of a corpus of ``documents`` usable documents (``sentences`` sentences in all, None when
    not known yet) is held out for evaluation; PreparationError (``field`` ``eval_documents`` or
    ``eval_fraction``) when the settings ask for a split the corpus cannot give and still train.

    With an eval corpus nothing is held out. ``eval_documents`` holds out that many documents;
    ``eval_fraction`` that share of them, at least the smallest split that works (two documents with
    next-sentence prediction, whose random segments come from another document; else one). A corpus of one
    document holds out a contiguous block of ``eval_fraction`` of its sentences. A corpus too small for the
    default ``eval_fraction`` to hold anything out and train on the rest (fewer than four documents with
    next-sentence prediction, one document of one sentence) trains on all of it with a warning: 5% of such
    a corpus is nothing, and a first run on a small sample should train, not fail. Values given on purpose
    that the corpus cannot meet are refused, saying what would work.
    """
    if eval_corpus:
        return HeldOut()
    if documents == 1:
        return _held_out_block(config, sentences, what)
    smallest = NSP_MIN_DOCUMENTS if config.nsp else 1  # the smallest split that makes instances
    if config.eval_documents is not None:
        held = config.eval_documents
        if held and held < smallest:
            raise PreparationError(
                f"eval_documents={held}: next-sentence prediction needs at least {NSP_MIN_DOCUMENTS} "
                "held-out documents (the random second segments come from another document); hold out "
                f"{NSP_MIN_DOCUMENTS} or more, or 0",
                field="eval_documents",
            )
    elif config.eval_fraction == 0:
        return HeldOut()
    else:
        held = max(round(documents * config.eval_fraction), smallest)
    if documents - held >= smallest:
        return HeldOut(documents=held)
    if config.eval_documents is None and config.eval_fraction == DEFAULT_EVAL_FRACTION:
        situation = f"{what} has {documents} usable documents{note}"
        return HeldOut(warning=_no_eval_split(situation, f"{2 * smallest} documents or more"))
    setting = "eval_documents" if config.eval_documents is not None else "eval_fraction"
    fix = (
        f"lower {setting}"
        if documents - smallest >= smallest
        else f"set {setting} to 0 (any other value holds out at least {smallest})"
    )
    raise PreparationError(
        f"{what} has {documents} usable documents{note}; holding out {held} for evaluation leaves "
        f"{max(documents - held, 0)} for training (need at least {smallest}): {fix}, or give a separate "
        "eval corpus.",
        field=setting,
    )


def _held_out_block(config: PreparationConfig, sentences: int | None, what: str) -> HeldOut:
    """One document (masked-LM only): ``eval_fraction`` of its sentences, at least one, are held out."""
    if config.eval_documents is not None:
        if config.eval_documents == 0:
            return HeldOut()
        raise PreparationError(
            f"eval_documents={config.eval_documents} counts whole documents, and {what} is one document: "
            "hold out a contiguous block of it with eval_fraction instead, or set eval_documents to 0",
            field="eval_documents",
        )
    if config.eval_fraction == 0:
        return HeldOut()
    if sentences is None:
        return HeldOut(sentences=None)
    held = max(1, round(sentences * config.eval_fraction))
    if sentences - held >= 1:
        return HeldOut(sentences=held)
    if config.eval_fraction == DEFAULT_EVAL_FRACTION:
        situation = f"{what} is one document of {sentences} sentence(s)"
        return HeldOut(warning=_no_eval_split(situation, "a document of 2 sentences or more"))
    raise PreparationError(
        f"{what} is one document of {sentences} sentence(s): too short to hold out a block for evaluation "
        "and train on the rest; give a separate eval corpus or set eval_fraction to 0",
        field="eval_fraction",
    )


def _no_eval_split(what: str, enough: str) -> RunWarning:
    return RunWarning(
        code=NO_EVAL_SPLIT,
        source="corpus",
        message=(
            f"{what}: too few to hold out an evaluation split (eval_fraction) and train on the rest, so "
            "nothing is held out and the run has no held-out evaluation of its domain (no baseline, no eval "
            f"loss). For one, use {enough}, or give a separate eval corpus; set eval_fraction to 0 to train "
            "without one and without this warning."
        ),
    )
