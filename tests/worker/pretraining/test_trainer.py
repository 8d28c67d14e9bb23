"""PretrainingTrainer: the run state checkpoints carry across attempts, the optimizer's weight decay, resume
without alarms, and steps whose numbers are not finite."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.support import nan_loss_on
from worker.pretraining.base_model import non_finite_parameter
from worker.pretraining.loss import PretrainingLoss
from worker.pretraining.records import MetricsRecord, StepSkipped, TrainingRecord, TrainMetrics
from worker.pretraining.trainer import (
    FP16_OVERFLOW_ALLOWANCE,
    NonFiniteLossError,
    NonFiniteWeightsError,
    PretrainingTrainer,
    RunState,
    TrainingError,
)

# The "state" of a bertpt 0.1 checkpoint manifest (mlm_*/nsp_* names, the step repeated, {} before any log).
STATE_0_1 = {
    "samples_seen": 96,
    "tokens_seen": 4000,
    "runtime_seconds": 12.5,
    "baseline": {"eval": {"masked_lm_loss": 8.0, "masked_lm_accuracy": 0.01, "perplexity": 2981.0}},
    "last_eval": {},
    "last_eval_step": None,
    "last_train": {
        "loss": 7.5,
        "mlm_loss": 7.0,
        "mlm_accuracy": 0.05,
        "nsp_loss": 0.5,
        "nsp_accuracy": 0.6,
        "learning_rate": 1e-4,
        "grad_norm": 2.0,
        "tokens_per_second": 300.0,
        "samples_seen": 96,
        "epoch": 1.5,
        "step": 12,
    },
}


def test_a_checkpoint_of_bertpt_0_1_resumes() -> None:
    state = RunState.from_manifest({"state": STATE_0_1})
    assert state.last_train is not None
    assert (state.last_train.masked_lm_loss, state.last_train.next_sentence_accuracy) == (7.0, 0.6)
    assert state.baseline["eval"].masked_lm_loss == 8.0 and state.samples_seen == 96
    assert RunState.from_manifest({"state": {**STATE_0_1, "last_train": {}}}).last_train is None


def test_the_state_round_trips_through_a_manifest() -> None:
    state = RunState.from_manifest({"state": STATE_0_1})
    assert RunState.from_manifest({"state": state.model_dump(mode="json")}) == state


@pytest.mark.slow  # prepares a corpus and builds a trainer on the tiny BERT
def test_weight_decay_spares_layernorm_and_bias(make_trainer: Callable[..., PretrainingTrainer]) -> None:
    trainer = make_trainer()
    optimizer = trainer.create_optimizer()
    assert trainer.model is not None
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    spared = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.01, 0.0}
    assert decayed and spared and not decayed & spared
    assert decayed | spared == set(names.values())
    assert all("LayerNorm" in n or n.endswith("bias") for n in spared)
    assert not any("LayerNorm" in n or n.endswith("bias") for n in decayed)
    assert "bert.embeddings.word_embeddings.weight" in decayed  # also the tied MLM decoder


@pytest.mark.slow  # prepares a corpus and builds a trainer on the tiny BERT
def test_resume_reties_the_decoder_without_a_missing_keys_message(
    make_trainer: Callable[..., PretrainingTrainer], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file, save_file

    trainer = make_trainer()
    trainer.save_model(str(tmp_path / "checkpoint"))
    capfd.readouterr()
    resumed = make_trainer()
    resumed._load_from_checkpoint(str(tmp_path / "checkpoint"))
    assert "missing keys" not in capfd.readouterr().err  # the decoder aliases are not stored, by design
    assert resumed.model is not None
    decoder = resumed.model.cls.predictions.decoder
    assert decoder.weight.data_ptr() == resumed.model.bert.embeddings.word_embeddings.weight.data_ptr()

    weights = tmp_path / "checkpoint" / "model.safetensors"
    tensors = load_file(weights)
    del tensors["bert.pooler.dense.weight"]
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(TrainingError, match=r"missing \['bert.pooler.dense.weight'\]"):
        make_trainer()._load_from_checkpoint(str(tmp_path / "checkpoint"))


@pytest.mark.slow  # trains the tiny BERT 10 steps
def test_non_finite_steps_are_not_applied_but_counted_and_reported(
    make_trainer: Callable[..., PretrainingTrainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.pretraining.trainer.pretraining_loss", nan_loss_on(lambda n: n in (3, 4)))
    records: list[TrainingRecord] = []
    trainer = make_trainer(sink=records.append)
    trainer.train()

    skipped = [r for r in records if isinstance(r, StepSkipped)]
    assert [(r.step, r.reason, r.loss, r.consecutive, r.skipped_steps) for r in skipped] == [
        (3, "non_finite_loss", None, 1, 1),
        (4, "non_finite_loss", None, 2, 2),
    ]
    assert trainer.state.global_step == 10 and trainer.run_state.skipped_steps == 2
    # Neither the optimizer nor the learning-rate schedule moved on the two skipped steps.
    assert trainer.optimizer is not None and trainer.lr_scheduler is not None
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {8}
    assert getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler).last_epoch == 8
    assert trainer.model is not None and non_finite_parameter(trainer.model) is None
    train = {r.step: r.metrics for r in records if isinstance(r, MetricsRecord) and r.split == "train"}
    assert isinstance(train[3], TrainMetrics) and math.isnan(train[3].loss)  # not Trainer's 0.0
    assert train[3].masked_lm_loss is None  # no applied step in that window
    assert train[3].non_finite["loss"] == "nan" and train[4].skipped_steps == 2
    assert all(math.isfinite(train[step].loss) for step in (1, 2, 5, 10))
    assert train[10].skipped_steps == 2 and train[2].skipped_steps == 0
    # As JSON: null and the flag, never a bare NaN; read back, the NaN returns.
    line = MetricsRecord(split="train", step=3, metrics=train[3]).model_dump_json()
    assert "NaN" not in line and '"loss":null' in line and '"non_finite":{' in line
    assert math.isnan(MetricsRecord.model_validate_json(line).metrics.loss)


@pytest.mark.slow  # trains the tiny BERT a few steps
def test_non_finite_steps_in_a_row_stop_the_run_with_a_hint(
    make_trainer: Callable[..., PretrainingTrainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("worker.pretraining.trainer.pretraining_loss", nan_loss_on(lambda n: n >= 3))
    records: list[TrainingRecord] = []
    trainer = make_trainer(sink=records.append, max_nonfinite_steps=3)
    with pytest.raises(
        NonFiniteLossError, match="for 3 steps in a row, steps 3 to 5: lower learning_rate"
    ) as e:
        trainer.train()
    assert e.value.step == 5
    assert [r.consecutive for r in records if isinstance(r, StepSkipped)] == [1, 2, 3]
    assert trainer.model is not None and non_finite_parameter(trainer.model) is None
    # NaN from the first step: the training is not to blame, and the message says so.
    monkeypatch.setattr("worker.pretraining.trainer.pretraining_loss", nan_loss_on(lambda n: True))
    with pytest.raises(NonFiniteLossError, match="steps 1 to 3: no training step had been applied yet") as e:
        make_trainer(max_nonfinite_steps=3).train()
    assert "the base checkpoint computes NaN" in str(e.value) and "learning_rate" not in str(e.value)


@pytest.mark.slow  # builds a trainer on the tiny BERT
def test_weights_that_are_not_finite_are_never_checkpointed(
    make_trainer: Callable[..., PretrainingTrainer], tmp_path: Path
) -> None:
    trainer = make_trainer()
    assert trainer.model is not None
    with torch.no_grad():
        trainer.model.bert.pooler.dense.bias[1] = math.inf
    with pytest.raises(
        NonFiniteWeightsError, match=r"parameter bert\.pooler\.dense\.bias holds NaN or infinite"
    ):
        trainer._save_checkpoint(trainer.model, None)
    assert not any(Path(str(trainer.args.output_dir)).glob("checkpoint-*"))


@pytest.mark.slow  # builds a trainer on the tiny BERT
def test_fp16_overflows_are_counted_but_left_to_the_loss_scaler(
    make_trainer: Callable[..., PretrainingTrainer],
) -> None:
    records: list[TrainingRecord] = []
    trainer = make_trainer(sink=records.append, max_nonfinite_steps=2)
    trainer.args.fp16 = True  # the decision only (fp16 needs a GPU): a finite loss, an infinite gradient

    def step(grad_norm: float) -> None:
        # A step whose 10 predicted tokens cost 70 (masked_lm_loss 7.0), then its gradient norm.
        trainer._step_totals.add(
            PretrainingLoss(
                loss=torch.tensor(7.0),
                masked_lm_loss=torch.tensor(7.0),
                next_sentence_loss=None,
                masked_lm_loss_sum=torch.tensor(70.0),
                masked_lm_correct=torch.tensor(1),
                masked_lm_count=torch.tensor(10),
                next_sentence_loss_sum=None,
                next_sentence_correct=None,
                next_sentence_count=None,
            )
        )
        trainer._step_grad_norm = torch.tensor(grad_norm)
        trainer._before_update()

    for _ in range(3):
        step(math.inf)
        assert trainer._skip_update
    assert [(r.reason, r.loss, r.consecutive) for r in records if isinstance(r, StepSkipped)] == [
        ("fp16_overflow", 7.0, 0)
    ] * 3
    assert trainer.run_state.skipped_steps == 3  # counted, and no NonFiniteLossError: the scale goes down
    step(1.5)
    assert not trainer._skip_update and trainer.run_state.skipped_steps == 3
    # Overflows that go on once the scale is down to 2**-8 are not the scaler's business any more.
    for _ in range(FP16_OVERFLOW_ALLOWANCE + 1):
        step(math.inf)
    with pytest.raises(NonFiniteLossError, match="use bf16 instead of fp16"):
        step(math.inf)
    assert [r.consecutive for r in records if isinstance(r, StepSkipped)][-3:] == [0, 1, 2]
