"""The Trainer internals bertpt relies on: present in the installed transformers, and a changed one is
named clearly."""

from __future__ import annotations

from typing import Any

import pytest

from worker.pretraining.trainer_api import (
    TRAINER_HOOKS,
    TrainerAPIError,
    check_trainer_api,
    require_trainer_api,
)


def test_the_installed_transformers_has_every_hook() -> None:
    assert check_trainer_api() == []
    require_trainer_api()


def test_the_overrides_are_the_hooks_listed() -> None:
    from transformers import Trainer

    from worker.pretraining.trainer import PretrainingTrainer

    overridden = {name for name in vars(PretrainingTrainer) if callable(getattr(Trainer, name, None))}
    private = {name for name in overridden if name.startswith("_") and not name.startswith("__")}
    listed = {hook.name for hook in TRAINER_HOOKS if hook.overridden}
    assert private <= listed, "a private Trainer method is overridden without being listed in trainer_api"


def test_a_changed_trainer_is_named() -> None:
    from transformers import Trainer

    class Renamed(Trainer):  # what a future release might look like
        _save_checkpoint = None  # type: ignore[assignment]

        def _load_from_checkpoint(self, checkpoint_path: str, model: Any = None) -> None: ...

    problems = check_trainer_api(Renamed)
    assert len(problems) == 2
    assert "Trainer._save_checkpoint is gone" in problems[0]
    assert "_load_from_checkpoint takes (checkpoint_path, model)" in problems[1]


def test_require_raises_with_the_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.pretraining import trainer_api

    monkeypatch.setattr(trainer_api, "check_trainer_api", lambda: ["Trainer.log is gone"])
    trainer_api.require_trainer_api.cache_clear()
    try:
        with pytest.raises(TrainerAPIError, match=r"changed Trainer internals.*Trainer\.log is gone"):
            trainer_api.require_trainer_api()
    finally:
        trainer_api.require_trainer_api.cache_clear()
