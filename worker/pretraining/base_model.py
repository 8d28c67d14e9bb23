"""The base checkpoint: :func:`load_base_model` turns a local Hugging Face directory (or a hub id, when a
hub is reachable or the id is cached) into a ``BertForPreTraining`` with SDPA attention plus its fast
tokenizer, after checking everything that would otherwise fail late or silently: the directory's files
(:func:`worker.pretraining.model_files.inspect_model_dir`: BERT only, safetensors only, vocabulary size),
the tokenizer, the tying of the MLM decoder to the word embeddings, and that the encoder itself loaded.
Parameters the checkpoint lacks (the heads and the pooler of a plain ``BertModel`` checkpoint) are
reported as a structured warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.pretraining.builtin_models import BUILTIN_MODELS, builtin_model_dir, similar_builtin_names
from worker.pretraining.model_files import (
    CONVERT_HINT,
    HUB_FILES,
    HUB_ID,
    HUB_PREFIX,
    PICKLE_SUFFIXES,
    SAFE_WEIGHTS,
    SAFE_WEIGHTS_INDEX,
    BaseModelError,
    inspect_model_dir,
    vocabulary_error,
)
from worker.pretraining.records import RunWarning
from worker.pretraining.tokenizer import load_tokenizer, quiet_transformers

__all__ = [
    "NEWLY_INITIALIZED",
    "LoadedBase",
    "load_base_model",
    "newly_initialized_warning",
    "non_finite_parameter",
    "resolve_base",
    "tied_aliases",
]

NEWLY_INITIALIZED = "newly_initialized_parameters"


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
        or not HUB_ID.match(base)
    )


def resolve_base(base: str | os.PathLike[str]) -> Path:
    """A local directory for ``base``, tried in this order: an existing directory; a built-in model's name
    (:data:`BUILTIN_MODELS`, the names the service takes); a hub id (``owner/name``, or ``hf:owner/name``
    as the service writes it), whose snapshot is downloaded when the hub is reachable and read from the
    local cache when offline. Only config, safetensors and tokenizer files are ever downloaded."""
    path = Path(base).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BaseModelError(
                f"base checkpoint {str(base)!r} is a file; give the directory holding config.json, "
                "model.safetensors and the tokenizer files"
            )
        return path
    builtin = builtin_model_dir(str(base))
    if builtin is not None:
        return builtin
    name = str(base).removeprefix(HUB_PREFIX)
    if _looks_like_path(name):
        raise BaseModelError(f"base checkpoint directory {name!r} does not exist")
    from huggingface_hub import snapshot_download

    offline = hub_offline()
    try:
        snapshot = Path(snapshot_download(repo_id=name, allow_patterns=HUB_FILES, local_files_only=offline))
    except Exception as exc:
        raise BaseModelError(_unresolved_message(name, offline, exc)) from exc
    if not _has_safetensors(snapshot):
        _refuse_pickle_only_hub_repo(name)
    return snapshot


def _unresolved_message(name: str, offline: bool, exc: Exception) -> str:
    """Why ``name`` named nothing usable, with what it can name and what to do."""
    builtins = ", ".join(BUILTIN_MODELS)
    similar = similar_builtin_names(name)
    meant = f" Did you mean {' or '.join(repr(n) for n in similar)}?" if similar else ""
    if offline:
        return (
            f"{name!r} is not a local directory nor a built-in model ({builtins}), and the Hugging Face "
            f"hub is offline (HF_HUB_OFFLINE is set) with no copy of {name!r} in its cache.{meant} If it is "
            "a hub repository, download it where the hub is reachable: `hf download "
            f"{name} --include '*.json' --include '*.safetensors' --include vocab.txt --local-dir DIR`, then "
            "pass --base DIR"
        )
    return (
        f"{name!r} is not a local directory nor a built-in model ({builtins}), and could not be fetched "
        f"from the Hugging Face hub ({type(exc).__name__}: {exc}).{meant} Pass a directory holding a "
        "save_pretrained checkpoint, a built-in name, or the id of a hub repository (owner/name); check "
        "the id and the network"
    )


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
    warnings: list[RunWarning] = field(default_factory=list)

    @property
    def config(self) -> Any:
        return self.model.config


_HEAD_GROUPS = (
    ("cls.predictions.transform.", "the MLM head transform (dense + LayerNorm)"),
    ("cls.predictions.bias", "the MLM output bias"),
    ("cls.seq_relationship.", "the next-sentence classifier"),
    ("bert.pooler.", "the pooler"),
)


def _probable_origin(parameters: list[str]) -> str:
    """What kind of checkpoint lacks exactly these parameters, when that is clear."""
    lacks_mlm = any(p.startswith("cls.predictions.") for p in parameters)
    lacks_nsp = any(p.startswith("cls.seq_relationship.") for p in parameters)
    if lacks_mlm and lacks_nsp:
        return " (the checkpoint is probably a bare encoder, e.g. a sentence-embedding model)"
    if lacks_nsp:
        return (
            " (the checkpoint has a masked-LM head but no next-sentence head, e.g. one saved from "
            "BertForMaskedLM)"
        )
    if lacks_mlm:
        return (
            " (the checkpoint has a next-sentence head but no masked-LM head, e.g. one saved from "
            "BertForNextSentencePrediction)"
        )
    return ""


def newly_initialized_warning(parameters: list[str]) -> RunWarning:
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
        f"{', '.join(parts)}{_probable_origin(parameters)}."
    )
    if consequences:
        message += (
            f" The step-0 evaluation (the baseline) will show {' and '.join(consequences)}, until training "
            "adapts these parameters."
        )
    return RunWarning(code=NEWLY_INITIALIZED, message=message, parameters=list(parameters))


def non_finite_parameter(model: Any) -> str | None:
    """The name of the first parameter holding a NaN or an infinity, None if all are finite (one device
    sync for the whole model)."""
    names, finite = zip(
        *((name, torch.isfinite(p).all()) for name, p in model.named_parameters()), strict=True
    )
    bad = (~torch.stack(list(finite))).nonzero()
    return names[int(bad[0])] if bad.numel() else None


def tied_aliases(model: Any) -> set[str]:
    """Parameter names that alias another (BERT's MLM decoder shares the word embeddings and the output
    bias); ``save_pretrained`` does not store them, so loading reports them missing."""
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


def load_base_model(base: str | os.PathLike[str], *, attn_implementation: str = "sdpa") -> LoadedBase:
    """Load ``base`` (a directory or hub id) as an fp32 ``BertForPreTraining`` and its fast tokenizer.

    Raises BaseModelError with a one-line explanation for anything that cannot be trained. Remote code
    is never run and pickle files are never read.
    """
    from transformers import BertForPreTraining

    label = str(base)
    directory = resolve_base(base)
    try:
        # The weights' values are checked once loaded, in float32 (below): not read twice here.
        config = inspect_model_dir(directory, check_values=False).config
    except BaseModelError as exc:
        raise BaseModelError(f"{label}: {exc}") from None
    tokenizer = load_tokenizer(directory, label=label)
    too_many = vocabulary_error(len(tokenizer), int(config["vocab_size"]))
    if too_many is not None:
        raise BaseModelError(f"{label}: {too_many}")
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
    missing = sorted(set(info.get("missing_keys") or ()) - tied_aliases(model))
    lost = [key for key in missing if key.startswith(("bert.embeddings.", "bert.encoder."))]
    if lost:
        raise BaseModelError(
            f"{label}: {len(lost)} encoder parameters were not found in the weights (e.g. {lost[0]}); the "
            "checkpoint's parameter names do not match BERT's"
        )
    _check_tying(model, label)
    bad = non_finite_parameter(model)
    if bad is not None:
        kind = "NaN" if torch.isnan(model.get_parameter(bad)).any() else "Inf"
        raise BaseModelError(
            f"{label}: parameter {bad} holds {kind} values in float32, the precision bertpt trains in: the "
            "checkpoint is broken (a training run that diverged, a damaged file, or values beyond float32's "
            "range of about 3.4e38). Use an earlier checkpoint or re-export the model"
        )
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
