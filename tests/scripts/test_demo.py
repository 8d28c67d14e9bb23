"""The demo's own helpers (scripts/demo.py is a script, loaded here from its file): starting over keeps the
prepared-data cache, what the demo leaves on disk is measured and explained, and its closing lines say
what runs, where the run's files are and how to keep the service up. The whole demo: ``make demo``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from worker.pretraining.layout import TRAINING_STATE_PATTERNS

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"
MB = 1_000_000


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bertpt_demo_script", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def sized(path: Path, size: int) -> Path:
    """A file of ``size`` bytes (sparse: nothing is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
    return path


def a_finished_demo(demo: ModuleType, var: Path, run_id: str = "run_1") -> tuple[Any, Path]:
    """``var`` as a demo leaves it: a run with a checkpoint (weights + training state) and a model, a
    downloaded model, the prepared-data cache, a corpus, an earlier run, the database and logs."""
    paths = demo.DemoPaths(var)
    run = paths.run(run_id)
    checkpoint = run.checkpoint(30)
    sized(checkpoint / "model.safetensors", 90 * MB)
    sized(checkpoint / "optimizer.pt", 180 * MB)
    sized(checkpoint / "rng_state.pth", 1 * MB)
    sized(run.model / "model.safetensors", 90 * MB)
    sized(run.metrics, 20_000)
    model_dir = sized(paths.downloads / "models" / f"{run_id}-model" / "model.safetensors", 90 * MB).parent
    sized(paths.prepared / "abc" / "train-00000.parquet", 600_000)
    sized(paths.storage / "corpora" / "corp_1" / "corpus.txt", 1_500_000)
    sized(paths.run("run_0").model / "model.safetensors", 90 * MB)
    sized(paths.database, 200_000)
    sized(paths.logs / "worker.log", 10_000)
    return paths, model_dir


def test_reset_deletes_the_earlier_runs_but_keeps_the_prepared_data_cache(
    demo: ModuleType, tmp_path: Path
) -> None:
    paths, _ = a_finished_demo(demo, tmp_path / "var")
    cached = paths.prepared / "abc" / "train-00000.parquet"
    demo.reset(paths)
    assert cached.exists()
    assert sorted(p.name for p in paths.storage.iterdir()) == [paths.prepared.name]
    assert not paths.database.exists() and not paths.downloads.exists() and not paths.logs.exists()
    demo.reset(paths)  # twice, or on a fresh clone: nothing to delete is no error
    demo.reset(demo.DemoPaths(tmp_path / "nothing-here"))


def test_directory_bytes_counts_files_and_never_follows_links(demo: ModuleType, tmp_path: Path) -> None:
    sized(tmp_path / "a" / "x.bin", 1000)
    sized(tmp_path / "a" / "deep" / "optimizer.pt", 500)
    outside = sized(tmp_path / "outside" / "big.bin", 10 * MB)
    (tmp_path / "a" / "link").symlink_to(outside.parent)
    assert demo.directory_bytes(tmp_path / "a") < 2000  # the link's own few bytes, not the 10 MB
    assert demo.directory_bytes(tmp_path / "a" / "x.bin") == 1000
    assert demo.directory_bytes(tmp_path / "missing") == 0
    assert demo.directory_bytes(tmp_path / "a", keep=lambda f: f.name == "optimizer.pt") == 500


def test_the_disk_report_splits_var_into_the_run_its_training_state_the_download_and_the_cache(
    demo: ModuleType, tmp_path: Path
) -> None:
    paths, model_dir = a_finished_demo(demo, tmp_path / "var")
    lines = demo.disk_report(paths, "run_1", model_dir)
    text = " ".join(" ".join(lines).split())  # the columns' spacing aside
    assert lines[0] == f"disk: {paths.var} holds {demo.megabytes(demo.directory_bytes(paths.var))}"
    # this run: checkpoint 271 MB, 181 MB of it optimizer and RNG state (the layout's training-state names)
    assert "this run 361 MB its checkpoint 271 MB (181 MB of it the optimizer" in text
    assert "its model 90 MB" in text
    assert "downloaded model 90 MB (the .tar deleted once extracted)" in text
    assert "prepared data 0.6 MB cached" in text
    # the rest: the earlier run (90 MB), the corpus, the database and the logs
    assert "the rest 92 MB earlier demo runs" in text
    assert "DEMO_ARGS=--reset" in lines[-1] and "make clean" in lines[-1]
    assert "optimizer.pt" in TRAINING_STATE_PATTERNS  # what the report counts as training state


def outcome(demo: ModuleType, model_dir: Path, pages: dict[str, bool]) -> Any:
    return demo.Outcome(
        base_url="http://127.0.0.1:4321",
        key="bpt_secretsecretsecret",
        redis_url="redis://127.0.0.1:6379/0",
        run_id="run_1",
        model_dir=model_dir,
        pages=pages,
    )


def test_the_closing_lines_when_the_demo_stopped_the_service(demo: ModuleType, tmp_path: Path) -> None:
    paths, model_dir = a_finished_demo(demo, tmp_path / "var")
    lines = demo.closing_lines(outcome(demo, model_dir, {"/docs": True, "/ui/": True}), paths, None)
    text = "\n".join(lines)
    assert "stopped with the demo; make demo DEMO_ARGS=--keep-running leaves it up" in text
    assert "http://127.0.0.1:4321/docs" in text and "http://127.0.0.1:4321/ui/" in text
    assert "bpt_secretsecretsecret" not in text  # the key is of no use once the API is stopped
    run = paths.run("run_1")
    assert f"--logdir {run.tensorboard}" in text
    assert str(run.metrics) in text
    assert "bertpt corpora upload" in text and "--follow" in text and "bertpt login" in text
    assert lines[-len(demo.disk_report(paths, "run_1", model_dir)) :] == demo.disk_report(
        paths, "run_1", model_dir
    )  # the disk is the last word


def test_the_closing_lines_when_the_service_keeps_running(demo: ModuleType, tmp_path: Path) -> None:
    paths, model_dir = a_finished_demo(demo, tmp_path / "var")
    lines = demo.closing_lines(outcome(demo, model_dir, {"/docs": True, "/ui/": False}), paths, [11, 12])
    text = "\n".join(lines)
    assert "still running (stop it with: kill 11 12)" in text
    assert "export BERTPT_API_URL=http://127.0.0.1:4321 BERTPT_API_KEY=bpt_secretsecretsecret" in text
    assert "/ui/" not in text  # a page that did not answer is not offered
