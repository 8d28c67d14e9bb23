"""Corpus -> prepared NSP/MLM instances, cached as Parquet shards.

``prepare_corpus`` streams the corpus once through the validating reader, tokenizes sentences in large
batches with the checkpoint's fast tokenizer (Rust, all cores), keeps only the tokenized corpus in
memory (one flat array of token ids; random next segments need random access to every document) and
writes instances shard by shard, so peak memory is the tokenized corpus plus one shard.

Nothing is silently wrong: what cannot work is refused with the reason (:class:`PreparationError`), and
everything else the reader and the tokenizer find (over-long lines, [UNK] floods, documents without
text, an IsNext share far from one half, text that never reaches an instance...) is a warning, with its
count, first line and source, in the manifest's ``warnings`` (:attr:`PreparedData.warnings`). The
thresholds are the constants below.

The result lives under ``cache_dir/<key>`` where the key hashes everything that determines the output:
the corpus bytes, the tokenizer, every preparation parameter and the seed. Preparing again with the
same key does nothing. A directory only becomes visible under its key, by an atomic rename, once all
its files and its manifest are written.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from worker.pretraining.corpus import (
    SENTENCE_COUNT_WARNINGS,
    CorpusReport,
    scan_corpus,
    sentence_count_warnings,
    textless_documents_warning,
)
from worker.pretraining.dataset import PreparedSplit
from worker.pretraining.hyperparameters import PreparationConfig
from worker.pretraining.instances import (
    InstancePlan,
    TokenizedDocuments,
    instance_token_positions,
    materialize,
    plan_instances,
)
from worker.pretraining.masking import MaskingConfig, TokenMasker, instance_rng
from worker.pretraining.preparation_rules import (
    UNSPACED_SCRIPT_SHARE,
    PreparationError,
    check_documents,
    check_scripts,
    check_whole_word_vocabulary,
    held_out_split,
)
from worker.pretraining.records import PreparedDataSummary, RunWarning, SplitSummary
from worker.pretraining.tokenizer import load_tokenizer
from worker.pretraining.vocabulary import word_starts

__all__ = [
    "FORMAT_VERSION",
    "IS_NEXT_MIN_INSTANCES",
    "IS_NEXT_SHARE_RANGE",
    "TOKENS_USED_SHARE_WARNING",
    "UNK_RATE_TOKENIZER_MISMATCH",
    "UNK_RATE_WARNING",
    "UNSPACED_SCRIPT_SHARE",
    "PreparationError",
    "PreparedData",
    "cache_key",
    "file_sha256",
    "prepare_corpus",
    "prepare_eval_corpus",
    "segment_budget",
    "split_sentences",
    "tokenizer_fingerprint",
]

# Bump when the instance algorithm or the shard layout changes: old cache entries then stop matching.
# 2: balanced NSP labels, NFC text, lines of only format characters are blank.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
SHARD_INSTANCES = 16_384
TOKENIZE_BATCH_SENTENCES = 16_384
# Dynamic whole-word masking: the reported masked_share is drawn from this many instances per shard.
WHOLE_WORD_MASK_SAMPLE = 1_024

# The thresholds of the preparation's warnings (README, "The corpus format").
# [UNK] among the corpus wordpieces: above 1% a warning, above 5% the tokenizer does not fit the text.
UNK_RATE_WARNING = 0.01
UNK_RATE_TOKENIZER_MISMATCH = 0.05
# The IsNext share of a split's pairs, judged from this many pairs on (fewer are too noisy to judge).
IS_NEXT_SHARE_RANGE = (0.35, 0.65)
IS_NEXT_MIN_INSTANCES = 100
# Share of a split's corpus tokens that reach an instance, below which the text lost is reported.
TOKENS_USED_SHARE_WARNING = 0.5
# sentence_splitting="auto": sentencex's rules for this language (its fallback chain covers other
# scripts' sentence terminators); the language of a corpus is not known.
SENTENCE_SPLITTER_LANGUAGE = "en"

SentenceSplitting = Literal["none", "auto"]
Log = Callable[[str], None]


@dataclass
class PreparedData:
    """A prepared-data cache entry: its key, directory and manifest, and its splits as datasets."""

    key: str
    path: Path
    manifest: dict[str, Any]
    cached: bool = False

    @property
    def train(self) -> PreparedSplit:
        return PreparedSplit(self.path, "train")

    @property
    def eval(self) -> PreparedSplit | None:
        return PreparedSplit(self.path, "eval") if self.manifest["splits"].get("eval") else None

    @property
    def warnings(self) -> list[RunWarning]:
        """Everything the corpus checks and the preparation found (each with its ``source``)."""
        return [RunWarning.model_validate(w) for w in self.manifest.get("warnings", [])]

    def summary(self) -> PreparedDataSummary:
        """What the run reports of its data (the ``started`` record)."""
        return PreparedDataSummary(
            data_key=self.key,
            corpus=self.manifest["corpus"],
            eval_corpus=self.manifest.get("eval_corpus"),
            splits=self.manifest["splits"],
            preparation_seconds=self.manifest.get("seconds"),
        )


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _backend(tokenizer: Any) -> Any:
    """A private copy of the Rust tokenizer with truncation and padding off: preparation needs every
    token of every sentence, and the caller's tokenizer must not be changed."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    return backend


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of everything in the tokenizer that changes token ids: vocabulary, normalizer (casing,
    accents), pre-tokenizer, model, and the special token ids used to build instances."""
    digest = hashlib.sha256(_backend(tokenizer).to_str().encode("utf-8"))
    specials = {
        "cls": tokenizer.cls_token_id,
        "sep": tokenizer.sep_token_id,
        "mask": tokenizer.mask_token_id,
        "pad": tokenizer.pad_token_id,
        "all": sorted(tokenizer.all_special_ids),
        "size": len(tokenizer),
    }
    digest.update(json.dumps(specials, sort_keys=True).encode())
    return digest.hexdigest()


def cache_key(
    *,
    corpus_sha256: str,
    tokenizer_fingerprint: str,
    config: PreparationConfig,
    eval_corpus_sha256: str | None = None,
    kind: str = "train",
) -> str:
    material = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "corpus_sha256": corpus_sha256,
        "eval_corpus_sha256": eval_corpus_sha256,
        "tokenizer": tokenizer_fingerprint,
        "config": config.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# Reading and tokenizing


@dataclass
class _Findings:
    """What tokenizing a corpus found, beside the tokens (line numbers are the corpus file's)."""

    long_lines: int = 0  # lines longer than the segment budget, as written
    first_long_line: int | None = None
    lines_split: int = 0  # of those, split into sentences (sentence_splitting="auto")
    long_sentences: int = 0  # sentences still longer than the budget after any splitting
    first_long_sentence_line: int | None = None
    unk_tokens: int = 0
    first_unk_line: int | None = None


@dataclass
class _TokenizedCorpus:
    documents: TokenizedDocuments
    report: CorpusReport
    words: int
    empty_sentences: int
    dropped_documents: int  # documents that gave no token at all: left out
    dropped_document_lines: list[int]  # the first lines of the first few of them
    segment_budget: int | None
    splitting: SentenceSplitting
    findings: _Findings
    seconds: float
    # After lines were split into sentences, the warnings about one-sentence documents, judged again.
    resplit_warnings: list[RunWarning] | None = None

    @property
    def tokens(self) -> int:
        return len(self.documents.token_ids)

    @property
    def unk_rate(self) -> float:
        return self.findings.unk_tokens / max(self.tokens, 1)


def _token_dtype(tokenizer: Any) -> type[np.unsignedinteger] | type[np.signedinteger]:
    return np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text`` by sentencex (Wikimedia's rule-based splitter, ~300 languages; its
    English rules also end sentences at CJK, Devanagari and Arabic terminators), stripped, none empty."""
    from sentencex import segment

    return [piece for piece in (p.strip() for p in segment(SENTENCE_SPLITTER_LANGUAGE, text)) if piece]


def tokenize_corpus(
    path: str | Path,
    tokenizer: Any,
    *,
    max_line_chars: int = 100_000,
    segment_budget: int | None = None,
    sentence_splitting: SentenceSplitting = "none",
) -> _TokenizedCorpus:
    """Validate and tokenize a corpus in one streaming pass; raises CorpusFormatError on bad input.

    ``segment_budget``: the wordpieces an instance holds besides its special tokens; lines longer than
    that are counted (and split into sentences with ``sentence_splitting="auto"``).
    """
    started = time.perf_counter()
    backend = _backend(tokenizer)
    dtype = _token_dtype(tokenizer)
    unk_id = tokenizer.unk_token_id
    # The tokenizer's words (TokenizationStats.words), counted as the wordpieces that start one; by
    # whitespace for a tokenizer that is not WordPiece.
    starts = word_starts(tokenizer)
    budget = segment_budget if segment_budget is not None else np.iinfo(np.int64).max
    found = _Findings()
    # Token ids go to a temporary file as they come and are read back into one array at the end, so
    # the peak is one copy of the tokenized corpus, not a list of chunks plus their concatenation.
    token_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the with block below
    length_chunks: list[np.ndarray] = []
    doc_sentence_counts: list[int] = []  # sentences per document (after splitting), before dropping
    doc_first_lines: list[int] = []
    pending: list[str] = []  # the sentences of whole documents
    pending_lines: list[int] = []  # the line of each
    pending_counts: list[int] = []  # sentences per pending document
    words = 0

    def flush() -> None:
        # Whole documents are pending (a document's sentences must stay together for the counts), but
        # they are encoded a batch at a time, so a book-long document costs no more memory than a batch.
        nonlocal words
        counts = list(pending_counts)
        document_of = np.repeat(np.arange(len(counts)), counts)
        for start in range(0, len(pending), TOKENIZE_BATCH_SENTENCES):
            texts = pending[start : start + TOKENIZE_BATCH_SENTENCES]
            lines = pending_lines[start : start + TOKENIZE_BATCH_SENTENCES]
            ids = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            long = np.flatnonzero(lengths > budget)
            if long.size:
                found.long_lines += int(long.size)
                if found.first_long_line is None:
                    found.first_long_line = lines[long[0]]
                if sentence_splitting == "auto":
                    ids, lines, added = _split_long_lines(texts, ids, lines, long, backend, found)
                    for k, more in added.items():
                        counts[document_of[start + k]] += more
                    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
                    long = np.flatnonzero(lengths > budget)
                found.long_sentences += int(long.size)
                if long.size and found.first_long_sentence_line is None:
                    found.first_long_sentence_line = lines[long[0]]
            flat = np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
            if unk_id is not None:
                unknown = flat == unk_id
                if (n_unknown := int(np.count_nonzero(unknown))) and found.first_unk_line is None:
                    sentence = int(np.searchsorted(np.cumsum(lengths), int(np.argmax(unknown)), side="right"))
                    found.first_unk_line = lines[sentence]
                found.unk_tokens += n_unknown
            flat.tofile(token_file)
            length_chunks.append(lengths)
            words += (
                int(np.count_nonzero(starts[flat])) if starts is not None else len(" ".join(texts).split())
            )
        doc_sentence_counts.extend(counts)
        pending.clear()
        pending_lines.clear()
        pending_counts.clear()

    def on_document(sentences: list[str], first_line: int) -> None:
        pending.extend(sentences)
        pending_lines.extend(range(first_line, first_line + len(sentences)))
        pending_counts.append(len(sentences))
        doc_first_lines.append(first_line)
        if len(pending) >= TOKENIZE_BATCH_SENTENCES:
            flush()

    with token_file:
        report = scan_corpus(path, max_line_chars=max_line_chars, on_document=on_document)
        flush()
        token_file.seek(0)
        token_ids = np.fromfile(token_file, dtype=dtype)

    lengths = np.concatenate(length_chunks) if length_chunks else np.zeros(0, dtype=np.int64)
    # Sentences that tokenize to nothing (only characters the normalizer strips) are dropped, and so
    # are documents left without sentences.
    keep = lengths > 0
    counts = np.asarray(doc_sentence_counts, dtype=np.int64)  # every document has a sentence
    kept_per_doc = (
        np.add.reduceat(keep.astype(np.int64), np.cumsum(counts) - counts) if len(counts) else counts
    )
    dropped = kept_per_doc == 0
    kept_per_doc = kept_per_doc[~dropped]
    resplit_warnings = None
    if found.lines_split:
        single = kept_per_doc == 1
        first_lines = np.asarray(doc_first_lines, dtype=np.int64)[~dropped][single]
        resplit_warnings = sentence_count_warnings(
            len(kept_per_doc), int(single.sum()), int(first_lines[0]) if len(first_lines) else None
        )
    sentence_bounds = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(lengths[keep], out=sentence_bounds[1:])
    document_bounds = np.zeros(len(kept_per_doc) + 1, dtype=np.int64)
    np.cumsum(kept_per_doc, out=document_bounds[1:])
    documents = TokenizedDocuments(token_ids, sentence_bounds, document_bounds)
    return _TokenizedCorpus(
        documents=documents,
        report=report,
        words=words,
        empty_sentences=int((~keep).sum()),
        dropped_documents=int(dropped.sum()),
        dropped_document_lines=np.asarray(doc_first_lines, dtype=np.int64)[dropped][:5].tolist(),
        segment_budget=segment_budget,
        splitting=sentence_splitting,
        findings=found,
        seconds=time.perf_counter() - started,
        resplit_warnings=resplit_warnings,
    )


def _split_long_lines(
    texts: list[str],
    ids: list[list[int]],
    lines: list[int],
    long: np.ndarray,
    backend: Any,
    found: _Findings,
) -> tuple[list[list[int]], list[int], dict[int, int]]:
    """The batch with its over-long lines (indices ``long``) replaced by their sentences: token ids, the
    line of each sentence (its line's), and the sentences added in place of each line split."""
    pieces = {int(k): split_sentences(texts[k]) for k in long}
    pieces = {k: sentences for k, sentences in pieces.items() if len(sentences) > 1}
    if not pieces:
        return ids, lines, {}
    found.lines_split += len(pieces)
    sentences = [sentence for split in pieces.values() for sentence in split]
    encoded = iter([e.ids for e in backend.encode_batch_fast(sentences, add_special_tokens=False)])
    new_ids: list[list[int]] = []
    new_lines: list[int] = []
    for k, sentence_ids in enumerate(ids):
        if k in pieces:
            new_ids.extend(next(encoded) for _ in pieces[k])
            new_lines.extend([lines[k]] * len(pieces[k]))
        else:
            new_ids.append(sentence_ids)
            new_lines.append(lines[k])
    return new_ids, new_lines, {k: len(split) - 1 for k, split in pieces.items()}


# --------------------------------------------------------------------------------------------------
# Writing instances


@dataclass
class _SplitWriter:
    """Writes instances of one split as Parquet shards and keeps the statistics the CLI reports.

    ``masker`` draws the stored masks of a static split and, for a dynamic one, tells which tokens can be
    predicted (the collator's masker is built the same way, with the same seed)."""

    directory: Path
    split: str
    tokenizer: Any
    masker: TokenMasker
    static: bool
    seed: int
    mask_rng: np.random.Generator
    shuffle_rng: np.random.Generator
    covered: np.ndarray  # per corpus token: does it reach an instance?
    shards: list[str] = field(default_factory=list)
    instances: int = 0
    tokens: int = 0
    is_next: int = 0
    short_targets: int = 0
    truncated: int = 0
    predicted: int = 0
    unk: int = 0
    text_tokens: int = 0  # instance tokens that are not [CLS], [SEP] or another special token ([UNK] is)

    def write(self, docs: TokenizedDocuments, plan: InstancePlan) -> None:
        if not len(plan):
            return
        # Documents arrive in shuffled order; shuffling inside the shard also spreads the instances of
        # one document apart.
        plan = plan.reordered(self.shuffle_rng.permutation(len(plan)))
        values, offsets, b_start = materialize(
            docs, plan, cls_token_id=self.tokenizer.cls_token_id, sep_token_id=self.tokenizer.sep_token_id
        )
        n = len(plan)
        lengths = np.diff(offsets)
        labels = np.asarray(plan.next_sentence_label, dtype=np.int8)
        columns: dict[str, pa.Array] = {
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values)),
            "segment_b_start": pa.array(b_start.astype(np.int32)),
            "next_sentence_label": pa.array(labels),
        }
        if self.static:
            positions, replacements, counts = self._static_masks(values, offsets)
            mask_offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(counts, out=mask_offsets[1:])
            columns["masked_lm_positions"] = pa.ListArray.from_arrays(
                pa.array(mask_offsets), pa.array(positions.astype(np.int32))
            )
            columns["masked_lm_ids"] = pa.ListArray.from_arrays(
                pa.array(mask_offsets), pa.array(replacements.astype(np.int32))
            )
            self.predicted += int(counts.sum())
        else:
            self.predicted += self._dynamic_predictions(values, offsets)
        name = f"{self.split}-{len(self.shards):05d}.parquet"
        pq.write_table(pa.table(columns), self.directory / name, compression="zstd")
        self.shards.append(name)
        self.instances += n
        self.tokens += int(lengths.sum())
        self.is_next += int((labels == 0).sum())
        self.short_targets += int(np.count_nonzero(plan.short_target))
        self.truncated += int(np.count_nonzero(plan.truncated))
        self.covered[instance_token_positions(plan)] = True
        unk_id = self.tokenizer.unk_token_id
        unk = int(np.count_nonzero(values == unk_id)) if unk_id is not None else 0
        self.unk += unk
        self.text_tokens += int(np.count_nonzero(~self.masker.is_special[values])) + unk

    def _static_masks(
        self, values: np.ndarray, offsets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        all_positions, all_replacements = [], []
        counts = np.zeros(len(offsets) - 1, dtype=np.int64)
        for k in range(len(offsets) - 1):
            positions, replacements = self.masker.mask(values[offsets[k] : offsets[k + 1]], self.mask_rng)
            all_positions.append(positions)
            all_replacements.append(replacements)
            counts[k] = len(positions)
        return np.concatenate(all_positions), np.concatenate(all_replacements), counts

    def _dynamic_predictions(self, values: np.ndarray, offsets: np.ndarray) -> int:
        """Tokens the collator will predict in these instances: Google's count, but never more than the
        tokens that can be predicted (special tokens, [UNK] included, never are). Whole words do not
        always fill the count: there, the first epoch's masks of the shard's first
        ``WHOLE_WORD_MASK_SAMPLE`` instances are drawn, as the collator draws them, and scaled to the
        shard's tokens (exact for a shard no larger; drawing every mask would cost 30 us an instance)."""
        config = self.masker.config
        if config.whole_word_mask:
            sample = min(len(offsets) - 1, WHOLE_WORD_MASK_SAMPLE)
            drawn = sum(
                len(
                    self.masker.mask(values[offsets[k] : offsets[k + 1]], instance_rng(self.seed, 0, index))[
                        0
                    ]
                )
                for k, index in enumerate(range(self.instances, self.instances + sample))
            )
            return round(drawn * int(offsets[-1]) / max(int(offsets[sample]), 1))
        candidates = np.add.reduceat((~self.masker.is_special[values]).astype(np.int64), offsets[:-1])
        return int(np.minimum(_expected_predictions(np.diff(offsets), config), candidates).sum())

    def summary(self, *, documents: int, corpus_tokens: int, nsp: bool) -> SplitSummary:
        """The split's statistics. Raises PreparationError for a split with nothing to predict."""
        if self.instances and not self.predicted:
            raise PreparationError(
                f"the {self.split} split has no token that can be predicted: its text is all [UNK] or "
                f"special tokens (unk_rate {self.unk / max(self.text_tokens, 1):.1%}), so the masked-LM loss "
                "is not defined. The tokenizer does not fit this text: use a checkpoint whose vocabulary "
                "covers it."
            )
        n = max(self.instances, 1)
        tokens = max(self.tokens, 1)
        return SplitSummary(
            documents=documents,
            static_masks=self.static,
            instances=self.instances,
            tokens=self.tokens,
            shards=self.shards,
            is_next_share=round(self.is_next / n, 4) if nsp else None,
            mean_length=round(self.tokens / n, 2),
            short_target_share=round(self.short_targets / n, 4),
            truncated_pairs=self.truncated,
            masked_share=round(self.predicted / tokens, 4),
            unk_rate=round(self.unk / max(self.text_tokens, 1), 6),
            tokens_used_share=round(int(np.count_nonzero(self.covered)) / max(corpus_tokens, 1), 4),
        )


def _expected_predictions(lengths: np.ndarray, config: MaskingConfig) -> np.ndarray:
    """Google's count of predictions per sequence (numpy rounds half to even like Python 3's round)."""
    wanted = np.maximum(1, np.round(lengths * config.masked_lm_prob).astype(np.int64))
    return np.minimum(config.max_predictions_per_seq, wanted)


def _document_tokens(docs: TokenizedDocuments, document_ids: list[int]) -> int:
    ids = np.asarray(document_ids, dtype=np.int64)
    starts = docs.sentence_bounds[docs.document_bounds[ids]]
    ends = docs.sentence_bounds[docs.document_bounds[ids + 1]]
    return int((ends - starts).sum())


def _write_split(
    directory: Path,
    split: str,
    docs: TokenizedDocuments,
    document_ids: list[int],
    tokenizer: Any,
    config: PreparationConfig,
    *,
    static: bool,
    passes: int,
    seed_tag: int,
) -> SplitSummary:
    writer = _SplitWriter(
        directory=directory,
        split=split,
        tokenizer=tokenizer,
        masker=TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(config), tokenizer),
        static=static,
        seed=config.seed,
        mask_rng=np.random.default_rng([config.seed, seed_tag, 1]),
        shuffle_rng=np.random.default_rng([config.seed, seed_tag, 2]),
        covered=np.zeros(len(docs.token_ids), dtype=bool),
    )
    rng = random.Random(f"{config.seed}:{seed_tag}")
    buffered = InstancePlan.empty()
    for _ in range(passes):
        order = list(document_ids)
        rng.shuffle(order)
        for plan in plan_instances(
            docs,
            order,
            max_seq_length=config.max_seq_length,
            short_seq_prob=config.short_seq_prob,
            nsp=config.nsp,
            rng=rng,
            balance=config.nsp_balance,
        ):
            buffered.extend(plan)
            if len(buffered) >= SHARD_INSTANCES:
                writer.write(docs, buffered)
                buffered = InstancePlan.empty()
    writer.write(docs, buffered)
    return writer.summary(
        documents=len(document_ids), corpus_tokens=_document_tokens(docs, document_ids), nsp=config.nsp
    )


# --------------------------------------------------------------------------------------------------
# What the corpus allows: refusals that name the reason


def _without_text_note(tokenized: _TokenizedCorpus) -> str:
    dropped = tokenized.dropped_documents
    if not dropped:
        return ""
    total = tokenized.documents.num_documents + dropped
    lines = ", ".join(map(str, tokenized.dropped_document_lines))
    more = " ..." if dropped > len(tokenized.dropped_document_lines) else ""
    return (
        f" ({dropped} of its {total} documents have no text the tokenizer keeps, only control or invisible "
        f"characters: those at line(s) {lines}{more})"
    )


def _check_corpus(tokenized: _TokenizedCorpus, config: PreparationConfig, what: str) -> None:
    """The rules of :mod:`~worker.pretraining.preparation_rules` on the usable documents of a corpus and
    its characters (the API checks the same rules on the counts stored at upload)."""
    check_documents(tokenized.documents.num_documents, config, what, note=_without_text_note(tokenized))
    stats = tokenized.report.stats
    check_scripts(
        config,
        characters=stats.characters,
        unspaced_script_characters=stats.unspaced_script_characters,
        what=what,
    )


@dataclass
class _Split:
    """The documents to train on and those held out for evaluation (ids into ``documents``)."""

    documents: TokenizedDocuments
    train: list[int]
    eval: list[int]
    warning: RunWarning | None = None  # why nothing is held out, if the default share could not be


def _split_documents(tokenized: _TokenizedCorpus, config: PreparationConfig, has_eval_corpus: bool) -> _Split:
    """Whole documents chosen at random (seeded) are held out, never used for training; a corpus of one
    document holds out a contiguous block of it (regrouped into documents). How much is held out is
    :func:`~worker.pretraining.preparation_rules.held_out_split`'s decision."""
    docs = tokenized.documents
    n_docs = docs.num_documents
    sentences = int(docs.document_bounds[-1] - docs.document_bounds[0])
    held = held_out_split(
        config,
        documents=n_docs,
        sentences=sentences,
        eval_corpus=has_eval_corpus,
        note=_without_text_note(tokenized),
    )
    if n_docs == 1 and held.sentences:
        return _hold_out_block(docs, held.sentences, config)
    order = np.random.default_rng([config.seed, 7]).permutation(n_docs).tolist()
    return _Split(docs, sorted(order[held.documents :]), sorted(order[: held.documents]), held.warning)


def _hold_out_block(docs: TokenizedDocuments, n_eval: int, config: PreparationConfig) -> _Split:
    """One document (MLM-only): ``n_eval`` of its sentences, in one contiguous block at a seeded
    position, are held out; the text before and after it are two training documents (packing never
    joins them across the hole)."""
    sentences = int(docs.document_bounds[1] - docs.document_bounds[0])
    start = int(np.random.default_rng([config.seed, 7]).integers(0, sentences - n_eval + 1))
    cuts = sorted({0, start, start + n_eval, sentences})
    regrouped = TokenizedDocuments(docs.token_ids, docs.sentence_bounds, np.asarray(cuts, dtype=np.int64))
    held_out = cuts.index(start)
    return _Split(regrouped, [d for d in range(len(cuts) - 1) if d != held_out], [held_out])


# --------------------------------------------------------------------------------------------------
# Warnings: what the preparation tells the user


def _corpus_warnings(
    tokenized: _TokenizedCorpus, config: PreparationConfig, source: str, tokens_used_share: float | None
) -> list[RunWarning]:
    """The reader's warnings, and what tokenizing the corpus found: over-long lines, [UNK] floods,
    documents the tokenizer leaves without a token."""
    found = tokenized.findings
    replaced = set()
    if tokenized.dropped_documents:  # the tokenizer has the last word on which documents lack text
        replaced.add("documents_without_text")
    if tokenized.resplit_warnings is not None:  # sentences are no longer lines
        replaced.update(SENTENCE_COUNT_WARNINGS)
    if not config.nsp:  # one document is a problem for next-sentence prediction only
        replaced.add("single_document")
    warnings = [w for w in tokenized.report.warnings if w.code not in replaced]
    warnings.extend(tokenized.resplit_warnings or [])
    if tokenized.dropped_documents:
        warnings.append(
            textless_documents_warning(tokenized.dropped_documents, tokenized.dropped_document_lines)
        )
    budget = tokenized.segment_budget
    used = (
        f" Only {tokens_used_share:.0%} of the tokens reach an instance (tokens_used_share)."
        if (tokens_used_share is not None)
        else ""
    )
    special = 3 if config.nsp else 2
    if found.long_sentences and tokenized.splitting == "auto":
        warnings.append(
            RunWarning(
                code="long_lines",
                count=found.long_sentences,
                first_line=found.first_long_sentence_line,
                message=(
                    f"{found.long_sentences} sentence(s) are longer than the {budget} wordpieces a segment "
                    f"holds (max_seq_length - {special}) even after sentence splitting ({found.lines_split} "
                    f"over-long line(s) were split): each is cut to fit.{used} Shorten them, or raise "
                    "max_seq_length."
                ),
            )
        )
    elif found.long_lines and tokenized.splitting == "none":
        warnings.append(
            RunWarning(
                code="long_lines",
                count=found.long_lines,
                first_line=found.first_long_line,
                message=(
                    f"{found.long_lines} line(s) are longer than the {budget} wordpieces a segment holds "
                    f"(max_seq_length - {special}): each is cut to fit, and next-sentence pairs cannot be "
                    f"built from whole lines.{used} Is each line a paragraph? Set sentence_splitting to auto "
                    "(`--sentence-splitting auto`) to split over-long lines into sentences, or write one "
                    "sentence per line."
                ),
            )
        )
    rate = tokenized.unk_rate
    if rate > UNK_RATE_WARNING:
        unfit = rate > UNK_RATE_TOKENIZER_MISMATCH
        warnings.append(
            RunWarning(
                code="tokenizer_mismatch" if unfit else "unknown_tokens",
                count=found.unk_tokens,
                first_line=found.first_unk_line,
                message=(
                    f"{rate:.1%} of the wordpieces are [UNK] ({found.unk_tokens:,} tokens): "
                    + (
                        "the tokenizer probably does not fit the language or script of this corpus (e.g. "
                        "Chinese or emoji through an English vocabulary). "
                        if unfit
                        else "characters the vocabulary lacks. "
                    )
                    + "[UNK] is never a prediction target, so that text teaches the model nothing; use a "
                    "checkpoint whose vocabulary covers the text, or clean it."
                ),
            )
        )
    return [w.model_copy(update={"source": source}) for w in warnings]


def _split_warnings(
    summary: SplitSummary, config: PreparationConfig, source: str, *, long_lines_reported: bool
) -> list[RunWarning]:
    """What the instances of a split show: an IsNext share far from one half, corpus text never used."""
    warnings: list[RunWarning] = []
    low, high = IS_NEXT_SHARE_RANGE
    share = summary.is_next_share
    if share is not None and summary.instances >= IS_NEXT_MIN_INSTANCES and not low <= share <= high:
        cause = (
            "Google's rule (nsp_balance: google) pairs every one-sentence chunk with a random B: set "
            "nsp_balance: balanced"
            if config.nsp_balance == "google"
            else "Most documents give pairs of one kind only (one-sentence documents, or a document's "
            "lone last sentence): check the documents' sentences"
        )
        warnings.append(
            RunWarning(
                code="is_next_share",
                count=summary.instances,
                message=(
                    f"the IsNext share of the {source} instances is {share:.3f}, far from one half (outside "
                    f"[{low}, {high}]): next-sentence prediction then learns the majority label, not "
                    f"coherence. {cause}."
                ),
            )
        )
    used = summary.tokens_used_share
    if used is not None and used < TOKENS_USED_SHARE_WARNING and not long_lines_reported:
        warnings.append(
            RunWarning(
                code="tokens_unused",
                message=(
                    f"only {used:.0%} of the {source} text reaches an instance (tokens_used_share): the rest "
                    "is cut off to fit max_seq_length. Check the sentence lengths, or raise max_seq_length."
                ),
            )
        )
    return [w.model_copy(update={"source": source}) for w in warnings]


def _warnings_of(
    corpora: list[tuple[_TokenizedCorpus, str, tuple[str, ...]]],
    splits: dict[str, SplitSummary],
    split_sources: dict[str, str],
    config: PreparationConfig,
) -> list[dict[str, Any]]:
    """Every warning of a cache entry, as the manifest stores them: each corpus's (``(tokenized, source,
    the splits made of it)``, the first one's ``tokens_used_share`` cited), then each split's."""
    warnings: list[RunWarning] = []
    long_lines_in: set[str] = set()
    for tokenized, source, made in corpora:
        found = _corpus_warnings(tokenized, config, source, splits[made[0]].tokens_used_share)
        warnings.extend(found)
        if any(w.code == "long_lines" for w in found):
            long_lines_in.update(made)
    for name, summary in splits.items():
        warnings.extend(
            _split_warnings(summary, config, split_sources[name], long_lines_reported=name in long_lines_in)
        )
    return [w.model_dump(exclude_none=True) for w in warnings]


# --------------------------------------------------------------------------------------------------
# The entry points


def _corpus_summary(tokenized: _TokenizedCorpus) -> dict[str, Any]:
    found = tokenized.findings
    return {
        **tokenized.report.stats.to_dict(),
        "tokens": tokenized.tokens,
        "words": tokenized.words,  # the tokenizer's words (TokenizationStats.words)
        "wordpieces_per_word": round(tokenized.tokens / max(tokenized.words, 1), 4),
        "empty_sentences_dropped": tokenized.empty_sentences,
        "documents_without_text": tokenized.dropped_documents,
        "unk_rate": round(tokenized.unk_rate, 6),
        "segment_budget": tokenized.segment_budget,
        "long_lines": found.long_lines,
        "lines_split": found.lines_split,
        "long_sentences": found.long_sentences,
    }


def _cached(final: Path, key: str) -> PreparedData | None:
    manifest_path = final / MANIFEST
    if manifest_path.exists():
        return PreparedData(key, final, json.loads(manifest_path.read_text()), cached=True)
    return None


def _cache_entry(
    cache_dir: Path, key: str, build: Callable[[Path], dict[str, Any]], say: Log
) -> PreparedData:
    """The cache entry ``key``: found, or built by ``build(tmp_dir) -> manifest`` in a temporary
    directory that is renamed into place (atomically) once complete, and removed on any error."""
    final = cache_dir / key
    if (hit := _cached(final, key)) is not None:
        say(f"prepared data found in the cache: {final}")
        return hit
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = build(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (hit := _cached(final, key)) is not None:  # a concurrent preparation got there first
            return hit
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"prepared data written to {final}")
    return PreparedData(key, final, manifest)


def prepare_corpus(
    corpus: str | Path,
    tokenizer: Any,
    cache_dir: str | Path,
    config: PreparationConfig,
    *,
    eval_corpus: str | Path | None = None,
    corpus_sha256: str | None = None,
    max_line_chars: int = 100_000,
    log: Log | None = None,
) -> PreparedData:
    """Prepare (or find in the cache) training and eval instances for ``corpus``.

    Train instances use ``config.masking``: dynamic (no masks stored; the collator draws them) or
    static (``dupe_factor`` passes with different NSP pairs and masks). The eval split is always
    statically masked with a fixed seed so eval numbers compare across steps and runs.
    Raises CorpusFormatError for a malformed corpus, PreparationError when the corpus cannot satisfy the
    parameters (saying why), HyperparameterError for settings an eval corpus would make ignored; nothing
    is left in the cache in any case. What the checks
    found is in the manifest's ``warnings`` (:attr:`PreparedData.warnings`).
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    if eval_corpus is not None:
        config.check_eval_corpus()
    tokenizer = load_tokenizer(tokenizer)
    check_whole_word_vocabulary(config, tokenizer.get_vocab())
    fingerprint = tokenizer_fingerprint(tokenizer)
    corpus_sha = corpus_sha256 or file_sha256(corpus)
    eval_sha = file_sha256(eval_corpus) if eval_corpus is not None else None
    key = cache_key(
        corpus_sha256=corpus_sha,
        tokenizer_fingerprint=fingerprint,
        config=config,
        eval_corpus_sha256=eval_sha,
    )

    def build(directory: Path) -> dict[str, Any]:
        say(f"reading and tokenizing {corpus}")
        tokenized = _tokenize(corpus, tokenizer, config, max_line_chars)
        _check_corpus(tokenized, config, "the corpus")
        eval_tokenized = None
        if eval_corpus is not None:
            eval_tokenized = _tokenize(eval_corpus, tokenizer, config, max_line_chars)
            _check_corpus(eval_tokenized, config, "the eval corpus")
        split = _split_documents(tokenized, config, eval_tokenized is not None)
        docs, train_ids, eval_ids = split.documents, split.train, split.eval
        if tokenized.documents.num_documents == 1 and eval_ids:
            say("creating instances from the one document, around its held-out block")
        else:
            say(f"creating instances from {len(train_ids)} training documents")
        static = config.masking == "static"
        passes = config.dupe_factor if static else 1
        splits = {
            "train": _write_split(
                directory,
                "train",
                docs,
                train_ids,
                tokenizer,
                config,
                static=static,
                passes=passes,
                seed_tag=0,
            )
        }
        corpora: list[tuple[_TokenizedCorpus, str, tuple[str, ...]]] = [
            (tokenized, "corpus", ("train", "eval") if eval_ids else ("train",))
        ]
        if eval_tokenized is not None:
            docs = eval_tokenized.documents
            eval_ids = list(range(docs.num_documents))
            corpora.append((eval_tokenized, "eval_corpus", ("eval",)))
        if eval_ids:
            splits["eval"] = _write_split(
                directory, "eval", docs, eval_ids, tokenizer, config, static=True, passes=1, seed_tag=1
            )
        return {
            "key": key,
            "format_version": FORMAT_VERSION,
            "kind": "train",
            "corpus_sha256": corpus_sha,
            "eval_corpus_sha256": eval_sha,
            "tokenizer_fingerprint": fingerprint,
            "config": config.model_dump(mode="json"),
            "corpus": _corpus_summary(tokenized),
            "eval_corpus": _corpus_summary(eval_tokenized) if eval_tokenized else None,
            "splits": {name: split.model_dump() for name, split in splits.items()},
            "warnings": [
                *_warnings_of(corpora, splits, {"train": "train", "eval": "eval"}, config),
                *_overlap_warnings(tokenized, eval_tokenized),
                *([split.warning.model_dump(exclude_none=True)] if split.warning is not None else []),
            ],
            "seconds": round(time.perf_counter() - started, 3),
        }

    return _cache_entry(Path(cache_dir), key, build, say)


def _document_digests(docs: TokenizedDocuments) -> list[bytes]:
    """A digest of each document's token ids (equal documents, equal digests)."""
    tokens = docs.sentence_bounds[docs.document_bounds]
    return [
        hashlib.blake2b(docs.token_ids[tokens[d] : tokens[d + 1]].tobytes(), digest_size=16).digest()
        for d in range(docs.num_documents)
    ]


def _overlap_warnings(
    tokenized: _TokenizedCorpus, eval_tokenized: _TokenizedCorpus | None
) -> list[dict[str, Any]]:
    """An eval corpus whose documents are also training documents measures memorized text."""
    if eval_tokenized is None:
        return []
    training = set(_document_digests(tokenized.documents))
    evaluated = _document_digests(eval_tokenized.documents)
    shared = sum(digest in training for digest in evaluated)
    if not shared:
        return []
    warning = RunWarning(
        code="eval_overlaps_training",
        count=shared,
        source="eval_corpus",
        message=(
            f"{shared} of the {len(evaluated)} documents of the eval corpus are also in the training corpus: "
            "their evaluation measures text the model trains on, not held-out text. Remove them from one "
            "of the corpora, or hold out part of the corpus (eval_fraction) instead of an eval corpus."
        ),
    )
    return [warning.model_dump(exclude_none=True)]


def prepare_eval_corpus(
    corpus: str | Path,
    tokenizer: Any,
    cache_dir: str | Path,
    config: PreparationConfig,
    *,
    max_line_chars: int = 100_000,
    log: Log | None = None,
) -> PreparedData:
    """A whole corpus as one statically-masked eval split: the general-domain reference corpus that
    shows forgetting. Its ``eval`` split holds every document; its warnings name the reference corpus."""
    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer)
    check_whole_word_vocabulary(config, tokenizer.get_vocab())
    fingerprint = tokenizer_fingerprint(tokenizer)
    corpus_sha = file_sha256(corpus)
    key = cache_key(corpus_sha256=corpus_sha, tokenizer_fingerprint=fingerprint, config=config, kind="eval")

    def build(directory: Path) -> dict[str, Any]:
        tokenized = _tokenize(corpus, tokenizer, config, max_line_chars)
        _check_corpus(tokenized, config, "the reference corpus")
        docs = tokenized.documents
        document_ids = list(range(docs.num_documents))
        split = _write_split(
            directory, "eval", docs, document_ids, tokenizer, config, static=True, passes=1, seed_tag=1
        )
        return {
            "key": key,
            "format_version": FORMAT_VERSION,
            "kind": "eval",
            "corpus_sha256": corpus_sha,
            "tokenizer_fingerprint": fingerprint,
            "config": config.model_dump(mode="json"),
            "corpus": _corpus_summary(tokenized),
            "splits": {"eval": split.model_dump()},
            "warnings": _warnings_of(
                [(tokenized, "reference_corpus", ("eval",))], {"eval": split}, {"eval": "reference"}, config
            ),
            "seconds": round(time.perf_counter() - started, 3),
        }

    return _cache_entry(Path(cache_dir), key, build, log or (lambda message: None))


def _tokenize(
    path: str | Path, tokenizer: Any, config: PreparationConfig, max_line_chars: int
) -> _TokenizedCorpus:
    return tokenize_corpus(
        path,
        tokenizer,
        max_line_chars=max_line_chars,
        segment_budget=segment_budget(config),
        sentence_splitting=config.sentence_splitting,
    )


def segment_budget(config: PreparationConfig) -> int:
    """Wordpieces of text an instance holds: ``[CLS] A [SEP] B [SEP]`` with NSP, ``[CLS] text [SEP]``
    without."""
    return config.max_seq_length - (3 if config.nsp else 2)
