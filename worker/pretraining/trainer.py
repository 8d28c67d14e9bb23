"""``PretrainingTrainer``: transformers' ``Trainer`` for BERT pre-training batches.

What the stock ``Trainer`` provides and is used as is: AdamW with weight decay off for biases and
LayerNorms, the learning-rate schedules (a warm-up, then linear, cosine or constant: ``lr_schedule``),
gradient accumulation and clipping, mixed precision through accelerate (autocast + grad scaler), and
checkpoint contents (model, optimizer, scheduler, scaler, RNG states, trainer state) with the resume logic
around them (restore, skip the batches already seen).
What it changes: the loss (MLM head at the predicted positions only, token-weighted over a whole
accumulated step), the sampler (length-grouped, reproducible per (seed, epoch)), the evaluation (whole
eval splits with fixed masks, no predictions kept), the logs (typed records to a sink) and checkpoint
publication (temporary directory + rename, rotation by step, the selected checkpoint kept: see
:mod:`worker.pretraining.selection`) and early stopping. The Trainer internals it relies on are
listed and checked in :mod:`worker.pretraining.trainer_api`.
Single device: the loss calls the model's submodules directly, so DDP/FSDP wrappers are not supported.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback

from worker.pretraining.base_model import non_finite_parameter, tied_aliases
from worker.pretraining.estimates import steps_per_epoch, total_steps  # torch-free: the API counts too
from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.layout import CHECKPOINT_MANIFEST, TRAINER_STATE, checkpoint_name, checkpoint_step
from worker.pretraining.loss import LossTotals, pretraining_loss, train_loss
from worker.pretraining.masking import IGNORE_INDEX
from worker.pretraining.records import (
    CheckpointSaved,
    EvalMetrics,
    EvalSplit,
    LogLine,
    MetricsRecord,
    Progress,
    StepSkipped,
    StoppedEarly,
    TrainingRecord,
    TrainingStatus,
    TrainMetrics,
)
from worker.pretraining.replay import ReplayMixingSampler, ReplayMixture
from worker.pretraining.run_checkpoints import (
    complete_checkpoints,
    latest_checkpoint,
    publish_directory,
    rotate_checkpoints,
    temporary_sibling,
    write_json,
)
from worker.pretraining.sampler import LengthGroupedSampler, longest_first
from worker.pretraining.selection import EvaluatedStep, SelectionRules, choose_checkpoint, stop_early
from worker.pretraining.sinks import RecordSink
from worker.pretraining.tokenizer import quiet_transformers
from worker.pretraining.trainer_api import require_trainer_api

__all__ = [
    "CHECKPOINT_FORMAT",
    "FP16_OVERFLOW_ALLOWANCE",
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "PretrainingTrainer",
    "RunState",
    "StopCheck",
    "TrainingError",
    "evaluated_step",
    "lr_schedule",
    "steps_per_epoch",
    "total_steps",
    "training_arguments",
]

StopCheck = Callable[[], bool]
CHECKPOINT_FORMAT = 1  # of bertpt_checkpoint.json
# fp16 overflows in a row that are left to the loss scaler before they count towards max_nonfinite_steps:
# halving from torch's initial scale of 2**16, 24 of them reach 2**-8, where scaling no longer explains
# the overflow (the gradients themselves are out of fp16's range).
FP16_OVERFLOW_ALLOWANCE = 24


class TrainingError(RuntimeError):
    """The run cannot start or continue as asked (bad combination of data, model and parameters)."""


class NonFiniteLossError(TrainingError):
    """The loss went NaN or infinite for good: ``max_nonfinite_steps`` optimizer steps in a row were
    skipped (so the weights are those of the last applied step), or an evaluation's loss was not finite.
    ``step``: the step it happened at. The message names the likely cause: the base checkpoint or the
    data when no step of the run ever had a finite loss, the training otherwise."""

    def __init__(self, step: int, what: str, *, fp16: bool, from_start: bool, last_checkpoint: Path | None):
        self.step = step
        bf16 = "use bf16 instead of fp16 (fp16's range is small)"
        if from_start:
            cause = (
                "no training step had been applied yet, so the training is not the cause: the base "
                "checkpoint computes NaN or infinite values on this data (weights too large for the "
                f"precision, or a broken model){f'; {bf16}' if fp16 else ''}"
            )
        else:
            cause = f"lower learning_rate, {bf16 + ', ' if fp16 else ''}check the data (and max_grad_norm)"
        kept = (
            f"the checkpoint of step {checkpoint_step(last_checkpoint.name)} is intact"
            if last_checkpoint is not None
            else "no checkpoint was written"
        )
        super().__init__(f"{what}: {cause}; {kept}")


class NonFiniteWeightsError(TrainingError):
    """The model's weights are no longer finite: nothing more is saved or exported."""

    def __init__(self, parameter: str, step: int):
        self.step = step
        super().__init__(
            f"parameter {parameter} holds NaN or infinite values at step {step}: the training diverged; "
            "lower learning_rate and resume from an earlier checkpoint"
        )


class RunState(BaseModel):
    """What a run carries across checkpoints besides Trainer's own state (the ``state`` of every
    checkpoint manifest)."""

    model_config = ConfigDict(extra="ignore", validate_assignment=False)

    samples_seen: int = 0
    tokens_seen: int = 0
    skipped_steps: int = 0  # optimizer steps not applied (a loss or gradient norm not finite)
    runtime_seconds: float = 0.0  # training time of earlier attempts
    baseline: dict[EvalSplit, EvalMetrics] = {}
    last_eval: dict[EvalSplit, EvalMetrics] = {}
    last_eval_step: int | None = None
    last_train: TrainMetrics | None = None
    # Checkpoint selection (worker.pretraining.selection): the evaluations after step 0 (step 0's is the
    # baseline), the step whose checkpoint is kept for the export (None: the last step is exported), and
    # why the run stopped early, if it did.
    evaluations: list[EvaluatedStep] = []
    selected_step: int | None = None
    stopped_early: StoppedEarly | None = None

    @field_validator("last_train", mode="before")
    @classmethod
    def _nothing_yet(cls, value: Any) -> Any:
        return value or None  # manifests of bertpt 0.1 wrote {} before the first logging step

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> RunState:
        return cls.model_validate(manifest.get("state") or {})

    def evaluated_steps(self) -> list[EvaluatedStep]:
        """The run's evaluations as checkpoint selection sees them, step 0's (the baseline) first."""
        base = [evaluated_step(0, self.baseline)] if self.baseline else []
        return [*base, *self.evaluations]


def evaluated_step(step: int, results: Mapping[EvalSplit, EvalMetrics]) -> EvaluatedStep:
    """The masked-LM losses of an evaluation's splits, for checkpoint selection."""
    held_out, reference = results.get("eval"), results.get("reference")
    return EvaluatedStep(
        step=step,
        eval_masked_lm_loss=held_out.masked_lm_loss if held_out is not None else None,
        reference_masked_lm_loss=reference.masked_lm_loss if reference is not None else None,
    )


# --------------------------------------------------------------------------------------------------
# The Trainer


class _FlowCallback(TrainerCallback):
    """Decides evaluation, checkpoints and stopping at the end of every optimizer step, and keeps the
    collator's epoch in step with the training loop."""

    def __init__(self, trainer: PretrainingTrainer):
        self.trainer = trainer

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._on_train_begin()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        collator = self.trainer.data_collator
        if hasattr(collator, "epoch"):
            collator.epoch = math.floor(state.epoch or 0)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer._before_update()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return self.trainer._on_step_end(state, control)


class PretrainingTrainer(Trainer):
    """``Trainer`` for BERT pre-training batches (see the module docstring for what it changes).

    Extra arguments: ``nsp`` (train and report the NSP head), ``eval_splits`` (name -> dataset, e.g.
    ``{"eval": ..., "reference": ...}``) with their ``eval_collator`` (static masks), ``sink`` for the
    records (metrics, checkpoints, progress), ``should_stop`` (polled every step), ``deadline`` (a
    ``clock()`` time to stop at), ``eval_every_steps`` / ``checkpoint_every_steps`` /
    ``keep_checkpoints``, ``run_info`` (written into every checkpoint manifest), ``run_state``,
    ``max_nonfinite_steps`` and ``selection`` (checkpoint selection and early stopping).

    With a ``selection`` that may export a step before the last (``select_checkpoint='best'`` or a
    forgetting budget), a checkpoint is written at every evaluation whose step becomes the selection (at
    step 0 too, the fallback of a budget that no trained step meets), and rotation never removes the
    selected one (``run_state.selected_step``). With ``early_stopping_patience``, the evaluation that
    exhausts it ends the training with a checkpoint, ``run_state.stopped_early`` saying why.

    An optimizer step whose loss or gradient norm is not finite is not applied: neither the optimizer nor
    the learning-rate schedule moves (with fp16, the loss scaler lowers its scale as usual). It is counted
    (``skipped_steps``) and reported (a :class:`~worker.pretraining.records.StepSkipped` record);
    ``max_nonfinite_steps`` of them in a row raise :class:`NonFiniteLossError` (fp16 overflows with a
    finite loss are the scaler's business and count only after ``FP16_OVERFLOW_ALLOWANCE`` in a row), and
    so does an evaluation whose loss is not finite. Weights that are not finite are never saved. Deciding
    costs one device sync per optimizer step.
    """

    # compute_loss normalizes by the predicted tokens / sequences of the whole accumulated step.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        nsp: bool = True,
        eval_splits: Mapping[EvalSplit, Any] | None = None,
        eval_collator: Callable[..., Any] | None = None,
        sink: RecordSink | None = None,
        should_stop: StopCheck | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        eval_every_steps: int = 0,
        checkpoint_every_steps: int = 0,
        keep_checkpoints: int = 2,
        run_info: Mapping[str, Any] | None = None,
        run_state: RunState | None = None,
        updates_per_epoch: int | None = None,
        max_nonfinite_steps: int = 5,
        selection: SelectionRules | None = None,
        **kwargs: Any,
    ):
        self.nsp = nsp
        self.eval_splits = dict(eval_splits or {})
        self.eval_collator = eval_collator
        self.sink = sink
        self.should_stop = should_stop
        self.deadline = deadline
        self.clock = clock
        self.eval_every_steps = eval_every_steps
        self.checkpoint_every_steps = checkpoint_every_steps
        self.keep_checkpoints = keep_checkpoints
        self.run_info = dict(run_info or {})
        self.run_state = run_state or RunState()
        self.updates_per_epoch = updates_per_epoch
        self.max_nonfinite_steps = max_nonfinite_steps
        self.selection = selection or SelectionRules()
        self.stop_status: TrainingStatus | None = None
        self.last_checkpoint: Path | None = None
        self._attempt_started = time.perf_counter()
        self._window = LossTotals()
        self._step_totals = LossTotals()  # the optimizer step under way: into the window once applied
        self._window_started = time.perf_counter()
        self._paused = 0.0
        self._tokens_seen: torch.Tensor | None = None
        self._normalizers: tuple[Any, Any] = (None, None)
        self._step_grad_norm: Any = None
        self._skip_update = False  # the step under way is not applied
        self._nonfinite_in_a_row = 0
        self._overflows_in_a_row = 0  # fp16 overflows in a row (the scaler's own business, at first)
        self._schedule_before_skip: dict[str, Any] | None = None
        self._checkpoint_after_evaluation = False  # step 0 became the selected checkpoint
        require_trainer_api()
        super().__init__(*args, **kwargs)
        for noisy in (PrinterCallback, ProgressCallback):
            self.remove_callback(noisy)
        self.add_callback(_FlowCallback(self))

    # ---- records

    def emit(self, record: TrainingRecord) -> None:
        if self.sink is not None:
            self.sink(record)

    def _emit_progress(self) -> None:
        self.emit(Progress(step=self.state.global_step, max_steps=self.state.max_steps))

    # ---- data

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if isinstance(dataset, ReplayMixture):  # domain and replay instances, mixed evenly
            return ReplayMixingSampler(dataset, self._train_batch_size, seed=seed)
        lengths = getattr(dataset, "lengths", None)
        if lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(lengths, self._train_batch_size, seed=seed)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list[Any], None]:
        """Fetch the micro-batches of one optimizer step and count their predicted tokens and
        sequences (kept on the device: no sync), the normalizers of the step's loss."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if batches:
            predicted = sum((b["masked_lm_labels"] != IGNORE_INDEX).sum() for b in batches)
            sequences = sum(int(b["next_sentence_label"].shape[0]) for b in batches)
            self._normalizers = (predicted.to(self.args.device).clamp(min=1), max(sequences, 1))
        return batches, None

    # ---- loss

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
        # The loss calls the model's submodules, not the forward accelerate wrapped in autocast.
        return self.accelerator.autocast()

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        core = self.accelerator.unwrap_model(model)
        training = core.training
        predicted, sequences = self._normalizers if training else (None, None)
        out = pretraining_loss(
            core, inputs, nsp=self.nsp, masked_lm_normalizer=predicted, next_sentence_normalizer=sequences
        )
        if training:
            tokens = inputs["attention_mask"].sum()
            self._step_totals.add(out, tokens=tokens, samples=int(inputs["input_ids"].shape[0]))
            self._tokens_seen = tokens if self._tokens_seen is None else self._tokens_seen + tokens
            self.run_state.samples_seen += int(inputs["input_ids"].shape[0])
        return (out.loss, out) if return_outputs else out.loss

    # ---- steps that are not applied

    def create_optimizer(self, model: Any = None) -> Any:
        """Trainer's optimizer, whose ``step`` does nothing while the step under way is being skipped (its
        state is not in ``state_dict``, so checkpoints are unchanged)."""
        optimizer = super().create_optimizer(model)
        if not getattr(optimizer, "_bertpt_skippable", False):
            step = optimizer.step

            def step_unless_skipped(*args: Any, **kwargs: Any) -> Any:
                return None if self._skip_update else step(*args, **kwargs)

            optimizer.step = step_unless_skipped  # type: ignore[method-assign]
            optimizer._bertpt_skippable = True  # type: ignore[attr-defined]
        return optimizer

    def _undo_schedule_step(self) -> None:
        """After Trainer stepped the learning-rate schedule for a skipped step: put it back where it was,
        with the optimizer's learning rates (public scheduler API only, so any schedule works)."""
        state, self._schedule_before_skip = self._schedule_before_skip, None
        if state is None or self.lr_scheduler is None or self.optimizer is None:
            return
        self.lr_scheduler.load_state_dict(state)
        for group, lr in zip(self.optimizer.param_groups, self.lr_scheduler.get_last_lr(), strict=True):
            group["lr"] = lr

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """After the weights of a checkpoint are loaded on resume: the tied decoder aliases are not stored
        (``save_pretrained`` drops them), so re-tie them rather than log transformers' alarming "missing
        keys" message. Any other missing or unexpected weight means the checkpoint does not belong to this
        model.

        Raises TrainingError naming up to five of them.
        """
        model: Any = self.accelerator.unwrap_model(self.model)
        missing = sorted(set(load_result.missing_keys) - tied_aliases(model))
        unexpected = sorted(load_result.unexpected_keys)
        if missing or unexpected:
            raise TrainingError(
                f"the checkpoint's weights do not fit the model: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}"
            )
        model.tie_weights()

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._step_grad_norm = norm
        return norm

    def _before_update(self) -> None:
        """Right before the optimizer step: apply it only if the step's losses (the sums accumulated in
        ``_step_totals``) and its gradient norm are finite."""
        totals, norm = self._step_totals, self._step_grad_norm
        self._step_grad_norm = None
        if totals.empty:  # nothing was computed (cannot happen in Trainer's loop)
            self._skip_update = False
            return
        finite = totals.all_finite()
        norm = torch.as_tensor(norm if norm is not None else 0.0, device=finite.device, dtype=torch.float32)
        loss_finite, norm_finite = torch.stack([finite, torch.isfinite(norm).all()]).tolist()
        self._skip_update = not (loss_finite and norm_finite)
        if not self._skip_update:
            self._window.merge(totals)  # the logged losses are those of applied steps
            totals.reset()
            self._nonfinite_in_a_row = self._overflows_in_a_row = 0
            return
        loss = train_loss(totals.train_terms()) if loss_finite else None
        totals.reset()
        if self.lr_scheduler is not None:
            self._schedule_before_skip = copy.deepcopy(self.lr_scheduler.state_dict())
        self.run_state.skipped_steps += 1
        step = self.state.global_step + 1
        if not loss_finite:
            reason = "non_finite_loss"
        elif self.args.fp16:
            reason = "fp16_overflow"  # the scaler skips it too, and lowers its scale
        else:
            reason = "non_finite_grad_norm"
        self._overflows_in_a_row = self._overflows_in_a_row + 1 if reason == "fp16_overflow" else 0
        if reason != "fp16_overflow" or self._overflows_in_a_row > FP16_OVERFLOW_ALLOWANCE:
            self._nonfinite_in_a_row += 1
        self.emit(
            StepSkipped(
                step=step,
                reason=reason,
                loss=loss,
                grad_norm=float(norm) if norm_finite else None,
                consecutive=self._nonfinite_in_a_row,
                skipped_steps=self.run_state.skipped_steps,
            )
        )
        if self._nonfinite_in_a_row >= self.max_nonfinite_steps:
            parameter = non_finite_parameter(self.accelerator.unwrap_model(self.model))
            if parameter is not None:  # an update went wrong before: the weights are the cause
                raise NonFiniteWeightsError(parameter, step)
            raise self._non_finite_loss(
                step,
                f"the loss or its gradient was not finite (NaN or infinite) for {self._nonfinite_in_a_row} "
                f"steps in a row, steps {step - self._nonfinite_in_a_row + 1} to {step}",
                applied=step - self.run_state.skipped_steps,  # this step is among the skipped ones
            )

    def _non_finite_loss(self, step: int, what: str, *, applied: int) -> NonFiniteLossError:
        """The error for a loss that went non-finite at ``step``, ``applied`` optimizer steps into the run."""
        return NonFiniteLossError(
            step,
            what,
            fp16=bool(self.args.fp16),
            from_start=applied <= 0,
            last_checkpoint=latest_checkpoint(Path(str(self.args.output_dir))),
        )

    def _take_tokens_seen(self) -> int:
        if self._tokens_seen is not None:
            self.run_state.tokens_seen += int(self._tokens_seen.item())
            self._tokens_seen = None
        return self.run_state.tokens_seen

    # ---- flow

    def _on_train_begin(self) -> None:
        self._window.reset()
        self._window_started = time.perf_counter()
        self._paused = 0.0
        self._emit_progress()

    def _on_step_end(self, state: Any, control: Any) -> Any:
        self._undo_schedule_step()
        step = state.global_step
        final = step >= state.max_steps
        self._emit_progress()
        if self.eval_splits and (final or (self.eval_every_steps and step % self.eval_every_steps == 0)):
            control.should_evaluate = True
        if final or (self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0):
            control.should_save = True
        if final:
            control.should_log = True
            return control
        reason: TrainingStatus | None = None
        if self.should_stop is not None and self.should_stop():
            reason = "cancelled"
        elif self.deadline is not None and self.clock() >= self.deadline:
            reason = "timed_out"
        if reason is not None:
            self.stop_status = reason
            control.should_training_stop = True
            control.should_save = True
            control.should_log = True
            control.should_evaluate = False
        return control

    # ---- logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "learning_rate" in logs:  # a training log of _maybe_log_save_evaluate
            metrics = self._train_metrics(logs)
            self.run_state.last_train = metrics
            self.emit(MetricsRecord(split="train", step=self.state.global_step, metrics=metrics))
            logs.update({k: v for k, v in metrics.values().items() if k not in logs})
        super().log(logs, start_time)

    def _train_metrics(self, logs: Mapping[str, float]) -> TrainMetrics:
        now = time.perf_counter()
        elapsed = max(now - self._window_started - self._paused, 1e-9)
        tokens = self._window.values().get("tokens", 0.0)
        terms = self._window.train_terms()
        # Not Trainer's running loss, which one NaN would poison for the rest of the run (its NaN filter
        # costs a device sync per batch): the sum of the window's terms, over its applied steps only.
        loss = train_loss(terms)
        self._window.reset()
        self._window_started, self._paused = now, 0.0
        grad_norm = logs.get("grad_norm")
        return TrainMetrics(
            loss=loss,
            **terms,
            learning_rate=float(logs["learning_rate"]),
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens_per_second=tokens / elapsed,
            samples_seen=self.run_state.samples_seen,
            epoch=float(self.state.epoch or 0.0),
            skipped_steps=self.run_state.skipped_steps,
        )

    # ---- evaluation

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Evaluate every eval split; returns ``{<split>_<metric>: value}`` and emits one record per split."""
        started = time.perf_counter()
        step = self.state.global_step
        # Trainer's own callers pass a dataset with the prefix "eval".
        splits: Mapping[Any, Any] = (
            self.eval_splits if eval_dataset is None else {metric_key_prefix: eval_dataset}
        )
        results: dict[EvalSplit, EvalMetrics] = {}
        for name, dataset in splits.items():
            metrics = self.evaluate_split(dataset)
            if metrics is None:  # cancelled while evaluating
                break
            results[name] = metrics
            self.emit(MetricsRecord(split=name, step=step, metrics=metrics))
            losses = {
                "masked_lm_loss": metrics.masked_lm_loss,
                "next_sentence_loss": metrics.next_sentence_loss,
            }
            bad = next((n for n, v in losses.items() if v is not None and not math.isfinite(v)), None)
            if bad is not None:  # what follows (training on, comparing with it, exporting) would be garbage
                raise self._non_finite_loss(
                    step,
                    f"the {bad} of the {name} split is {getattr(metrics, bad)} at step {step}",
                    applied=step - self.run_state.skipped_steps,
                )
        if results and eval_dataset is None:
            self.run_state.last_eval = results
            self.run_state.last_eval_step = step
            if not self.run_state.baseline and step == 0:
                self.run_state.baseline = results
            if self.stop_status != "cancelled":
                self._select(step, results)
        flat = {
            f"{name}_{key}": value
            for name, metrics in results.items()
            for key, value in metrics.values().items()
        }
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, flat)
        self._paused += time.perf_counter() - started
        if self._checkpoint_after_evaluation:
            self._checkpoint_after_evaluation = False
            self._save_checkpoint(self.model, None)
        return flat

    def _select(self, step: int, results: Mapping[EvalSplit, EvalMetrics]) -> None:
        """After an evaluation: record it, keep this step's weights if it becomes the selected checkpoint,
        and stop the training if early stopping says so."""
        state = self.run_state
        if step > 0:
            earlier = [e for e in state.evaluations if e.step != step]
            state.evaluations = [*earlier, evaluated_step(step, results)]
        rules = self.selection
        if rules.keeps_weights:
            chosen = choose_checkpoint(state.evaluated_steps(), rules, step)
            if chosen is not None and chosen.step != state.selected_step:
                state.selected_step = chosen.step  # always this step: only the latest evaluation is new
                if step == 0:  # before the first optimizer step: Trainer's loop saves nothing now
                    self._checkpoint_after_evaluation = True
                else:  # saved right after this evaluation (or already, when training has ended)
                    self.control.should_save = True
        training = 0 < step < (self.state.max_steps or 0) and self.stop_status is None
        if training and state.stopped_early is None:
            stopped = stop_early(state.evaluated_steps(), rules.early_stopping_patience)
            if stopped is not None:
                state.stopped_early = stopped
                self.control.should_training_stop = True
                self.control.should_save = True
                self.control.should_log = True  # the last training window, like any other stop
                self.emit(LogLine(message=f"stopping early at step {step}: {stopped.reason}"))

    def evaluate_split(self, dataset: Any) -> EvalMetrics | None:
        """Token-weighted MLM and NSP metrics over a whole split (None if cancelled meanwhile)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        loader = DataLoader(
            dataset,
            batch_size=self.args.eval_batch_size,
            sampler=longest_first(dataset),
            collate_fn=self.eval_collator or self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            # Its own generator: evaluating never moves the global RNG, so it cannot change training.
            generator=torch.Generator().manual_seed(0),
        )
        totals = LossTotals()
        try:
            with torch.no_grad(), self.autocast_smart_context_manager():
                for i, batch in enumerate(loader):
                    if self.should_stop is not None and i % 16 == 15 and self.should_stop():
                        self.stop_status = "cancelled"
                        self.control.should_training_stop = True
                        self.control.should_save = self.state.global_step > 0
                        return None
                    out = pretraining_loss(model, self._prepare_inputs(batch), nsp=self.nsp)
                    totals.add(out)
        finally:
            model.train(was_training)
        return totals.eval_metrics()

    # ---- checkpoints

    def latest_metrics(self) -> dict[Any, TrainMetrics | EvalMetrics]:
        """The latest metrics of every split: the last training window and the last evaluation."""
        train = {"train": self.run_state.last_train} if self.run_state.last_train is not None else {}
        return {**train, **self.run_state.last_eval}

    def checkpoint_manifest(self) -> dict[str, Any]:
        step = self.state.global_step
        self._take_tokens_seen()
        state = json.loads(self.run_state.model_dump_json())  # non-finite numbers as flagged nulls
        state["runtime_seconds"] = self.run_state.runtime_seconds + self.attempt_seconds()
        per_epoch = self.updates_per_epoch or self.state.max_steps or 1
        return {
            "format": CHECKPOINT_FORMAT,
            "step": step,
            "max_steps": self.state.max_steps,
            "epoch": self.state.epoch,
            "data_position": {
                "epoch": int(step // per_epoch),
                "optimizer_steps_into_epoch": int(step % per_epoch),
            },
            "run": self.run_info,
            "metrics": {split: metrics.json_object() for split, metrics in self.latest_metrics().items()},
            "state": state,
            "created_at": datetime.now(UTC).isoformat(),
        }

    def attempt_seconds(self) -> float:
        return time.perf_counter() - self._attempt_started

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Trainer's checkpoint contents, written into a temporary directory and published by a rename
        once complete (the manifest is written last); then the oldest checkpoints beyond
        ``keep_checkpoints`` are removed. Weights that are not finite are refused: the newest checkpoint
        stays the last good one."""
        parameter = non_finite_parameter(self.accelerator.unwrap_model(self.model))
        if parameter is not None:
            raise NonFiniteWeightsError(parameter, self.state.global_step)
        started = time.perf_counter()
        root = Path(str(self.args.output_dir))
        final = root / checkpoint_name(self.state.global_step)
        tmp = temporary_sibling(final)
        self.store_flos()
        with quiet_transformers():
            self.save_model(str(tmp), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(tmp))
            self._save_scaler(str(tmp))
            self._save_rng_state(str(tmp))
        saved: dict[str, Any] = self.state.stateful_callbacks  # type: ignore[assignment]  # a dict by then
        for cb in [*self.callback_handler.callbacks, self.control]:
            if isinstance(cb, ExportableState):  # as Trainer._save_checkpoint does
                name = cb.__class__.__name__
                if isinstance(saved.get(name), list):
                    saved[name].append(cb.state())
                else:
                    saved[name] = cb.state()
        self.state.save_to_json(str(tmp / TRAINER_STATE))
        write_json(tmp / CHECKPOINT_MANIFEST, self.checkpoint_manifest())
        publish_directory(tmp, final)
        self.last_checkpoint = final
        selected = self.run_state.selected_step
        rotate_checkpoints(root, self.keep_checkpoints, protect=() if selected is None else (selected,))
        self.emit(
            CheckpointSaved(
                step=self.state.global_step,
                path=final,
                metrics=self.latest_metrics(),
                tokens_seen=self.run_state.tokens_seen,
                kept_steps=[step for step, _ in complete_checkpoints(root)],
            )
        )
        self._paused += time.perf_counter() - started


def lr_schedule(h: Hyperparameters) -> tuple[str, dict[str, float]]:
    """transformers' scheduler (a ``SchedulerType`` name for ``get_scheduler``) and its keyword arguments
    for ``lr_scheduler`` and ``min_lr_ratio``: cosine with a floor is ``cosine_with_min_lr`` with
    ``min_lr_rate``, the floor as a share of the peak."""
    if h.lr_scheduler == "cosine" and h.min_lr_ratio is not None:
        return "cosine_with_min_lr", {"min_lr_rate": h.min_lr_ratio}
    return h.lr_scheduler, {}


def training_arguments(
    h: Hyperparameters,
    output_dir: Path,
    *,
    max_steps: int,
    precision: str,
    cuda: bool,
    dataloader_workers: int,
    evaluate_at_start: bool,
) -> TrainingArguments:
    """TrainingArguments for a run: evaluation and saving are driven by PretrainingTrainer's flow
    callback, so Trainer's own strategies are off."""
    scheduler, scheduler_kwargs = lr_schedule(h)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=h.batch_size,
        per_device_eval_batch_size=h.batch_size * 2,
        gradient_accumulation_steps=h.gradient_accumulation_steps,
        learning_rate=h.learning_rate,
        weight_decay=h.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-6,  # BERT's
        max_grad_norm=h.max_grad_norm,
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=math.ceil(max_steps * h.warmup_ratio),
        max_steps=max_steps,
        optim="adamw_torch_fused",  # fused kernels on the CPU too (torch >= 2.4)
        seed=h.seed,
        data_seed=h.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,
        logging_strategy="steps",
        logging_steps=h.logging_every_steps,
        logging_first_step=True,
        logging_nan_inf_filter=False,
        eval_strategy="no",
        eval_on_start=evaluate_at_start,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=dataloader_workers,
        dataloader_pin_memory=cuda,
        dataloader_drop_last=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="no",
        log_level="passive",
    )
