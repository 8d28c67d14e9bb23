"""The training engine (run_pretraining) end to end on a tiny BERT (CPU, seconds per run)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.support import (
    nan_loss_on,
    readme_corpus_example,
    readme_run_example,
    save_checkpoint,
    tiny_config,
    tiny_run_hyperparameters,
    write_documents,
)
from worker.pretraining import engine
from worker.pretraining.base_model import load_base_model, non_finite_parameter
from worker.pretraining.engine import resolve_compile, resolve_precision, run_pretraining
from worker.pretraining.hyperparameters import HyperparameterError
from worker.pretraining.layout import CHECKPOINT_MANIFEST, MODEL_MANIFEST
from worker.pretraining.model_files import read_config, segment_types_error, token_types
from worker.pretraining.records import (
    CheckpointSaved,
    EvalMetrics,
    LogLine,
    MetricsRecord,
    ModelManifest,
    Progress,
    RunWarning,
    StepSkipped,
    TrainingFailed,
    TrainingFinished,
    TrainingRecord,
    TrainingStarted,
    TrainMetrics,
)
from worker.pretraining.run_checkpoints import ResumeError, latest_checkpoint
from worker.pretraining.sinks import read_jsonl
from worker.pretraining.trainer import (
    NonFiniteLossError,
    NonFiniteWeightsError,
    PretrainingTrainer,
    RunState,
    TrainingError,
)

pytestmark = pytest.mark.slow  # trains a tiny BERT: `pytest -m "not slow"` skips it


def _split(records: list[TrainingRecord], split: str) -> dict[int, Any]:
    return {r.step: r.metrics for r in records if isinstance(r, MetricsRecord) and r.split == split}


def _train(records: list[TrainingRecord]) -> dict[int, TrainMetrics]:
    return _split(records, "train")


@pytest.fixture(scope="module")
def reference_corpus(tmp_path_factory: pytest.TempPathFactory, documents: list[list[str]]) -> Path:
    return write_documents(tmp_path_factory.mktemp("reference") / "ref.txt", documents[400:440])


# --------------------------------------------------------------------------------------------------
# One full run, inspected by several tests


@pytest.fixture(scope="module")
def full_run(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_bert_dir: Path,
    small_corpus: Path,
    reference_corpus: Path,
    cache_dir: Path,
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("full") / "run"
    records: list[TrainingRecord] = []
    result = run_pretraining(
        tiny_bert_dir,
        small_corpus,
        out,
        tiny_run_hyperparameters(max_steps=40),
        reference_corpus=reference_corpus,
        cache_dir=cache_dir,
        sink=records.append,
    )
    progress = [(r.step, r.max_steps) for r in records if isinstance(r, Progress)]
    return {"result": result, "records": records, "progress": progress, "out": out}


def test_loss_falls_and_run_completes(full_run: dict[str, Any]) -> None:
    result = full_run["result"]
    assert result.status == "completed" and result.steps == result.max_steps == 40
    baseline, final = result.baseline_metrics["eval"], result.final_metrics["eval"]
    assert final.masked_lm_loss < baseline.masked_lm_loss - 0.3
    train = _train(full_run["records"])
    assert np.mean([train[s].loss for s in range(36, 41)]) < np.mean([train[s].loss for s in range(1, 6)])
    assert full_run["progress"][0] == (0, 40) and full_run["progress"][-1] == (40, 40)


def test_records_carry_every_metric(full_run: dict[str, Any]) -> None:
    records = full_run["records"]
    train = _train(records)
    assert sorted(train) == list(range(1, 41))
    for step, metrics in train.items():
        # NSP on: every metric, but mfu, null on a CPU (no peak FLOP/s to divide by)
        assert set(metrics.values()) == set(TrainMetrics.model_fields) - {"mfu"}, step
    assert train[40].samples_seen == 40 * 8 and train[40].tokens_per_second > 0
    # Real tokens over sequences: the window's mean length, within the prepared instances' bounds.
    samples_per_second = train[40].samples_per_second
    assert samples_per_second is not None and 3 < train[40].tokens_per_second / samples_per_second <= 64
    assert full_run["result"].train_metrics == train[40]  # result.json's summary: the last window
    for split in ("eval", "reference"):
        evals = _split(records, split)
        assert sorted(evals) == [0, 10, 20, 30, 40], split
        for metrics in evals.values():
            assert set(metrics.values()) == set(EvalMetrics.model_fields)
            assert metrics.perplexity == pytest.approx(math.exp(metrics.masked_lm_loss))
    events = [r for r in records if not isinstance(r, (MetricsRecord, Progress, LogLine))]
    assert isinstance(events[0], TrainingStarted) and isinstance(events[-1], TrainingFinished)
    assert events[0].device == "cpu" and events[0].device_name is None
    assert [r.step for r in events if isinstance(r, CheckpointSaved)] == [10, 20, 30, 40]
    assert events[0].data.splits["train"].instances == events[0].train_instances > 0
    # The run's own log holds the same records, progress and log lines aside.
    logged = [r for r in records if not isinstance(r, (Progress, LogLine))]
    assert read_jsonl(full_run["out"] / "metrics.jsonl") == logged


def test_tensorboard_has_every_metric(full_run: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in (full_run["out"] / "tensorboard").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events_dir))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    expected = {f"train/{m}" for m in TrainMetrics.model_fields if m != "mfu"}  # null on a CPU
    expected |= {f"{split}/{m}" for split in ("eval", "reference") for m in EvalMetrics.model_fields}
    assert expected <= tags
    assert [e.step for e in accumulator.Scalars("eval/masked_lm_loss")] == [0, 10, 20, 30, 40]


def test_checkpoints_rotated_atomic_with_manifests(full_run: dict[str, Any], small_corpus: Path) -> None:
    root = full_run["out"] / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-30", "checkpoint-40"]  # no tmp-* left
    manifest = json.loads((root / "checkpoint-30" / CHECKPOINT_MANIFEST).read_text())
    from worker.pretraining.prepare import file_sha256

    assert manifest["step"] == 30
    assert manifest["run"]["corpus_sha256"] == file_sha256(small_corpus)
    assert manifest["run"]["data_key"] == full_run["result"].data_key
    assert manifest["run"]["hyperparameters"] == tiny_run_hyperparameters(max_steps=40).model_dump(
        mode="json"
    )
    assert manifest["run"]["base_model"] and manifest["run"]["base_model_sha256"]
    assert set(manifest["metrics"]) == {"train", "eval", "reference"}
    assert manifest["state"]["samples_seen"] == 30 * 8
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"):
        assert (root / "checkpoint-30" / name).is_file(), name
    # A checkpoint is a loadable base model of its own (`run:<id>@<step>`): it carries the tokenizer.
    assert (root / "checkpoint-30" / "tokenizer.json").is_file()
    assert load_base_model(root / "checkpoint-30").newly_initialized == []


def test_output_is_a_loadable_hf_directory(full_run: dict[str, Any], tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer, BertForMaskedLM, BertForPreTraining, BertForSequenceClassification

    model_dir = full_run["result"].model_path
    assert model_dir == full_run["out"] / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForPreTraining"]
    manifest = json.loads((model_dir / MODEL_MANIFEST).read_text())
    for key in (
        "hyperparameters",
        "corpus_sha256",
        "data_key",
        "base_model",
        "warnings",
        "baseline_metrics",
        "final_metrics",
        "steps",
        "runtime_seconds",
    ):
        assert key in manifest, key
    assert manifest["steps"] == 40 and manifest["base_model"] == str(tiny_bert_dir)
    assert manifest["final_metrics"] == full_run["result"].model_dump(mode="json")["final_metrics"]
    pretraining: Any = BertForPreTraining.from_pretrained(model_dir)
    mlm: Any = BertForMaskedLM.from_pretrained(model_dir)
    classifier: Any = BertForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    for other in (mlm.bert, classifier.bert):
        assert torch.equal(
            other.encoder.layer[1].output.dense.weight, pretraining.bert.encoder.layer[1].output.dense.weight
        )
    assert torch.equal(
        mlm.cls.predictions.transform.dense.weight, pretraining.cls.predictions.transform.dense.weight
    )
    assert len(AutoTokenizer.from_pretrained(model_dir)) == pretraining.config.vocab_size
    result = json.loads((full_run["out"] / "result.json").read_text())
    assert result["status"] == "completed" and result["model_path"] == str(model_dir)


def test_completed_run_is_returned_not_retrained(
    full_run: dict[str, Any], tiny_bert_dir: Path, small_corpus: Path, reference_corpus: Path, cache_dir: Path
) -> None:
    records: list[TrainingRecord] = []
    again = run_pretraining(
        tiny_bert_dir,
        small_corpus,
        full_run["out"],
        tiny_run_hyperparameters(max_steps=40),
        reference_corpus=reference_corpus,
        cache_dir=cache_dir,
        sink=records.append,
    )
    assert again.status == "completed" and again.final_metrics == full_run["result"].final_metrics
    assert [r for r in records if not isinstance(r, LogLine)] == []


# --------------------------------------------------------------------------------------------------
# Resume, cancel, time limit, crashes


def test_resume_gives_the_uninterrupted_run(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path
) -> None:
    h = tiny_run_hyperparameters(max_steps=30, batch_size=16, eval_every_steps=0, checkpoint_every_steps=0)
    straight: list[TrainingRecord] = []
    run_pretraining(tiny_bert_dir, tiny_corpus, tmp_path / "a", h, cache_dir=cache_dir, sink=straight.append)

    first: list[TrainingRecord] = []
    stopped = run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        tmp_path / "b",
        h,
        cache_dir=cache_dir,
        sink=first.append,
        should_stop=lambda: [r.step for r in first if isinstance(r, Progress)][-1] >= 12,
    )
    assert stopped.status == "cancelled" and stopped.steps == 12 and stopped.model_path is None
    assert stopped.checkpoint_path == tmp_path / "b" / "checkpoints" / "checkpoint-12"
    # Debris of a crash: an unpublished checkpoint and one without its manifest; both ignored.
    (tmp_path / "b" / "checkpoints" / "tmp-checkpoint-20-dead").mkdir()
    (tmp_path / "b" / "checkpoints" / "checkpoint-25").mkdir()
    second: list[TrainingRecord] = []
    resumed = run_pretraining(
        tiny_bert_dir, tiny_corpus, tmp_path / "b", h, cache_dir=cache_dir, sink=second.append
    )
    (started,) = [r for r in second if isinstance(r, TrainingStarted)]
    assert started.step == started.resumed_from_step == 12
    assert resumed.status == "completed" and resumed.resumed_from == stopped.checkpoint_path
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [
        "checkpoint-12",
        "checkpoint-30",
    ]

    a, b = _train(straight), {**_train(first), **_train(second)}
    assert sorted(b) == sorted(a) == list(range(1, 31))
    assert max(a[s].epoch for s in a) > 1.0, "the run should cross epoch boundaries"
    for step in range(1, 31):
        assert b[step].learning_rate == a[step].learning_rate, step
        assert b[step].loss == pytest.approx(a[step].loss, rel=1e-4, abs=1e-5), step
        assert b[step].samples_seen == a[step].samples_seen, step
    assert resumed.baseline_metrics == stopped.baseline_metrics  # the baseline survives the resume
    assert resumed.final_metrics["eval"].masked_lm_loss == pytest.approx(
        json.loads((tmp_path / "a" / "result.json").read_text())["final_metrics"]["eval"]["masked_lm_loss"],
        rel=1e-4,
    )


def test_cancel_checkpoint_and_resume_guards(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, small_corpus: Path, cache_dir: Path
) -> None:
    out = tmp_path / "run"
    h = tiny_run_hyperparameters(max_steps=4)
    cancelled = run_pretraining(
        tiny_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir, should_stop=lambda: True
    )
    assert cancelled.status == "cancelled" and cancelled.steps == 1
    assert (out / "checkpoints" / "checkpoint-1" / CHECKPOINT_MANIFEST).is_file()
    assert not (out / "model").exists()
    assert json.loads((out / "result.json").read_text())["status"] == "cancelled"

    with pytest.raises(ResumeError, match="learning_rate"):
        run_pretraining(
            tiny_bert_dir,
            tiny_corpus,
            out,
            tiny_run_hyperparameters(max_steps=4, learning_rate=2e-3),
            cache_dir=cache_dir,
        )
    with pytest.raises(ResumeError, match="corpus"):
        run_pretraining(tiny_bert_dir, small_corpus, out, h, cache_dir=cache_dir)
    with pytest.raises(TrainingError, match="already holds a run"):
        run_pretraining(tiny_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir, resume=False)
    # What only changes logging and saving is not a different run.
    done = run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        out,
        tiny_run_hyperparameters(max_steps=4, logging_every_steps=2),
        cache_dir=cache_dir,
    )
    assert done.status == "completed" and done.steps == 4 and done.resumed_from is not None


def test_crash_while_saving_leaves_no_complete_looking_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    h = tiny_run_hyperparameters(max_steps=4, checkpoint_every_steps=2, eval_every_steps=0)
    original = PretrainingTrainer.checkpoint_manifest

    def crash_at_step_4(self: PretrainingTrainer) -> dict[str, Any]:
        if self.state.global_step == 4:
            raise OSError("disk full")
        return original(self)

    monkeypatch.setattr(PretrainingTrainer, "checkpoint_manifest", crash_at_step_4)
    with pytest.raises(OSError, match="disk full"):
        run_pretraining(tiny_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names[0] == "checkpoint-2" and len(names) == 2 and names[1].startswith("tmp-checkpoint-4")
    monkeypatch.setattr(PretrainingTrainer, "checkpoint_manifest", original)
    resumed = run_pretraining(tiny_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir)
    assert resumed.status == "completed" and resumed.resumed_from == out / "checkpoints" / "checkpoint-2"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_crash_during_export_is_finished_without_an_extra_step(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    h = tiny_run_hyperparameters(max_steps=3, eval_every_steps=0, checkpoint_every_steps=0)

    def broken_export(*args: Any, **kwargs: Any) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(engine, "export_model", broken_export)
    first: list[TrainingRecord] = []
    with pytest.raises(OSError, match="disk full"):
        run_pretraining(tiny_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir, sink=first.append)
    assert isinstance(first[-1], TrainingFailed) and "disk full" in first[-1].error
    assert (out / "checkpoints" / "checkpoint-3" / CHECKPOINT_MANIFEST).is_file() and not (
        out / "model"
    ).exists()
    monkeypatch.undo()
    second: list[TrainingRecord] = []
    result = run_pretraining(tiny_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir, sink=second.append)
    assert result.status == "completed" and result.steps == 3 and _train(second) == {}
    assert result.final_metrics_step == 3 and result.samples_seen == 3 * 8
    assert result.model_path is not None and (result.model_path / MODEL_MANIFEST).is_file()


def test_a_diverging_run_fails_and_keeps_its_last_good_checkpoint(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From step 5 on every loss is NaN, as when the learning rate is far too high.
    monkeypatch.setattr("worker.pretraining.trainer.pretraining_loss", nan_loss_on(lambda n: n >= 5))
    out = tmp_path / "run"
    h = tiny_run_hyperparameters(
        max_steps=20, checkpoint_every_steps=2, eval_every_steps=0, max_nonfinite_steps=3
    )
    records: list[TrainingRecord] = []
    with pytest.raises(NonFiniteLossError, match="3 steps in a row, steps 5 to 7: lower") as failure:
        run_pretraining(tiny_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir, sink=records.append)
    assert failure.value.step == 7
    assert [(r.step, r.consecutive) for r in records if isinstance(r, StepSkipped)] == [
        (5, 1),
        (6, 2),
        (7, 3),
    ]
    assert str(failure.value).endswith("the checkpoint of step 6 is intact")
    assert isinstance(records[-1], TrainingFailed) and "NonFiniteLossError" in records[-1].error
    assert records[-1].step == 7  # where it failed, as the error says
    # Steps 5 and 6 were not applied: checkpoint-6 holds the weights of step 4, finite, and it loads.
    checkpoints = out / "checkpoints"
    assert latest_checkpoint(checkpoints) == checkpoints / "checkpoint-6"
    before, after = (
        load_file(checkpoints / name / "model.safetensors") for name in ("checkpoint-4", "checkpoint-6")
    )
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not (out / "model").exists() and not (out / "result.json").exists()
    assert non_finite_parameter(load_base_model(checkpoints / "checkpoint-6").model) is None
    # The metrics file is JSON: the NaN losses are null with a flag, never a bare NaN.
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in metrics.jsonl"))
    train = _train(read_jsonl(out / "metrics.jsonl"))
    assert train[5].non_finite == {"loss": "nan", "grad_norm": "nan"} and math.isnan(train[5].loss)
    assert train[6].skipped_steps == 2 and train[4].skipped_steps == 0 and math.isfinite(train[4].loss)


def test_a_run_that_skipped_steps_says_so_when_it_completes(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.pretraining.trainer.pretraining_loss", nan_loss_on(lambda n: n in (2, 5)))
    h = tiny_run_hyperparameters(max_steps=6, checkpoint_every_steps=0, eval_every_steps=0)
    out = tmp_path / "run"
    result = run_pretraining(tiny_bert_dir, tiny_corpus, out, h, cache_dir=cache_dir)
    assert result.status == "completed" and result.skipped_steps == 2
    warning = result.warnings[-1]
    assert (warning.code, warning.count) == ("skipped_steps", 2)
    assert warning.message.startswith("2 of the 6 optimizer steps were not applied")
    assert json.loads((out / "result.json").read_text())["warnings"][-1]["code"] == "skipped_steps"


def test_a_base_model_that_computes_nan_fails_before_training(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path
) -> None:
    from safetensors.torch import save_file

    # Finite weights too large for float32 arithmetic: the embeddings sum to infinity, LayerNorm to NaN.
    broken = tmp_path / "huge"
    shutil.copytree(tiny_bert_dir, broken)
    weights = load_file(broken / "model.safetensors")
    weights["bert.embeddings.position_embeddings.weight"].fill_(3e38)
    weights["bert.embeddings.word_embeddings.weight"].fill_(3e38)
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    records: list[TrainingRecord] = []
    h = tiny_run_hyperparameters(max_steps=6)
    with pytest.raises(NonFiniteLossError) as failure:
        run_pretraining(broken, tiny_corpus, tmp_path / "run", h, cache_dir=cache_dir, sink=records.append)
    message = str(failure.value)
    assert message.startswith("the masked_lm_loss of the eval split is nan at step 0: no training step")
    assert "the base checkpoint computes NaN or infinite values" in message
    assert message.endswith("no checkpoint was written") and failure.value.step == 0
    assert not [r for r in records if isinstance(r, MetricsRecord) and r.split == "train"]


def test_weights_that_are_not_finite_are_never_exported(full_run: dict[str, Any], tmp_path: Path) -> None:
    model_dir = full_run["result"].model_path
    manifest = ModelManifest.model_validate_json((model_dir / MODEL_MANIFEST).read_text())
    loaded = load_base_model(model_dir)
    with torch.no_grad():
        loaded.model.bert.encoder.layer[0].attention.self.query.weight[0, 0] = math.nan
    with pytest.raises(
        NonFiniteWeightsError, match=r"bert\.encoder\.layer\.0\.attention\.self\.query\.weight"
    ):
        engine.export_model(loaded.model, loaded.tokenizer, tmp_path / "model", manifest)
    assert list(tmp_path.iterdir()) == []  # not even a temporary directory


def test_max_runtime_stops_evaluated_and_exported(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = iter([0.0])
    monkeypatch.setattr(engine, "_clock", lambda: next(ticks, 1e9))  # started at 0, then far past the limit
    result = run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        tmp_path / "run",
        tiny_run_hyperparameters(max_steps=50, max_runtime_seconds=60),
        cache_dir=cache_dir,
    )
    assert result.status == "timed_out" and result.steps == 1
    assert result.model_path is not None and (result.model_path / "model.safetensors").is_file()
    assert result.checkpoint_path is not None and result.checkpoint_path.name == "checkpoint-1"
    assert set(result.final_metrics["eval"].values()) == set(EvalMetrics.model_fields)


# --------------------------------------------------------------------------------------------------
# Variants


def test_static_masks_no_nsp_accumulation_bf16(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, cache_dir: Path
) -> None:
    records: list[TrainingRecord] = []
    result = run_pretraining(
        tiny_bert_dir,
        tiny_corpus,
        tmp_path / "run",
        tiny_run_hyperparameters(
            max_steps=3,
            nsp=False,
            masking="static",
            dupe_factor=2,
            gradient_accumulation_steps=2,
            precision="bf16",
        ),
        cache_dir=cache_dir,
        sink=records.append,
    )
    assert result.status == "completed"
    train = _train(records)
    assert train[3].next_sentence_loss is None and train[3].masked_lm_loss is not None
    assert train[3].samples_seen == 3 * 2 * 8
    assert set(result.final_metrics["eval"].values()) == {
        "masked_lm_loss",
        "masked_lm_accuracy",
        "perplexity",
    }
    assert math.isfinite(train[3].loss)
    # bf16 autocast ran on the CPU; the saved weights stay fp32.
    assert result.model_path is not None
    assert json.loads((result.model_path / MODEL_MANIFEST).read_text())["precision"] == "bf16"
    assert json.loads((result.model_path / "config.json").read_text()).get("dtype", "float32") == "float32"


def test_minilm_trains_a_few_steps(
    tmp_path: Path, minilm_dir: Path, small_corpus: Path, cache_dir: Path
) -> None:
    result = run_pretraining(
        minilm_dir,
        small_corpus,
        tmp_path / "run",
        tiny_run_hyperparameters(max_steps=3, batch_size=4, eval_documents=20, learning_rate=5e-5),
        cache_dir=cache_dir,
    )
    assert result.status == "completed" and result.steps == 3
    # The synthetic words are many wordpieces to MiniLM's vocabulary: its corpus warnings come first.
    *corpus_warnings, warning = result.warnings
    assert all(w.code != "newly_initialized_parameters" for w in corpus_warnings)
    assert warning.code == "newly_initialized_parameters" and warning.parameters
    assert all(p.startswith("cls.") for p in warning.parameters)
    assert 0.2 <= (result.baseline_metrics["eval"].next_sentence_accuracy or 0) <= 0.8
    assert result.model_path is not None and (result.model_path / "model.safetensors").is_file()


def test_corpus_warnings_reach_every_place_a_user_looks(
    tmp_path: Path, tiny_bert_dir: Path, blank_line_corpus: Path, cache_dir: Path
) -> None:
    out = tmp_path / "run"
    h = tiny_run_hyperparameters(max_steps=2, eval_every_steps=0, checkpoint_every_steps=0)
    records: list[TrainingRecord] = []
    result = run_pretraining(
        tiny_bert_dir, blank_line_corpus, out, h, cache_dir=cache_dir, sink=records.append
    )
    (started,) = [r for r in records if isinstance(r, TrainingStarted)]
    codes = [w.code for w in started.warnings]
    assert "blank_line_after_every_sentence" in codes and "is_next_share" in codes
    blank = started.warnings[codes.index("blank_line_after_every_sentence")]
    assert blank.count and blank.first_line == 1 and blank.message
    # One list, one shape: the result, result.json, the model's manifest and the log say the same.
    assert result.warnings == started.warnings
    for stored in (
        json.loads((out / "result.json").read_text()),
        json.loads((out / "model" / MODEL_MANIFEST).read_text()),
    ):
        assert [RunWarning.model_validate(w) for w in stored["warnings"]] == started.warnings
    said = [r.message for r in records if isinstance(r, LogLine)]
    assert all(f"warning: {w.message}" in said for w in started.warnings)


def test_max_seq_length_beyond_positions_is_refused(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path
) -> None:
    # The tiny BERT has 64 position embeddings: the refusal says the value to use.
    with pytest.raises(
        HyperparameterError, match=r"^max_seq_length: 128 is more .* use max_seq_length 64 or less"
    ):
        run_pretraining(
            tiny_bert_dir,
            tiny_corpus,
            tmp_path / "run",
            tiny_run_hyperparameters(max_seq_length=128),
            cache_dir=tmp_path,
        )


def test_next_sentence_prediction_on_a_model_of_one_token_type_is_refused(
    tmp_path: Path, tokenizer: Any, tiny_corpus: Path
) -> None:
    from transformers import BertForPreTraining

    model = BertForPreTraining(tiny_config(tokenizer, type_vocab_size=1))
    directory = save_checkpoint(model, tokenizer, tmp_path / "one-segment")
    # The run submission reads the same config.json without torch and asks the same function.
    expected = segment_types_error(True, token_types(read_config(directory)))
    assert expected is not None
    with pytest.raises(HyperparameterError) as refused:
        run_pretraining(
            directory, tiny_corpus, tmp_path / "run", tiny_run_hyperparameters(), cache_dir=tmp_path
        )
    assert refused.value.errors == [("nsp", expected)]


def test_the_readme_example_trains(tmp_path: Path, minilm_dir: Path, cache_dir: Path) -> None:
    # The README's corpus and run body as a user copies them (steps cut to keep the test short): two
    # documents train, with no held-out evaluation, and the run says why.
    body = readme_run_example()
    assert body["base_model"] == "minilm-l6-h384-uncased"  # minilm_dir
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(readme_corpus_example())
    records: list[TrainingRecord] = []
    result = run_pretraining(
        minilm_dir,
        corpus,
        tmp_path / "run",
        {**body["hyperparameters"], "max_steps": 3},
        cache_dir=cache_dir,
        sink=records.append,
    )
    assert result.status == "completed" and result.steps == 3
    (started,) = [r for r in records if isinstance(r, TrainingStarted)]
    assert started.eval_splits == {} and started.train_instances > 0
    assert "no_eval_split" in [w.code for w in result.warnings]


def test_compile_resolution() -> None:
    assert resolve_compile("auto", cuda=True) and not resolve_compile("auto", cuda=False)
    assert resolve_compile(True, cuda=False) and not resolve_compile(False, cuda=True)


def test_precision_resolution() -> None:
    assert resolve_precision("auto", cuda=False) == "fp32"
    assert resolve_precision("bf16", cuda=False) == "bf16"
    with pytest.raises(HyperparameterError, match=r"^precision: fp16 mixed precision needs a GPU"):
        resolve_precision("fp16", cuda=False)


def test_a_held_out_loss_above_the_baseline_warns() -> None:
    def state(after: float) -> RunState:
        metrics = [
            EvalMetrics(masked_lm_loss=v, masked_lm_accuracy=0.1, perplexity=math.exp(v))
            for v in (7.0, after)
        ]
        return RunState(baseline={"eval": metrics[0]}, last_eval={"eval": metrics[1]}, last_eval_step=40)

    (warning,) = engine._training_warnings(state(9.5), 40)
    assert warning.code == "eval_loss_increased"
    assert warning.message.startswith(
        "the held-out masked_lm_loss rose from 7.0000 (the base checkpoint, step 0) to 9.5000 at step 40"
    )
    assert engine._training_warnings(state(7.05), 40) == []  # within 1%: noise, not a verdict
    assert engine._training_warnings(state(6.0), 40) == []


# --------------------------------------------------------------------------------------------------
# Several processes (torchrun, DDP with gloo on the CPU)

_DISTRIBUTED_RUN = Path(__file__).with_name("distributed_run.py")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train_in_processes(processes: int, args: list[str], tmp_path: Path) -> None:
    """``distributed_run.py`` alone (1) or under torchrun (``processes`` > 1), in a fresh interpreter."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, str(_DISTRIBUTED_RUN), *args]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
        command = [sys.executable, *launcher, f"--master_port={_free_port()}", str(_DISTRIBUTED_RUN), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


@pytest.mark.slow  # two trainings of a tiny BERT, one of them in two processes: about half a minute
def test_two_processes_train_like_one_with_the_same_global_batch(
    tmp_path: Path, tokenizer: Any, tiny_corpus: Path
) -> None:
    """torchrun with 2 gloo processes, each on half of every global batch of 8: the same training losses,
    gradient norms and evaluations, step by step, as one process on batches of 8 (no dropout, so the two
    compare exactly); the metrics, checkpoints and model are written once, by process 0."""
    from transformers import BertForPreTraining

    from worker.pretraining.prepare import prepare_corpus
    from worker.pretraining.sinks import metric_records, read_jsonl

    torch.manual_seed(0)
    no_dropout = tiny_config(tokenizer, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base = save_checkpoint(BertForPreTraining(no_dropout), tokenizer, tmp_path / "base")
    h = tiny_run_hyperparameters(max_steps=1)
    full_batches = len(prepare_corpus(tiny_corpus, tokenizer, tmp_path / "probe", h.preparation()).train) // 8
    steps = min(full_batches, 6)  # within the first epoch: no short last batch (accelerate completes it)
    assert steps >= 4
    run = {
        **h.model_dump(mode="json"),
        "max_steps": steps,
        "eval_every_steps": 2,
        "checkpoint_every_steps": 2,
    }
    outs = {}
    for processes in (1, 2):
        out = tmp_path / f"run-{processes}"
        args = [str(base), str(tiny_corpus), str(out), str(tmp_path / f"cache-{processes}"), json.dumps(run)]
        _train_in_processes(processes, args, tmp_path)
        outs[processes] = out

    def curve(out: Path, split: str) -> list[tuple[int, dict[str, Any]]]:
        return [
            (r.step, r.metrics.values()) for r in metric_records(read_jsonl(out / "metrics.jsonl"), split)
        ]

    one, two = curve(outs[1], "train"), curve(outs[2], "train")
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, steps + 1))  # each step logged once
    for (step, a), (_, b) in zip(one, two, strict=True):
        for name in ("loss", "masked_lm_loss", "next_sentence_loss", "grad_norm", "masked_lm_accuracy"):
            assert math.isclose(a[name], b[name], rel_tol=1e-4, abs_tol=1e-5), (step, name, a[name], b[name])
        assert a["samples_seen"] == b["samples_seen"] == 8 * step
    assert one[-1][1]["loss"] < one[0][1]["loss"]  # it trained
    evals_one, evals_two = curve(outs[1], "eval"), curve(outs[2], "eval")
    assert [s for s, _ in evals_one] == [s for s, _ in evals_two]
    for (_, a), (_, b) in zip(evals_one, evals_two, strict=True):
        assert math.isclose(a["masked_lm_loss"], b["masked_lm_loss"], rel_tol=1e-4)
    checkpoint = outs[2] / "checkpoints" / f"checkpoint-{steps}"
    assert (checkpoint / CHECKPOINT_MANIFEST).is_file()
    assert {p.name for p in checkpoint.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert not list((outs[2] / "checkpoints").glob("tmp-*"))  # every temporary directory published
    assert (outs[2] / "model" / MODEL_MANIFEST).is_file()
    assert (
        json.loads((outs[2] / "result.json").read_text())["tokens_seen"]
        == json.loads((outs[1] / "result.json").read_text())["tokens_seen"]
    )
