"""Corpus -> prepared NSP/MLM instances, cached as Parquet shards.

``prepare_corpus`` streams the corpus once through the validating reader, tokenizes sentences in large
batches with the checkpoint's fast tokenizer (Rust, all cores), keeps only the tokenized corpus in
memory (one flat array of token ids; random next segments need random access to every document) and
writes instances shard by shard, so peak memory is the tokenized corpus plus one shard.

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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from worker.pretraining.corpus import CorpusReport, scan_corpus
from worker.pretraining.dataset import PreparedSplit
from worker.pretraining.hyperparameters import PreparationConfig
from worker.pretraining.instances import InstancePlan, TokenizedDocuments, materialize, plan_instances
from worker.pretraining.masking import MaskingConfig, TokenMasker
from worker.pretraining.records import PreparedDataSummary, SplitSummary
from worker.pretraining.tokenizer import load_tokenizer

__all__ = [
    "FORMAT_VERSION",
    "PreparationError",
    "PreparedData",
    "cache_key",
    "file_sha256",
    "prepare_corpus",
    "prepare_eval_corpus",
    "tokenizer_fingerprint",
]

# Bump when the instance algorithm or the shard layout changes: old cache entries then stop matching.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_INSTANCES = 16_384
TOKENIZE_BATCH_SENTENCES = 16_384

Log = Callable[[str], None]


class PreparationError(ValueError):
    """The corpus and the parameters cannot produce training data (for example too few documents)."""


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
class _TokenizedCorpus:
    documents: TokenizedDocuments
    report: CorpusReport
    words: int
    empty_sentences: int
    seconds: float


def _token_dtype(tokenizer: Any) -> type[np.unsignedinteger] | type[np.signedinteger]:
    return np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max else np.int32


def tokenize_corpus(path: str | Path, tokenizer: Any, *, max_line_chars: int = 100_000) -> _TokenizedCorpus:
    """Validate and tokenize a corpus in one streaming pass; raises CorpusFormatError on bad input."""
    started = time.perf_counter()
    backend = _backend(tokenizer)
    dtype = _token_dtype(tokenizer)
    # Token ids go to a temporary file as they come and are read back into one array at the end, so
    # the peak is one copy of the tokenized corpus, not a list of chunks plus their concatenation.
    token_file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the with block below
    length_chunks: list[np.ndarray] = []
    doc_sentence_counts: list[int] = []  # sentences per document, before dropping empty ones
    pending: list[str] = []
    words = 0

    def flush() -> None:
        nonlocal words
        if not pending:
            return
        encodings = backend.encode_batch_fast(pending, add_special_tokens=False)
        ids = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        np.fromiter(chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum())).tofile(token_file)
        length_chunks.append(lengths)
        words += len(" ".join(pending).split())
        pending.clear()

    def on_document(sentences: list[str], first_line: int) -> None:
        pending.extend(sentences)
        doc_sentence_counts.append(len(sentences))
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
    kept_per_doc = kept_per_doc[kept_per_doc > 0]
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
        seconds=time.perf_counter() - started,
    )


# --------------------------------------------------------------------------------------------------
# Writing instances


@dataclass
class _SplitWriter:
    """Writes instances of one split as Parquet shards and keeps the statistics the CLI reports."""

    directory: Path
    split: str
    tokenizer: Any
    masker: TokenMasker | None
    mask_rng: np.random.Generator
    shuffle_rng: np.random.Generator
    masker_config: MaskingConfig
    shards: list[str] = field(default_factory=list)
    instances: int = 0
    tokens: int = 0
    is_next: int = 0
    short_targets: int = 0
    truncated: int = 0
    predicted: int = 0
    unk: int = 0

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
        if self.masker is not None:
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
            self.predicted += int(_expected_predictions(lengths, self.masker_config).sum())
        name = f"{self.split}-{len(self.shards):05d}.parquet"
        pq.write_table(pa.table(columns), self.directory / name, compression="zstd")
        self.shards.append(name)
        self.instances += n
        self.tokens += int(lengths.sum())
        self.is_next += int((labels == 0).sum())
        self.short_targets += int(np.count_nonzero(plan.short_target))
        self.truncated += int(np.count_nonzero(plan.truncated))
        unk_id = self.tokenizer.unk_token_id
        if unk_id is not None:
            self.unk += int(np.count_nonzero(values == unk_id))

    def _static_masks(
        self, values: np.ndarray, offsets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert self.masker is not None
        all_positions, all_replacements = [], []
        counts = np.zeros(len(offsets) - 1, dtype=np.int64)
        for k in range(len(offsets) - 1):
            positions, replacements = self.masker.mask(values[offsets[k] : offsets[k + 1]], self.mask_rng)
            all_positions.append(positions)
            all_replacements.append(replacements)
            counts[k] = len(positions)
        return np.concatenate(all_positions), np.concatenate(all_replacements), counts

    def summary(self, *, documents: int, static_masks: bool) -> SplitSummary:
        n = max(self.instances, 1)
        tokens = max(self.tokens, 1)
        return SplitSummary(
            documents=documents,
            static_masks=static_masks,
            instances=self.instances,
            tokens=self.tokens,
            shards=self.shards,
            is_next_share=round(self.is_next / n, 4),
            mean_length=round(self.tokens / n, 2),
            short_target_share=round(self.short_targets / n, 4),
            truncated_pairs=self.truncated,
            masked_share=round(self.predicted / tokens, 4),
            unk_rate=round(self.unk / tokens, 6),
        )


def _expected_predictions(lengths: np.ndarray, config: MaskingConfig) -> np.ndarray:
    """Tokens a dynamic masker will predict per sequence (Google's formula; numpy rounds half to even
    like Python 3's round)."""
    wanted = np.maximum(1, np.round(lengths * config.masked_lm_prob).astype(np.int64))
    return np.minimum(config.max_predictions_per_seq, wanted)


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
    masking_config = MaskingConfig.from_hyperparameters(config)
    writer = _SplitWriter(
        directory=directory,
        split=split,
        tokenizer=tokenizer,
        masker=TokenMasker.from_tokenizer(masking_config, tokenizer) if static else None,
        mask_rng=np.random.default_rng([config.seed, seed_tag, 1]),
        shuffle_rng=np.random.default_rng([config.seed, seed_tag, 2]),
        masker_config=masking_config,
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
        ):
            buffered.extend(plan)
            if len(buffered) >= SHARD_INSTANCES:
                writer.write(docs, buffered)
                buffered = InstancePlan.empty()
    writer.write(docs, buffered)
    return writer.summary(documents=len(document_ids), static_masks=static)


# --------------------------------------------------------------------------------------------------
# The entry points


def _split_documents(
    n_docs: int, config: PreparationConfig, has_eval_corpus: bool
) -> tuple[list[int], list[int]]:
    """Whole documents held out for evaluation, chosen at random (seeded), never used for training."""
    order = np.random.default_rng([config.seed, 7]).permutation(n_docs).tolist()
    if has_eval_corpus:
        n_eval = 0
    elif config.eval_documents is not None:
        n_eval = config.eval_documents
    else:
        n_eval = round(n_docs * config.eval_fraction)
        if config.eval_fraction > 0:
            n_eval = max(n_eval, 2 if config.nsp else 1)
    if n_eval and config.nsp and n_eval < 2:
        raise PreparationError("eval_documents: next-sentence prediction needs at least 2 held-out documents")
    minimum_train = 2 if config.nsp else 1
    if n_docs - n_eval < minimum_train:
        raise PreparationError(
            f"the corpus has {n_docs} usable documents; holding out {n_eval} for evaluation leaves "
            f"{n_docs - n_eval} for training (need at least {minimum_train}). Lower eval_fraction/"
            "eval_documents or give a separate eval corpus."
        )
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def _corpus_summary(tokenized: _TokenizedCorpus) -> dict[str, Any]:
    tokens = len(tokenized.documents.token_ids)
    return {
        **tokenized.report.stats.to_dict(),
        "warnings": [w.model_dump(exclude_none=True) for w in tokenized.report.warnings],
        "tokens": tokens,
        "wordpieces_per_word": round(tokens / max(tokenized.words, 1), 4),
        "empty_sentences_dropped": tokenized.empty_sentences,
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
    Raises CorpusFormatError for a malformed corpus and PreparationError when the corpus cannot
    satisfy the parameters; nothing is left in the cache in either case.
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    tokenizer = load_tokenizer(tokenizer)
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
        tokenized = tokenize_corpus(corpus, tokenizer, max_line_chars=max_line_chars)
        eval_tokenized = (
            tokenize_corpus(eval_corpus, tokenizer, max_line_chars=max_line_chars) if eval_corpus else None
        )
        docs = tokenized.documents
        train_ids, eval_ids = _split_documents(docs.num_documents, config, eval_tokenized is not None)
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
        if eval_tokenized is not None:
            docs = eval_tokenized.documents
            eval_ids = list(range(docs.num_documents))
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
            "seconds": round(time.perf_counter() - started, 3),
        }

    return _cache_entry(Path(cache_dir), key, build, say)


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
    shows forgetting. Its ``eval`` split holds every document."""
    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    corpus_sha = file_sha256(corpus)
    key = cache_key(corpus_sha256=corpus_sha, tokenizer_fingerprint=fingerprint, config=config, kind="eval")

    def build(directory: Path) -> dict[str, Any]:
        tokenized = tokenize_corpus(corpus, tokenizer, max_line_chars=max_line_chars)
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
            "seconds": round(time.perf_counter() - started, 3),
        }

    return _cache_entry(Path(cache_dir), key, build, log or (lambda message: None))
