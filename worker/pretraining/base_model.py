"""The base checkpoint and the pre-training loss.

:func:`load_base_model` turns a local Hugging Face directory (or a hub id, when a hub is reachable or
the id is cached) into a ``BertForPreTraining`` with SDPA attention plus its fast tokenizer, after
checking everything that would otherwise fail late or silently: the model type (BERT only), the weight
format (safetensors only; pickles are never loaded), the vocabulary sizes, the tying of the MLM decoder
to the word embeddings, and that the encoder itself loaded. Parameters the checkpoint lacks (the heads
and the pooler of a plain ``BertModel`` checkpoint) are reported as a structured warning.

:func:`pretraining_loss` is ``BertForPreTraining``'s loss computed cheaply: the encoder runs once, the
MLM head (transform + decoder onto the vocabulary) only at the predicted positions, gathered from the
sequence output, and the NSP classifier on the pooled output. The modules are transformers' own.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "IGNORE_INDEX",
    "NEWLY_INITIALIZED",
    "BaseModelError",
    "LoadedBase",
    "PretrainingLoss",
    "check_base_directory",
    "load_base_model",
    "pretraining_loss",
    "quiet_transformers",
    "resolve_base",
    "weight_files",
]

IGNORE_INDEX = -100
NEWLY_INITIALIZED = "newly_initialized_parameters"

SAFE_WEIGHTS = "model.safetensors"
SAFE_WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HUB_FILES = [
    "config.json",
    "*.safetensors",
    SAFE_WEIGHTS_INDEX,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

CONVERT_HINT = (
    "Pickle files can run arbitrary code when loaded, so bertpt only reads safetensors. Convert the "
    "checkpoint once, in an environment you trust: `model = BertForPreTraining.from_pretrained(DIR, "
    "use_safetensors=False)` (transformers' torch.load path) then `model.save_pretrained(NEW_DIR)` "
    "(safetensors by default, `safe_serialization=True` on older transformers) and copy the tokenizer "
    "files next to it."
)


class BaseModelError(ValueError):
    """The base checkpoint cannot be used: not BERT, pickle-only weights, inconsistent vocabulary,
    unreachable hub, ... The message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------
# Finding and checking the checkpoint


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as the user set it, read now rather than at import."""
    from huggingface_hub import constants

    return bool(
        constants.HF_HUB_OFFLINE
        or _truthy(os.environ.get("HF_HUB_OFFLINE"))
        or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    )


def _looks_like_path(base: str) -> bool:
    return (
        base.startswith((".", "/", "~", "\\"))
        or base.count("/") > 1
        or os.sep in base.replace("/", "")
        or not _HUB_ID.match(base)
    )


def resolve_base(base: str | os.PathLike[str]) -> Path:
    """A local directory for ``base``: the directory itself, or the hub snapshot (downloaded when the
    hub is reachable, from the local cache when offline). Only config, safetensors and tokenizer files
    are ever downloaded."""
    path = Path(base).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BaseModelError(
                f"base checkpoint {str(base)!r} is a file; give the directory holding config.json, "
                "model.safetensors and the tokenizer files"
            )
        return path
    name = str(base)
    if _looks_like_path(name):
        raise BaseModelError(f"base checkpoint directory {name!r} does not exist")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        snapshot = Path(snapshot_download(repo_id=name, allow_patterns=HUB_FILES, local_files_only=offline))
    except Exception as exc:
        if offline:
            raise BaseModelError(
                f"{name!r} is not a local directory and is not in the Hugging Face cache, and the hub is "
                "offline (HF_HUB_OFFLINE is set): download it on a machine that can reach the hub "
                "(`hf download " + name + "`) and copy the cache, or pass a local directory"
            ) from exc
        raise BaseModelError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Check the id and the network, or pass a local directory."
        ) from exc
    if not _has_safetensors(snapshot):
        _refuse_pickle_only_hub_repo(name)
    return snapshot


def _refuse_pickle_only_hub_repo(name: str) -> None:
    try:
        from huggingface_hub import list_repo_files

        files = list_repo_files(name)
    except Exception:  # offline or unreachable: the directory check says "no safetensors weights"
        return
    pickles = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise BaseModelError(
            f"hub repository {name!r} only has pickle weights ({', '.join(pickles[:3])}). {CONVERT_HINT}"
        )


def _has_safetensors(directory: Path) -> bool:
    return (directory / SAFE_WEIGHTS).is_file() or (directory / SAFE_WEIGHTS_INDEX).is_file()


def weight_files(directory: Path) -> list[Path]:
    if (directory / SAFE_WEIGHTS).is_file():
        return [directory / SAFE_WEIGHTS]
    index = json.loads((directory / SAFE_WEIGHTS_INDEX).read_text())
    return [directory / name for name in sorted(set(index["weight_map"].values()))]


def _embedding_rows(directory: Path) -> int | None:
    """Rows of the word-embedding matrix, read from the safetensors header (no weights loaded)."""
    from safetensors import safe_open

    for file in weight_files(directory):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key.endswith("embeddings.word_embeddings.weight"):
                    return int(f.get_slice(key).get_shape()[0])
    return None


def check_base_directory(directory: Path, *, name: str | None = None) -> dict[str, Any]:
    """Check a checkpoint directory before anything is loaded; returns its config as a dict.

    Refuses (BaseModelError) a missing or unreadable config.json, a model type other than "bert",
    pickle-only or missing weights, and an embedding matrix whose size disagrees with config.vocab_size.
    """
    label = name or str(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise BaseModelError(f"{label}: no config.json; this is not a Hugging Face model directory")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BaseModelError(f"{label}: config.json is unreadable ({exc})") from exc
    if not isinstance(config, dict):
        raise BaseModelError(f"{label}: config.json is not a JSON object")
    model_type = config.get("model_type")
    if model_type != "bert":
        raise BaseModelError(
            f"{label}: model_type {model_type!r} is not supported. bertpt continues the pre-training of "
            "BERT checkpoints (model_type 'bert', masked-LM + next-sentence prediction) only."
        )
    if not _has_safetensors(directory):
        pickles = sorted(
            p.name for p in directory.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES)
        )
        if pickles:
            raise BaseModelError(
                f"{label}: only pickle weights found ({', '.join(pickles[:3])}). {CONVERT_HINT}"
            )
        raise BaseModelError(f"{label}: no model.safetensors (or model.safetensors.index.json) found")
    rows = _embedding_rows(directory)
    if rows is None:
        raise BaseModelError(
            f"{label}: the weights have no embeddings.word_embeddings.weight; not a BERT checkpoint"
        )
    vocab_size = config.get("vocab_size")
    if vocab_size != rows:
        raise BaseModelError(
            f"{label}: config.vocab_size is {vocab_size} but the word-embedding matrix has {rows} rows; "
            "fix config.json (vocab_size must equal the embedding rows)"
        )
    return config


# --------------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadedBase:
    """A base checkpoint ready to train: the model (fp32 master weights), its tokenizer, and what the
    loading found."""

    model: Any  # transformers.BertForPreTraining
    tokenizer: Any  # a fast tokenizer
    source: str  # as given: a directory or a hub id
    path: Path  # the local directory it was read from
    newly_initialized: list[str] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> Any:
        return self.model.config


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


_HEAD_GROUPS = (
    ("cls.predictions.transform.", "the MLM head transform (dense + LayerNorm)"),
    ("cls.predictions.bias", "the MLM output bias"),
    ("cls.seq_relationship.", "the next-sentence classifier"),
    ("bert.pooler.", "the pooler"),
)


def newly_initialized_warning(parameters: list[str]) -> dict[str, Any]:
    """The structured warning for parameters the checkpoint did not provide."""
    groups = [label for prefix, label in _HEAD_GROUPS if any(p.startswith(prefix) for p in parameters)]
    others = [p for p in parameters if not any(p.startswith(prefix) for prefix, _ in _HEAD_GROUPS)]
    parts = groups + ([f"{len(others)} other parameters"] if others else [])
    consequences = []
    if any(p.startswith(("cls.seq_relationship.", "bert.pooler.")) for p in parameters):
        consequences.append("next-sentence accuracy about 50% (chance)")
    if any(p.startswith("cls.predictions.") for p in parameters):
        consequences.append("a masked-LM loss well above that of a trained MLM head")
    message = (
        f"{len(parameters)} parameters are not in the checkpoint and were newly initialized: "
        f"{', '.join(parts)} (the checkpoint is probably a bare encoder, e.g. a sentence-embedding model)."
    )
    if consequences:
        message += (
            f" The step-0 evaluation (the baseline) will show {' and '.join(consequences)}, until training "
            "adapts these parameters."
        )
    return {"code": NEWLY_INITIALIZED, "message": message, "parameters": list(parameters)}


def _tied_aliases(model: Any) -> set[str]:
    return set(getattr(type(model), "_tied_weights_keys", None) or ())


def _check_tying(model: Any, label: str) -> None:
    decoder = model.cls.predictions.decoder
    embeddings = model.bert.embeddings.word_embeddings
    if decoder.weight is not embeddings.weight:
        model.tie_weights()
    if decoder.weight.data_ptr() != embeddings.weight.data_ptr():
        raise BaseModelError(
            f"{label}: the MLM decoder is not tied to the word embeddings (config.tie_word_embeddings="
            f"{getattr(model.config, 'tie_word_embeddings', None)}); BERT pre-training needs them tied"
        )


def load_tokenizer(directory: Path, *, label: str) -> Any:
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(
                str(directory), trust_remote_code=False, local_files_only=True
            )
    except Exception as exc:
        raise BaseModelError(
            f"{label}: no usable tokenizer next to the weights ({type(exc).__name__}: {exc})"
        ) from exc
    if not getattr(tokenizer, "is_fast", False):
        raise BaseModelError(f"{label}: the tokenizer is not a fast (Rust) tokenizer; add its tokenizer.json")
    missing = [
        name
        for name in ("cls_token", "sep_token", "mask_token", "pad_token")
        if getattr(tokenizer, name, None) is None
    ]
    if missing:
        raise BaseModelError(
            f"{label}: the tokenizer lacks {', '.join(missing)}; BERT pre-training needs them"
        )
    return tokenizer


def load_base_model(base: str | os.PathLike[str], *, attn_implementation: str = "sdpa") -> LoadedBase:
    """Load ``base`` (a directory or hub id) as an fp32 ``BertForPreTraining`` and its fast tokenizer.

    Raises BaseModelError with a one-line explanation for anything that cannot be trained. Remote code
    is never run and pickle files are never read.
    """
    from transformers import BertForPreTraining

    label = str(base)
    directory = resolve_base(base)
    config = check_base_directory(directory, name=label)
    tokenizer = load_tokenizer(directory, label=label)
    rows = int(config["vocab_size"])
    if len(tokenizer) > rows:
        raise BaseModelError(
            f"{label}: the tokenizer has {len(tokenizer)} tokens but the embedding matrix only {rows} rows; "
            "ids beyond it would crash training. Use the tokenizer the checkpoint was trained with."
        )
    try:
        with quiet_transformers():
            loaded: Any = BertForPreTraining.from_pretrained(
                str(directory),
                attn_implementation=attn_implementation,
                output_loading_info=True,
                use_safetensors=True,
                local_files_only=True,
                dtype=torch.float32,
            )
        model, info = loaded
    except Exception as exc:
        raise BaseModelError(f"{label}: cannot load the weights ({type(exc).__name__}: {exc})") from exc
    if info.get("mismatched_keys"):
        raise BaseModelError(
            f"{label}: weights with unexpected shapes: {sorted(info['mismatched_keys'])[:5]}"
        )
    missing = sorted(set(info.get("missing_keys") or ()) - _tied_aliases(model))
    lost = [key for key in missing if key.startswith(("bert.embeddings.", "bert.encoder."))]
    if lost:
        raise BaseModelError(
            f"{label}: {len(lost)} encoder parameters were not found in the weights (e.g. {lost[0]}); the "
            "checkpoint's parameter names do not match BERT's"
        )
    _check_tying(model, label)
    if model.bert.embeddings.word_embeddings.weight.shape[0] != model.config.vocab_size:
        raise BaseModelError(f"{label}: config.vocab_size does not match the embedding matrix after loading")
    warnings = [newly_initialized_warning(missing)] if missing else []
    model.train()
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        source=label,
        path=directory,
        newly_initialized=missing,
        warnings=warnings,
    )


# --------------------------------------------------------------------------------------------------
# The loss


@dataclass
class PretrainingLoss:
    """The loss of one batch and the (detached) sums behind the metrics.

    ``loss`` carries the graph. ``mlm_loss`` / ``nsp_loss`` are this batch's means (``nsp_loss`` is None
    when NSP is off). The ``*_sum``, ``*_correct`` and ``*_count`` tensors are detached and summable
    across batches for token-weighted averages.
    """

    loss: torch.Tensor
    mlm_loss: torch.Tensor
    nsp_loss: torch.Tensor | None
    mlm_loss_sum: torch.Tensor
    mlm_correct: torch.Tensor
    mlm_count: torch.Tensor
    nsp_loss_sum: torch.Tensor | None
    nsp_correct: torch.Tensor | None
    nsp_count: torch.Tensor | None


def gather_positions(sequence_output: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, L, H) gathered at (B, P) positions -> (B, P, H)."""
    index = positions.unsqueeze(-1).expand(-1, -1, sequence_output.size(-1))
    return torch.gather(sequence_output, 1, index)


def pretraining_loss(
    model: Any,
    batch: Mapping[str, torch.Tensor],
    *,
    nsp: bool = True,
    mlm_normalizer: int | float | torch.Tensor | None = None,
    nsp_normalizer: int | float | torch.Tensor | None = None,
) -> PretrainingLoss:
    """BertForPreTraining's loss with the MLM head applied at the predicted positions only.

    ``batch`` needs ``input_ids``, ``attention_mask``, ``token_type_ids``, ``masked_lm_positions`` and
    ``masked_lm_labels`` (B, P; -100 at padded slots) and, with ``nsp``, ``next_sentence_label``.
    The MLM cross-entropy is summed over predicted tokens and divided by ``mlm_normalizer`` (default:
    this batch's predicted tokens), the NSP one by ``nsp_normalizer`` (default: this batch's sequences):
    with the defaults ``loss`` equals the stock ``BertForPreTraining(..., labels=...,
    next_sentence_label=...).loss``; with normalizers counted over all the micro-batches of an optimizer
    step, summing the micro-batch losses gives the token-weighted loss of the whole step.
    """
    outputs = model.bert(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        return_dict=True,
    )
    labels = batch["masked_lm_labels"]
    gathered = gather_positions(outputs.last_hidden_state, batch["masked_lm_positions"])
    logits = model.cls.predictions(gathered).float()  # (B, P, V)
    flat_labels = labels.reshape(-1)
    valid = flat_labels != IGNORE_INDEX
    mlm_loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"
    )
    mlm_count = valid.sum()
    mlm_denominator = mlm_count.clamp(min=1) if mlm_normalizer is None else mlm_normalizer
    mlm_loss = mlm_loss_sum / mlm_denominator
    with torch.no_grad():
        predictions = logits.detach().argmax(-1).reshape(-1)
        mlm_correct = ((predictions == flat_labels) & valid).sum()
    loss = mlm_loss
    nsp_loss = nsp_loss_sum = nsp_correct = nsp_count = None
    if nsp:
        if outputs.pooler_output is None:
            raise ValueError("next-sentence prediction needs the pooler, which this model lacks")
        nsp_logits = model.cls.seq_relationship(outputs.pooler_output).float()
        nsp_labels = batch["next_sentence_label"].reshape(-1)
        nsp_loss_sum = F.cross_entropy(nsp_logits, nsp_labels, reduction="sum")
        nsp_count = torch.full((), nsp_labels.numel(), dtype=torch.long, device=nsp_logits.device)
        nsp_denominator = nsp_count.clamp(min=1) if nsp_normalizer is None else nsp_normalizer
        nsp_loss = nsp_loss_sum / nsp_denominator
        with torch.no_grad():
            nsp_correct = (nsp_logits.detach().argmax(-1) == nsp_labels).sum()
        loss = loss + nsp_loss
        nsp_loss_sum = nsp_loss_sum.detach()
    return PretrainingLoss(
        loss=loss,
        mlm_loss=mlm_loss.detach(),
        nsp_loss=None if nsp_loss is None else nsp_loss.detach(),
        mlm_loss_sum=mlm_loss_sum.detach(),
        mlm_correct=mlm_correct,
        mlm_count=mlm_count,
        nsp_loss_sum=nsp_loss_sum,
        nsp_correct=nsp_correct,
        nsp_count=nsp_count,
    )
