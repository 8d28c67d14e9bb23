"""A run's checkpoint directories: atomic publication, rotation, discovery, and the resume check.

A checkpoint is written into ``tmp-checkpoint-<step>-<random>`` and only renamed to
``checkpoint-<step>`` once every file, the manifest last, is on disk (files and directory fsynced).
Anything named ``tmp-*`` is an interrupted write or deletion: never resumed from, removed at the next
start. A checkpoint counts as complete when its manifest and the trainer state are present.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.layout import CHECKPOINT_MANIFEST, TMP_PREFIX, TRAINER_STATE, checkpoint_step

__all__ = [
    "RESUME_INSENSITIVE",
    "ResumeError",
    "complete_checkpoints",
    "is_complete_checkpoint",
    "latest_checkpoint",
    "publish_directory",
    "remove_incomplete",
    "resume_mismatches",
    "rotate_checkpoints",
    "write_json",
]

# Hyperparameters that may change between an interrupted run and its resume: they do not change what
# is trained (when and how often things are logged, evaluated or saved, the time budget, execution
# details). Everything else must match, or the resumed run would not be the run that was started.
RESUME_INSENSITIVE = frozenset(
    {
        "max_runtime_seconds",
        "max_nonfinite_steps",
        "keep_checkpoints",
        "logging_every_steps",
        "checkpoint_every_steps",
        "eval_every_steps",
        "torch_compile",
        "precision",
    }
)
# Run-level facts that must match for a resume (the hyperparameters are compared field by field). The
# replay corpus and its prepared data are trained on: another one would be another run.
RESUME_KEYS = (
    "corpus_sha256",
    "data_key",
    "reference_corpus_sha256",
    "replay_corpus_sha256",
    "replay_data_key",
    "base_model_sha256",
)


class ResumeError(ValueError):
    """The output directory holds a run that is not this one (other corpus, base or parameters)."""

    def __init__(self, directory: Path, problems: list[str]):
        self.problems = problems
        super().__init__(
            f"{directory} holds checkpoints of a different run ({'; '.join(problems)}). Use another output "
            "directory, or restore the original settings to resume it."
        )


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every file under ``directory`` and the directories themselves to disk."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename: readers see the old or the new file, whole.
    ValueError on a NaN or an infinity: JSON has none (write records with ``json_object()``)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    text = json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=False)
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def temporary_sibling(final: Path, tag: str = "") -> Path:
    return final.parent / f"{TMP_PREFIX}{final.name}{tag}-{uuid.uuid4().hex[:8]}"


def _remove(directory: Path) -> None:
    """Rename out of the way first, so a crash half-way through the deletion leaves a ``tmp-`` name
    rather than a checkpoint that looks complete but is not."""
    if not directory.exists():
        return
    doomed = temporary_sibling(directory, ".deleting")
    os.replace(directory, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def publish_directory(tmp: Path, final: Path) -> Path:
    """Make the fully written ``tmp`` visible as ``final`` in one rename (replacing an older ``final``)."""
    fsync_tree(tmp)
    if final.exists():
        _remove(final)
    os.replace(tmp, final)
    _fsync(final.parent)
    return final


def is_complete_checkpoint(names: Collection[str]) -> bool:
    """Whether a checkpoint directory holding the files ``names`` is complete: its manifest and the trainer
    state are there (the service asks this of a checkpoint in its storage, from a listing)."""
    return CHECKPOINT_MANIFEST in names and TRAINER_STATE in names


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        step = checkpoint_step(entry.name)
        if step is not None and entry.is_dir():
            names = {child.name for child in entry.iterdir() if child.is_file()}
            if is_complete_checkpoint(names):
                found.append((step, entry))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    checkpoints = complete_checkpoints(root)
    return checkpoints[-1][1] if checkpoints else None


def remove_incomplete(root: Path) -> list[Path]:
    """Delete interrupted writes and deletions (``tmp-*``) and checkpoint-named directories without a
    manifest; returns what was removed."""
    if not root.is_dir():
        return []
    complete = {path for _, path in complete_checkpoints(root)}
    removed = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name.startswith(TMP_PREFIX) or (
            checkpoint_step(entry.name) is not None and entry not in complete
        ):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def rotate_checkpoints(root: Path, keep: int, protect: Iterable[int] = ()) -> list[Path]:
    """Keep the ``keep`` newest complete checkpoints (by step), and those of the steps in ``protect``
    (the selected step of ``select_checkpoint``) besides; returns the removed ones."""
    checkpoints = complete_checkpoints(root)
    kept = set(protect)
    doomed = [path for step, path in checkpoints[: max(0, len(checkpoints) - keep)] if step not in kept]
    for path in doomed:
        _remove(path)
    return doomed


def _differences(
    saved: dict[str, Any],
    current: dict[str, Any],
    ignore: Iterable[str],
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """What differs between ``saved`` and ``current``; a name absent from ``saved`` (written before it
    existed) whose ``current`` value is its default in ``defaults`` does not."""
    skip = set(ignore)
    defaults = defaults or {}
    out = []
    for name in sorted(set(saved) | set(current)):
        if name in skip:
            continue
        if name not in saved and name in defaults and current.get(name) == defaults[name]:
            continue
        if saved.get(name) != current.get(name):
            out.append(f"{name}: {saved.get(name)!r} in the checkpoint, {current.get(name)!r} now")
    return out


def _hyperparameter_defaults() -> dict[str, Any]:
    """Every hyperparameter's default: a checkpoint of an earlier bertpt lacks the fields added since, and
    at their defaults they change nothing (``replay_ratio`` 0 is no replay)."""
    return {name: info.default for name, info in Hyperparameters.model_fields.items()}


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Why a checkpoint manifest's run (``saved["run"]``) is not the run described by ``current``."""
    saved_run = saved.get("run") or {}
    problems = []
    for key in RESUME_KEYS:
        if saved_run.get(key) != current.get(key):
            what = key.replace("_sha256", "").replace("_", " ")
            problems.append(
                f"{what} differs ({key} {saved_run.get(key)!r} in the checkpoint, {current.get(key)!r} now)"
            )
    problems += [
        f"hyperparameter {p}"
        for p in _differences(
            saved_run.get("hyperparameters") or {},
            current.get("hyperparameters") or {},
            RESUME_INSENSITIVE,
            _hyperparameter_defaults(),
        )
    ]
    return problems
