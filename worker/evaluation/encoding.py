"""What fine-tuning and the probe share: a checked model directory with its tokenizer, examples tokenized once
per model, the sequence length taken from the data, padded batches, and loading a BERT checkpoint under
another head without transformers' expected load report.

A model directory may hold a ``BertForPreTraining`` (MLM and NSP heads), a ``BertModel`` (no heads, maybe
no pooler) or a ``BertForSequenceClassification`` checkpoint: loading it under another head leaves some
parameters out (the pre-training heads) and initializes others afresh (the classifier, a missing pooler).
Those are expected; anything else, such as missing encoder weights or weights of other shapes, is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worker.evaluation.labelled import LabelledExample
from worker.pretraining.model_files import (
    BaseModelError,
    inspect_model_dir,
    max_position_embeddings,
    vocabulary_error,
)
from worker.pretraining.tokenizer import load_tokenizer

__all__ = [
    "BERT_MAX_LENGTH",
    "CheckedModel",
    "EncodedExamples",
    "check_model_dir",
    "collate",
    "encode",
    "evaluation_device",
    "load_under_head",
    "resolve_max_length",
]

# BERT's position embeddings (Devlin et al. 2019): no BERT checkpoint takes longer inputs.
BERT_MAX_LENGTH = 512
# Parameters a checkpoint may lack under another head: initialized afresh, as intended.
_EXPECTED_NEW = ("classifier.", "bert.pooler.", "pooler.")


@dataclass(frozen=True)
class CheckedModel:
    """A model directory that passed the checks, its fast tokenizer and its position embeddings."""

    name: str
    path: Path
    tokenizer: Any
    max_positions: int | None


def check_model_dir(name: str, path: Path) -> CheckedModel:
    """Check that ``path`` holds a usable BERT checkpoint (config, safetensors weights, a fast tokenizer
    that fits the embeddings), before any fine-tuning starts. Raises BaseModelError naming ``name``."""
    if not path.is_dir():
        raise BaseModelError(f"{name}: {str(path)!r} is not a directory")
    try:
        config = inspect_model_dir(path, check_values=False).config
    except BaseModelError as exc:
        raise BaseModelError(f"{name}: {exc}") from None
    tokenizer = load_tokenizer(path, label=name)
    too_many = vocabulary_error(len(tokenizer), config.get("vocab_size"))
    if too_many is not None:
        raise BaseModelError(f"{name}: {too_many}")
    return CheckedModel(
        name=name, path=path, tokenizer=tokenizer, max_positions=max_position_embeddings(config)
    )


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def _without_load_report() -> Iterator[None]:
    """Drop transformers' table of missing/unexpected keys (its other messages pass): the keys are checked
    by :func:`load_under_head` instead, which tells the expected from the unexpected."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    logger.addFilter(report_filter)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.removeFilter(report_filter)
        if bars:
            hf_logging.enable_progress_bar()


def load_under_head(model_class: Any, checked: CheckedModel, **kwargs: Any) -> Any:
    """``model_class.from_pretrained(checked.path, **kwargs)`` in float32, safetensors only, offline.

    Parameters of a pre-training head left out and a fresh classifier or pooler are expected and not
    reported; missing encoder or embedding weights, or weights of other shapes, raise BaseModelError; other
    fresh parameters are logged as a warning. Call ``transformers.set_seed`` first for a reproducible
    fresh head.
    """
    try:
        with _without_load_report():
            model, info = model_class.from_pretrained(
                str(checked.path),
                output_loading_info=True,
                use_safetensors=True,
                local_files_only=True,
                dtype=torch.float32,
                **kwargs,
            )
    except Exception as exc:
        raise BaseModelError(
            f"{checked.name}: cannot load the weights ({type(exc).__name__}: {exc})"
        ) from exc
    if info.get("mismatched_keys"):
        raise BaseModelError(
            f"{checked.name}: weights with unexpected shapes: {sorted(info['mismatched_keys'])[:5]}"
        )
    missing = sorted(info.get("missing_keys") or ())
    lost = [key for key in missing if ".embeddings." in f".{key}" or ".encoder." in f".{key}"]
    if lost:
        raise BaseModelError(
            f"{checked.name}: {len(lost)} encoder parameters were not found in the weights (e.g. {lost[0]}); "
            "the checkpoint's parameter names do not match BERT's"
        )
    other = [key for key in missing if not key.startswith(_EXPECTED_NEW)]
    if other:
        logging.getLogger(__name__).warning(
            "%s: %d parameters initialized afresh (e.g. %s)", checked.name, len(other), other[0]
        )
    return model


def resolve_max_length(
    checked: CheckedModel, examples: Sequence[LabelledExample], requested: int | None
) -> int:
    """Tokens per example: ``requested`` when set, else the longest tokenized example ([CLS] and [SEP]s
    included); either way at most :data:`BERT_MAX_LENGTH` and the model's position embeddings."""
    cap = min(BERT_MAX_LENGTH, checked.max_positions or BERT_MAX_LENGTH)
    if requested is not None:
        return min(requested, cap)
    texts = [example.text for example in examples]
    pairs = [example.text_pair for example in examples]
    kwargs: dict[str, Any] = {"text_pair": pairs} if any(pair is not None for pair in pairs) else {}
    # verbose=False: no "longer than the maximum" warning; the examples are cut to the length found here.
    lengths = [len(ids) for ids in checked.tokenizer(texts, verbose=False, **kwargs)["input_ids"]]
    return min(max(lengths), cap)


@dataclass(frozen=True)
class EncodedExamples:
    """Token ids and segment ids of examples, cut to a length, unpadded (batches are padded by
    :func:`collate` to their own longest example)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def encode(checked: CheckedModel, examples: Sequence[LabelledExample], max_length: int) -> EncodedExamples:
    """``[CLS] text [SEP]`` or ``[CLS] text [SEP] text_pair [SEP]`` (segments 0 and 1), the longer part cut
    first when the pair exceeds ``max_length`` (the tokenizer's ``longest_first``)."""
    texts = [example.text for example in examples]
    pairs = [example.text_pair for example in examples]
    kwargs: dict[str, Any] = {"text_pair": pairs} if any(pair is not None for pair in pairs) else {}
    out = checked.tokenizer(
        texts, truncation=True, max_length=max_length, return_token_type_ids=True, verbose=False, **kwargs
    )
    return EncodedExamples(
        input_ids=[list(ids) for ids in out["input_ids"]],
        token_type_ids=[list(ids) for ids in out["token_type_ids"]],
        pad_token_id=int(checked.tokenizer.pad_token_id),
    )


def collate(
    encoded: EncodedExamples, indices: Sequence[int], device: torch.device
) -> dict[str, torch.Tensor]:
    """The examples ``indices`` as a batch padded to its longest: ``input_ids``, ``token_type_ids`` and
    ``attention_mask`` of shape (len(indices), longest), on ``device``."""
    longest = max(len(encoded.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), longest), encoded.pad_token_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), longest), dtype=torch.long)
    attention_mask = torch.zeros((len(indices), longest), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(encoded.input_ids[i])
        input_ids[row, :n] = torch.tensor(encoded.input_ids[i])
        token_type_ids[row, :n] = torch.tensor(encoded.token_type_ids[i])
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}
    return {key: value.to(device) for key, value in batch.items()}


def evaluation_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
