"""Instance creation: Google's NSP algorithm over a real tokenized corpus."""

from __future__ import annotations

import random

import numpy as np
import pytest

from worker.pretraining.instances import (
    IS_NEXT,
    RANDOM_NEXT,
    InstancePlan,
    TokenizedDocuments,
    _truncate_pair,
    materialize,
    plan_instances,
)


def tokenize_documents(tokenizer, documents: list[list[str]]) -> TokenizedDocuments:
    sentences = [s for doc in documents for s in doc]
    ids = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    keep = [i for i, seq in enumerate(ids) if seq]
    assert len(keep) == len(ids), "test documents should not contain empty sentences"
    lengths = np.array([len(seq) for seq in ids])
    sentence_bounds = np.concatenate([[0], np.cumsum(lengths)])
    document_bounds = np.concatenate([[0], np.cumsum([len(d) for d in documents])])
    flat = np.fromiter((t for seq in ids for t in seq), dtype=np.int32)
    return TokenizedDocuments(flat, sentence_bounds, document_bounds)


@pytest.fixture(scope="module")
def tokenized(tokenizer, documents) -> TokenizedDocuments:
    # Long documents, like the articles of a real pre-training corpus: Google's algorithm only gives
    # half IsNext pairs when few chunks are single sentences (those are always paired at random).
    long_documents = [
        [sentence for doc in documents[i : i + 20] for sentence in doc] for i in range(0, len(documents), 20)
    ]
    return tokenize_documents(tokenizer, long_documents)


def collect(docs: TokenizedDocuments, *, seed: int = 1, **kwargs) -> InstancePlan:
    options = {"max_seq_length": 128, "short_seq_prob": 0.1, "nsp": True, **kwargs}
    order = list(range(docs.num_documents))
    rng = random.Random(seed)
    rng.shuffle(order)
    plan = InstancePlan.empty()
    for part in plan_instances(docs, order, rng=rng, **options):
        for name in vars(plan):
            getattr(plan, name).extend(getattr(part, name))
    return plan


def document_of(docs: TokenizedDocuments, token_offsets) -> np.ndarray:
    sentence = np.searchsorted(docs.sentence_bounds, token_offsets, side="right") - 1
    return np.searchsorted(docs.document_bounds, sentence, side="right") - 1


def test_is_next_share_is_one_half(tokenized):
    # Five seeds over fixed text (tests/synthetic.py): about 14,600 pairs, a standard error of 0.004; the
    # rest of the distance to 0.5 is Google's rule that single-sentence chunks are always random.
    labels = np.concatenate(
        [
            np.array(collect(tokenized, short_seq_prob=0.0, seed=seed).next_sentence_label)
            for seed in range(1, 6)
        ]
    )
    assert len(labels) > 14_000
    assert abs((labels == IS_NEXT).mean() - 0.5) <= 0.03


def test_google_balance_pairs_single_sentence_chunks_always_at_random(tokenizer, documents):
    # Google's rule: a chunk of one sentence cannot be split into A and B, so B comes from another
    # document. With targets shorter than any sentence every chunk is one sentence.
    long_sentences = [[s for s in doc if len(s.split()) >= 8] for doc in documents]
    docs = tokenize_documents(tokenizer, [doc for doc in long_sentences if doc])
    plan = collect(docs, max_seq_length=8, short_seq_prob=0.0, balance="google")
    a_sentences = np.searchsorted(docs.sentence_bounds, np.array(plan.a_start), side="right")
    assert len(plan) > 1000
    assert set(plan.next_sentence_label) == {RANDOM_NEXT}
    assert len(set(a_sentences.tolist())) == len(plan)  # every sentence opens exactly one instance


def test_random_next_segment_never_comes_from_the_same_document(tokenized):
    plan = collect(tokenized)
    labels = np.array(plan.next_sentence_label)
    doc_a = document_of(tokenized, np.array(plan.a_start))
    doc_b = document_of(tokenized, np.array(plan.b_start))
    random_next = labels == RANDOM_NEXT
    assert random_next.sum() > 1000
    assert np.all(doc_a[random_next] != doc_b[random_next])
    # An actual next segment continues A: same document, and B starts where A's sentences ended
    # (A may have been truncated at its back, so B starts at or after A's end).
    is_next = ~random_next
    assert np.all(doc_a[is_next] == doc_b[is_next])
    assert np.all(np.array(plan.b_start)[is_next] >= np.array(plan.a_end)[is_next])


def test_random_next_with_two_documents_always_uses_the_other(tokenizer):
    docs = tokenize_documents(
        tokenizer,
        [["alpha beta gamma delta.", "one two three."], ["red green blue.", "north south east west."]],
    )
    for seed in range(50):
        plan = collect(docs, seed=seed, max_seq_length=16)
        for a0, b0, label in zip(plan.a_start, plan.b_start, plan.next_sentence_label, strict=True):
            if label == RANDOM_NEXT:
                assert document_of(docs, [a0])[0] != document_of(docs, [b0])[0]


def test_lengths_fit_and_about_short_seq_prob_of_targets_are_short(tokenized, tokenizer):
    plan = collect(tokenized, max_seq_length=64, short_seq_prob=0.2)
    _, offsets, _ = materialize(
        tokenized, plan, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id
    )
    lengths = np.diff(offsets)
    assert lengths.max() <= 64
    assert lengths.min() >= 5  # [CLS] a [SEP] b [SEP]
    short = np.array(plan.short_target)
    assert abs(short.mean() - 0.2) <= 0.03
    # Short targets really give shorter sequences; full targets mostly fill the sequence.
    assert lengths[short].mean() < lengths[~short].mean() - 5
    assert np.median(lengths[~short]) >= 56


def test_materialized_layout_and_segment_boundary(tokenized, tokenizer):
    plan = collect(tokenized, max_seq_length=48)
    values, offsets, b_start = materialize(
        tokenized, plan, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id
    )
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for k in range(0, len(plan), 97):
        seq = values[offsets[k] : offsets[k + 1]]
        a = tokenized.token_ids[plan.a_start[k] : plan.a_end[k]]
        b = tokenized.token_ids[plan.b_start[k] : plan.b_end[k]]
        assert seq.tolist() == [cls, *a.tolist(), sep, *b.tolist(), sep]
        assert b_start[k] == len(a) + 2
        assert seq[b_start[k] - 1] == sep


def test_truncation_trims_the_longer_side_until_it_fits():
    rng = random.Random(0)
    fronts = 0
    for _ in range(2000):
        a0, a1, b0, b1, truncated = _truncate_pair(0, 100, 1000, 1030, 61, rng)
        assert truncated
        len_a, len_b = a1 - a0, b1 - b0
        assert len_a + len_b == 61
        # Google's loop trims A (the longer) down to B's length first, then alternates.
        assert (len_a, len_b) == (31, 30)
        assert 0 <= a0 <= 69 and a1 <= 100 and b0 >= 1000 and b1 <= 1030
        fronts += a0
    # Each trimmed token comes from the front with probability 1/2: 69 trimmed from A on average.
    assert abs(fronts / 2000 - 69 / 2) < 1.0
    assert _truncate_pair(0, 10, 20, 25, 61, rng) == (0, 10, 20, 25, False)


def test_same_seed_same_instances_other_seed_different(tokenized):
    first, again, other = collect(tokenized, seed=5), collect(tokenized, seed=5), collect(tokenized, seed=6)
    assert vars(first) == vars(again)
    assert first.a_start != other.a_start


def test_nsp_off_packs_single_segments_to_full_length(tokenized, tokenizer):
    plan = collect(tokenized, nsp=False, max_seq_length=64, short_seq_prob=0.0)
    values, offsets, b_start = materialize(
        tokenized, plan, cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id
    )
    lengths = np.diff(offsets)
    assert set(plan.next_sentence_label) == {IS_NEXT}
    assert np.all(b_start == lengths)  # one segment: token type 0 everywhere
    assert lengths.max() <= 64
    seqs_with_one_sep = [
        k
        for k in range(len(plan))
        if np.count_nonzero(values[offsets[k] : offsets[k + 1]] == tokenizer.sep_token_id) == 1
    ]
    assert len(seqs_with_one_sep) == len(plan)
    # Whole sentences of a document are accumulated: far longer than single sentences on average.
    sentence_lengths = np.diff(tokenized.sentence_bounds)
    assert lengths.mean() > 2 * sentence_lengths.mean()
    # Every token of the documents is used exactly once: a chunk closes before the sentence that would
    # overflow it, so only sentences longer than a segment (62 tokens) lose their excess.
    lost = np.maximum(sentence_lengths - 62, 0).sum()
    assert lengths.sum() - 2 * len(plan) == len(tokenized.token_ids) - lost


def test_nsp_needs_two_documents(tokenizer):
    docs = tokenize_documents(tokenizer, [["just one document.", "with two sentences."]])
    with pytest.raises(ValueError, match="at least 2 documents"):
        collect(docs)


# -- balanced next-sentence labels (the default) ---------------------------------------------------------


def sentence_of(docs: TokenizedDocuments, token_offsets) -> np.ndarray:
    return np.searchsorted(docs.sentence_bounds, token_offsets, side="right") - 1


@pytest.fixture(scope="module")
def corpora(tokenizer, documents, tokenized) -> dict[str, TokenizedDocuments]:
    """Corpora whose documents all hold at least two sentences, from easy to hard for IsNext."""
    return {
        "as written (2 to 40 sentences)": tokenize_documents(tokenizer, documents[:600]),
        "long documents": tokenized,
        "two sentences each": tokenize_documents(tokenizer, [doc[:2] for doc in documents[:1200]]),
        "three sentences each": tokenize_documents(
            tokenizer, [doc[:3] for doc in documents if len(doc) >= 3]
        ),
    }


@pytest.mark.parametrize(
    "corpus",
    ["as written (2 to 40 sentences)", "long documents", "two sentences each", "three sentences each"],
)
@pytest.mark.parametrize(("max_seq_length", "short_seq_prob"), [(128, 0.1), (64, 0.0), (16, 0.1), (8, 0.0)])
def test_balanced_is_next_share_is_one_half_on_documents_of_two_sentences(
    corpora, corpus, max_seq_length, short_seq_prob
):
    # max_seq_length 8: every sentence fills the target alone, where Google's rule gives no IsNext at all.
    docs = corpora[corpus]
    for seed in (1, 2, 3):
        plan = collect(docs, seed=seed, max_seq_length=max_seq_length, short_seq_prob=short_seq_prob)
        labels = np.array(plan.next_sentence_label)
        assert len(labels) > 1000
        assert abs((labels == IS_NEXT).mean() - 0.5) <= 0.02, (corpus, seed)


def test_google_balance_stays_below_one_half_where_balanced_does_not(corpora):
    docs = corpora["two sentences each"]
    google = np.array(collect(docs, max_seq_length=64, balance="google").next_sentence_label)
    balanced = np.array(collect(docs, max_seq_length=64).next_sentence_label)
    assert (google == IS_NEXT).mean() < 0.4  # each document's last sentence alone is always random
    assert abs((balanced == IS_NEXT).mean() - 0.5) <= 0.02


@pytest.mark.parametrize("max_seq_length", [8, 64])
def test_balanced_pairs_keep_the_structure(corpora, max_seq_length):
    # A is a run of sentences of one document; an IsNext B is the sentence run right after A's last
    # sentence in the same document; a random B comes from another document.
    docs = corpora["as written (2 to 40 sentences)"]
    plan = collect(docs, max_seq_length=max_seq_length, short_seq_prob=0.0)
    a0, a1, b0, b1 = (np.array(column) for column in (plan.a_start, plan.a_end, plan.b_start, plan.b_end))
    labels = np.array(plan.next_sentence_label)
    assert np.all(document_of(docs, a0) == document_of(docs, a1 - 1))
    assert np.all(document_of(docs, b0) == document_of(docs, b1 - 1))
    is_next = labels == IS_NEXT
    assert np.all(document_of(docs, a0[is_next]) == document_of(docs, b0[is_next]))
    assert np.all(document_of(docs, a0[~is_next]) != document_of(docs, b0[~is_next]))
    # B starts where A ends, unless truncation trimmed tokens between them.
    whole = is_next & ~np.array(plan.truncated)
    assert whole.sum() > 100 or max_seq_length == 8  # there, sentences are longer than the target
    assert np.all(b0[whole] == a1[whole])
    assert np.all(b0[is_next] >= a1[is_next])
    if max_seq_length == 8:  # every A is one sentence here: IsNext comes from A's true next sentence
        assert is_next.sum() > 1000
        assert np.all(sentence_of(docs, b0[is_next]) == sentence_of(docs, a0[is_next]) + 1)


# -- planning time ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_planning_is_linear_in_a_long_document():
    # Two documents of 300,000 sentences each. Drawing a random B used to copy the rest of the other
    # document's sentence offsets (minutes here); it is now a binary search (seconds). No timing inside
    # the test: the timeout catches a quadratic planner.
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 9, size=600_000)
    sentence_bounds = np.concatenate([[0], np.cumsum(lengths)])
    docs = TokenizedDocuments(
        np.zeros(int(sentence_bounds[-1]), dtype=np.int32), sentence_bounds, np.array([0, 300_000, 600_000])
    )
    for balance in ("balanced", "google"):
        plan = collect(docs, max_seq_length=16, short_seq_prob=0.0, balance=balance)
        assert len(plan) > 100_000
        labels = np.array(plan.next_sentence_label)
        assert (labels == RANDOM_NEXT).sum() > 50_000
