"""PretrainingTrainer: the run state checkpoints carry across attempts, the optimizer's weight decay, resume
without alarms, steps whose numbers are not finite, the speed metrics, and what keeps the loop fast (no
value read per step, workers across epochs, one compilation)."""

from __future__ import annotations

import math
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from tests.support import nan_loss_on, tiny_run_hyperparameters
from worker.pretraining.base_model import load_base_model, non_finite_parameter
from worker.pretraining.collator import PretrainingCollator
from worker.pretraining.loss import PretrainingLoss, pretraining_loss
from worker.pretraining.masking import MaskingConfig, TokenMasker
from worker.pretraining.records import MetricsRecord, ModelShape, StepSkipped, TrainingRecord, TrainMetrics
from worker.pretraining.trainer import (
    FP16_OVERFLOW_ALLOWANCE,
    NonFiniteLossError,
    NonFiniteWeightsError,
    PretrainingTrainer,
    RunState,
    TrainingError,
    training_arguments,
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


def _train_records(records: list[TrainingRecord]) -> dict[int, TrainMetrics]:
    return {
        r.step: r.metrics
        for r in records
        if isinstance(r, MetricsRecord) and isinstance(r.metrics, TrainMetrics)
    }


@pytest.mark.slow  # trains the tiny BERT 10 steps
def test_skips_decided_on_the_device_are_read_at_the_next_step_or_log(
    make_trainer: Callable[..., PretrainingTrainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between logging steps the host learns of a skipped step a step later: the fused optimizer skipped it on
    the device already, and the schedule, the counts and the records come out as if decided at once."""
    monkeypatch.setattr("worker.pretraining.trainer.pretraining_loss", nan_loss_on(lambda n: n in (3, 4)))
    records: list[TrainingRecord] = []
    trainer = make_trainer(sink=records.append)
    trainer.args.logging_steps = 4  # logs at steps 1, 4, 8 and 10: step 3's skip is read at step 4
    trainer.train()
    assert trainer._skips_on_device  # fused AdamW takes the decision as found_inf
    skipped = [r for r in records if isinstance(r, StepSkipped)]
    assert [(r.step, r.reason, r.consecutive, r.skipped_steps) for r in skipped] == [
        (3, "non_finite_loss", 1, 1),
        (4, "non_finite_loss", 2, 2),
    ]
    assert trainer.optimizer is not None and trainer.lr_scheduler is not None
    assert {int(state["step"]) for state in trainer.optimizer.state.values()} == {8}
    assert getattr(trainer.lr_scheduler, "scheduler", trainer.lr_scheduler).last_epoch == 8
    assert trainer.model is not None and non_finite_parameter(trainer.model) is None
    train = _train_records(records)
    assert sorted(train) == [1, 4, 8, 10]
    assert math.isfinite(train[4].loss) and train[4].skipped_steps == 2  # step 2 applied, 3 and 4 not


Reads = Counter[tuple[str, str]]


@contextmanager
def _value_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Reads, dict[str, bool]]]:
    """Counts, by (method, calling function), every read of a tensor's value into Python while ``on["on"]``:
    on a GPU each one waits for the device to finish the work queued before it."""
    reads: Reads = Counter()
    on = {"on": False}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _original: Any = original, _name: str = name) -> Any:
            if on["on"]:
                reads[(_name, traceback.extract_stack(limit=2)[0].name)] += 1
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    yield reads, on


@pytest.mark.slow  # trains the tiny BERT 6 steps
def test_the_steps_between_logging_steps_read_no_tensor_but_the_last_steps_flags(
    make_trainer: Callable[..., PretrainingTrainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer()
    trainer.args.max_steps, trainer.args.logging_steps = 6, 100  # logs at steps 1 and 6 only

    class Steps2To5(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            on["on"] = on["on"] or state.global_step == 1  # step 2 begins

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            on["on"] = on["on"] and state.global_step < 5

    with _value_reads(monkeypatch) as (reads, on):
        trainer.add_callback(Steps2To5())
        trainer.train()
    # Step 1 was read at its logging; steps 2, 3 and 4 each at the next step, once, a step after the device
    # computed the flags; step 5 at step 6's logging. Nothing else: no loss, count or mask read per step.
    assert reads == {("tolist", "_settle"): 3}


@pytest.mark.slow  # trains the tiny BERT 4 steps
def test_train_metrics_carry_samples_per_second_and_mfu(
    make_trainer: Callable[..., PretrainingTrainer], monkeypatch: pytest.MonkeyPatch
) -> None:
    records: list[TrainingRecord] = []
    trainer = make_trainer(sink=records.append)
    trainer.args.max_steps = 2
    trainer.train()
    cpu = _train_records(records)[2]
    assert cpu.samples_per_second is not None and cpu.samples_per_second > 0
    assert cpu.mfu is None  # a CPU has no peak in the table
    # On a known GPU the window's figures go to model_flops_utilization (its arithmetic: test_estimates).
    asked: dict[str, Any] = {}

    def utilization(shape: ModelShape | None, **figures: Any) -> float:
        asked.update(figures, shape=shape)
        return 0.42

    monkeypatch.setattr("worker.pretraining.trainer.device_name", lambda device: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr("worker.pretraining.trainer.model_flops_utilization", utilization)
    records.clear()
    trainer = make_trainer(sink=records.append)
    trainer.args.max_steps = 2
    trainer.train()
    metrics = _train_records(records)[2]
    assert metrics.mfu == 0.42
    assert asked["peak_flops_per_second"] == 67e12  # the H100's fp32 peak: fp32 weights, torch's "highest"
    assert asked["tokens_per_second"] == metrics.tokens_per_second
    assert metrics.samples_per_second is not None
    assert asked["sequence_length"] == pytest.approx(metrics.tokens_per_second / metrics.samples_per_second)
    assert 0.1 < asked["masked_lm_prob"] < 0.2  # BERT's 15% of the real tokens, the special ones never
    model: Any = trainer.model
    assert asked["shape"] == ModelShape.from_config(model.config.to_dict())


def test_training_arguments_keep_workers_across_epochs_and_copy_batches_without_blocking(
    tmp_path: Path,
) -> None:
    h = tiny_run_hyperparameters(max_steps=10)

    def arguments(cuda: bool, workers: int) -> Any:
        return training_arguments(
            h,
            tmp_path,
            max_steps=10,
            precision="fp32",
            cuda=cuda,
            dataloader_workers=workers,
            evaluate_at_start=False,
        )

    gpu = arguments(True, 2)
    assert gpu.dataloader_persistent_workers and gpu.dataloader_pin_memory
    assert gpu.accelerator_config.non_blocking
    cpu = arguments(False, 0)
    assert not cpu.dataloader_persistent_workers and not cpu.accelerator_config.non_blocking


@pytest.mark.slow  # builds a trainer on the tiny BERT
def test_the_training_data_loader_keeps_its_workers(
    tmp_path: Path, tiny_bert_dir: Path, prepared: Any, tokenizer: Any
) -> None:
    h = tiny_run_hyperparameters(max_steps=10)
    trainer = PretrainingTrainer(
        model=load_base_model(tiny_bert_dir).model,
        args=training_arguments(
            h,
            tmp_path,
            max_steps=10,
            precision="fp32",
            cuda=False,
            dataloader_workers=1,
            evaluate_at_start=False,
        ),
        data_collator=PretrainingCollator(pad_token_id=tokenizer.pad_token_id, masker=None),
        train_dataset=prepared.train,
    )
    loader = trainer.get_train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers


@pytest.mark.slow  # compiles the tiny BERT's loss with inductor: about a minute on 2 busy cores
def test_the_compiled_loss_compiles_once_for_any_batch_shape_and_equals_the_stock_loss(
    tmp_path: Path, tiny_bert_dir: Path, tiny_corpus: Path, tokenizer: Any, cache_dir: Path
) -> None:
    from torch._dynamo.utils import counters

    from worker.pretraining.prepare import prepare_corpus

    h = tiny_run_hyperparameters(batch_size=8)
    train = prepare_corpus(tiny_corpus, tokenizer, cache_dir, h.preparation()).train
    steps = -(-len(train) // h.batch_size) + 2  # past the epoch's short last batch, into the next epoch
    collator = PretrainingCollator(
        pad_token_id=tokenizer.pad_token_id,
        masker=TokenMasker.from_tokenizer(MaskingConfig.from_hyperparameters(h), tokenizer),
        seed=h.seed,
        max_predictions_per_seq=h.max_predictions_per_seq,  # as the engine builds it for compile
    )
    shapes: list[tuple[int, int]] = []

    def collate(instances: list[Any]) -> dict[str, torch.Tensor]:
        batch = collator(instances)
        shapes.append(tuple(batch["input_ids"].shape))  # type: ignore[arg-type]
        return batch

    torch._dynamo.reset()
    start = counters["stats"]["unique_graphs"]
    after_warm_up: list[int] = []

    class WarmUp(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 1:
                after_warm_up.append(counters["stats"]["unique_graphs"])

    model = load_base_model(tiny_bert_dir).model
    for module in model.modules():  # no dropout: the compiled and the stock loss can be compared in training
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    trainer = PretrainingTrainer(
        model=model,
        args=training_arguments(
            h,
            tmp_path,
            max_steps=steps,
            precision="fp32",
            cuda=False,
            dataloader_workers=0,
            evaluate_at_start=False,
        ),
        data_collator=collate,
        train_dataset=train,
        compile_loss=True,
        callbacks=[WarmUp()],
    )
    trainer.train()
    sizes, lengths = {b for b, _ in shapes}, {length for _, length in shapes}
    assert len(sizes) >= 2 and len(lengths) >= 3, shapes  # the short last batch; lengths in steps of 8
    assert after_warm_up == [start + 1]  # one graph: the loss, forward and backward
    assert counters["stats"]["unique_graphs"] == start + 1  # no batch shape recompiled it
    one = collator([train[0]])
    trainer._pretraining_loss(model, one)  # a batch of one sequence runs eager, not specialized
    assert counters["stats"]["unique_graphs"] == start + 1
    # The compiled loss (the same graph: training mode, without dropout) is the stock BertForPreTraining loss.
    batch = collator([train[i] for i in range(8)])
    assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # padded: the mask matters
    predicted = (batch["masked_lm_labels"] != -100).sum()  # the normalizers as training passes them
    normalizers = {"masked_lm_normalizer": predicted, "next_sentence_normalizer": torch.full((), 8)}
    compiled = trainer._pretraining_loss(model, batch, **normalizers)
    assert counters["stats"]["unique_graphs"] == start + 1
    names = ("input_ids", "attention_mask", "token_type_ids", "labels", "next_sentence_label")
    stock = model(**{name: batch[name] for name in names})
    assert abs(compiled.loss.item() - stock.loss.item()) < 1e-4
    assert abs(compiled.loss.item() - pretraining_loss(model, batch).loss.item()) < 1e-4


def test_the_global_batch_is_split_over_the_processes(tmp_path: Path) -> None:
    """``batch_size`` is the global batch: under torchrun it is split into one slice a process, so it must
    be a multiple of their number."""
    h = tiny_run_hyperparameters(batch_size=8)
    common: dict[str, Any] = {
        "max_steps": 4,
        "precision": "fp32",
        "cuda": False,
        "dataloader_workers": 0,
        "evaluate_at_start": False,
    }
    args = training_arguments(h, tmp_path, processes=2, **common)
    assert args.per_device_train_batch_size == 8 and args.accelerator_config.split_batches
    assert not training_arguments(h, tmp_path, **common).accelerator_config.split_batches
    with pytest.raises(TrainingError, match="multiple of 3"):
        training_arguments(h, tmp_path, processes=3, **common)
