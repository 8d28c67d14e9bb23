"""Domain vocabulary (add_domain_tokens): tokenization statistics, the choice of words, the extended
tokenizer and embeddings on tiny BERTs, and a run that adds words, is interrupted, resumes and exports a
model that loads with from_pretrained."""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support import save_checkpoint, tiny_config, tiny_run_hyperparameters, wordpiece_tokenizer
from tests.synthetic import synthetic_documents, synthetic_vocabulary
from worker.pretraining.corpus import iter_documents
from worker.pretraining.engine import run_pretraining
from worker.pretraining.layout import MODEL_MANIFEST
from worker.pretraining.prepare import prepare_corpus, tokenize_corpus, tokenizer_fingerprint
from worker.pretraining.records import (
    LogLine,
    ModelManifest,
    Progress,
    TokenizationStats,
    TrainingRecord,
    TrainingStarted,
    VocabularyExtension,
)
from worker.pretraining.tokenizer import load_tokenizer
from worker.pretraining.vocabulary import (
    VocabularyError,
    add_domain_vocabulary,
    count_words,
    domain_words,
    extend_tokenizer,
    tokenization_stats,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [".", ",", "the", "is", "a", "of", "kin", "##ase", "##s", "phos", "##kin", "en", "##zy", "##me"]
WORDS += ["lip", "##id", "1", "##9"]
# kinase 60 times, enzyme and lipid 25 (a tie), zeta 22 (all [UNK]); below the minimum of 20 or not
# words: phoskinase (5), 1999 (40, a number), ∑ (35, [UNK] but no letter).
LINES = [
    *["The kinase is a kinase."] * 30,
    *["The enzyme of the lipid."] * 25,
    *["The zeta."] * 22,
    *["Phoskinase, 1999."] * 5,
    *["1999 ∑"] * 35,
]
EXPECTED = ["kinase", "enzyme", "lipid", "zeta"]


def _tiny_bert(vocabulary: list[str], seed: int = 0) -> tuple[Any, Any]:
    from transformers import BertForPreTraining

    tokenizer = wordpiece_tokenizer(vocabulary)
    torch.manual_seed(seed)
    return BertForPreTraining(tiny_config(tokenizer)), tokenizer


def test_tokenization_stats_count_the_tokenizers_words() -> None:
    tokenizer = wordpiece_tokenizer([*SPECIALS, *WORDS])
    # kinase | , | the | kinase | ! -> kin ##ase | , | the | kin ##ase | [UNK] ("!" is not in the vocabulary)
    stats = tokenization_stats(["Kinase, the KINASE!"], tokenizer)
    assert stats == TokenizationStats(words=5, unk_rate=0.2, wordpieces_per_word=1.4)
    assert tokenization_stats([], tokenizer) == TokenizationStats(
        words=0, unk_rate=0.0, wordpieces_per_word=0.0
    )


def test_the_preparation_reports_the_same_wordpieces_per_word(tmp_path: Path, minilm_dir: Path) -> None:
    # A real BERT vocabulary on text with punctuation, accents and a character it lacks ([UNK]).
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "The enzyme's kinase-domain binds ATP (twice), naïvely.\nCafé 😀 au lait: 3.14 units.\n\n"
        "A second document, with phosphokinases.\nAnd a second sentence!\n",
        encoding="utf-8",
    )
    tokenizer = load_tokenizer(minilm_dir)
    tokenized = tokenize_corpus(corpus, tokenizer)
    stats = tokenization_stats(chain.from_iterable(iter_documents(corpus)), tokenizer)
    assert tokenized.words == stats.words == 37  # punctuation marks are words
    assert stats.wordpieces_per_word == round(tokenized.tokens / tokenized.words, 4)
    assert stats.unk_rate == round(1 / 37, 6)  # the emoji


def test_domain_words_most_frequent_first_skipping_numbers_and_rare_words() -> None:
    tokenizer = wordpiece_tokenizer([*SPECIALS, *WORDS])
    counts = count_words(LINES, tokenizer)
    chosen = domain_words(counts, tokenizer, limit=10, min_count=20)
    assert [(w.word, w.count) for w in chosen] == [
        ("kinase", 60),
        ("enzyme", 25),
        ("lipid", 25),
        ("zeta", 22),
    ]
    assert chosen[0].pieces == ("kin", "##ase") and chosen[3].pieces == ("[UNK]",)
    assert [w.word for w in domain_words(counts, tokenizer, limit=2, min_count=20)] == ["kinase", "enzyme"]
    assert [w.word for w in domain_words(counts, tokenizer, limit=10, min_count=5)][-1] == "phoskinase"
    assert domain_words(counts, tokenizer, limit=0, min_count=1) == []


@pytest.mark.parametrize("unused", [2, 0], ids=["unused-rows", "no-unused-rows"])
def test_extension_makes_each_word_one_token_initialized_as_its_pieces_mean(unused: int) -> None:
    vocabulary = [*SPECIALS, *(f"[unused{k}]" for k in range(unused)), *WORDS]
    model, tokenizer = _tiny_bert(vocabulary)
    embeddings = model.bert.embeddings.word_embeddings.weight.detach().clone()
    bias = model.cls.predictions.bias.detach().clone()

    extended, report = add_domain_vocabulary(model, tokenizer, LINES, limit=10, min_count=20)

    assert [token.token for token in report.added] == EXPECTED
    slots = [(token.slot, token.id, token.replaced) for token in report.added]
    n = len(vocabulary)
    if unused:
        expected = [("unused", 5, "[unused0]"), ("unused", 6, "[unused1]")]
        assert slots == [*expected, ("appended", n, None), ("appended", n + 1, None)]
    else:
        assert slots == [("appended", n + k, None) for k in range(4)]
    assert report.resized_to == 64 and report.vocab_size_before == n
    assert len(extended) == n + 4 - unused
    # Real vocabulary entries: the word is one token (after the normalizer: case), a longer word that
    # contains it is cut as before, and one that starts with it continues with its pieces.
    for token in report.added:
        assert extended(token.token.upper(), add_special_tokens=False)["input_ids"] == [token.id]
    assert extended.tokenize("phoskinase") == tokenizer.tokenize("phoskinase") == ["phos", "##kin", "##ase"]
    assert extended.tokenize("kinases") == ["kinase", "##s"]
    assert tokenizer_fingerprint(extended) != tokenizer_fingerprint(tokenizer)  # a new prepared-data key

    weight = model.bert.embeddings.word_embeddings.weight
    assert weight.shape[0] == model.config.vocab_size == 64
    assert model.cls.predictions.decoder.weight is weight  # the MLM decoder stays tied
    assert model.cls.predictions.bias.shape == (64,)
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    for token in report.added:
        ids = tokenizer.convert_tokens_to_ids(token.pieces)
        assert torch.allclose(weight[token.id], embeddings[ids].mean(0))
        assert torch.allclose(model.cls.predictions.bias[token.id], bias[ids].mean())
    replaced = {token.id for token in report.added}
    kept = [i for i in range(n) if i not in replaced]
    assert torch.equal(weight[kept], embeddings[kept])
    padding = weight[n + 4 - unused :]  # rows no word takes: the mean of the original rows
    assert torch.allclose(padding, embeddings.mean(0).expand_as(padding))
    ids = extended("the kinase of the zeta", return_tensors="pt")
    assert model(**ids).prediction_logits.shape[-1] == 64

    assert report.before.words == report.after.words
    assert report.after.wordpieces_per_word < report.before.wordpieces_per_word
    assert report.after.unk_rate == pytest.approx(35 / report.before.words, abs=1e-6)  # only ∑ is left
    assert report.before.unk_rate == pytest.approx(57 / report.before.words, abs=1e-6)  # ∑ and zeta


def test_extension_is_deterministic_and_skips_placeholders_that_are_added_tokens() -> None:
    vocabulary = [*SPECIALS, "[unused0]", "[unused1]", *WORDS]
    results = []
    for seed in (0, 0):
        model, tokenizer = _tiny_bert(vocabulary, seed)
        tokenizer.add_tokens(["[unused0]"], special_tokens=True)  # registered as an added token: not free
        extended, report = add_domain_vocabulary(model, tokenizer, LINES, limit=2, min_count=20)
        results.append((extended.backend_tokenizer.to_str(), report, model.state_dict()))
    (first_json, first, first_weights), (second_json, second, second_weights) = results
    assert first_json == second_json and first == second
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)
    assert [(t.token, t.replaced) for t in first.added] == [("kinase", "[unused1]"), ("enzyme", None)]


def test_nothing_qualifies_and_a_tokenizer_that_is_not_wordpiece() -> None:
    model, tokenizer = _tiny_bert([*SPECIALS, *WORDS])
    before = model.state_dict()["bert.embeddings.word_embeddings.weight"].clone()
    same, report = add_domain_vocabulary(model, tokenizer, LINES, limit=5, min_count=1000)
    assert same is tokenizer and report.added == [] and report.after == report.before
    assert report.resized_to is None and "unchanged" in report.summary()
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, before)

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    word_level = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    with pytest.raises(VocabularyError, match="WordLevel"):
        extend_tokenizer(other, ["kinase"])


# -- the run ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unused_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT whose vocabulary (the synthetic one) has three [unusedK] rows."""
    vocabulary = synthetic_vocabulary(synthetic_documents())
    vocabulary = [*vocabulary[:5], "[unused0]", "[unused1]", "[unused2]", *vocabulary[5:]]
    model, tokenizer = _tiny_bert(vocabulary)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("unused-bert"))


@pytest.mark.slow
def test_a_run_adds_words_resumes_and_exports_a_loadable_model(
    tmp_path: Path, unused_bert_dir: Path, tiny_corpus: Path, cache_dir: Path
) -> None:
    from transformers import AutoTokenizer, BertForSequenceClassification

    out = tmp_path / "run"
    h = tiny_run_hyperparameters(
        max_steps=4,
        checkpoint_every_steps=2,
        eval_every_steps=0,
        add_domain_tokens=5,
        domain_token_min_count=5,
    )
    first: list[TrainingRecord] = []

    def stop_after_two() -> bool:
        return any(isinstance(r, Progress) and r.step >= 2 for r in first)

    cancelled = run_pretraining(
        unused_bert_dir,
        tiny_corpus,
        out,
        h,
        cache_dir=cache_dir,
        sink=first.append,
        should_stop=stop_after_two,
    )
    assert cancelled.status == "cancelled" and cancelled.steps == 2
    second: list[TrainingRecord] = []
    result = run_pretraining(unused_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir, sink=second.append)
    assert result.status == "completed" and result.resumed_from == out / "checkpoints" / "checkpoint-2"

    vocabulary = result.vocabulary
    assert vocabulary is not None and vocabulary == cancelled.vocabulary  # rebuilt identically
    started = [r for r in second if isinstance(r, TrainingStarted)]
    assert started[0].vocabulary == vocabulary
    assert any(isinstance(r, LogLine) and r.message.startswith("added 5 domain words") for r in second)
    assert [t.slot for t in vocabulary.added] == ["unused"] * 3 + ["appended"] * 2
    assert [t.id for t in vocabulary.added[:3]] == [5, 6, 7]
    assert vocabulary.resized_to is not None and vocabulary.resized_to % 64 == 0
    assert vocabulary.after.wordpieces_per_word < vocabulary.before.wordpieces_per_word
    manifest = ModelManifest.model_validate_json((out / "model" / MODEL_MANIFEST).read_text())
    assert manifest.vocabulary == vocabulary
    saved = json.loads((out / "result.json").read_text())
    assert VocabularyExtension.model_validate(saved["vocabulary"]) == vocabulary

    base = load_tokenizer(unused_bert_dir)  # the prepared data follows the extended tokenizer
    plain = prepare_corpus(tiny_corpus, base, cache_dir, h.preparation())
    assert result.data_key != plain.key

    # The exported model and a checkpoint load with from_pretrained, the words one token each.
    model = BertForSequenceClassification.from_pretrained(out / "model", num_labels=2)
    assert model.config.vocab_size == vocabulary.resized_to
    for directory in (out / "model", out / "checkpoints" / "checkpoint-4"):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        for token in vocabulary.added:
            assert tokenizer(token.token, add_special_tokens=False)["input_ids"] == [token.id]
    inputs = tokenizer(" ".join(t.token for t in vocabulary.added), return_tensors="pt")
    assert model(**inputs).logits.shape == (1, 2)


@pytest.mark.slow
def test_add_domain_tokens_zero_changes_nothing(
    tmp_path: Path, unused_bert_dir: Path, tiny_corpus: Path, cache_dir: Path
) -> None:
    h = tiny_run_hyperparameters(max_steps=1, eval_every_steps=0, checkpoint_every_steps=0)
    result = run_pretraining(unused_bert_dir, tiny_corpus, tmp_path / "run", h, cache_dir=cache_dir)
    assert result.vocabulary is None
    base = load_tokenizer(unused_bert_dir)
    assert result.data_key == prepare_corpus(tiny_corpus, base, cache_dir, h.preparation()).key
    exported = load_tokenizer(tmp_path / "run" / "model")
    assert exported.get_vocab() == base.get_vocab()
