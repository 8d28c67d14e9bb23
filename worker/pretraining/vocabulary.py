"""Domain vocabulary: how a tokenizer cuts a corpus, and the frequent words of the domain made tokens.

A general-domain vocabulary cuts the words of a specialised domain into several wordpieces
(``phosphokinase`` -> ``ph ##os ##ph ##oki ##nas ##e``) or maps them to ``[UNK]``. With
``add_domain_tokens: N`` the run, before it prepares any data:

1. counts the words of the training corpus as the tokenizer sees them (:func:`count_words`: its
   normalizer, e.g. lowercasing and accent stripping, then its pre-tokenizer, e.g. BERT's split at
   whitespace and around punctuation);
2. picks the ``N`` most frequent that the tokenizer cuts into two wordpieces or more, or maps to
   ``[UNK]``, seen at least ``domain_token_min_count`` times (:func:`domain_words`; ties by the word,
   so the choice is the same on every attempt of a run);
3. makes each one a real WordPiece vocabulary entry (:func:`extend_tokenizer`), in a ``[unusedK]`` row of
   the checkpoint while there are some, else in a row appended to the embeddings, the matrix rounded up to
   a multiple of 64 rows; as vocabulary entries, not ``add_tokens`` "added tokens" (which match inside other
   words and bypass the normalizer), they tokenize exactly as WordPiece's own words do: ``kinase`` is one
   token, ``kinases`` is ``kinase ##s``, and ``phosphokinase`` is cut as before (a continuation is never
   the word-initial entry);
4. initializes each new embedding row as the mean of the embeddings of the pieces it replaces (Hewitt
   2021, "Initializing New Word Embeddings for Pretrained Language Models",
   https://nlp.stanford.edu/~johnhew/vocab-expansion.html: near the existing embeddings, a new word is
   not predicted everywhere by the tied MLM decoder; the mean of the subwords is the usual choice, e.g.
   Gee et al., "Fast Vocabulary Transfer for Language Model Compression", EMNLP 2022 Industry Track,
   arXiv:2402.09977), and its MLM output bias as
   the mean of theirs; padding rows (appended to reach a multiple of 64, never an input) get the mean of
   all the rows. The MLM decoder stays tied to the word embeddings.

The tokenizer that results is the one the run prepares its data with (so the prepared-data cache key,
which hashes the tokenizer's vocabulary, changes with it), trains with, and saves with every checkpoint
and the final model. The same corpus, base checkpoint and settings give the same extension, so a resumed
attempt rebuilds it identically (its prepared-data key must match the checkpoint's).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from worker.pretraining.records import AddedToken, TokenizationStats, VocabularyExtension
from worker.pretraining.tokenizer import load_tokenizer, quiet_transformers

__all__ = [
    "EMBEDDING_ROWS_MULTIPLE",
    "DomainWord",
    "VocabularyError",
    "add_domain_vocabulary",
    "count_words",
    "domain_words",
    "extend_embeddings",
    "extend_tokenizer",
    "tokenization_stats",
    "word_starts",
    "word_stats",
]

# Appended rows round the embedding matrix up to a multiple of this, a size of the MLM decoder's matrix
# product that tensor cores run at full speed (NVIDIA, "Matrix Multiplication Background User's Guide",
# requirements for tensor cores; the guide transformers' resize_token_embeddings(pad_to_multiple_of) cites).
EMBEDDING_ROWS_MULTIPLE = 64
# Lines normalized and pre-tokenized per call into the Rust tokenizer (calls cost more than characters).
WORD_BATCH_LINES = 256
# BERT's placeholder rows, left free for vocabulary added after pre-training.
UNUSED_TOKEN = re.compile(r"\[unused\d+\]")


class VocabularyError(ValueError):
    """The tokenizer cannot be extended with whole words (it is not a WordPiece tokenizer)."""


@dataclass(frozen=True)
class DomainWord:
    """A word of the corpus (as the tokenizer normalizes and splits it), its number of occurrences, and
    the wordpieces the tokenizer cuts it into."""

    word: str
    count: int
    pieces: tuple[str, ...]


# --------------------------------------------------------------------------------------------------
# How a tokenizer cuts a text


def _backend(tokenizer: Any) -> Any:
    """The Rust tokenizer of a transformers fast tokenizer (or ``tokenizer`` itself if it is one)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def count_words(lines: Iterable[str], tokenizer: Any) -> Counter[str]:
    """How often each of the tokenizer's words occurs in ``lines``: the text after the tokenizer's
    normalizer, split by its pre-tokenizer (by whitespace when it has none). Lines are processed
    ``WORD_BATCH_LINES`` at a time, joined by a space (which every BERT pre-tokenizer splits at)."""
    backend = _backend(tokenizer)
    normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
    counts: Counter[str] = Counter()
    iterator = iter(lines)
    while batch := list(islice(iterator, WORD_BATCH_LINES)):
        text = " ".join(batch)
        if normalizer is not None:
            text = normalizer.normalize_str(text)
        if pre_tokenizer is None:
            counts.update(text.split())
        else:
            counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(text))
    return counts


def _pieces(tokenizer: Any, word: str) -> list[str]:
    """The wordpieces the tokenizer's model cuts one (normalized, pre-tokenized) word into."""
    return [token.value for token in _backend(tokenizer).model.tokenize(word)]


def word_starts(tokenizer: Any) -> np.ndarray | None:
    """For each token id, whether that wordpiece starts a word: a WordPiece tokenizer cuts each of its
    words into ``[UNK]`` or pieces of which only the first lacks the continuation prefix (``##``), so the
    word starts among a text's token ids count its words as :func:`count_words` does, at no cost beside
    the tokenization (the data preparation counts them so). None when the tokenizer's model is not
    WordPiece."""
    model = _backend(tokenizer).model
    prefix = getattr(model, "continuing_subword_prefix", None)
    if type(model).__name__ != "WordPiece" or not prefix:
        return None
    vocab = tokenizer.get_vocab()
    starts = np.ones(max(len(tokenizer), max(vocab.values(), default=0) + 1), dtype=bool)
    starts[[i for token, i in vocab.items() if token.startswith(prefix)]] = False
    return starts


def word_stats(counts: Mapping[str, int], tokenizer: Any) -> TokenizationStats:
    """:class:`TokenizationStats` of a text given as its word counts (:func:`count_words`): each distinct
    word is cut once. Counts taken with one tokenizer can be cut by another with the same normalizer and
    pre-tokenizer (an extended vocabulary): the same words, cut anew."""
    unk = tokenizer.unk_token
    words = pieces = unknown = 0
    for word, count in counts.items():
        cut = _pieces(tokenizer, word)
        words += count
        pieces += count * len(cut)
        if unk in cut:
            unknown += count
    return TokenizationStats(
        words=words,
        unk_rate=round(unknown / max(words, 1), 6),
        wordpieces_per_word=round(pieces / max(words, 1), 4),
    )


def tokenization_stats(lines: Iterable[str], tokenizer: Any) -> TokenizationStats:
    """How ``tokenizer`` cuts ``lines`` (sentences, without special tokens): the number of its words, the
    share of them that include ``[UNK]``, and wordpieces per word (see :class:`TokenizationStats`).

    One pass over ``lines``; memory is one count per distinct word.
    """
    return word_stats(count_words(lines, tokenizer), tokenizer)


# --------------------------------------------------------------------------------------------------
# Choosing the words


def _has_letter(word: str) -> bool:
    return any(character.isalpha() for character in word)


def domain_words(
    counts: Mapping[str, int], tokenizer: Any, *, limit: int, min_count: int
) -> list[DomainWord]:
    """The ``limit`` most frequent words of ``counts`` that ``tokenizer`` cuts into two wordpieces or more
    or maps to ``[UNK]``, among those seen at least ``min_count`` times; most frequent first, then in the
    words' order (deterministic).

    Left out: words without a letter (numbers, punctuation, symbols: ``1999``, ``---``; a vocabulary entry
    for each number would not generalize, and BERT's pre-tokenizer already isolates punctuation), and
    words longer than the WordPiece model's ``max_input_chars_per_word`` (it maps those to ``[UNK]``
    without looking them up).
    """
    if limit <= 0:
        return []
    unk = tokenizer.unk_token
    longest = getattr(_backend(tokenizer).model, "max_input_chars_per_word", None)
    found = []
    for word, count in counts.items():
        if count < min_count or not _has_letter(word) or (longest is not None and len(word) > longest):
            continue
        cut = _pieces(tokenizer, word)
        if len(cut) >= 2 or unk in cut:
            found.append(DomainWord(word=word, count=count, pieces=tuple(cut)))
    found.sort(key=lambda candidate: (-candidate.count, candidate.word))
    return found[:limit]


# --------------------------------------------------------------------------------------------------
# Extending the tokenizer and the model


def extend_tokenizer(tokenizer: Any, words: Sequence[str]) -> tuple[Any, list[tuple[int, str | None]]]:
    """A new fast tokenizer whose WordPiece vocabulary also holds ``words`` (normalized words, none of them
    in the vocabulary yet), and for each word its id and the ``[unusedK]`` placeholder it replaced (None:
    a new id after every existing one).

    The tokenizer is saved, its ``tokenizer.json`` vocabulary rewritten (ids in order) and loaded again:
    every other setting (normalizer, special tokens, model_max_length...) is kept, and the result is what
    ``AutoTokenizer.from_pretrained`` gives for the saved model. Placeholders that are registered as added
    tokens are not used. Raises VocabularyError when the tokenizer is not a WordPiece one.
    """
    with tempfile.TemporaryDirectory(prefix="bertpt-vocabulary-") as tmp:
        directory = Path(tmp)
        with quiet_transformers():
            tokenizer.save_pretrained(str(directory))
        path = directory / "tokenizer.json"
        spec = json.loads(path.read_text(encoding="utf-8"))
        model = spec.get("model") or {}
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise VocabularyError(
                "add_domain_tokens adds whole words to a WordPiece vocabulary, but this tokenizer's model "
                f"is {model.get('type')!r}: set add_domain_tokens to 0"
            )
        vocab: dict[str, int] = model["vocab"]
        added_ids = {int(token["id"]) for token in spec.get("added_tokens") or []}
        free = sorted(
            (i, token) for token, i in vocab.items() if UNUSED_TOKEN.fullmatch(token) and i not in added_ids
        )
        next_id = max([*vocab.values(), *added_ids]) + 1
        slots: list[tuple[int, str | None]] = []
        for word in words:
            if word in vocab:
                raise ValueError(f"{word!r} is already in the vocabulary")
            if free:
                row, placeholder = free.pop(0)
                del vocab[placeholder]
                slots.append((row, placeholder))
            else:
                row, next_id = next_id, next_id + 1
                slots.append((row, None))
            vocab[word] = row
        model["vocab"] = dict(sorted(vocab.items(), key=lambda item: item[1]))
        path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        vocab_txt = directory / "vocab.txt"
        if vocab_txt.is_file():  # written by some versions; must agree with tokenizer.json
            vocab_txt.write_text("".join(f"{token}\n" for token in model["vocab"]), encoding="utf-8")
        extended = load_tokenizer(directory)
    return extended, slots


def extend_embeddings(model: Any, rows: Sequence[tuple[int, Sequence[int]]], vocab_size: int) -> int | None:
    """Give ``model`` (a BERT with a tied MLM decoder) at least ``vocab_size`` word-embedding rows and
    set each of ``rows`` (``(row, piece_ids)``) to the mean of the rows ``piece_ids``, its MLM output bias
    to the mean of theirs. Rows are appended when ``vocab_size`` exceeds the matrix, rounded up to a
    multiple of :data:`EMBEDDING_ROWS_MULTIPLE` (``config.vocab_size`` follows); appended rows that no
    word takes get the mean of all the original rows and biases. Returns the new number of rows, None when
    nothing was appended. Raises RuntimeError if the decoder is no longer tied afterwards.
    """
    import torch

    weight = model.get_input_embeddings().weight
    bias = model.get_output_embeddings().bias
    rows_before = weight.shape[0]
    with torch.no_grad():
        means = [(row, weight[list(ids)].mean(0), bias[list(ids)].mean()) for row, ids in rows]
        average, average_bias = weight.mean(0), bias.mean()
    resized_to = None
    if vocab_size > rows_before:
        model.resize_token_embeddings(
            vocab_size, pad_to_multiple_of=EMBEDDING_ROWS_MULTIPLE, mean_resizing=False
        )
        resized_to = model.get_input_embeddings().weight.shape[0]
    weight = model.get_input_embeddings().weight
    decoder = model.get_output_embeddings()
    bias = decoder.bias
    if decoder.weight is not weight or bias.shape[0] != weight.shape[0]:
        raise RuntimeError("the MLM decoder is not tied to the word embeddings after resizing them")
    with torch.no_grad():
        weight[rows_before:] = average
        bias[rows_before:] = average_bias
        for row, mean, mean_bias in means:
            weight[row] = mean
            bias[row] = mean_bias
    return resized_to


def add_domain_vocabulary(
    model: Any, tokenizer: Any, lines: Iterable[str], *, limit: int, min_count: int
) -> tuple[Any, VocabularyExtension]:
    """Make the ``limit`` most frequent multi-piece words of ``lines`` (seen ``min_count`` times or more)
    tokens of ``tokenizer`` and rows of ``model`` (changed in place; see the module's docstring). Returns
    the extended tokenizer (``tokenizer`` itself when no word qualifies) and the report: the words added,
    and the tokenization of ``lines`` before and after.
    """
    counts = count_words(lines, tokenizer)
    before = word_stats(counts, tokenizer)
    vocab_size_before = int(model.get_input_embeddings().weight.shape[0])
    chosen = domain_words(counts, tokenizer, limit=limit, min_count=min_count)
    report = {"add_domain_tokens": limit, "min_count": min_count, "vocab_size_before": vocab_size_before}
    if not chosen:
        return tokenizer, VocabularyExtension(**report, added=[], before=before, after=before)
    extended, slots = extend_tokenizer(tokenizer, [word.word for word in chosen])
    for word, (row, _) in zip(chosen, slots, strict=True):
        ids = extended.backend_tokenizer.model.tokenize(word.word)
        if [token.id for token in ids] != [row]:  # the whole point: never silently otherwise
            raise RuntimeError(f"{word.word!r} is not the single token {row} of the extended vocabulary")
    rows = [
        (row, tokenizer.convert_tokens_to_ids(list(word.pieces)))
        for word, (row, _) in zip(chosen, slots, strict=True)
    ]
    resized_to = extend_embeddings(model, rows, max(len(extended), vocab_size_before))
    added = [
        AddedToken(
            token=word.word,
            id=row,
            count=word.count,
            pieces=list(word.pieces),
            slot="unused" if placeholder is not None else "appended",
            replaced=placeholder,
        )
        for word, (row, placeholder) in zip(chosen, slots, strict=True)
    ]
    after = word_stats(counts, extended)
    return extended, VocabularyExtension(
        **report, added=added, before=before, after=after, resized_to=resized_to
    )
