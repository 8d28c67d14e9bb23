"""NSP/MLM training instances from a tokenized corpus, the way google-research/bert's
``create_pretraining_data.py`` builds them, with its known defects fixed.

The corpus is held as one flat array of token ids with sentence and document boundaries
(:class:`TokenizedDocuments`). Because the sentences of a document are contiguous in that array, an
instance ``[CLS] A [SEP] B [SEP]`` is fully described by two token ranges ``A = [a0, a1)`` and
``B = [b0, b1)``. :func:`plan_instances` walks the documents with Google's algorithm in plain Python at
sentence granularity and emits only those ranges; :func:`materialize` then gathers the tokens of
thousands of instances at once with numpy. No Python code ever touches individual tokens.

Differences from Google's script, all deliberate:
- a random next segment always comes from a *different* document (Google retries 10 times and can
  keep the same one, which then labels a true continuation as random), and drawing it costs the same
  whatever the length of that document (a binary search, where Google walks the sentences), so planning
  is linear in the corpus even for a book-long document;
- ``balance="balanced"`` (the default) keeps IsNext at half of the pairs: Google sends every chunk of one
  sentence to a random B, so short documents, long sentences and short targets push IsNext below one
  half (0.42 on real documentation). Here a one-sentence A whose document goes on can have its true
  next sentence as B, and the 50/50 draw leans towards the label that is behind, by ``_BALANCE_GAIN``
  per pair of difference, to make up for the pairs that can only be random (a document's lone last
  sentence). A stays a run of sentences and B its true continuation or a random other document;
  ``balance="google"`` is Google's rule, draw for draw;
- the short target length is drawn per instance, not once per document, so the share of short
  targets is ``short_seq_prob`` whatever the document lengths;
- ``truncate_seq_pair`` removes the same number of tokens from each side as Google's loop and picks
  front or back per removed token with the same 50/50 odds, but draws the split as one binomial;
- with ``nsp=False`` an instance is one segment, ``[CLS] sentences [SEP]``, packed with whole sentences
  of one document up to the full target length (RoBERTa's DOC-SENTENCES), label 0.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "InstancePlan",
    "NspBalance",
    "TokenizedDocuments",
    "instance_token_positions",
    "materialize",
    "plan_instances",
]

IS_NEXT = 0
RANDOM_NEXT = 1

NspBalance = Literal["balanced", "google"]
# Balanced NSP: P(IsNext) for a chunk that can be either is 0.5 + _BALANCE_GAIN * (random pairs - IsNext
# pairs so far), within [0, 1]. Small enough to spread a correction over several chunks (the label of a
# pair does not follow from the one before), large enough that a corpus where a third of the chunks can
# only be random still ends at 0.5 (the difference settles at a few pairs).
_BALANCE_GAIN = 0.1


@dataclass(frozen=True)
class TokenizedDocuments:
    """A tokenized corpus: ``token_ids[sentence_bounds[s]:sentence_bounds[s+1]]`` is sentence ``s``;
    sentences ``document_bounds[d]`` to ``document_bounds[d+1]`` form document ``d``."""

    token_ids: np.ndarray
    sentence_bounds: np.ndarray
    document_bounds: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.document_bounds) - 1


@dataclass
class InstancePlan:
    """Column-wise description of a batch of instances: token ranges plus bookkeeping."""

    a_start: list[int]
    a_end: list[int]
    b_start: list[int]
    b_end: list[int]
    next_sentence_label: list[int]
    short_target: list[bool]
    truncated: list[bool]

    @classmethod
    def empty(cls) -> InstancePlan:
        return cls([], [], [], [], [], [], [])

    def __len__(self) -> int:
        return len(self.a_start)

    def extend(self, other: InstancePlan) -> None:
        for name, values in vars(other).items():
            getattr(self, name).extend(values)

    def reordered(self, order: np.ndarray) -> InstancePlan:
        return InstancePlan(*([column[k] for k in order.tolist()] for column in vars(self).values()))

    def add(self, a0: int, a1: int, b0: int, b1: int, label: int, short: bool, truncated: bool) -> None:
        self.a_start.append(a0)
        self.a_end.append(a1)
        self.b_start.append(b0)
        self.b_end.append(b1)
        self.next_sentence_label.append(label)
        self.short_target.append(short)
        self.truncated.append(truncated)


def _target_length(rng: random.Random, max_num_tokens: int, short_seq_prob: float) -> tuple[int, bool]:
    """Most instances fill the whole sequence; ``short_seq_prob`` of them target a random shorter
    length so the model also sees inputs like the short ones of fine-tuning tasks."""
    if rng.random() < short_seq_prob:
        return rng.randint(2, max_num_tokens), True
    return max_num_tokens, False


def _truncate_pair(
    a0: int, a1: int, b0: int, b1: int, max_num_tokens: int, rng: random.Random
) -> tuple[int, int, int, int, bool]:
    """Google's ``truncate_seq_pair`` in closed form: the longer side loses a token until the pair
    fits, each lost token coming from the front or the back with even odds."""
    len_a, len_b = a1 - a0, b1 - b0
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return a0, a1, b0, b1, False
    # Trim the longer side down to the shorter one first, then alternate (ties trim B, as Google's
    # ``if len(a) > len(b)`` does).
    gap = abs(len_a - len_b)
    first = min(gap, excess)
    cut_a = first if len_a > len_b else 0
    cut_b = first - cut_a
    rest = excess - first
    cut_a += rest // 2
    cut_b += rest - rest // 2
    front_a = _binomial_half(rng, cut_a)
    front_b = _binomial_half(rng, cut_b)
    return a0 + front_a, a1 - (cut_a - front_a), b0 + front_b, b1 - (cut_b - front_b), True


def _binomial_half(rng: random.Random, n: int) -> int:
    """Number of heads in ``n`` fair coin flips."""
    return rng.getrandbits(n).bit_count() if n > 0 else 0


def _document_bounds(docs: TokenizedDocuments, doc: int) -> list[int]:
    """Token offsets of a document's sentences, as a small Python list (fast scalar access):
    sentence ``i`` of the document is ``token_ids[bounds[i]:bounds[i + 1]]``."""
    first, last = int(docs.document_bounds[doc]), int(docs.document_bounds[doc + 1])
    return docs.sentence_bounds[first : last + 1].tolist()


def _random_segment(docs: TokenizedDocuments, doc: int, target_b: int, rng: random.Random) -> tuple[int, int]:
    """Google's random next segment: sentences of ``doc`` from a random one on, until ``target_b``
    tokens are reached or the document ends. The end is found by a binary search over the sentence
    offsets, so the cost does not depend on the length of ``doc``."""
    first, last = int(docs.document_bounds[doc]), int(docs.document_bounds[doc + 1])
    j = rng.randint(first, last - 1)
    bounds = docs.sentence_bounds
    b0 = int(bounds[j])
    # The first sentence end at or past b0 + target_b (sentences are never empty: offsets increase),
    # at least one sentence, at most the end of the document.
    k = int(np.searchsorted(bounds, b0 + target_b, side="left"))
    return b0, int(bounds[min(max(k, j + 1), last)])


def plan_instances(
    docs: TokenizedDocuments,
    document_ids: Sequence[int],
    *,
    max_seq_length: int,
    short_seq_prob: float,
    nsp: bool,
    rng: random.Random,
    balance: NspBalance = "balanced",
) -> Iterator[InstancePlan]:
    """Walk ``document_ids`` (already in the desired order) and yield instance plans, one list per
    document (NSP) or per packed run (MLM-only). Random next segments come only from ``document_ids``.
    ``balance``: how NSP labels are drawn (see the module docstring).
    """
    if nsp:
        yield from _plan_nsp(docs, document_ids, max_seq_length, short_seq_prob, rng, balance)
    else:
        yield from _plan_packed(docs, document_ids, max_seq_length, short_seq_prob, rng)


def _plan_nsp(
    docs: TokenizedDocuments,
    document_ids: Sequence[int],
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
    balance: NspBalance,
) -> Iterator[InstancePlan]:
    if len(document_ids) < 2:
        raise ValueError("next-sentence prediction needs at least 2 documents")
    balanced = balance == "balanced"
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    n_docs = len(document_ids)
    owed = 0  # random pairs minus IsNext pairs so far (balanced labels)
    for position, doc in enumerate(document_ids):
        plan = InstancePlan.empty()
        bounds = _document_bounds(docs, doc)
        n_sentences = len(bounds) - 1
        target, short = _target_length(rng, max_num_tokens, short_seq_prob)
        chunk_start = 0  # the chunk is sentences [chunk_start, i]
        i = 0
        while i < n_sentences:
            if i == n_sentences - 1 or bounds[i + 1] - bounds[chunk_start] >= target:
                n_chunk = i + 1 - chunk_start
                a_split = chunk_start + (rng.randint(1, n_chunk - 1) if n_chunk >= 2 else 1)
                a0, a1 = bounds[chunk_start], bounds[a_split]
                if balanced:
                    # IsNext is possible unless the chunk is the document's lone last sentence.
                    can_continue = n_chunk >= 2 or i < n_sentences - 1
                    is_next_odds = min(1.0, max(0.0, 0.5 + _BALANCE_GAIN * owed))
                    random_next = not can_continue or rng.random() >= is_next_odds
                else:
                    random_next = n_chunk == 1 or rng.random() < 0.5
                if random_next:
                    label = RANDOM_NEXT
                    # A different document, guaranteed: draw among the others.
                    other = rng.randrange(n_docs - 1)
                    other_doc = document_ids[other + 1 if other >= position else other]
                    b0, b1 = _random_segment(docs, other_doc, target - (a1 - a0), rng)
                    # The chunk's sentences after A were not used: they go back into the stream.
                    i = a_split - 1
                elif n_chunk >= 2:
                    label = IS_NEXT
                    b0, b1 = a1, bounds[i + 1]
                else:
                    # One sentence filled the target on its own; its true continuation is the next
                    # sentence (the longer side is trimmed below).
                    label = IS_NEXT
                    b0, b1 = bounds[i + 1], bounds[i + 2]
                    i += 1
                a0, a1, b0, b1, truncated = _truncate_pair(a0, a1, b0, b1, max_num_tokens, rng)
                if a1 > a0 and b1 > b0:
                    plan.add(a0, a1, b0, b1, label, short, truncated)
                    owed += 1 if label == RANDOM_NEXT else -1
                chunk_start = i + 1
                target, short = _target_length(rng, max_num_tokens, short_seq_prob)
            i += 1
        yield plan


def _plan_packed(
    docs: TokenizedDocuments,
    document_ids: Sequence[int],
    max_seq_length: int,
    short_seq_prob: float,
    rng: random.Random,
) -> Iterator[InstancePlan]:
    """MLM-only: the whole target goes to one segment, ``[CLS] sentences [SEP]``, whole sentences
    accumulated within a document (RoBERTa's DOC-SENTENCES): a chunk closes before the sentence that
    would take it past its target, so no text is cut off but that of a single sentence longer than a
    segment, which keeps a random window."""
    max_num_tokens = max_seq_length - 2  # [CLS] tokens [SEP]
    for doc in document_ids:
        plan = InstancePlan.empty()
        bounds = _document_bounds(docs, doc)
        target, short = _target_length(rng, max_num_tokens, short_seq_prob)
        start = bounds[0]
        for previous, end in itertools.pairwise(bounds):
            if end - start > target and previous > start:  # the sentence [previous, end) does not fit
                _add_packed(plan, start, previous, max_num_tokens, short, rng)
                start = previous
                target, short = _target_length(rng, max_num_tokens, short_seq_prob)
        _add_packed(plan, start, bounds[-1], max_num_tokens, short, rng)
        yield plan


def _add_packed(
    plan: InstancePlan, a0: int, a1: int, max_num_tokens: int, short: bool, rng: random.Random
) -> None:
    """The chunk [a0, a1) as one MLM-only instance; a random window of it if it is one sentence longer
    than a segment."""
    truncated = a1 - a0 > max_num_tokens
    if truncated:
        offset = rng.randint(0, (a1 - a0) - max_num_tokens)
        a0, a1 = a0 + offset, a0 + offset + max_num_tokens
    if a1 > a0:
        plan.add(a0, a1, a1, a1, IS_NEXT, short, truncated)


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])`` without the loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    nonzero = lengths > 0
    starts, lengths = starts[nonzero], lengths[nonzero]
    steps = np.ones(total, dtype=np.int64)
    heads = np.cumsum(lengths)[:-1]
    steps[0] = starts[0]
    steps[heads] = starts[1:] - (starts[:-1] + lengths[:-1] - 1)
    return np.cumsum(steps)


def instance_token_positions(plan: InstancePlan) -> np.ndarray:
    """The corpus token offsets that the instances of ``plan`` hold (A's and B's, with repeats)."""
    starts = np.concatenate(
        [np.asarray(plan.a_start, dtype=np.int64), np.asarray(plan.b_start, dtype=np.int64)]
    )
    ends = np.concatenate([np.asarray(plan.a_end, dtype=np.int64), np.asarray(plan.b_end, dtype=np.int64)])
    return _concat_ranges(starts, ends - starts)


def materialize(
    docs: TokenizedDocuments,
    plan: InstancePlan,
    *,
    cls_token_id: int,
    sep_token_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of every planned instance as one flat array plus offsets.

    Returns ``(values, offsets, segment_b_start)``: instance ``k`` is
    ``values[offsets[k]:offsets[k+1]]`` = ``[CLS] A [SEP] B [SEP]`` (``[CLS] A [SEP]`` when B is empty),
    and ``segment_b_start[k]`` the index of B's first token (the token-type boundary; the sequence
    length when there is no second segment).
    """
    a0 = np.asarray(plan.a_start, dtype=np.int64)
    a1 = np.asarray(plan.a_end, dtype=np.int64)
    b0 = np.asarray(plan.b_start, dtype=np.int64)
    b1 = np.asarray(plan.b_end, dtype=np.int64)
    len_a, len_b = a1 - a0, b1 - b0
    has_b = len_b > 0
    n = len(a0)
    # Each instance is 3 or 5 pieces: CLS, A, SEP, (B, SEP). Corpus pieces are gathered in one go;
    # the special tokens' slots gather a dummy token and are overwritten after.
    one = np.ones(n, dtype=np.int64)
    zero = np.zeros(n, dtype=np.int64)
    piece_starts = np.stack([zero, a0, zero, b0, zero], axis=1)
    piece_lengths = np.stack([one, len_a, one, len_b, has_b.astype(np.int64)], axis=1)
    values = docs.token_ids[_concat_ranges(piece_starts.reshape(-1), piece_lengths.reshape(-1))]
    lengths = piece_lengths.sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values[offsets[:-1]] = cls_token_id
    values[offsets[:-1] + 1 + len_a] = sep_token_id
    values[offsets[1:][has_b] - 1] = sep_token_id
    segment_b_start = np.where(has_b, len_a + 2, lengths)
    return values, offsets, segment_b_start
