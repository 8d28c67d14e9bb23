"""Data preparation end to end: corpus file -> cached Parquet shards -> dataset items."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.support import write_documents
from tests.synthetic import FUNCTION_WORDS
from worker.pretraining.corpus import CorpusFormatError
from worker.pretraining.hyperparameters import PreparationConfig
from worker.pretraining.prepare import PreparationError, prepare_corpus, prepare_eval_corpus


def test_prepare_writes_splits_and_reuses_the_cache(tmp_path, sample_corpus, tokenizer):
    config = PreparationConfig(max_seq_length=64, eval_fraction=0.1, seed=3)
    prepared = prepare_corpus(sample_corpus, tokenizer, tmp_path, config)
    assert not prepared.cached
    assert prepared.path == tmp_path / prepared.key
    train, held_out = prepared.train, prepared.eval
    assert held_out is not None
    assert len(train) == prepared.manifest["splits"]["train"]["instances"] > 1000
    assert len(held_out) == prepared.manifest["splits"]["eval"]["instances"] > 50
    assert train.lengths.max() <= 64
    # Dynamic masking: no masks stored for training; eval masks are always fixed.
    assert not train.masked and held_out.masked
    item = train[0]
    assert item["input_ids"][0] == tokenizer.cls_token_id and item["input_ids"][-1] == tokenizer.sep_token_id
    assert item["input_ids"][item["segment_b_start"] - 1] == tokenizer.sep_token_id

    before = {p.name: p.stat().st_mtime_ns for p in prepared.path.iterdir()}
    again = prepare_corpus(sample_corpus, tokenizer, tmp_path, config)
    assert again.cached and again.key == prepared.key
    assert {p.name: p.stat().st_mtime_ns for p in again.path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == [prepared.key]  # no temporary directory left

    other = prepare_corpus(sample_corpus, tokenizer, tmp_path, config.model_copy(update={"seed": 4}))
    assert other.key != prepared.key


def test_eval_documents_never_overlap_training_documents(tmp_path, tokenizer):
    # 200 documents whose words are single tokens and whose 8-grams of tokens are their own (checked), so
    # every instance can be traced to the document it came from.
    rng = random.Random(0)
    words = [word for word in FUNCTION_WORDS if len(tokenizer.tokenize(word)) == 1]
    documents = [[" ".join(rng.choices(words, k=10)) + "." for _ in range(6)] for _ in range(200)]
    corpus = write_documents(tmp_path / "corpus.txt", documents)
    document_of: dict[tuple[int, ...], int] = {}
    for d, document in enumerate(documents):
        ids = [t for sentence in document for t in tokenizer(sentence, add_special_tokens=False)["input_ids"]]
        for i in range(len(ids) - 7):
            assert document_of.setdefault(tuple(ids[i : i + 8]), d) == d

    config = PreparationConfig(max_seq_length=64, eval_documents=40, seed=1)
    prepared = prepare_corpus(corpus, tokenizer, tmp_path / "cache", config)
    assert prepared.manifest["splits"]["eval"]["documents"] == 40
    assert prepared.manifest["splits"]["train"]["documents"] == 160

    def documents_in(split):  # the stored input_ids are the unmasked originals
        seen = set()
        for k in range(len(split)):
            ids = split[k]["input_ids"].tolist()
            seen.update(
                document_of[g] for i in range(len(ids) - 7) if (g := tuple(ids[i : i + 8])) in document_of
            )
        return seen

    held_out, trained = documents_in(prepared.eval), documents_in(prepared.train)
    assert len(held_out) == 40 and len(trained) == 160 and not held_out & trained


def test_same_seed_gives_identical_shards(tmp_path, small_corpus, tokenizer):
    config = PreparationConfig(max_seq_length=48, masking="static", dupe_factor=2, seed=9)
    first = prepare_corpus(small_corpus, tokenizer, tmp_path / "a", config)
    second = prepare_corpus(small_corpus, tokenizer, tmp_path / "b", config)
    assert first.key == second.key
    for name in first.manifest["splits"]["train"]["shards"]:
        assert (first.path / name).read_bytes() == (second.path / name).read_bytes()


def test_static_masking_stores_dupe_factor_copies_with_different_masks(tmp_path, small_corpus, tokenizer):
    once = prepare_corpus(
        small_corpus,
        tokenizer,
        tmp_path,
        PreparationConfig(max_seq_length=48, masking="static", eval_fraction=0),
    )
    twice = prepare_corpus(
        small_corpus,
        tokenizer,
        tmp_path,
        PreparationConfig(max_seq_length=48, masking="static", dupe_factor=2, eval_fraction=0),
    )
    assert once.eval is None
    train = twice.train
    assert train.masked
    assert abs(len(train) / len(once.train) - 2) < 0.1
    masked_share = sum(len(train[k]["masked_lm_positions"]) for k in range(len(train))) / train.num_tokens
    assert masked_share == pytest.approx(twice.manifest["splits"]["train"]["masked_share"], abs=1e-3)
    assert 0.12 < masked_share < 0.16
    item = train[5]
    assert np.all(item["input_ids"][item["masked_lm_positions"]] != tokenizer.cls_token_id)


def test_nsp_off_gives_single_segment_instances(tmp_path, small_corpus, tokenizer):
    prepared = prepare_corpus(
        small_corpus, tokenizer, tmp_path, PreparationConfig(max_seq_length=64, nsp=False)
    )
    train = prepared.train
    assert all(train[k]["segment_b_start"] == len(train[k]["input_ids"]) for k in range(len(train)))
    assert prepared.manifest["splits"]["train"]["is_next_share"] == 1.0


def test_separate_eval_corpus_holds_nothing_out(tmp_path, small_corpus, sample_corpus, tokenizer):
    prepared = prepare_corpus(
        small_corpus, tokenizer, tmp_path, PreparationConfig(max_seq_length=64), eval_corpus=sample_corpus
    )
    assert prepared.manifest["splits"]["train"]["documents"] == prepared.manifest["corpus"]["documents"]
    assert prepared.manifest["splits"]["eval"]["documents"] == prepared.manifest["eval_corpus"]["documents"]


def test_reference_corpus_is_one_masked_eval_split(tmp_path, small_corpus, tokenizer):
    reference = prepare_eval_corpus(small_corpus, tokenizer, tmp_path, PreparationConfig(max_seq_length=64))
    assert reference.eval is not None and reference.eval.masked
    assert reference.manifest["splits"]["eval"]["documents"] == reference.manifest["corpus"]["documents"]


def test_bad_corpus_leaves_nothing_in_the_cache(tmp_path, tokenizer):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(b"First sentence.\nSecond one.\n\nThird \xff here.\n")
    cache = tmp_path / "cache"
    with pytest.raises(CorpusFormatError) as caught:
        prepare_corpus(corpus, tokenizer, cache, PreparationConfig())
    assert caught.value.line == 4
    assert not cache.exists() or not any(cache.iterdir())


def test_too_few_documents_for_the_eval_split_is_explained(tmp_path, tokenizer):
    corpus = tmp_path / "two.txt"
    corpus.write_text("a b c.\nd e f.\n\ng h i.\nj k l.\n")
    with pytest.raises(PreparationError, match="eval_fraction"):
        prepare_corpus(corpus, tokenizer, tmp_path / "cache", PreparationConfig(eval_fraction=0.5))


def test_sentences_that_tokenize_to_nothing_are_dropped(tmp_path, tokenizer):
    corpus = tmp_path / "zw.txt"
    # A zero-width space is not whitespace to the reader, but the BERT normalizer removes it.
    documents = [f"Sentence {i} of the first kind.\n\u200b\nAnother sentence number {i}.\n" for i in range(6)]
    corpus.write_text("\n".join(documents), encoding="utf-8")
    prepared = prepare_corpus(corpus, tokenizer, tmp_path / "cache", PreparationConfig(eval_fraction=0))
    assert prepared.manifest["corpus"]["sentences"] == 18
    assert prepared.manifest["corpus"]["empty_sentences_dropped"] == 6
    train = prepared.train
    assert all(tokenizer.unk_token_id not in train[k]["input_ids"] for k in range(len(train)))
