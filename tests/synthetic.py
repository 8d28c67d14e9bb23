"""Test text written by us, the same on every machine: a corpus of made-up documents and a WordPiece
vocabulary built from it by a fixed rule (no trainer: tokenizers' WordPiece trainer is not deterministic,
huggingface/tokenizers#1794, and text taken from the machine differs between Python builds).

Documents have a topic (a dozen content words they keep coming back to) among function words and words
of the whole lexicon, so a model has something to learn: masked words are often predictable from their
document, and a sentence from another document reads differently (next-sentence prediction). Content
words are made of syllables; the frequent ones are whole-word tokens, the rarer split into syllable
pieces (``ba ##ko ##ti``), as real WordPiece vocabularies do.
"""

from __future__ import annotations

import random
from collections import Counter
from functools import lru_cache
from itertools import accumulate

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
SYLLABLES = tuple(c + v for c in _CONSONANTS for v in _VOWELS)
FUNCTION_WORDS = [
    "the",
    "a",
    "an",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "by",
    "this",
    "from",
    "or",
    "are",
    "be",
    "at",
    "which",
    "when",
    "not",
    "each",
    "its",
    "into",
    "than",
    "then",
    "also",
    "can",
    "may",
    "one",
    "two",
    "all",
    "some",
    "their",
    "other",
    "more",
    "only",
]
LEXICON_SIZE = 4000
WHOLE_WORDS = 1200  # the most frequent content words get a token of their own


def _lexicon(rng: random.Random) -> list[str]:
    words: list[str] = []
    seen: set[str] = set(FUNCTION_WORDS)
    while len(words) < LEXICON_SIZE:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3, 3, 3, 4))))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


@lru_cache(maxsize=4)
def synthetic_documents(count: int = 1200, seed: int = 0) -> tuple[tuple[str, ...], ...]:
    """``count`` documents of 2 to 40 sentences (mean about 11) of 6 to 30 words, one sentence per string."""
    rng = random.Random(seed)
    lexicon = _lexicon(rng)
    zipf = list(accumulate(1.0 / (rank + 1) for rank in range(len(lexicon))))  # Zipf's law
    documents = []
    for _ in range(count):
        topic = rng.choices(lexicon, cum_weights=zipf, k=12)
        sentences = []
        for _ in range(min(40, 2 + int(rng.expovariate(1 / 10)))):
            words = []
            for _ in range(rng.randint(6, 30)):
                draw = rng.random()
                if draw < 0.35:
                    words.append(rng.choice(FUNCTION_WORDS))
                elif draw < 0.75:
                    words.append(rng.choice(topic))
                else:
                    words.append(rng.choices(lexicon, cum_weights=zipf)[0])
                if rng.random() < 0.05:
                    words[-1] += ","
            words[-1] = words[-1].rstrip(",")
            sentences.append(" ".join(words).capitalize() + ".")
        documents.append(tuple(sentences))
    return tuple(documents)


def synthetic_vocabulary(documents: tuple[tuple[str, ...], ...]) -> list[str]:
    """A WordPiece vocabulary for ``documents``: special tokens, punctuation, letters, digits and syllables
    (word initial and ``##`` continuations), the function words and the WHOLE_WORDS most frequent content
    words (ties broken alphabetically)."""
    counts: Counter[str] = Counter(
        word.strip(".,").lower()
        for document in documents
        for sentence in document
        for word in sentence.split()
    )
    function = set(FUNCTION_WORDS)
    content = sorted((w for w in counts if w not in function), key=lambda w: (-counts[w], w))[:WHOLE_WORDS]
    characters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(digit) for digit in range(10)]
    pieces = [*characters, *SYLLABLES]  # any lower-case word or number tokenizes without [UNK]
    tokens = [*SPECIAL_TOKENS, ".", ",", *pieces, *(f"##{p}" for p in pieces), *FUNCTION_WORDS, *content]
    return list(dict.fromkeys(tokens))  # "a" is a letter and a word
