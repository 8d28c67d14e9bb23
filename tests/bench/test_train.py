"""``bench/train.py`` on the CPU: one invocation measures each path in its own process and reports the
speed figures (the GPU invocation is the same code with ``--device cuda``: docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # two short training runs of a tiny BERT, each in its own process


def test_the_benchmark_runs_on_the_cpu_with_a_tiny_config(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "train.py"),
        "--device", "cpu",
        "--models", "tiny",
        "--seq", "64",
        "--paths", "stock-eager,bertpt-default",
        "--warmup-steps", "5",
        "--timed-steps", "5",
        "--max-documents", "150",
        "--cache", str(tmp_path / "cache"),
        "--results-dir", str(tmp_path / "results"),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    runs = json.loads((tmp_path / "results" / "train-results.json").read_text())
    assert [(run["path"], run["status"]) for run in runs] == [("stock-eager", "ok"), ("bertpt-default", "ok")]
    for run in runs:
        assert run["real_tokens_per_s"] > 0 and run["samples_per_s"] > 0 and run["step_ms"] > 0
        assert run["mfu"] is None and run["device_name"]  # a CPU: no peak FLOP/s
        assert len(run["window_tokens_per_s"]) == 1 and run["final_loss"] > 0
    bertpt = runs[1]
    assert bertpt["compiled"] is False  # auto: eager on the CPU
    assert bertpt["padding_share"] < runs[0]["padding_share"]  # dynamic padding vs max_length
    block = (tmp_path / "results" / "train-results.md").read_text()
    assert "### bench/train.py on" in block
    assert "| tiny config, random init (2 x 64) | 64 | stock-eager |" in block
