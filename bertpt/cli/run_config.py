"""The ``--config run.json`` of ``runs create`` and ``corpora analyze``: the run-config JSON of ``bertpt
train --config`` (the hyperparameters as one object) or a ``POST /v1/runs`` body (``base_model``,
``corpus_id``... and ``hyperparameters``), read as :func:`worker.pretraining.hyperparameters.
load_hyperparameters` reads it. The values are checked by the API (the same 422s as the REST body)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["read_run_config"]


def read_run_config(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(body fields, hyperparameters)`` of the file at ``path`` (both empty for None): a JSON object with
    a ``hyperparameters`` object is a run body, any other JSON object the hyperparameters alone. Raises
    click.BadParameter naming the file when it is not such a JSON object."""
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
    if "hyperparameters" not in loaded:
        return {}, loaded
    hyperparameters = loaded["hyperparameters"]
    if not isinstance(hyperparameters, dict):
        raise click.BadParameter(f"{path}: hyperparameters must be a JSON object", param_hint="--config")
    return {k: v for k, v in loaded.items() if k != "hyperparameters"}, dict(hyperparameters)
