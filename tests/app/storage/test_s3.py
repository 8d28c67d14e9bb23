"""S3 storage against a real S3-protocol server (moto's, on loopback): uploads stream as multipart parts,
reads take a byte range, a directory is deleted by prefix, fetched inputs are cached by key and ETag,
a run's workspace moves between two workers' caches, and the sweep aborts abandoned uploads."""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
import httpx
import pytest

from app.config import Settings
from app.storage import StorageError, get_storage
from app.storage.s3 import MIN_PART_BYTES, S3Storage

MiB = 1 << 20


def objects(storage: S3Storage, prefix: str = "") -> dict[str, int]:
    """Every object of the bucket under ``prefix``, with its size."""
    pages = storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=prefix)
    return {item["Key"]: item["Size"] for page in pages for item in page.get("Contents", [])}


def uploads(storage: S3Storage) -> list[dict[str, Any]]:
    return [
        dict(upload)
        for upload in storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    ]


def test_an_upload_larger_than_a_part_is_streamed_in_parts(s3_storage: S3Storage) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with s3_storage.open_write("corpora/c1/corpus.txt") as pending:
        for _ in range(6):
            pending.write(chunk)
        # The first 5 MiB already left as part 1 of an upload; the object does not exist yet.
        (upload,) = uploads(s3_storage)
        parts = s3_storage.client.list_parts(
            Bucket=s3_storage.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )["Parts"]
        assert [part["Size"] for part in parts] == [MIN_PART_BYTES]
        assert not s3_storage.exists("corpora/c1/corpus.txt")
        for _ in range(6):
            pending.write(chunk)
        pending.commit()
    head = s3_storage.client.head_object(Bucket=s3_storage.bucket, Key="bertpt/test/corpora/c1/corpus.txt")
    assert head["ContentLength"] == 12 * MiB and head["ETag"].endswith('-3"')  # three parts
    assert uploads(s3_storage) == []
    with s3_storage.open_read("corpora/c1/corpus.txt", start=12 * MiB - 3) as stream:
        assert stream.read() == chunk[-3:]

    with pytest.raises(RuntimeError), s3_storage.open_write("corpora/c2/corpus.txt") as pending:
        pending.write(chunk * 6)
        raise RuntimeError("the client went away")
    assert uploads(s3_storage) == [] and not s3_storage.exists("corpora/c2/corpus.txt")


def test_a_range_is_read_and_downloaded_without_the_rest(s3_storage: S3Storage) -> None:
    data = bytes(range(256)) * 40
    with s3_storage.open_write("runs/r1/model/model.safetensors") as pending:
        pending.write(data)
        pending.commit()
    with s3_storage.open_read("runs/r1/model/model.safetensors", start=1000, end=1010) as stream:
        assert stream.read() == data[1000:1010]  # the GET asked for these bytes only

    url = s3_storage.presigned_url("runs/r1/model/model.safetensors", expires_seconds=60, filename="m.bin")
    assert url is not None
    response = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert response.status_code == 206 and response.content == data[100:200]
    assert "m.bin" in response.headers["content-disposition"]


def test_a_directory_is_deleted_by_prefix(s3_storage: S3Storage) -> None:
    for step in range(3):
        for name in ("weights", "optimizer.pt", "manifest.json"):
            with s3_storage.open_write(f"runs/r1/checkpoints/checkpoint-{step}/{name}") as pending:
                pending.write(b"x")
                pending.commit()
    with s3_storage.open_write("runs/r10/metrics.jsonl") as pending:
        pending.write(b"{}")
        pending.commit()
    assert len(objects(s3_storage, "bertpt/test/runs/r1/")) == 9
    s3_storage.delete("runs/r1")
    assert objects(s3_storage) == {"bertpt/test/runs/r10/metrics.jsonl": 2}


def test_fetched_files_are_cached_by_key_and_etag(s3_storage: S3Storage, tmp_path: Path) -> None:
    with s3_storage.open_write("corpora/c1/corpus.txt") as pending:
        pending.write(b"first version\n")
        pending.commit()
    first = s3_storage.fetch("corpora/c1/corpus.txt")
    assert first.is_relative_to(tmp_path / "cache") and first.read_bytes() == b"first version\n"
    stat = first.stat()
    again = s3_storage.fetch("corpora/c1/corpus.txt")
    assert again == first and again.stat().st_ino == stat.st_ino  # not downloaded again

    shutil.rmtree(tmp_path / "cache")  # the worker's cache wiped: fetched again
    refetched = s3_storage.fetch("corpora/c1/corpus.txt")
    assert refetched == first and refetched.read_bytes() == b"first version\n"

    s3_storage.delete("corpora/c1/corpus.txt")
    with s3_storage.open_write("corpora/c1/corpus.txt") as pending:
        pending.write(b"second version\n")
        pending.commit()
    changed = s3_storage.fetch("corpora/c1/corpus.txt")  # another ETag: another entry
    assert changed != first and changed.read_bytes() == b"second version\n"


def test_a_workspace_moves_between_workers(s3_bucket: str, tmp_path: Path) -> None:
    """Worker A trains and pushes (each manifest after its directory's other files); worker B, with a
    cache of its own, pulls what A left, and follows A's rotation on its next pull."""
    a = S3Storage(s3_bucket, cache_dir=tmp_path / "a", part_bytes=MIN_PART_BYTES)
    b = S3Storage(s3_bucket, cache_dir=tmp_path / "b", part_bytes=MIN_PART_BYTES)
    uploaded: list[str] = []
    upload_file = a.upload_file

    def recorded_upload(path: Path, name: str) -> str:
        uploaded.append(name)
        return upload_file(path, name)

    a.upload_file = recorded_upload  # type: ignore[method-assign]

    at_a = a.workspace("runs/r1")
    at_a.pull()
    for step in (2, 4):
        checkpoint = at_a.path / "checkpoints" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        for name in ("manifest.json", "weights", "trainer_state.json"):
            (checkpoint / name).write_text(f"{name} {step}")
    (at_a.path / "metrics.jsonl").write_text("{}\n")
    at_a.push(last=("manifest.json",))
    assert [name.rsplit("/", 1)[1] for name in uploaded][-2:] == ["manifest.json", "manifest.json"]

    at_b = b.workspace("runs/r1")
    assert not at_b.path.exists()
    at_b.pull()
    assert (at_b.path / "checkpoints" / "checkpoint-4" / "weights").read_text() == "weights 4"
    assert (at_b.path / "metrics.jsonl").read_text() == "{}\n"

    shutil.rmtree(at_a.path / "checkpoints" / "checkpoint-2")  # rotated away at A
    uploaded.clear()
    at_a.push("checkpoints")
    assert uploaded == []  # nothing changed but the deletion
    at_b.pull()
    assert not (at_b.path / "checkpoints" / "checkpoint-2").exists()
    assert (at_b.path / "checkpoints" / "checkpoint-4" / "manifest.json").is_file()

    at_b.release()
    assert not at_b.path.exists() and b.exists("runs/r1/checkpoints/checkpoint-4/weights")


def test_skipped_paths_are_neither_uploaded_nor_deleted(s3_storage: S3Storage) -> None:
    workspace = s3_storage.workspace("runs/r1")
    workspace.pull()
    (workspace.path / "checkpoints" / "tmp-checkpoint-6").mkdir(parents=True)
    (workspace.path / "checkpoints" / "tmp-checkpoint-6" / "weights").write_text("half")

    def in_progress(path: PurePosixPath) -> bool:
        return path.parts[0].startswith("tmp-")

    workspace.push("checkpoints", skip=in_progress)
    assert s3_storage.list_files("runs/r1") == []


def test_the_sweep_aborts_abandoned_uploads_and_tree_temporaries(s3_storage: S3Storage) -> None:
    with s3_storage.open_tree("checkpoints/k1") as tree:
        (tree.path / "config.json").write_text("{}")
        tree.commit()
    assert set(objects(s3_storage)) == {"bertpt/test/checkpoints/k1/config.json"}  # no .tmp/ left
    client, bucket = s3_storage.client, s3_storage.bucket
    client.put_object(Bucket=bucket, Key="bertpt/test/.tmp/abc123/config.json", Body=b"{}")
    with s3_storage.open_write("corpora/c1/corpus.txt") as pending:  # an upload in progress: a part is up
        pending.write(bytes(MIN_PART_BYTES))
        # (moto reports a fixed "Initiated" time in 2010: the part's time is what shows the upload is young.)
        assert s3_storage.remove_stale_temporaries(older_than=3600) == []
        # A negative age puts the cutoff in the future: everything is older than it.
        removed = s3_storage.remove_stale_temporaries(older_than=-60)
    assert sorted(removed) == [".tmp/abc123", "multipart upload of bertpt/test/corpora/c1/corpus.txt"]
    assert uploads(s3_storage) == []
    assert set(objects(s3_storage)) == {"bertpt/test/checkpoints/k1/config.json"}


def test_the_settings_name_the_bucket_and_boto3_the_endpoint(s3_bucket: str, tmp_path: Path) -> None:
    settings = Settings(
        storage_url=f"s3://{s3_bucket}/deployments/one/",
        storage_cache_dir=str(tmp_path / "cache"),
        storage_part_bytes=8 * MiB,
    )
    storage = get_storage(settings)
    assert isinstance(storage, S3Storage)
    assert (storage.bucket, storage.prefix, storage.part_bytes) == (s3_bucket, "deployments/one", 8 * MiB)
    with storage.open_write("corpora/c1/corpus.txt") as pending:
        pending.write(b"text\n")
        pending.commit()
    listed = boto3.session.Session().client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [item["Key"] for item in listed] == ["deployments/one/corpora/c1/corpus.txt"]
    for url in ("s3://", "s3:///prefix", "s3://bucket/../up", "http://bucket"):
        with pytest.raises(ValueError, match="s3://"):
            Settings(storage_url=url)
    with pytest.raises(ValueError):
        Settings(storage_url=f"s3://{s3_bucket}", storage_part_bytes=MiB)


def test_an_unreachable_store_is_a_storage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard: nothing listens
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage = S3Storage("bucket", cache_dir=tmp_path, part_bytes=MIN_PART_BYTES)
    with pytest.raises(StorageError, match="S3 storage failed"):
        storage.exists("corpora/c1/corpus.txt")
