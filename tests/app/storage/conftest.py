"""Storage backends for the contract tests: every test that takes ``any_storage`` runs against a local
directory and against an S3 bucket on a real S3-protocol server (moto's, started by ``s3_bucket``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.storage import LocalStorage, Storage
from app.storage.s3 import MIN_PART_BYTES, S3Storage


@pytest.fixture
def s3_storage(s3_bucket: str, tmp_path: Path) -> S3Storage:
    """S3 storage under a prefix of a new bucket, with the smallest part S3 allows (5 MiB)."""
    return S3Storage(s3_bucket, "bertpt/test", cache_dir=tmp_path / "cache", part_bytes=MIN_PART_BYTES)


@pytest.fixture(params=["local", "s3"])
def any_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "storage")
    storage: S3Storage = request.getfixturevalue("s3_storage")
    return storage
