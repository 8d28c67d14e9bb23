"""What goes into a download archive: the files of a run directory, with or without the training state."""

from __future__ import annotations

from pathlib import Path

from app.runs.download_archive import archive_members
from app.storage import LocalStorage
from worker.pretraining.layout import is_training_state


def test_member_selection(tmp_path: Path) -> None:
    for name in (
        "optimizer.pt",
        "scheduler.pt",
        "scaler.pt",
        "rng_state.pth",
        "rng_state_3.pth",
        "trainer_state.json",
    ):
        assert is_training_state(name)
    assert not is_training_state("model.safetensors") and not is_training_state("config.json")
    files = LocalStorage(tmp_path).list_files
    tmp_path = tmp_path / "model"
    (tmp_path / "tokenizer").mkdir(parents=True)
    (tmp_path / "tokenizer" / "vocab.txt").write_text("x")
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "tmp-half-written").mkdir()
    (tmp_path / "tmp-half-written" / "x").write_text("x")
    (tmp_path / "link.json").symlink_to(tmp_path / "config.json")
    (tmp_path / "optimizer.pt").write_text("x")
    assert [file.name for file in archive_members(files("model"), include_training_state=False)] == [
        "config.json",
        "tokenizer/vocab.txt",
    ]
    assert [file.name for file in archive_members(files("model"), include_training_state=True)] == [
        "config.json",
        "optimizer.pt",
        "tokenizer/vocab.txt",
    ]
