"""The storage interface, whatever holds it: every test but the first runs against a local directory and
against an S3 bucket on a real S3-protocol server (``any_storage``)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from app.storage import Storage, StorageKeyError, validate_key


@pytest.mark.parametrize(
    "key", ["", "/abs", "../up", "a/../b", "a//b", "./a", "a\\b", ".tmp/x", "a/.hidden", "a\x00"]
)
def test_unsafe_keys_are_refused(key: str) -> None:
    with pytest.raises(StorageKeyError):
        validate_key(key)


def read(storage: Storage, key: str, **range_: int) -> bytes:
    with storage.open_read(key, **range_) as stream:
        return stream.read()


def test_a_write_appears_only_when_committed(any_storage: Storage) -> None:
    with any_storage.open_write("corpora/c1/corpus.txt") as pending:
        pending.write(b"hello ")
        pending.write(b"world")
        assert not any_storage.exists("corpora/c1/corpus.txt")
        pending.commit()
    assert pending.bytes_written == 11
    assert read(any_storage, "corpora/c1/corpus.txt") == b"hello world"
    assert any_storage.size("corpora/c1/corpus.txt") == 11

    with any_storage.open_write("corpora/c2/corpus.txt") as pending:
        pending.write(b"never committed")
    with pytest.raises(RuntimeError), any_storage.open_write("corpora/c3/corpus.txt") as pending:
        pending.write(b"partial")
        raise RuntimeError("upload failed")
    assert not any_storage.exists("corpora/c2/corpus.txt") and not any_storage.exists("corpora/c3/corpus.txt")
    with pytest.raises(FileNotFoundError):
        read(any_storage, "corpora/c2/corpus.txt")


def test_a_tree_appears_whole_when_committed(any_storage: Storage) -> None:
    with any_storage.open_tree("checkpoints/k1") as tree:
        (tree.path / "config.json").write_text("{}")
        (tree.path / "tokenizer").mkdir()
        (tree.path / "tokenizer" / "vocab.txt").write_text("[PAD]\n")
        (tree.path / "model.safetensors").write_bytes(b"12345")
        assert not any_storage.exists("checkpoints/k1")
        tree.commit()
    assert [(file.name, file.size) for file in any_storage.list_files("checkpoints/k1")] == [
        ("config.json", 2),
        ("model.safetensors", 5),
        ("tokenizer/vocab.txt", 6),
    ]
    assert any_storage.size("checkpoints/k1") == 13
    with any_storage.open_tree("checkpoints/k1") as tree, pytest.raises(FileExistsError):
        tree.commit()
    with any_storage.open_tree("checkpoints/k2") as tree:
        (tree.path / "config.json").write_text("{}")
    assert not any_storage.exists("checkpoints/k2")
    assert any_storage.list_files("checkpoints/missing") == []


def test_a_file_is_read_from_an_offset(any_storage: Storage) -> None:
    with any_storage.open_write("corpora/c1/corpus.txt") as pending:
        pending.write(bytes(range(256)))
        pending.commit()
    assert read(any_storage, "corpora/c1/corpus.txt", start=250) == bytes(range(250, 256))
    assert read(any_storage, "corpora/c1/corpus.txt", start=10, end=14)[:4] == bytes(range(10, 14))


def test_fetch_gives_local_files_named_like_the_key(any_storage: Storage) -> None:
    with any_storage.open_write("datasets/d1/train.tsv") as pending:
        pending.write(b"text\tlabel\n")
        pending.commit()
    with any_storage.open_tree("checkpoints/k1") as tree:
        (tree.path / "config.json").write_text('{"a": 1}')
        tree.commit()
    train = any_storage.fetch("datasets/d1/train.tsv")
    assert train.name == "train.tsv" and train.read_bytes() == b"text\tlabel\n"
    model = any_storage.fetch("checkpoints/k1")
    assert model.name == "k1" and (model / "config.json").read_text() == '{"a": 1}'
    with pytest.raises(FileNotFoundError):
        any_storage.fetch("checkpoints/missing")


def test_a_workspace_is_pushed_to_storage(any_storage: Storage) -> None:
    workspace = any_storage.workspace("runs/r1")
    workspace.pull()
    (workspace.path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (workspace.path / "checkpoints" / "checkpoint-2" / "weights").write_bytes(b"w2")
    (workspace.path / "checkpoints" / "checkpoint-2" / "manifest.json").write_text("{}")
    (workspace.path / "checkpoints" / "tmp-checkpoint-4").mkdir()
    (workspace.path / "checkpoints" / "tmp-checkpoint-4" / "weights").write_bytes(b"half")
    (workspace.path / "metrics.jsonl").write_text('{"step": 2}\n')

    def in_progress(path: PurePosixPath) -> bool:
        return any(part.startswith("tmp-") for part in path.parts)

    workspace.push("checkpoints", last=("manifest.json",), skip=in_progress)
    names = {file.name for file in any_storage.list_files("runs/r1")}
    assert {"checkpoints/checkpoint-2/weights", "checkpoints/checkpoint-2/manifest.json"} <= names
    workspace.push(last=("manifest.json",), skip=in_progress)
    assert read(any_storage, "runs/r1/metrics.jsonl") == b'{"step": 2}\n'

    (workspace.path / "checkpoints" / "checkpoint-2" / "weights").unlink()
    (workspace.path / "metrics.jsonl").write_text('{"step": 2}\n{"step": 3}\n')
    workspace.push(skip=in_progress)
    assert not any_storage.exists("runs/r1/checkpoints/checkpoint-2/weights")
    assert read(any_storage, "runs/r1/metrics.jsonl") == b'{"step": 2}\n{"step": 3}\n'


def test_delete_removes_a_directory_and_nothing_beside_it(any_storage: Storage) -> None:
    for key in (
        "runs/r1/model/config.json",
        "runs/r1/metrics.jsonl",
        "runs/r10/metrics.jsonl",
        "runs/r1.txt",
    ):
        with any_storage.open_write(key) as pending:
            pending.write(b"x")
            pending.commit()
    any_storage.delete("runs/r1")
    assert not any_storage.exists("runs/r1") and any_storage.list_files("runs/r1") == []
    assert any_storage.exists("runs/r10/metrics.jsonl") and any_storage.exists("runs/r1.txt")
    any_storage.delete("runs/never-existed")


def test_young_temporaries_survive_the_sweep(any_storage: Storage, tmp_path: Path) -> None:
    with any_storage.open_write("corpora/c1/corpus.txt") as pending:
        pending.write(b"text\n" * 10)
        assert any_storage.remove_stale_temporaries(older_than=3600) == []
        pending.commit()
    assert any_storage.exists("corpora/c1/corpus.txt")
    assert any_storage.local_cache_dir("prepared").name == "prepared"
