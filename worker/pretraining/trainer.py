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
The loss is the forward of a :class:`~worker.pretraining.loss.PretrainingLossModel` around the model
(``loss_model``). Launched by torchrun (``WORLD_SIZE`` > 1), that module is what
``DistributedDataParallel`` wraps, so the gradients are averaged over the processes; each optimizer step's
normalizers are summed over them first, so the step's loss is the one of its whole global batch. With
``training_arguments(processes=N)`` every global batch of the single-process order is split into N slices
(accelerate's ``split_batches``): each process trains on its slice, and the data order is the
single-process one (the epoch's short last batch is completed from the epoch's first instances, as
accelerate's ``even_batches`` does). A step then adds three small all-reduces: its counts and its skip
flags (on the device, no host sync) and the stop decision (:meth:`PretrainingTrainer._agreed_stop`, read
on the host: one sync a step). Evaluations are sharded over the processes; checkpoints are written together
and published by process 0 (:meth:`PretrainingTrainer._save_checkpoint`); the records go to process 0's
sink only (the engine gives the others none). FSDP is not supported.

Speed (issue 13): the loop syncs the host with the device only where it reads numbers (logging,
evaluation, checkpoints) and once a step for a flag computed a step earlier, which never waits: batches are
copied to the GPU without blocking (pinned memory), the losses and counts add up on the device, and whether
an optimizer step is applied is decided on the device (the fused AdamW skips it) and learnt by the host a
step later (:meth:`PretrainingTrainer._settle`). The data-loader workers persist across epochs. With
``compile_loss`` the whole loss (encoder, gathered MLM head, cross-entropies) is one ``torch.compile``d
function, generic in the batch and sequence lengths, compiled once.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState, PrinterCallback, ProgressCallback
from transformers.training_args import ParallelMode

from worker.pretraining.base_model import non_finite_parameter, tied_aliases
from worker.pretraining.estimates import (  # torch-free: the API counts too
    MatmulPrecision,
    model_flops_utilization,
    peak_flops_per_second,
    steps_per_epoch,
    total_steps,
)
from worker.pretraining.hyperparameters import Hyperparameters
from worker.pretraining.layout import CHECKPOINT_MANIFEST, TRAINER_STATE, checkpoint_name, checkpoint_step
from worker.pretraining.loss import (
    LossTotals,
    PretrainingLoss,
    PretrainingLossModel,
    pretraining_loss,
    train_loss,
)
from worker.pretraining.masking import IGNORE_INDEX
from worker.pretraining.records import (
    CheckpointSaved,
    EvalMetrics,
    EvalSplit,
    LogLine,
    MetricsRecord,
    ModelShape,
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
    "device_name",
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


def device_name(device: Any) -> str | None:
    """The accelerator as torch names it (``"NVIDIA H100 80GB HBM3"``); None on a CPU."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else None


@dataclass
class _PendingStep:
    """An optimizer step whose update the device decided (applied or skipped) and the host has not read yet.
    ``flags``: bool (2,) on the device, its loss sums finite and its gradient norm finite; ``schedule``: the
    learning-rate schedule's state before the step (put back if it was skipped)."""

    step: int
    flags: torch.Tensor
    totals: LossTotals
    grad_norm: torch.Tensor
    schedule: dict[str, Any] | None


def _distributed() -> bool:
    """Whether this process is one of several (torchrun's process group is up)."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and (torch.distributed.get_world_size() > 1)
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
    so does an evaluation whose loss is not finite. Weights that are not finite are never saved. The
    decision is taken on the device and handed to the fused optimizer (``found_inf``), so it costs no
    sync; the host reads it a step later, or at the step's logging, evaluation or checkpoint, whichever
    comes first (:meth:`_settle`): the record, the count and the error come then. An optimizer that cannot
    skip on the device is told on the host, one sync per step.

    ``compile_loss``: the loss runs as one ``torch.compile``d function, its batch and sequence dimensions
    marked dynamic, so it compiles once for training (and once for evaluation, without gradients); a batch
    of one sequence runs eager (torch would specialize on its size: a recompilation).
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
        compile_loss: bool = False,
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
        self._skip_update = False  # the step under way is not applied (decided on the host)
        self._skip_flag: torch.Tensor | None = None  # or decided on the device: 1.0 skips it (found_inf)
        self._skips_on_device = False  # the optimizer takes found_inf (fused AdamW)
        self._pending: _PendingStep | None = None  # the step the device decided and the host not yet read
        self._compile_loss = compile_loss
        # What the utilization is computed from (set when training begins).
        self._model_shape: ModelShape | None = None
        self._peak_flops: float | None = None
        self._nonfinite_in_a_row = 0
        self._overflows_in_a_row = 0  # fp16 overflows in a row (the scaler's own business, at first)
        self._schedule_before_skip: dict[str, Any] | None = None
        self._checkpoint_after_evaluation = False  # step 0 became the selected checkpoint
        require_trainer_api()
        super().__init__(*args, **kwargs)
        # The loss as a module's forward: what DistributedDataParallel wraps (see _wrap_model).
        assert self.model is not None  # Trainer's model (model_init is not used)
        self.loss_model = PretrainingLossModel(
            self.model, nsp=nsp, compile=compile_loss, loss=pretraining_loss
        )
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
            tokens = sum(b["attention_mask"].sum() for b in batches)
            sequences = sum(int(b["next_sentence_label"].shape[0]) for b in batches)
            counts = torch.stack([predicted, tokens]).to(self.args.device, non_blocking=True)
            world = 1
            if _distributed():  # the step's counts over every process's slice (no host sync)
                world = torch.distributed.get_world_size()
                torch.distributed.all_reduce(counts)
                sequences *= world  # split_batches with even batches: every slice has as many sequences
            predicted, tokens = counts[0], counts[1]
            self._tokens_seen = tokens if self._tokens_seen is None else self._tokens_seen + tokens
            self.run_state.samples_seen += sequences
            # Both tensors (a Python int would be a constant to torch.compile: a recompilation per value),
            # made on the device (a fill, not a copy from the host). Over the world size: DDP averages the
            # processes' gradients, and each process's loss is its slice's share of the step's sums.
            self._normalizers = (predicted.clamp(min=1), predicted.new_full((), max(sequences, 1)))
            if world > 1:
                self._normalizers = (self._normalizers[0] / world, self._normalizers[1] / world)
        return batches, None

    # ---- loss

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True) -> Any:
        # The loss calls the model's submodules, not the forward accelerate wrapped in autocast.
        return self.accelerator.autocast()

    def _wrap_model(self, model: Any, training: bool = True, dataloader: Any = None) -> Any:
        """Under torchrun: ``DistributedDataParallel`` around :attr:`loss_model` (not around the model, whose
        forward is not the loss), on this process's device. ``find_unused_parameters`` without NSP (the
        pooler and the NSP head get no gradient). Otherwise Trainer's own wrapping."""
        distributed = self.args.parallel_mode == ParallelMode.DISTRIBUTED and self.args.world_size > 1
        if not (training and distributed and model is self.model):
            return super()._wrap_model(model, training=training, dataloader=dataloader)
        device = self.args.device
        return DistributedDataParallel(
            self.loss_model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not self.nsp,
        )

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        training = model.training
        predicted, sequences = self._normalizers if training else (None, None)
        out = self._pretraining_loss(
            model, inputs, masked_lm_normalizer=predicted, next_sentence_normalizer=sequences
        )
        if training:
            tokens = inputs["attention_mask"].sum()
            samples = int(inputs["input_ids"].shape[0])
            self._step_totals.add(out, tokens=tokens, samples=tokens.new_full((), samples))
        return (out.loss, out) if return_outputs else out.loss

    def _pretraining_loss(self, model: Any, batch: Mapping[str, Any], **normalizers: Any) -> PretrainingLoss:
        """The loss of ``batch``: through ``model`` when it is the loss module or its DDP wrapper, else
        through :attr:`loss_model` (``model`` is then the trainer's model; compiled with ``compile_loss``)."""
        if isinstance(model, (DistributedDataParallel, PretrainingLossModel)):
            return model(batch, **normalizers)
        return self.loss_model(batch, **normalizers)

    # ---- steps that are not applied

    def create_optimizer(self, model: Any = None) -> Any:
        """Trainer's optimizer, whose ``step`` skips the step under way when :meth:`_before_update` says so:
        on the device (``found_inf``, which fused AdamW takes, as from a loss scaler: neither the weights nor
        the step counts move), or not called at all when decided on the host. The wrapper is not in
        ``state_dict``, so checkpoints are unchanged."""
        optimizer = super().create_optimizer(model)
        self._skips_on_device = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        if not getattr(optimizer, "_bertpt_skippable", False):
            step = optimizer.step

            def step_unless_skipped(*args: Any, **kwargs: Any) -> Any:
                if self._skip_update:
                    return None
                flag, self._skip_flag = self._skip_flag, None
                if flag is None:
                    return step(*args, **kwargs)
                scaler_flag = getattr(optimizer, "found_inf", None)  # fp16: the loss scaler's, set for step
                optimizer.found_inf = (  # type: ignore[attr-defined]
                    flag if scaler_flag is None else torch.maximum(scaler_flag, flag.to(scaler_flag))
                )
                try:
                    return step(*args, **kwargs)
                finally:
                    if scaler_flag is None:
                        del optimizer.found_inf  # type: ignore[attr-defined]
                    else:
                        optimizer.found_inf = scaler_flag  # type: ignore[attr-defined]

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
        """Right before the optimizer step: decide, on the device, to apply it only if the step's losses (the
        sums accumulated in ``_step_totals``) and its gradient norm are finite, and hand the decision to the
        optimizer (see :meth:`create_optimizer`). The host reads it later (:meth:`_settle`): here first the
        previous step's, whose flags the device computed a whole step ago."""
        self._settle_stepped()
        totals, norm = self._step_totals, self._step_grad_norm
        self._step_grad_norm = None
        self._skip_update = False
        self._skip_flag = None
        if totals.empty:  # nothing was computed (cannot happen in Trainer's loop)
            return
        self._step_totals = LossTotals()
        finite = totals.all_finite()
        if isinstance(norm, torch.Tensor):
            norm = norm.detach().to(finite.device, torch.float32)
        else:  # None (no norm: finite) or a number; made on the device by a fill, not a copy
            norm = torch.full((), 0.0 if norm is None else float(norm), device=finite.device)
        flags = torch.stack([finite, torch.isfinite(norm).all()])
        if _distributed():  # every process applies or skips the step alike: finite on all of them
            agreed = flags.to(torch.int32)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
            flags = agreed.bool()
        applied = flags.all()
        self._window.merge(totals, where=applied)  # the logged losses are those of applied steps
        schedule = copy.deepcopy(self.lr_scheduler.state_dict()) if self.lr_scheduler is not None else None
        self._pending = _PendingStep(self.state.global_step + 1, flags, totals, norm, schedule)
        if self._skips_on_device:
            self._skip_flag = (~applied).float()
        else:
            self._skip_update = not self._settle()  # decided on the host: one sync

    def _settle(self) -> bool:
        """Read whether the pending optimizer step (if any) was applied: one read of two flags the device
        computed earlier. A skipped one is counted and reported, the learning-rate schedule is to be put back
        (:meth:`_undo_schedule_step`, once it stepped), and ``max_nonfinite_steps`` of them in a row raise
        :class:`NonFiniteLossError` (:class:`NonFiniteWeightsError` if the weights are the cause). Returns
        whether it was applied (True when nothing was pending)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return True
        loss_finite, norm_finite = pending.flags.tolist()
        if loss_finite and norm_finite:
            self._nonfinite_in_a_row = self._overflows_in_a_row = 0
            return True
        loss = train_loss(pending.totals.train_terms()) if loss_finite else None
        self._schedule_before_skip = pending.schedule
        self.run_state.skipped_steps += 1
        step = pending.step
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
                grad_norm=float(pending.grad_norm) if norm_finite else None,
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
        return False

    def _settle_stepped(self) -> None:
        """:meth:`_settle` once the pending step's learning-rate schedule has stepped: put it back if the
        step was skipped. Before anything reads the run's numbers (logs, evaluations, checkpoints)."""
        self._settle()
        self._undo_schedule_step()

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
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        self._model_shape = ModelShape.from_config(config.to_dict()) if config is not None else None
        self._peak_flops = peak_flops_per_second(device_name(self.args.device), self._matmul_precision())
        self._emit_progress()

    def _matmul_precision(self) -> MatmulPrecision:
        """The number format of the training step's matrix products: the autocast's, or for fp32 weights TF32
        unless torch is told to multiply in full fp32."""
        if self.args.bf16:
            return "bf16"
        if self.args.fp16:
            return "fp16"
        return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"

    def _on_step_end(self, state: Any, control: Any) -> Any:
        self._undo_schedule_step()  # a step decided on the host
        step = state.global_step
        final = step >= state.max_steps
        self._emit_progress()
        if self.eval_splits and (final or (self.eval_every_steps and step % self.eval_every_steps == 0)):
            control.should_evaluate = True
        if final or (self.checkpoint_every_steps and step % self.checkpoint_every_steps == 0):
            control.should_save = True
        if final:
            control.should_log = True
            self._settle_stepped()
            return control
        reason = self._agreed_stop()
        if reason is not None:
            self.stop_status = reason
            control.should_training_stop = True
            control.should_save = True
            control.should_log = True
            control.should_evaluate = False
        boundary = control.should_log or control.should_evaluate or control.should_save
        if boundary or control.should_training_stop:
            self._settle_stepped()  # what is logged, evaluated or saved counts the step's skip
        return control

    def _agreed_stop(self) -> TrainingStatus | None:
        """Whether to stop after this step: "cancelled" when ``should_stop()`` says so, "timed_out" past the
        deadline. Under torchrun, decided together: a process that is told to stop stops them all at the same
        step (one small all-reduce a step), so none waits forever in a collective the others left."""
        code = 0
        if self.should_stop is not None and self.should_stop():
            code = 2
        elif self.deadline is not None and self.clock() >= self.deadline:
            code = 1
        if _distributed():
            agreed = torch.tensor([code], dtype=torch.int32, device=self.args.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
            code = int(agreed.item())
        statuses: dict[int, TrainingStatus | None] = {0: None, 1: "timed_out", 2: "cancelled"}
        return statuses[code]

    # ---- logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and "learning_rate" in logs:  # a training log of _maybe_log_save_evaluate
            self._settle_stepped()
            metrics = self._train_metrics(logs)
            self.run_state.last_train = metrics
            self.emit(MetricsRecord(split="train", step=self.state.global_step, metrics=metrics))
            logs.update({k: v for k, v in metrics.values().items() if k not in logs})
        super().log(logs, start_time)

    def _train_metrics(self, logs: Mapping[str, float]) -> TrainMetrics:
        """The window's metrics (its applied steps): one read of its sums from the device. Throughput counts
        real tokens and sequences over the window's wall-clock time less evaluations and checkpoints (its
        first window holds the compilation, with ``compile_loss``); ``mfu`` is
        :func:`~worker.pretraining.estimates.model_flops_utilization` of the window's mean real sequence
        length and predicted share."""
        if _distributed():
            self._window.all_reduce()  # the window's sums over every process's slices
        values = self._window.values()  # read first: the device has then done the window's work
        now = time.perf_counter()
        elapsed = max(now - self._window_started - self._paused, 1e-9)
        tokens, samples = values.get("tokens", 0.0), values.get("samples", 0.0)
        terms = self._window.train_terms(values)
        # Not Trainer's running loss, which one NaN would poison for the rest of the run (its NaN filter
        # costs a device sync per batch): the sum of the window's terms, over its applied steps only.
        loss = train_loss(terms)
        self._window.reset()
        self._window_started, self._paused = now, 0.0
        grad_norm = logs.get("grad_norm")
        mfu = model_flops_utilization(
            self._model_shape,
            tokens_per_second=tokens / elapsed,
            sequence_length=tokens / samples if samples else 0.0,
            masked_lm_prob=values.get("masked_lm_count", 0.0) / tokens if tokens else 0.0,
            peak_flops_per_second=self._peak_flops,
        )
        return TrainMetrics(
            loss=loss,
            **terms,
            learning_rate=float(logs["learning_rate"]),
            grad_norm=None if grad_norm is None else float(grad_norm),
            tokens_per_second=tokens / elapsed,
            samples_per_second=samples / elapsed,
            mfu=mfu,
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
        self._settle_stepped()
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
        """Token-weighted MLM and NSP metrics over a whole split (None if cancelled meanwhile). Under
        torchrun, each process evaluates every N-th instance of the split and the sums are added up over
        the processes (a split of fewer instances than processes is evaluated whole by each)."""
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        order = longest_first(dataset)
        sharded = _distributed() and len(order) >= torch.distributed.get_world_size()
        if sharded:  # every process has an instance, so the same sums by name
            order = order[torch.distributed.get_rank() :: torch.distributed.get_world_size()]
        loader = DataLoader(
            dataset,
            batch_size=self.args.eval_batch_size,
            sampler=order,
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
                    stop = self.should_stop if i % 16 == 15 and not _distributed() else None
                    if stop is not None and stop():
                        self.stop_status = "cancelled"
                        self.control.should_training_stop = True
                        self.control.should_save = self.state.global_step > 0
                        return None
                    out = self.loss_model(self._prepare_inputs(batch))
                    totals.add(out)
        finally:
            model.train(was_training)
        if sharded:
            totals.all_reduce()
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
        self._settle_stepped()
        parameter = non_finite_parameter(self.accelerator.unwrap_model(self.model))
        if parameter is not None:
            raise NonFiniteWeightsError(parameter, self.state.global_step)
        started = time.perf_counter()
        root = Path(str(self.args.output_dir))
        final = root / checkpoint_name(self.state.global_step)
        tmp = temporary_sibling(final)
        distributed = _distributed()
        if distributed:  # one temporary directory: process 0's (each process writes its RNG state there)
            named = [tmp]
            torch.distributed.broadcast_object_list(named, src=0)
            tmp = named[0]
        self.store_flos()
        with quiet_transformers():
            self.save_model(str(tmp), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(tmp))
            self._save_scaler(str(tmp))
            self._save_rng_state(str(tmp))
        if distributed:
            torch.distributed.barrier()  # every process's part is written
        if not self.args.should_save:  # not process 0: it publishes, rotates and reports
            self.last_checkpoint = final
            self._take_tokens_seen()  # as process 0 does in the manifest
            torch.distributed.barrier()
            self._paused += time.perf_counter() - started
            return
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
        if distributed:
            torch.distributed.barrier()  # published before any process goes on
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
    processes: int = 1,
) -> TrainingArguments:
    """TrainingArguments for a run: evaluation and saving are driven by PretrainingTrainer's flow
    callback, so Trainer's own strategies are off. ``processes``: torchrun's world size; above 1, every
    ``batch_size`` batch (the global batch) is split into ``processes`` slices (accelerate's
    ``split_batches``), one a process.

    Raises TrainingError when ``batch_size`` is not a multiple of ``processes``.
    """
    problem = h.devices_error(processes)
    if problem is not None:
        raise TrainingError(problem)
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
        # Workers that live across epochs: no stall at every epoch's start while new ones fork and fill
        # their queues (a small corpus trained for many epochs has many). The collator's epoch reaches them
        # through shared memory (PretrainingCollator.epoch).
        dataloader_persistent_workers=dataloader_workers > 0,
        dataloader_pin_memory=cuda,
        # Batches copied to the GPU from pinned memory without blocking: a blocking copy waits for the
        # device to finish all the work queued before it, a sync per tensor of every batch.
        accelerator_config={"non_blocking": cuda, "split_batches": processes > 1},
        dataloader_drop_last=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="no",
        log_level="passive",
    )
