"""Local storage: atomic writes and trees, no way out of the root through a symlink."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.storage import LocalStorage, StorageKeyError


def test_local_storage_writes_are_atomic(tmp_path: Path) -> None:
    storage = LocalStorage.from_url(f"file://{tmp_path}/root")
    with storage.open_write("corpora/c1/corpus.txt") as pending:
        pending.write(b"hello ")
        pending.write(b"world")
        assert not storage.exists("corpora/c1/corpus.txt")
        pending.commit()
    assert pending.bytes_written == 11
    with storage.open_read("corpora/c1/corpus.txt") as stream:
        assert stream.read() == b"hello world"
    assert storage.size("corpora/c1/corpus.txt") == 11

    with storage.open_write("corpora/c2/corpus.txt") as pending:
        pending.write(b"never committed")
    assert not storage.exists("corpora/c2/corpus.txt")
    assert storage.temporary_entries() == []

    with pytest.raises(RuntimeError), storage.open_write("corpora/c3/corpus.txt") as pending:
        pending.write(b"partial")
        raise RuntimeError("upload failed")
    assert storage.temporary_entries() == []

    storage.delete("corpora/c1/corpus.txt")
    assert not (storage.root / "corpora").exists()  # empty parents are pruned
    storage.delete("corpora/never/existed.txt")


def test_local_storage_trees(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with storage.open_tree("checkpoints/k1") as tree:
        (tree.path / "config.json").write_text("{}")
        (tree.path / "model.safetensors").write_bytes(b"12345")
        tree.commit()
    assert storage.size("checkpoints/k1") == 7
    assert storage.local_path("checkpoints/k1").is_dir()
    with storage.open_tree("checkpoints/k1") as tree, pytest.raises(FileExistsError):
        tree.commit()
    with storage.scratch_dir() as scratch:
        (scratch / "f").write_bytes(b"x")
    assert storage.temporary_entries() == []
    storage.delete("checkpoints/k1")
    assert not storage.exists("checkpoints/k1")


def test_local_storage_refuses_symlinks_out_of_the_root(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "root")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "escape").symlink_to(tmp_path)
    with pytest.raises(StorageKeyError):
        storage.local_path("escape/file")
