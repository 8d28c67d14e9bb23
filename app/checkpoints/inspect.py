"""Reading a Hugging Face BERT checkpoint directory without torch: config summary, parameter count and
pre-training heads, from config.json and the safetensors headers.

A safetensors file starts with an 8-byte little-endian header length N, then N bytes of JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data after the
header), plus an optional ``__metadata__`` entry. Only headers are read, never the weights.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PICKLE_SUFFIXES",
    "CheckpointError",
    "CheckpointSummary",
    "TensorInfo",
    "inspect_checkpoint_dir",
    "read_safetensors_header",
    "summarize_config",
]

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = (
    "Pickle files can run arbitrary code when loaded, so bertpt only accepts safetensors. Convert the "
    "checkpoint once, somewhere you trust it: `BertForPreTraining.from_pretrained(DIR, "
    "use_safetensors=False).save_pretrained(NEW_DIR)` writes model.safetensors; copy the tokenizer files "
    "next to it and upload NEW_DIR."
)
# The two heads of BertForPreTraining: masked-LM (its transform; the decoder is tied to the embeddings)
# and next-sentence prediction.
MLM_HEAD_PREFIX = "cls.predictions.transform."
NSP_HEAD_PREFIX = "cls.seq_relationship."

_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
_SHARD_NAME = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}


class CheckpointError(ValueError):
    """The directory is not a usable BERT checkpoint; the message says why and what to do."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class CheckpointSummary:
    config: dict[str, Any]  # see summarize_config
    parameters: int
    has_pretraining_heads: bool
    weight_files: list[str] = field(default_factory=list)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes of a safetensors file; CheckpointError if it is not well formed."""
    label = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{label}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES or 8 + length > size:
                raise CheckpointError(f"{label}: not a safetensors file (bad header length)")
            raw = stream.read(length)
    except OSError as exc:
        raise CheckpointError(f"{label}: cannot be read ({exc})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{label}: not a safetensors file (the header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{label}: not a safetensors file (the header is not a JSON object)")
    data_bytes = size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor_info(label, name, entry, data_bytes)
    return tensors


def _tensor_info(label: str, name: str, entry: Any, data_bytes: int) -> TensorInfo:
    bad = CheckpointError(f"{label}: tensor {name!r} has a malformed header entry; the file is corrupt")
    if not isinstance(entry, dict):
        raise bad
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if (
        not isinstance(dtype, str)
        or not isinstance(shape, list)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
    ):
        raise bad
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes:
        raise CheckpointError(f"{label}: tensor {name!r} lies outside the file; the file is truncated")
    info = TensorInfo(dtype=dtype, shape=tuple(shape))
    item = _DTYPE_BYTES.get(dtype)
    if item is not None and info.numel * item != end - begin:
        raise bad
    return info


def summarize_config(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of config.json that describe a BERT model's size and shape."""
    return {
        "model_type": config.get("model_type"),
        "hidden_size": config.get("hidden_size"),
        "layers": config.get("num_hidden_layers"),
        "heads": config.get("num_attention_heads"),
        "vocab_size": config.get("vocab_size"),
        "max_position_embeddings": config.get("max_position_embeddings"),
        "architectures": config.get("architectures") or [],
    }


def inspect_checkpoint_dir(directory: Path) -> CheckpointSummary:
    """Check that ``directory`` holds a BERT checkpoint bertpt can train (config.json with model_type
    "bert", safetensors weights with word embeddings matching vocab_size, a WordPiece tokenizer) and
    describe it. Raises CheckpointError."""
    config = _read_config(directory)
    weight_files = _weight_files(directory)
    tensors: dict[str, TensorInfo] = {}
    for name in weight_files:
        tensors.update(read_safetensors_header(directory / name))
    embeddings = next(
        (info for key, info in tensors.items() if key.endswith("embeddings.word_embeddings.weight")), None
    )
    if embeddings is None:
        raise CheckpointError("the weights have no embeddings.word_embeddings.weight: not a BERT checkpoint")
    vocab_size = config.get("vocab_size")
    if not embeddings.shape or embeddings.shape[0] != vocab_size:
        rows = embeddings.shape[0] if embeddings.shape else None
        raise CheckpointError(
            f"config.json says vocab_size={vocab_size} but the word-embedding matrix has {rows} rows; fix "
            "vocab_size in config.json"
        )
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(
            "no tokenizer: add the tokenizer files (tokenizer.json and/or vocab.txt, with "
            "tokenizer_config.json), e.g. with `tokenizer.save_pretrained(DIR)`"
        )
    has_heads = any(k.startswith(MLM_HEAD_PREFIX) for k in tensors) and any(
        k.startswith(NSP_HEAD_PREFIX) for k in tensors
    )
    return CheckpointSummary(
        config=summarize_config(config),
        parameters=sum(info.numel for info in tensors.values()),
        has_pretraining_heads=has_heads,
        weight_files=weight_files,
    )


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointError("no config.json: this is not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"config.json is unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise CheckpointError("config.json is not a JSON object")
    model_type = config.get("model_type")
    if model_type != "bert":
        raise CheckpointError(
            f"model_type {model_type!r} is not supported: bertpt continues the pre-training of BERT "
            "checkpoints (config.json model_type 'bert') only"
        )
    return config


def _weight_files(directory: Path) -> list[str]:
    if (directory / SAFE_WEIGHTS).is_file():
        return [SAFE_WEIGHTS]
    index_path = directory / SAFE_WEIGHTS_INDEX
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{SAFE_WEIGHTS_INDEX} is unreadable or has no weight_map") from None
        if not shards or not all(isinstance(s, str) and _SHARD_NAME.match(s) for s in shards):
            raise CheckpointError(f"{SAFE_WEIGHTS_INDEX} names unexpected weight files")
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{SAFE_WEIGHTS_INDEX} lists missing shard(s): {', '.join(missing)}")
        return shards
    if any(p.name.endswith(PICKLE_SUFFIXES) for p in directory.iterdir()):
        raise CheckpointError(f"only pickle weights found. {CONVERT_HINT}")
    raise CheckpointError(f"no {SAFE_WEIGHTS} (or {SAFE_WEIGHTS_INDEX} with its shards) found")
