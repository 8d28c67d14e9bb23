"""The files of a Hugging Face BERT model directory, and the one check of them, without torch.

Both the API's checkpoint upload and the training library's loader call :func:`inspect_model_dir`: a
directory bertpt can train holds a ``config.json`` with ``model_type: "bert"``, safetensors weights
(``model.safetensors``, or an index and its shards) whose word-embedding matrix has ``vocab_size`` rows,
and tokenizer files. Pickle weights are refused (they can run code when loaded) with the one-liner that
converts them. Only the safetensors headers are read, never the weights.

A safetensors file starts with an 8-byte little-endian header length N, then N bytes of JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data after the
header), plus an optional ``__metadata__`` entry (https://github.com/huggingface/safetensors, "Format").

This module imports the standard library and :mod:`worker.pretraining.layout` (the names bertpt's own
files have) only.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.pretraining.layout import CHECKPOINT_MANIFEST, MODEL_MANIFEST, is_training_state

__all__ = [
    "ARCHIVE_FILES",
    "CONVERT_HINT",
    "HUB_FILES",
    "HUB_ID",
    "HUB_PREFIX",
    "PICKLE_SUFFIXES",
    "PROVENANCE_FILES",
    "SAFE_WEIGHTS",
    "SAFE_WEIGHTS_INDEX",
    "TOKENIZER_FILES",
    "BaseModelError",
    "ModelDirSummary",
    "TensorInfo",
    "inspect_model_dir",
    "is_left_out_of_uploads",
    "is_model_file",
    "max_position_embeddings",
    "non_finite_tensor",
    "read_config",
    "read_safetensors_header",
    "segment_types_error",
    "sequence_length_error",
    "summarize_config",
    "token_types",
    "tokenizer_vocabulary",
    "training_state_note",
    "vocabulary_error",
    "weight_files",
]

CONFIG = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
_TOKENIZER_EXTRAS = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SHARD_NAME = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# bertpt's own manifests beside a model it wrote (worker.pretraining.layout): which run, step, corpus and
# hyperparameters made it. An uploaded checkpoint keeps them as its provenance; the loader never reads them.
PROVENANCE_FILES = (MODEL_MANIFEST, CHECKPOINT_MANIFEST)
# Every file of an uploaded checkpoint archive: a save_pretrained directory of a BERT model and its
# tokenizer (plus shards matching model-NNNNN-of-NNNNN.safetensors, see is_model_file), and bertpt's
# manifests, so that whatever bertpt lets you download uploads back (see also is_left_out_of_uploads).
ARCHIVE_FILES = frozenset(
    {CONFIG, "generation_config.json", SAFE_WEIGHTS, SAFE_WEIGHTS_INDEX, *TOKENIZER_FILES, *_TOKENIZER_EXTRAS}
    | {"README.md", *PROVENANCE_FILES}
)
# What the loader fetches of a hub repository (huggingface_hub allow_patterns): no pickles, no other
# frameworks' weights.
HUB_FILES = [CONFIG, "*.safetensors", SAFE_WEIGHTS_INDEX, *TOKENIZER_FILES, *_TOKENIZER_EXTRAS]
# A hub repository id, ``name`` or ``owner/name``: letters, digits, ``-``, ``_`` and ``.``, at most 96
# characters each (the hub's own limits).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(/[\w.\-]{1,96})?$")
# How a base-model spec names a hub repository (``hf:owner/name``, app.base_models.spec); the CLI takes it
# too, beside the bare id.
HUB_PREFIX = "hf:"

CONVERT_HINT = (
    "Pickle files can run arbitrary code when loaded, so bertpt only reads safetensors. Convert the "
    "checkpoint once, in an environment you trust: `model = BertForPreTraining.from_pretrained(DIR, "
    "use_safetensors=False)` (transformers' torch.load path) then `model.save_pretrained(NEW_DIR)` "
    "(safetensors by default) and copy the tokenizer files next to it."
)
# The two heads of BertForPreTraining: masked-LM (its transform; the decoder is tied to the embeddings)
# and next-sentence prediction.
MLM_HEAD_PREFIX = "cls.predictions.transform."
NSP_HEAD_PREFIX = "cls.seq_relationship."
WORD_EMBEDDINGS_SUFFIX = "embeddings.word_embeddings.weight"

_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit
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


class BaseModelError(ValueError):
    """The base checkpoint cannot be used: not BERT, pickle-only weights, inconsistent vocabulary,
    unreachable hub, ... The message says what is wrong and what to do."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int = 0  # byte offsets of the tensor's data in its file
    end: int = 0

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class ModelDirSummary:
    config: dict[str, Any]  # the whole config.json
    parameters: int
    has_pretraining_heads: bool
    weight_files: list[str] = field(default_factory=list)

    @property
    def config_summary(self) -> dict[str, Any]:
        return summarize_config(self.config)

    @property
    def max_position_embeddings(self) -> int | None:
        return max_position_embeddings(self.config)


def max_position_embeddings(config: dict[str, Any]) -> int | None:
    """The longest sequence the model takes (config.json ``max_position_embeddings``), None if unstated."""
    positions = config.get("max_position_embeddings")
    return positions if isinstance(positions, int) and positions > 0 else None


def sequence_length_error(max_seq_length: int, positions: int | None, model: str = "the model") -> str | None:
    """Why ``max_seq_length`` does not fit ``model``'s ``positions`` position embeddings (with the value
    to use), None if it fits or the positions are unknown."""
    if positions is None or max_seq_length <= positions:
        return None
    return (
        f"{max_seq_length} is more than the {positions} position embeddings of {model}; use max_seq_length "
        f"{positions} or less"
    )


def token_types(config: dict[str, Any]) -> int | None:
    """The token types (segments) the model tells apart (config.json ``type_vocab_size``), None if
    unstated."""
    types = config.get("type_vocab_size")
    return types if isinstance(types, int) and types >= 0 else None


def segment_types_error(nsp: bool, types: int | None) -> str | None:
    """Why next-sentence prediction cannot train a model of ``types`` token types (it tells segment A from
    B by them), None if it can or the types are unknown."""
    if not nsp or types is None or types >= 2:
        return None
    return "the model has a single token type, so it cannot tell segment A from B; set nsp to false"


def vocabulary_error(tokens: int, rows: int | None) -> str | None:
    """Why a tokenizer of ``tokens`` tokens does not fit a word-embedding matrix of ``rows`` rows, None if
    it fits or the rows are unknown."""
    if rows is None or tokens <= rows:
        return None
    return (
        f"the tokenizer has {tokens} tokens but the embedding matrix only {rows} rows; ids beyond it would "
        "crash training. Use the tokenizer the checkpoint was trained with."
    )


def tokenizer_vocabulary(directory: Path) -> frozenset[str] | None:
    """The tokens that the tokenizer files of ``directory`` list: tokenizer.json's model vocabulary and
    added tokens, else the lines of vocab.txt; None when neither can be read this way. A tokenizer loaded
    from these files holds these tokens and possibly more (special tokens its configuration adds), so its
    length is at least this set's."""
    tokenizer_json, vocab_txt = (directory / name for name in TOKENIZER_FILES)
    try:
        if tokenizer_json.is_file():
            return _tokenizer_json_tokens(json.loads(tokenizer_json.read_text(encoding="utf-8")))
        if vocab_txt.is_file():
            # As transformers reads it: one token a line, universal newlines, nothing stripped but "\n".
            lines = vocab_txt.read_text(encoding="utf-8").split("\n")
            return frozenset(lines[:-1] if lines[-1] == "" else lines)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return None


def _tokenizer_json_tokens(data: Any) -> frozenset[str] | None:
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict):  # WordPiece, BPE, WordLevel: token -> id
        tokens: list[Any] = list(vocab)
    elif isinstance(vocab, list):  # Unigram: [token, score] pairs
        tokens = [entry[0] if isinstance(entry, list) and entry else None for entry in vocab]
    else:
        return None
    added = data.get("added_tokens") or []
    tokens += [entry.get("content") if isinstance(entry, dict) else None for entry in added]
    if not all(isinstance(token, str) for token in tokens):
        return None
    return frozenset(tokens)


def is_model_file(name: str) -> bool:
    """Whether ``name`` is a file of a BERT save_pretrained directory that bertpt accepts."""
    return name in ARCHIVE_FILES or bool(_SHARD_NAME.match(name))


def is_left_out_of_uploads(name: str) -> bool:
    """Whether an uploaded archive's file ``name`` is the training state of a bertpt checkpoint (optimizer,
    scheduler, scaler and RNG state, the Trainer's state and arguments: layout.TRAINING_STATE_PATTERNS,
    what a download with ``include_optimizer`` adds). Such files are skipped, never extracted (most are
    pickles), rather than refused: only resuming the run that wrote them uses them, and a run from an
    uploaded checkpoint starts with a new optimizer and learning-rate schedule."""
    return is_training_state(name)


def training_state_note(names: list[str]) -> str:
    """What an upload tells when it left out the training state files ``names``."""
    return (
        f"left out the training state of a bertpt checkpoint ({', '.join(names)}): a run from this "
        "checkpoint starts with the weights only, a new optimizer and learning-rate schedule. To continue "
        "the interrupted run itself with its optimizer state, resume that run instead"
    )


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes and shapes of a safetensors file; BaseModelError if it is not well formed."""
    label = path.name
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise BaseModelError(f"{label}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER_BYTES or 8 + length > size:
                raise BaseModelError(f"{label}: not a safetensors file (bad header length)")
            raw = stream.read(length)
    except OSError as exc:
        raise BaseModelError(f"{label}: cannot be read ({exc})") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BaseModelError(f"{label}: not a safetensors file (the header is not JSON)") from None
    if not isinstance(header, dict):
        raise BaseModelError(f"{label}: not a safetensors file (the header is not a JSON object)")
    data_bytes = size - 8 - length
    return {
        name: _tensor_info(label, name, entry, data_bytes, 8 + length)
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _tensor_info(label: str, name: str, entry: Any, data_bytes: int, data_start: int) -> TensorInfo:
    bad = BaseModelError(f"{label}: tensor {name!r} has a malformed header entry; the file is corrupt")
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
        raise BaseModelError(f"{label}: tensor {name!r} lies outside the file; the file is truncated")
    info = TensorInfo(dtype=dtype, shape=tuple(shape), begin=data_start + begin, end=data_start + end)
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


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a BERT model directory; BaseModelError when missing, unreadable or not BERT."""
    path = directory / CONFIG
    if not path.is_file():
        raise BaseModelError(f"no {CONFIG}: this is not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaseModelError(f"{CONFIG} is unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise BaseModelError(f"{CONFIG} is not a JSON object")
    model_type = config.get("model_type")
    if model_type != "bert":
        raise BaseModelError(
            f"model_type {model_type!r} is not supported: bertpt continues the pre-training of BERT "
            "checkpoints (config.json model_type 'bert', masked-LM + next-sentence prediction) only"
        )
    return config


def weight_files(directory: Path) -> list[str]:
    """The safetensors files of ``directory`` (one file, or the shards its index names), by name;
    BaseModelError when there are none (naming the pickle files found, with the conversion hint)."""
    if (directory / SAFE_WEIGHTS).is_file():
        return [SAFE_WEIGHTS]
    index_path = directory / SAFE_WEIGHTS_INDEX
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise BaseModelError(f"{SAFE_WEIGHTS_INDEX} is unreadable or has no weight_map") from None
        if not shards or not all(isinstance(s, str) and _SHARD_NAME.match(s) for s in shards):
            raise BaseModelError(f"{SAFE_WEIGHTS_INDEX} names unexpected weight files")
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise BaseModelError(f"{SAFE_WEIGHTS_INDEX} lists missing shard(s): {', '.join(missing)}")
        return shards
    pickles = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise BaseModelError(f"only pickle weights found ({', '.join(pickles[:3])}). {CONVERT_HINT}")
    raise BaseModelError(f"no {SAFE_WEIGHTS} (or {SAFE_WEIGHTS_INDEX} with its shards) found")


@dataclass(frozen=True)
class _FloatLayout:
    """Where a float type's exponent lies, little-endian: a value is NaN or infinite exactly when every
    exponent bit is set (IEEE 754; bfloat16 is float32's top half)."""

    size: int  # bytes per value
    high: int  # the byte holding the sign and the top exponent bits
    high_mask: int  # those exponent bits
    low: int | None  # the byte holding the rest of the exponent, if any
    low_mask: int
    # The exponent bits of the whole value: a value with them set and nothing else is an infinity.
    exponent: int

    def first_non_finite(self, data: bytes) -> int | None:
        """Index of the first NaN or infinity among the values of ``data``, None if every one is finite.
        Vectorized with byte slicing and translation (C speed, no numpy)."""
        hits = data[self.high :: self.size].translate(_all_set(self.high_mask))
        if b"\x01" not in hits:
            return None
        if self.low is None:
            return hits.index(b"\x01")
        low_hits = data[self.low :: self.size].translate(_all_set(self.low_mask))
        both = int.from_bytes(hits, "little") & int.from_bytes(low_hits, "little")
        return ((both & -both).bit_length() - 1) // 8 if both else None

    def describe(self, value: bytes) -> str:
        magnitude = int.from_bytes(value, "little") & ((1 << (8 * self.size - 1)) - 1)
        return "Inf" if magnitude == self.exponent else "NaN"


_FLOAT_LAYOUTS = {
    "F64": _FloatLayout(8, 7, 0x7F, 6, 0xF0, 0x7FF << 52),
    "F32": _FloatLayout(4, 3, 0x7F, 2, 0x80, 0xFF << 23),
    "BF16": _FloatLayout(2, 1, 0x7F, 0, 0x80, 0xFF << 7),
    "F16": _FloatLayout(2, 1, 0x7C, None, 0, 0x1F << 10),
}
_SCAN_CHUNK = 1 << 24  # bytes read at a time: the scan's memory stays bounded


def _all_set(mask: int) -> bytes:
    """A bytes.translate table: 1 for a byte with every bit of ``mask`` set, else 0."""
    return bytes(1 if b & mask == mask else 0 for b in range(256))


def non_finite_tensor(directory: Path, files: list[str]) -> tuple[str, str] | None:
    """The first tensor of the safetensors ``files`` holding a NaN or an infinity, as (tensor name,
    ``"NaN"`` or ``"Inf"``), or None. Integer tensors are skipped; the weights are read in bounded chunks."""
    for file in files:
        path = directory / file
        tensors = read_safetensors_header(path)
        with open(path, "rb") as stream:
            for name, info in sorted(tensors.items(), key=lambda item: item[1].begin):
                layout = _FLOAT_LAYOUTS.get(info.dtype)
                if layout is None:
                    continue
                stream.seek(info.begin)
                remaining = info.end - info.begin
                while remaining > 0:
                    data = stream.read(min(remaining, _SCAN_CHUNK // layout.size * layout.size))
                    remaining -= len(data)
                    index = layout.first_non_finite(data)
                    if index is not None:
                        return name, layout.describe(data[index * layout.size : (index + 1) * layout.size])
    return None


def inspect_model_dir(directory: Path, *, check_values: bool = True) -> ModelDirSummary:
    """Check that ``directory`` holds a BERT checkpoint bertpt can train (see the module docstring) and
    describe it. With ``check_values``, every floating-point weight is also read and a NaN or an infinity
    refused, naming the tensor (about 0.1 s per 100 MB). Raises BaseModelError saying what is wrong and
    what to do."""
    config = read_config(directory)
    files = weight_files(directory)
    tensors: dict[str, TensorInfo] = {}
    for name in files:
        tensors.update(read_safetensors_header(directory / name))
    embeddings = next((info for key, info in tensors.items() if key.endswith(WORD_EMBEDDINGS_SUFFIX)), None)
    if embeddings is None:
        raise BaseModelError(f"the weights have no {WORD_EMBEDDINGS_SUFFIX}: not a BERT checkpoint")
    vocab_size = config.get("vocab_size")
    rows = embeddings.shape[0] if embeddings.shape else None
    if rows != vocab_size:
        raise BaseModelError(
            f"{CONFIG} says vocab_size={vocab_size} but the word-embedding matrix has {rows} rows; fix "
            f"vocab_size in {CONFIG} (it must equal the embedding rows)"
        )
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise BaseModelError(
            "no tokenizer: add the tokenizer files (tokenizer.json and/or vocab.txt, with "
            "tokenizer_config.json), e.g. with `tokenizer.save_pretrained(DIR)`"
        )
    if check_values and (found := non_finite_tensor(directory, files)) is not None:
        tensor, kind = found
        raise BaseModelError(
            f"tensor {tensor} holds {kind} values: the checkpoint is broken (a training run that diverged, "
            "or a damaged file). Use an earlier checkpoint or re-export the model"
        )
    has_heads = any(k.startswith(MLM_HEAD_PREFIX) for k in tensors) and any(
        k.startswith(NSP_HEAD_PREFIX) for k in tensors
    )
    return ModelDirSummary(
        config=config,
        parameters=sum(info.numel for info in tensors.values()),
        has_pretraining_heads=has_heads,
        weight_files=files,
    )
