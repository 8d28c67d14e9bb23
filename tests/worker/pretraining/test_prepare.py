"""Data preparation end to end: corpus file -> cached Parquet shards -> dataset items."""

from __future__ import annotations

import hashlib
import random
import unicodedata

import numpy as np
import pytest

from tests.support import readme_corpus_example, wordpiece_tokenizer, write_documents
from tests.synthetic import FUNCTION_WORDS, SPECIAL_TOKENS
from worker.pretraining.collator import PretrainingCollator
from worker.pretraining.corpus import CorpusFormatError
from worker.pretraining.hyperparameters import HyperparameterError, PreparationConfig
from worker.pretraining.masking import IGNORE_INDEX, MaskingConfig, TokenMasker
from worker.pretraining.prepare import (
    PreparationError,
    prepare_corpus,
    prepare_eval_corpus,
    split_sentences,
)


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
    assert prepared.manifest["splits"]["train"]["is_next_share"] is None  # no pairs, no share


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


def test_the_readme_corpus_trains_on_both_documents_without_a_held_out_split(tmp_path, minilm_dir):
    # Two documents: holding out the default share (at least the two documents next-sentence evaluation
    # needs) would leave none to train on. It was refused after queueing; it trains, and says why it has
    # no held-out evaluation.
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(readme_corpus_example())
    prepared = prepare_corpus(corpus, minilm_dir, tmp_path / "cache", PreparationConfig())
    assert prepared.eval is None and "eval" not in prepared.manifest["splits"]
    assert prepared.manifest["splits"]["train"]["documents"] == 2 and len(prepared.train) > 0
    warning = codes(prepared)["no_eval_split"]
    assert warning["source"] == "corpus" and "4 documents or more" in warning["message"]
    assert warning["message"].startswith("the corpus has 2 usable documents: too few to hold out")
    # Asked for on purpose, the same split is refused, naming the setting.
    with pytest.raises(PreparationError, match="leaves 0 for training") as refused:
        prepare_corpus(corpus, minilm_dir, tmp_path / "cache", PreparationConfig(eval_documents=2))
    assert refused.value.field == "eval_documents"


def test_sentences_that_tokenize_to_nothing_are_dropped(tmp_path, tokenizer):
    corpus = tmp_path / "bel.txt"
    # A control character is text to the reader, but the BERT normalizer removes it.
    documents = [f"Sentence {i} of the first kind.\n\a\nAnother sentence number {i}.\n" for i in range(6)]
    corpus.write_text("\n".join(documents), encoding="utf-8")
    prepared = prepare_corpus(corpus, tokenizer, tmp_path / "cache", PreparationConfig(eval_fraction=0))
    assert prepared.manifest["corpus"]["sentences"] == 18
    assert prepared.manifest["corpus"]["empty_sentences_dropped"] == 6
    train = prepared.train
    assert all(tokenizer.unk_token_id not in train[k]["input_ids"] for k in range(len(train)))


# -- what the preparation tells about the corpus (issue 9) ------------------------------------------------


def codes(prepared) -> dict[str, dict]:
    return {w.code: w.model_dump(exclude_none=True) for w in prepared.warnings}


def paragraphs(documents: list[list[str]]) -> list[list[str]]:
    """Each document as paragraphs of four sentences a line (one paragraph per line)."""
    return [[" ".join(doc[i : i + 4]) for i in range(0, len(doc), 4)] for doc in documents]


def test_paragraph_lines_are_reported_and_split_on_request(tmp_path, documents, tokenizer):
    corpus = write_documents(tmp_path / "paragraphs.txt", paragraphs(documents[:300]))
    config = PreparationConfig(max_seq_length=64)
    as_lines = prepare_corpus(corpus, tokenizer, tmp_path / "cache", config)
    train = as_lines.manifest["splits"]["train"]
    warning = codes(as_lines)["long_lines"]
    assert warning["source"] == "corpus" and warning["first_line"] == 1
    assert warning["count"] == as_lines.manifest["corpus"]["long_lines"] > 500
    assert "sentence_splitting to auto" in warning["message"] and "tokens_used_share" in warning["message"]
    assert train["tokens_used_share"] < 0.5

    split = prepare_corpus(
        corpus, tokenizer, tmp_path / "cache", config.model_copy(update={"sentence_splitting": "auto"})
    )
    # A line that is one long sentence stays as it is.
    assert warning["count"] - 5 <= split.manifest["corpus"]["lines_split"] <= warning["count"]
    assert split.manifest["corpus"]["sentences"] == as_lines.manifest["corpus"]["sentences"]  # lines read
    assert split.manifest["splits"]["train"]["tokens_used_share"] > 0.8
    assert abs(split.manifest["splits"]["train"]["is_next_share"] - 0.5) <= 0.02
    assert split.manifest["splits"]["train"]["instances"] > 2 * train["instances"]


def test_sentence_splitter_splits_a_paragraph():
    assert split_sentences("Dr. Smith arrived at 5 p.m. on Monday. He left!  Did he?") == [
        "Dr. Smith arrived at 5 p.m. on Monday.",
        "He left!",
        "Did he?",
    ]


def test_an_is_next_share_far_from_one_half_warns(tmp_path, documents, tokenizer):
    # Two sentences a document, each longer than the target: Google's rule makes every pair random.
    corpus = write_documents(tmp_path / "two.txt", [doc[:2] for doc in documents[:400]])
    config = PreparationConfig(max_seq_length=16, nsp_balance="google", eval_fraction=0)
    google = prepare_corpus(corpus, tokenizer, tmp_path / "cache", config)
    assert google.manifest["splits"]["train"]["is_next_share"] < 0.1
    warning = codes(google)["is_next_share"]
    assert warning["source"] == "train" and "nsp_balance: balanced" in warning["message"]
    balanced = prepare_corpus(
        corpus, tokenizer, tmp_path / "cache", config.model_copy(update={"nsp_balance": "balanced"})
    )
    assert balanced.manifest["splits"]["train"]["is_next_share"] == pytest.approx(0.5, abs=0.02)
    assert "is_next_share" not in codes(balanced)


@pytest.mark.parametrize(
    ("foreign", "code"),
    [
        (["这是一个用中文写的句子。", "它有很多汉字。"], "tokenizer_mismatch"),  # every character an [UNK]
        (["🚀🚀 🎉🎉 🌍🌍 🚲.", "🙂 🙂 🙂 🙂."], "tokenizer_mismatch"),
    ],
)
def test_unknown_token_floods_warn(tmp_path, documents, tokenizer, foreign, code):
    flooded = write_documents(tmp_path / "flood.txt", [foreign] * 40 + documents[:20])
    prepared = prepare_corpus(flooded, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64))
    warning = codes(prepared)[code]
    assert prepared.manifest["corpus"]["unk_rate"] > 0.05
    assert warning["first_line"] == 1 and warning["count"] > 100
    assert "does not fit the language or script" in warning["message"]


def test_some_unknown_tokens_warn(tmp_path, documents, tokenizer):
    chinese = ["这是一个用中文写的句子。", "它有很多汉字。"]
    corpus = write_documents(tmp_path / "some.txt", [*documents[:60], *[chinese] * 20])
    prepared = prepare_corpus(corpus, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64))
    assert 0.015 < prepared.manifest["corpus"]["unk_rate"] < 0.04
    warning = codes(prepared)["unknown_tokens"]
    assert warning["first_line"] == sum(len(doc) + 1 for doc in documents[:60]) + 1
    assert "tokenizer_mismatch" not in codes(prepared)


def test_the_split_unk_rate_is_the_share_of_the_text(tmp_path, documents, tokenizer):
    # Special tokens are not text: the split's unk_rate and the corpus's measure the same thing (every
    # token is used here, so they agree).
    chinese = ["这是一个用中文写的句子。", "它有很多汉字。"]
    corpus = write_documents(tmp_path / "some.txt", [*documents[:60], *[chinese] * 20])
    config = PreparationConfig(max_seq_length=512, nsp=False, eval_fraction=0, short_seq_prob=0)
    prepared = prepare_corpus(corpus, tokenizer, tmp_path / "cache", config)
    train = prepared.manifest["splits"]["train"]
    assert train["tokens_used_share"] == 1.0
    assert train["unk_rate"] == pytest.approx(prepared.manifest["corpus"]["unk_rate"], abs=1e-4)


@pytest.mark.parametrize("role", ["corpus", "eval_corpus"])
def test_a_split_with_nothing_to_predict_is_refused(tmp_path, documents, tokenizer, role):
    emoji = write_documents(tmp_path / "emoji.txt", [["🚀 🎉 🌍", "🙂 🙂 🚲", "🎉 🚀"]] * 40)
    ordinary = write_documents(tmp_path / "ordinary.txt", documents[:60])
    corpus, eval_corpus = (emoji, ordinary) if role == "corpus" else (ordinary, emoji)
    split = "train" if role == "corpus" else "eval"
    with pytest.raises(PreparationError, match=f"the {split} split has no token that can be predicted"):
        prepare_corpus(
            corpus,
            tokenizer,
            tmp_path / "cache",
            PreparationConfig(max_seq_length=64),
            eval_corpus=eval_corpus,
        )
    assert not any((tmp_path / "cache").glob("*/manifest.json"))


def test_masked_share_counts_only_tokens_that_can_be_predicted(tmp_path, documents, tokenizer):
    # [UNK] is never a prediction target: a corpus that is mostly [UNK] predicts few tokens.
    corpus = write_documents(
        tmp_path / "emoji.txt", [["🚀 🎉 🌍 🚲 " * 8 + "the end.", "🙂 " * 30 + "a b."]] * 60
    )
    for masking, whole_word_mask in (("dynamic", False), ("dynamic", True), ("static", False)):
        config = PreparationConfig(
            max_seq_length=64, masking=masking, whole_word_mask=whole_word_mask, eval_fraction=0
        )
        prepared = prepare_corpus(corpus, tokenizer, tmp_path / "cache", config)
        train = prepared.train
        # What training predicts: the collator's first epoch, as the engine builds it.
        masker = TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(config), tokenizer)
        collator = PretrainingCollator(
            pad_token_id=tokenizer.pad_token_id, masker=None if train.masked else masker, seed=config.seed
        )
        predicted = int((collator([train[k] for k in range(len(train))])["labels"] != IGNORE_INDEX).sum())
        reported = prepared.manifest["splits"]["train"]["masked_share"]
        assert reported == round(predicted / train.num_tokens, 4), masking
        assert reported < 0.1


def test_whole_word_masked_share_from_a_sample_is_close(tmp_path, small_corpus, tokenizer, monkeypatch):
    from worker.pretraining import prepare

    monkeypatch.setattr(prepare, "WHOLE_WORD_MASK_SAMPLE", 40)  # of some 1,500 instances
    config = PreparationConfig(max_seq_length=64, whole_word_mask=True, eval_fraction=0)
    prepared = prepare_corpus(small_corpus, tokenizer, tmp_path / "cache", config)
    train = prepared.train
    masker = TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(config), tokenizer)
    collator = PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=masker, seed=config.seed)
    predicted = int((collator([train[k] for k in range(len(train))])["labels"] != IGNORE_INDEX).sum())
    assert len(train) > 1_000
    assert prepared.manifest["splits"]["train"]["masked_share"] == pytest.approx(
        predicted / train.num_tokens, abs=0.005
    )


def test_nfd_text_is_read_as_nfc(tmp_path, documents):
    # A cased vocabulary with "é" and no accent stripping: decomposed "é" would be [UNK].
    words = ["café", "été", "élève", "the", "and", "."]
    vocabulary = [
        *SPECIAL_TOKENS,
        *words,
        *"abcdefghijklmnopqrstuvwxyzé",
        *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyzé"),
    ]
    cased = wordpiece_tokenizer(vocabulary, lowercase=False)
    text = [["café and été.", "the élève and the café."] for _ in range(30)]
    nfd = [[unicodedata.normalize("NFD", s) for s in doc] for doc in text]
    corpus = write_documents(tmp_path / "nfd.txt", nfd)
    prepared = prepare_corpus(corpus, cased, tmp_path / "cache", PreparationConfig(max_seq_length=32))
    assert prepared.manifest["corpus"]["unk_rate"] == 0
    assert prepared.manifest["corpus"]["nfc_normalized_lines"] == 60
    assert codes(prepared)["unnormalized_text"]["first_line"] == 1
    assert prepared.manifest["corpus_sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()


def test_documents_without_text_are_named_and_refusals_say_why(tmp_path, documents, tokenizer):
    control = ["\x01\x02\x03", "\x7f"]
    corpus = write_documents(tmp_path / "ctl.txt", [documents[0], control, documents[1], control])
    prepared = prepare_corpus(
        corpus, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64, eval_fraction=0)
    )
    warning = codes(prepared)["documents_without_text"]
    first = len(documents[0]) + 2
    assert warning["count"] == 2 and warning["first_line"] == first
    assert f"line(s) {first}, {first + len(documents[1]) + 4}" in warning["message"]
    assert prepared.manifest["corpus"]["documents_without_text"] == 2
    # Held-out documents would leave too few: the refusal says that two documents have no text.
    with pytest.raises(PreparationError) as refused:
        prepare_corpus(
            corpus, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64, eval_fraction=0.3)
        )
    assert "2 of its 4 documents have no text" in str(refused.value)
    one = write_documents(tmp_path / "one.txt", [documents[0], control])
    with pytest.raises(PreparationError) as refused:
        prepare_corpus(one, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64))
    message = str(refused.value)
    assert "1 usable document" in message and "no text" in message and "nsp to false" in message


def test_one_document_trains_mlm_only_with_a_contiguous_held_out_block(tmp_path, tokenizer):
    # 60 numbered sentences of one document: each token run can be traced to its sentence.
    rng = random.Random(3)
    words = [word for word in FUNCTION_WORDS if len(tokenizer.tokenize(word)) == 1]
    sentences = [" ".join(rng.choices(words, k=12)) + "." for _ in range(60)]
    corpus = write_documents(tmp_path / "book.txt", [sentences])
    with pytest.raises(PreparationError, match="next-sentence prediction needs at least 2") as refused:
        prepare_corpus(corpus, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=32))
    assert "nsp to false" in str(refused.value)

    prepared = prepare_corpus(
        corpus, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64, nsp=False)
    )
    assert prepared.warnings == []  # one document is no problem without NSP
    held_out = prepared.eval
    assert held_out is not None and len(prepared.train) > 10
    sentence_of: dict[tuple[int, ...], int] = {}  # every 5-gram of tokens names its sentence (checked)
    for i, sentence in enumerate(sentences):
        ids = tokenizer(sentence, add_special_tokens=False)["input_ids"]
        for j in range(len(ids) - 4):
            assert sentence_of.setdefault(tuple(ids[j : j + 5]), i) == i

    def sentences_in(split):
        found = set()
        for k in range(len(split)):
            ids = split[k]["input_ids"].tolist()
            found.update(
                sentence_of[g] for j in range(len(ids) - 4) if (g := tuple(ids[j : j + 5])) in sentence_of
            )
        return found

    evaluated, trained = sentences_in(held_out), sentences_in(prepared.train)
    assert len(evaluated) == 3  # 5% of 60 sentences, in one block
    assert max(evaluated) - min(evaluated) == 2
    assert not evaluated & trained and len(trained) == 57
    with pytest.raises(PreparationError, match="eval_fraction"):
        prepare_corpus(
            corpus,
            tokenizer,
            tmp_path / "cache",
            PreparationConfig(max_seq_length=32, nsp=False, eval_documents=1),
        )


def test_whole_word_masking_that_cannot_work_is_refused(tmp_path, documents, tokenizer):
    chinese = write_documents(tmp_path / "zh.txt", [["这是一个用中文写的句子。", "它有很多汉字。"]] * 20)
    with pytest.raises(PreparationError, match="whole_word_mask") as refused:
        prepare_corpus(chinese, tokenizer, tmp_path / "cache", PreparationConfig(whole_word_mask=True))
    assert "without spaces" in str(refused.value)
    # A vocabulary that marks continuations otherwise has no words to find.
    vocabulary = [
        *SPECIAL_TOKENS,
        *FUNCTION_WORDS,
        *"abcdefghijklmnopqrstuvwxyz.",
        *(f"@@{c}" for c in "abcdefghijklmnopqrstuvwxyz"),
    ]
    corpus = write_documents(tmp_path / "en.txt", documents[:20])
    with pytest.raises(PreparationError, match="'##'"):
        prepare_corpus(
            corpus,
            wordpiece_tokenizer(vocabulary, lowercase=True, prefix="@@"),
            tmp_path / "cache",
            PreparationConfig(whole_word_mask=True),
        )


def test_an_eval_corpus_with_held_out_settings_is_refused(tmp_path, small_corpus, tokenizer):
    with pytest.raises(
        HyperparameterError, match=r"^eval_documents: eval_documents=4 .* \(eval_corpus\)"
    ) as e:
        prepare_corpus(
            small_corpus, tokenizer, tmp_path, PreparationConfig(eval_documents=4), eval_corpus=small_corpus
        )
    assert e.value.errors[0][0] == "eval_documents" and not any(tmp_path.iterdir())


def test_every_warning_reaches_the_manifest_with_its_source(tmp_path, documents, small_corpus, tokenizer):
    flagged = write_documents(tmp_path / "flagged.txt", [*documents[:30], documents[0], ["Lonely."]])
    prepared = prepare_corpus(
        small_corpus, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64), eval_corpus=flagged
    )
    assert [(w.code, w.source) for w in prepared.warnings] == [
        ("one_sentence_documents", "eval_corpus"),
        ("duplicate_documents", "eval_corpus"),
        ("eval_overlaps_training", "eval_corpus"),  # its first 30 documents are training documents
    ]
    assert prepared.manifest["warnings"] == [w.model_dump(exclude_none=True) for w in prepared.warnings]
    reference = prepare_eval_corpus(
        flagged, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64)
    )
    assert {w.source for w in reference.warnings} == {"reference_corpus"}
    assert prepared.manifest["splits"]["train"]["tokens_used_share"] > 0.8


def test_a_hold_out_too_large_says_what_would_work(tmp_path, documents, tokenizer):
    two = write_documents(tmp_path / "two.txt", documents[:2])
    with pytest.raises(
        PreparationError, match=r"leaves 0 for training .*: set eval_fraction to 0 \(any other"
    ):
        prepare_corpus(
            two, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64, eval_fraction=0.01)
        )
    sixty = write_documents(tmp_path / "sixty.txt", documents[:60])
    with pytest.raises(
        PreparationError, match=r"holding out 100 .* leaves 0 for training .*: lower eval_documents"
    ):
        prepare_corpus(
            sixty, tokenizer, tmp_path / "cache", PreparationConfig(max_seq_length=64, eval_documents=100)
        )


def test_an_eval_corpus_that_repeats_training_documents_warns(tmp_path, documents, tokenizer):
    corpus = write_documents(tmp_path / "train.txt", documents[:60])
    eval_corpus = write_documents(tmp_path / "eval.txt", [*documents[100:110], *documents[5:8]])
    config = PreparationConfig(max_seq_length=64)
    prepared = prepare_corpus(corpus, tokenizer, tmp_path / "cache", config, eval_corpus=eval_corpus)
    warning = codes(prepared)["eval_overlaps_training"]
    assert (warning["count"], warning["source"]) == (3, "eval_corpus")
    assert "3 of the 13 documents of the eval corpus are also in the training corpus" in warning["message"]
    itself = prepare_corpus(corpus, tokenizer, tmp_path / "cache", config, eval_corpus=corpus)
    assert codes(itself)["eval_overlaps_training"]["count"] == 60
    apart = prepare_corpus(
        corpus,
        tokenizer,
        tmp_path / "cache",
        config,
        eval_corpus=write_documents(tmp_path / "apart.txt", documents[100:110]),
    )
    assert "eval_overlaps_training" not in codes(apart)
