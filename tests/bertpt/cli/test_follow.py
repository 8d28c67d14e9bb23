"""``bertpt runs follow`` (and ``runs create --follow``) on a real tiny run trained by a real worker: the
live display ends with the baseline-vs-final table and the exit code of the outcome (0 succeeded, 2
cancelled); then the succeeded run's metrics, download, plot and comparison."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from app.runs.schemas import RunPublic
from bertpt.cli.follow import _RunView
from tests.bertpt.cli.conftest import BertptCli
from tests.e2e.conftest import ApiServer, Worker
from tests.support import TINY_HYPERPARAMETERS, directory_files, tar_gz


def _queued_run(max_steps: int) -> RunPublic:
    return RunPublic.model_validate(
        {
            "id": "run_a",
            "name": "short",
            "status": "queued",
            "base_model": "minilm-l6-h384-uncased",
            "corpus_id": "corp_x",
            "eval_corpus_id": None,
            "reference_corpus_id": None,
            "replay_corpus_id": None,
            "hyperparameters": {"max_steps": max_steps, "learning_rate": 1e-4},
            "created_at": "2025-01-01T00:00:00Z",
            "started_at": None,
            "finished_at": None,
            "progress": {},
            "latest": {},
            "baseline": {},
            "warnings": [],
            "error": None,
            "metadata": {},
            "attempt": 0,
            "cancel_requested": False,
        }
    )


def test_why_a_queued_run_waits_is_told_once_from_the_fetched_run() -> None:
    reason = "no worker serves training.gpu; start one with `bertpt worker --queues training.gpu --gpus 0`"
    run = _queued_run(max_steps=3)
    waiting = run.model_copy(update={"waiting_reason": reason})
    fetched: list[RunPublic] = []

    def fetch_run() -> RunPublic:
        fetched.append(waiting)
        return waiting

    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    view = _RunView(console, run, fetch_run=fetch_run)
    view.tell_waiting(run)  # no reason known yet: nothing
    view.tell_waiting(waiting.model_copy(update={"status": "preparing"}))  # not queued: nothing
    for status in ("preparing", "queued", "preparing", "queued"):  # requeued twice: fetched, told once
        view.on_event("status", {"status": status, "progress": {}})
    view.tell_waiting(waiting)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert len(fetched) == 4
    assert out.count("waiting: no worker serves training.gpu") == 1, out


def test_a_run_whose_steps_come_before_its_running_status_shows_them_running() -> None:
    """The worker publishes the `running` status with its heartbeat, after the interval's records: a short
    run's stream can go from `preparing` to its metrics and `succeeded` without one (seen on CI)."""
    run = _queued_run(max_steps=3)
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    view = _RunView(console, run, fetch_run=lambda: run)
    view.on_event("status", {"status": "preparing", "progress": {}})
    view.on_event(
        "event",
        {
            "type": "training_started",
            "message": "training 3 steps",
            "level": "info",
            "created_at": "2025-01-01T00:00:01Z",
            "data": {"max_steps": 3},
            "id": 1,
        },
    )
    for step in (1, 2, 3):
        view.on_event(
            "metric", {"split": "train", "step": step, "metrics": {"loss": 7.0, "learning_rate": 1e-4}}
        )
    view.on_event("status", {"status": "succeeded", "progress": {"step": 3, "total_steps": 3}})
    out = console.file.getvalue()  # type: ignore[attr-defined]
    lines = [line.split(",")[0] for line in out.splitlines() if ": step " in line]
    assert lines == [
        "preparing: step 0/-",
        "running: step 0/3",
        "running: step 1/3",
        "running: step 2/3",
        "running: step 3/3",
        "succeeded: step 3/3",
    ], out


@pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it
def test_a_followed_run_ends_with_the_table_and_its_exit_code(
    start_api: Callable[..., ApiServer],
    start_worker: Callable[..., Worker],
    api_key: str,
    run_cli: BertptCli,
    tiny_bert_dir: Path,
    small_corpus: Path,
    tmp_path: Path,
) -> None:
    api = start_api()
    start_worker()

    def bertpt(*args: str) -> tuple[int, str, str]:
        result = run_cli(*args, api_url=api.base_url, key=api_key)
        return result.exit_code, result.stdout, result.stderr

    archive = tmp_path / "tiny-bert.tar.gz"
    archive.write_bytes(tar_gz(directory_files(tiny_bert_dir, folder="tiny-bert")))
    code, out, err = bertpt("checkpoints", "upload", str(archive), "--json")
    assert code == 0, err
    base = f"checkpoint:{json.loads(out)['id']}"
    options = [f"--{name.replace('_', '-')}={value}" for name, value in TINY_HYPERPARAMETERS.items()]
    steps = TINY_HYPERPARAMETERS["max_steps"]

    code, out, err = bertpt(
        "runs", "create", "--base", base, "--corpus", str(small_corpus), *options, "--follow"
    )
    assert code == 0, out + err
    run_id = out.split("created run ")[1].split()[0]
    # The live display (plain lines on a console that is not a terminal), the events, then the outcome.
    # A line while it trains, and one at the last step: "running" or, when the final status message came
    # before the last metrics were shown, "succeeded" (the stream orders messages, not display lines).
    assert re.search(rf"^running: step [1-9][0-9]*/{steps}, ETA", out, re.MULTILINE), out
    assert re.search(rf"^(running|succeeded): step {steps}/{steps}, ETA", out, re.MULTILINE), out
    assert "baseline eval at step 0:" in out and "succeeded" in out
    assert f"run {run_id} succeeded" in out
    table = out.split(f"run {run_id} succeeded")[1]
    assert f"baseline vs final (succeeded, {steps}/{steps} steps)" in table
    assert "masked_lm_loss" in table and f"A short run ({steps} steps)" in table
    # The evaluated pairs as the run's training_started event told them, not a guess.
    assert re.search(r"over \d+ sentence pairs?, so each pair", " ".join(table.split())), table

    # The warm-up note shows exactly when the first logged learning rate is 0.
    code, metrics_csv, _ = bertpt("runs", "metrics", run_id, "--split", "train", "--csv")
    rows = list(csv.DictReader(io.StringIO(metrics_csv)))
    losses = [int(row["step"]) for row in rows if row["name"] == "loss"]
    assert losses == list(range(1, steps + 1))
    first_lr = next(float(row["value"]) for row in rows if row["name"] == "learning_rate")
    assert ("is the warm-up: it starts the learning rate at 0" in out) == (first_lr == 0)

    # Followed again once finished: the whole stream replayed, the same table, the same exit code.
    code, again, _ = bertpt("runs", "follow", run_id)
    assert code == 0 and f"baseline vs final (succeeded, {steps}/{steps} steps)" in again

    code, out, err = bertpt("runs", "download", run_id, "--out", str(tmp_path / "models"))
    assert code == 0, err
    line = next(line for line in out.splitlines() if "from_pretrained(" in line)
    directory = Path(line.split('from_pretrained("')[1].split('")')[0])
    assert (directory / "config.json").is_file() and directory.is_relative_to(tmp_path / "models")

    code, out, err = bertpt("runs", "plot", run_id, "--format", "svg", "--out", str(tmp_path / "curves.svg"))
    assert code == 0, err
    assert "<svg" in (tmp_path / "curves.svg").read_text()

    # A second run, cancelled: compared with the first, then followed to exit code 2.
    code, out, err = bertpt(
        "runs",
        "create",
        "--base",
        base,
        "--corpus",
        str(small_corpus),
        *options,
        "--max-steps",
        "400",
        "--json",
    )
    assert code == 0, err
    second = json.loads(out)["id"]
    code, out, err = bertpt("runs", "cancel", second)
    assert code == 0, err
    code, out, err = bertpt("runs", "follow", second)
    assert code == 2, out + err
    assert f"run {second} cancelled" in out and "baseline vs final (cancelled" in out

    code, out, err = bertpt("runs", "compare", run_id, second)
    assert code == 0, err
    assert run_id in out and second in out and "settings that differ" in out
    differing = [line.split()[1] for line in out.split("settings that differ")[1].splitlines() if "│" in line]
    assert "max_steps" in differing and "learning_rate" not in differing
    code, out, _ = bertpt("runs", "compare", run_id, second, "--json")
    assert json.loads(out)["differing_settings"]["max_steps"] == [steps, 400]
