"""Extracting a checkpoint archive: a corrupt tail fails the whole, the unpacked size and the
decompression ratio are capped while it inflates."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from tests.support import fake_bert_files, tar_gz, zip_bytes


def test_truncated_archive_fails_as_a_whole(tmp_path: Path) -> None:
    """Members are extracted as the stream is read; a corrupt tail still fails the whole extraction (the
    caller's pending directory is then discarded)."""
    from app.checkpoints.extract import ArchiveError, extract_checkpoint_archive

    data = tar_gz(fake_bert_files())
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveError):
        extract_checkpoint_archive(archive, "tar.gz", target, max_members=64, max_bytes=1 << 20)


def test_highly_compressed_member_trips_the_unpacked_cap(tmp_path: Path) -> None:
    from app.checkpoints.extract import ArchiveTooLarge, extract_checkpoint_archive

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.md", b"a" * 5000)
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(buffer.getvalue())
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveTooLarge):
        extract_checkpoint_archive(archive, "zip", target, max_members=64, max_bytes=1000)


def test_a_tar_gz_counts_what_it_skips(tmp_path: Path) -> None:
    """The whole stream is held to the caps: a bomb in a member that is skipped (macOS junk) is not
    inflated for free to reach the next one."""
    from app.checkpoints.extract import ArchiveTooLarge, extract_checkpoint_archive

    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(tar_gz(fake_bert_files() | {"__MACOSX/._model.safetensors": bytes(16 << 20)}))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveTooLarge) as info:
        extract_checkpoint_archive(
            archive, "tar.gz", target, max_members=64, max_bytes=1 << 30, max_ratio=100
        )
    assert info.value.exceeded.cap == "ratio" and info.value.exceeded.decompressed < 16 << 20


def test_a_zip_member_is_held_to_the_ratio(tmp_path: Path) -> None:
    from app.checkpoints.extract import ArchiveTooLarge, extract_checkpoint_archive

    archive = tmp_path / "bomb.zip"
    archive.write_bytes(zip_bytes(fake_bert_files() | {"model.safetensors": bytes(16 << 20)}))
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ArchiveTooLarge) as info:
        extract_checkpoint_archive(archive, "zip", target, max_members=64, max_bytes=1 << 30, max_ratio=100)
    assert info.value.exceeded.cap == "ratio"
    assert (target / "model.safetensors").stat().st_size < 16 << 20  # stopped while writing it
