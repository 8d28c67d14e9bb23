"""The ``--config run.json`` of ``runs create`` and ``corpora analyze``: the run-config JSON of ``bertpt
train --config`` (the hyperparameters as one object) or a ``POST /v1/runs`` body (``base_model``,
``corpus_id``, ``resources``... and ``hyperparameters``). The rule (:data:`RUN_CONFIG_RULE`): an object with
any top-level field of :class:`~app.runs.schemas.RunCreate` is a run body, any other object the
hyperparameters alone (no hyperparameter shares a name with a body field). The values are checked by the
API (the same 422s as the REST body)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from app.runs.schemas import RunCreate

__all__ = ["RUN_CONFIG_RULE", "read_run_config"]

# Said by `runs create --help` and the README: how a --config file is read.
RUN_CONFIG_RULE = (
    "a JSON object with any POST /v1/runs body field (base_model, corpus_id, resources, hyperparameters, "
    "...) is a run body; any other object is the hyperparameters alone (as `bertpt train --config`)"
)
_BODY_FIELDS = frozenset(RunCreate.model_fields)


def read_run_config(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(body fields, hyperparameters)`` of the file at ``path`` (both empty for None): a JSON object with
    any field of a ``POST /v1/runs`` body (:class:`~app.runs.schemas.RunCreate`) is a run body (its
    ``hyperparameters``, empty when absent, returned apart), any other JSON object the hyperparameters
    alone. Raises click.BadParameter naming the file when it is not such a JSON object, or a body's
    ``hyperparameters`` is not one."""
    if path is None:
        return {}, {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.BadParameter(
            f"{path}: cannot read the run config: {exc}", param_hint="--config"
        ) from None
    if not isinstance(loaded, dict):
        raise click.BadParameter(f"{path}: the run config must be a JSON object", param_hint="--config")
    if not _BODY_FIELDS.intersection(loaded):
        return {}, loaded
    hyperparameters = loaded.get("hyperparameters", {})
    if not isinstance(hyperparameters, dict):
        raise click.BadParameter(f"{path}: hyperparameters must be a JSON object", param_hint="--config")
    return {k: v for k, v in loaded.items() if k != "hyperparameters"}, dict(hyperparameters)
