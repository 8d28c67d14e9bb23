"""The checkpoint's tokenizer, checked once for what pre-training needs: the loader of the base model and
the data preparation both call :func:`load_tokenizer`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from worker.pretraining.model_files import BaseModelError

__all__ = ["REQUIRED_SPECIAL_TOKENS", "load_tokenizer", "quiet_transformers"]

# [CLS] A [SEP] B [SEP], [MASK] at predicted positions, [PAD] in batches.
REQUIRED_SPECIAL_TOKENS = ("cls_token", "sep_token", "mask_token", "pad_token")


def load_tokenizer(source: Any, *, label: str | None = None) -> Any:
    """A fast (Rust) tokenizer with BERT's special tokens, from a directory or a hub id, or ``source``
    itself when it already is a tokenizer object. Remote code is never run.

    Raises BaseModelError (naming ``label``, default ``source``) when it cannot be loaded, is not fast, or
    lacks one of :data:`REQUIRED_SPECIAL_TOKENS`.
    """
    name = label or str(source)
    tokenizer = source
    if isinstance(source, (str, Path)):
        from transformers import AutoTokenizer

        try:
            with quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
        except Exception as exc:
            raise BaseModelError(f"{name}: no usable tokenizer ({type(exc).__name__}: {exc})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise BaseModelError(f"{name}: the tokenizer is not a fast (Rust) tokenizer; add its tokenizer.json")
    missing = [token for token in REQUIRED_SPECIAL_TOKENS if getattr(tokenizer, token, None) is None]
    if missing:
        raise BaseModelError(
            f"{name}: the tokenizer lacks {', '.join(missing)}; BERT pre-training needs them"
        )
    return tokenizer


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading reports and progress bars for the duration (bertpt reports what
    matters itself, as records and warnings)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()
