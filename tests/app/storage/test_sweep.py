"""The sweep of temporary files left by writes whose process died: old ones go, the ones of writes in
progress (recently written, a file or anything inside a directory) stay."""

from __future__ import annotations

import os
import time
from pathlib import Path

from app.storage import LocalStorage, sweep_stale_uploads

HOUR = 3600.0


def aged(path: Path, seconds: float) -> Path:
    """``path`` and everything in it last written ``seconds`` ago."""
    when = time.time() - seconds
    for inner in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(inner, (when, when))
    return path


def test_stale_temporaries_are_swept_and_young_ones_kept(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    empty_part = storage.new_temp_path(suffix=".part")  # an upload killed before its first write
    empty_part.touch()
    aged(empty_part, 2 * HOUR)
    stale_tree = storage.new_temp_path(suffix=".dir")  # a checkpoint's extraction, killed
    (stale_tree / "sub").mkdir(parents=True)
    (stale_tree / "sub" / "config.json").write_text("{}")
    aged(stale_tree, 2 * HOUR)
    busy_tree = storage.new_temp_path(suffix=".scratch")  # old, but a file in it is being written
    busy_tree.mkdir()
    aged(busy_tree, 2 * HOUR)
    (busy_tree / "upload.tar.gz").write_bytes(b"arriving")
    young_part = storage.new_temp_path(suffix=".part")
    young_part.write_bytes(b"an upload in progress")
    aged(young_part, HOUR / 2)

    with storage.open_write("corpora/c1/corpus.txt") as pending:  # a write in progress in this process
        pending.write(b"text\n")
        removed = sweep_stale_uploads(storage, older_than=HOUR)
        pending.commit()  # unharmed
    assert sorted(removed) == sorted(f"removed {path.name}" for path in (empty_part, stale_tree))
    assert storage.temporary_entries() == sorted([busy_tree, young_part])
    assert storage.exists("corpora/c1/corpus.txt")
    assert sweep_stale_uploads(storage, older_than=HOUR) == []
    assert sweep_stale_uploads(LocalStorage(tmp_path / "never-written"), older_than=HOUR) == []
