"""The preparation's refusals decided from counts alone, which the API's run submission also calls: each
rule, its boundary, and that more documents never turn an accepted corpus into a refused one (the API
judges the counts stored at upload, an upper bound of the usable ones)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from worker.pretraining.hyperparameters import PreparationConfig
from worker.pretraining.preparation_rules import (
    NO_EVAL_SPLIT,
    HeldOut,
    PreparationError,
    check_documents,
    check_scripts,
    check_whole_word_vocabulary,
    held_out_split,
)


def split(documents: int, sentences: int | None = 10, *, eval_corpus: bool = False, **config: Any) -> HeldOut:
    return held_out_split(
        PreparationConfig(**config), documents=documents, sentences=sentences, eval_corpus=eval_corpus
    )


def refusal(documents: int, sentences: int | None = 10, **config: Any) -> PreparationError:
    with pytest.raises(PreparationError) as refused:
        split(documents, sentences, **config)
    return refused.value


def test_next_sentence_prediction_needs_two_documents() -> None:
    with pytest.raises(PreparationError, match="has 1 usable document: next-sentence prediction") as refused:
        check_documents(1, PreparationConfig(), "the corpus")
    assert refused.value.field == "nsp" and "Set nsp to false" in str(refused.value)
    check_documents(2, PreparationConfig(), "the corpus")  # one more document: accepted
    check_documents(1, PreparationConfig(nsp=False), "the corpus")
    with pytest.raises(PreparationError, match=r"^the eval corpus has no usable document") as refused:
        check_documents(0, PreparationConfig(nsp=False), "the eval corpus")
    assert refused.value.field is None


def test_the_default_share_of_a_tiny_corpus_holds_nothing_out_and_says_so() -> None:
    # The README's example corpus is two documents: 5% of them is nothing; it trains, without evaluation.
    for documents in (2, 3):
        held = split(documents)
        assert (held.documents, held.sentences) == (0, 0)
        assert held.warning is not None and held.warning.code == NO_EVAL_SPLIT
        assert held.warning.source == "corpus" and "4 documents or more" in held.warning.message
    assert split(4) == HeldOut(documents=2)  # one more document: the smallest NSP split, two left to train
    assert split(2, nsp=False) == HeldOut(documents=1)
    assert split(100) == HeldOut(documents=5)
    one_line = split(1, 1, nsp=False)
    assert one_line.documents == 0 and one_line.warning is not None
    assert "one document of 1 sentence(s)" in one_line.warning.message
    assert split(1, 2, nsp=False) == HeldOut(sentences=1)
    assert split(1, 60, nsp=False) == HeldOut(sentences=3)


@pytest.mark.parametrize(
    ("refused", "accepted", "config", "field", "words"),
    [
        # (documents, sentences) refused, then the same with one more document (or sentence) accepted
        ((3, 10), (4, 10), {"eval_documents": 2}, "eval_documents", "holding out 2 for evaluation leaves 1"),
        (
            (3, 10),
            (4, 10),
            {"eval_fraction": 0.5},
            "eval_fraction",
            "need at least 2): set eval_fraction to 0",
        ),
        ((2, 10), (3, 10), {"nsp": False, "eval_documents": 2}, "eval_documents", "leaves 0 for training"),
        ((1, 10), (2, 10), {"nsp": False, "eval_documents": 1}, "eval_documents", "counts whole documents"),
        (
            (1, 2),
            (1, 3),
            {"nsp": False, "eval_fraction": 0.75},
            "eval_fraction",
            "one document of 2 sentence",
        ),
        ((5, 10), (5, 10), {"eval_documents": 1}, "eval_documents", "at least 2 held-out documents"),
    ],
)
def test_a_held_out_split_asked_for_that_the_corpus_cannot_give_is_refused(
    refused: tuple[int, int], accepted: tuple[int, int], config: dict[str, Any], field: str, words: str
) -> None:
    error = refusal(*refused, **config)
    assert error.field == field and words in str(error)
    if refused != accepted:
        assert split(*accepted, **config).warning is None
    else:  # eval_documents=1 with next-sentence prediction: 2 is the smallest split that works
        assert split(*accepted, **{**config, "eval_documents": 2}) == HeldOut(documents=2)


def test_nothing_is_held_out_with_an_eval_corpus_and_unknown_sentences_are_not_judged() -> None:
    assert split(2, eval_corpus=True) == HeldOut()
    assert split(1, None, nsp=False) == HeldOut(sentences=None)  # split into sentences later
    assert split(1, None, nsp=False, eval_fraction=0) == HeldOut()
    assert refusal(1, None, nsp=False, eval_documents=1).field == "eval_documents"


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"nsp": False},
        {"eval_fraction": 0.3},
        {"eval_fraction": 0.6, "nsp": False},
        {"eval_documents": 2},
        {"eval_documents": 3, "nsp": False},
        {"eval_fraction": 0},
    ],
    ids=str,
)
def test_more_documents_or_sentences_are_never_refused_where_fewer_are_accepted(
    config: dict[str, Any],
) -> None:
    # The API refuses on the counts stored at upload, which the tokenizer can only lower: sound only if
    # every rule is monotone in the counts.
    def refused(documents: int, sentences: int) -> bool:
        try:
            check_documents(documents, PreparationConfig(**config), "the corpus")
            split(documents, sentences, **config)
        except PreparationError:
            return True
        return False

    for sentences in range(1, 30):
        outcomes = [refused(documents, sentences) for documents in range(1, 30)]
        assert outcomes == sorted(outcomes, reverse=True), (sentences, outcomes)
    one_document = [refused(1, sentences) for sentences in range(1, 30)]
    assert one_document == sorted(one_document, reverse=True)


def test_whole_word_masking_needs_words() -> None:
    config = PreparationConfig(whole_word_mask=True)
    with pytest.raises(PreparationError, match="51% of the characters of the corpus") as refused:
        check_scripts(config, characters=100, unspaced_script_characters=51, what="the corpus")
    assert refused.value.field == "whole_word_mask"
    check_scripts(config, characters=100, unspaced_script_characters=50, what="the corpus")
    check_scripts(PreparationConfig(), characters=100, unspaced_script_characters=100, what="the corpus")
    with pytest.raises(PreparationError, match="'##'") as refused:
        check_whole_word_vocabulary(config, ["[CLS]", "word", "@@s"])
    assert refused.value.field == "whole_word_mask"
    check_whole_word_vocabulary(config, ["[CLS]", "word", "##s"])
    check_whole_word_vocabulary(PreparationConfig(), ["[CLS]", "word"])


def test_a_refusal_keeps_its_field_across_processes() -> None:
    error = pickle.loads(pickle.dumps(refusal(3, eval_documents=2)))
    assert isinstance(error, PreparationError) and error.field == "eval_documents"
