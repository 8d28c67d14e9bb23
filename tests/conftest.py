"""Shared fixtures: a real WordPiece tokenizer and tiny BERT checkpoints built locally (no hub)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.pretraining.samples import iter_docstring_documents, write_sample_corpus


@pytest.fixture(scope="session")
def docstring_documents() -> list[list[str]]:
    return list(iter_docstring_documents())


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, docstring_documents: list[list[str]]) -> Path:
    """An uncased BERT WordPiece tokenizer trained on standard-library docstrings, saved like a
    checkpoint's."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(
        (sentence for doc in docstring_documents for sentence in doc),
        vocab_size=4000,
        min_frequency=2,
        special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False,
    )
    out = tmp_path_factory.mktemp("tokenizer")
    wordpiece.save_model(str(out))  # vocab.txt, as real BERT checkpoints carry it
    tokenizer = BertTokenizerFast(
        tokenizer_object=wordpiece._tokenizer,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        do_lower_case=True,
    )
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 1.2 MB of standard-library docstrings in BERT format (several thousand documents)."""
    return write_sample_corpus(tmp_path_factory.mktemp("corpus") / "stdlib.txt")


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred documents: quick to prepare, enough for a few training steps."""
    return write_sample_corpus(tmp_path_factory.mktemp("small") / "small.txt", max_documents=300)
