"""The parts of transformers' ``Trainer`` that are not its public API but that
:class:`~worker.pretraining.trainer.PretrainingTrainer` overrides or calls, gathered in one place.

Trainer's private methods change between releases without notice. If one of these is renamed, or its
parameters change, the override would silently stop being called (or fail deep inside a training run),
so :func:`require_trainer_api` checks them all once when a trainer is built and names what changed; the
test suite checks the installed transformers the same way. When it fails after an upgrade, read the new
``transformers/trainer.py`` for the hook's new name or signature and adapt ``PretrainingTrainer``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["TRAINER_HOOKS", "TrainerAPIError", "TrainerHook", "check_trainer_api", "require_trainer_api"]


@dataclass(frozen=True)
class TrainerHook:
    name: str
    parameters: tuple[str, ...]  # the leading parameters after self that bertpt passes or receives
    why: str
    overridden: bool = False  # PretrainingTrainer replaces it (else it only calls it)


TRAINER_HOOKS: tuple[TrainerHook, ...] = (
    TrainerHook("_get_train_sampler", ("train_dataset",), "the length-grouped sampler", overridden=True),
    TrainerHook(
        "_wrap_model",
        ("model", "training", "dataloader"),
        "DDP around the loss module under torchrun",
        overridden=True,
    ),
    TrainerHook(
        "get_batch_samples",
        ("epoch_iterator", "num_batches", "device"),
        "counts the predicted tokens of a whole accumulated step",
        overridden=True,
    ),
    TrainerHook(
        "autocast_smart_context_manager",
        ("cache_enabled",),
        "autocast around the loss, which calls the model's submodules",
        overridden=True,
    ),
    TrainerHook(
        "_save_checkpoint",
        ("model", "trial"),
        "atomic checkpoints (temporary directory + rename) with bertpt's manifest",
        overridden=True,
    ),
    TrainerHook("log", ("logs", "start_time"), "training metrics to the run's sink", overridden=True),
    TrainerHook(
        "_get_grad_norm",
        ("model", "grad_norm"),
        "the gradient norm of the step, checked before the update",
        overridden=True,
    ),
    TrainerHook(
        "create_optimizer", ("model",), "an optimizer step that can be skipped (not finite)", overridden=True
    ),
    TrainerHook(
        "_issue_warnings_after_load",
        ("load_result",),
        "re-ties the decoder on resume instead of a missing-keys warning",
        overridden=True,
    ),
    TrainerHook(
        "_load_from_checkpoint",
        ("resume_from_checkpoint",),
        "the final step's weights on resume, the selected checkpoint's for the export",
    ),
    TrainerHook("_prepare_inputs", ("inputs",), "moves an evaluation batch to the device"),
    TrainerHook("save_model", ("output_dir", "_internal_call"), "the weights of a checkpoint"),
    TrainerHook("_save_optimizer_and_scheduler", ("output_dir",), "optimizer and scheduler of a checkpoint"),
    TrainerHook("_save_scaler", ("output_dir",), "the fp16 grad scaler of a checkpoint"),
    TrainerHook("_save_rng_state", ("output_dir",), "the RNG states of a checkpoint"),
    TrainerHook("store_flos", (), "the FLOP count kept in trainer_state.json"),
)
# Class attributes of Trainer that PretrainingTrainer sets.
TRAINER_ATTRIBUTES = ("loss_is_scaled_for_ga",)


class TrainerAPIError(RuntimeError):
    """The installed transformers' Trainer lacks a hook bertpt relies on, or changed its signature."""


def check_trainer_api(trainer_class: Any = None) -> list[str]:
    """What of :data:`TRAINER_HOOKS` and :data:`TRAINER_ATTRIBUTES` ``trainer_class`` (default:
    transformers' ``Trainer``) lacks or changed; empty when everything is as expected."""
    if trainer_class is None:
        from transformers import Trainer

        trainer_class = Trainer
    problems = []
    for hook in TRAINER_HOOKS:
        method = getattr(trainer_class, hook.name, None)
        if not callable(method):
            problems.append(f"Trainer.{hook.name} is gone (used for {hook.why})")
            continue
        names = [name for name in inspect.signature(method).parameters if name != "self"]
        if tuple(names[: len(hook.parameters)]) != hook.parameters:
            problems.append(
                f"Trainer.{hook.name} takes ({', '.join(names)}), bertpt expects "
                f"({', '.join(hook.parameters)}) first (used for {hook.why})"
            )
    for attribute in TRAINER_ATTRIBUTES:
        if not hasattr(trainer_class, attribute):
            problems.append(f"Trainer.{attribute} is gone")
    return problems


@lru_cache(maxsize=1)
def require_trainer_api() -> None:
    """Raise TrainerAPIError naming every hook the installed transformers changed."""
    problems = check_trainer_api()
    if problems:
        import transformers

        raise TrainerAPIError(
            f"transformers {transformers.__version__} changed Trainer internals that bertpt relies on: "
            + "; ".join(problems)
            + ". Install the transformers release bertpt was tested with (see pyproject.toml)."
        )
