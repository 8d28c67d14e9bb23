"""Built-in base models: one registry of names for the CLI and the service, found without importing the
packages that ship them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from worker.pretraining.builtin_models import BUILTIN_MODELS, builtin_model_dir, similar_builtin_names
from worker.pretraining.model_files import BaseModelError

MINILM = "minilm-l6-h384-uncased"


def test_a_builtin_name_is_its_installed_directory(minilm_dir: Path) -> None:
    assert builtin_model_dir(MINILM) == minilm_dir
    assert builtin_model_dir("bert-base-uncased") is None  # not a built-in: the caller tries the hub


def test_a_builtin_that_is_not_installed_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(BUILTIN_MODELS[MINILM], package="bertpt_tests_no_such_package")
    monkeypatch.setitem(BUILTIN_MODELS, MINILM, missing)
    with pytest.raises(BaseModelError, match=r"is not installed: pip install 'bertpt\[minilm\]'"):
        builtin_model_dir(MINILM)


@pytest.mark.parametrize(
    ("name", "similar"),
    [("minilm", [MINILM]), ("MiniLM-L6", [MINILM]), ("minilm-l6-h384-uncase", [MINILM]), ("bert-base", [])],
)
def test_near_misses_are_told_the_real_name(name: str, similar: list[str]) -> None:
    assert similar_builtin_names(name) == similar


def test_the_service_lists_the_same_registry() -> None:
    from app.base_models import service

    assert service.BUILTIN_MODELS is BUILTIN_MODELS
